"""Pure batching: any (async) iterable of records -> validated chunks of at most 10,000 entries.

Lazy: records are pulled only while the chunk being built needs them, so memory stays bounded
by the chunk size, and a chunk's last record is never followed by a read-ahead. A record that
breaks a rule raises ValidationError (with its stream position) as soon as it is pulled; the
chunk holding it is never yielded. Duplicate IDs in one chunk are kept, in order: the server
applies the last entry for an ID (spec §2.3).

``aiter_chunks`` yields to the event loop after every ``slice_size`` records, and sooner when
pulling has held the loop for ``MAX_HOLD`` seconds, because pulling and validating a full chunk
costs 15-30 ms of CPU, far above a 5 ms loop-lag budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from itertools import islice
from time import perf_counter
from typing import Any, Final

import attrs

from ._exceptions import ValidationError
from ._models import Record
from ._validate import MAX_ENTRIES, EntryEncoder

__all__ = ["DEFAULT_SLICE_SIZE", "MAX_HOLD", "Chunk", "aiter_chunks", "iter_chunks"]

DEFAULT_SLICE_SIZE: Final = 1_000  # records pulled, at most, between two yields to the loop
# Also yield once pulling has held the loop this long (seconds), whatever the count: a slow
# source (CSV parsing, 15 attributes) can take 5-10 us per record, 5-10 ms per 1,000.
MAX_HOLD: Final = 0.0005
_STEP: Final = 25  # records between two looks at the clock

_Encode = Callable[[object, int], tuple[str, dict[str, Any]]]


def _entries_repr(entries: list[dict[str, Any]]) -> str:
    # A chunk holds up to 10,000 records with user IDs: never dump them into reprs or logs.
    return f"<{len(entries)} entries>"


def _ids_repr(ids: frozenset[str] | set[str]) -> str:
    return f"<{len(ids)} ids>"


@attrs.frozen(slots=True)
class Chunk:
    """Up to 10,000 wire entries in stream order, with where they start and which IDs they hold."""

    index: int  # 0-based chunk number in the stream
    start: int  # stream position of the first entry (positions count from the ``start`` offset)
    entries: list[dict[str, Any]] = attrs.field(repr=_entries_repr)
    # The distinct IDs, for per-ID ordering between chunks in flight (spec §8); read-only.
    ids: frozenset[str] | set[str] = attrs.field(repr=_ids_repr)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def end(self) -> int:
        """Stream position just past the last entry."""
        return self.start + len(self.entries)


def iter_chunks(
    source: Iterable[object], encoder: EntryEncoder, *, size: int = MAX_ENTRIES, start: int = 0
) -> Iterator[Chunk]:
    """Validate and encode ``source`` lazily into chunks of ``size`` entries; the last may be short.

    Raises:
        ValidationError: at once for a bad ``size``/``start`` or a source that is not an
            iterable of records (a lone str, mapping or Record is refused, not iterated);
            while iterating, for the first record that breaks a rule (with its position).
    """
    _check_bounds(size, start)
    return _sync_chunks(_iterator(source), encoder.encode, size, start)


def aiter_chunks(
    source: Iterable[object] | AsyncIterable[object],
    encoder: EntryEncoder,
    *,
    size: int = MAX_ENTRIES,
    start: int = 0,
    slice_size: int = DEFAULT_SLICE_SIZE,
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
        return _async_chunks(aiter(source), encoder.encode, size, start, slice_size)
    return _sliced_chunks(_iterator(source), encoder.encode, size, start, slice_size)


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


def _fill(
    items: Iterator[object],
    count: int,
    encode: _Encode,
    position: int,
    entries: list[dict[str, Any]],
    ids: set[str],
) -> int:
    """Pull at most ``count`` records into ``entries``/``ids``; return how many were pulled."""
    # islice stops after ``count`` items without touching the next one: no read-ahead.
    before = len(entries)
    append = entries.append
    add = ids.add
    for at, item in enumerate(islice(items, count), position):
        rid, entry = encode(item, at)
        add(rid)
        append(entry)
    return len(entries) - before


def _sync_chunks(
    items: Iterator[object], encode: _Encode, size: int, start: int
) -> Iterator[Chunk]:
    index = 0
    position = start
    while True:
        entries: list[dict[str, Any]] = []
        ids: set[str] = set()
        pulled = _fill(items, size, encode, position, entries, ids)
        if pulled:
            yield Chunk(index, position, entries, ids)
        if pulled < size:
            # The source is exhausted: asking it again could even produce more, so do not.
            return
        index += 1
        position += pulled


async def _sliced_chunks(
    items: Iterator[object], encode: _Encode, size: int, start: int, slice_size: int
) -> AsyncIterator[Chunk]:
    index = 0
    position = start
    # Records left before the next yield to the loop; carried across chunks so the bound
    # holds between any two yields, not only within one chunk.
    budget = slice_size
    held_since = perf_counter()
    while True:
        entries: list[dict[str, Any]] = []
        ids: set[str] = set()
        pulled = 0
        exhausted = False
        while pulled < size:
            wanted = min(size - pulled, budget, _STEP)
            got = _fill(items, wanted, encode, position + pulled, entries, ids)
            pulled += got
            budget -= got
            if not budget or perf_counter() - held_since >= MAX_HOLD:
                await asyncio.sleep(0)
                budget = slice_size
                held_since = perf_counter()
            if got < wanted:
                exhausted = True
                break
        if entries:
            yield Chunk(index, position, entries, ids)
        if exhausted:
            return
        index += 1
        position += size


async def _async_chunks(
    items: AsyncIterator[object], encode: _Encode, size: int, start: int, slice_size: int
) -> AsyncIterator[Chunk]:
    index = 0
    position = start
    budget = slice_size
    step = _STEP
    held_since = perf_counter()
    while True:
        entries: list[dict[str, Any]] = []
        ids: set[str] = set()
        append = entries.append
        add = ids.add
        pulled = 0
        # An async source that never awaits does not yield to the loop either: count, as for
        # a sync source.
        async for item in items:
            rid, entry = encode(item, position + pulled)
            add(rid)
            append(entry)
            pulled += 1
            budget -= 1
            step -= 1
            if not step or not budget:
                step = _STEP
                if not budget or perf_counter() - held_since >= MAX_HOLD:
                    await asyncio.sleep(0)
                    budget = slice_size
                    held_since = perf_counter()
            if pulled == size:
                break
        if entries:
            yield Chunk(index, position, entries, ids)
        if pulled < size:
            return
        index += 1
        position += size
