"""Columnar sources: an Arrow C stream in, validated wire chunks out, with no Python object per row.

Any object exposing ``__arrow_c_stream__`` (a pyarrow Table or RecordBatchReader, a pandas or
polars DataFrame, a DuckDB relation) is read batch by batch. Column ``id`` is the ID, ``tags``
(list of strings) the tags, every other column an attribute typed by the column's type.

How the work is split, and why:

- The schema is judged once, when the stream is opened, before any chunk exists: a bad name, an
  unsupported type, a missing ``id``, too many attribute columns raise ValidationError.
- Each batch read is copied once into a memory pool of the library's (``_memory_pool``),
  where all the checks and texts of a step are allocated too (``_Pooled``): the source's
  memory is free at once, and nothing is faulted in anew for every step. Each chunk (at
  most ``size`` rows) is checked with pyarrow compute kernels. They flag every row that may
  break a rule; only those rows are turned into a record (a dict) and given to
  ``EntryEncoder``, the one authority, which raises the very ValidationError (position, ID,
  rule) the record path raises, or accepts the row (a flag is allowed to be cautious: an
  unusual ISO-8601 form, a non-ASCII tag). So the rules cannot drift from the record path,
  and clean rows never become Python objects.
- The chunks' JSON is written by the C accelerator (``_speedups``: the checked columns'
  buffers in, each step's bodies out, into memory the upload reuses, with the GIL released),
  which also hashes each ID. Where it could not be built (no C compiler at install), DuckDB
  writes it (``to_json`` in C++, one query per step over the Arrow data without a copy, ~3x
  the CPU), and the same entries go out (a float's text may differ: ``1e+16`` against
  ``10000000000000000.0``, never an integer's).
- Every step runs in one worker thread (pyarrow, the accelerator and DuckDB release the GIL),
  one step at a time, the next steps prepared while the current one is sent; the event loop
  only awaits it. DuckDB connections are not thread-safe: one per upload, used by one step at
  a time.
- A chunk's IDs stay an Arrow array; which nearby chunks share an ID (spec §8) is known from
  a sort of the IDs' hashes (numpy) before the chunk reaches the loop.

pyarrow, duckdb and numpy are the optional extra ``batch-audience[data]``: they are imported
only when a columnar source is given, in the worker (DuckDB only when it writes the JSON),
and their absence raises an error naming the install command at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import importlib
import importlib.util
import inspect
import json
import os
import queue
import re
import struct
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, cast

import attrs
import orjson

from ._chunker import Chunk
from ._exceptions import ValidationError
from ._intake import Intake
from ._sources import STDIN, Interrupted, RecordReader, SourceError
from ._validate import (
    _DATE,
    _INT_MAX,
    _PLAIN,
    _URL,
    MAX_ARRAY_ITEMS,
    MAX_ATTRIBUTES,
    MAX_ENTRIES,
    MAX_STRING_LENGTH,
    MAX_TAG_LENGTH,
    MAX_URL_LENGTH,
    EntryEncoder,
    _learn_key,
    _show,
)

__all__ = [
    "INSTALL_COMMAND",
    "ArrowIds",
    "ParquetRecords",
    "aiter_columnar",
    "check_parquet",
    "is_columnar",
    "iter_columnar",
]

INSTALL_COMMAND: Final = "pip install 'batch-audience[data]'"

# Column kinds.
_STR: Final = "string"
_INT: Final = "integer"
_UINT64: Final = "uint64"
_FLOAT: Final = "float"
_TS: Final = "timestamp"
_DATE_TEXT: Final = "date text"
_URL_TEXT: Final = "url text"
_ARRAY: Final = "array"
_NULL: Final = "null"

_TYPES_TEXT: Final = "string, integer, float, timestamp with a time zone, or list of strings"
# Python's datetime holds years 1 to 9999; a timestamp outside cannot be a date attribute.
_TS_MIN_S: Final = -62_135_596_800  # 0001-01-01T00:00:00Z, seconds from the epoch
_TS_MAX_S: Final = 253_402_300_800  # 10000-01-01T00:00:00Z, exclusive
_PER_SECOND: Final = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# The forms of ISO-8601 that datetime.fromisoformat surely reads; anything else is handed to
# it, row by row. Day-of-month validity is checked apart (strptime).
_DATE_FORM: Final = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{3}|\.[0-9]{6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?$"
)
# _validate._PLAIN_URL in RE2 syntax (its \Z is RE2's $ without multi-line).
_URL_FORM: Final = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][!-~]*)?$"
_SQL_CACHE_MAX: Final = 64
_PANDAS_INDEX: Final = re.compile(r"__index_level_[0-9]+__")
# Rows read, checked and encoded per step in the worker (rounded to whole chunks): each call
# into pyarrow or DuckDB hands the GIL back and forth with the event loop, so few large
# steps keep the loop's waits short and the worker's too.
_STEP_ROWS: Final = 50_000
# Chunks back that a new chunk's overlaps are known for without a comparison on the loop:
# more than the chunks an upload keeps in flight (4 by default). A chunk further back still in
# flight is compared on the loop, vectorised (correct, only slower).
_WINDOW_CHUNKS: Final = 6
_AHEAD: Final = 2  # steps prepared ahead of the one being sent (each ~10 MB of JSON at most)


def is_columnar(source: object) -> bool:
    """Whether ``source`` exposes the Arrow C stream interface (and is read as columns)."""
    return hasattr(type(source), "__arrow_c_stream__")


_EXTRA: Final = ("pyarrow", "duckdb", "numpy")


def _require() -> None:
    """Raise the install hint if a module of the extra is missing, without importing it.

    Importing pyarrow and duckdb takes ~0.1 s: on the event loop that would stall it, so the
    workers import them (``_import``); this only looks them up.
    """
    for name in _EXTRA:
        if name in sys.modules:  # None there: an import of it failed, or it is blocked
            found = sys.modules[name] is not None
        else:
            found = importlib.util.find_spec(name) is not None
        if not found:
            raise _missing(ModuleNotFoundError(f"No module named {name!r}", name=name))


def _missing(exc: ImportError) -> ModuleNotFoundError:
    error = ModuleNotFoundError(
        f"a columnar source (an object with __arrow_c_stream__) needs pyarrow, duckdb and numpy "
        f"(the data extra): {exc}. Install them with: {INSTALL_COMMAND}",
        name=exc.name,
    )
    error.__cause__ = exc
    return error


def _import(name: str) -> Any:
    """A module of the data extra; an error naming the install command if it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise _missing(exc) from exc


class ArrowIds:
    """The IDs of one chunk as an Arrow array, with its overlaps with the chunks just before it.

    The upload engine asks ``isdisjoint`` of each chunk against every chunk in flight, on the
    event loop, several times per chunk. The encoding worker already knows, for each chunk,
    which of the chunks of the same and the previous steps share an ID with it (off the loop,
    see ``_Encoder``), so those answers are a set lookup; only a chunk older than that window,
    still in flight, is compared with a vectorised ``is_in``.
    """

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


