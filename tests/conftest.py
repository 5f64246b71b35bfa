"""Shared fixtures: a started fake Batch server, clients with zero-wait policies, blockbuster."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from hypothesis import HealthCheck, settings

import batch_audience as ba
from batch_audience import RetryPolicy
from batch_audience.testing import FakeBatchServer

# CI machines are shared and slow at times: timing health checks would make the suite flaky,
# and a fixed seed keeps every run of the same code identical.
settings.register_profile(
    "batch_audience",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("batch_audience")


def pytest_report_header() -> str:
    """Which batch_audience the run tests: the checkout's, or an installed wheel's (CI)."""
    return f"batch_audience {ba.__version__} from {os.path.dirname(ba.__file__)}"


class RecordingSleep:
    """A sleep that returns at once and records every wait asked for (seconds)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        # Still yield once, as a real sleep would, so other tasks get to run.
        await asyncio.sleep(0)


# Retries as in production, but with exact, jitter-free waits that tests can assert.
FAST_RETRY = RetryPolicy(base=0.5, factor=2.0, cap=30.0, jitter=False, max_attempts=6)


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test that blocks the event loop with a synchronous call."""
    with blockbuster_ctx("batch_audience") as bb:
        yield bb


@pytest.fixture
def sleep() -> RecordingSleep:
    """The injected sleep of the test's clients."""
    return RecordingSleep()


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeBatchServer]:
    """A started fake Batch server on 127.0.0.1."""
    async with FakeBatchServer() as server:
        yield server


@pytest.fixture
async def client(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> AsyncIterator[ba.AudienceClient]:
    """An Audience API 2.x client of the fake server, with zero-wait retries."""
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        retry=FAST_RETRY,
        sleep=sleep,
    ) as c:
        yield c


def make_v1_client(
    server: FakeBatchServer, version: str, sleep: RecordingSleep
) -> ba.CustomAudienceClient:
    """A Custom Audience API 1.x client of the fake server, with zero-wait retries."""
    return ba.CustomAudienceClient(
        server.api_key,
        server.rest_key,
        version=version,
        base_url=server.url,
        retry=FAST_RETRY,
        sleep=sleep,
    )


@pytest.fixture
async def client_v10(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> AsyncIterator[ba.CustomAudienceClient]:
    """A Custom Audience API 1.0 client of the fake server."""
    async with make_v1_client(fake_server, "1.0", sleep) as c:
        yield c


@pytest.fixture
async def client_v11(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> AsyncIterator[ba.CustomAudienceClient]:
    """A Custom Audience API 1.1 client of the fake server."""
    async with make_v1_client(fake_server, "1.1", sleep) as c:
        yield c


def client_tasks(tasks: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """The tasks that are neither the current one nor the fake server's (aiohttp.web) own."""

    def servers(task: asyncio.Task[object]) -> bool:
        code = getattr(task.get_coro(), "cr_code", None)
        return code is not None and "aiohttp/web_" in code.co_filename

    return {t for t in tasks if t is not asyncio.current_task() and not servers(t)}


class ServerProcess:
    """The fake server in a child process: its URL and keys (no membership inspection)."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, str]) -> None:
        self.proc = proc
        self.url = info["url"]
        self.rest_key = info["rest_key"]
        self.project_key = info["project_key"]
        self.api_key = info["api_key"]


@pytest.fixture
async def fake_server_process() -> AsyncIterator[ServerProcess]:
    """A fake server in its own process: loop-lag checks then measure the client alone."""
    import sys

    code = "from batch_audience.testing._serve import run_fake_server; run_fake_server()"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    info: dict[str, str] = {}
    try:
        while len(info) < 4:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
            assert line, "the fake server process ended before printing its URL"
            key, _, value = line.decode().strip().partition(": ")
            info[key] = value
        yield ServerProcess(proc, info)
    finally:
        proc.terminate()
        await proc.wait()
