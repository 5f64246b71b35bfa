"""One in-memory table at a time: checked whole, then encoded, without a stream.

For callers that hold the rows to send already (a mirror sync's difference, computed inside
DuckDB): ``check_table`` validates and judges every row with the columnar path's rules,
vectorised, and ``encode_table`` writes the wire entries of checked rows, chunk by chunk.
Both block (pyarrow and DuckDB release the GIL): run them off the event loop.
"""

from __future__ import annotations

from typing import Any

from .._chunker import _check_bounds
from .._validate import MAX_ENTRIES
from .checks import check, prepare
from .encode import Writer, action_of
from .extra import Kernels
from .schema import Plan

__all__ = ["check_table", "encode_table"]


def check_table(pc: Kernels, data: Any, plan: Plan, *, start: int = 0) -> Any:
    """``data`` (a RecordBatch or Table) validated, in plain layout, every row judged: one batch.

    ``plan`` is ``plan_columns(pa, data.schema, encoder)``; ``start`` is the stream position of
    the first row (errors count from it). Rows before ``plan``'s first chunk size are not
    treated apart: give a replace's first chunk its own call.

    Raises:
        ValidationError: a broken column (naming it), or the first row that breaks a rule (its
            position, ID and rule), as the record path raises it.
    """
    pa = pc._pa
    batches = data.to_batches() if isinstance(data, pa.Table) else [data]
    prepared = []
    not_utf8: frozenset[int] = frozenset()
    position = start
    for batch in batches:
        plain, bad = prepare(pc, batch, plan, position)
        prepared.append(plain)
        not_utf8 |= bad
        position += batch.num_rows
    if not prepared:  # a table of no batch: one of no row, for the columns' types
        empty = pa.RecordBatch.from_arrays(
            [pa.nulls(0, field.type) for field in data.schema], schema=data.schema
        )
        prepared = [prepare(pc, empty, plan, start)[0]]
    whole = pa.concat_batches(prepared, memory_pool=pc.pool)
    error = check(pc, whole, plan, start=start, not_utf8=not_utf8)
    if error is not None:
        raise error
    return whole


def encode_table(
    writer: Writer, batch: Any, plan: Plan, operation: str, *, size: int = MAX_ENTRIES
) -> list[bytes]:
    """The JSON array of each chunk of ``size`` rows of a checked batch (``check_table``).

    ``operation`` is the entries' (``add``, ``remove``; ``replace`` writes no action).
    """
    _check_bounds(size, 0)
    rows = batch.num_rows
    if not rows:
        return []
    bounds = [(begin, min(begin + size, rows)) for begin in range(0, rows, size)]
    action = action_of(operation)
    bodies, _ = writer.bodies(batch, plan, bounds, (action, action))
    return bodies
