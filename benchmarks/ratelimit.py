"""Uploads against a rate-limited server: time against the time the limit allows, 429s heard.

    python benchmarks/ratelimit.py [--scenario NAME ...] [--repeat N] [--json]

Each scenario starts the bundled fake server in its own process, then uploads through
``AudienceClient`` (API 2.8, 36-character IDs, default concurrency and retry settings) and
checks the audience's size afterwards. A write request answered 429 is counted from the
library's retry log lines (in each client process).

Limited scenarios: the fake meters IDs per second (``RateLimit(per="id")``); "allowed" is the
least time the limit allows: when the burst plus what the bucket refilled since the first
write reaches the IDs sent ((IDs - burst) / rate for a fixed rate).

- ``2k``: 2,000 IDs/s, burst 10,000, no Retry-After; a 40,000-ID add.
- ``20k-ra`` / ``20k``: 20,000 IDs/s, burst 10,000, with / without Retry-After; 200,000 IDs.
- ``20k-ra-b20k``: the same with a burst of 20,000 (one second of the rate).
- ``shared``: 20,000 IDs/s, burst 10,000, with Retry-After; two 80,000-ID adds and a writer
  adding 40,000 IDs at once, all on one client.
- ``2proc`` / ``2proc-nora``: 20,000 IDs/s, burst 10,000, with / without Retry-After; two
  client processes (one client each) start together and add 200,000 IDs each. Besides the
  total, "slower/faster" is the slower process's time over the faster's.
- ``drop``: 20,000 IDs/s, burst 10,000, with Retry-After, dropping to 2,000 IDs/s for 10 s
  from the 5th second (``RateLimit.schedule``), then back; a 330,000-ID add.

Unmetered scenarios, each against a run without the fault on a fresh server, in alternation
(``ratio`` is the time over the time without it, medians over ``--repeat``):

- ``stray``: no limit; the 5th write is answered 429 without Retry-After
  (``fail_next(after=4)``); a 1,000,000-ID add.
- ``random3``: no limit; 3% of writes answered 429 at random without Retry-After
  (``chaos(0.03, kinds=("429",), retry_after=None)``); a 1,000,000-ID add.
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
from dataclasses import asdict, dataclass
from typing import Any

from _common import FakeProcess

# This checkout's package, in this process and in the server's, whatever is installed.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LIMIT_20K = {"rate": 20_000, "burst": 10_000}
SCENARIOS: dict[str, dict[str, Any]] = {
    "2k": {"limit": {"rate": 2_000, "burst": 10_000, "retry_after": False}, "uploads": [40_000]},
    "20k-ra": {"limit": {**LIMIT_20K, "retry_after": True}, "uploads": [200_000]},
    "20k": {"limit": {**LIMIT_20K, "retry_after": False}, "uploads": [200_000]},
    "20k-ra-b20k": {
        "limit": {"rate": 20_000, "burst": 20_000, "retry_after": True},
        "uploads": [200_000],
    },
    "shared": {
        "limit": {**LIMIT_20K, "retry_after": True},
        "uploads": [80_000, 80_000],
        "writer": 40_000,
    },
    "2proc": {"limit": {**LIMIT_20K, "retry_after": True}, "processes": [200_000, 200_000]},
    "2proc-nora": {"limit": {**LIMIT_20K, "retry_after": False}, "processes": [200_000, 200_000]},
    "drop": {
        "limit": {**LIMIT_20K, "retry_after": True, "schedule": ((5.0, 2_000), (15.0, 20_000))},
        "uploads": [330_000],
    },
    "stray": {
        "setup": "server.fail_next(status=429, path='/audiences/update', after=4)",
        "uploads": [1_000_000],
    },
    "random3": {
        "setup": (
            "server.chaos(0.03, seed=5, kinds=('429',), path='/audiences/update', retry_after=None)"
        ),
        "uploads": [1_000_000],
    },
    "nolimit": {"uploads": [1_000_000]},
}


def ident(prefix: str, i: int) -> str:
    """A 36-character, UUID-shaped ID, distinct per prefix."""
    return f"{prefix}{i:07x}-0000-4000-8000-{i:012x}"


def ids(prefix: str, n: int) -> Iterator[str]:
    """``n`` IDs with the given one-character prefix."""
    for i in range(n):
        yield ident(prefix, i)


def allowed_time(limit: dict[str, Any], total: int) -> float:
    """The least time the limit allows for ``total`` IDs (burst, then the refill)."""
    left = total - limit["burst"]
    steps = [(0.0, float(limit["rate"])), *limit.get("schedule", ())]
    elapsed = 0.0
    for k, (at, rate) in enumerate(steps):
        end = steps[k + 1][0] if k + 1 < len(steps) else float("inf")
        if left <= rate * (end - at):
            return elapsed + left / rate
        left -= rate * (end - at)
        elapsed = end
    return elapsed


@contextlib.contextmanager
def fake_server(limit: dict[str, Any] | None, setup: str | None) -> Iterator[FakeProcess]:
    """The fake server in a child process, limited in IDs/s (None: no limit), set up as asked."""
    rate_limit = "None" if limit is None else f"RateLimit(per='id', **{limit!r})"
    code = (
        "import asyncio\n"
        "from batch_audience.testing import FakeBatchServer, RateLimit\n"
        "from batch_audience.testing._serve import _serve\n"
        f"server = FakeBatchServer(port=0, rate_limit={rate_limit}, threaded=False)\n"
        f"{setup or ''}\n"
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


@contextlib.contextmanager
def counting() -> Iterator[Count429]:
    """Count the library's 429 retries while the block runs."""
    counter = Count429()
    logger = logging.getLogger("batch_audience")
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield counter
    finally:
        logger.removeHandler(counter)


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
    baseline: float | None = None  # unmetered scenarios: the time without the fault
    spread: float | None = None  # several processes: the slower's time over the faster's

    @property
    def ratio(self) -> float | None:
        """Elapsed over allowed time (or over the time without the fault)."""
        reference = self.allowed if self.allowed is not None else self.baseline
        return None if not reference else self.elapsed / reference


