"""Writer throughput: events/s through one AudienceWriter, its CPU time and the loop lag it causes.

    python benchmarks/writer.py [-n 1000000] [--max-records 10000] [--attributes 3] [--repeat 1]
                                [--server sink|fake]

Starts a server in its own process (Audience API 2.x; a fresh one per run), then pushes N
events through ``client.writer(...)`` from one producer loop, ``await writer.add(...)`` per
event, as an event consumer would: 90% adds of IDs from a pool of N/2 users with
``--attributes`` attributes (str, int, float), 10% removes. A side task sleeps 1 ms in a loop
and records how late it wakes (loop lag).

Servers: ``sink`` (default, ``benchmarks/_sink.py``) parses each body and answers a token, so
the writer is the bottleneck; ``fake`` (the bundled FakeBatchServer) also applies every entry
and is the slowest part: a whole-system figure.

Reported per run: sustained events/s (first add to the end of the final flush; making the
events, ~1-2 us each, is included, as in a real consumer), the CPU time of the client process
and of the server process (from /proc, Linux only), loop lag p99 and max, requests sent, peak
RSS and RSS growth (peak minus the RSS before the first event). Every event is checked as
received, so a fast but lossy writer fails: against the sink, the entries it received for the
audience must equal N; against the fake, the audience's ``nb_ids`` must equal a replay of the
events.

The machines are shared and noisy: compare runs made together, and check that nothing else
is busy (``uptime``) before trusting absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from _common import (
    LoopLag,
    cpu_seconds,
    current_rss_mb,
    load_average,
    peak_rss_mb,
    process_cpu_seconds,
    server_process,
    sink_stats,
)

import batch_audience as ba

Event = tuple[bool, str, dict[str, Any]]


def events(n: int, attributes: int, seed: int = 7) -> Iterator[Event]:
    """N (is_add, id, attributes) events, made on the fly as a consumer receives them."""
    rng = random.Random(seed)
    pool = max(1, n // 2)
    for i in range(n):
        uid = f"user-{rng.randrange(pool):08d}"
        if rng.random() < 0.9:
            attrs: dict[str, Any] = {}
            for j in range(attributes):
                kind = j % 3
                attrs[f"att{j}"] = i if kind == 0 else ("gold" if kind == 1 else i / 7)
            yield True, uid, attrs
        else:
            yield False, uid, {}


def expected_members(stream: Iterator[Event]) -> int:
    """How many IDs are members after replaying the events in order."""
    members: set[str] = set()
    for is_add, uid, _ in stream:
        if is_add:
            members.add(uid)
        else:
            members.discard(uid)
    return len(members)


async def run(
    url: str, rest_key: str, project_key: str, args: argparse.Namespace, server_pid: int
) -> dict[str, Any]:
    """One run: a fresh audience, N events through one writer; returns the figures."""
    name = f"bench_{time.monotonic_ns()}"
    async with ba.AudienceClient(rest_key, project_key, base_url=url) as client:
        await client.create(name)
        base_rss = current_rss_mb()
        lag = LoopLag()
        lag.start()
        cpu0 = cpu_seconds()
        server0 = process_cpu_seconds(server_pid)
        t0 = time.perf_counter()
        async with client.writer(
            name, max_records=args.max_records, max_delay=args.max_delay
        ) as writer:
            add = writer.add
            remove = writer.remove
            for is_add, uid, attrs in events(args.n, args.attributes):
                if is_add:
                    await add(uid, attributes=attrs)
                else:
                    await remove(uid)
            result = await writer.flush()
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        server1 = process_cpu_seconds(server_pid)
        await lag.stop()
        info = await client.view(name)
    if result.entries != args.n or result.failed:
        raise SystemExit(f"the writer acknowledged {result.entries} of {args.n} entries")
    if args.server == "sink":
        got = sink_stats(url)["by_audience"].get(name, 0)
        if got != args.n:
            raise SystemExit(f"lost entries: the sink received {got}, expected {args.n}")
    else:
        want = expected_members(events(args.n, args.attributes))
        if info.nb_ids != want:
            raise SystemExit(f"lost entries: the audience holds {info.nb_ids} IDs, expected {want}")
    return {
        "events": args.n,
        "events_per_s": args.n / elapsed,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "server_cpu_s": None if server0 is None or server1 is None else server1 - server0,
        "requests": result.requests,
        "retries": result.retries,
        "members": info.nb_ids,
        "peak_rss_mb": peak_rss_mb(),
        "rss_growth_mb": peak_rss_mb() - base_rss,
        **lag.summary(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A small fixed-width table of the runs."""
    head = (
        "run",
        "events",
        "events/s",
        "elapsed s",
        "client CPU s",
        "server CPU s",
        "lag p99 ms",
        "lag max ms",
        "requests",
        "peak RSS MB",
        "RSS growth MB",
    )
    lines = [" | ".join(f"{h:>12}" for h in head)]
    for i, r in enumerate(rows, 1):
        server = "n/a" if r["server_cpu_s"] is None else f"{r['server_cpu_s']:.2f}"
        cells = (
            i,
            r["events"],
            f"{r['events_per_s']:,.0f}",
            f"{r['elapsed_s']:.2f}",
            f"{r['cpu_s']:.2f}",
            server,
            f"{r['lag_p99_ms']:.2f}",
            f"{r['lag_max_ms']:.2f}",
            r["requests"],
            f"{r['peak_rss_mb']:.0f}",
            f"{r['rss_growth_mb']:.0f}",
        )
        lines.append(" | ".join(f"{c!s:>12}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    """Parse the flags, start the fake server process, run and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="events to push (default 1M)")
    parser.add_argument("--max-records", type=int, default=10_000, help="entries per batch")
    parser.add_argument("--max-delay", type=float, default=5.0, help="seconds before an age flush")
    parser.add_argument("--attributes", type=int, default=3, help="attributes per add (<= 15)")
    parser.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh server")
    parser.add_argument(
        "--server",
        choices=("sink", "fake"),
        default="sink",
        help="sink: parses only (the writer's own cost); fake: applies too (whole system)",
    )
    args = parser.parse_args()
    rows = []
    for _ in range(args.repeat):
        # A fresh server per run, so no run pays for the members an earlier one left behind.
        with server_process(args.server) as server:
            pid = server.process.pid
            rows.append(
                asyncio.run(run(server.url, server.rest_key, server.project_key, args, pid))
            )
    print(
        f"server {args.server}, {args.attributes} attributes per add, max_records "
        f"{args.max_records}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"load average {load_average()}"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
