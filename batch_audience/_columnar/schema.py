"""The schema of a columnar source, judged once: where the ID and tags are, how each attribute goes.

Column ``id`` is the ID, ``tags`` (list of strings) the tags, every other column an attribute
whose value kind comes from the column's Arrow type (and its key's form: ``date(...)``,
``url(...)``). A bad name, an unsupported type, a missing ``id`` or too many attribute columns
raise ValidationError here, before any batch is read. Every type accepted here is one the later
steps take: ``checks.plain_text`` / ``checks.plain_list`` bring each to a plain layout first.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import attrs

from .._exceptions import ValidationError
from .._validate import _DATE, _PLAIN, _URL, MAX_ATTRIBUTES, EntryEncoder, _learn_key, _show

__all__ = ["Attribute", "Plan", "plan_columns"]

# Value kinds of a column.
STR: Final = "string"
INT: Final = "integer"
UINT64: Final = "uint64"
FLOAT: Final = "float"
TS: Final = "timestamp"
DATE_TEXT: Final = "date text"
URL_TEXT: Final = "url text"
ARRAY: Final = "array"
NULL: Final = "null"  # a column of the null type: every cell is left out

_TYPES_TEXT: Final = "string, integer, float, timestamp with a time zone, or list of strings"
_PANDAS_INDEX: Final = re.compile(r"__index_level_[0-9]+__")


@attrs.frozen
class Attribute:
    """One attribute column: where it is, its wire key and how its values are checked and sent."""

    index: int  # position in the source schema
    name: str  # column name, also the key of the record given to EntryEncoder
    wire: str  # wire key
    kind: str
    unit: str = ""  # timestamp unit


@attrs.frozen
class Plan:
    """What the schema says, and the rules' authority for each chunk.

    ``encoders``: the EntryEncoder of a stream's first chunk and of every other one (they differ
    in a chunked replace, whose first chunk goes to the replace route without actions).
    """

    id_index: int
    tags_index: int | None  # None: no tags column, or one of the null type (no tags sent)
    attributes: tuple[Attribute, ...]  # the columns sent, in schema order (null-typed left out)
    encoders: tuple[EntryEncoder, EntryEncoder]
    has_attributes: bool  # entries carry "attributes" (an empty object if every column is null)
    names: tuple[str, ...]  # every column name of the source, by index

    @property
    def read(self) -> tuple[int, ...]:
        """The source columns the stream reads: the ID, each attribute sent, the tags."""
        tags = () if self.tags_index is None else (self.tags_index,)
        return (self.id_index, *(a.index for a in self.attributes), *tags)


def kind_of(pa: Any, type_: Any) -> str | None:
    """The value kind of an Arrow type, before the column name is considered; None if refused."""
    t = pa.types
    if t.is_dictionary(type_):
        return STR if is_text(pa, type_.value_type) else None
    if is_text(pa, type_):
        return STR
    if t.is_uint64(type_):
        return UINT64
    if t.is_integer(type_):
        return INT
    if t.is_floating(type_):
        return FLOAT
    if t.is_timestamp(type_):
        return TS if type_.tz is not None else None
    if is_list(pa, type_):
        value = type_.value_type
        if t.is_dictionary(value):
            value = value.value_type
        # list<null>: only empty lists and null items, which the rules then judge per row.
        return ARRAY if is_text(pa, value) or t.is_null(value) else None
    if t.is_null(type_):
        return NULL
    return None


def is_text(pa: Any, type_: Any) -> bool:
    """Whether ``type_`` is one of Arrow's string types (plain, large or view)."""
    t = pa.types
    return bool(t.is_string(type_) or t.is_large_string(type_) or t.is_string_view(type_))


def is_list(pa: Any, type_: Any) -> bool:
    """Whether ``type_`` is one of Arrow's list types (plain, large, fixed-size or view)."""
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


def plan_columns(
    pa: Any, schema: Any, encoder: EntryEncoder, first: EntryEncoder | None = None
) -> Plan:
    """Judge the column names and types once; raise ValidationError for the first problem.

    ``encoder`` judges every row; ``first``, when given, a stream's first chunk (a chunked
    replace). Both must accept the columns (tags, attributes) the schema has.
    """
    encoders = (first or encoder, encoder)
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
    if kind_of(pa, id_type) != STR:
        raise ValidationError(
            f"column 'id' has type {id_type}: IDs must be strings; cast the column to string"
        )
    tags_index: int | None = None
    if "tags" in seen:
        tags_index = names.index("tags")
        for entry_encoder in encoders:
            if entry_encoder._tags_refusal is not None:
                raise ValidationError(f"column 'tags': {entry_encoder._tags_refusal}")
        tags_type = schema.field(tags_index).type
        kind = kind_of(pa, tags_type)
        if kind not in (ARRAY, NULL):
            raise ValidationError(
                f"column 'tags' has type {tags_type}: tags must be a list of strings"
            )
        if kind == NULL:
            tags_index = None  # every row without tags
    attributes: list[Attribute] = []
    wires: dict[str, str] = {}
    unnamed_index = _pandas_unnamed_index(schema)
    has_attributes = False
    for index, name in enumerate(names):
        if index == id_index or name == "tags" or name in unnamed_index:
            continue
        for entry_encoder in encoders:
            if entry_encoder._attributes_refusal is not None:
                raise ValidationError(
                    f"column {name!r}: {entry_encoder._attributes_refusal}; "
                    "give only the 'id' column"
                )
        has_attributes = True
        attribute = _attribute(pa, index, name, schema.field(index).type)
        if attribute.wire in wires:
            raise ValidationError(
                f"columns {wires[attribute.wire]!r} and {name!r} both become wire key "
                f"{attribute.wire!r}: give each attribute once"
            )
        wires[attribute.wire] = name
        if attribute.kind != NULL:
            attributes.append(attribute)
    if len(wires) > MAX_ATTRIBUTES:
        raise ValidationError(
            f"{len(wires)} attribute columns break the limit of {MAX_ATTRIBUTES} "
            "attributes per entry"
        )
    return Plan(id_index, tags_index, tuple(attributes), encoders, has_attributes, tuple(names))


def _attribute(pa: Any, index: int, name: str, type_: Any) -> Attribute:
    """An attribute column's wire key and kind; ValidationError for a name or type refused."""
    key_kind, key, date_key, _ = _learn_key(name)
    kind = kind_of(pa, type_)
    if kind is None:
        raise _refused_type(name, type_, pa)
    wire = key
    if key_kind == _PLAIN:
        if kind == TS:
            wire = date_key
    elif key_kind == _DATE:
        if kind == STR:
            kind = DATE_TEXT
        elif kind not in (TS, NULL):
            raise ValidationError(
                f"column {name!r} takes ISO-8601 date-time strings or a timestamp with a "
                f"time zone, got type {type_}"
            )
    else:
        assert key_kind == _URL
        if kind == STR:
            kind = URL_TEXT
        elif kind != NULL:
            raise ValidationError(
                f"column {name!r} takes absolute http or https URL strings, got type {type_}"
            )
    unit = type_.unit if kind == TS else ""
    return Attribute(index, name, wire, kind, unit)