async def upload_all(fake: FakeProcess, spec: dict[str, Any], prefix: str = "a") -> dict[str, Any]:
    """One client: the spec's uploads (and writer) at once; what it took and what it heard."""
    import batch_audience as ba

    requests = 0
    error: str | None = None
    with counting() as counter:
        async with ba.AudienceClient(fake.rest_key, fake.project_key, base_url=fake.url) as client:
            started = time.perf_counter()

            async def upload(letter: str, n: int) -> None:
                nonlocal requests
                try:
                    report = await client.add("bench", ids(letter, n))
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

            jobs = [upload(chr(ord(prefix) + k), n) for k, n in enumerate(spec.get("uploads", []))]
            if spec.get("writer"):
                jobs.append(write(spec["writer"]))
            try:
                await asyncio.gather(*jobs)
            except ba.BatchAudienceError as exc:
                error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            elapsed = time.perf_counter() - started
            rate = client._budget.rate
    return {
        "elapsed": elapsed,
        "requests": requests + counter.throttled,
        "throttled": counter.throttled,
        "error": error,
        "rate": rate,
    }


async def size_of(fake: FakeProcess) -> int:
    """The audience's size, read by a fresh client."""
    import batch_audience as ba

    async with ba.AudienceClient(
        fake.rest_key,
        fake.project_key,
        base_url=fake.url,
        retry=ba.RetryPolicy(max_attempts=20, deadline=120),
    ) as checker:
        return (await checker.view("bench")).nb_ids


async def create(fake: FakeProcess) -> None:
    """Create the audience every scenario writes to."""
    import batch_audience as ba

    async with ba.AudienceClient(fake.rest_key, fake.project_key, base_url=fake.url) as client:
        await client.create("bench")


