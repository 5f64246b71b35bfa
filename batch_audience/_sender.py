"""The sender: sealed chunks in, written through the session in order, within a budget.

One role, like aiokafka's Sender beside its accumulator: it never looks inside a chunk (no
per-record work), it only moves sealed bodies to the server and keeps the books.

Rules kept here (spec §7, §8):

- chunks are written in the order they are handed over, at most ``limit`` at once; a chunk is
  never in flight while an earlier chunk that shares an ID with it is (``Chunk.ids``), so an
  add and a later remove of one ID cannot swap;
- each request is retried by the session (its RetryPolicy); without a rate budget, on 429
  the number of chunks in flight halves (down to 1), then grows by one after each run of
  successes, up to the concurrency asked for (AIMD, like TCP). With one, the budget alone
  slows down after a 429: halving as well would slow the writes twice for one refusal;
- acknowledgements reach ``on_ack`` in stream order, each chunk once: a chunk answered before
  an earlier one is held until the earlier one is acknowledged. ``acknowledged`` is the
  stream position up to which every record was acknowledged (the contiguous prefix): the
  safe place to resume from. It never passes a chunk that failed or whose outcome is unknown;
- a chunk that fails for good is kept, with its error and its body, in ``failures`` (stream
  order); from then on ``put``/``send``/``join`` raise the first failure's error until
  ``take_failures`` hands them back. Chunks acknowledged past a failure are delivered to
  ``on_ack`` then (they did land), but ``acknowledged`` stays before the failure.

The rate budget. A client-wide budget in IDs per second (spec §7, ``_ratebudget``) is handed
to the session with each chunk's cost (its entries): the session takes the chunk's IDs from it
before every attempt, the first and each retry, and tells it of each 429 and each 2xx, so
every writer of the client slows down together and a retry waits for its IDs like any write.
Without one (``budget=None``) nothing is paced.

Users. ``run_upload`` hands chunks to ``put`` (bounded concurrency) and a chunked replace's
first chunk to ``send`` (alone, answered before anything else goes). A writer sending one
batch at a time calls ``send`` for each batch: order is kept, a failure is raised and stays
in ``failures`` with its chunk until ``take_failures``.

Cancellation. Every task the sender starts ends before the call that owns it returns:
``abort`` cancels the chunks in flight and waits until each has ended, even when it is itself
cancelled (it then re-raises CancelledError), and ``settle`` aborts when it is cancelled. Not
a TaskGroup: a failure must not cancel chunks in flight when the caller wants them to land
(``settle``), and the writer carries on after a failure.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from ._chunker import Chunk
from ._endpoints import ApiRoute
from ._exceptions import BatchAudienceError, RateLimitError
from ._ratebudget import RateBudget
from ._session import Response, Session
from ._tracing import span

__all__ = [
    "DEFAULT_CONCURRENCY",
    "AckHook",
    "RetryHook",
    "RouteFn",
    "Sender",
    "Sent",
]

DEFAULT_CONCURRENCY: Final = 4  # requests in flight for one upload

RouteFn = Callable[[Chunk], ApiRoute]
# Called with each acknowledged chunk, in stream order.
AckHook = Callable[["Sent"], None]
# Called before each retry with the error and the wait (seconds), as Session.send does.
RetryHook = Callable[[BatchAudienceError, float], None]


class _Concurrency:
    """Halves on 429, grows back by one after each run of successes (AIMD, like TCP)."""

    __slots__ = ("_successes", "ceiling", "limit")

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = ceiling
        self._successes = 0

    def throttled(self) -> None:
        self.limit = max(1, self.limit // 2)
        self._successes = 0

    def succeeded(self) -> None:
        if self.limit >= self.ceiling:
            return
        self._successes += 1
        if self._successes >= self.limit:
            self.limit += 1
            self._successes = 0


_PENDING: Final = 0
_ACKED: Final = 1
_FAILED: Final = 2
_UNKNOWN: Final = 3  # cancelled in flight: it may or may not have been applied
_TAKEN: Final = 4  # failed, and handed back by take_failures()


class Sent:
    """A chunk handed to the sender: its place in the stream and, once known, its outcome."""

    __slots__ = ("chunk", "count", "error", "ids", "index", "response", "start", "state")

    def __init__(self, chunk: Chunk) -> None:
        self.index = chunk.index
        self.start = chunk.start
        self.count = chunk.count
        self.ids = chunk.ids
        # Kept while in flight and after a failure (the entries, for whoever handles it);
        # dropped once acknowledged.
        self.chunk: Chunk | None = chunk
        self.response: Response | None = None
        self.error: BaseException | None = None
        self.state = _PENDING

    def __repr__(self) -> str:
        state = ("pending", "acknowledged", "failed", "unknown", "failed")[self.state]
        return f"<Sent chunk {self.index}: {self.where}, {state}>"

    @property
    def end(self) -> int:
        """Stream position just past the chunk's last record."""
        return self.start + self.count

    @property
    def where(self) -> str:
        """The chunk's records, for messages: "records 10000-19999"."""
        if self.count == 0:
            return f"the empty chunk at record {self.start}"
        return f"records {self.start}-{self.end - 1}"


