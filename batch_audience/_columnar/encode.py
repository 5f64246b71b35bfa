"""Checked columns in, the wire entries of each chunk out: JSON written by DuckDB.

One query per step over the Arrow data (no copy): ``concat`` of each entry's pieces, with
``to_json`` for text, floats and lists and ``::VARCHAR`` for integers, each entry followed by a
comma, and the hash of its ID beside it (for the repeats between chunks, ``ids.Window``). Each
chunk's body is then cut out of the result's one text buffer in one copy. Timestamps are written
by Arrow first (``timestamp_text``: its cast to text is ~4x cheaper than strftime in DuckDB).

A DuckDB connection is not thread-safe: a ``Writer`` is used by one thread at a time.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from .._exceptions import ValidationError
from .checks import PER_SECOND, column_errors, column_names
from .extra import Kernels, import_extra
from .schema import DATE_TEXT, INT, STR, TS, UINT64, URL_TEXT, Plan

__all__ = ["Writer", "timestamp_text"]

_SQL_CACHE_MAX: Final = 64
_ARROW_SECONDS: Final = 19  # len("2024-01-02 10:00:00"): Arrow's text of years 1000 to 9999


def action_of(operation: str) -> str | None:
    """The ``action`` of each entry: none in a replace, whose request says what it does."""
    return operation if operation != "replace" else None


class Writer:
    """Writes the JSON entries of checked columns with a DuckDB connection of its own."""

    def __init__(self, pc: Kernels) -> None:
        self._pc = pc
        self._con: Any = None
        self._sql: dict[tuple[object, ...], str] = {}

    def warm(self) -> None:
        """Import DuckDB and run a first query (~0.1 s), so that the first step does not wait."""
        self._connection()

    def _connection(self) -> Any:
        if self._con is None:
            con = import_extra("duckdb").connect(":memory:", config={"threads": 1})
            con.sql("SELECT concat(to_json('a'), ','), hash('a')").fetchall()
            self._con = con
        return self._con

    def close(self) -> None:
        """Close the connection; safe to call more than once."""
        con, self._con = self._con, None
        if con is not None:
            con.close()

    def bodies(
        self,
        batch: Any,
        plan: Plan,
        bounds: list[tuple[int, int]],
        actions: tuple[str | None, str | None],
    ) -> tuple[list[bytes], Any]:
        """The JSON array of each chunk of ``batch``, and the hash of each row's ID (uint64).

        ``batch`` is checked (``checks.prepare``, then ``checks.check`` for its rows); ``bounds``
        are the rows [begin, end) of each chunk; ``actions`` the action of the first chunk and
        of the others (None: no action, a replace).
        """
        pa, pc = self._pc._pa, self._pc
        table = pa.Table.from_batches([batch])
        for number, attribute in enumerate(plan.attributes, start=1):
            if attribute.kind == TS:
                with column_errors(pa, attribute.name):
                    text = timestamp_text(pa, pc, table.column(number).chunk(0), attribute.unit)
                table = table.set_column(number, f"c{number}", text)
        nullable = frozenset(
            number for number in range(1, table.num_columns) if table.column(number).null_count
        )
        quoted = frozenset(
            number
            for number in _text_columns(plan)
            if _needs_no_escape(pa, table.column(number).chunk(0))
        )
        shape = (nullable, quoted)
        con = self._connection()
        con.register("chunk", table)
        try:
            sql = self._query(plan, actions[1], shape)
            result = self._run(con, sql, plan)
            later = _Text.of(pa, result.column(0))
            first = later
            if actions[0] != actions[1]:
                rows = bounds[0][1] - bounds[0][0]
                sql = self._query(plan, actions[0], shape)
                first_result = self._run(con, f"{sql} LIMIT {rows}", plan)
                first = _Text.of(pa, first_result.column(0))
        finally:
            con.unregister("chunk")
        bodies = [
            (first if number == 0 else later).body(begin, end)
            for number, (begin, end) in enumerate(bounds)
        ]
        return bodies, result.column(1).combine_chunks(memory_pool=pc.pool)

    def _run(self, con: Any, sql: str, plan: Plan) -> Any:
        """The query's result; a DuckDB error as a ValidationError naming the column."""
        duckdb = import_extra("duckdb")
        try:
            return con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            # Which column? Each one written alone tells.
            for number, name in enumerate(column_names(plan)):
                value = ", ".join(_value_sql(plan, number))
                try:
                    con.sql(f"SELECT concat({value}) FROM chunk").fetchall()
                except duckdb.Error as alone:
                    raise ValidationError(
                        f"column {name!r} cannot be written ({type(alone).__name__}: {alone})"
                    ) from alone
            raise ValidationError(
                f"the columns cannot be written ({type(exc).__name__}: {exc})"
            ) from exc

    def _query(
        self, plan: Plan, action: str | None, shape: tuple[frozenset[int], frozenset[int]]
    ) -> str:
        """The SQL that writes one JSON entry per row, followed by a comma; cached per shape.

        ``shape``: the columns with a null in the step, and the text columns whose text needs
        no escape. A null cell leaves its key out of its row (as the record path leaves a None
        out): ``'"key":' || NULL`` is NULL, which ``concat`` skips. Keys always present come
        first, so that each key that may be left out can carry its own leading comma.
        """
        key = (action, plan, shape)
        sql = self._sql.get(key)
        if sql is not None:
            return sql
        nullable, quoted = shape
        head = '{"id":' if action is None else f'{{"action":{orjson.dumps(action).decode()},"id":'
        parts = [_literal(head), *_value_sql(plan, 0, quoted)]
        if plan.has_attributes:
            parts += _attributes_sql(plan, nullable, quoted)
        if plan.tags_index is not None:
            number = len(plan.attributes) + 1
            parts += _piece(',"tags":', _value_sql(plan, number), number in nullable)
        parts.append(_literal("},"))
        sql = f"SELECT concat({', '.join(_merged(parts))}) AS entry, hash(c0) AS h FROM chunk"
        if len(self._sql) >= _SQL_CACHE_MAX:
            self._sql.clear()
        self._sql[key] = sql
        return sql