def in_processes(fake: FakeProcess, sizes: list[int]) -> list[dict[str, Any]]:
    """One client process per size, all starting at the same moment; what each reported."""
    start_at = time.time() + 1.5  # every child imported and connected by then
    children = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--client",
                json.dumps(
                    {
                        "url": fake.url,
                        "rest_key": fake.rest_key,
                        "project_key": fake.project_key,
                        "prefix": chr(ord("a") + 2 * k),
                        "ids": n,
                        "start_at": start_at,
                    }
                ),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k, n in enumerate(sizes)
    ]
    reports = []
    for child in children:
        out, _ = child.communicate(timeout=600)
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def client_main(config: dict[str, Any]) -> None:
    """A child process: wait for the common start, upload, print what it took (JSON)."""
    fake = FakeProcess(
        url=config["url"],
        rest_key=config["rest_key"],
        project_key=config["project_key"],
        api_key="",
        process=None,  # type: ignore[arg-type]
    )
    import batch_audience  # noqa: F401  (imported before the clock starts)

    time.sleep(max(0.0, config["start_at"] - time.time()))
    began = time.time()
    report = asyncio.run(upload_all(fake, {"uploads": [config["ids"]]}, config["prefix"]))
    print(json.dumps({**report, "began": began, "ended": time.time()}))


def run_scenario(name: str, *, baseline: float | None = None) -> Result:
    """Run one scenario against a fresh server process."""
    spec = SCENARIOS[name]
    limit = spec.get("limit")
    sizes = spec.get("processes")
    total = sum(sizes or spec.get("uploads", [])) + spec.get("writer", 0)
    spread: float | None = None
    with fake_server(limit, spec.get("setup")) as fake:
        asyncio.run(create(fake))
        if sizes:
            reports = in_processes(fake, sizes)
            began = min(r["began"] for r in reports)
            ends = [r["ended"] - began for r in reports]
            elapsed = max(ends)
            spread = max(ends) / min(ends)
            report = {
                "elapsed": elapsed,
                "requests": sum(r["requests"] for r in reports),
                "throttled": sum(r["throttled"] for r in reports),
                "error": next((r["error"] for r in reports if r["error"]), None),
                "rate": None,
            }
        else:
            report = asyncio.run(upload_all(fake, spec))
        nb_ids = asyncio.run(size_of(fake))
    return Result(
        scenario=name,
        ids=total,
        elapsed=report["elapsed"],
        allowed=None if limit is None else allowed_time(limit, total),
        requests=report["requests"],
        throttled=report["throttled"],
        complete=nb_ids == total and report["error"] is None,
        error=report["error"],
        rate=report["rate"],
        baseline=baseline if limit is None and name != "nolimit" else None,
        spread=spread,
    )


def run(name: str) -> Result:
    """One run; an unmetered scenario with a fault also times a run without it, just before."""
    spec = SCENARIOS[name]
    if spec.get("limit") is None and spec.get("setup"):
        clean = run_scenario("nolimit")
        return run_scenario(name, baseline=clean.elapsed)
    return run_scenario(name)


def main() -> None:
    """Run the chosen scenarios and print a table (or JSON lines)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # a child process of 2proc
    args = parser.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return
    names = args.scenario or list(SCENARIOS)
    results: list[Result] = []
    for name in names:
        for _ in range(args.repeat):
            result = run(name)
            results.append(result)
            if args.json:
                print(json.dumps({**asdict(result), "ratio": result.ratio}), flush=True)
    if args.json:
        return
    print(
        "| scenario | IDs | elapsed s | allowed s | ratio | write requests | 429 | 429 share "
        "| slower/faster | complete | rate reached IDs/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        if r.allowed is not None:
            reference = f"{r.allowed:.1f}"
        elif r.baseline is not None:
            reference = f"{r.baseline:.2f} without"
        else:
            reference = "-"
        share = r.throttled / r.requests if r.requests else 0.0
        rate = "unpaced" if r.rate is None else f"{r.rate:,.0f}"
        spread = "-" if r.spread is None else f"{r.spread:.2f}x"
        done = "yes" if r.complete else f"no ({r.error})"
        print(
            f"| {r.scenario} | {r.ids:,} | {r.elapsed:.2f} | {reference} | {ratio} | "
            f"{r.requests} | {r.throttled} | {share:.0%} | {spread} | {done} | {rate} |"
        )
    if args.repeat > 1:
        for name in names:
            ratios = [r.ratio for r in results if r.scenario == name and r.ratio is not None]
            if ratios:
                print(f"{name}: median ratio {statistics.median(ratios):.2f} over {len(ratios)}")


if __name__ == "__main__":
    main()
