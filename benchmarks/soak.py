"""Soak: uploads and a writer for a set time against a faulty fake; nothing may grow or leak.

    python benchmarks/soak.py [--seconds 600] [--interval 5] [--rate 0.1] [--seed 1]

Not run by CI. Starts the bundled fake server in its own process in chaos mode (about
``--rate`` of requests answered with a 429 with Retry-After 0-1 s, a 500/502/503/504, a
dropped connection with or without the write applied, an answer or a body stalled past the
client's 2 s timeout, or a slow body), then runs, on one client, until the time is up:

- uploads, round after round: a 50,000-record replace (attributes on every third), 30,000
  adds and 10,000 removes over a pool of 120,000 IDs, and an upload cancelled part-way (its
  own audience, never checked);
- a writer fed paced add/remove events over 50,000 IDs; each round (about 5 s) the writer
  closes, alternately by leaving its block and by cancelling the task that owns it.

Every ``--interval`` seconds it samples this process's RSS, its ESTABLISHED TCP connections
(/proc/self/fd matched against /proc/net/tcp*), its asyncio tasks and its open file
descriptors, and prints a row. At the end it compares the median of the first quarter of the
samples with that of the last quarter (RSS within max(10%, 16 MB); connections, tasks and fds
within a few), checks that tasks and fds are back to their baseline and no connection is left
once the client is closed, and checks each verified audience's ``nb_ids`` against a replay
of what was acknowledged: lost must be 0. Linux only (/proc). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from _common import fake_server_process

import batch_audience as ba

TIMEOUT = 2.0  # seconds: the client's timeout for one attempt
CHAOS: dict[str, Any] = {
    "stall": 3.0,  # seconds: stalled answers and bodies, past TIMEOUT
    "slow_body": 0.3,  # seconds: slow bodies read in time
    "retry_after": (0.0, 1.0),  # seconds
}
RETRY = ba.RetryPolicy(base=0.1, factor=2.0, cap=5.0, max_attempts=10)
REPLACE_SIZE = 50_000
ADD_POOL = 120_000
ADDS_PER_ROUND = 30_000
REMOVES_PER_ROUND = 10_000
WRITER_POOL = 50_000
WRITER_ROUND = 5.0  # seconds a writer lives
PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_COLUMNS = (
    ("t (s)", 6),
    ("RSS MB", 7),
    ("conns", 5),
    ("tasks", 5),
    ("fds", 4),
    ("records", 11),
    ("retries", 7),
    ("server MB", 9),
)


# -- sampling ------------------------------------------------------------------------------------


def rss_mb(pid: int | str = "self") -> float:
    """The resident set size of a process now (not its peak), in MB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def established() -> int:
    """This process's ESTABLISHED TCP connections (state 01 in /proc/net/tcp and tcp6)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "01" and cols[9] in inodes:
                    count += 1
    return count


@dataclass
class Sample:
    """One row: when, and what this process held then."""

    t: float
    rss: float
    connections: int
    tasks: int
    fds: int
    records: int
    retries: int
    server_rss: float


class RetryCounter(logging.Handler):
    """Counts the client's retry log lines (event batch_audience.retry): every fault survived."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "batch_audience.retry":
            self.count += 1


@dataclass
class Totals:
    """What the workload did, for the summary."""

    records: int = 0  # upload records acknowledged
    requests: int = 0  # upload requests acknowledged
    retries: int = 0  # upload retries, from the reports
    uploads: int = 0
    cancelled_uploads: int = 0
    failed_uploads: int = 0
    events: int = 0  # writer events accepted
    writer_rounds: int = 0
    cancelled_writers: int = 0
    unsent: int = 0  # writer entries left unsent (must be 0)
    errors: list[str] = field(default_factory=list)


# -- workload ------------------------------------------------------------------------------------


def replace_records(round_: int) -> Iterator[ba.Record | str]:
    """The round's replace: r-0 … r-49,999, attributes on every third."""
    for i in range(REPLACE_SIZE):
        if i % 3 == 0:
            yield ba.Record(f"r-{i}", attributes={"round": round_, "n": i})
        else:
            yield f"r-{i}"


def window(start: int, size: int, pool: int) -> list[int]:
    """``size`` consecutive positions from ``start`` in a pool, wrapping around."""
    return [(start + i) % pool for i in range(size)]


