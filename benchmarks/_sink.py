"""A minimal Batch stand-in for the benchmarks: parses every write, applies nothing.

    python benchmarks/_sink.py [--port 0] [--idle-exit 900]

Why: the bundled fake server parses, validates and applies every entry, and is the slowest
part of an upload benchmark against it; both the library and a hand-written uploader then
wait on it, and the client's own cost does not show. This sink does the least a real server
must do with a write (read the body, parse it with orjson, count the entries, answer a
token), so the client is the bottleneck. Modelled on the upload lab's ``sink_server.py``.

Routes (the keys are checked, as Batch would):

- Custom Audience API 1.x: ``POST /{v}/{api_key}/custom-audience/{name}`` create (200 ``{}``),
  ``PATCH``/``PUT`` the same path update/replace (201 and a token), ``GET`` it view;
- Audience API 2.x: ``POST /{v}/audiences/{create|update|replace|remove}`` (202 and a
  token), ``GET /{v}/audiences/view?name=``;
- ``GET /_stats``: requests, entries, bytes and entries per audience, CPU seconds and peak
  RSS of this process; ``POST /_stats/reset``.

``view`` reports ``nb_ids`` as the entries received for the audience (adds and removes alike:
nothing is applied) and the state APPLIED. Prints ``url:``, ``rest_key:``, ``project_key:`` and
``api_key:`` lines once listening (like ``batch-audience fake-server``); stops on SIGTERM or
SIGINT, or by itself after ``--idle-exit`` seconds without a request.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import secrets
import signal
import sys
import time
import uuid
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

JSON = "application/json"
STAMP = "2026-01-01T00:00:00"


class Stats:
    """What the sink received."""

    def __init__(self) -> None:
        self.requests = 0
        self.entries = 0
        self.bytes = 0
        self.by_audience: Counter[str] = Counter()
        self.last = time.monotonic()


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=JSON)


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(status, {"error_code": code, "error_message": message})


def build_app(rest_key: str, project_key: str, api_key: str) -> web.Application:
    """The sink's aiohttp application."""
    stats = Stats()
    loads = orjson.loads
    bearer = f"Bearer {rest_key}"

    def token() -> web.Response:
        return web.Response(
            status=201,
            body=b'{"indexing_token":"' + uuid.uuid4().hex.encode() + b'"}',
            content_type=JSON,
        )

    async def parse(request: web.Request) -> Any:
        body = await request.read()
        stats.requests += 1
        stats.bytes += len(body)
        stats.last = time.monotonic()
        return loads(body) if body else {}

    def info(name: str, kind: str) -> web.Response:
        return _json(
            200,
            {
                "name": name,
                "type": kind,
                "nb_ids": stats.by_audience[name],
                "indexing_state": "APPLIED",
                "created": STAMP,
                "updated": STAMP,
            },
        )

    def count(name: str, body: Any) -> web.Response | None:
        try:
            n = len(body["ids"])
        except (KeyError, TypeError):
            return _error(400, "MALFORMED_JSON_BODY", "no ids array")
        stats.entries += n
        stats.by_audience[name] += n
        return None

    async def v1(request: web.Request) -> web.Response:
        if request.headers.get("X-Authorization") != rest_key:
            return _error(401, "AUTHENTICATION_INVALID", "bad REST key")
        if request.match_info["key"] != api_key:
            return _error(404, "NOT_FOUND", "unknown app")
        name = request.match_info["name"]
        try:
            body = await parse(request)
        except orjson.JSONDecodeError:
            return _error(400, "MALFORMED_JSON_BODY", "body is not JSON")
        if request.method == "GET":
            return info(name, "install_ids")
        if request.method == "POST":
            stats.by_audience[name] += 0
            return _json(200, {})
        if request.method == "DELETE":
            stats.by_audience.pop(name, None)
            return _json(200, {})
        return count(name, body) or token()

    async def v2(request: web.Request) -> web.Response:
        if (
            request.headers.get("Authorization") != bearer
            or request.headers.get("X-Batch-Project") != project_key
        ):
            return _error(401, "AUTHENTICATION_INVALID", "bad REST key or project")
        op = request.match_info["op"]
        try:
            body = await parse(request)
        except orjson.JSONDecodeError:
            return _error(400, "MALFORMED_JSON_BODY", "body is not JSON")
        if request.method == "GET":
            if op != "view":
                return _error(404, "NOT_FOUND", "no such route")
            return info(request.query.get("name", ""), "custom_ids")
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return _error(400, "MALFORMED_JSON_BODY", "no name")
        name = body["name"]
        if op == "create":
            stats.by_audience[name] += 0
        elif op in ("update", "replace"):
            refused = count(name, body)
            if refused is not None:
                return refused
        elif op == "remove":
            stats.by_audience.pop(name, None)
        else:
            return _error(404, "NOT_FOUND", "no such route")
        response = token()
        response.set_status(202)
        return response

    async def get_stats(request: web.Request) -> web.Response:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return _json(
            200,
            {
                "requests": stats.requests,
                "entries": stats.entries,
                "bytes": stats.bytes,
                "by_audience": dict(stats.by_audience),
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024,
            },
        )

    async def reset(request: web.Request) -> web.Response:
        stats.requests = stats.entries = stats.bytes = 0
        stats.by_audience.clear()
        return web.Response(status=204)

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app["stats"] = stats
    app.router.add_get("/_stats", get_stats)
    app.router.add_post("/_stats/reset", reset)
    for method in ("GET", "POST", "PATCH", "PUT", "DELETE"):
        app.router.add_route(method, "/{version:1\\.[01]}/{key}/custom-audience/{name}", v1)
    for method in ("GET", "POST"):
        app.router.add_route(method, "/{version:2\\.[0-9]+}/audiences/{op}", v2)
    return app


async def serve(port: int, idle_exit: float) -> None:
    """Serve until SIGTERM/SIGINT or ``idle_exit`` seconds without a request."""
    rest_key = secrets.token_hex(16)
    project_key = "project_" + secrets.token_hex(8)
    api_key = "app_" + secrets.token_hex(8)
    app = build_app(rest_key, project_key, api_key)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=128)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sys.stdout.write(
        f"url: http://127.0.0.1:{bound}\nrest_key: {rest_key}\n"
        f"project_key: {project_key}\napi_key: {api_key}\n"
    )
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stats: Stats = app["stats"]
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=5)
            except TimeoutError:
                # Left behind by a benchmark that died: do not hold the port forever.
                if time.monotonic() - stats.last > idle_exit:
                    break
    finally:
        await runner.cleanup()


def main() -> None:
    """Parse the flags and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--idle-exit", type=float, default=900.0, help="seconds without requests")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.idle_exit))


if __name__ == "__main__":
    main()
