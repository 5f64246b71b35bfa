"""Bulk upload: the client's own cost per record, the library against a hand-written uploader.

    python benchmarks/upload.py [-n 1000000] [--pairs 3] [--records objects|dicts]
                                [--uploaders raw,lib[,requests]] [--server sink|fake]
    python benchmarks/upload.py -n 5000000 --uploaders lib --pairs 1     # memory check

Starts a server in its own process, then runs each uploader in its own child process (so
CPU time and peak RSS are each one's own) on the same deterministic records, through Custom
Audience API 1.1 (the generation with tags), 10,000 entries per request.

Servers:

- sink (default): ``benchmarks/_sink.py``, which reads and parses each body with orjson and
  answers a token, nothing more, so the client is the bottleneck and its cost shows;
- fake: the bundled ``FakeBatchServer``, which also validates and applies every entry and is
  the slowest part: a whole-system figure, not the client's cost.

Record styles (``--records``), as the library's user hands them to ``client.add``:

- objects: ``Record`` objects with a ``datetime`` and a ``Url`` among 5 attributes, 2 tags;
- dicts: the upload lab's dicts with wire keys (``{"id", "attributes": {...,
  "date(last_purchase)": "..."}, "tags"}``), 5 attributes, 2 tags.

Uploaders:

- raw: hand-written aiohttp + orjson, the same concurrency, no validation; it builds the same
  wire entries (``{"action": "add", "id", ...}``) from the same data: the reference;
- lib: ``await client.add(name, records, concurrency=C)`` with records from a generator;
- requests: a sequential ``requests`` + ``json`` loop (optional): what people write by hand.

Each round runs the uploaders one after the other (raw first) on one server; ``--pairs``
rounds alternate them, and "vs raw" is the median over rounds of the ratio of an uploader's
records/s to raw's in the same round (like the lab's ratio.py): only ratios measured together
mean anything on a shared machine. Reported per uploader:

- records/s (median) and vs raw;
- client CPU seconds (median) and per record; "vs raw (CPU)", the median over rounds of raw's
  client CPU time over the uploader's (1.00x costs the same, below costs more): less
  disturbed by other processes than the wall clock;
- server CPU seconds (median): well below the elapsed time means the server was not the limit;
- peak RSS and RSS growth (the largest over rounds; growth is peak minus the RSS before the
  upload); RSS is also sampled every ``--rss-every`` records pulled (default 1,000,000) and
  at the end, printed per run: flat from the first sample to the end means memory does not
  grow with the input's length;
- event-loop lag p99 / max: how late a 1 ms sleep in a side task wakes up, for both aiohttp
  uploaders.

Each run's records are checked as received: the sink's count for the audience (or the
library's report and raw's answers against the fake) must equal N, or the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import Any

from _common import (
    LoopLag,
    current_rss_mb,
    load_average,
    peak_rss_mb,
    process_cpu_seconds,
    run_in_child,
    server_process,
    sink_stats,
)
from _common import (
    cpu_seconds as client_cpu_seconds,
)

CHUNK = 10_000
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
UPLOADERS = ("raw", "lib", "requests")

# (records pulled, current RSS MB) samples, taken by the record generators themselves.
MARKS: list[tuple[int, float]] = []


def mark(i: int) -> None:
    """Sample the current RSS after i records were pulled."""
    MARKS.append((i, current_rss_mb()))


# -- records ---------------------------------------------------------------------------------


def ident(i: int) -> str:
    """A 36-character, UUID-shaped ID."""
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def object_records(n: int, every: int) -> Iterator[Any]:
    """Records as a library user builds them: Record, datetime, Url."""
    import batch_audience as ba

    record, url = ba.Record, ba.Url
    for i in range(n):
        if i and not i % every:
            mark(i)
        yield record(
            ident(i),
            attributes={
                "score": i % 1000,
                "ratio": i / 7,
                "plan": "gold" if i % 3 else "silver",
                "joined": EPOCH + timedelta(seconds=i),
                "avatar": url(f"https://cdn.example.com/a/{i % 97}.png"),
            },
            tags=["early", "mobile"],
        )


def object_wire(n: int, every: int) -> Iterator[dict[str, Any]]:
    """The same records as object_records, turned into wire entries by hand."""
    for i in range(n):
        if i and not i % every:
            mark(i)
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


# The upload lab's generator (gen.py), 5 attributes: deterministic for a seed.
CITIES = tuple(f"city-{i:02d}" for i in range(64))
TAGS = tuple(f"tag-{i:02d}" for i in range(32))
DAYS = tuple((date(2021, 1, 1) + timedelta(days=i)).isoformat() for i in range(2048))
HHMM = tuple(f"{h:02d}:{m:02d}" for h in range(24) for m in range(60))
SECS = tuple(f"{s:02d}" for s in range(60))
_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)


def dict_records(n: int, every: int, action: bool = False, seed: int = 0) -> Iterator[Any]:
    """The lab's dicts with wire keys; with ``action``, as wire entries of an add."""
    bits = random.Random(seed).getrandbits
    cities, tags, days, hhmm, secs = CITIES, TAGS, DAYS, HHMM, SECS
    for i in range(n):
        if i and not i % every:
            mark(i)
        h = ((bits(128) & _V4_CLEAR) | _V4_SET).to_bytes(16, "big").hex()
        s = bits(64)
        attributes = {
            "age": 13 + s % 77,
            "score": ((s >> 7) % 100000) / 100,
            "city": cities[(s >> 24) & 63],
            "premium": (s >> 30) & 1,
            "date(last_purchase)": f"{days[(s >> 31) & 2047]}T"
            f"{hhmm[((s >> 42) & 2047) % 1440]}:{secs[((s >> 53) & 63) % 60]}",
        }
        rid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        entry_tags = [tags[(s >> 57) & 31], tags[((s >> 59) ^ s) & 31]]
        if action:
            yield {"action": "add", "id": rid, "attributes": attributes, "tags": entry_tags}
        else:
            yield {"id": rid, "attributes": attributes, "tags": entry_tags}


