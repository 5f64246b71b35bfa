"""Uploads against a rate-limited server: time against the time the limit allows, 429s heard.

    python benchmarks/ratelimit.py [--scenario NAME ...] [--repeat N] [--json]

Each scenario starts the bundled fake server in its own process with a token bucket counted
in IDs per second (``RateLimit(per="id")``), then uploads through ``AudienceClient`` (API 2.8,
36-character IDs, default concurrency and retry settings) and checks the audience's size
afterwards. "allowed" is the least time the limit allows: (IDs - burst) / rate. A write
request answered 429 is counted from the library's retry log lines.

Scenarios:

- ``2k``: 2,000 IDs/s, burst 10,000, no Retry-After; a 40,000-ID add.
- ``20k-ra`` / ``20k``: 20,000 IDs/s, burst 10,000, with / without Retry-After; 200,000 IDs.
- ``20k-ra-b20k``: the same with a burst of 20,000 (one second of the rate).
- ``shared``: 20,000 IDs/s, burst 10,000, with Retry-After; two 80,000-ID adds and a writer
  adding 40,000 IDs at once, all on one client.
- ``nolimit``: no limit at all; a 1,000,000-ID add, for throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from _common import FakeProcess

# This checkout's package, in this process and in the server's, whatever is installed.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SCENARIOS: dict[str, dict[str, Any]] = {
    "2k": {"rate": 2_000, "burst": 10_000, "retry_after": False, "uploads": [40_000]},
    "20k-ra": {"rate": 20_000, "burst": 10_000, "retry_after": True, "uploads": [200_000]},
    "20k": {"rate": 20_000, "burst": 10_000, "retry_after": False, "uploads": [200_000]},
    "20k-ra-b20k": {"rate": 20_000, "burst": 20_000, "retry_after": True, "uploads": [200_000]},
    "shared": {
        "rate": 20_000,
        "burst": 10_000,
        "retry_after": True,
        "uploads": [80_000, 80_000],
        "writer": 40_000,
    },
    "nolimit": {"rate": None, "burst": 0, "retry_after": True, "uploads": [1_000_000]},
}


def ident(prefix: str, i: int) -> str:
    """A 36-character, UUID-shaped ID, distinct per prefix."""
    return f"{prefix}{i:07x}-0000-4000-8000-{i:012x}"


def ids(prefix: str, n: int) -> Iterator[str]:
    """``n`` IDs with the given one-character prefix."""
    for i in range(n):
        yield ident(prefix, i)


@contextlib.contextmanager
def limited_server(rate: float | None, burst: int, retry_after: bool) -> Iterator[FakeProcess]:
    """The fake server in a child process, limited to ``rate`` IDs/s (None: no limit)."""
    limit = (
        "None"
        if rate is None
        else f"RateLimit(rate={rate!r}, burst={burst!r}, per='id', retry_after={retry_after!r})"
    )
    code = (
        "import asyncio\n"
        "from batch_audience.testing import FakeBatchServer, RateLimit\n"
        "from batch_audience.testing._serve import _serve\n"
        f"server = FakeBatchServer(port=0, rate_limit={limit}, threaded=False)\n"
        "asyncio.run(_serve(server))\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, bufsize=1, env=env
    )
    info: dict[str, str] = {}
    assert proc.stdout is not None
    while len(info) < 4:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise RuntimeError("the fake server did not start")
        key, _, value = line.strip().partition(": ")
        info[key] = value
    try:
        yield FakeProcess(process=proc, **info)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class Count429(logging.Handler):
    """Counts the library's retry lines caused by a 429."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.throttled = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "batch_audience.retry" and (
            getattr(record, "status", None) == 429
        ):
            self.throttled += 1


@dataclass
class Result:
    """One run of one scenario."""

    scenario: str
    ids: int
    elapsed: float
    allowed: float | None
    requests: int
    throttled: int
    complete: bool
    error: str | None
    rate: float | None

    @property
    def ratio(self) -> float | None:
        """Elapsed over allowed time."""
        return None if not self.allowed else self.elapsed / self.allowed


async def run_scenario(name: str) -> Result:
    """Run one scenario against a fresh server process."""
    import batch_audience as ba

    spec = SCENARIOS[name]
    total = sum(spec["uploads"]) + spec.get("writer", 0)
    counter = Count429()
    logger = logging.getLogger("batch_audience")
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    requests = 0
    error: str | None = None
    rate: float | None = None
    with limited_server(spec["rate"], spec["burst"], spec["retry_after"]) as fake:
        async with ba.AudienceClient(fake.rest_key, fake.project_key, base_url=fake.url) as client:
            await client.create("bench")
            started = time.perf_counter()

            async def upload(prefix: str, n: int) -> None:
                nonlocal requests
                try:
                    report = await client.add("bench", ids(prefix, n))
                except ba.BatchAudienceError as exc:
                    partial = getattr(exc, "report", None)
                    requests += 0 if partial is None else partial.requests
                    raise
                requests += report.requests

            async def write(n: int) -> None:
                nonlocal requests
                async with client.writer("bench", max_records=10_000, max_delay=0.5) as writer:
                    for uid in ids("w", n):
                        await writer.add(uid)
                    result = await writer.flush()
                    requests += result.requests

            jobs = [upload(chr(ord("a") + k), n) for k, n in enumerate(spec["uploads"])]
            if spec.get("writer"):
                jobs.append(write(spec["writer"]))
            try:
                await asyncio.gather(*jobs)
            except ba.BatchAudienceError as exc:
                error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            elapsed = time.perf_counter() - started
            budget = getattr(client, "_budget", None)
            if budget is not None:
                rate = budget.rate
        # A fresh client for the check: the first one's budget may still be paused.
        async with ba.AudienceClient(
            fake.rest_key,
            fake.project_key,
            base_url=fake.url,
            retry=ba.RetryPolicy(max_attempts=20, deadline=120),
        ) as checker:
            info = await checker.view("bench")
    logger.removeHandler(counter)
    allowed = None if spec["rate"] is None else (total - spec["burst"]) / spec["rate"]
    return Result(
        scenario=name,
        ids=total,
        elapsed=elapsed,
        allowed=allowed,
        requests=requests + counter.throttled,
        throttled=counter.throttled,
        complete=info.nb_ids == total and error is None,
        error=error,
        rate=rate,
    )


def main() -> None:
    """Run the chosen scenarios and print a table (or JSON lines)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.scenario or list(SCENARIOS)
    results: list[Result] = []
    for name in names:
        for _ in range(args.repeat):
            result = asyncio.run(run_scenario(name))
            results.append(result)
            if args.json:
                print(json.dumps({**result.__dict__, "ratio": result.ratio}))
    if args.json:
        return
    print(
        "| scenario | IDs | elapsed s | allowed s | ratio | write requests | 429 | 429 share "
        "| complete | rate reached IDs/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        allowed = "-" if r.allowed is None else f"{r.allowed:.1f}"
        share = r.throttled / r.requests if r.requests else 0.0
        rate = "unpaced" if r.rate is None else f"{r.rate:,.0f}"
        done = "yes" if r.complete else f"no ({r.error})"
        print(
            f"| {r.scenario} | {r.ids:,} | {r.elapsed:.2f} | {allowed} | {ratio} | "
            f"{r.requests} | {r.throttled} | {share:.0%} | {done} | {rate} |"
        )
    if args.repeat > 1:
        for name in names:
            runs = [r.elapsed for r in results if r.scenario == name]
            print(f"{name}: median {statistics.median(runs):.2f} s over {len(runs)} runs")


if __name__ == "__main__":
    main()
