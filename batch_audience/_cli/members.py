"""``batch-audience members NAME``: an audience's members, from the bundled fake server only.

Batch's APIs cannot list an audience's members: only the fake can show them. A fake running
in another process (``batch-audience fake-server``) holds them in its memory, so the command
asks it over HTTP, on a route only the fake serves (``GET /_fake/members?audience=NAME``),
authenticated with the same keys as the API. Reading them from its memory would need the same
process; a file dump would go stale. The base URL must be a loopback address: the command
never sends keys to a real Batch host for a route it does not have.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

import aiohttp
import orjson

from .._exceptions import ApiError
from .._session import is_loopback
from .._validate import check_audience_name
from ..testing._app import FAKE_MEMBERS_PATH
from .common import (
    ENV_API_KEY,
    ENV_PROJECT_KEY,
    ENV_REST_KEY,
    EXIT_OK,
    AddCommand,
    UsageError,
    _base_url,
    _generation,
    _key,
    _opt,
)
from .output import Console, _count, _json

TIMEOUT: Final = 60.0  # seconds for the whole answer (a million members is ~60 MB)


def add_parser(command: AddCommand) -> None:
    members = command(
        "members",
        "print an audience's members, one NDJSON line each (the bundled fake server only)",
        epilog="Batch's APIs have no way to list an audience's members: this works only "
        "against batch-audience fake-server (a loopback base URL). Each line is an upload "
        'input line, {"id": ..., "attributes": {...}, "tags": [...]}, sorted by ID; with '
        "--json, one object with every member.",
    )
    members.add_argument("name", metavar="NAME")


async def cmd_members(args: argparse.Namespace, console: Console) -> int:
    """``members NAME``: ask the fake server for the audience's members; print them."""
    name = check_audience_name(args.name)
    base_url = _base_url(args).rstrip("/")
    if not is_loopback(base_url):
        raise UsageError(
            "members works only against the bundled fake server (batch-audience fake-server): "
            f"Batch's APIs cannot list an audience's members, and {base_url} is not a "
            "loopback address; set BATCH_BASE_URL to the fake's URL"
        )
    rest_key = _key(args, "rest_key", ENV_REST_KEY, "REST key")
    headers: dict[str, str]
    if _generation(args) == "2":
        project = _key(args, "project_key", ENV_PROJECT_KEY, "project key (Audience API 2.x)")
        headers = {"Authorization": f"Bearer {rest_key}", "X-Batch-Project": project}
    else:
        app = _key(args, "api_key", ENV_API_KEY, "app API key (Custom Audience API 1.x)")
        headers = {"X-Authorization": rest_key, "X-Batch-App": app}
    url = base_url + FAKE_MEMBERS_PATH
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
            http.get(url, params={"audience": name}, headers=headers) as resp,
        ):
            status = resp.status
            body = await resp.read()
            kind = resp.content_type
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Never the aiohttp text itself: it may hold the URL; the keys are in headers only.
        raise UsageError(
            f"cannot reach the fake server at {base_url}: {type(exc).__name__}"
        ) from None
    if status == 404 and kind != "application/json":
        raise UsageError(f"{base_url} is not the bundled fake server (no {FAKE_MEMBERS_PATH})")
    if status != 200:
        error = ApiError.from_response(status, body, method="GET", url=FAKE_MEMBERS_PATH)
        if status == 404 and b"ROUTE_NOT_FOUND" in body:
            error.add_note("this fake server is older than the members command: upgrade it")
        raise error
    members: list[Any] = [orjson.loads(line) for line in body.splitlines() if line]
    if _opt(args, "json", False):
        console.out(_json({"audience": name, "count": len(members), "members": members}))
    else:
        for member in members:
            console.out(orjson.dumps(member).decode())
        console.err(f"{_count(len(members), 'member')} in {name!r}")
    return EXIT_OK