def user_records(opts: argparse.Namespace) -> Iterator[Any]:
    """What the library is handed, in the chosen style."""
    if opts.records == "objects":
        return object_records(opts.n, opts.rss_every)
    return dict_records(opts.n, opts.rss_every)


def wire_entries(opts: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """What the hand-written uploaders send: the same records as wire entries."""
    if opts.records == "objects":
        return object_wire(opts.n, opts.rss_every)
    return dict_records(opts.n, opts.rss_every, action=True)


def chunks(it: Iterable[dict[str, Any]], size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    """Lists of at most size items."""
    it = iter(it)
    while batch := list(islice(it, size)):
        yield batch


# -- uploaders -------------------------------------------------------------------------------


class Measure:
    """Wall clock, client CPU and RSS around the upload; RSS marks from the generators."""

    def start(self) -> None:
        gc.collect()
        MARKS.clear()
        self.base_rss = current_rss_mb()
        self.cpu0 = client_cpu_seconds()
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t0
        cpu = client_cpu_seconds() - self.cpu0
        end_rss = current_rss_mb()
        return {
            "elapsed": elapsed,
            "cpu": cpu,
            "base_rss_mb": self.base_rss,
            "peak_rss_mb": peak_rss_mb(),
            "rss_growth_mb": peak_rss_mb() - self.base_rss,
            # Current RSS minus the base at each mark and at the end.
            "rss_marks": [(i, rss - self.base_rss) for i, rss in MARKS]
            + [(-1, end_rss - self.base_rss)],
        }


async def run_lib(opts: argparse.Namespace) -> dict[str, Any]:
    import batch_audience as ba

    async with ba.CustomAudienceClient(
        opts.api_key, opts.rest_key, version="1.1", base_url=opts.url
    ) as client:
        await client.create(opts.audience)
        records = user_records(opts)
        lag = LoopLag()
        measure = Measure()
        lag.start()
        measure.start()
        report = await client.add(opts.audience, records, concurrency=opts.concurrency)
        result = measure.stop()
        await lag.stop()
    if report.records != opts.n:
        raise SystemExit(f"lib: the report counts {report.records} records, expected {opts.n}")
    return {**result, "requests": report.requests, **lag.summary()}


async def run_raw(opts: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import orjson

    headers = {"X-Authorization": opts.rest_key, "Content-Type": "application/json"}
    path = f"{opts.url}/1.1/{opts.api_key}/custom-audience/{opts.audience}"
    dumps, loads = orjson.dumps, orjson.loads
    connector = aiohttp.TCPConnector(limit=opts.concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        async with http.post(path, data=b'{"type": "install_ids"}') as resp:
            if resp.status != 200:
                raise SystemExit(f"raw: create answered HTTP {resp.status}")
        sem = asyncio.Semaphore(opts.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []
        sent = 0

        async def send(body: bytes) -> None:
            try:
                async with http.patch(path, data=body) as resp:
                    raw = await resp.read()
                    if resp.status != 201 or not loads(raw).get("indexing_token"):
                        raise RuntimeError(f"HTTP {resp.status}: {raw[:200]!r}")
            finally:
                sem.release()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        bodies = (dumps({"ids": batch}) for batch in chunks(wire_entries(opts)))
        lag = LoopLag()
        measure = Measure()
        lag.start()
        measure.start()
        # Encode the next body, then wait for a free slot: one payload ahead, as the library.
        for body in bodies:
            await sem.acquire()
            if failures:
                break
            sent += 1
            task = asyncio.create_task(send(body))
            tasks.add(task)
            task.add_done_callback(done)
        if tasks:
            await asyncio.wait(tasks)
        result = measure.stop()
        await lag.stop()
    if failures:
        raise SystemExit(f"raw: {failures[0]}")
    return {**result, "requests": sent, **lag.summary()}


def run_requests(opts: argparse.Namespace) -> dict[str, Any]:
    import requests

    headers = {"X-Authorization": opts.rest_key, "Content-Type": "application/json"}
    path = f"{opts.url}/1.1/{opts.api_key}/custom-audience/{opts.audience}"
    sent = 0
    with requests.Session() as http:
        http.headers.update(headers)
        resp = http.post(path, data=json.dumps({"type": "install_ids"}))
        if resp.status_code != 200:
            raise SystemExit(f"requests: create answered HTTP {resp.status_code}")
        measure = Measure()
        measure.start()
        for batch in chunks(wire_entries(opts)):
            resp = http.patch(path, data=json.dumps({"ids": batch}))
            if resp.status_code != 201:
                raise SystemExit(f"requests: HTTP {resp.status_code}: {resp.text[:200]}")
            sent += 1
        result = measure.stop()
    return {**result, "requests": sent}


def child(opts: argparse.Namespace) -> None:
    if opts.only == "lib":
        result = asyncio.run(run_lib(opts))
    elif opts.only == "raw":
        result = asyncio.run(run_raw(opts))
    else:
        result = run_requests(opts)
    print(json.dumps(result))


# -- the parent: server, rounds, table --------------------------------------------------------


def server_cpu(kind: str, url: str, pid: int) -> float | None:
    if kind == "sink":
        return float(sink_stats(url)["cpu_s"])
    return process_cpu_seconds(pid)


def one_run(opts: argparse.Namespace, server: Any, name: str, round_no: int) -> dict[str, Any]:
    audience = f"bench_{name}_{round_no}_{time.monotonic_ns()}"
    args = [
        "-n",
        str(opts.n),
        "--concurrency",
        str(opts.concurrency),
        "--records",
        opts.records,
        "--rss-every",
        str(opts.rss_every),
        "--only",
        name,
        "--url",
        server.url,
        "--rest_key",
        server.rest_key,
        "--api_key",
        server.api_key,
        "--audience",
        audience,
    ]
    server0 = server_cpu(opts.server, server.url, server.process.pid)
    try:
        result: dict[str, Any] = run_in_child(__file__, args)
    except subprocess.CalledProcessError as exc:
        # The child's own error, not just its exit status.
        sys.stderr.write(exc.stderr[-3000:])
        raise SystemExit(f"{name}: the run failed (exit status {exc.returncode})") from None
    server1 = server_cpu(opts.server, server.url, server.process.pid)
    result["server_cpu"] = None if server0 is None or server1 is None else server1 - server0
    if opts.server == "sink":
        got = sink_stats(server.url)["by_audience"].get(audience, 0)
        if got != opts.n:
            raise SystemExit(f"{name}: the sink received {got} entries, expected {opts.n}")
    return result


def fmt_marks(marks: list[list[float]]) -> str:
    parts = []
    for i, growth in marks:
        label = "end" if i < 0 else f"{int(i):,}"
        parts.append(f"{label}: {growth:+.0f} MB")
    return ", ".join(parts)


def report(opts: argparse.Namespace, names: list[str], runs: dict[str, list[dict[str, Any]]]):
    def med(values: list[float]) -> float:
        return statistics.median(values)

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\n{opts.n:,} records ({opts.records}), concurrency {opts.concurrency}, "
        f"server {opts.server}, {opts.pairs} round(s), Python {sys.version.split()[0]}, "
        f"{when}, load average {load_average()}\n"
    )
    print(
        "| uploader | records/s | vs raw | client CPU s | CPU µs/record | vs raw (CPU) "
        "| server CPU s | peak RSS MB | RSS growth MB | loop lag p99 / max ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rs = runs[name]
        rates = [opts.n / r["elapsed"] for r in rs]
        if "raw" in runs:
            raws = [opts.n / r["elapsed"] for r in runs["raw"]]
            ratios = [rate / raw for rate, raw in zip(rates, raws, strict=True)]
            vs = f"{med(ratios):.2f}x"
            cpu_ratios = [raw["cpu"] / r["cpu"] for r, raw in zip(rs, runs["raw"], strict=True)]
            vs_cpu = f"{med(cpu_ratios):.2f}x"
        else:
            vs = vs_cpu = "-"
        cpu = med([r["cpu"] for r in rs])
        servers = [r["server_cpu"] for r in rs if r["server_cpu"] is not None]
        lag = "-"
        if "lag_p99_ms" in rs[0]:
            p99 = med([r["lag_p99_ms"] for r in rs])
            lag = f"{p99:.1f} / {max(r['lag_max_ms'] for r in rs):.1f}"
        print(
            f"| {name} | {med(rates):,.0f} | {vs} | {cpu:.2f} | {cpu / opts.n * 1e6:.2f} | "
            f"{vs_cpu} | "
            f"{med(servers) if servers else float('nan'):.2f} | "
            f"{max(r['peak_rss_mb'] for r in rs):.0f} | "
            f"{max(r['rss_growth_mb'] for r in rs):.0f} | {lag} |"
        )
    print("\nRSS growth over the RSS before the upload, by records pulled (last round):")
    for name in names:
        print(f"  {name}: {fmt_marks(runs[name][-1]['rss_marks'])}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=1_000_000, help="records (default 1,000,000)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=3, help="rounds of all uploaders")
    parser.add_argument(
        "--records", choices=("objects", "dicts"), default="objects", help="record style"
    )
    parser.add_argument("--server", choices=("sink", "fake"), default="sink")
    parser.add_argument("--uploaders", default="raw,lib", help="comma-separated: raw,lib,requests")
    parser.add_argument("--skip-requests", action="store_true", help="drop requests if listed")
    parser.add_argument(
        "--rss-every", type=int, default=1_000_000, help="sample RSS every N records pulled"
    )
    parser.add_argument("--only", choices=UPLOADERS, help=argparse.SUPPRESS)
    for hidden in ("url", "rest_key", "api_key", "audience"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.only:
        child(opts)
        return
    asked = [n.strip() for n in opts.uploaders.split(",") if n.strip()]
    unknown = set(asked) - set(UPLOADERS)
    if unknown:
        parser.error(f"unknown uploaders: {', '.join(sorted(unknown))}")
    # The reference runs first in each round, as the lab's ratio.py does.
    names = [n for n in UPLOADERS if n in asked and not (opts.skip_requests and n == "requests")]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with server_process(opts.server) as server:
        for round_no in range(opts.pairs):
            line = []
            for name in names:
                r = one_run(opts, server, name, round_no)
                runs[name].append(r)
                line.append(f"{name} {opts.n / r['elapsed']:,.0f} rec/s")
            print(f"  round {round_no + 1}: {', '.join(line)}", file=sys.stderr, flush=True)
    report(opts, names, runs)


if __name__ == "__main__":
    main()
