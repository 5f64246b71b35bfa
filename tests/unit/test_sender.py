"""The sender against a scripted session: order, per-ID waits, prefix, failures, budget, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

import batch_audience as ba
from batch_audience._chunker import Chunk
from batch_audience._endpoints import ApiRoute
from batch_audience._ratebudget import RateBudget
from batch_audience._sender import Sender, Sent
from batch_audience._session import Response


class Call:
    """One request the fake session holds until the test answers it."""

    def __init__(
        self, route: ApiRoute, on_retry: object, budget: object = None, cost: int = 1
    ) -> None:
        self.route = route
        self.on_retry = on_retry
        self.budget = budget
        self.cost = cost
        self.future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def ok(self, token: str = "t") -> None:
        """Answer 202 with an indexing token."""
        self.future.set_result(Response(202, {"indexing_token": token}, 1))

    def fail(self, error: BaseException) -> None:
        """Fail the request for good with ``error``."""
        self.future.set_exception(error)


class ScriptedSession:
    """A Session stand-in: each send() waits until the test answers it."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def send(
        self, route: ApiRoute, *, on_retry: object = None, budget: object = None, cost: int = 1
    ) -> Response:
        call = Call(route, on_retry, budget, cost)
        self.calls.append(call)
        return await call.future

    def call(self, index: int) -> Call:
        """The call for chunk ``index`` (routes are named after their chunk)."""
        (found,) = [c for c in self.calls if c.route.path == f"/chunk/{index}"]
        return found


def route(chunk: Chunk) -> ApiRoute:
    """A route named after its chunk, so tests can find its call."""
    return ApiRoute(
        operation="update", method="POST", path=f"/chunk/{chunk.index}", body=chunk.body
    )


def chunk(index: int, ids: Iterable[str], size: int = 10) -> Chunk:
    """Chunk ``index`` of ``size`` entries (positions index*size ...), holding ``ids``."""
    return Chunk(index, index * size, size, b"[]", frozenset(ids))


def make(session: ScriptedSession, acked: list[Sent] | None = None, **kwargs: object) -> Sender:
    """A sender of the scripted session that records acknowledgements in ``acked``."""
    return Sender(
        session,  # type: ignore[arg-type]
        route,
        on_ack=None if acked is None else acked.append,
        **kwargs,  # type: ignore[arg-type]
    )


async def turns(n: int = 5) -> None:
    """Let the loop run the sender's tasks a few steps."""
    for _ in range(n):
        await asyncio.sleep(0)


def bad_request() -> ba.BadRequestError:
    """A 400 as the session raises it."""
    return ba.BadRequestError(400, error_code="MALFORMED_PARAMETER", message="no")


async def test_acks_reach_on_ack_in_stream_order_and_the_prefix_is_contiguous() -> None:
    """A chunk answered before an earlier one is held; acknowledged moves only contiguously."""
    session = ScriptedSession()
    acked: list[Sent] = []
    sender = make(session, acked, start=100)
    for i in range(3):
        await sender.put(chunk(i, [f"c{i}"]))
    await turns()
    session.call(1).ok()
    session.call(2).ok()
    await turns()
    join = asyncio.create_task(sender.join())
    await turns()
    assert acked == [] and sender.acknowledged == 100
    session.call(0).ok()
    await join
    assert [s.index for s in acked] == [0, 1, 2]
    assert sender.acknowledged == 30  # chunk 2 ends at position 30
    assert all(s.chunk is None for s in acked)  # bodies are not kept once acknowledged


async def test_a_failure_stops_the_prefix_and_keeps_its_chunk() -> None:
    """Chunk 0 fails, chunk 1 lands: join raises 0's error; 1 is delivered once handed back."""
    session = ScriptedSession()
    acked: list[Sent] = []
    sender = make(session, acked)
    first, second = chunk(0, ["a"]), chunk(1, ["b"])
    await sender.put(first)
    await sender.put(second)
    await turns()
    session.call(1).ok()
    error = bad_request()
    session.call(0).fail(error)
    with pytest.raises(ba.BadRequestError) as caught:
        await sender.join()
    assert caught.value is error
    assert acked == []
    with pytest.raises(ba.BadRequestError):
        await sender.put(chunk(2, ["c"]))  # nothing more goes until the failure is taken
    (failed,) = sender.take_failures()
    assert (failed.index, failed.error, failed.chunk) == (0, error, first)
    assert [s.index for s in acked] == [1]
    assert sender.acknowledged == 0  # never past the failed chunk
    assert len(session.calls) == 2


async def test_a_chunk_waits_for_an_earlier_one_sharing_an_id() -> None:
    """Per-ID order: a chunk sharing an ID with one in flight waits; a disjoint one does not."""
    session = ScriptedSession()
    sender = make(session, concurrency=4)
    await sender.put(chunk(0, ["x", "a"]))
    await sender.put(chunk(1, ["b"]))
    third = asyncio.create_task(sender.put(chunk(2, ["x"])))
    await turns()
    assert not third.done()
    assert [c.route.path for c in session.calls] == ["/chunk/0", "/chunk/1"]
    session.call(0).ok()
    await third
    await turns()
    assert [c.route.path for c in session.calls][-1] == "/chunk/2"
    session.call(1).ok()
    session.call(2).ok()
    await sender.join()


