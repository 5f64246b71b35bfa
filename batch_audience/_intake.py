"""Intake: records in, validated wire bytes and IDs out, each attribute key set judged once.

Pure, and the hot path of every upload. ``Intake.take`` pulls a few records from an iterator
and returns the JSON of their wire entries (comma-separated, ready to go between the brackets
of a payload) and adds their IDs to a set. The rules are those of ``_validate.EntryEncoder``,
which stays the one authority: the fast path here accepts only records that EntryEncoder would
send unchanged, and hands every other record (odd types, values that need converting such as
``datetime`` and ``Url``, and every record that breaks a rule) to it. So the wire bytes and the
ValidationError (position, ID, rule) are the same whichever path a record takes.

Why it is fast: the records of one upload nearly always share one set of attribute keys. The
first record with a key set compiles a checker for it (one ``exec`` per key set, like attrs and
cattrs generate their methods): the keys are judged then, once, and the checker only looks at
the values, unrolled, with no loop and no per-key lookup of verdicts. Tags repeat too: a tag
seen valid is remembered. Entries are encoded a few at a time right after they are checked,
so the caller's objects cannot change between the check and the wire, and no entry dict lives
past the step that made it (the garbage collector's young generation frees them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Final

import attrs
import orjson

from ._exceptions import ValidationError
from ._models import Record, Url
from ._validate import (
    _DATE,
    _INT_MAX,
    _INT_MIN,
    _PLAIN,
    _PLAIN_URL,
    _URL,
    MAX_ATTRIBUTES,
    MAX_STRING_LENGTH,
    MAX_TAG_LENGTH,
    MAX_URL_LENGTH,
    EntryEncoder,
    Generation,
    Operation,
    _is_utf8,
    _learn_key,
    _utc_text,
)

__all__ = ["Intake"]

_Encoder = Callable[[Any], "dict[str, Any] | None"]
# Record shapes compiled per upload; an odd stream with ever-new key sets or tags clears them
# past these bounds, so memory stays flat.
_PLANS_MAX: Final = 256
_TAGS_MAX: Final = 4096

# The checks of one value, by key kind. ``v`` is the value; each snippet falls through when the
# value is one EntryEncoder sends exactly as given, and returns None otherwise (the record then
# goes to EntryEncoder, which converts it or names the broken rule).
# A plain value's checks, one branch per type; the branch of the type the first record of the
# shape had goes first (one key nearly always holds one type). ``v - v`` is 0.0 exactly for a
# finite float, NaN (truthy) for NaN and the infinities: cheaper than a call to isfinite.
_PLAIN_BRANCHES: Final = {
    str: f"""\
    if t is str:
        if len(v) > {MAX_STRING_LENGTH} or not (v.isascii() or is_utf8(v)):
            return None
""",
    int: f"""\
    if t is int:
        if not {_INT_MIN} <= v <= {_INT_MAX}:
            return None
""",
    float: """\
    if t is float:
        if v - v:
            return None
""",
}


def _plain_check(first: type) -> str:
    order = sorted(_PLAIN_BRANCHES, key=lambda kind: kind is not first)
    branches = [_PLAIN_BRANCHES[kind] for kind in order]
    # The first branch opens with "if", the others with "elif".
    code = "    t = type(v)\n" + branches[0] + "".join("    el" + b[4:] for b in branches[1:])
    # Another type (a datetime, a Url, a numpy number...) is another shape: find it.
    return code + "    else:\n        raise KeyError\n"


_DATE_CHECK: Final = """\
    if type(v) is not str or not (v.isascii() or is_utf8(v)):
        return None
    try:
        fromisoformat(v)
    except ValueError:
        return None
"""
_URL_CHECK: Final = f"""\
    if type(v) is not str or len(v) > {MAX_URL_LENGTH} or plain_url(v) is None:
        return None
"""
# Values converted on the way (EntryEncoder's rules): an aware datetime in UTC becomes the
# library's UTC text (other zones, and subclasses, go to EntryEncoder), a Url its plain str.
# Another type under the key is another shape.
_DATETIME_VALUE: Final = """\
    if type(v) is not datetime:
        raise KeyError
    if v.tzinfo is not UTC:
        return None
    v = utc_text({key!r}, v)
"""
_URL_VALUE: Final = f"""\
    if type(v) is not Url:
        raise KeyError
    if len(v) > {MAX_URL_LENGTH} or plain_url(v) is None:
        return None
    v = str.__str__(v)
"""


@attrs.frozen
class _Shape:
    """What a record's fast path depends on: where its parts are and which attribute keys."""

    mapping: bool  # a dict record (parts by key) or a Record (parts by attribute)
    attributes: tuple[str, ...] | None  # the attribute keys, None when there are none
    tags: bool
    # Each key's wire key: itself, or date(k)/url(k) for a datetime or Url value under a plain
    # key. A converted value (datetime, Url) is part of the shape; other types are not.
    wire: tuple[str, ...] | None = None
    converted: frozenset[str] = frozenset()
    # The type of each value in the record the shape was read from: not part of the shape.
    types: dict[str, type] = attrs.field(eq=False, hash=False, factory=dict)