class _Pooled:
    """pyarrow.compute with every call allocating from one given memory pool.

    The columns' checks and texts are allocated and freed anew for every step. From Arrow's
    default pool (mimalloc) that memory went back to the system between steps and was faulted
    in again each time: ~0.4 s of system time per million rows (1M-row Parquet upload, lab
    sink). The library's pool (``_memory_pool``) keeps it for the next step. The pool is
    passed per call: the process-wide default stays as the application set it.

    The kernels a common upload uses are called by name (``pyarrow._compute.call_function``):
    importing ``pyarrow.compute`` itself (its Python wrappers of every kernel, with their
    docs) holds the GIL ~25 ms, which delayed an upload's first request by ~30 ms. It is
    imported, in the worker, the first time a function below is not enough. Even
    ``pyarrow._compute`` (~5 ms) is imported only at the first kernel called: with the C
    accelerator the common columns need none.

    Python values given to a function (``pc.equal(lengths, 0)``) become Arrow scalars built
    from their bytes (``_scalar``), not through pyarrow's conversion of Python objects.
    """

    def __init__(self, pa: Any, pool: Any) -> None:
        self._pa = pa
        self.pool = pool

    @functools.cached_property
    def _compute(self) -> Any:
        return _import("pyarrow._compute")

    def __getattr__(self, name: str) -> Any:
        kernel = _KERNELS.get(name)
        if kernel is not None:
            call = self._kernel(kernel)
        elif name == "cast":
            call = self._cast
        elif name == "is_in":
            call = self._is_in
        else:
            call = self._wrapped(name)
        setattr(self, name, call)  # looked up once per name
        return call

    def _kernel(self, kernel: str) -> Callable[..., Any]:
        pa, call_function = self._pa, self._compute.call_function

        def call(*args: Any) -> Any:
            return call_function(kernel, _arrow_values(pa, args), None, self.pool)

        return call

    def _cast(self, values: Any, target: Any, safe: bool = True) -> Any:
        options = self._compute.CastOptions
        cast = options.safe(target) if safe else options.unsafe(target)
        return self._compute.call_function("cast", [values], cast, self.pool)

    def _is_in(self, values: Any, *, value_set: Any) -> Any:
        lookup = self._compute.SetLookupOptions(value_set=value_set)
        return self._compute.call_function("is_in", [values], lookup, self.pool)

    def _wrapped(self, name: str) -> Callable[..., Any]:
        function = getattr(_import("pyarrow.compute"), name)
        parameters = inspect.signature(function).parameters.values()
        pooled = any(p.name == "memory_pool" for p in parameters)
        # The values a function computes on come first (positional-only, or *args); what
        # follows is options (a regex, a slice's bounds), which stay Python values.
        if any(p.kind is p.VAR_POSITIONAL for p in parameters):
            values = sys.maxsize
        else:
            values = sum(p.kind is p.POSITIONAL_ONLY for p in parameters) or 1
        pa = self._pa

        def call(*args: Any, **kwargs: Any) -> Any:
            args = (*_arrow_values(pa, args[:values]), *args[values:])
            if pooled:
                kwargs["memory_pool"] = self.pool
            return function(*args, **kwargs)

        return call


def _arrow_values(pa: Any, args: tuple[Any, ...]) -> list[Any]:
    """Arguments with each Python value as an Arrow scalar built from its bytes (``_scalar``)."""
    return [_scalar(pa, arg) if isinstance(arg, bool | int | float | str) else arg for arg in args]


# pyarrow.compute's functions called by their kernel's name: each takes only values, and its
# default options are the kernel's (``fill_null`` is ``coalesce`` with a scalar of the type).
_KERNELS: Final = {
    "any": "any",
    "all": "all",
    "binary_length": "binary_length",
    "equal": "equal",
    "not_equal": "not_equal",
    "greater": "greater",
    "greater_equal": "greater_equal",
    "less": "less",
    "less_equal": "less_equal",
    "invert": "invert",
    "and_": "and",
    "or_": "or",
    "is_finite": "is_finite",
    "is_valid": "is_valid",
    "indices_nonzero": "indices_nonzero",
    "min_max": "min_max",
    "fill_null": "coalesce",
}
_LAYOUTS: Final = {"bool": "?", "int64": "<q", "uint64": "<Q", "double": "<d"}  # struct formats
_DEFAULT_TYPES: Final = {bool: "bool_", int: "int64", float: "float64"}


def _scalar(pa: Any, value: bool | int | float | str, type_: Any = None) -> Any:
    """An Arrow scalar of ``value`` (of ``type_`` if given), built from its bytes.

    pyarrow's conversion of Python values (``pa.scalar``, a Python int given to a compute
    function, ``pa.array`` of a list) imports pandas whenever it is installed: ~0.4 s of CPU
    and ~50 MB the first time, in the upload's first step, in a process that may never use
    pandas. From a buffer nothing is imported.
    """
    if isinstance(value, str):
        data = value.encode()
        offsets = struct.pack("<ii", 0, len(data))
        return pa.Array.from_buffers(
            pa.string(), 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )[0]
    if type_ is None:
        type_ = getattr(pa, _DEFAULT_TYPES[type(value)])()
    data = pa.py_buffer(struct.pack(_LAYOUTS[str(type_)], value))
    return pa.Array.from_buffers(type_, 1, [None, data])[0]


@attrs.frozen
class _Attribute:
    """One attribute column: where it is, its wire key and how its values are checked and sent."""

    index: int  # position in the source schema
    name: str  # column name, also the key of the record given to EntryEncoder
    wire: str  # wire key
    kind: str
    unit: str = ""  # timestamp unit


@attrs.frozen
class _Plan:
    """What the schema says: where the ID and tags are and how each attribute is sent."""

    id_index: int
    tags_index: int | None
    attributes: tuple[_Attribute, ...]


def _kind_of(pa: Any, type_: Any) -> str | None:
    """The value kind of an Arrow type, before the column name is considered; None if refused."""
    t = pa.types
    if t.is_dictionary(type_):
        return _STR if _is_text(pa, type_.value_type) else None
    if _is_text(pa, type_):
        return _STR
    if t.is_uint64(type_):
        return _UINT64
    if t.is_integer(type_):
        return _INT
    if t.is_floating(type_):
        return _FLOAT
    if t.is_timestamp(type_):
        return _TS if type_.tz is not None else None
    if _is_list(pa, type_):
        value = type_.value_type
        if t.is_dictionary(value):
            value = value.value_type
        # list<null>: only empty lists and null items, which the rules then judge per row.
        return _ARRAY if _is_text(pa, value) or t.is_null(value) else None
    if t.is_null(type_):
        return _NULL
    return None


def _is_text(pa: Any, type_: Any) -> bool:
    t = pa.types
    return bool(t.is_string(type_) or t.is_large_string(type_) or t.is_string_view(type_))


def _is_list(pa: Any, type_: Any) -> bool:
    t = pa.types
    return bool(
        t.is_list(type_)
        or t.is_large_list(type_)
        or t.is_fixed_size_list(type_)
        or t.is_list_view(type_)
        or t.is_large_list_view(type_)
    )


def _refused_type(name: str, type_: Any, pa: Any) -> ValidationError:
    t = pa.types
    hint = f"use {_TYPES_TEXT}"
    if t.is_timestamp(type_):
        hint = "give it a time zone (for UTC: cast it to timestamp with tz='UTC')"
    elif t.is_boolean(type_):
        hint = "booleans are not an audience attribute type (spec §2.3); cast it to int or string"
    elif t.is_date(type_):
        hint = "cast it to a timestamp with a time zone"
    return ValidationError(f"column {name!r} has type {type_}, which cannot be sent: {hint}")


def _pandas_unnamed_index(schema: Any) -> frozenset[str]:
    """The columns a pandas DataFrame adds for an unnamed index (``__index_level_0__``).

    They are the frame's row labels, not its data: never sent. A named index (``df.set_index
    ("id")``) is a column like any other, so it can be the ID.
    """
    metadata = schema.metadata or {}
    try:
        pandas = json.loads(metadata.get(b"pandas", b"{}"))
        columns = pandas.get("index_columns", [])
    except (ValueError, AttributeError):
        return frozenset()
    return frozenset(
        c for c in columns if isinstance(c, str) and _PANDAS_INDEX.fullmatch(c) is not None
    )


