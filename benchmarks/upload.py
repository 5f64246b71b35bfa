"""Bulk upload throughput: the library against the raw limit and against a hand-written loop.

    python benchmarks/upload.py [-n 1000000] [--concurrency 4] [--skip-requests]

Starts the bundled fake server in its own process, then runs each uploader in its own
child process (so peak RSS is each one's own) on the same generated records: 36-character
IDs, 5 attributes of mixed types (int, float, string, date, URL) and 2 tags, through
Custom Audience API 1.1 (the generation with tags). Uploaders:

- lib:      ``await client.add(name, records)`` with Record objects from a generator;
- raw:      hand-written aiohttp + orjson, the same concurrency, wire dicts: the raw limit;
- requests: a sequential ``requests`` + ``json`` loop: what people write by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import LoopLag, cpu_seconds, fake_server_process, peak_rss_mb, run_in_child

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def ident(i: int) -> str:
    """A 36-character, UUID-shaped ID."""
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def lib_records(n: int) -> Iterator[Any]:
    """Records as a library user builds them."""
    import batch_audience as ba

    for i in range(n):
        yield ba.Record(
            ident(i),
            attributes={
                "score": i % 1000,
                "ratio": i / 7,
                "plan": "gold" if i % 3 else "silver",
                "joined": EPOCH + timedelta(seconds=i),
                "avatar": ba.Url(f"https://cdn.example.com/a/{i % 97}.png"),
            },
            tags=["early", "mobile"],
        )


def wire_records(n: int) -> Iterator[dict[str, Any]]:
    """The same records, already in wire form."""
    for i in range(n):
        joined = EPOCH + timedelta(seconds=i)
        yield {
            "action": "add",
            "id": ident(i),
            "attributes": {
                "score": i % 1000,
                "ratio": i / 7,
                "plan": "gold" if i % 3 else "silver",
                "date(joined)": joined.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "url(avatar)": f"https://cdn.example.com/a/{i % 97}.png",
            },
            "tags": ["early", "mobile"],
        }


def chunks(it: Iterator[dict[str, Any]], size: int = 10_000) -> Iterator[list[dict[str, Any]]]:
    """Lists of at most size items."""
    batch: list[dict[str, Any]] = []
    for item in it:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def run_lib(opts: argparse.Namespace) -> dict[str, Any]:
    import batch_audience as ba

    async with ba.CustomAudienceClient(
        opts.api_key, opts.rest_key, version="1.1", base_url=opts.url
    ) as client:
        await client.create(opts.audience)
        base_rss = peak_rss_mb()
        lag = LoopLag()
        lag.start()
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        report = await client.add(opts.audience, lib_records(opts.n), concurrency=opts.concurrency)
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        await lag.stop()
        assert report.records == opts.n
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "rss_growth_mb": peak_rss_mb() - base_rss,
        "peak_rss_mb": peak_rss_mb(),
        **lag.summary(),
    }


async def run_raw(opts: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import orjson

    headers = {"X-Authorization": opts.rest_key, "Content-Type": "application/json"}
    path = f"{opts.url}/1.1/{opts.api_key}/custom-audience/{opts.audience}"
    connector = aiohttp.TCPConnector(limit=opts.concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        async with http.post(path, data=b'{"type": "install_ids"}') as resp:
            assert resp.status == 200, resp.status
        base_rss = peak_rss_mb()
        sem = asyncio.Semaphore(opts.concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def send(body: bytes) -> None:
            try:
                async with http.patch(path, data=body) as resp:
                    await resp.read()
                    assert resp.status == 201, resp.status
            finally:
                sem.release()

        cpu0, t0 = cpu_seconds(), time.perf_counter()
        for batch in chunks(wire_records(opts.n)):
            await sem.acquire()
            task = asyncio.create_task(send(orjson.dumps({"ids": batch})))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "rss_growth_mb": peak_rss_mb() - base_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_requests(opts: argparse.Namespace) -> dict[str, Any]:
    import requests

    headers = {"X-Authorization": opts.rest_key, "Content-Type": "application/json"}
    path = f"{opts.url}/1.1/{opts.api_key}/custom-audience/{opts.audience}"
    with requests.Session() as http:
        http.headers.update(headers)
        assert http.post(path, data=json.dumps({"type": "install_ids"})).status_code == 200
        base_rss = peak_rss_mb()
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        for batch in chunks(wire_records(opts.n)):
            resp = http.patch(path, data=json.dumps({"ids": batch}))
            assert resp.status_code == 201, resp.status_code
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "rss_growth_mb": peak_rss_mb() - base_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


def child(opts: argparse.Namespace) -> None:
    gc.collect()
    if opts.only == "lib":
        result = asyncio.run(run_lib(opts))
    elif opts.only == "raw":
        result = asyncio.run(run_raw(opts))
    else:
        result = run_requests(opts)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=1_000_000, help="records (default 1,000,000)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--skip-requests", action="store_true", help="skip the slow requests loop")
    parser.add_argument(
        "--uploaders", default="lib,raw,requests", help="comma-separated subset to run"
    )
    parser.add_argument("--only", choices=["lib", "raw", "requests"], help=argparse.SUPPRESS)
    for hidden in ("url", "rest_key", "api_key", "audience"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.only:
        child(opts)
        return
    names = [n for n in opts.uploaders.split(",") if not (opts.skip_requests and n == "requests")]
    results: dict[str, dict[str, Any]] = {}
    with fake_server_process() as fake:
        for name in names:
            args = [
                "-n",
                str(opts.n),
                "--concurrency",
                str(opts.concurrency),
                "--only",
                name,
                "--url",
                fake.url,
                "--rest_key",
                fake.rest_key,
                "--api_key",
                fake.api_key,
                "--audience",
                f"bench_{name}_{int(time.time())}",
            ]
            results[name] = run_in_child(__file__, args)
            print(f"  {name}: done in {results[name]['elapsed']:.1f} s", file=sys.stderr)
    raw_rate = opts.n / results["raw"]["elapsed"] if "raw" in results else float("nan")
    print(
        f"\n{opts.n:,} records, concurrency {opts.concurrency}, Python {sys.version.split()[0]}\n"
    )
    print(
        "| uploader | records/s | vs raw | client CPU s | peak RSS MB | RSS growth MB "
        "| loop lag p99 / max ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        rate = opts.n / r["elapsed"]
        lag = f"{r['lag_p99_ms']:.1f} / {r['lag_max_ms']:.1f}" if "lag_p99_ms" in r else "-"
        print(
            f"| {name} | {rate:,.0f} | {rate / raw_rate:.2f}x | {r['cpu']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['rss_growth_mb']:.0f} | {lag} |"
        )


if __name__ == "__main__":
    main()
