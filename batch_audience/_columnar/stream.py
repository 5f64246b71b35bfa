"""An Arrow C stream read step by step into checked, encoded chunks, off the event loop.

Each step is a few whole chunks (1, 2, 4... up to ``STEP_ROWS`` rows), taken from as many of
the source's batches as it needs. Every batch is validated and brought to a plain layout as it
is read (``checks.prepare``), each step copied once into the library's memory pool, checked
(``checks.check``) and written (``encode.Writer``). When a row breaks a rule, the chunks before
the one holding it come back with the error, and the stream is closed: nothing from that chunk
on is ever encoded.

``aiter_columnar`` runs every step in one worker thread (pyarrow and DuckDB release the GIL),
a few steps ahead of the chunks being sent; the event loop only awaits finished steps.
``iter_columnar`` runs them in the calling thread (tests, scripts, the CLI's pre-check).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, cast

import attrs

from .._chunker import Chunk, _check_bounds
from .._exceptions import ValidationError
from .._intake import Intake
from .._validate import MAX_ENTRIES, EntryEncoder
from .checks import check, prepare
from .encode import Writer, action_of
from .extra import Kernels, import_extra, memory_pool, require
from .ids import ArrowIds, Window
from .schema import Plan, plan_columns

__all__ = ["aiter_columnar", "is_columnar", "iter_columnar"]

# Rows read, checked and encoded per step in the worker (rounded to whole chunks): each call
# into pyarrow or DuckDB hands the GIL back and forth with the event loop, and each DuckDB
# query costs ~2 ms to plan, so few large steps keep the loop's waits and the worker's short.
STEP_ROWS: Final = 50_000
AHEAD: Final = 2  # steps prepared ahead of the one being sent (each ~10 MB of JSON at most)


def is_columnar(source: object) -> bool:
    """Whether ``source`` exposes the Arrow C stream interface (and is read as columns)."""
    return hasattr(type(source), "__arrow_c_stream__")


@attrs.frozen
class _Step:
    """One step: its chunks' places and IDs, its checked rows, and the first error."""

    places: list[tuple[int, int, int, Any]]  # index, start, count, ID array of each chunk
    batch: Any  # the rows to send (checked, plain layout); None if none
    bounds: list[tuple[int, int]]  # rows [begin, end) of each chunk in ``batch``
    actions: tuple[str | None, str | None]  # of the step's first chunk, of the others
    error: ValidationError | None