def _shape(item: Any) -> _Shape | None:
    """The shape of a dict or Record, or None when only EntryEncoder can take it."""
    if type(item) is dict:
        if "id" not in item or not {"id", "attributes", "tags"}.issuperset(item):
            return None
        attributes, tags, mapping = item.get("attributes"), item.get("tags"), True
        # A None part is "none" to EntryEncoder but still a key here: leave it to EntryEncoder.
        if len(item) != 1 + (attributes is not None) + (tags is not None):
            return None
    else:
        attributes, tags, mapping = item.attributes, item.tags, False
    if attributes is not None:
        if type(attributes) is not dict or len(attributes) > MAX_ATTRIBUTES:
            return None
        if not all(type(key) is str for key in attributes):
            return None
        try:
            for key in attributes:
                _learn_key(key)
        except ValidationError:
            return None
    if tags is not None and type(tags) is not list:
        return None
    if attributes is None:
        return _Shape(mapping, None, tags is not None)
    types = {key: type(value) for key, value in attributes.items()}
    wire: list[str] = []
    converted: set[str] = set()
    for key, kind in types.items():
        info = _learn_key(key)
        if kind is datetime and info[0] != _URL:
            wire.append(info[2])
            converted.add(key)
        elif kind is Url and info[0] != _DATE:
            wire.append(info[3])
            converted.add(key)
        else:
            wire.append(key)
    if len(set(wire)) != len(wire):
        return None  # two keys become one wire key: EntryEncoder names them
    return _Shape(
        mapping, tuple(attributes), tags is not None, tuple(wire), frozenset(converted), types
    )


def _compile(
    shape: _Shape, action: str | None, good_tags: set[str], learn_tag: Callable[[Any], bool]
) -> _Encoder:
    """The fast path of records of one shape: their entry, or None to go to EntryEncoder.

    It raises KeyError (or AttributeError) when a record is not of this shape: the caller
    then finds the record's own shape. The attribute keys are judged here, once; the
    generated code looks only at the values, unrolled.
    """

    def get(part: str) -> str:
        return f"r[{part!r}]" if shape.mapping else f"r.{part}"

    parts = 1 + (shape.attributes is not None) + shape.tags
    lines = ["def encode(r):"]
    if shape.mapping:
        lines.append(f"    if len(r) != {parts}:\n        raise KeyError")
    lines.append(f"    rid = {get('id')}")
    lines.append("    if type(rid) is not str or not rid or not (rid.isascii() or is_utf8(rid)):")
    lines.append("        return None")
    head = "{'id': rid}" if action is None else f"{{'action': {action!r}, 'id': rid}}"
    entry = [head[:-1]]
    if shape.attributes is None:
        if not shape.mapping:
            lines.append("    if r.attributes is not None:\n        raise KeyError")
    else:
        keys = shape.attributes
        lines.append(f"    a = {get('attributes')}")
        lines.append(
            f"    if type(a) is not dict or len(a) != {len(keys)}:\n        raise KeyError"
        )
        values: list[str] = []
        for number, key in enumerate(keys):
            kind = _learn_key(key)[0]
            # repr() of a key that matched the key rule is a plain quoted literal: safe to exec.
            lines.append(f"    v = a[{key!r}]")
            if key in shape.converted:
                check = (
                    _DATETIME_VALUE.format(key=key) if shape.types[key] is datetime else _URL_VALUE
                )
            elif kind == _PLAIN:
                check = _plain_check(shape.types[key])
            elif kind == _DATE:
                check = _DATE_CHECK
            else:
                check = _URL_CHECK
            lines.append(check.rstrip("\n"))
            if shape.converted:
                lines.append(f"    v{number} = v")
                assert shape.wire is not None
                values.append(f"{shape.wire[number]!r}: v{number}")
        if shape.converted:
            # Converted values and renamed keys: the wire attributes are built, not copied.
            entry.append(f"'attributes': {{{', '.join(values)}}}")
        else:
            entry.append("'attributes': a.copy()")
    if not shape.tags:
        if not shape.mapping:
            lines.append("    if r.tags is not None:\n        raise KeyError")
    else:
        lines.append(f"    t = {get('tags')}")
        lines.append("    if type(t) is not list:\n        return None")
        lines.append("    for g in t:")
        lines.append("        if g not in good_tags and not learn_tag(g):")
        lines.append("            return None")
        entry.append("'tags': t.copy()")
    lines.append(f"    return {', '.join(entry)}}}")
    namespace: dict[str, Any] = {
        "is_utf8": _is_utf8,
        "fromisoformat": datetime.fromisoformat,
        "datetime": datetime,
        "UTC": UTC,
        "Url": Url,
        "utc_text": _utc_text,
        "plain_url": _PLAIN_URL.match,
        "good_tags": good_tags,
        "learn_tag": learn_tag,
    }
    exec("\n".join(lines), namespace)
    encode: _Encoder = namespace["encode"]
    return encode


