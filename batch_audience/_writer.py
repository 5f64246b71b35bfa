"""The buffered writer for event consumers: size/age flushing, backpressure, no lost entries.

Split by role, like aiokafka's producer: the caller's ``add``/``remove`` are the accumulator
(validate, append to the open batch, seal it when full), one background task is the sender
(sends sealed batches one at a time, in order), and a timer seals the open batch when its
oldest entry reaches ``max_delay``.

Why one request in flight: a batch carries adds and removes together (one update route takes
both, and within one request the last entry for an ID wins, spec §2.3), so sending batches
strictly one after the other keeps per-ID order across batches and across retries with no ID
bookkeeping (spec §8). The producer fills the next batch while the current one is in flight,
which is enough to keep a 10,000-entry pipe busy (see benchmarks/writer.py).

A batch that fails for good does not hold the stream up (as in aiokafka, its entries go to
the error path and the sender moves on), so later events for its IDs may land before the
failed entries are resent. The only ID bookkeeping is for that case: a ledger of the IDs of
failed entries still held by someone, with the position of the latest event accepted for
each, which ``resend`` consults to skip entries a later event superseded. It costs one dict
check per event while nothing has failed.

Per event the accumulator does one pass of the bulk uploads' intake (``_intake``: the same
rules, each key set judged once), whose JSON is appended to the open batch's bytearray, and a
few counters; every 128 events it
yields to the loop. Timers and wake-ups happen once per batch, never once per event, and an
idle writer has no timer and a sender parked on an Event: it costs nothing.

The ids array goes to the endpoints' route builder as one ``EncodedIds``, which
``Endpoints.update`` places in the request's body untouched, never copied (for every
generation; the integration tests send through all three).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import math
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Self, final

import attrs
import orjson

from ._chunker import Chunk
from ._endpoints import EncodedIds
from ._exceptions import BatchAudienceError, ClientClosedError, RateLimitError, ValidationError
from ._intake import Intake
from ._models import AttributeValue, Record, token_of
from ._sender import Sender
from ._validate import MAX_ENTRIES, check_audience_name

if TYPE_CHECKING:
    from ._endpoints import Endpoints
    from ._ratebudget import RateBudget
    from ._session import Session

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_MAX_DELAY",
    "AudienceWriter",
    "DrainTimeout",
    "ErrorHandler",
    "FlushResult",
    "ResendResult",
    "WriterEntry",
    "WriterError",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_DELAY: Final = 5.0  # seconds an entry may wait in the open batch
DEFAULT_DRAIN_TIMEOUT: Final = 30.0  # seconds aclose() spends sending what is left
DEFAULT_PENDING_BATCHES: Final = 4  # max_pending defaults to this many full batches
# The accumulator hands the loop a turn after this many calls: an add that never blocks
# never suspends, so a tight producer loop would otherwise starve the sender and every other
# task. Measured with 3-attribute events: loop lag p99 ~3.7 ms at 256, ~2.5 ms at 128,
# ~1.7 ms at 64, with no visible change in throughput.
_YIELD_EVERY: Final = 128
# Tokens kept for the next FlushResult; a consumer that never calls flush() must not grow
# without bound (one token per request, forever).
_MAX_TOKENS: Final = 1_000

Action = Literal["add", "remove"]


class _Ledger:
    """Per writer: the position of the latest event accepted for each ID of a failed entry.

    Only IDs of failed entries still alive somewhere are kept (``refs`` counts them), so a
    consumer that drops failed entries for good does not grow the ledger: memory follows the
    failed entries the caller holds, not the stream.
    """

    __slots__ = ("latest", "refs")

    def __init__(self) -> None:
        self.latest: dict[str, int] = {}
        self.refs: dict[str, int] = {}

    def superseded(self, uid: str, position: int) -> bool:
        """True when an event for ``uid`` was accepted after ``position``."""
        return self.latest.get(uid, position) > position

    def release(self, ids: Sequence[str]) -> None:
        """Forget one reference to each ID (its failed entry is gone)."""
        refs = self.refs
        for uid in ids:
            left = refs[uid] - 1
            if left:
                refs[uid] = left
            else:
                del refs[uid]
                del self.latest[uid]


class _Failure:
    """Shared by the entries of one failure: their ledger, released when the last entry dies."""

    __slots__ = ("ids", "ledger")

    def __init__(self, ledger: _Ledger, ids: tuple[str, ...]) -> None:
        self.ledger = ledger
        self.ids = ids

    def __del__(self) -> None:
        self.ledger.release(self.ids)

    # A copied entry shares its origin; a pickled one (e.g. a dead-letter store) leaves it
    # behind: another process cannot see this writer's later events.
    def __copy__(self) -> _Failure:
        return self

    def __deepcopy__(self, _memo: object) -> _Failure:
        return self

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _no_origin, ()


def _no_origin() -> None:
    return None


@attrs.frozen(slots=True)
class WriterEntry:
    """One entry the writer could not deliver: its action, ID, and attributes/tags in wire form.

    Wire form is what the API takes, and what ``add`` accepts again: ``datetime`` values are
    already ``"date(key)": "…Z"``, ``Url`` values ``"url(key)": "…"``. An entry from a writer
    remembers its place in that writer's stream (not part of equality), which is how
    ``resend`` knows whether a later event for the same ID superseded it.
    """

    action: Action
    id: str
    attributes: Mapping[str, Any] | None = None
    tags: Sequence[str] | None = None
    _origin: _Failure | None = attrs.field(
        default=None, eq=False, repr=False, kw_only=True, alias="_origin"
    )
    _position: int = attrs.field(default=-1, eq=False, repr=False, kw_only=True, alias="_position")

    @property
    def superseded(self) -> bool:
        """True when the writer it came from accepted a later event for the same ID."""
        origin = self._origin
        return origin is not None and origin.ledger.superseded(self.id, self._position)

    @property
    def record(self) -> Record:
        """The entry as a Record, e.g. to pass to ``client.add``."""
        return Record(self.id, attributes=self.attributes, tags=self.tags)


@attrs.frozen(slots=True, kw_only=True)
class FlushResult:
    """What the writer sent since the previous ``flush()`` returned (or since it opened)."""

    entries: int = 0  # entries acknowledged by the server
    requests: int = 0  # requests acknowledged
    tokens: tuple[str, ...] = ()  # their indexing tokens, oldest first (at most the last 1,000)
    retries: int = 0  # request retries along the way
    failed: int = 0  # entries that failed for good and were handed to on_error
    throttled: int = 0  # requests answered 429 along the way (retried, or part of failed)


@attrs.frozen(slots=True, kw_only=True)
class ResendResult:
    """What ``resend`` did: entries buffered again, and entries skipped as superseded."""

    resent: int = 0  # entries buffered again, in order
    # Skipped, in order: a later event for the same ID was accepted after them, so sending
    # them now would undo it. Their ID already ends in the state the later event sets.
    superseded: tuple[WriterEntry, ...] = ()


# Called with the entries of one failed batch (in order) and the error that ended it.
# Synchronous on purpose: it also runs while the writer closes, even in a cancelled task, where
# awaiting user code could hang the shutdown. Hand the entries to a queue for async work.
ErrorHandler = Callable[[Sequence[WriterEntry], Exception], None]


class DrainTimeout(BatchAudienceError, TimeoutError):
    """The writer closed before these entries were sent: ``drain_timeout`` passed."""

    def __init__(self, drain_timeout: float) -> None:
        self.drain_timeout = drain_timeout
        super().__init__(
            f"the writer closed with entries not sent within drain_timeout={drain_timeout:g} s"
        )


class WriterError(BatchAudienceError):
    """Entries the writer could not deliver: ``.entries`` in order, ``.error`` the first cause.

    ``.errors`` holds every distinct error, in order. ``.handler_errors`` holds what
    ``on_error`` raised when it was handed these entries (it did not take them); the first is
    also the ``__cause__``. The message counts entries and names the errors' types; it never
    shows an ID.
    """

    def __init__(
        self,
        failures: Sequence[tuple[Sequence[WriterEntry], Exception]],
        *,
        handler_errors: Sequence[BaseException] = (),
    ) -> None:
        self.entries: tuple[WriterEntry, ...] = tuple(e for batch, _ in failures for e in batch)
        errors: list[Exception] = []
        for _, error in failures:
            if not any(error is seen for seen in errors):
                errors.append(error)
        self.errors: tuple[Exception, ...] = tuple(errors)
        self.error: Exception = errors[0]
        self.handler_errors: tuple[BaseException, ...] = tuple(handler_errors)
        kinds = ", ".join(dict.fromkeys(_kind(e) for e in errors))
        raised = ""
        if self.handler_errors:
            names = ", ".join(dict.fromkeys(type(e).__name__ for e in self.handler_errors))
            raised = f"; on_error raised {names}, see .handler_errors"
        super().__init__(
            f"{len(self.entries)} entries in {len(failures)} batches were not delivered ({kinds}); "
            f"see .entries and .error{raised}"
        )

    def __repr__(self) -> str:
        return f"WriterError(<{len(self.entries)} entries>, error={type(self.error).__name__})"


def _kind(error: Exception) -> str:
    status = getattr(error, "status", None)
    return f"{type(error).__name__} {status}" if status else type(error).__name__


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    STOPPED = "stopped"  # the sender ended on its own: nothing more can be sent
    CLOSING = "closing"
    CLOSED = "closed"


def _positive_int(field: str, value: object, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{field} must be an integer >= 1, got {value!r}")
    if high is not None and value > high:
        raise ValidationError(
            f"{field} must be at most {high} (entries per request), got {value!r}"
        )
    return value


def _seconds(field: str, value: object, *, zero: bool) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if math.isfinite(seconds) and (seconds > 0 or (zero and seconds == 0)):
            return seconds
    bound = ">= 0" if zero else "> 0"
    raise ValidationError(f"{field} must be a finite number of seconds {bound}, got {value!r}")


class WriterHost(Protocol):
    """What a writer needs of the client that made it (a protocol: no import of ``_client``)."""

    _session: Session
    _endpoints: Endpoints
    _budget: RateBudget

    def _open(self) -> object: ...

    async def _upload_type(self, name: str, audience_type: str | None) -> str | None: ...


class _Batch:
    """A sealed batch: its ``ids`` array as JSON, its entry count, its first entry's position."""

    __slots__ = ("count", "json", "start")

    def __init__(self, json: bytearray | bytes, count: int, start: int) -> None:
        self.json = json
        self.count = count
        self.start = start

    def decoded(self) -> list[dict[str, Any]]:
        """The batch's entries as the API's dicts, in order (only on the failure path)."""
        entries: list[dict[str, Any]] = orjson.loads(self.json)
        return entries


