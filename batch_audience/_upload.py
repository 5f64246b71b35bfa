"""Bulk uploads: records -> intake -> chunks -> the sender; the replace-first rule; the report.

The sending itself (concurrency, per-ID order, retries, 429 back-off, in-order
acknowledgements and the rate-budget hook) is ``_sender``'s; this module wires a source to it
and keeps what only an upload has:

- a replace sends its first chunk as the replace call and only after its 2xx the rest as
  ``add`` updates; beyond one chunk the replace is not atomic and the report says so;
- progress after each acknowledged chunk, and the UploadReport, complete or partial;
- what a failure says. A bad record (ValidationError) lets the chunks already in flight land,
  then is raised with ``acknowledged`` set to the contiguous acknowledged prefix (every record
  before that stream position was acknowledged: resume there) and ``.report``; if chunks
  failed in flight meanwhile, their errors are on it too (``.errors``, the first as
  ``__cause__``, one note per failed chunk, and a mention in its message): an API failure is
  never hidden behind the caller's bad input. An API error cancels the chunks in flight and is
  raised with ``.report`` and notes: the records acknowledged, the safe resume position, every
  other chunk that failed, and how many chunks were cancelled with their outcome unknown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import attrs

from ._chunker import Chunk, aiter_chunks
from ._columnar import aiter_columnar, is_columnar
from ._endpoints import ApiRoute, EncodedIds, Endpoints
from ._exceptions import BatchAudienceError, RateLimitError, ValidationError
from ._intake import Intake
from ._models import Progress, ProgressCallback, Records, UploadReport, token_of
from ._ratebudget import RateBudget
from ._sender import DEFAULT_CONCURRENCY, Sender, Sent
from ._session import Session
from ._validate import MAX_ENTRIES

__all__ = ["DEFAULT_CONCURRENCY", "AckHook", "Operation", "run_upload"]

Operation = Literal["add", "remove", "replace"]
# Called after each acknowledged chunk: (first position, end position, token or None).
AckHook = Callable[[int, int, str | None], None]


@attrs.define
class _Tally:
    records: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
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
    source: Records,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_size: int = MAX_ENTRIES,
    progress: ProgressCallback | None = None,
    audience_type: str | None = None,
    start: int = 0,
    skip_replace: bool = False,
    on_ack: AckHook | None = None,
    budget: RateBudget | None = None,
) -> UploadReport:
    """Stream ``source`` into the audience; return the report or raise with the partial one.

    ``start`` numbers stream positions from an offset (a resumed upload); ``skip_replace``
    sends a replace's first chunk as an add (its replace was acknowledged by an earlier run).
    ``on_ack`` and ``progress`` are called in stream order, each acknowledged chunk once.

    Raises:
        ValidationError: a record broke a rule; ``.acknowledged`` is the safe resume position,
            ``.report`` what landed, ``.errors`` the API errors of chunks that failed in flight.
        BatchAudienceError: a chunk failed for good; ``.report`` and notes say what landed.
    """
    check_concurrency(concurrency)
    check_chunk_size(chunk_size)
    total = _length(source)
    # A replace streams as adds; its first chunk goes to the replace route, without actions.
    intake = Intake(endpoints.generation, "add" if operation == "replace" else operation)
    replace_first = operation == "replace" and not skip_replace
    first = Intake(endpoints.generation, "replace") if replace_first else None
    tally = _Tally()
    started = time.monotonic()

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
            throttled=tally.throttled,
            rate=None if budget is None else budget.rate,
        )

    def on_retry(exc: BatchAudienceError, _delay: float) -> None:
        tally.retries += 1
        if isinstance(exc, RateLimitError):
            tally.throttled += 1

    def acknowledge(sent: Sent) -> None:
        tally.records += sent.count
        tally.requests += 1
        assert sent.response is not None
        token = token_of(sent.response.data)
        if token is not None:
            tally.tokens[sent.index] = token
        if on_ack is not None:
            on_ack(sent.start, sent.end, token)
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
                    throttled=tally.throttled,
                    rate=None if budget is None else budget.rate,
                )
            )

    def update(chunk: Chunk) -> ApiRoute:
        return endpoints.update(name, EncodedIds(chunk.body), audience_type)

    sender = Sender(
        session,
        update,
        concurrency=concurrency,
        start=start,
        budget=budget,
        on_ack=acknowledge,
        on_retry=on_retry,
        audience=name,
    )

    async def pump() -> None:
        replace_pending = replace_first
        if is_columnar(source):
            chunks = aiter_columnar(source, intake, size=chunk_size, start=start, first=first)
        else:
            chunks = aiter_chunks(source, intake, size=chunk_size, start=start, first=first)
        async for chunk in chunks:
            if replace_pending:
                replace_pending = False
                await sender.send(chunk, endpoints.replace(name, EncodedIds(chunk.body)))
            else:
                await sender.put(chunk)
        if replace_pending:
            # An empty stream replaces the audience with nobody: one replace with no IDs.
            empty = Chunk(0, start, 0, b"[]", frozenset())
            await sender.send(empty, endpoints.replace(name, []))
        await sender.join()

    try:
        await pump()
    except ValidationError as exc:
        # Records already handed to the server stay valid: let them land, then say how many
        # did, and never let a chunk that failed meanwhile go unsaid.
        await sender.settle()
        # The error itself is among them when a chunk's own request raised it.
        failed = [sent for sent in sender.take_failures() if sent.error is not exc]
        tally.throttled += sum(isinstance(f.error, RateLimitError) for f in failed)
        exc.acknowledged = sender.acknowledged
        exc.report = report()
        if failed:
            _attach_failures(exc, failed)
        raise
    except BatchAudienceError as exc:
        await sender.abort()
        failed = sender.take_failures()
        # A 429 that ended the upload was a throttled write too, though never retried.
        tally.throttled += sum(isinstance(f.error, RateLimitError) for f in failed)
        exc.report = report()
        for other in failed:
            if other.error is not exc:
                exc.add_note(f"another chunk failed too, {other.where}: {other.error}")
        if sender.cancelled:
            exc.add_note(
                f"{sender.cancelled} chunk(s) in flight were cancelled: whether they were "
                "applied is unknown"
            )
        exc.add_note(
            f"{operation} to {name!r} stopped: {tally.records} records acknowledged "
            f"in {tally.requests} requests before this error (see .report); every record "
            f"before position {sender.acknowledged} was acknowledged: resume from position "
            f"{sender.acknowledged}"
        )
        raise
    except BaseException:
        await sender.abort()
        raise
    return report()


def _attach_failures(exc: ValidationError, failed: list[Sent]) -> None:
    """Put the API errors of chunks that failed in flight on the ValidationError raised."""
    errors = tuple(sent.error for sent in failed if isinstance(sent.error, Exception))
    exc.errors = errors
    if exc.__cause__ is None and errors:
        exc.__cause__ = errors[0]
    for sent in failed:
        exc.add_note(
            f"a chunk sent before this record failed in flight, {sent.where}: {sent.error}"
        )


def _length(source: object) -> int | None:
    """The records' count for progress when it is known without work, else None."""
    if hasattr(source, "__arrow_c_stream__"):
        # len() of a DuckDB relation runs a query, on the loop: only take a count that is
        # already there (a pyarrow Table's).
        rows = getattr(source, "num_rows", None)
        return rows if type(rows) is int else None
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:
        return None
