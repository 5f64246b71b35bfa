"""The chunker: lazy, ordered, bounded chunks; errors at the bad record; yields to the loop."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import GENERATIONS_AND_OPERATIONS, invalid_records, record_ids, streams

from batch_audience import Record, ValidationError
from batch_audience import _chunker as chunker
from batch_audience._chunker import Chunk, aiter_chunks, iter_chunks
from batch_audience._intake import Intake
from batch_audience._validate import MAX_ENTRIES, EntryEncoder, Generation, Operation

sizes = st.integers(min_value=1, max_value=12)
starts = st.integers(min_value=0, max_value=10**9)
kinds = st.sampled_from(GENERATIONS_AND_OPERATIONS)


class Counting(Iterator[object]):
    """Wraps a source and counts the items pulled from it; fails if polled after it ended."""

    def __init__(self, items: Iterable[object]) -> None:
        self._items = iter(items)
        self.pulled = 0
        self.ended = False

    def __next__(self) -> object:
        assert not self.ended, "the source was polled again after it was exhausted"
        try:
            item = next(self._items)
        except StopIteration:
            self.ended = True
            raise
        self.pulled += 1
        return item


async def agen(items: Iterable[object]) -> AsyncIterator[object]:
    """An async generator over ``items`` that never awaits (so never yields to the loop)."""
    for item in items:
        yield item


def collect(source: Iterable[object], encoder: Intake, **kwargs: Any) -> list[Chunk]:
    """All chunks of iter_chunks."""
    return list(iter_chunks(source, encoder, **kwargs))


async def acollect(source: Any, encoder: Intake, **kwargs: Any) -> list[Chunk]:
    """All chunks of aiter_chunks."""
    return [chunk async for chunk in aiter_chunks(source, encoder, **kwargs)]


def check_invariants(
    chunks: list[Chunk], items: list[object], encoder: EntryEncoder, size: int, start: int
) -> None:
    """Each item lands in exactly one chunk, in order; all chunks but the last are full."""
    expected = [encoder.encode(item, start + n)[1] for n, item in enumerate(items)]
    assert [entry for chunk in chunks for entry in chunk.entries()] == expected
    assert len(chunks) == -(-len(items) // size)
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert chunk.start == start + index * size
        assert chunk.end == chunk.start + len(chunk) == chunk.start + len(chunk.entries())
        assert 1 <= len(chunk) <= size
        if index < len(chunks) - 1:
            assert len(chunk) == size
        assert chunk.ids == {entry["id"] for entry in chunk.entries()}


# -- sync ------------------------------------------------------------------------------------


@given(data=st.data(), kind=kinds, size=sizes, start=starts)
def test_chunks_cover_the_stream_in_order(
    data: st.DataObject, kind: tuple[Generation, Operation], size: int, start: int
) -> None:
    """Concatenated chunk entries equal the items encoded one by one; chunk fields agree."""
    generation, operation = kind
    items = data.draw(streams(generation, operation))
    encoder = EntryEncoder(generation, operation)
    chunks = collect(items, Intake(generation, operation), size=size, start=start)
    check_invariants(chunks, items, encoder, size, start)


@given(ids=st.lists(record_ids(), max_size=60), size=sizes)
def test_no_read_ahead(ids: list[str], size: int) -> None:
    """After each chunk, exactly the records of the chunks so far were pulled from the source."""
    source = Counting(ids)
    chunks = iter_chunks(source, Intake("2", "add"), size=size)
    assert source.pulled == 0
    for chunk in chunks:
        assert source.pulled == chunk.end
    assert source.pulled == len(ids)


def test_source_not_polled_after_a_short_chunk() -> None:
    """A short chunk means the source ended: it is not asked again (it might even resume)."""
    source = Counting(["a", "b", "c"])
    assert [len(c) for c in iter_chunks(source, Intake("2", "add"), size=2)] == [2, 1]


def test_exactly_full_chunks_end_on_stop_iteration() -> None:
    """A stream of a multiple of ``size`` ends with full chunks and no empty one."""
    chunks = collect(["a", "b", "c", "d"], Intake("2", "add"), size=2)
    assert [(c.index, c.start, len(c)) for c in chunks] == [(0, 0, 2), (1, 2, 2)]


def test_empty_source_gives_no_chunk() -> None:
    """An empty stream yields nothing."""
    assert collect([], Intake("2", "add")) == []


def test_full_size_chunks() -> None:
    """The default size is 10,000 entries per chunk (spec §2.3)."""
    chunks = collect((f"u-{n}" for n in range(25_001)), Intake("2", "remove"))
    assert [len(c) for c in chunks] == [MAX_ENTRIES, MAX_ENTRIES, 5_001]


def test_duplicate_ids_are_kept_in_order() -> None:
    """Duplicate IDs in one chunk are all sent, in stream order; the server applies the last."""
    items = [Record("u-1", {"n": 1}), "u-2", Record("u-1", {"n": 2})]
    (chunk,) = collect(items, Intake("2", "add"))
    assert [e.get("attributes") for e in chunk.entries()] == [{"n": 1}, None, {"n": 2}]
    assert chunk.ids == {"u-1", "u-2"}


@given(data=st.data(), kind=kinds, size=sizes, start=starts, bad=invalid_records())
def test_invalid_record_stops_the_stream_at_its_position(
    data: st.DataObject, kind: tuple[Generation, Operation], size: int, start: int, bad: object
) -> None:
    """The bad record raises when pulled, with its stream position; its chunk is never yielded."""
    generation, operation = kind
    items = data.draw(streams(generation, operation, max_size=30))
    at = data.draw(st.integers(min_value=0, max_value=len(items)))
    source = Counting([*items[:at], bad, *items[at:]])
    received: list[Chunk] = []
    with pytest.raises(ValidationError) as info:
        received.extend(iter_chunks(source, Intake(generation, operation), size=size, start=start))
    assert info.value.position == start + at
    assert source.pulled == at + 1
    assert len(received) == at // size
    assert sum(len(c) for c in received) == (at // size) * size


def test_positions_in_errors_count_from_start() -> None:
    """A resumed upload numbers positions from ``start``, in errors too."""
    with pytest.raises(ValidationError) as info:
        collect(["a", "b", 5], Intake("2", "add"), size=2, start=100)
    assert info.value.position == 102
    assert str(info.value).startswith("record 102: ")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"size": 0}, id="size-0"),
        pytest.param({"size": MAX_ENTRIES + 1}, id="size-10001"),
        pytest.param({"size": True}, id="size-bool"),
        pytest.param({"size": 2.0}, id="size-float"),
        pytest.param({"start": -1}, id="start-negative"),
        pytest.param({"start": "0"}, id="start-str"),
    ],
)
def test_bad_arguments_raise_at_once(kwargs: dict[str, Any]) -> None:
    """A bad size or start raises ValidationError when called, before any record is pulled."""
    source = Counting(["a"])
    with pytest.raises(ValidationError, match=r"size|start"):
        iter_chunks(source, Intake("2", "add"), **kwargs)
    with pytest.raises(ValidationError, match=r"size|start"):
        aiter_chunks(source, Intake("2", "add"), **kwargs)
    assert source.pulled == 0


@pytest.mark.parametrize("slice_size", [0, -1, True, 1.5])
def test_bad_slice_size_raises(slice_size: Any) -> None:
    """slice_size must be an int >= 1."""
    with pytest.raises(ValidationError, match="slice_size"):
        aiter_chunks([], Intake("2", "add"), slice_size=slice_size)


def test_non_iterable_source_raises() -> None:
    """A source that is not iterable raises ValidationError naming its type, at once."""
    with pytest.raises(ValidationError, match="iterable or an async iterable, got int"):
        iter_chunks(5, Intake("2", "add"))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="got int"):
        aiter_chunks(5, Intake("2", "add"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("u-1", id="str"),
        pytest.param(b"u-1", id="bytes"),
        pytest.param({"id": "u-1"}, id="mapping"),
        pytest.param(Record("u-1"), id="record"),
    ],
)
def test_one_record_is_not_taken_for_a_stream(source: Any) -> None:
    """A lone ID or mapping is refused, not iterated into one-character IDs or key names."""
    with pytest.raises(ValidationError, match="iterable of records, got one"):
        iter_chunks(source, Intake("2", "remove"))
    with pytest.raises(ValidationError, match="wrap a single record in a list"):
        aiter_chunks(source, Intake("2", "remove"))


def test_chunk_repr_hides_entries_and_ids() -> None:
    """A chunk's repr gives counts, never the IDs it holds (they may be personal data)."""
    (chunk,) = collect(["secret-id"], Intake("2", "add"))
    assert "secret-id" not in repr(chunk)
    assert repr(chunk) == "Chunk(index=0, start=0, count=1, body=<body>, ids=<1 ids>)"