class _Stream:
    """Reads an Arrow stream chunk by chunk; each call to ``next_step`` is one blocking step."""

    def __init__(
        self, source: object, intake: Intake, first: Intake, size: int, start: int
    ) -> None:
        require()  # a missing extra is named at once; the import itself runs in the worker
        self._source: object = source
        self._encoders = (
            EntryEncoder(first.generation, first.operation),
            EntryEncoder(intake.generation, intake.operation),
        )
        self._size = size
        self._position = start  # stream position of the next row to check
        self._read_to = start  # stream position past the last row read
        self._taken = start  # stream position past the last row taken into a step
        self._index = 0  # the next chunk's number
        self._steps = 0  # steps taken: the first ones are smaller
        self._pa: Any = None
        self.pc: Kernels | None = None  # pyarrow.compute, from the first step on
        self._reader: Any = None
        self._plan: Plan | None = None
        # Batches read and prepared, not yet all in a step: (batch, first row left, not UTF-8).
        self._pending: collections.deque[tuple[Any, int, frozenset[int]]] = collections.deque()
        self._ended = False  # the source has no batch left
        self._error: Exception | None = None  # the source's, met reading ahead: raised in turn
        self._done = False

    @property
    def size(self) -> int:
        """Rows per chunk."""
        return self._size

    @property
    def plan(self) -> Plan:
        """The schema's plan (once the stream is open)."""
        assert self._plan is not None
        return self._plan

    def close(self) -> None:
        """Release the stream; safe to call more than once."""
        self._done = True
        self._pending.clear()
        self._source = None
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    def _open(self) -> None:
        pa = self._pa = import_extra("pyarrow")
        self.pc = Kernels(pa, memory_pool(pa))
        source, self._source = self._source, None
        try:
            reader = pa.RecordBatchReader.from_stream(source)
        except (TypeError, ValueError, pa.ArrowException) as exc:
            raise ValidationError(
                f"a columnar source must stream record batches (a table), got "
                f"{type(source).__name__}: {exc}"
            ) from None
        self._reader = reader
        self._plan = plan_columns(pa, reader.schema, self._encoders[1], self._encoders[0])

    def next_step(self) -> _Step:
        """Read and check the next few chunks; an empty step at the end of the stream."""
        if self._done:
            return _Step([], None, [], (None, None), None)
        try:
            if self._reader is None:
                self._open()
            step = self._step()
        except BaseException:
            self.close()
            raise
        if step.error is not None or not step.places:
            self.close()
        return step

    def _read(self) -> bool:
        """Read and prepare the source's next batch; False at its end."""
        if self._ended:
            return False
        try:
            batch = self._reader.read_next_batch()
        except StopIteration:
            self._ended = True
            return False
        if batch.num_rows:
            assert self.pc is not None
            prepared, not_utf8 = prepare(self.pc, batch, self.plan, self._read_to)
            self._pending.append((prepared, 0, not_utf8))
            self._read_to += batch.num_rows
        return True

    def _fill(self, rows: int) -> None:
        """Read until ``rows`` rows wait, the source ends or fails.

        A failure (the source's error, a broken column) is kept and raised at the next step,
        after the rows read before it: they go out first, as the rows of a source that ends.
        """
        while self._error is None and self._read_to - self._taken < rows:
            try:
                if not self._read():
                    return
            except Exception as exc:
                self._error = exc

    def _take(self, rows: int) -> tuple[Any, frozenset[int]]:
        """The next ``rows`` rows (fewer at the end) as one batch in the library's pool."""
        self._fill(rows)
        parts = []
        not_utf8: frozenset[int] = frozenset()
        left = rows
        while left and self._pending:
            batch, begin, flagged = self._pending[0]
            take = min(left, batch.num_rows - begin)
            parts.append(batch.slice(begin, take))
            not_utf8 |= flagged
            left -= take
            if begin + take == batch.num_rows:
                self._pending.popleft()
            else:
                self._pending[0] = (batch, begin + take, flagged)
            del batch
        if not parts:
            if self._error is not None:
                raise self._error
            return None, not_utf8
        self._taken += rows - left
        assert self.pc is not None
        # One copy into the library's pool (A/B, worker CPU per 1M rows, 10 rounds: 1.72 s
        # against 1.87 s without the copy and 1.92 s with Arrow's default pool): the
        # source's batches are free once a step has taken their rows, and a step is one
        # array per column whatever batches it spans.
        step = self._pa.concat_batches(parts, memory_pool=self.pc.pool)
        del parts
        if not self._pending and self._steps > 1:
            # From the second step on, the next batch is read as soon as the last one is
            # free, while the source's allocator still holds its pages (mimalloc gives them
            # back ~10 ms later): lab A/B, 8 rounds, process CPU 2.04 s against 2.14 s.
            # The first is not read ahead: the first request would wait for it.
            self._fill(1)
        return step, not_utf8

    def _step(self) -> _Step:
        size, plan = self._size, self.plan
        # Steps grow from one chunk (1, 2, 4... up to STEP_ROWS): the first request goes out
        # while the rest is read, and the server gets the next ones while it parses it.
        chunks = min(max(1, STEP_ROWS // size), 1 << min(self._steps, 16))
        self._steps += 1
        batch, not_utf8 = self._take(chunks * size)
        if batch is None:
            return _Step([], None, [], (None, None), None)
        assert self.pc is not None
        first_rows = size if self._index == 0 else 0
        error = check(
            self.pc,
            batch,
            plan,
            start=self._position,
            first_rows=first_rows,
            not_utf8=not_utf8,
        )
        good = batch.num_rows
        if error is not None:
            # Only whole chunks before the one holding the bad row are encoded and sent.
            assert error.position is not None
            good = (error.position - self._position) // size * size
        first = self._encoders[0] if self._index == 0 else self._encoders[1]
        actions = (action_of(first.operation), action_of(self._encoders[1].operation))
        bounds = [(b, min(b + size, good)) for b in range(0, good, size)]
        ids = batch.column(0)
        places = []
        for begin, end in bounds:
            places.append((self._index, self._position, end - begin, ids.slice(begin, end - begin)))
            self._index += 1
            self._position += end - begin
        return _Step(places, batch.slice(0, good) if good else None, bounds, actions, error)


class _Encoder:
    """Turns steps into chunks: bodies written, overlaps between nearby chunks known."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self._writer: Writer | None = None
        self._window: Window | None = None

    def warm(self) -> None:
        """Import pyarrow, numpy and DuckDB and open the writer's connection, once.

        An upload runs it first, in a thread of its own: its ~0.1 s of imports and of DuckDB's
        first query then pass while the worker reads the first batch, not after it.
        """
        if self._writer is None:
            pa = import_extra("pyarrow")
            self._window = Window(import_extra("numpy"), self._stream.size)
            self._writer = Writer(Kernels(pa, memory_pool(pa)))
        self._writer.warm()

    def chunks(self, step: _Step) -> list[Chunk]:
        """The chunks of ``step``, bodies written and overlaps known."""
        if step.batch is None:
            return []
        self.warm()
        assert self._writer is not None and self._window is not None
        bodies, hashes = self._writer.bodies(
            step.batch, self._stream.plan, step.bounds, step.actions
        )
        first = step.places[0][0]
        overlaps, known_from = self._window.overlaps(hashes, first, len(step.places))
        pc = self._stream.pc
        return [
            Chunk(
                index,
                start,
                count,
                body,
                cast(
                    Any,
                    ArrowIds(
                        ids,
                        pc,
                        origin=self,
                        index=index,
                        known_from=known_from,
                        overlaps=overlaps.get(index, frozenset()),
                    ),
                ),
            )
            for (index, start, count, ids), body in zip(step.places, bodies, strict=True)
        ]

    def close(self) -> None:
        """Close the connection and forget the window; safe to call more than once."""
        if self._window is not None:
            self._window.close()
        if self._writer is not None:
            self._writer.close()


def iter_columnar(
    source: object,
    intake: Intake,
    *,
    size: int = MAX_ENTRIES,
    start: int = 0,
    first: Intake | None = None,
) -> Iterator[Chunk]:
    """The chunks of a columnar source, in the calling thread (for tests and scripts).

    ``first``, when given, encodes the first chunk instead of ``intake`` (a chunked replace).

    Raises:
        ModuleNotFoundError: pyarrow, duckdb or numpy is missing (the message names the
            install command).
        ValidationError: for the schema before the first chunk; for a column whose layout is
            broken; for the first bad row, with its position and ID, instead of the chunk
            holding it.
    """
    _check_bounds(size, start)
    stream = _Stream(source, intake, first or intake, size, start)
    return _iterate(stream, _Encoder(stream))


def _iterate(stream: _Stream, encoder: _Encoder) -> Iterator[Chunk]:
    try:
        while True:
            step = stream.next_step()
            yield from encoder.chunks(step)
            if step.error is not None:
                raise step.error
            if not step.places:
                return
    finally:
        stream.close()
        encoder.close()


def aiter_columnar(
    source: object,
    intake: Intake,
    *,
    size: int = MAX_ENTRIES,
    start: int = 0,
    first: Intake | None = None,
) -> AsyncIterator[Chunk]:
    """The chunks of a columnar source, prepared in a worker thread while earlier ones are sent.

    Raises:
        ModuleNotFoundError: at once, if pyarrow, duckdb or numpy is missing.
        ValidationError: as ``iter_columnar``.
    """
    _check_bounds(size, start)
    stream = _Stream(source, intake, first or intake, size, start)
    return _pump(stream, _Encoder(stream))


async def _pump(stream: _Stream, encoder: _Encoder) -> AsyncIterator[Chunk]:
    # One worker thread per upload reads, checks and encodes each step, in order, as soon as a
    # slot ahead is free, not when the loop asks for it: the loop only takes finished chunks
    # and never waits on an encode while requests could be in flight. One thread, not a
    # reader and an encoder: on two cores shared with the server they only competed.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-audience-columnar")
    # DuckDB's import and first query (~0.1 s) run in a thread of their own meanwhile, beside
    # the first batch's decoding.
    warmer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-audience-warm")
    warmed = warmer.submit(encoder.warm)
    warmer.shutdown(wait=False)

    def prepare_step() -> tuple[_Step, list[Chunk]]:
        step = stream.next_step()
        warmed.result()  # a missing DuckDB is raised here
        return step, encoder.chunks(step)

    def finish() -> None:
        stream.close()
        with contextlib.suppress(BaseException):
            warmed.result()  # the connection exists before it is closed
        encoder.close()

    steps = collections.deque(worker.submit(prepare_step) for _ in range(AHEAD))
    try:
        while True:
            step, chunks = await asyncio.wrap_future(steps[0])
            steps.popleft()
            if step.error is None and step.places:
                steps.append(worker.submit(prepare_step))
            for chunk in chunks:
                yield chunk
            if step.error is not None:
                raise step.error
            if not step.places:
                return
    finally:
        for prepared in steps:
            prepared.cancel()  # only those not started: a running step finishes first
        # Queued behind a task still running (a consumer that stopped early), never beside it.
        worker.submit(finish)
        worker.shutdown(wait=False)