def _unknown_shape(item: Any) -> dict[str, Any] | None:
    raise KeyError


class Intake:
    """Validates and encodes records for one generation and operation; see the module docstring."""

    __slots__ = (
        "_action",
        "_attributes_ok",
        "_dict",
        "_plans",
        "_record",
        "_slow",
        "_tags",
        "_tags_ok",
        "generation",
        "operation",
    )

    def __init__(self, generation: Generation, operation: Operation) -> None:
        self._slow = EntryEncoder(generation, operation)
        self.generation: Final = generation
        self.operation: Final = operation
        self._action: str | None = None if operation == "replace" else operation
        self._attributes_ok = generation != "1.0" and operation != "remove"
        self._tags_ok = generation == "1.1" and operation != "remove"
        # The fast path of the last shape seen, for dict records and for Records: the common
        # case is one call away.
        self._dict: _Encoder = _unknown_shape
        self._record: _Encoder = _unknown_shape
        self._plans: dict[_Shape, _Encoder] = {}
        self._tags: set[str] = set()

    def __repr__(self) -> str:
        return f"Intake({self.generation!r}, {self.operation!r})"

    def encode(self, item: object, position: int) -> tuple[str, bytes]:
        """One record's ID and wire entry as JSON; raise ValidationError on a broken rule."""
        kind = type(item)
        entry: dict[str, Any] | None = None
        if kind is dict or kind is Record:
            try:
                entry = (self._dict if kind is dict else self._record)(item)
            except KeyError:
                entry = self._reshape(item)
        elif kind is str and item and item.isascii():  # type: ignore[attr-defined]
            action = self._action
            entry = {"id": item} if action is None else {"action": action, "id": item}
        if entry is None:
            rid, entry = self._slow.encode(item, position)
        else:
            rid = entry["id"]
        try:
            return rid, orjson.dumps(entry)
        except TypeError:  # str-subclass keys: see take()
            return rid, orjson.dumps(entry, option=orjson.OPT_NON_STR_KEYS)

    def take(
        self, items: Iterator[Any], count: int, position: int, ids: set[str]
    ) -> tuple[int, bytes | memoryview]:
        """Pull at most ``count`` records; add their IDs to ``ids``; return how many and their JSON.

        The JSON is the entries separated by commas, without brackets (empty when none were
        pulled). ``position`` is the stream position of the first record pulled, for errors.
        islice stops after ``count`` records without touching the next one: no read-ahead.
        """
        entries: list[dict[str, Any]] = []
        append = entries.append
        add = ids.add
        action = self._action
        fast_dict = self._dict
        entry: dict[str, Any] | None
        for item in islice(items, count):
            kind = type(item)
            if kind is dict:
                try:
                    entry = fast_dict(item)
                except KeyError:
                    entry = self._reshape(item)
                    fast_dict = self._dict
            elif kind is str:
                if item and item.isascii():
                    add(item)
                    append({"id": item} if action is None else {"action": action, "id": item})
                    continue
                entry = None
            elif kind is Record:
                try:
                    entry = self._record(item)
                except KeyError:
                    entry = self._reshape(item)
            else:
                entry = None
            if entry is None:
                # Everything else, and every broken rule: the authoritative encoder decides.
                rid, entry = self._slow.encode(item, position + len(entries))
                add(rid)
            else:
                add(entry["id"])
            append(entry)
        if not entries:
            return 0, b""
        # One orjson call for the step: per-entry calls cost 3-4x more. Keep what is between
        # the brackets, without a copy.
        try:
            body = orjson.dumps(entries)
        except TypeError:
            # A key set matched by equality can hold str subclasses (StrEnum keys) that the
            # compiled plain keys equal: written as the plain str they stand for, as
            # EntryEncoder would.
            body = orjson.dumps(entries, option=orjson.OPT_NON_STR_KEYS)
        return len(entries), memoryview(body)[1:-1]

    def _reshape(self, item: Any) -> dict[str, Any] | None:
        """Make the fast path of this record's shape current (compiled the first time); run it."""
        shape = _shape(item)
        if shape is None or (shape.attributes is not None and not self._attributes_ok):
            return None
        if shape.tags and not self._tags_ok:
            return None
        plans = self._plans
        encode = plans.get(shape)
        if encode is None:
            if len(plans) >= _PLANS_MAX:
                plans.clear()
            encode = plans[shape] = _compile(shape, self._action, self._tags, self._learn_tag)
        if shape.mapping:
            self._dict = encode
        else:
            self._record = encode
        try:
            return encode(item)
        except KeyError:  # pragma: no cover - the shape was just read from this record
            return None

    def _learn_tag(self, tag: object) -> bool:
        """Whether ``tag`` is sent as given (remembered if so); False sends the record slow."""
        if (
            type(tag) is not str
            or not tag
            or len(tag) > MAX_TAG_LENGTH
            or tag.lower() != tag
            or not (tag.isascii() or _is_utf8(tag))
        ):
            return False
        if len(self._tags) >= _TAGS_MAX:
            self._tags.clear()
        self._tags.add(tag)
        return True
