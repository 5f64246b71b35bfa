"""The IDs of columnar chunks, and which nearby chunks share one (spec §8), known off the loop.

The upload engine keeps two chunks that share an ID from being in flight at once, so that the
server applies them in order. It asks ``isdisjoint`` of each chunk against every chunk in flight,
on the event loop, several times per chunk. ``Window`` works out, while a step is encoded in the
worker, which of the chunks of that step and the few before it share an ID with each new one,
from one sort of their IDs' hashes (numpy); ``ArrowIds`` then answers those questions with a set
lookup, and compares a chunk older than that window, still in flight, with a vectorised
``is_in``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, cast

__all__ = ["ArrowIds", "Window"]

# Chunks back that a new chunk's overlaps are known for without a comparison on the loop:
# more than the chunks an upload keeps in flight (4 by default). A chunk further back still in
# flight is compared on the loop, vectorised (correct, only slower).
WINDOW_CHUNKS: Final = 6


class ArrowIds:
    """The IDs of one chunk as an Arrow array, with its overlaps with the chunks just before it."""

    __slots__ = ("_array", "_index", "_known_from", "_origin", "_overlaps", "_pc")

    def __init__(
        self,
        array: Any,
        pc: Any,
        *,
        origin: object = None,
        index: int = -1,
        known_from: int = 0,
        overlaps: frozenset[int] = frozenset(),
    ) -> None:
        self._array = array
        self._pc = pc
        self._origin = origin  # the stream: answers from the window hold only within it
        self._index = index  # the chunk's number in its stream
        self._known_from = known_from  # the earliest chunk number ``overlaps`` covers
        self._overlaps = overlaps  # earlier chunks in the window that share an ID with it

    def __len__(self) -> int:
        return len(self._array)

    def __repr__(self) -> str:
        # IDs are user data: never in reprs or logs.
        return f"<{len(self._array)} ids>"

    def __iter__(self) -> Iterator[str]:
        return iter(cast("list[str]", self._array.to_pylist()))

    def __contains__(self, rid: object) -> bool:
        if not isinstance(rid, str):
            return False
        return bool(self._pc.any(self._pc.equal(self._array, rid)).as_py())

    def isdisjoint(self, other: object) -> bool:
        """Whether no ID is in both; a lookup for nearby chunks of one stream, else vectorised."""
        if isinstance(other, ArrowIds):
            if self._origin is not None and self._origin is other._origin:
                later, earlier = (self, other) if self._index > other._index else (other, self)
                if later._index != earlier._index and earlier._index >= later._known_from:
                    return earlier._index not in later._overlaps
            # is_in hashes its value set: hash the smaller side.
            small, large = sorted((self._array, other._array), key=len)
            if not len(small):
                return True
            if small.type != large.type:
                small = self._pc.cast(small, large.type)
            hits = self._pc.is_in(large, value_set=small)
            return not bool(self._pc.any(hits).as_py())
        return set(self).isdisjoint(other)  # type: ignore[arg-type]


class Window:
    """The ID hashes of the last few steps of a stream, to tell which chunks share an ID.

    A hash collision only reports an overlap that is not there: a chunk then waits, never more.
    """

    def __init__(self, np: Any, size: int) -> None:
        self._np = np
        self._size = size  # rows per chunk
        # Per recent step: its ID hashes, its first chunk number, the hashes sorted.
        self._recent: list[tuple[Any, int, Any]] = []

    def close(self) -> None:
        """Forget the steps kept."""
        self._recent = []

    def overlaps(
        self, hashes: Any, first: int, chunks: int
    ) -> tuple[dict[int, frozenset[int]], int]:
        """Which earlier chunks of this step and the recent ones share an ID hash with each new one.

        ``hashes`` are the step's (an Arrow uint64 array, one per row), ``first`` its first
        chunk's number, ``chunks`` its chunk count. The window holds at least the last
        ``WINDOW_CHUNKS`` chunks before this step (steps vary in size). Returns the overlaps by
        chunk number and the first chunk number they cover.
        """
        np = self._np
        recent = self._recent
        known_from = recent[0][1] if recent else first
        ordered = np.sort(_hash_values(np, hashes))
        repeats = _repeat_in(np, [*(s for _, _, s in recent), ordered])
        full = [*recent, (hashes, first, ordered)]
        # Kept for the next step: the steps that cover the last WINDOW_CHUNKS chunks.
        kept = list(full)
        chunks_after = first + chunks
        while len(kept) > 1 and chunks_after - kept[1][1] >= WINDOW_CHUNKS:
            kept.pop(0)
        self._recent = kept
        if not repeats:
            return {}, known_from
        ids = np.concatenate([_hash_values(np, h) for h, _, _ in full])
        numbers = np.concatenate(
            [np.arange(len(h), dtype=np.int64) // self._size + n for h, n, _ in full]
        )
        # Only the rows whose hash repeats (few) are paired: each distinct (hash, chunk) once,
        # sorted by hash, then chunk.
        merged = np.sort(ids)
        picked = np.isin(ids, merged[1:][merged[1:] == merged[:-1]])
        ids, numbers = ids[picked], numbers[picked]
        order = np.lexsort((numbers, ids))
        ids, numbers = ids[order], numbers[order]
        distinct = np.ones(len(ids), dtype=bool)
        distinct[1:] = (ids[1:] != ids[:-1]) | (numbers[1:] != numbers[:-1])
        ids, numbers = ids[distinct], numbers[distinct]
        # Row i and row i - d share a hash when their hashes are equal (a hash's rows are
        # consecutive); the later chunk is then i's. No pair at distance d: none further.
        pairs = []
        for d in range(1, len(ids)):
            same = ids[d:] == ids[:-d]
            if not same.any():
                break
            later, earlier = numbers[d:][same], numbers[:-d][same]
            new = later >= first
            pairs.append(np.stack([later[new], earlier[new]], axis=1))
        found: dict[int, set[int]] = {}
        if pairs:
            for later, earlier in np.unique(np.concatenate(pairs), axis=0).tolist():
                found.setdefault(later, set()).add(earlier)
        return {n: frozenset(e) for n, e in found.items()}, known_from


def _repeat_in(np: Any, runs: list[Any]) -> bool:
    """Whether sorted runs of hashes hold a value twice, within a run or between two."""
    # One stable sort of already sorted runs is a merge: cheap. Equal neighbours = a repeat.
    merged = np.concatenate(runs)
    merged.sort(kind="stable")
    return bool((merged[1:] == merged[:-1]).any())


def _hash_values(np: Any, hashes: Any) -> Any:
    """An Arrow uint64 array's values as numpy's, without a copy."""
    # From the buffer: Array.to_numpy goes through pyarrow's pandas shim (extra.scalar).
    raw = np.frombuffer(hashes.buffers()[1], dtype=np.uint64)
    return raw[hashes.offset : hashes.offset + len(hashes)]
