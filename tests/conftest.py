"""Shared fixtures: a started fake Batch server, clients with zero-wait policies, blockbuster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

import batch_audience as ba
from batch_audience import RetryPolicy
from batch_audience.testing import FakeBatchServer


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
