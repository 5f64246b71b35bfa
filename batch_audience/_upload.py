"""The upload engine: sends chunker payloads with bounded, adaptive concurrency and per-ID order.

Rules kept here (spec §5.5, §7, §8):

- chunks are sent in stream order, and a chunk is never in flight while an earlier chunk
  that shares an ID with it is (so an add and a later remove of one ID cannot swap);
- a replace sends its first chunk as the replace call and only after its 2xx the rest as
  ``add`` updates; beyond one chunk the replace is not atomic and the report says so;
- on 429 the number of chunks in flight halves (down to 1), then grows by one after each
  run of successes, up to the configured concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any, Final, Literal

import attrs
import orjson

from ._chunker import Chunk, aiter_chunks
from ._endpoints import ApiRoute, Endpoints
from ._exceptions import (
    BatchAudienceError,
    RateLimitError,
    ValidationError,
)
from ._intake import Intake
from ._models import Progress, ProgressCallback, UploadReport
from ._session import Response, Session
from ._tracing import span
from ._validate import MAX_ENTRIES

__all__ = ["DEFAULT_CONCURRENCY", "AckHook", "Operation", "run_upload"]

DEFAULT_CONCURRENCY: Final = 4  # requests in flight for one upload

Operation = Literal["add", "remove", "replace"]
# Called after each acknowledged chunk: (first position, end position, token or None).
AckHook = Callable[[int, int, str | None], None]


class _Concurrency:
    """Halves on 429, grows back by one after each run of successes (AIMD, like TCP)."""

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


@attrs.frozen(slots=True)
class _Sent:
    """What the engine keeps of a chunk once handed to a task: its place, size and IDs."""

    index: int
    start: int
    count: int
    ids: frozenset[str] | set[str]


@attrs.define
class _Tally:
    records: int = 0
    requests: int = 0
    retries: int = 0
    tokens: dict[int, str] = attrs.Factory(dict)


def check_concurrency(concurrency: int) -> int:
    """Concurrency must be an int >= 1."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValidationError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    return concurrency


def check_chunk_size(chunk_size: int) -> int:
    """A chunk holds 1 to 10,000 entries (spec §2.3)."""
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or not 1 <= chunk_size <= MAX_ENTRIES
    ):
        raise ValidationError(
            f"chunk_size must be an integer from 1 to {MAX_ENTRIES}, got {chunk_size!r}"
        )
    return chunk_size


