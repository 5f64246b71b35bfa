"""Shared pieces of the benchmarks: the fake server in its own process, loop lag, RSS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeProcess:
    """A FakeBatchServer running in a child process, with its URL and keys."""

    url: str
    rest_key: str
    project_key: str
    api_key: str
    process: subprocess.Popen[str]


@contextlib.contextmanager
def _keyed_process(argv: list[str], what: str) -> Iterator[FakeProcess]:
    """Start a server that prints ``url:`` and its keys, one per line; stop it after."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
    info: dict[str, str] = {}
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while len(info) < 4 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        key, _, value = line.strip().partition(": ")
        if key in ("url", "rest_key", "project_key", "api_key"):
            info[key] = value
    if len(info) < 4:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the {what} did not start")
    try:
        yield FakeProcess(process=proc, **info)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fake_server_process(
    indexing_delay: float = 0.0, chaos: dict[str, Any] | None = None
) -> contextlib.AbstractContextManager[FakeProcess]:
    """Start `batch_audience.testing` in a separate process on 127.0.0.1 and stop it after.

    ``chaos`` holds the fields of a ``batch_audience.testing.Chaos`` (plain numbers, strings,
    tuples): the server then starts in chaos mode.
    """
    chaos_arg = "None" if chaos is None else f"Chaos(**{chaos!r})"
    code = (
        "from batch_audience.testing import Chaos; "
        "from batch_audience.testing._serve import run_fake_server; "
        f"run_fake_server(port=0, indexing_delay={indexing_delay!r}, chaos={chaos_arg})"
    )
    return _keyed_process([sys.executable, "-c", code], "fake server")


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time (user + system) used by this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class LoopLag:
    """Samples how late a 1 ms sleep wakes up: the event loop's lag."""

    interval: float = 0.001
    samples: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, time.perf_counter() - start - self.interval))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def summary(self) -> dict[str, float]:
        """Max and p99 lag in milliseconds."""
        if not self.samples:
            return {"lag_max_ms": 0.0, "lag_p99_ms": 0.0}
        ordered = sorted(self.samples)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return {"lag_max_ms": ordered[-1] * 1000, "lag_p99_ms": p99 * 1000}


def median(values: list[float]) -> float:
    """The median of the values."""
    return statistics.median(values)


def run_in_child(script: str, args: list[str]) -> Any:
    """Run a benchmark script in a child process and parse the JSON it prints last."""
    import json

    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


SINK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sink.py")


def sink_process() -> contextlib.AbstractContextManager[FakeProcess]:
    """Start ``benchmarks/_sink.py`` (parses writes, applies nothing) in a child process.

    Yields the same fields as ``fake_server_process``; stopped by its PID after.
    """
    return _keyed_process([sys.executable, SINK_SCRIPT, "--port", "0"], "sink")


def server_process(kind: str) -> contextlib.AbstractContextManager[FakeProcess]:
    """``sink_process()`` for "sink", ``fake_server_process()`` for "fake"."""
    if kind == "sink":
        return sink_process()
    if kind == "fake":
        return fake_server_process()
    raise ValueError(f"unknown server {kind!r}")


def sink_stats(url: str) -> dict[str, Any]:
    """The sink's counters: requests, entries, bytes, by_audience, cpu_s, peak_rss_mb."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/_stats", timeout=30) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1024 * 1024) if hasattr(os, "sysconf") else 0.0


def current_rss_mb() -> float:
    """This process's resident set size now, in MB (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_MB
    except OSError:
        return peak_rss_mb()


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of another process, from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Fields after the ")" that closes the command name; utime and stime are the
            # 14th and 15th fields of stat(5), so the 12th and 13th here.
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    """The 1-minute load average, or "n/a": how busy the shared machine was."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"