# -- async -----------------------------------------------------------------------------------


@given(data=st.data(), kind=kinds, size=sizes, start=starts, slice_size=st.integers(1, 7))
def test_async_chunks_equal_sync_chunks(
    data: st.DataObject, kind: tuple[Generation, Operation], size: int, start: int, slice_size: int
) -> None:
    """aiter_chunks equals iter_chunks for a list, a generator and an async generator."""
    generation, operation = kind
    items = data.draw(streams(generation, operation))
    encoder = Intake(generation, operation)
    expected = collect(items, encoder, size=size, start=start)
    kwargs = {"size": size, "start": start, "slice_size": slice_size}

    async def run() -> None:
        assert await acollect(items, encoder, **kwargs) == expected
        assert await acollect(iter(items), encoder, **kwargs) == expected
        assert await acollect(agen(items), encoder, **kwargs) == expected

    asyncio.run(run())


@given(ids=st.lists(record_ids(), max_size=60), size=sizes)
def test_async_no_read_ahead(ids: list[str], size: int) -> None:
    """The async chunker pulls exactly the records of the chunks yielded so far, too."""

    async def run() -> None:
        for wrap in (lambda s: s, agen):
            source = Counting(ids)
            async for chunk in aiter_chunks(
                wrap(source), Intake("2", "add"), size=size, slice_size=3
            ):
                assert source.pulled == chunk.end
            assert source.pulled == len(ids)

    asyncio.run(run())