async def run_upload(
    *,
    session: Session,
    endpoints: Endpoints,
    name: str,
    operation: Operation,
    source: Iterable[object] | AsyncIterable[object],
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_size: int = MAX_ENTRIES,
    progress: ProgressCallback | None = None,
    audience_type: str | None = None,
    start: int = 0,
    skip_replace: bool = False,
    on_ack: AckHook | None = None,
) -> UploadReport:
    """Stream ``source`` into the audience; return the report or raise with the partial one.

    ``start`` numbers stream positions from an offset (a resumed upload); ``skip_replace``
    sends a replace's first chunk as an add (its replace was acknowledged by an earlier run).
    """
    check_concurrency(concurrency)
    check_chunk_size(chunk_size)
    total = _length(source)
    # A replace streams as adds; its first chunk goes to the replace route, without actions.
    intake = Intake(endpoints.generation, "add" if operation == "replace" else operation)
    replace_first = operation == "replace" and not skip_replace
    first = Intake(endpoints.generation, "replace") if replace_first else None
    limiter = _Concurrency(concurrency)
    tally = _Tally()
    started = time.monotonic()
    pending: dict[asyncio.Task[Response], _Sent] = {}

    def report() -> UploadReport:
        return UploadReport(
            audience=name,
            operation=operation,
            records=tally.records,
            requests=tally.requests,
            tokens=tuple(tally.tokens[i] for i in sorted(tally.tokens)),
            retries=tally.retries,
            elapsed=time.monotonic() - started,
            atomic=tally.requests <= 1,
        )

    def on_retry(exc: BatchAudienceError, _delay: float) -> None:
        tally.retries += 1
        if isinstance(exc, RateLimitError):
            limiter.throttled()

    def acknowledge(chunk: _Sent, response: Response) -> None:
        tally.records += chunk.count
        tally.requests += 1
        token = _token(response.data)
        if token is not None:
            tally.tokens[chunk.index] = token
        limiter.succeeded()
        if on_ack is not None:
            on_ack(chunk.start, chunk.start + chunk.count, token)
        if progress is not None:
            progress(
                Progress(
                    audience=name,
                    operation=operation,
                    records=tally.records,
                    total=total,
                    requests=tally.requests,
                    retries=tally.retries,
                    elapsed=time.monotonic() - started,
                )
            )

    async def send(route: ApiRoute) -> Response:
        with span(
            "batch_audience.chunk",
            {"batch_audience.audience": name, "batch_audience.operation": route.operation},
        ):
            return await session.send(route, on_retry=on_retry)

    async def send_update(chunk: Chunk) -> Response:
        route = endpoints.update(name, orjson.Fragment(chunk.body), audience_type)
        # Building the body and writing it to the socket each copy megabytes: not in one turn.
        await asyncio.sleep(0)
        return await send(route)

    async def reap(return_when: str) -> None:
        done, _ = await asyncio.wait(pending, return_when=return_when)
        failure: BaseException | None = None
        # Acknowledge every finished chunk before raising, so the report is complete.
        for task in sorted(done, key=lambda t: pending[t].index):
            chunk = pending.pop(task)
            exc = task.exception()
            if exc is None:
                acknowledge(chunk, task.result())
            elif failure is None:
                failure = exc
        if failure is not None:
            raise failure

    async def overlaps(chunk: Chunk) -> bool:
        # One 10,000-ID comparison per chunk in flight, with a turn for the loop in between.
        for other in list(pending.values()):
            if not chunk.ids.isdisjoint(other.ids):
                return True
            await asyncio.sleep(0)
        return False

    async def pump() -> None:
        replace_pending = replace_first
        sent_any = False
        chunks = aiter_chunks(source, intake, size=chunk_size, start=start, first=first)
        async for chunk in chunks:
            sent_any = True
            if replace_pending:
                replace_pending = False
                sent = _Sent(chunk.index, chunk.start, len(chunk), chunk.ids)
                route = endpoints.replace(name, orjson.Fragment(chunk.body))
                acknowledge(sent, await send(route))
                continue
            while pending and (len(pending) >= limiter.limit or await overlaps(chunk)):
                await reap(asyncio.FIRST_COMPLETED)
            sent = _Sent(chunk.index, chunk.start, len(chunk), chunk.ids)
            pending[asyncio.create_task(send_update(chunk))] = sent
        if replace_pending and not sent_any:
            # An empty stream replaces the audience with nobody: one replace with no IDs.
            empty = _Sent(index=0, start=start, count=0, ids=frozenset())
            acknowledge(empty, await send(endpoints.replace(name, [])))
        while pending:
            await reap(asyncio.ALL_COMPLETED)

    try:
        await pump()
    except ValidationError as exc:
        # Records already handed to the server stay valid: let them land, then say how many did.
        await _settle(pending, acknowledge)
        exc.acknowledged = start + tally.records
        exc.report = report()
        raise
    except BatchAudienceError as exc:
        await _cancel(pending)
        exc.report = report()
        exc.add_note(
            f"{operation} to {name!r} stopped: {tally.records} records acknowledged "
            f"in {tally.requests} requests before this error (see .report)"
        )
        raise
    except BaseException:
        await _cancel(pending)
        raise
    return report()


def _token(data: Any) -> str | None:
    if isinstance(data, dict):
        token = data.get("indexing_token")
        # An empty token is no token: waiting on it would raise ValidationError (as in _client).
        if isinstance(token, str) and token:
            return token
    return None


def _length(source: object) -> int | None:
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:
        return None


async def _settle(
    pending: dict[asyncio.Task[Response], _Sent], acknowledge: Callable[[_Sent, Response], None]
) -> None:
    if not pending:
        return
    await asyncio.wait(pending)
    for task in sorted(pending, key=lambda t: pending[t].index):
        if task.exception() is None:
            acknowledge(pending[task], task.result())
    pending.clear()


async def _cancel(pending: dict[asyncio.Task[Response], _Sent]) -> None:
    for task in pending:
        task.cancel()
    if pending:
        # Wait for the cancellations to land so no task outlives the upload.
        await asyncio.gather(*pending, return_exceptions=True)
    pending.clear()