async def test_concurrency_bounds_the_chunks_in_flight() -> None:
    """With concurrency=2 a third chunk waits until one of two in flight is answered."""
    session = ScriptedSession()
    sender = make(session, concurrency=2)
    await sender.put(chunk(0, ["a"]))
    await sender.put(chunk(1, ["b"]))
    third = asyncio.create_task(sender.put(chunk(2, ["c"])))
    await turns()
    assert not third.done() and sender.in_flight == 2
    session.call(1).ok()
    await third
    assert sender.in_flight == 2
    session.call(0).ok()
    await turns()
    session.call(2).ok()
    await sender.join()
    assert sender.acknowledged == 30


async def test_429_halves_the_limit() -> None:
    """Without a budget, a retried 429 halves the chunks in flight and reaches the hook."""
    session = ScriptedSession()
    retries: list[float] = []
    sender = make(session, concurrency=4, on_retry=lambda _e, delay: retries.append(delay))
    await sender.put(chunk(0, ["a"], size=7))
    await turns()
    hook = session.call(0).on_retry
    assert callable(hook)
    hook(ba.RateLimitError(429, retry_after=2.0), 2.0)
    assert sender.limit == 2
    assert retries == [2.0]
    session.call(0).ok()
    await sender.join()


async def test_with_a_budget_a_429_leaves_the_limit_alone() -> None:
    """The budget paces after a 429: halving the chunks in flight too would slow it twice."""
    session = ScriptedSession()
    retries: list[float] = []
    sender = make(
        session, concurrency=4, budget=RateBudget(), on_retry=lambda _e, d: retries.append(d)
    )
    await sender.put(chunk(0, ["a"], size=7))
    await turns()
    hook = session.call(0).on_retry
    assert callable(hook)
    hook(ba.RateLimitError(429, retry_after=2.0), 2.0)
    assert sender.limit == 4
    assert retries == [2.0]
    session.call(0).ok()
    await sender.join()


async def test_the_budget_and_each_chunks_cost_go_to_the_session() -> None:
    """The session gets the client's budget and each chunk's entry count, in stream order."""
    session = ScriptedSession()
    budget = RateBudget()
    sender = make(session, budget=budget)
    await sender.put(Chunk(0, 0, 3, b"[]", frozenset({"a"})))
    await sender.put(Chunk(1, 3, 5, b"[]", frozenset({"b"})))
    await turns()
    assert [(c.budget, c.cost) for c in session.calls] == [(budget, 3), (budget, 5)]
    session.call(0).ok()
    session.call(1).ok()
    await sender.join()


async def test_send_goes_alone_after_everything_in_flight() -> None:
    """send() waits for the chunks in flight, then writes its chunk on the route given."""
    session = ScriptedSession()
    acked: list[Sent] = []
    sender = make(session, acked)
    await sender.put(chunk(0, ["a"]))
    special = ApiRoute(operation="replace", method="POST", path="/chunk/1")
    sending = asyncio.create_task(sender.send(chunk(1, ["b"]), special))
    await turns()
    assert len(session.calls) == 1
    session.call(0).ok()
    await turns()
    session.call(1).ok("r")
    response = await sending
    assert response.data == {"indexing_token": "r"}
    assert [s.index for s in acked] == [0, 1] and sender.acknowledged == 20


async def test_abort_leaves_no_task_even_when_cancelled_itself() -> None:
    """abort() cancels the chunks in flight and waits for them, through its own cancellation."""
    session = ScriptedSession()
    sender = make(session)
    await sender.put(chunk(0, ["a"]))
    await sender.put(chunk(1, ["b"]))
    await turns()
    session.call(0).ok()
    await turns()
    before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    assert len(before) == 1  # chunk 0's task is done; chunk 1's waits
    aborting = asyncio.create_task(sender.abort())
    await asyncio.sleep(0)
    aborting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await aborting
    assert all(t.done() for t in before)
    assert sender.cancelled == 1
    sender.take_failures()
    assert sender.acknowledged == 10  # chunk 0 was answered before the cancellation


async def test_cancelled_settle_cancels_the_chunks_in_flight() -> None:
    """Cancelling settle() cancels what it was waiting for, and waits for it to end."""
    session = ScriptedSession()
    sender = make(session)
    await sender.put(chunk(0, ["a"]))
    await turns()
    (task,) = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    settling = asyncio.create_task(sender.settle())
    await turns()
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    assert task.cancelled()
    assert sender.in_flight == 0


async def test_a_cancelled_send_leaves_the_prefix_before_it() -> None:
    """A send() cancelled mid-request has an unknown outcome: the prefix never passes it."""
    session = ScriptedSession()
    acked: list[Sent] = []
    sender = make(session, acked)
    sending = asyncio.create_task(sender.send(chunk(0, ["a"])))
    await turns()
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    await sender.put(chunk(1, ["b"]))
    await turns()
    session.call(1).ok()
    await sender.join()
    assert [s.index for s in acked] == [1]
    assert sender.acknowledged == 0 and sender.cancelled == 1