@pytest.mark.parametrize("make_source", [lambda s: s, agen], ids=["sync", "async"])
async def test_async_invalid_record_raises_at_its_position(make_source: Any) -> None:
    """An invalid record raises from aiter_chunks with its position; nothing after is pulled."""
    source = Counting(["a", "b", "c", None, "d"])
    received: list[Chunk] = []

    async def drain() -> None:
        encoder = Intake("1.1", "add")
        async for chunk in aiter_chunks(make_source(source), encoder, size=2, start=10):
            received.append(chunk)

    with pytest.raises(ValidationError) as info:
        await drain()
    assert info.value.position == 13
    assert [len(c) for c in received] == [2]
    assert source.pulled == 4


async def ticks_per_pull(source_kind: str, total: int, slice_size: int) -> list[int]:
    """Build chunks while a ticker task counts loop turns; return the tick seen at each pull."""
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    seen: list[int] = []

    def records() -> Iterator[str]:
        for n in range(total):
            seen.append(ticks)
            yield f"u-{n}"

    source: Any = records() if source_kind == "sync" else agen(records())
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    async for _ in aiter_chunks(source, Intake("2", "add"), size=700, slice_size=slice_size):
        pass
    stop = True
    await task
    return seen


@pytest.mark.parametrize("source_kind", ["sync", "async"])
async def test_yields_to_the_loop_every_slice(
    source_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most ``slice_size`` records are pulled between two turns of the event loop."""
    # Only the count may decide here: a hiccup of the machine must not add a yield.
    monkeypatch.setattr(chunker, "MAX_HOLD", 3600.0)
    seen = await ticks_per_pull(source_kind, total=2_500, slice_size=64)
    runs = [len(list(group)) for _, group in itertools.groupby(seen)]
    assert max(runs) <= 64
    # Not needlessly often either: every full slice is one run, across chunk boundaries too.
    assert len(runs) <= -(-2_500 // 64) + 1


@pytest.mark.parametrize("source_kind", ["sync", "async"])
async def test_yields_when_pulling_held_the_loop_too_long(
    source_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow records make it yield before a full slice: the loop is held about MAX_HOLD at most."""
    monkeypatch.setattr(chunker, "MAX_HOLD", 0.0)
    seen = await ticks_per_pull(source_kind, total=1_000, slice_size=1_000)
    runs = [len(list(group)) for _, group in itertools.groupby(seen)]
    assert max(runs) <= chunker._STEP