async def uploads(
    client: ba.AudienceClient, stop: float, totals: Totals, rng: random.Random
) -> dict[str, int | None]:
    """Upload rounds until ``stop``; returns the expected nb_ids per verified audience."""
    present = bytearray(ADD_POOL)
    add_known = True
    replace_known = True
    round_ = 0
    while time.monotonic() < stop:
        try:
            report = await client.replace("soak-replace", replace_records(round_), chunk_size=5_000)
            totals.records += report.records
            totals.requests += report.requests
            totals.retries += report.retries
            totals.uploads += 1
        except ba.BatchAudienceError as exc:
            totals.failed_uploads += 1
            totals.errors.append(f"replace: {type(exc).__name__}")
            replace_known = False
        adds = window(round_ * ADDS_PER_ROUND, ADDS_PER_ROUND, ADD_POOL)
        removes = window(round_ * ADDS_PER_ROUND + 7_000, REMOVES_PER_ROUND, ADD_POOL)
        for operation, positions in (("add", adds), ("remove", removes)):
            ids = (f"a-{p}" for p in positions)
            try:
                if operation == "add":
                    report = await client.add("soak-add", ids, chunk_size=2_000)
                else:
                    report = await client.remove("soak-add", ids, chunk_size=2_000)
            except ba.BatchAudienceError as exc:
                totals.failed_uploads += 1
                totals.errors.append(f"{operation}: {type(exc).__name__}")
                add_known = False
                continue
            totals.records += report.records
            totals.requests += report.requests
            totals.retries += report.retries
            totals.uploads += 1
            for p in positions:
                present[p] = operation == "add"
        # An upload cancelled part-way: its tasks and connections must go with it.
        task = asyncio.create_task(
            client.add("soak-cancel", (f"c-{i}" for i in range(50_000)), chunk_size=1_000)
        )
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ba.BatchAudienceError):
            await task
        totals.cancelled_uploads += 1
        round_ += 1
    return {
        "soak-replace": REPLACE_SIZE if replace_known else None,
        "soak-add": sum(present) if add_known else None,
    }


async def writers(
    client: ba.AudienceClient, stop: float, totals: Totals, rng: random.Random
) -> dict[str, int | None]:
    """Writer rounds until ``stop``, closing or cancelling each; returns the expected nb_ids."""
    present = bytearray(WRITER_POOL)
    holder: list[ba.AudienceWriter] = []
    known = True

    async def feed(until: float) -> None:
        async with client.writer(
            "soak-writer", max_records=2_000, max_delay=0.2, drain_timeout=60
        ) as writer:
            holder.append(writer)
            while time.monotonic() < until:
                for _ in range(500):
                    p = rng.randrange(WRITER_POOL)
                    if rng.random() < 0.6:
                        await writer.add(f"w-{p}", attributes={"v": p})
                        present[p] = 1
                    else:
                        await writer.remove(f"w-{p}")
                        present[p] = 0
                    totals.events += 1  # returned: the writer holds the event
                await asyncio.sleep(0.05)  # paced, like a consumer between polls

    while time.monotonic() < stop:
        holder.clear()
        cancel = totals.writer_rounds % 2 == 1
        task = asyncio.create_task(feed(time.monotonic() + (60.0 if cancel else WRITER_ROUND)))
        if cancel:
            await asyncio.sleep(WRITER_ROUND * rng.uniform(0.5, 1.0))
            task.cancel()
            totals.cancelled_writers += 1
        try:
            await task
        except asyncio.CancelledError:
            pass
        except ba.BatchAudienceError as exc:
            totals.errors.append(f"writer: {type(exc).__name__}")
            known = False
        if holder:
            totals.unsent += len(holder[0].unsent)
        totals.writer_rounds += 1
    return {"soak-writer": sum(present) if known and totals.unsent == 0 else None}