def _plan(pa: Any, schema: Any, encoders: tuple[EntryEncoder, ...]) -> _Plan:
    """Judge the column names and types once; raise ValidationError for the first problem."""
    names: list[str] = list(schema.names)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValidationError(f"column {name!r} appears twice: give each column once")
        seen.add(name)
    if "id" not in seen:
        shown = ", ".join(_show(n) for n in names[:8])
        raise ValidationError(f"a columnar source needs an 'id' column, got columns [{shown}]")
    id_index = names.index("id")
    id_type = schema.field(id_index).type
    if _kind_of(pa, id_type) != _STR:
        raise ValidationError(
            f"column 'id' has type {id_type}: IDs must be strings; cast the column to string"
        )
    tags_index: int | None = None
    if "tags" in seen:
        tags_index = names.index("tags")
        for encoder in encoders:
            if encoder._tags_refusal is not None:
                raise ValidationError(f"column 'tags': {encoder._tags_refusal}")
        tags_type = schema.field(tags_index).type
        if _kind_of(pa, tags_type) not in (_ARRAY, _NULL):
            raise ValidationError(
                f"column 'tags' has type {tags_type}: tags must be a list of strings"
            )
    attributes: list[_Attribute] = []
    wires: dict[str, str] = {}
    unnamed_index = _pandas_unnamed_index(schema)
    for index, name in enumerate(names):
        if index in (id_index, tags_index) or name in unnamed_index:
            continue
        for encoder in encoders:
            if encoder._attributes_refusal is not None:
                raise ValidationError(
                    f"column {name!r}: {encoder._attributes_refusal}; give only the 'id' column"
                )
        key_kind, key, date_key, _ = _learn_key(name)
        type_ = schema.field(index).type
        kind = _kind_of(pa, type_)
        if kind is None:
            raise _refused_type(name, type_, pa)
        wire = key
        if key_kind == _PLAIN:
            if kind == _TS:
                wire = date_key
        elif key_kind == _DATE:
            if kind == _STR:
                kind = _DATE_TEXT
            elif kind not in (_TS, _NULL):
                raise ValidationError(
                    f"column {name!r} takes ISO-8601 date-time strings or a timestamp with a "
                    f"time zone, got type {type_}"
                )
        else:
            assert key_kind == _URL
            if kind == _STR:
                kind = _URL_TEXT
            elif kind != _NULL:
                raise ValidationError(
                    f"column {name!r} takes absolute http or https URL strings, got type {type_}"
                )
        if wire in wires:
            raise ValidationError(
                f"columns {wires[wire]!r} and {name!r} both become wire key {wire!r}: "
                "give each attribute once"
            )
        wires[wire] = name
        unit = type_.unit if kind == _TS else ""
        attributes.append(_Attribute(index, name, wire, kind, unit))
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValidationError(
            f"{len(attributes)} attribute columns break the limit of {MAX_ATTRIBUTES} "
            "attributes per entry"
        )
    return _Plan(id_index, tags_index, tuple(attributes))


@attrs.frozen
class _Job:
    """Rows to encode: the Arrow table, the SQL for them, and where each chunk starts and ends."""

    table: Any
    sql: str
    first_sql: str | None  # for a replace's first chunk (no action); None: ``sql`` for all
    bounds: list[tuple[int, int]]  # rows [begin, end) of each chunk in ``table``
    kinds: tuple[tuple[str, str, str], ...]  # each attribute column's kind, wire name, unit
    tags: bool  # the last column is the tags
    attributes: bool  # entries carry "attributes" (an empty object when no column is left)
    actions: tuple[str | None, str | None]  # the action of the first chunk, of the others


@attrs.frozen
class _Step:
    """One step of the reading worker: its chunks' places and IDs, their job, the first error."""

    places: list[tuple[int, int, int, Any]]  # index, start, count, ID array of each chunk
    job: _Job | None
    error: ValidationError | None