class Sender:
    """Writes sealed chunks through a session in order, within a concurrency and a budget.

    See the module docstring for the ordering, acknowledgement, failure and cancellation
    rules and for the rate-budget hook.
    """

    def __init__(
        self,
        session: Session,
        route: RouteFn,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        start: int = 0,
        budget: RateBudget | None = None,
        on_ack: AckHook | None = None,
        on_retry: RetryHook | None = None,
        audience: str = "",
    ) -> None:
        self._session = session
        self._route = route
        self._limiter = _Concurrency(concurrency)
        self._budget = budget
        self._on_ack = on_ack
        self._on_retry_hook = on_retry
        self._audience = audience
        self._tasks: dict[asyncio.Task[Response], Sent] = {}
        # Chunks not yet delivered to on_ack, in stream order.
        self._order: deque[Sent] = deque()
        # Set once a chunk before the head of _order failed or ended unknown.
        self._gap = False
        self.acknowledged = start
        self.failures: list[Sent] = []
        self.cancelled = 0  # chunks cancelled in flight by abort(): outcome unknown

    @property
    def limit(self) -> int:
        """Chunks allowed in flight now (lowered after 429s)."""
        return self._limiter.limit

    @property
    def in_flight(self) -> int:
        """Chunks being written now."""
        return len(self._tasks)

    async def put(self, chunk: Chunk) -> None:
        """Start writing ``chunk`` once there is room and no earlier chunk in flight shares an ID.

        Raises:
            BatchAudienceError: the error of the first chunk that failed for good (see
                ``failures``); ``chunk`` is then not sent.
        """
        self._check()
        tasks = self._tasks
        while tasks and (len(tasks) >= self._limiter.limit or await self._overlaps(chunk)):
            await self._reap(asyncio.FIRST_COMPLETED)
            self._check()
        sent = Sent(chunk)
        self._order.append(sent)
        # Registered with no await in between: abort() always sees the task.
        tasks[asyncio.create_task(self._write(sent, None))] = sent

    async def send(self, chunk: Chunk, route: ApiRoute | None = None) -> Response:
        """Write ``chunk`` alone, once everything in flight was acknowledged; return its answer.

        ``route`` replaces the default route (a replace's first chunk). Runs in the caller's
        task: cancelling the call cancels the request.

        Raises:
            BatchAudienceError: this chunk's error, or that of an earlier chunk that failed.
        """
        await self.join()
        sent = Sent(chunk)
        self._order.append(sent)
        try:
            response = await self._write(sent, route)
        except asyncio.CancelledError:
            sent.state = _UNKNOWN
            self.cancelled += 1
            raise
        except BaseException as exc:
            self._failed(sent, exc)
            self._deliver()
            raise
        self._acked(sent, response)
        self._deliver()
        return response

    async def join(self) -> None:
        """Wait until every chunk in flight was answered.

        Raises:
            BatchAudienceError: the error of the first chunk that failed for good, as soon as
                it is known (the others stay in flight: ``abort`` or ``settle`` them).
        """
        self._check()
        while self._tasks:
            await self._reap(asyncio.FIRST_COMPLETED)
            self._check()

    async def settle(self) -> None:
        """Let every chunk in flight end, send nothing more, raise nothing of theirs.

        What they give is in ``failures`` and, for acknowledged chunks, delivered to ``on_ack``
        in order. Cancelling it cancels them and waits for them (``abort``), then re-raises.
        """
        try:
            while self._tasks:
                await self._reap(asyncio.ALL_COMPLETED)
        except BaseException:
            await self.abort()
            raise

    async def abort(self) -> None:
        """Cancel every chunk in flight and wait until each has ended; no task outlives it.

        A chunk that was answered before its cancellation took effect counts as answered;
        the others are counted in ``cancelled`` (whether they were applied is unknown). When
        this call is cancelled itself it still waits for the chunks, then re-raises.
        """
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        interrupted: asyncio.CancelledError | None = None
        while not all(task.done() for task in tasks):
            try:
                await asyncio.wait(tasks)
            except asyncio.CancelledError as exc:
                interrupted = exc
                for task in tasks:
                    task.cancel()
        self._collect(tasks)
        if interrupted is not None:
            raise interrupted

    def take_failures(self) -> list[Sent]:
        """Hand back the chunks that failed (with ``.error`` and ``.chunk``), in stream order.

        Writing can go on after this; acknowledgements held behind a failure are delivered
        to ``on_ack`` now, and ``acknowledged`` stays before the first failure for good.
        """
        failures, self.failures = self.failures, []
        for sent in failures:
            sent.state = _TAKEN
        self._deliver()
        return failures

    # -- internals ---------------------------------------------------------------------------

    def _check(self) -> None:
        if self.failures:
            error = self.failures[0].error
            assert error is not None
            raise error

    async def _overlaps(self, chunk: Chunk) -> bool:
        # One comparison of up to 10,000 IDs per chunk in flight, with a turn for the loop in
        # between: per chunk, never per record.
        ids = chunk.ids
        for other in list(self._tasks.values()):
            if not ids.isdisjoint(other.ids):
                return True
            await asyncio.sleep(0)
        return False

    async def _reap(self, return_when: str) -> None:
        done, _ = await asyncio.wait(self._tasks, return_when=return_when)
        self._collect(done)
        self._deliver()

    def _collect(self, done: Iterable[asyncio.Task[Response]]) -> None:
        tasks = self._tasks
        for task in done:
            sent = tasks.pop(task, None)
            if sent is None:
                continue
            if task.cancelled():
                sent.state = _UNKNOWN
                self.cancelled += 1
                continue
            error = task.exception()
            if error is None:
                self._acked(sent, task.result())
            else:
                self._failed(sent, error)

    def _acked(self, sent: Sent, response: Response) -> None:
        sent.state = _ACKED
        sent.response = response
        sent.chunk = None
        sent.ids = frozenset()

    def _failed(self, sent: Sent, error: BaseException) -> None:
        sent.state = _FAILED
        sent.error = error
        sent.ids = frozenset()
        failures = self.failures
        failures.append(sent)
        if len(failures) > 1:
            failures.sort(key=lambda s: s.index)

    def _deliver(self) -> None:
        """Hand acknowledged chunks to on_ack in stream order; advance the prefix."""
        order = self._order
        on_ack = self._on_ack
        while order:
            head = order[0]
            state = head.state
            if state == _ACKED:
                order.popleft()
                if not self._gap:
                    self.acknowledged = head.end
                if on_ack is not None:
                    on_ack(head)
            elif state in (_PENDING, _FAILED):
                return
            else:  # failed and handed back, or unknown: later chunks may still be delivered
                order.popleft()
                self._gap = True

    async def _write(self, sent: Sent, route: ApiRoute | None) -> Response:
        """One chunk's request, retried and paced by the session; tells the limiter."""
        chunk = sent.chunk
        assert chunk is not None
        if route is None:
            route = self._route(chunk)
        del chunk  # the route holds the body now; sent.chunk keeps it for a failure
        # Building the body and writing it to the socket each copy megabytes: not in one turn.
        await asyncio.sleep(0)
        with span(
            "batch_audience.chunk",
            {
                "batch_audience.audience": self._audience,
                "batch_audience.operation": route.operation,
            },
        ):
            try:
                response = await self._session.send(
                    route, on_retry=self._on_retry, budget=self._budget, cost=sent.count
                )
            except RateLimitError:
                if self._budget is None:
                    self._limiter.throttled()
                raise
        # Acknowledged: the body is not needed any more, even before the task is reaped.
        sent.chunk = None
        self._limiter.succeeded()
        return response

    def _on_retry(self, exc: BatchAudienceError, delay: float) -> None:
        if isinstance(exc, RateLimitError) and self._budget is None:
            self._limiter.throttled()
        if self._on_retry_hook is not None:
            self._on_retry_hook(exc, delay)
