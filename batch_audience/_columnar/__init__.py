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
- ``table``: one in-memory table checked whole, then encoded.

Entry points (all of them block: run them off the event loop; pyarrow, DuckDB and numpy are
the caller's to import):

- ``aiter_columnar(source, intake, size=, start=, first=)`` / ``iter_columnar(...)``: the
  chunks (``_chunker.Chunk``: body, IDs, position) of a whole stream, checked and encoded,
  as uploads send them; ``is_columnar(source)`` tells such a source.
- For rows already in memory (a sync's difference computed in DuckDB), one table at a time::

      pc = Kernels(pa, memory_pool(pa))           # pyarrow's kernels, the library's pool
      plan = plan_columns(pa, table.schema, EntryEncoder(generation, operation))
      checked = check_table(pc, table, plan, start=0)   # ValidationError: position, ID, rule
      with contextlib.closing(Writer(pc)) as writer:    # one DuckDB connection
          bodies = encode_table(writer, checked, plan, operation, size=10_000)

  ``plan_columns`` judges a schema once (ValidationError for a column that cannot be sent);
  ``check_table`` validates every column at the boundary and judges every row with the record
  path's rules, vectorised; ``encode_table`` returns the JSON array of each chunk.
  ``prepare`` / ``check`` / ``Writer.bodies`` are the same steps one batch at a time.
"""

from .checks import check, prepare
from .encode import Writer, action_of
from .extra import INSTALL_COMMAND, Kernels, memory_pool
from .ids import ArrowIds
from .schema import Plan, plan_columns
from .stream import aiter_columnar, is_columnar, iter_columnar
from .table import check_table, encode_table

__all__ = [
    "INSTALL_COMMAND",
    "ArrowIds",
    "Kernels",
    "Plan",
    "Writer",
    "action_of",
    "aiter_columnar",
    "check",
    "check_table",
    "encode_table",
    "is_columnar",
    "iter_columnar",
    "memory_pool",
    "plan_columns",
    "prepare",
]