class _Encoder:
    """Turns steps into chunks with a DuckDB connection of its own (one thread at a time).

    It writes each chunk's body and works out which chunks near each other share an ID
    (spec §8). The IDs' hashes come out of the query that writes the JSON, where hashing costs
    next to nothing; one sort of the window's hashes then tells whether any ID repeats, and
    only then does a join find which chunks share it.
    """

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream  # its compute functions, once it has opened, and its chunk size
        self._pa: Any = None
        self._np: Any = None
        self._con: Any = None
        # The memory the accelerator writes bodies into, reused from step to step.
        self._arena: Any = _speedups.Arena() if _speedups is not None else None
        # Per recent step: its ID hashes (Arrow), its first chunk number, the hashes sorted.
        self._recent: list[tuple[Any, int, Any]] = []

    def chunks(self, step: _Step) -> list[Chunk]:
        """The chunks of ``step``, bodies written and overlaps known."""
        if step.job is None:
            return []
        bodies, hashes = self.bodies(step.job)
        first = step.places[0][0]
        overlaps, known_from = self._overlaps(hashes, first, len(step.places))
        pc = self._stream._pc
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

    def warm(self) -> None:
        """Import pyarrow and numpy, and DuckDB when it writes the JSON, once.

        An upload runs it first, in a thread of its own: its ~0.1 s of imports and of DuckDB's
        first JSON query then pass while the worker reads the first batch, not after it. With
        the C accelerator DuckDB is only needed for a step it gives back, and imported then.
        """
        if self._pa is None:
            self._pa, self._np = _import("pyarrow"), _import("numpy")
        if _speedups is None:
            _import("pyarrow._compute")  # the checks' kernels (the accelerator checks in C)
            self._connection()

    def _connection(self) -> Any:
        """The DuckDB connection, opened on first use."""
        if self._con is None:
            con = _import("duckdb").connect(":memory:", config={"threads": 1})
            con.sql("SELECT to_json({'a': 1}) || ',', hash('a')").fetchall()
            self._con = con
        return self._con

    def bodies(self, job: _Job) -> tuple[Sequence[bytes | memoryview], Any]:
        """The JSON array of each chunk of ``job``, and the hash of each row's ID."""
        self.warm()
        if _speedups is not None:
            written, hashes = self._write(job)
            if written is not None:
                return written, hashes
            # The accelerator gives back a row the checks should have stopped (a null list
            # item, a timestamp outside years 1 to 9999) rather than write it: DuckDB writes
            # the step; the hashes stay the accelerator's, as for every other step.
            return self._query_bodies(self._with_texts(job))[0], hashes
        return self._query_bodies(job)

    def _write(self, job: _Job) -> tuple[list[memoryview] | None, Any]:
        """The bodies written by the C accelerator (None if a row stops it), and the hashes."""
        pa, np, pc = self._pa, self._np, self._stream._pc
        table = job.table
        columns = [_one_array(column, pc.pool) for column in table.columns]
        attributes = []
        for (kind, wire, _), column in zip(job.kinds, columns[1:], strict=False):
            attributes.append((orjson.dumps(wire) + b":", _c_column(pa, pc, kind, column)))
        heads = tuple(
            b'{"id":' if action is None else b'{"action":"' + action.encode() + b'","id":'
            for action in job.actions
        )
        rows = job.bounds[-1][1]
        hashes = np.empty(rows, dtype=np.uint64)
        written = _speedups.write_chunks(
            heads,
            _c_column(pa, pc, _STR, columns[0]),
            b',"attributes":{' if job.attributes else None,
            attributes,
            b',"tags":' if job.tags else None,
            _c_column(pa, pc, _ARRAY, columns[-1]) if job.tags else None,
            job.bounds,
            hashes,
            self._arena,
        )
        # From the buffer: pa.array(hashes) would go through pyarrow's conversion (_scalar).
        arrow = pa.Array.from_buffers(pa.uint64(), rows, [None, pa.py_buffer(hashes)])
        if isinstance(written, int):
            return None, arrow
        slab, spans = written
        view = memoryview(slab)  # the chunks' views keep the step's memory until all are sent
        return [view[start:end] for start, end in spans], arrow

    def _with_texts(self, job: _Job) -> _Job:
        """``job`` with its timestamps as text, as DuckDB's query reads them."""
        pa, pc = self._pa, self._stream._pc
        table = job.table
        for number, (kind, _, unit) in enumerate(job.kinds, start=1):
            if kind == _TS:
                column = _one_array(table.column(number), pc.pool)
                text = _timestamp_text(pa, pc, column, unit, None)
                table = table.set_column(number, f"c{number}", text)
        return attrs.evolve(job, table=table)

    def _query_bodies(self, job: _Job) -> tuple[list[bytes], Any]:
        """The bodies and ID hashes written by DuckDB."""
        pa, con = self._pa, self._connection()
        con.register("chunk", job.table)
        try:
            result = con.sql(job.sql).to_arrow_table()
            later = _Text.of(pa, result.column(0))
            first = later
            if job.first_sql is not None:
                rows = job.bounds[0][1]
                first_result = con.sql(f"{job.first_sql} LIMIT {rows}").to_arrow_table()
                first = _Text.of(pa, first_result.column(0))
        finally:
            con.unregister("chunk")
        bodies = [
            (first if number == 0 else later).body(begin, end)
            for number, (begin, end) in enumerate(job.bounds)
        ]
        return bodies, result.column(1).combine_chunks(memory_pool=self._stream._pool)

    def _overlaps(
        self, hashes: Any, first: int, chunks: int
    ) -> tuple[dict[int, frozenset[int]], int]:
        """Which earlier chunks of this step and the recent ones share an ID hash with each new one.

        The window holds at least the last ``_WINDOW_CHUNKS`` chunks before this step (steps
        vary in size). Returns the overlaps by chunk number and the first chunk number they
        cover. A hash collision only reports an overlap that is not there: a chunk then waits,
        never more.
        """
        np = self._np
        recent = self._recent
        known_from = recent[0][1] if recent else first
        ordered = np.sort(_hash_values(np, hashes))
        if _speedups is not None:
            # Equal neighbours are a repeat within the step; one merge per recent step finds
            # one with it (~4x less time than merging the window by sorting, below).
            repeats = bool((ordered[1:] == ordered[:-1]).any()) or any(
                _speedups.sorted_share(s, ordered) for _, _, s in recent
            )
        else:
            repeats = _repeat_in(np, [*(s for _, _, s in recent), ordered])
        full = [*recent, (hashes, first, ordered)]
        # Kept for the next step: the steps that cover the last _WINDOW_CHUNKS chunks.
        kept = list(full)
        chunks_after = first + chunks
        while len(kept) > 1 and chunks_after - kept[1][1] >= _WINDOW_CHUNKS:
            kept.pop(0)
        self._recent = kept
        if not repeats:
            return {}, known_from
        size = self._stream._size
        ids = np.concatenate([_hash_values(np, h) for h, _, _ in full])
        numbers = np.concatenate(
            [np.arange(len(h), dtype=np.int64) // size + n for h, n, _ in full]
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

    def close(self) -> None:
        """Close the connection and free the memory kept; safe to call more than once."""
        self._recent = []
        if self._arena is not None:
            self._arena.close()
        con, self._con = self._con, None
        if con is not None:
            con.close()


_END: Final = object()
_CLOSE_WAIT: Final = 10.0  # seconds a closing stream waits for its reading thread


class _Prefetch:
    """Reads the next batches in a thread of its own while the worker encodes the last ones.

    Decoding a Parquet batch (or running a DuckDB query) and encoding the previous one then
    overlap. Only this thread touches the stream once it started; it closes the stream when
    it stops. At most ``depth`` batches wait, so memory stays bounded.
    """

    def __init__(self, reader: Any, depth: int = 2) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(
            target=self._run, args=(reader,), name="batch-audience-columnar-read", daemon=True
        )
        self._thread.start()

    def _run(self, reader: Any) -> None:
        try:
            while not self._stop.is_set():
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    self._put(_END)
                    return
                self._put(batch)
        except BaseException as exc:  # handed to the reader of the queue, raised there
            self._put(exc)
        finally:
            with contextlib.suppress(Exception):
                reader.close()

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read_next_batch(self) -> Any:
        """The next batch; StopIteration at the end; the stream's own error if it failed."""
        if self._ended:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._ended = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item

    def close(self) -> None:
        """Stop reading, and wait for the read in progress (at most ``_CLOSE_WAIT`` seconds).

        The thread closes the stream when it stops. Left running, it could still be inside
        the source when the interpreter exits, where a source written in Python (a generator
        behind a RecordBatchReader) is called back from Arrow after the interpreter's end, and
        the process aborts (``PyGILState_Release``). Seen once in ~10 runs of a script that
        stops on a bad row.
        """
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=_CLOSE_WAIT)


class _Stream:
    """Reads an Arrow stream chunk by chunk; each call to ``next_chunk`` is one blocking step."""

    def __init__(
        self,
        source: object,
        intake: Intake,
        first: Intake,
        size: int,
        start: int,
        *,
        prefetch: bool = True,
    ) -> None:
        _require()  # a missing extra is named at once; the import itself runs in the worker
        self._pa: Any = None
        self._pc: Any = None  # pyarrow.compute, imported with the first step (_Pooled)
        self._pool: Any = None
        self._prefetch = prefetch
        self._source: object = source
        self._encoders = (
            EntryEncoder(first.generation, first.operation),
            EntryEncoder(intake.generation, intake.operation),
        )
        self._size = size
        self._position = start
        self._index = 0
        self._steps = 0  # steps taken: the first ones are smaller (_take)
        self._reader: Any = None
        self._plan: _Plan | None = None
        self._left: Any = None  # the part of the last batch read not yet in a chunk
        self._ahead: Any = None  # the source's next batch, read ahead (see _read), or its error
        self._read_ahead = False
        self._done = False
        self._sql: dict[tuple[object, ...], str] = {}

    def close(self) -> None:
        """Release the stream; safe to call more than once."""
        self._done = True
        self._left = None
        self._ahead = None
        self._source = None
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    def _open(self) -> None:
        # pyarrow.compute is imported with the first step, after the first batch is read: its
        # ~30 ms of import would otherwise compete with that read.
        pa = self._pa = _import("pyarrow")
        self._pool = _memory_pool(pa)
        source, self._source = self._source, None
        try:
            reader = pa.RecordBatchReader.from_stream(source)
        except (TypeError, ValueError, pa.ArrowException) as exc:
            raise ValidationError(
                f"a columnar source must stream record batches (a table), got "
                f"{type(source).__name__}: {exc}"
            ) from None
        self._reader = reader
        self._plan = _plan(pa, reader.schema, self._encoders)
        if self._prefetch:
            # From here on only the prefetch thread touches the stream.
            self._reader = _Prefetch(reader)

    def next_step(self) -> _Step:
        """Read and check the next few chunks; an empty step at the end of the stream.

        When a row breaks a rule, the chunks before the one holding it come back with the
        error, and the stream is closed: nothing from that chunk on is ever encoded.
        """
        if self._done:
            return _Step([], None, None)
        try:
            if self._reader is None:
                self._open()
            batch = self._take()
            if batch is None:
                self.close()
                return _Step([], None, None)
            step = self._step(batch)
        except BaseException:
            self.close()
            raise
        if step.error is not None:
            self.close()
        return step

    def _read(self) -> Any:
        """The stream's next batch, copied into this library's pool; StopIteration at the end.

        A batch is kept until its chunks are sent (~0.1 s); held that long in the source's
        memory, it was freed too late for the source's allocator to reuse its pages for the
        next batch, which were faulted in anew: ~0.3 s of system time per million rows read
        from Parquet, against ~0.05 s for the copy. The source's memory is now free at once,
        and from the second batch on the next one is read right then, while the pages just
        freed are still the allocator's (mimalloc gives them back to the system ~10 ms
        later): system time 0.14-0.19 s against 0.15-0.5 s per million rows, one batch more
        held. The first is not read ahead: the first request would wait for it.
        """
        ahead, self._ahead = self._ahead, None
        batch = self._reader.read_next_batch() if ahead is None else ahead
        if isinstance(batch, Exception):
            raise batch  # met while reading ahead: in its turn, after the batches before it
        if not batch.num_rows:
            return batch
        pa, pool = self._pa, self._pool
        columns = []
        for column in batch.columns:
            try:
                columns.append(pa.concat_arrays([column], memory_pool=pool))
            except pa.ArrowException:  # a column Arrow cannot copy: read in place, as before
                columns.append(column)
        schema = batch.schema
        del batch  # the source's memory, free before the next batch is read into it
        if self._read_ahead:
            try:
                self._ahead = self._reader.read_next_batch()
            except Exception as exc:  # StopIteration too
                self._ahead = exc
        self._read_ahead = True
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    def _take(self) -> Any:
        """The next rows, a whole number of chunks (fewer at the end), as one record batch.

        Whole chunks are sliced from one source batch without a copy; only a chunk that spans
        two source batches is copied together.
        """
        size = self._size
        left = self._left
        while left is None or not left.num_rows:
            try:
                left = self._read()
            except StopIteration:
                self._left = None
                return None
        if left.num_rows >= size:
            # Steps grow from one chunk (1, 2, 4... up to _STEP_ROWS): the first request goes
            # out while the rest is read, and the server gets the next ones while it parses
            # it. A first step of one chunk and then 5 left the lab's sink idle ~10 ms more.
            most = min(max(1, _STEP_ROWS // size), 1 << min(self._steps, 16))
            self._steps += 1
            take = min(left.num_rows // size, most) * size
            self._left = left.slice(take) if take < left.num_rows else None
            return left.slice(0, take)
        slices = [left]
        have = left.num_rows
        self._left = None
        while have < size:
            try:
                batch = self._read()
            except StopIteration:
                break
            take = min(size - have, batch.num_rows)
            if take:
                slices.append(batch.slice(0, take))
                have += take
            if take < batch.num_rows:
                self._left = batch.slice(take)
        if len(slices) == 1:
            return slices[0]
        table = self._pa.Table.from_batches(slices)
        return table.combine_chunks(memory_pool=self._pool).to_batches()[0]

    def _step(self, batch: Any) -> _Step:
        if self._pc is None:
            self._pc = _Pooled(self._pa, self._pool)
        pa, pc = self._pa, self._pc
        plan = self._plan
        assert plan is not None
        rows = batch.num_rows
        ids = _plain_text(pa, pc, batch.column(plan.id_index))
        if _speedups is not None:
            suspects = [_suspects(pa, pc, _STR, ids, required=True)]
        else:
            suspects = [
                _mask_rows(pc, pc.fill_null(pc.equal(pc.binary_length(ids), 0), True)),
                _not_utf8(pa, pc, _STR, ids),
            ]
        out_of_range: dict[int, frozenset[int]] = {}
        columns = [ids]
        kinds: list[tuple[str, str, str]] = []
        for attribute in plan.attributes:
            if attribute.kind == _NULL:
                continue
            column, found = self._attribute(attribute, batch.column(attribute.index))
            suspects.extend(found)
            if attribute.kind == _TS and _speedups is None:
                bad = _timestamp_out_of_range(pa, pc, column, attribute.unit)
                if bad is not None:
                    outside = _mask_rows(pc, bad)
                    out_of_range[attribute.index] = frozenset(outside.to_pylist())
                    suspects.append(outside)
                column = _timestamp_text(pa, pc, column, attribute.unit, bad)
            elif attribute.kind == _TS and found[0]:
                # The accelerator flags a timestamp only when it is outside years 1 to 9999.
                out_of_range[attribute.index] = frozenset(found[0])
            columns.append(column)
            kinds.append((attribute.kind, attribute.wire, attribute.unit))
        has_tags = False
        if plan.tags_index is not None and not pa.types.is_null(
            batch.schema.field(plan.tags_index).type
        ):
            tags = _plain_list(pa, pc, batch.column(plan.tags_index))
            suspects.append(_tag_rows(pa, pc, tags))
            if _speedups is None:  # the accelerator's tag pass flags any byte above 0x7F
                suspects.append(_not_utf8(pa, pc, _ARRAY, tags))
            columns.append(tags)
            has_tags = True
        error: ValidationError | None = None
        flagged: set[int] = set()
        for found_rows in suspects:
            if found_rows is not None and len(found_rows):
                flagged.update(
                    found_rows if isinstance(found_rows, list) else found_rows.to_pylist()
                )
        if flagged:
            error = self._check_rows(batch, sorted(flagged), out_of_range)
        size = self._size
        # Only whole chunks before the one holding the bad row are encoded and sent.
        good = rows
        if error is not None:
            assert error.position is not None
            good = (error.position - self._position) // size * size
        places: list[tuple[int, int, int, ArrowIds]] = []
        job: _Job | None = None
        if good:
            table = pa.Table.from_arrays(
                [c.slice(0, good) for c in columns], names=[f"c{i}" for i in range(len(columns))]
            )
            dense = not any(column.null_count for column in columns[1:])
            shape = (tuple(kinds), has_tags, bool(plan.attributes), dense)
            first_sql = None
            if self._index == 0 and self._encoders[0].operation != self._encoders[1].operation:
                # A chunked replace: its first chunk carries no action.
                first_sql = self._query(self._encoders[0], *shape)
            bounds = [(b, min(b + size, good)) for b in range(0, good, size)]
            actions = (
                _action(self._encoders[0] if first_sql is not None else self._encoders[1]),
                _action(self._encoders[1]),
            )
            job = _Job(
                table,
                self._query(self._encoders[1], *shape),
                first_sql,
                bounds,
                tuple(kinds),
                has_tags,
                bool(plan.attributes),
                actions,
            )
            for begin, end in bounds:
                places.append(
                    (self._index, self._position, end - begin, ids.slice(begin, end - begin))
                )
                self._index += 1
                self._position += end - begin
        return _Step(places, job, error)

    def _attribute(self, attribute: _Attribute, column: Any) -> tuple[Any, list[Any]]:
        """The column ready to be written and the rows that may break a rule.

        Rows come as Arrow index arrays, or as lists from the accelerator's pass, which checks
        the common kinds in one pass each instead of several Arrow kernels.
        """
        pa, pc = self._pa, self._pc
        kind = attribute.kind
        if _speedups is not None and kind in _C_CHECKED:
            if kind == _STR:
                column = _plain_text(pa, pc, column)
            elif kind == _ARRAY:
                column = _plain_list(pa, pc, column)
            elif kind == _FLOAT and not pa.types.is_float64(column.type):
                column = pc.cast(column, pa.float64())
            return column, [_suspects(pa, pc, kind, column, unit=attribute.unit)]
        found: list[Any] = []
        if kind in (_STR, _DATE_TEXT, _URL_TEXT):
            column = _plain_text(pa, pc, column)
            lengths = pc.binary_length(column)
            found.append(_not_utf8(pa, pc, _STR, column))
        if kind == _STR:
            long = pc.greater(lengths, MAX_STRING_LENGTH)
            if _any(pc, long):
                found.append(_mask_rows(pc, pc.greater(pc.utf8_length(column), MAX_STRING_LENGTH)))
        elif kind == _DATE_TEXT:
            form = pc.match_substring_regex(column, _DATE_FORM)
            # strptime rolls 02-30 over to 03-02: a real day prints back as itself.
            day_text = pc.utf8_slice_codeunits(column, 0, 10)
            day = pc.strptime(day_text, format="%Y-%m-%d", unit="s", error_is_null=True)
            real_day = pc.equal(pc.strftime(day, format="%Y-%m-%d"), day_text)
            fine = pc.and_kleene(
                pc.and_kleene(form, real_day),
                pc.invert(pc.starts_with(column, "0000")),
            )
            found.append(_mask_rows(pc, pc.and_(pc.is_valid(column), pc.invert(fine))))
        elif kind == _URL_TEXT:
            fine = pc.and_(
                pc.less_equal(lengths, MAX_URL_LENGTH), pc.match_substring_regex(column, _URL_FORM)
            )
            found.append(_mask_rows(pc, pc.and_(pc.is_valid(column), pc.invert(fine))))
        elif kind == _UINT64:
            found.append(_mask_rows(pc, pc.greater(column, _scalar(pa, _INT_MAX, pa.uint64()))))
        elif kind == _FLOAT:
            if not pa.types.is_float64(column.type):
                column = pc.cast(column, pa.float64())
            found.append(_mask_rows(pc, pc.invert(pc.is_finite(column))))
        elif kind == _ARRAY:
            column = _plain_list(pa, pc, column)
            found.append(_mask_rows(pc, pc.greater(pc.list_value_length(column), MAX_ARRAY_ITEMS)))
            found.append(_not_utf8(pa, pc, _ARRAY, column))
            items = pc.list_flatten(column)
            bad = pc.fill_null(pc.greater(pc.binary_length(items), MAX_STRING_LENGTH), True)
            if _any(pc, bad):
                found.append(pc.unique(pc.filter(pc.list_parent_indices(column), bad)))
        return column, found

    def _check_rows(
        self, batch: Any, rows: list[int], out_of_range: dict[int, frozenset[int]]
    ) -> ValidationError | None:
        """Give each flagged row, in order, to EntryEncoder; return the first broken rule."""
        plan = self._plan
        assert plan is not None
        for row in rows:
            position = self._position + row
            first_chunk = self._index + row // self._size == 0
            encoder = self._encoders[0] if first_chunk else self._encoders[1]
            try:
                rid = batch.column(plan.id_index)[row].as_py()
            except UnicodeDecodeError:
                return ValidationError(
                    "the ID is not UTF-8 text",
                    position=position,
                    record_id=_raw_text(self._pa, self._pc, batch.column(plan.id_index), row),
                )
            record: dict[str, Any] = {"id": rid}
            attributes: dict[str, Any] = {}
            try:
                # The ID is judged first, as the record path does.
                encoder.encode(record, position)
                for attribute in plan.attributes:
                    if attribute.kind == _TS:
                        if row in out_of_range.get(attribute.index, ()):
                            raise ValidationError(
                                f"attribute {attribute.name!r} is a timestamp outside years 1 "
                                "to 9999, which a date attribute cannot hold",
                                position=position,
                                record_id=rid,
                            )
                        # Any other timestamp is valid (and Python cannot hold nanoseconds).
                        continue
                    if attribute.kind == _NULL:
                        continue
                    what = f"attribute {attribute.name!r}"
                    value = _decoded(batch.column(attribute.index), row, what, position, rid)
                    if value is not None:
                        attributes[attribute.name] = value
                if plan.attributes:
                    record["attributes"] = attributes
                if plan.tags_index is not None:
                    tags = batch.column(plan.tags_index)
                    record["tags"] = _decoded(tags, row, "a tag", position, rid)
                encoder.encode(record, position)
            except ValidationError as exc:
                return exc
        return None

    def _query(
        self,
        encoder: EntryEncoder,
        kinds: tuple[tuple[str, str, str], ...],
        tags: bool,
        attributes: bool,
        dense: bool,
    ) -> str:
        """The SQL that writes one JSON entry per row, followed by a comma; cached per shape.

        ``dense``: no null cell in the step, so each row is one ``to_json`` of a struct (one
        serialisation per row); otherwise strings are joined and a null cell drops its key.
        """
        action = _action(encoder)
        shape = (action, kinds, tags, attributes, dense)
        sql = self._sql.get(shape)
        if sql is not None:
            return sql
        if dense:
            fields = ([f"'action': {_literal(action)}"] if action is not None else []) + [
                "'id': c0"
            ]
            if attributes:
                values = ", ".join(
                    f"{_literal(wire)}: c{number}"
                    for number, (_, wire, _) in enumerate(kinds, start=1)
                )
                # An empty struct is not valid SQL: no attribute column left means {}.
                fields.append(
                    f"'attributes': {{{values}}}" if values else "'attributes': '{}'::JSON"
                )
            if tags:
                fields.append(f"'tags': c{len(kinds) + 1}")
            entry = f"to_json({{{', '.join(fields)}}}) || ','"
        else:
            head = '{"id":' if action is None else f'{{"action":"{action}","id":'
            parts = [_literal(head), "to_json(c0)"]
            if attributes:
                pieces = []
                for number, (kind, wire, _) in enumerate(kinds, start=1):
                    # '"key":' || NULL is NULL, and concat_ws skips NULLs: a null cell drops
                    # its key.
                    key = _literal(f'"{wire}":')
                    pieces.append(f"{key} || {_value_sql(f'c{number}', kind)}")
                inner = f"concat_ws(',', {', '.join(pieces)})" if pieces else "''"
                parts += [_literal(',"attributes":{'), inner, _literal("}")]
            if tags:
                key = _literal(',"tags":')
                parts.append(f"{key} || to_json(c{len(kinds) + 1})")
            parts.append(_literal("},"))
            entry = f"concat({', '.join(parts)})"
        sql = f"SELECT {entry} AS entry, hash(c0) AS h FROM chunk"
        if len(self._sql) >= _SQL_CACHE_MAX:
            self._sql.clear()
        self._sql[shape] = sql
        return sql


def _memory_pool(pa: Any) -> Any:
    """The pool a columnar upload allocates from: jemalloc's where pyarrow has it, else malloc.

    jemalloc keeps freed pages for reuse and returns them ~1 s later (pyarrow's settings);
    glibc's malloc maps a batch-sized block anew for each batch and the kernel zeroes it:
    per million rows from Parquet, 0.15-0.18 s of system time against 0.28-0.34 s, and a lab
    ratio of 0.80 against 0.76 (8 rounds). Neither is made the process's default.
    """
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without it (Windows)
        return pa.system_memory_pool()


def _action(encoder: EntryEncoder) -> str | None:
    """The ``action`` of each entry: none in a replace, whose request says what it does."""
    return encoder.operation if encoder.operation != "replace" else None


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _value_sql(column: str, kind: str) -> str:
    if kind in (_INT, _UINT64):
        return f"{column}::VARCHAR"
    # Timestamps arrive as their text already (see _timestamp_text).
    return f"to_json({column})"


def _decoded(column: Any, row: int, what: str, position: int, rid: str) -> Any:
    """A cell's Python value; ValidationError if its text is not UTF-8."""
    try:
        return column[row].as_py()
    except UnicodeDecodeError:
        raise ValidationError(
            f"{what} is not UTF-8 text", position=position, record_id=rid
        ) from None


def _raw_text(pa: Any, pc: Any, column: Any, row: int) -> str:
    """A text cell that is not UTF-8, shown with its bad bytes escaped."""
    text = _plain_text(pa, pc, column).slice(row, 1)
    binary = pa.large_binary() if pa.types.is_large_string(text.type) else pa.binary()
    raw: bytes = text.view(binary)[0].as_py()
    return raw.decode("utf-8", "backslashreplace")


def _not_utf8(pa: Any, pc: Any, kind: str, column: Any) -> Any:
    """The first row of a text or list column whose text is not UTF-8 (an index array), or None.

    Arrow does not check that string data is UTF-8 when a table is built from buffers; such
    bytes would reach the request as they are.
    """
    row = -1
    if _speedups is not None:
        row = _speedups.first_not_utf8(_c_column(pa, pc, kind, column), len(column))
    else:
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            for at in range(len(column)):
                try:
                    column[at].as_py()
                except UnicodeDecodeError:
                    row = at
                    break
    return _rows(pa, [row]) if row >= 0 else None


def _rows(pa: Any, rows: list[int]) -> Any:
    """Row numbers as an Arrow index array (built from a buffer: see _scalar)."""
    return pa.Array.from_buffers(
        pa.int64(), len(rows), [None, pa.py_buffer(struct.pack(f"<{len(rows)}q", *rows))]
    )


def _one_array(column: Any, pool: Any) -> Any:
    """A table's column as one array: its only chunk as it is, or its chunks joined."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks(memory_pool=pool)


def _repeat_in(np: Any, runs: list[Any]) -> bool:
    """Whether sorted runs of hashes hold a value twice, within a run or between two."""
    # One stable sort of already sorted runs is a merge: cheap. Equal neighbours = a repeat.
    merged = np.concatenate(runs)
    merged.sort(kind="stable")
    return bool((merged[1:] == merged[:-1]).any())


def _hash_values(np: Any, hashes: Any) -> Any:
    """An Arrow uint64 array's values as numpy's, without a copy."""
    # From the buffer: Array.to_numpy goes through pyarrow's pandas shim (see _scalar).
    raw = np.frombuffer(hashes.buffers()[1], dtype=np.uint64)
    return raw[hashes.offset : hashes.offset + len(hashes)]


# The C accelerator's column kinds (_speedups.c).
_C_STR, _C_FLOAT, _C_INT, _C_UINT, _C_LIST, _C_TS, _C_DOUBLE = 0, 2, 3, 4, 5, 6, 7
_EMPTY: Final = b""


def _c_column(pa: Any, pc: Any, kind: str, array: Any, *, fixed: bool = True) -> tuple[object, ...]:
    """An attribute column as the accelerator reads it: its kind, offset and buffers.

    A float64 column comes as its doubles; with ``fixed`` (for the writer), as Arrow's text of
    its values instead when one of them needs more than 8 decimals.
    """
    types = pa.types
    if kind in (_INT, _UINT64) and not (types.is_int64(array.type) or types.is_uint64(array.type)):
        array = pc.cast(array, pa.int64())
    elif kind == _FLOAT:
        values = array.buffers()[1]
        validity = array.buffers()[0] if array.null_count else None
        doubles = (_C_DOUBLE, array.offset, False, validity, None, values)
        if not fixed or _speedups.fixed_doubles(doubles, len(array)):
            return doubles  # few decimals (the common case): written by the accelerator
        # Arrow writes the shortest text that reads back as the same double; the accelerator
        # adds ".0" to a whole number, so that it stays a float on the wire.
        array = pc.cast(array, pa.string())
    validity = array.buffers()[0] if array.null_count else None
    if kind in (_INT, _UINT64):
        code = _C_UINT if types.is_uint64(array.type) else _C_INT
        return (code, array.offset, False, validity, None, array.buffers()[1])
    if kind == _TS:
        per_second = _PER_SECOND[array.type.unit]
        return (_C_TS, array.offset, False, validity, None, array.buffers()[1], per_second)
    if kind == _ARRAY:
        items = array.values
        item_validity = items.buffers()[0] if items.null_count else None
        _, item_offsets, item_data = items.buffers()
        return (
            _C_LIST,
            array.offset,
            types.is_large_list(array.type),
            validity,
            array.buffers()[1],
            None,
            items.offset,
            types.is_large_string(items.type),
            item_validity,
            item_offsets,
            item_data or _EMPTY,
        )
    code = _C_FLOAT if kind == _FLOAT else _C_STR
    _, offsets, data = array.buffers()
    wide = types.is_large_string(array.type)
    return (code, array.offset, wide, validity, offsets, data or _EMPTY)


# The kinds the accelerator's suspect_rows checks (text with a date or URL form still goes
# through Arrow's kernels: regular expressions; a 64-bit integer needs no check at all).
_C_CHECKED: Final = frozenset({_STR, _UINT64, _FLOAT, _TS, _ARRAY})


def _suspects(
    pa: Any, pc: Any, kind: str, column: Any, *, required: bool = False, unit: str = "s"
) -> list[int]:
    """The rows of a column that may break a rule, from the accelerator's one pass.

    A row flagged here only goes to the record rules (``_check_rows``), which judge it.
    """
    low, high = -(2**63), 2**63 - 1
    if kind == _TS and unit != "ns":  # 64-bit nanoseconds reach only years 1677 to 2262
        low, high = _TS_MIN_S * _PER_SECOND[unit], _TS_MAX_S * _PER_SECOND[unit]
    max_chars = MAX_STRING_LENGTH if kind in (_STR, _ARRAY) and not required else -1
    max_items = MAX_ARRAY_ITEMS if kind == _ARRAY else -1
    spec = _c_column(pa, pc, kind, column, fixed=False)
    rows: list[int] = _speedups.suspect_rows(
        spec, len(column), required, max_chars, max_items, low, high
    )
    return rows


def _any(pc: Any, mask: Any) -> bool:
    return bool(pc.any(mask).as_py())


def _mask_rows(pc: Any, mask: Any) -> Any:
    """The row numbers where ``mask`` is true (null counts as false)."""
    return pc.indices_nonzero(pc.fill_null(mask, False))


def _plain_text(pa: Any, pc: Any, column: Any) -> Any:
    """A string column as string or large_string (dictionaries and views decoded)."""
    type_ = column.type
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return column
    return pc.cast(column, pa.large_string())


def _plain_list(pa: Any, pc: Any, column: Any) -> Any:
    """A list-of-strings column as list<string> or large_list<...> with plain string items."""
    type_ = column.type
    if pa.types.is_null(type_):
        return column
    if (pa.types.is_list(type_) or pa.types.is_large_list(type_)) and (
        pa.types.is_string(type_.value_type) or pa.types.is_large_string(type_.value_type)
    ):
        return column
    return pc.cast(column, pa.large_list(pa.large_string()))


def _tag_rows(pa: Any, pc: Any, tags: Any) -> Any:
    """Rows whose tags may break the tag rule: empty, long, null, non-ASCII or uppercase."""
    if _speedups is not None:  # one pass over the tags' bytes, not seven Arrow kernels
        found = _speedups.suspect_tag_rows(
            _c_column(pa, pc, _ARRAY, tags), len(tags), MAX_TAG_LENGTH
        )
        return _rows(pa, found) if found else None
    items = pc.list_flatten(tags)
    lengths = pc.binary_length(items)
    bad = pc.or_(
        pc.or_(pc.equal(lengths, 0), pc.greater(lengths, MAX_TAG_LENGTH)),
        # Non-ASCII tags go to EntryEncoder: str.lower() is the rule, not Arrow's case tables.
        pc.or_(pc.invert(pc.string_is_ascii(items)), pc.not_equal(pc.ascii_lower(items), items)),
    )
    bad = pc.fill_null(bad, True)
    if not _any(pc, bad):
        return None
    return pc.unique(pc.filter(pc.list_parent_indices(tags), bad))


def _timestamp_out_of_range(pa: Any, pc: Any, column: Any, unit: str) -> Any:
    """A mask of the timestamps outside years 1 to 9999; None when there are none."""
    if unit == "ns":
        return None  # 64-bit nanoseconds reach only years 1677 to 2262
    per = _PER_SECOND[unit]
    low, high = _TS_MIN_S * per, _TS_MAX_S * per
    raw = pc.cast(column, pa.int64())
    extremes = pc.min_max(raw).as_py()
    if extremes["min"] is None or (extremes["min"] >= low and extremes["max"] < high):
        return None
    return pc.or_(pc.less(raw, low), pc.greater_equal(raw, high))


def _timestamp_text(pa: Any, pc: Any, column: Any, unit: str, out_of_range: Any) -> Any:
    """The library's UTC text of each timestamp: seconds, then fractions only when non-zero.

    As ``_validate._utc_text`` writes a datetime: ``2024-01-02T10:00:00Z``, or six digits of
    microseconds when there are some (nine for nanoseconds below a microsecond). Arrow's cast
    to string is ~4x cheaper than strftime in DuckDB or Arrow.
    """
    if out_of_range is not None:
        # Those rows raise before they are encoded: do not ask Arrow to print them.
        column = pc.if_else(out_of_range, pa.nulls(1, column.type)[0], column)
    utc = pc.cast(column, pa.timestamp(unit))  # the same instants, without the zone's name
    text = pc.cast(pc.cast(utc, pa.timestamp("s"), safe=False), pa.string())
    if unit != "s":
        raw = pc.cast(utc, pa.int64())
        per = _PER_SECOND[unit]
        whole = pc.equal(pc.multiply(pc.divide(raw, per), per), raw)
        if not bool(pc.all(whole).as_py()):
            fine_unit = "ns" if unit == "ns" else "us"
            fine = pc.cast(pc.cast(utc, pa.timestamp(fine_unit)), pa.string())
            if unit == "ns":
                micros = pc.equal(pc.multiply(pc.divide(raw, 1_000), 1_000), raw)
                fine = pc.if_else(
                    micros,
                    pc.cast(pc.cast(utc, pa.timestamp("us"), safe=False), pa.string()),
                    fine,
                )
            text = pc.if_else(whole, text, fine)
    return _iso_utc(pa, pc, text)


_ARROW_SECONDS: Final = 19  # len("2024-01-02 10:00:00"): Arrow's text of years 1000 to 9999


def _iso_utc(pa: Any, pc: Any, text: Any) -> Any:
    """Arrow's ``2024-01-02 10:00:00`` texts as ``2024-01-02T10:00:00Z``.

    When every text is exactly 19 bytes (whole seconds, years 1000 to 9999, no null: the
    common case) the new bytes are written in one numpy pass over a fixed-width view; two
    Arrow passes (replace, then join) cost ~3x as much.
    """
    width = _ARROW_SECONDS
    _, offsets, data = text.buffers()
    rows = len(text)
    if rows and not text.null_count and not text.offset and pa.types.is_string(text.type):
        np = _import("numpy")
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


class _Text:
    """A string column's buffers, to cut the JSON of consecutive rows out in one copy."""

    __slots__ = ("_data", "_keep", "_offsets")

    def __init__(self, array: Any, offsets: memoryview, data: memoryview) -> None:
        self._keep = array  # the buffers live as long as the array
        self._offsets = offsets
        self._data = data

    @classmethod
    def of(cls, pa: Any, column: Any) -> _Text:
        array = _one_array(column, None)
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


def _load_speedups() -> Any:
    """The C accelerator, unless it was not built or BATCH_AUDIENCE_NO_EXTENSIONS is set."""
    if os.environ.get("BATCH_AUDIENCE_NO_EXTENSIONS"):
        return None
    try:
        return importlib.import_module("batch_audience._speedups")
    except ImportError:
        return None


_speedups: Any = _load_speedups()


def iter_columnar(
    source: object, intake: Intake, *, size: int, start: int = 0, first: Intake | None = None
) -> Iterator[Chunk]:
    """The chunks of a columnar source, in the calling thread (for tests and scripts).

    Raises:
        ModuleNotFoundError: pyarrow or duckdb is missing (the message names the install command).
        ValidationError: for the schema before the first chunk; for the first bad row, with
            its position and ID, instead of the chunk holding it.
    """
    stream = _Stream(source, intake, first or intake, size, start)
    encoder = _Encoder(stream)
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
    source: object, intake: Intake, *, size: int, start: int = 0, first: Intake | None = None
) -> AsyncIterator[Chunk]:
    """The chunks of a columnar source, prepared in a worker thread while earlier ones are sent.

    Raises:
        ModuleNotFoundError: at once, if pyarrow, duckdb or numpy is missing.
        ValidationError: as ``iter_columnar``.
    """
    # No prefetching thread: the worker's steps are queued ahead already, and batches queued
    # for another thread cost ~30 MB of peak RSS at no measured gain in speed (1M rows from
    # Parquet, lab sink).
    stream = _Stream(source, intake, first or intake, size, start, prefetch=False)
    return _pump(stream, _Encoder(stream))


async def _pump(stream: _Stream, encoder: _Encoder) -> AsyncIterator[Chunk]:
    # One worker thread per upload reads, checks and encodes each step, in order, as soon as a
    # slot ahead is free, not when the loop asks for it: the loop only takes finished chunks
    # and never waits on an encode while requests could be in flight. One thread, not a
    # reader and an encoder: on two cores shared with the server they only competed (lab, 1M
    # rows: 0.67 against 0.63 median ratio, 375 against 390 MB peak RSS, 8 rounds).
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-audience-columnar")
    # DuckDB's import and first query (~0.1 s) run in a thread of their own meanwhile, beside
    # the first batch's decoding.
    warmer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-audience-warm")
    warmed = warmer.submit(encoder.warm)
    warmer.shutdown(wait=False)

    def prepare() -> tuple[_Step, list[Chunk]]:
        step = stream.next_step()
        warmed.result()  # a missing DuckDB is raised here
        return step, encoder.chunks(step)

    def finish() -> None:
        stream.close()
        with contextlib.suppress(BaseException):
            warmed.result()  # the connection exists before it is closed
        encoder.close()

    steps = collections.deque(worker.submit(prepare) for _ in range(_AHEAD))
    try:
        while True:
            step, chunks = await asyncio.wrap_future(steps[0])
            steps.popleft()
            if step.error is None and step.places:
                steps.append(worker.submit(prepare))
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


# -- Parquet files, for the command line -------------------------------------------------------

PARQUET_BATCH_ROWS: Final = 65_536  # rows per batch read from a Parquet file


class ParquetRecords(RecordReader):
    """The rows of a Parquet file as a columnar source (``upload FILE.parquet``).

    Uploads read it through ``__arrow_c_stream__``, batch by batch, after the first ``skip``
    rows (a resumed upload). With ``ids_only`` (``--mode remove``) only the ``id`` column is
    read, so the file that filled an audience also empties it. ``line`` stays 0: a Parquet
    file has rows, not lines, and errors name the row (``users.parquet:25001: record 25001``).
    Iterating it gives the rows as record mappings, for callers that want records.
    """

    def __init__(self, path: str, *, skip: int = 0, ids_only: bool = False) -> None:
        if path == STDIN:
            # Parquet keeps its schema and row groups' places at the end of the file.
            raise ValidationError("Parquet cannot be read from stdin: give the file's path")
        pa, parquet = _import("pyarrow"), _import("pyarrow.parquet")
        super().__init__((), name=path, skip=skip, ids_only=ids_only)
        try:
            self._file: Any = parquet.ParquetFile(path)
        except pa.ArrowException as exc:
            raise SourceError(f"cannot read it as Parquet: {exc}", source=path, line=0) from None
        self._closer = self._file.close
        self.rows: int = self._file.metadata.num_rows

    def _batches(self) -> Iterator[Any]:
        if self._started:
            raise RuntimeError(f"{self.name}: a Parquet source can be read only once")
        self._started = True
        columns = ["id"] if self.ids_only and "id" in self._file.schema_arrow.names else None
        left = self.skip
        for batch in self._file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            if left >= batch.num_rows:
                left -= batch.num_rows
                continue
            yield batch.slice(left) if left else batch
            left = 0

    def _schema(self) -> Any:
        schema = self._file.schema_arrow
        if self.ids_only and "id" in schema.names:
            return self._pa().schema([schema.field("id")])
        return schema

    @staticmethod
    def _pa() -> Any:
        return _import("pyarrow")

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        """The rows after ``skip`` as an Arrow C stream (read lazily, batch by batch)."""
        reader = self._pa().RecordBatchReader.from_batches(self._schema(), self._batches())
        return reader.__arrow_c_stream__(requested_schema)

    def skip_now(self, stop: threading.Event | None = None) -> None:
        """Nothing to do now: the stream passes the skipped rows by whole batches as it reads."""

    def __iter__(self) -> Iterator[object]:
        names = [n for n in self._schema().names if n not in ("id", "tags")]
        self.count = self.skip
        for batch in self._batches():
            for row in batch.to_pylist():
                record: dict[str, Any] = {"id": row["id"]}
                if names:
                    record["attributes"] = {n: row[n] for n in names if row[n] is not None}
                if "tags" in row:
                    record["tags"] = row["tags"]
                self.count += 1
                yield record


def check_parquet(
    path: str,
    encoder: EntryEncoder,
    *,
    skip: int = 0,
    ids_only: bool = False,
    tick: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Check a Parquet file as its upload will read it; return its row count (``skip`` included).

    The very chunks the upload sends are built and dropped, so a file that passes is one the
    upload sends whole.

    Raises:
        SourceError: the schema, or the first bad row (named by its row number).
        OSError: the file cannot be opened.
        Interrupted: ``stop`` was set.
    """
    operation = encoder.operation
    intake = Intake(encoder.generation, "add" if operation == "replace" else operation)
    first = Intake(encoder.generation, "replace") if operation == "replace" else None
    with ParquetRecords(path, skip=skip, ids_only=ids_only) as records:
        position = skip
        try:
            for chunk in iter_columnar(records, intake, size=MAX_ENTRIES, start=skip, first=first):
                position = chunk.end
                if stop is not None and stop.is_set():
                    raise Interrupted
                if tick is not None:
                    tick(position)
        except ValidationError as exc:
            if isinstance(exc, SourceError):
                raise
            line = 0 if exc.position is None else exc.position + 1
            raise SourceError.wrap(exc, source=path, line=line) from None
        return position