def _attributes_sql(plan: Plan, nullable: frozenset[int], quoted: frozenset[int]) -> list[str]:
    """The pieces of ``"attributes":{...}`` in a ``concat``."""
    numbered = list(enumerate(plan.attributes, start=1))
    present = [(n, a) for n, a in numbered if n not in nullable]
    maybe = [(n, a) for n, a in numbered if n in nullable]
    if not present and maybe:
        # Every column has a null somewhere: no key is sure to lead; concat_ws puts the commas.
        keyed = [
            " || ".join([_literal(_key(a.wire)), *_value_sql(plan, n, quoted)]) for n, a in maybe
        ]
        inner = f"concat_ws(',', {', '.join(keyed)})"
        return [_literal(',"attributes":{'), inner, _literal("}")]
    pieces = [_literal(',"attributes":{')]
    for place, (number, attribute) in enumerate([*present, *maybe]):
        key = _key(attribute.wire) if place == 0 else "," + _key(attribute.wire)
        pieces += _piece(key, _value_sql(plan, number, quoted), number in nullable)
    pieces.append(_literal("}"))
    return pieces


def _merged(parts: list[str]) -> list[str]:
    """``concat``'s arguments with each run of literals joined into one.

    Fewer arguments per row: the lab's query goes from 23 to 15, ~12% less of its time.
    """
    merged: list[str] = []
    for part in parts:
        if merged and _is_literal(part) and _is_literal(merged[-1]):
            merged[-1] = merged[-1][:-1] + part[1:]
        else:
            merged.append(part)
    return merged


def _is_literal(sql: str) -> bool:
    """Whether ``sql`` is one string literal as ``_literal`` writes it."""
    return len(sql) >= 2 and sql[0] == sql[-1] == "'" and "'" not in sql[1:-1].replace("''", "")


def _piece(key: str, value: list[str], nullable: bool) -> list[str]:
    """A key and its value in a ``concat``: as one NULL when the value may be NULL."""
    if nullable:
        return [" || ".join([_literal(key), *value])]
    return [_literal(key), *value]


def _key(wire: str) -> str:
    return orjson.dumps(wire).decode() + ":"


def _value_sql(plan: Plan, number: int, quoted: frozenset[int] = frozenset()) -> list[str]:
    """The JSON text of column ``c{number}``'s value, in pieces of a ``concat``.

    Text that needs no escape (``quoted``), and a date's text, are written between quotes that
    are pieces of their own: ``to_json`` of a string costs ~2x, and a ``||`` builds a string
    per row.
    """
    column = f"c{number}"
    if number in quoted:
        return ["'\"'", column, "'\"'"]
    if 1 <= number <= len(plan.attributes):
        kind = plan.attributes[number - 1].kind
        if kind in (INT, UINT64):
            return [f"{column}::VARCHAR"]
        if kind == TS:
            return ["'\"'", column, "'\"'"]
    return [f"to_json({column})"]


def _text_columns(plan: Plan) -> list[int]:
    """The numbers of the columns holding text: the ID and the text attributes."""
    text = (STR, DATE_TEXT, URL_TEXT)
    return [0, *(n for n, a in enumerate(plan.attributes, start=1) if a.kind in text)]


