"""wait_applied's deadline with an injected clock and sleep: the last poll is at the deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import batch_audience as ba
from batch_audience._endpoints import ApiRoute, V2Endpoints
from batch_audience._poller import wait_applied
from batch_audience._session import Response


class Indexer:
    """A stand-in for the session: a fake clock, zero-time sleeps, and a token done at ``ready``."""

    def __init__(self, ready: float, *, spelling: str = "IN_PROGRESS") -> None:
        self.now = 0.0
        self.ready = ready
        self.spelling = spelling
        self.retry = ba.RetryPolicy()
        self.polls: list[float] = []
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def send(self, route: ApiRoute, *, retry: ba.RetryPolicy) -> Response:
        self.polls.append(self.now)
        await asyncio.sleep(0)
        state = "APPLIED" if self.now >= self.ready else self.spelling
        return Response(200, {"indexing_state": state}, 1)

    async def wait(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def wait(indexer: Indexer, **kwargs: Any) -> dict[str, Any]:
    """wait_applied on one token with a jitter-free policy, on the indexer's clock."""
    return await wait_applied(
        session=indexer,  # type: ignore[arg-type]
        endpoints=V2Endpoints("2.8", "project_p"),
        name="a",
        tokens="t",
        policy=ba.PollPolicy(jitter=False),
        rand=lambda: 1.0,
        clock=indexer.clock,
        **kwargs,
    )


async def test_the_last_poll_is_at_the_deadline() -> None:
    """Indexing done at 4.5 s with timeout=5: the wait is cut to end at 5 s, which finds it done."""
    indexer = Indexer(ready=4.5)
    assert await wait(indexer, timeout=5) == {"t": ba.IndexingState.APPLIED}
    assert indexer.polls == [0.0, 0.5, 1.25, 2.375, 4.0625, 5.0]
    assert indexer.sleeps[-1] == pytest.approx(5.0 - 4.0625)


async def test_an_interval_as_long_as_the_timeout_still_polls_at_the_deadline() -> None:
    """interval == timeout: one poll at once, one at the deadline, not an IndexingTimeout at 0 s."""
    indexer = Indexer(ready=3.0)
    assert await wait(indexer, timeout=5, interval=5) == {"t": ba.IndexingState.APPLIED}
    assert indexer.polls == [0.0, 5.0]


async def test_unfinished_at_the_deadline_poll_times_out_then() -> None:
    """Still not done when polled at the deadline: IndexingTimeout, with no poll after it."""
    indexer = Indexer(ready=5.5)
    with pytest.raises(ba.IndexingTimeout) as caught:
        await wait(indexer, timeout=5)
    assert indexer.polls[-1] == 5.0
    assert indexer.now == 5.0
    assert caught.value.states == {"t": ba.IndexingState.IN_PROGRESS}


@pytest.mark.parametrize("spelling", ["IN_PROCESS", "QUEUED", "in_progress"])
async def test_every_state_but_applied_and_replaced_is_not_finished(spelling: str) -> None:
    """IN_PROCESS (one Batch page's spelling) or any unknown state keeps the wait going."""
    indexer = Indexer(ready=2.0, spelling=spelling)
    assert await wait(indexer, timeout=10, interval=1) == {"t": ba.IndexingState.APPLIED}
    assert indexer.polls == [0.0, 1.0, 2.0]
    indexer = Indexer(ready=99, spelling=spelling)
    with pytest.raises(ba.IndexingTimeout) as caught:
        await wait(indexer, timeout=2, interval=1)
    assert caught.value.states == {"t": spelling}