async def sampler(
    samples: list[Sample],
    retries: RetryCounter,
    totals: Totals,
    interval: float,
    started: float,
    server_pid: int,
) -> None:
    """A row every ``interval`` seconds, printed as it is taken."""
    while True:
        sample = Sample(
            t=time.monotonic() - started,
            rss=rss_mb(),
            connections=established(),
            tasks=len(asyncio.all_tasks()),
            fds=fd_count(),
            records=totals.records,
            retries=retries.count,
            server_rss=rss_mb(server_pid),
        )
        samples.append(sample)
        cells = (
            f"{sample.t:.0f}",
            f"{sample.rss:.1f}",
            str(sample.connections),
            str(sample.tasks),
            str(sample.fds),
            f"{sample.records:,}",
            f"{sample.retries:,}",
            f"{sample.server_rss:.1f}",
        )
        widths = [width for _, width in SAMPLE_COLUMNS]
        print(" ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)), flush=True)
        await asyncio.sleep(interval)


# -- verdicts ------------------------------------------------------------------------------------


def quarters(values: Sequence[float]) -> tuple[float, float]:
    """Medians of the first and the last quarter of the samples."""
    q = max(1, len(values) // 4)
    return statistics.median(values[:q]), statistics.median(values[-q:])


def judge(
    label: str,
    values: Sequence[float],
    bound: Callable[[float], float],
    target: int | None = None,
    end: int | None = None,
) -> list[str]:
    """A summary row: flat if the last quarter's median is within ``bound(first)``; at target."""
    first, last = quarters(values)
    verdict = "flat" if last <= bound(first) else "GROWING"
    if target is not None:
        verdict += ", back to baseline" if end == target else f", LEAKED (want {target})"
    return [
        label,
        "-" if target is None else str(target),
        f"{first:.1f}",
        f"{last:.1f}",
        f"{max(values):.1f}",
        "-" if end is None else str(end),
        verdict,
    ]


def table(header: list[str], rows: list[list[str]]) -> None:
    """Print rows under a header: the first column left-aligned, the others right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for line in (header, *rows):
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:-1], widths[1:-1], strict=True)]
        print("  ".join([*cells, line[-1]]))


async def soak(args: argparse.Namespace) -> int:
    """Run the soak; print the samples and the summary; return the exit status."""
    chaos = {"rate": args.rate, "seed": args.seed, **CHAOS}
    rng = random.Random(args.seed)
    totals = Totals()
    samples: list[Sample] = []
    retries = RetryCounter()
    library_log = logging.getLogger("batch_audience")
    library_log.addHandler(retries)
    library_log.setLevel(logging.INFO)
    with fake_server_process(chaos=chaos) as fake:
        await asyncio.sleep(0)
        base_tasks = len(asyncio.all_tasks())
        base_fds = fd_count()
        base_connections = established()
        print(
            f"soak: {args.seconds:g} s, chaos rate {args.rate:g} (seed {args.seed}), "
            f"client timeout {TIMEOUT:g} s, stall {CHAOS['stall']:g} s; "
            f"baseline: {base_tasks} tasks, {base_fds} fds, {base_connections} connections"
        )
        print(" ".join(name.rjust(width) for name, width in SAMPLE_COLUMNS))
        started = time.monotonic()
        stop = started + args.seconds
        client = ba.AudienceClient(
            fake.rest_key,
            fake.project_key,
            base_url=fake.url,
            retry=RETRY,
            timeouts=ba.Timeouts(total=TIMEOUT),
        )
        async with client:
            for name in ("soak-replace", "soak-add", "soak-cancel", "soak-writer"):
                # Chaos also hits creates: retried like any other call.
                await client.create(name)
            sampling = asyncio.create_task(
                sampler(samples, retries, totals, args.interval, started, fake.process.pid)
            )
            expected_uploads, expected_writer = await asyncio.gather(
                uploads(client, stop, totals, rng), writers(client, stop, totals, rng)
            )
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            checks: list[tuple[str, int | None, int]] = []
            for name, expected in {**expected_uploads, **expected_writer}.items():
                info = await client.view(name)  # retried through the chaos like the rest
                checks.append((name, expected, info.nb_ids))
        await asyncio.sleep(0.2)  # closed transports are released on the next loop turns
        end_tasks = len(asyncio.all_tasks())
        end_fds = fd_count()
        end_connections = established()
        elapsed = time.monotonic() - started

    failures: list[str] = []
    print()
    header = ["metric", "baseline", "1st qtr", "last qtr", "max", "end", "verdict"]
    rows = [
        judge("RSS MB", [s.rss for s in samples], lambda a: max(a * 1.10, a + 16)),
        judge("connections", [s.connections for s in samples], lambda a: a + 2, 0, end_connections),
        judge("tasks", [s.tasks for s in samples], lambda a: a + 3, base_tasks, end_tasks),
        judge("fds", [s.fds for s in samples], lambda a: a + 3, base_fds, end_fds),
    ]
    failures += [row[0] for row in rows if "GROWING" in row[-1] or "LEAKED" in row[-1]]
    server = [s.server_rss for s in samples]
    first, last = quarters(server)
    rows.append(
        ["server MB", "-", f"{first:.1f}", f"{last:.1f}", f"{max(server):.1f}", "-", "informative"]
    )
    table(header, rows)
    print()
    lost = 0
    for name, expected, nb_ids in checks:
        if expected is None:
            print(f"{name}: nb_ids {nb_ids} (not verified: an upload failed for good)")
            continue
        lost += abs(expected - nb_ids)
        print(f"{name}: nb_ids {nb_ids:,}, expected {expected:,}")
    print(
        f"\n{elapsed:.0f} s: {totals.records:,} records in {totals.requests:,} upload requests "
        f"({totals.uploads} uploads, {totals.cancelled_uploads} cancelled, "
        f"{totals.failed_uploads} failed for good); {totals.events:,} writer events in "
        f"{totals.writer_rounds} writer rounds ({totals.cancelled_writers} cancelled); "
        f"{retries.count:,} faults survived (retries: {totals.retries:,} in upload reports); "
        f"unsent {totals.unsent}; lost {lost}"
    )
    if totals.errors:
        print("errors:", ", ".join(totals.errors))
    if lost or totals.unsent:
        failures.append("lost entries")
    if len(samples) < 8:
        failures.append("too few samples: run longer or sample more often")
    print("PASS" if not failures else f"FAIL: {', '.join(failures)}")
    return 1 if failures else 0


def main() -> None:
    """Parse the arguments and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to run (600)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples (5)")
    parser.add_argument("--rate", type=float, default=0.1, help="share of requests failed (0.1)")
    parser.add_argument("--seed", type=int, default=1, help="chaos and workload seed (1)")
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