def _needs_no_escape(pa: Any, array: Any) -> bool:
    """Whether no text of a string array needs escaping in JSON (no quote, backslash or control
    character), so it can be written between quotes as it is.

    Three numpy passes over its bytes, ~10 ms per million 36-character IDs, spare DuckDB ~25 ms
    of ``to_json``. The text is valid UTF-8 (checked at the boundary), which JSON takes as is.
    """
    np = import_extra("numpy")
    _, offsets, data = array.buffers()
    if data is None or not len(array):
        return True
    wide = pa.types.is_large_string(array.type)
    ends = np.frombuffer(offsets, dtype=np.int64 if wide else np.int32)
    first, last = int(ends[array.offset]), int(ends[array.offset + len(array)])
    if first == last:
        return True
    text = np.frombuffer(data, dtype=np.uint8)[first:last]
    return bool(
        int(text.min()) >= 0x20 and not (text == ord('"')).any() and not (text == ord("\\")).any()
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class _Text:
    """A string column's buffers, to cut the JSON of consecutive rows out in one copy."""

    __slots__ = ("_data", "_keep", "_offsets")

    def __init__(self, array: Any, offsets: memoryview, data: memoryview) -> None:
        self._keep = array  # the buffers live as long as the array
        self._offsets = offsets
        self._data = data

    @classmethod
    def of(cls, pa: Any, column: Any) -> _Text:
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            array = array.cast(pa.large_string())
        _, offsets, data = array.buffers()
        view = memoryview(offsets).cast("q" if pa.types.is_large_string(array.type) else "i")
        return cls(array, view[array.offset : array.offset + len(array) + 1], memoryview(data))

    def body(self, begin: int, end: int) -> bytes:
        """The JSON array of rows ``begin`` to ``end``; each row's text ends with a comma."""
        offsets = self._offsets
        # The last entry's comma becomes the closing bracket.
        return b"".join((b"[", self._data[offsets[begin] : offsets[end] - 1], b"]"))


def timestamp_text(pa: Any, pc: Kernels, column: Any, unit: str) -> Any:
    """The library's UTC text of each timestamp: seconds, then fractions only when non-zero.

    As ``_validate._utc_text`` writes a datetime: ``2024-01-02T10:00:00Z``, or six digits of
    microseconds when there are some (nine for nanoseconds below a microsecond). The column
    holds no timestamp outside years 1 to 9999 (the checks refuse them).
    """
    utc = pc.cast(column, pa.timestamp(unit))  # the same instants, without the zone's name
    try:
        # A safe cast to seconds fails on a fraction: one pass tells whole seconds (the
        # common case) from the rest.
        return _iso_utc(pa, pc, pc.cast(pc.cast(utc, pa.timestamp("s")), pa.string()))
    except pa.ArrowInvalid:
        pass
    text = pc.cast(pc.cast(utc, pa.timestamp("s"), safe=False), pa.string())
    raw = pc.cast(utc, pa.int64())
    per = PER_SECOND[unit]
    whole = pc.equal(pc.multiply(pc.divide(raw, per), per), raw)
    fine_unit = "ns" if unit == "ns" else "us"
    fine = pc.cast(pc.cast(utc, pa.timestamp(fine_unit)), pa.string())
    if unit == "ns":
        micros = pc.equal(pc.multiply(pc.divide(raw, 1_000), 1_000), raw)
        fine = pc.if_else(
            micros, pc.cast(pc.cast(utc, pa.timestamp("us"), safe=False), pa.string()), fine
        )
    text = pc.if_else(whole, text, fine)
    return _iso_utc(pa, pc, text)


def _iso_utc(pa: Any, pc: Kernels, text: Any) -> Any:
    """Arrow's ``2024-01-02 10:00:00`` texts as ``2024-01-02T10:00:00Z``.

    When every text is exactly 19 bytes (whole seconds, years 1000 to 9999, no null: the
    common case) the new bytes are written in one numpy pass over a fixed-width view; two
    Arrow passes (replace, then join) cost ~3x as much.
    """
    width = _ARROW_SECONDS
    _, offsets, data = text.buffers()
    rows = len(text)
    if rows and not text.null_count and not text.offset and pa.types.is_string(text.type):
        np = import_extra("numpy")
        ends = np.frombuffer(offsets, dtype=np.int32, count=rows + 1)
        if ends[0] == 0 and bool((np.diff(ends) == width).all()):
            fixed = np.frombuffer(data, dtype=np.uint8, count=rows * width).reshape(rows, width)
            iso = np.empty((rows, width + 1), dtype=np.uint8)
            iso[:, :width] = fixed
            iso[:, 10] = ord("T")
            iso[:, width] = ord("Z")
            starts = np.arange(0, (rows + 1) * (width + 1), width + 1, dtype=np.int32)
            buffers = [None, pa.py_buffer(starts), pa.py_buffer(iso)]
            return pa.Array.from_buffers(pa.string(), rows, buffers)
    text = pc.replace_substring(text, " ", "T", max_replacements=1)
    return pc.binary_join_element_wise(text, "Z", "")