@final
class AudienceWriter:
    """A buffered writer of adds and removes to one audience, for long-running event consumers.

    Use ``async with client.writer(name) as writer``. Each ``add``/``remove`` is validated at
    once (a ValidationError is raised to the caller and nothing is buffered), then buffered.
    A batch is sent when it holds ``max_records`` entries, when its oldest entry has waited
    ``max_delay`` seconds (the loop's monotonic clock), on ``flush()``, and when the writer
    closes. Batches are sent one at a time, in order, each retried by the client's RetryPolicy
    before the next is sent, so an add and a later remove of one ID end in the later state.

    Backpressure: ``add``/``remove`` wait while ``max_pending`` entries are buffered or in
    flight. Each call either buffers its entry and returns, or raises and buffers nothing.

    Failures: entries of a batch that still fails after retries go to ``on_error(entries,
    error)``; without ``on_error`` they are raised as a WriterError (with the entries) from
    the next ``add``/``remove``/``flush`` or from ``aclose()``. Nothing is dropped. If
    ``on_error`` raises, it did not take the entries: they are raised the same way, with what
    it raised in ``WriterError.handler_errors`` (and as the ``__cause__``); the writer goes on.
    A KeyboardInterrupt or SystemExit from it propagates; the writer then stops (later calls
    raise ClientClosedError, never wait) and its close hands over what it held.

    Per-ID order across failures: later batches are still sent after one fails (a consumer
    must not stall on one bad batch), so the failed entries are out of order once later events
    for their IDs went out. ``resend`` therefore skips every entry superseded by a later event
    for its ID that the writer accepted (sent, buffered, or failed too), and returns them in
    ``ResendResult.superseded``. Resending all failed entries (in any order, even twice) ends
    each ID exactly as replaying the accepted events in order would. ``WriterEntry.superseded``
    tells the same for one entry, e.g. before parking it in a dead-letter store.

    Cancellation contract: when the task inside ``async with`` is cancelled (or any exception
    leaves the block), the writer still sends everything it holds, for at most
    ``drain_timeout`` seconds; further cancellations of the task during that drain are held
    back and re-raised once it ends. Then the original exception propagates. Entries that could
    not be sent by then (including a request cut off in flight, which the server may or may
    not have applied) go to ``on_error`` with a DrainTimeout; without ``on_error`` they stay
    in ``writer.unsent`` (in order, ready for ``resend`` on a new writer), are counted in an
    ERROR log line (without IDs) and in a note on the exception. A normal exit raises them as
    a WriterError instead. No background task outlives ``aclose()``.
    """

    def __init__(
        self,
        client: WriterHost,
        name: str,
        *,
        max_records: int = MAX_ENTRIES,
        max_delay: float = DEFAULT_MAX_DELAY,
        max_pending: int | None = None,
        on_error: ErrorHandler | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        self._name = check_audience_name(name)
        self._max_records = _positive_int("max_records", max_records, MAX_ENTRIES)
        self._max_delay = _seconds("max_delay", max_delay, zero=False)
        if max_pending is None:
            max_pending = DEFAULT_PENDING_BATCHES * self._max_records
        self._max_pending = _positive_int("max_pending", max_pending)
        if self._max_pending < self._max_records:
            raise ValidationError(
                f"max_pending ({max_pending}) must be at least max_records ({max_records}): "
                "a full batch has to fit"
            )
        if on_error is not None and not callable(on_error):
            raise ValidationError(f"on_error must be callable, got {type(on_error).__name__}")
        self._on_error = on_error
        self._drain_timeout = _seconds("drain_timeout", drain_timeout, zero=True)
        self._client = client
        self._session: Session = client._session
        self._endpoints = client._endpoints
        generation = client._endpoints.generation
        # Encoders are built here so a generation without this operation fails at once.
        self._encode_add = Intake(generation, "add").encode
        self._encode_remove = Intake(generation, "remove").encode
        self._audience_type: str | None = None
        self._type_known = False
        self._writes = Sender(
            self._session,
            lambda chunk: self._endpoints.update(
                self._name, EncodedIds(chunk.body), self._audience_type
            ),
            concurrency=1,
            budget=client._budget,
            on_retry=self._count_retry,
            audience=name,
        )

        self._state = _State.UNOPENED
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        # The accumulator: the open batch, and sealed batches waiting (the first is in flight).
        # The open batch is its ids array being written: each entry's JSON and a "," are
        # appended to one bytearray, and sealing turns the last "," into "]". Measured, this
        # beats holding entries as objects: buffered dicts are tracked by the garbage collector
        # and set off full collections of 15-20 ms of loop lag each; held orjson results pin a
        # ~4 KB buffer each (157 MB for 40,000); joining 10,000 of them at send time costs
        # 1.5-4 ms in one step. Here an entry costs its bytes and a batch one copy when sent.
        self._json = bytearray(b"[")
        self._count = 0  # entries in the open batch
        self._ready: deque[_Batch] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._pending = 0  # entries buffered, sealed or in flight
        self._position = 0  # entries accepted so far: the position in ValidationError
        self._ticks = 0
        self._sealed = 0  # batches sealed so far
        self._done = 0  # batches finished (acknowledged or failed) so far
        self._closing = False
        # Set once per sealed batch (sender) and once per finished batch (waiters).
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        # Failed batches not yet handed over (no on_error, or on_error raised), and what
        # on_error raised for them: both go out together in the next WriterError.
        self._failed: list[tuple[tuple[WriterEntry, ...], Exception]] = []
        self._handler_errors: list[BaseException] = []
        # Per-ID order across failures: for each ID of a failed entry still held somewhere,
        # the position of the latest event accepted for it (see resend).
        self._ledger = _Ledger()
        self._latest = self._ledger.latest
        self._stopped: str | None = None  # why the sender ended on its own
        # Since the last flush() result.
        self._acked = 0
        self._requests = 0
        self._retries = 0
        self._handed = 0
        self._throttled = 0
        self._tokens: deque[str] = deque(maxlen=_MAX_TOKENS)

    # -- public surface ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The audience written to."""
        return self._name

    @property
    def pending(self) -> int:
        """Entries buffered or in flight."""
        return self._pending

    @property
    def closed(self) -> bool:
        """True once the writer was closed."""
        return self._state is _State.CLOSED

    @property
    def unsent(self) -> tuple[WriterEntry, ...]:
        """Entries that failed or were never sent and were not handed to on_error or raised.

        After a block left by an exception (e.g. cancellation) these are what did not make it,
        in order; pass them to ``resend`` on a new writer before new events for their IDs (it
        skips those superseded here). ``client.add``/``remove`` would resend all of them.
        """
        return tuple(e for entries, _ in self._failed for e in entries)

    def __repr__(self) -> str:
        return (
            f"AudienceWriter(name={self._name!r}, state={self._state.value!r}, "
            f"pending={self._pending}, max_records={self._max_records}, "
            f"max_delay={self._max_delay:g})"
        )

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close(exc)

    async def add(
        self,
        record: str | Record | Mapping[str, Any],
        /,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        tags: Sequence[str] | None = None,
    ) -> None:
        """Buffer an add (or update) of one ID, waiting while ``max_pending`` entries are held.

        Args:
            record: an ID str, or a Record or mapping (``id``, ``attributes``, ``tags``).
            attributes: with an ID str, its attributes (not with Record or mapping).
            tags: with an ID str, its tags (Custom Audience API 1.1 only).

        Raises:
            ValidationError: the entry broke a rule; it was not buffered.
            WriterError: earlier entries failed for good (no on_error); this one was not
                buffered, the writer stays usable.
            ClientClosedError: the writer is closed.
        """
        self._ticks += 1
        if self._ticks >= _YIELD_EVERY:
            self._ticks = 0
            await asyncio.sleep(0)
        if self._state is not _State.OPEN or self._failed:
            self._check_usable()
        if attributes is not None or tags is not None:
            record = self._with_extras(record, attributes, tags)
        uid, entry = self._encode_add(record, self._position)
        if self._pending >= self._max_pending:
            await self._wait_for_space()
        self._put(entry, uid)

    async def remove(self, record: str | Record | Mapping[str, Any], /) -> None:
        """Buffer a remove of one ID (a str, or a Record/mapping without attributes); see ``add``.

        Raises:
            ValidationError: the entry broke a rule; it was not buffered.
            WriterError: earlier entries failed for good (no on_error); this one was not
                buffered, the writer stays usable.
            ClientClosedError: the writer is closed.
        """
        self._ticks += 1
        if self._ticks >= _YIELD_EVERY:
            self._ticks = 0
            await asyncio.sleep(0)
        if self._state is not _State.OPEN or self._failed:
            self._check_usable()
        uid, entry = self._encode_remove(record, self._position)
        if self._pending >= self._max_pending:
            await self._wait_for_space()
        self._put(entry, uid)

    async def resend(self, entries: Iterable[WriterEntry]) -> ResendResult:
        """Buffer failed entries again, in order, except those a later event superseded.

        Takes ``WriterError.entries``, what ``on_error`` received, or an old writer's
        ``unsent``. An entry is superseded when the writer it came from accepted a later event
        for the same ID (sent, buffered or failed itself): sending it now would undo that
        event, so it is skipped and listed in the result. Resending every failed entry, in any
        order and even twice, ends each ID in the state of its latest accepted event. Entries
        from another writer are judged by that writer's events: resend them before adding new
        events for their IDs here. Entries built by hand are always sent.

        Unlike ``add``, this does not raise earlier failures, so a handler can requeue a
        failed batch; they surface from the next ``add``/``flush``.

        Returns:
            ResendResult: how many entries were buffered again, and the superseded ones.

        Raises:
            ValidationError: an entry broke a rule; the ones before it were handled.
            ClientClosedError: the writer is closed.
        """
        self._check_usable(raise_failures=False)
        resent = 0
        superseded: list[WriterEntry] = []
        for entry in entries:
            self._ticks += 1
            if self._ticks >= _YIELD_EVERY:
                self._ticks = 0
                await asyncio.sleep(0)
            if self._state is not _State.OPEN:
                self._check_usable(raise_failures=False)
            if entry.action == "add":
                item: object = {"id": entry.id, "attributes": entry.attributes, "tags": entry.tags}
                uid, wire = self._encode_add(item, self._position)
            elif entry.action == "remove":
                uid, wire = self._encode_remove(entry.id, self._position)
            else:
                raise ValidationError(
                    f"entry action must be 'add' or 'remove', got {entry.action!r}"
                )
            if self._pending >= self._max_pending:
                await self._wait_for_space()
            # Checked after the wait, with no await before _put: an event for this ID accepted
            # while we waited counts too.
            if entry.superseded:
                superseded.append(entry)
                continue
            self._put(wire, uid)
            resent += 1
        return ResendResult(resent=resent, superseded=tuple(superseded))

    async def flush(self) -> FlushResult:
        """Send everything buffered now and wait for it; return what was sent since the last flush.

        Returns:
            FlushResult: entries, requests, tokens and retries acknowledged since the previous
            ``flush()`` returned, including batches sent by size or age meanwhile.

        Raises:
            WriterError: entries failed for good and no on_error took them.
            ClientClosedError: the writer is closed, or closed before the flush completed.
        """
        self._check_usable(raise_failures=False)
        self._seal()
        target = self._sealed
        while self._done < target:
            if self._state is _State.CLOSED:
                raise ClientClosedError("the writer closed before the flush completed")
            if self._state is _State.STOPPED:
                raise self._stopped_error()
            self._progress.clear()
            await self._progress.wait()
        if self._failed:
            raise self._take_failures()
        result = FlushResult(
            entries=self._acked,
            requests=self._requests,
            tokens=tuple(self._tokens),
            retries=self._retries,
            failed=self._handed,
            throttled=self._throttled,
        )
        self._acked = self._requests = self._retries = self._handed = self._throttled = 0
        self._tokens.clear()
        return result

    async def aclose(self) -> None:
        """Send what is left (at most ``drain_timeout`` seconds), stop the sender; idempotent.

        Raises:
            WriterError: entries failed or could not be sent and no on_error took them.
        """
        await self._close(None)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", None) in (_State.OPEN, _State.STOPPED):
            _warn(
                f"unclosed AudienceWriter for {self._name!r}: use 'async with' or await aclose()",
                ResourceWarning,
                stacklevel=2,
            )

    # -- accumulator -------------------------------------------------------------------------

    def _start(self) -> None:
        if self._state is _State.OPEN:
            return
        if self._state is not _State.UNOPENED:
            raise ClientClosedError("the writer is closed; make a new one")
        self._client._open()
        self._loop = asyncio.get_running_loop()
        self._state = _State.OPEN
        self._sender = self._loop.create_task(
            self._run(), name=f"batch_audience.writer[{self._name}]"
        )
        self._sender.add_done_callback(self._sender_ended)

    def _sender_ended(self, sender: asyncio.Task[None]) -> None:
        if self._closing:
            return
        # Ended on its own (KeyboardInterrupt/SystemExit from on_error, or a bug): nothing
        # will be sent any more, so no add or flush may wait for it.
        if sender.cancelled():
            self._stopped = "it was cancelled"
        else:
            self._stopped = f"it raised {type(sender.exception()).__name__}"
        if self._state is _State.OPEN:
            self._state = _State.STOPPED
        self._progress.set()

    def _stopped_error(self) -> ClientClosedError:
        return ClientClosedError(
            f"the writer's sender stopped ({self._stopped}); close the writer: what it holds "
            "goes to on_error or writer.unsent"
        )

    def _check_usable(self, *, raise_failures: bool = True) -> None:
        if self._state is _State.UNOPENED:
            self._start()
        elif self._state is _State.STOPPED:
            raise self._stopped_error()
        elif self._state is not _State.OPEN:
            raise ClientClosedError("the writer is closed")
        if raise_failures and self._failed:
            raise self._take_failures()

    def _take_failures(self) -> WriterError:
        error = WriterError(self._failed, handler_errors=self._handler_errors)
        error.__cause__ = error.handler_errors[0] if error.handler_errors else error.error
        self._failed = []
        self._handler_errors = []
        return error

    @staticmethod
    def _with_extras(
        record: object, attributes: Mapping[str, Any] | None, tags: Sequence[str] | None
    ) -> dict[str, Any]:
        if not isinstance(record, str):
            raise ValidationError(
                "attributes= and tags= go with an ID str; a Record or mapping carries its own"
            )
        return {"id": record, "attributes": attributes, "tags": tags}

    async def _wait_for_space(self) -> None:
        while self._pending >= self._max_pending:
            self._progress.clear()
            await self._progress.wait()
            if self._state is _State.STOPPED:
                raise self._stopped_error()
            if self._state is not _State.OPEN:
                raise ClientClosedError("the writer closed while this entry waited for space")

    def _put(self, entry: bytes, uid: str) -> None:
        json = self._json
        json += entry
        json += b","
        self._count += 1
        self._pending += 1
        latest = self._latest
        if latest and uid in latest:
            latest[uid] = self._position
        self._position += 1
        if self._count >= self._max_records:
            self._seal()
        elif self._count == 1:
            # The age clock starts with the oldest entry of the batch: one timer per batch.
            assert self._loop is not None
            self._timer = self._loop.call_later(self._max_delay, self._age_expired)

    def _age_expired(self) -> None:
        self._timer = None
        self._seal()

    def _seal(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._count:
            return
        json = self._json
        json[-1] = 0x5D  # the trailing "," becomes "]": the array is complete
        self._ready.append(_Batch(json, self._count, self._position - self._count))
        self._json = bytearray(b"[")
        self._count = 0
        self._sealed += 1
        self._wake.set()

    # -- sender ------------------------------------------------------------------------------

    async def _run(self) -> None:
        ready = self._ready
        while True:
            if not ready:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # The batch stays first in ``ready`` while in flight, so a drain that times out
            # still knows it was not confirmed.
            batch = ready[0]
            error: Exception | None = None
            try:
                await self._send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            failed = self._failure((batch,)) if error is not None else ()
            ready.popleft()
            self._pending -= batch.count
            self._done += 1
            self._progress.set()
            if error is not None:
                self._fail(failed, error)

    async def _send(self, batch: _Batch) -> None:
        if not self._type_known:
            # 1.0 bodies name the audience's type: looked up once, by the first batch.
            self._audience_type = await self._client._upload_type(self._name, None)
            self._type_known = True
        # The uploads' sender writes it: the same retries, tracing and rate budget. One batch
        # at a time (``send``), so no ID set is needed for per-ID order.
        chunk = Chunk(self._done, batch.start, batch.count, bytes(batch.json), frozenset())
        try:
            response = await self._writes.send(chunk)
        except BaseException as exc:
            if isinstance(exc, RateLimitError):
                self._throttled += 1
            # The writer keeps its own books of failed entries (``_failure``): the sender's
            # copy is dropped, so the next batch goes on.
            self._writes.take_failures()
            raise
        self._acked += batch.count
        self._requests += 1
        token = token_of(response.data)
        if token is not None:
            self._tokens.append(token)

    def _count_retry(self, error: BatchAudienceError, _delay: float) -> None:
        self._retries += 1
        if isinstance(error, RateLimitError):
            self._throttled += 1

    def _failure(self, batches: Sequence[_Batch]) -> tuple[WriterEntry, ...]:
        """The failed batches' entries, their IDs watched in the ledger from now on.

        ``batches`` must be the oldest in ``ready``: every event accepted after them is then
        still buffered (later batches and the open one), and each sets its ID's latest position.
        """
        decoded = [(batch.start, batch.decoded()) for batch in batches]
        refs = self._ledger.refs
        latest = self._latest
        ids: list[str] = []
        for start, items in decoded:
            for offset, item in enumerate(items):
                uid = item["id"]
                ids.append(uid)
                refs[uid] = refs.get(uid, 0) + 1
                if latest.get(uid, -1) < start + offset:
                    latest[uid] = start + offset
        origin = _Failure(self._ledger, tuple(ids))
        entries = tuple(
            WriterEntry(
                item["action"],
                item["id"],
                item.get("attributes"),
                item.get("tags"),
                _origin=origin,
                _position=start + offset,
            )
            for start, items in decoded
            for offset, item in enumerate(items)
        )
        later = list(itertools.islice(self._ready, len(batches), None))
        if self._count:
            later.append(
                _Batch(bytes(self._json[:-1]) + b"]", self._count, self._position - self._count)
            )
        for batch in later:
            for offset, item in enumerate(batch.decoded()):
                uid = item["id"]
                if uid in latest and latest[uid] < batch.start + offset:
                    latest[uid] = batch.start + offset
        return entries

    def _fail(self, entries: tuple[WriterEntry, ...], error: Exception) -> None:
        logger.warning(
            "writer for %r: %d entries failed for good (%s)",
            self._name,
            len(entries),
            _kind(error),
            extra={"event": "batch_audience.writer.failed", "entries": len(entries)},
        )
        if self._on_error is not None:
            try:
                self._on_error(entries, error)
            except (KeyboardInterrupt, SystemExit):
                self._failed.append((entries, error))
                raise
            except BaseException as handler_error:
                # The entries were not taken: keep them, and the handler's error with them, to
                # be raised together from the next call or the exit. The handler is
                # synchronous, so even a CancelledError is its own, not a cancellation of the
                # sender (that arrives at an await); letting it end the sender would leave
                # every add waiting forever.
                logger.error(
                    "writer for %r: on_error raised %s; its %d entries are kept",
                    self._name,
                    type(handler_error).__name__,
                    len(entries),
                    extra={"event": "batch_audience.writer.handler_failed"},
                )
                self._failed.append((entries, error))
                self._handler_errors.append(handler_error)
                return
            else:
                self._handed += len(entries)
                return
        self._failed.append((entries, error))

    # -- closing -----------------------------------------------------------------------------

    async def _close(self, exc: BaseException | None) -> None:
        if self._state is _State.CLOSED:
            return
        if self._state is _State.CLOSING:
            await self._closed.wait()
            return
        opened = self._state in (_State.OPEN, _State.STOPPED)
        self._state = _State.CLOSING
        cancelled: asyncio.CancelledError | None = None
        try:
            if opened:
                cancelled = await self._drain()
        finally:
            self._state = _State.CLOSED
            self._closed.set()
            self._progress.set()  # waiters see the writer closed
        if self._failed:
            count = sum(len(entries) for entries, _ in self._failed)
            if exc is None and cancelled is None:
                raise self._take_failures()
            logger.error(
                "writer for %r closed with %d entries not delivered; they are in writer.unsent",
                self._name,
                count,
                extra={"event": "batch_audience.writer.unsent", "entries": count},
            )
            note = (
                f"batch_audience writer for {self._name!r}: {count} entries not delivered; "
                "see writer.unsent"
            )
            if self._handler_errors:
                # The block's own exception propagates, so these cannot be raised: the log
                # keeps them, tracebacks included.
                names = ", ".join(dict.fromkeys(type(e).__name__ for e in self._handler_errors))
                note += f"; on_error raised {names} (logged)"
                for handler_error in self._handler_errors:
                    logger.error(
                        "writer for %r: on_error raised %s",
                        self._name,
                        type(handler_error).__name__,
                        exc_info=handler_error,
                        extra={"event": "batch_audience.writer.handler_failed"},
                    )
                self._handler_errors = []
            for target in (exc, cancelled):
                if target is not None:
                    target.add_note(note)
        if cancelled is not None:
            raise cancelled

    async def _drain(self) -> asyncio.CancelledError | None:
        """Send what is left within drain_timeout; return a cancellation that arrived meanwhile."""
        assert self._loop is not None and self._sender is not None
        loop = self._loop
        sender = self._sender
        self._seal()
        self._closing = True
        self._wake.set()
        cancelled: asyncio.CancelledError | None = None
        deadline = loop.time() + self._drain_timeout
        # asyncio.wait never cancels what it waits for: the drain runs on in the sender while
        # this task absorbs cancellations until the deadline (httpcore shields cleanup alike).
        while not sender.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait((sender,), timeout=remaining)
            except asyncio.CancelledError as error:
                cancelled = error
        if not sender.done():
            sender.cancel()
            while not sender.done():
                try:
                    await asyncio.wait((sender,))
                except asyncio.CancelledError as error:
                    cancelled = error
        if not sender.cancelled() and sender.exception() is not None:
            logger.error(
                "writer for %r: the sender stopped", self._name, exc_info=sender.exception()
            )
        reason: Exception = DrainTimeout(self._drain_timeout)
        if self._stopped is not None:
            reason = ClientClosedError(f"the writer's sender stopped ({self._stopped})")
        self._sender = None
        unsent = self._failure(tuple(self._ready)) if self._ready else ()
        self._ready.clear()
        self._pending = 0
        if unsent:
            self._fail(unsent, reason)
        return cancelled
