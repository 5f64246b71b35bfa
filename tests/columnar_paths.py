"""The record path and the columnar path side by side, for the columnar tests and the fuzz.

The record path (``_chunker.iter_chunks`` over ``Intake``, with ``EntryEncoder`` as the authority)
is the reference: for a table, its records are the table's rows (``to_pylist``) with the ``id``
column as the ID, the ``tags`` column as the tags and every other column, null cells left out, as
an attribute. The columnar path must give the same chunks (entries decoded, types included) and,
for a bad row, the same ValidationError (message, position, ID) with the same chunks before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

import batch_audience as ba
from batch_audience._chunker import Chunk, iter_chunks
from batch_audience._columnar import iter_columnar
from batch_audience._intake import Intake
from batch_audience._validate import Generation, Operation

__all__ = ["Outcome", "both", "intakes", "outcome", "records_of", "typed"]

Outcome = tuple[list[tuple[int, int, list[dict[str, Any]]]], tuple[str, int | None, str | None]]


def intakes(generation: Generation, operation: Operation) -> tuple[Intake, Intake | None]:
    """The intake and first-chunk intake an upload of this operation uses (as _upload does)."""
    intake = Intake(generation, "add" if operation == "replace" else operation)
    first = Intake(generation, "replace") if operation == "replace" else None
    return intake, first


def records_of(table: pa.Table) -> Iterator[dict[str, Any]]:
    """The table's rows as record mappings, as a user would write them."""
    names = [n for n in table.column_names if n not in ("id", "tags")]
    for row in table.to_pylist():
        record: dict[str, Any] = {"id": row["id"]}
        if names:
            record["attributes"] = {n: row[n] for n in names if row[n] is not None}
        if "tags" in row:
            record["tags"] = row["tags"]
        yield record


def typed(value: Any) -> Any:
    """A decoded JSON value in which a float never equals an int (1.0 is not 1 on the wire)."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, float):
        return ("float", value)
    return value


def outcome(chunks: Iterator[Chunk]) -> Outcome:
    """The chunks (start, count, decoded entries, floats told from ints) until the end or the
    first error."""
    seen: list[tuple[int, int, list[dict[str, Any]]]] = []
    try:
        for chunk in chunks:
            seen.append((chunk.start, chunk.count, typed(chunk.entries())))
    except ba.ValidationError as err:
        return seen, (str(err), err.position, err.record_id)
    return seen, ("", None, None)


def both(
    table: pa.Table,
    generation: Generation = "2",
    operation: Operation = "add",
    size: int = 10,
    start: int = 0,
    source: object = None,
) -> tuple[Outcome, Outcome]:
    """What the record path gives for ``table``'s rows, and the columnar path for ``table``
    (or ``source``, the same rows in another shape: batches, slices, a reader)."""
    intake, first = intakes(generation, operation)
    expected = outcome(iter_chunks(records_of(table), intake, size=size, start=start, first=first))
    intake, first = intakes(generation, operation)
    columns = table if source is None else source
    got = outcome(iter_columnar(columns, intake, size=size, start=start, first=first))
    return expected, got
