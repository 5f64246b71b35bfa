"""Columnar sources: an Arrow C stream in, validated wire chunks out, with no Python object per row.

Any object exposing ``__arrow_c_stream__`` (a pyarrow Table or RecordBatchReader, a pandas or
polars DataFrame, a DuckDB relation) is read batch by batch. Column ``id`` is the ID, ``tags``
(list of strings) the tags, every other column an attribute typed by the column's type.

The modules, in the order the data goes through them (each imports only those before it):

- ``extra``: the optional extra (pyarrow, DuckDB, numpy), imported off the loop; pyarrow's
  kernels called with the library's memory pool.
- ``schema``: the column names and types judged once, before any batch is read (``Plan``).
- ``checks``: each batch validated at the boundary (offsets, UTF-8) and brought to a plain
  layout; each step's rows flagged by pyarrow kernels and judged by the record path's rules.
- ``encode``: the wire entries of checked rows, written by DuckDB.
- ``ids``: each chunk's IDs, and which nearby chunks share one.
- ``stream``: a stream read step by step into chunks, in a worker thread for uploads.

Entry points (pyarrow, DuckDB and numpy are imported by the caller; all of it blocks, so run it
off the event loop):

- ``aiter_columnar(source, intake, size=, start=, first=)`` / ``iter_columnar(...)``: the
  chunks (``_chunker.Chunk``) of a whole stream, checked and encoded, as uploads send them.
- ``plan_columns(pa, schema, encoder, first=None) -> Plan``: judge a schema once for an
  ``EntryEncoder`` (generation and operation); ValidationError if a column cannot be sent.
- ``prepare(pc, batch, plan, start)``: one batch (or table) validated and in plain layout;
  ``check(pc, batch, plan, start=)`` then returns the first rule a row breaks (a
  ValidationError with position, ID and rule), or None. ``pc`` is ``Kernels(pa, pool)``.
- ``Writer(pc).bodies(batch, plan, bounds, actions)``: the JSON array of each chunk
  (rows [begin, end) in ``bounds``) of a checked batch, and each row's ID hash; ``actions``
  are the first chunk's and the others' (``action_of(operation)``).
"""

from .checks import check, prepare
from .encode import Writer, action_of
from .extra import INSTALL_COMMAND, Kernels, memory_pool
from .ids import ArrowIds
from .schema import Plan, plan_columns
from .stream import aiter_columnar, is_columnar, iter_columnar

__all__ = [
    "INSTALL_COMMAND",
    "ArrowIds",
    "Kernels",
    "Plan",
    "Writer",
    "action_of",
    "aiter_columnar",
    "check",
    "is_columnar",
    "iter_columnar",
    "memory_pool",
    "plan_columns",
    "prepare",
]
