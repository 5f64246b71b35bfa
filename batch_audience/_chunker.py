"""Batching: any (async) iterable of records -> sealed payloads of at most 10,000 wire entries.

Each chunk is the JSON array of its entries, encoded a few records at a time by ``_intake`` as
they are pulled, with the distinct IDs it holds (for per-ID order between chunks in flight,
spec §8). Lazy: records are pulled only while the chunk being built needs them, so memory stays
bounded by the chunk size, and a chunk's last record is never followed by a read-ahead. A
record that breaks a rule raises ValidationError (with its stream position) as soon as it is
pulled; the chunk holding it is never yielded. Duplicate IDs in one chunk are kept, in order:
the server applies the last entry for an ID (spec §2.3).

``aiter_chunks`` yields to the event loop after every ``slice_size`` records, and sooner when
pulling has held the loop for ``MAX_HOLD`` seconds, because pulling and validating a full chunk
costs 10-30 ms of CPU, far above a 5 ms loop-lag budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from time import perf_counter
from typing import Any, Final

import attrs
import orjson

from ._exceptions import ValidationError
from ._intake import Intake
from ._models import Record, Records
from ._validate import MAX_ENTRIES

__all__ = ["DEFAULT_SLICE_SIZE", "MAX_HOLD", "Chunk", "aiter_chunks", "iter_chunks"]

DEFAULT_SLICE_SIZE: Final = 1_000  # records pulled, at most, between two yields to the loop
# Also yield once pulling has held the loop this long (seconds), whatever the count: a slow
# source (CSV parsing, 15 attributes) can take 5-10 us per record, 5-10 ms per 1,000.
MAX_HOLD: Final = 0.0005
_STEP: Final = 50  # records per intake step: between two looks at the clock


def _body_repr(body: bytes | memoryview) -> str:
    # A chunk holds up to 10,000 records with user IDs: never dump them into reprs or logs.
    return "<body>"


def _ids_repr(ids: frozenset[str] | set[str]) -> str:
    return f"<{len(ids)} ids>"


@attrs.frozen(slots=True)
class Chunk:
    """Up to 10,000 wire entries in stream order, encoded, with where they start and their IDs."""

    index: int  # 0-based chunk number in the stream
    start: int  # stream position of the first entry (positions count from the ``start`` offset)
    count: int  # entries in the body
    # The JSON array of the entries; as EncodedIds, it goes into a request as is.
    body: bytes | memoryview = attrs.field(repr=_body_repr)
    # The distinct IDs, for per-ID ordering between chunks in flight (spec §8); read-only.
    ids: frozenset[str] | set[str] = attrs.field(repr=_ids_repr)

    def __len__(self) -> int:
        return self.count

    @property
    def end(self) -> int:
        """Stream position just past the last entry."""
        return self.start + self.count

    def entries(self) -> list[dict[str, Any]]:
        """The entries decoded again (for tests and inspection; the hot path never calls it)."""
        entries: list[dict[str, Any]] = orjson.loads(self.body)
        return entries


def _seal(
    index: int, start: int, count: int, parts: list[bytes | memoryview], ids: set[str]
) -> Chunk:
    return Chunk(index, start, count, b"".join((b"[", b",".join(parts), b"]")), ids)


def iter_chunks(
    source: Iterable[object],
    intake: Intake,
    *,
    size: int = MAX_ENTRIES,
    start: int = 0,
    first: Intake | None = None,
) -> Iterator[Chunk]:
    """Validate and encode ``source`` lazily into chunks of ``size`` entries; the last may be short.

    ``first``, when given, encodes the first chunk instead of ``intake`` (a chunked replace:
    its first chunk goes to the replace route, without actions).

    Raises:
        ValidationError: at once for a bad ``size``/``start`` or a source that is not an
            iterable of records (a lone str, mapping or Record is refused, not iterated);
            while iterating, for the first record that breaks a rule (with its position).
    """
    _check_bounds(size, start)
    return _sync_chunks(_iterator(source), intake, first or intake, size, start)


def aiter_chunks(
    source: Records,
    intake: Intake,
    *,
    size: int = MAX_ENTRIES,
    start: int = 0,
    slice_size: int = DEFAULT_SLICE_SIZE,
    first: Intake | None = None,
) -> AsyncIterator[Chunk]:
    """``iter_chunks`` for sync or async sources, yielding to the loop every ``slice_size`` records.

    A sync source is iterated directly, on the loop's thread: it must not block.

    Raises:
        ValidationError: at once for a bad argument; while iterating, for the first record
            that breaks a rule (with its stream position).
    """
    _check_bounds(size, start)
    if isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1:
        raise ValidationError(f"slice_size must be an integer >= 1, got {slice_size!r}")
    # An object that is both async and sync iterable is read the async way.
    if isinstance(source, AsyncIterable):
        _check_not_one_record(source)
        return _async_chunks(aiter(source), intake, first or intake, size, start, slice_size)
    return _sliced_chunks(
        _iterator(source),  # type: ignore[arg-type]  # not an ArrowStream: handled above
        intake,
        first or intake,
        size,
        start,
        slice_size,
    )


def _check_bounds(size: int, start: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_ENTRIES:
        raise ValidationError(
            f"chunk size must be an integer from 1 to {MAX_ENTRIES}, got {size!r}"
        )
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValidationError(f"start must be an integer >= 0, got {start!r}")


def _iterator(source: Iterable[object]) -> Iterator[object]:
    _check_not_one_record(source)
    try:
        return iter(source)
    except TypeError:
        raise ValidationError(
            f"records must be an iterable or an async iterable, got {type(source).__name__}"
        ) from None


def _check_not_one_record(source: object) -> None:
    # A lone ID or record mapping is iterable too, by characters or keys: remove("aud", "u-1")
    # would remove the IDs "u" and "-" and "1". Refuse rather than guess.
    if isinstance(source, str | bytes | bytearray | Mapping | Record):
        raise ValidationError(
            f"records must be an iterable of records, got one {type(source).__name__}: "
            "wrap a single record in a list"
        )


def _sync_chunks(
    items: Iterator[object], intake: Intake, first: Intake, size: int, start: int
) -> Iterator[Chunk]:
    index = 0
    position = start
    current = first
    while True:
        ids: set[str] = set()
        pulled, part = current.take(items, size, position, ids)
        if pulled:
            yield _seal(index, position, pulled, [part], ids)
        if pulled < size:
            # The source is exhausted: asking it again could even produce more, so do not.
            return
        current = intake
        index += 1
        position += pulled


async def _sliced_chunks(
    items: Iterator[object],
    intake: Intake,
    first: Intake,
    size: int,
    start: int,
    slice_size: int,
) -> AsyncIterator[Chunk]:
    index = 0
    position = start
    current = first
    # Records left before the next yield to the loop; carried across chunks so the bound
    # holds between any two yields, not only within one chunk.
    budget = slice_size
    held_since = perf_counter()
    while True:
        parts: list[bytes | memoryview] = []
        ids: set[str] = set()
        pulled = 0
        exhausted = False
        while pulled < size:
            wanted = min(size - pulled, budget, _STEP)
            got, part = current.take(items, wanted, position + pulled, ids)
            if got:
                parts.append(part)
            pulled += got
            budget -= got
            if not budget or perf_counter() - held_since >= MAX_HOLD:
                await asyncio.sleep(0)
                budget = slice_size
                held_since = perf_counter()
            if got < wanted:
                exhausted = True
                break
        if pulled:
            yield _seal(index, position, pulled, parts, ids)
        if exhausted:
            return
        current = intake
        index += 1
        position += size


async def _async_chunks(
    items: AsyncIterator[object],
    intake: Intake,
    first: Intake,
    size: int,
    start: int,
    slice_size: int,
) -> AsyncIterator[Chunk]:
    index = 0
    position = start
    current = first
    budget = slice_size
    held_since = perf_counter()
    # Records wait here, a step at a time, for one intake call: position counts them.
    step: list[object] = []
    while True:
        parts: list[bytes | memoryview] = []
        ids: set[str] = set()
        pulled = 0
        exhausted = True
        # An async source that never awaits does not yield to the loop either: count, as for
        # a sync source.
        async for item in items:
            step.append(item)
            waiting = len(step)
            if waiting == _STEP or waiting >= budget or pulled + waiting == size:
                got, part = current.take(iter(step), len(step), position + pulled, ids)
                step.clear()
                parts.append(part)
                pulled += got
                budget -= got
                if budget <= 0 or perf_counter() - held_since >= MAX_HOLD:
                    await asyncio.sleep(0)
                    budget = slice_size
                    held_since = perf_counter()
                if pulled == size:
                    exhausted = False
                    break
        if step:
            got, part = current.take(iter(step), len(step), position + pulled, ids)
            step.clear()
            parts.append(part)
            pulled += got
        if pulled:
            yield _seal(index, position, pulled, parts, ids)
        if exhausted:
            return
        current = intake
        index += 1
        position += size
