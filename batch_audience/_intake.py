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
from datetime import datetime
from itertools import islice
from math import isfinite
from typing import Any, Final

import orjson

from ._models import Record
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
)

__all__ = ["Intake"]

_Checker = Callable[[dict[Any, Any]], bool]
# Key sets and tags judged per upload; an odd stream with ever-new keys or tags clears them
# past these bounds, so memory stays flat.
_PLANS_MAX: Final = 256
_TAGS_MAX: Final = 4096

# The checks of one value, by key kind. ``v`` is the value; each snippet falls through when the
# value is one EntryEncoder sends exactly as given, and returns False otherwise (the record then
# goes to EntryEncoder, which converts it or names the broken rule).
_PLAIN_CHECK: Final = """\
    t = type(v)
    if t is str:
        if len(v) > {max_str} or not (v.isascii() or is_utf8(v)):
            return False
    elif t is int:
        if not {int_min} <= v <= {int_max}:
            return False
    elif t is float:
        if not isfinite(v):
            return False
    else:
        return False
"""
_DATE_CHECK: Final = """\
    if type(v) is not str or not (v.isascii() or is_utf8(v)):
        return False
    try:
        fromisoformat(v)
    except ValueError:
        return False
"""
_URL_CHECK: Final = """\
    if type(v) is not str or len(v) > {max_url} or plain_url(v) is None:
        return False
"""


def _compile(keys: tuple[str, ...]) -> _Checker | None:
    """A checker of the values of an attributes dict with exactly these keys; None if a key is bad.

    A bad key (or more than 15 keys) gets no checker: such records take the slow path, which
    raises the rule they break.
    """
    if len(keys) > MAX_ATTRIBUTES:
        return None
    lines = ["def check(a):"]
    for key in keys:
        if type(key) is not str:
            return None
        try:
            kind = _learn_key(key)[0]
        except Exception:
            return None
        # repr() of a key that matched [a-z0-9_()] is a plain quoted literal: safe to exec.
        lines.append(f"    v = a[{key!r}]")
        if kind == _PLAIN:
            lines.append(
                _PLAIN_CHECK.format(
                    max_str=MAX_STRING_LENGTH, int_min=_INT_MIN, int_max=_INT_MAX
                ).rstrip("\n")
            )
        elif kind == _DATE:
            lines.append(_DATE_CHECK.rstrip("\n"))
        else:
            assert kind == _URL
            lines.append(_URL_CHECK.format(max_url=MAX_URL_LENGTH).rstrip("\n"))
    lines.append("    return True")
    namespace: dict[str, Any] = {
        "isfinite": isfinite,
        "is_utf8": _is_utf8,
        "fromisoformat": datetime.fromisoformat,
        "plain_url": _PLAIN_URL.match,
    }
    exec("\n".join(lines), namespace)
    checker: _Checker = namespace["check"]
    return checker


class Intake:
    """Validates and encodes records for one generation and operation; see the module docstring."""

    __slots__ = (
        "_action",
        "_attributes_ok",
        "_checker",
        "_keys",
        "_plans",
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
        # The last key set seen and its checker: the common case is one comparison away.
        self._keys: Any = None
        self._checker: _Checker | None = None
        self._plans: dict[frozenset[Any], _Checker | None] = {}
        self._tags: set[str] = set()

    def __repr__(self) -> str:
        return f"Intake({self.generation!r}, {self.operation!r})"

    def encode(self, item: object, position: int) -> tuple[str, bytes]:
        """One record's ID and wire entry as JSON; raise ValidationError on a broken rule."""
        ids: set[str] = set()
        count, body = self.take(iter((item,)), 1, position, ids)
        assert count == 1
        return ids.pop(), bytes(body)

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
        attributes_ok = self._attributes_ok
        tags_ok = self._tags_ok
        good_tags = self._tags
        at = position
        rid: Any
        for item in islice(items, count):
            kind = type(item)
            if kind is str:
                if item and item.isascii():
                    add(item)
                    append({"id": item} if action is None else {"action": action, "id": item})
                    at += 1
                    continue
                rid = None
            elif kind is dict:
                rid = item.get("id")
                attributes = item.get("attributes")
                tags = item.get("tags")
                # Any key besides these three is an error: the count says whether one is there.
                if len(item) != 1 + (attributes is not None) + (tags is not None):
                    rid = None
            elif kind is Record:
                rid = item.id
                attributes = item.attributes
                tags = item.tags
            else:
                rid = None
            entry: dict[str, Any] | None = None
            if type(rid) is str and rid and rid.isascii():
                entry = {"id": rid} if action is None else {"action": action, "id": rid}
                if attributes is not None:
                    if not attributes_ok or type(attributes) is not dict:
                        entry = None
                    else:
                        if attributes.keys() != self._keys:
                            self._plan(attributes)
                        checker = self._checker
                        if checker is not None and checker(attributes):
                            entry["attributes"] = attributes.copy()
                        else:
                            entry = None
                if tags is not None and entry is not None:
                    if not tags_ok or type(tags) is not list:
                        entry = None
                    else:
                        for tag in tags:
                            if tag not in good_tags and not self._learn_tag(tag):
                                entry = None
                                break
                        else:
                            entry["tags"] = tags.copy()
            if entry is None:
                # Everything else, and every broken rule: the authoritative encoder decides.
                rid, entry = self._slow.encode(item, at)
            add(rid)  # a str here: the fast path checked it, or the encoder returned it
            append(entry)
            at += 1
        if not entries:
            return 0, b""
        # One orjson call for the step: per-entry calls cost 3-4x more. Keep what is between
        # the brackets, without a copy.
        try:
            body = orjson.dumps(entries)
        except TypeError:
            # A key set matched by equality can hold str subclasses (StrEnum keys) that the
            # checker's plain keys equal: written as the plain str they stand for, as
            # EntryEncoder would.
            body = orjson.dumps(entries, option=orjson.OPT_NON_STR_KEYS)
        return len(entries), memoryview(body)[1:-1]

    def _plan(self, attributes: dict[Any, Any]) -> None:
        """Make the checker of this key set current, compiling it the first time it is seen."""
        keys = frozenset(attributes)
        plans = self._plans
        if keys in plans:
            checker = plans[keys]
        else:
            if len(plans) >= _PLANS_MAX:
                plans.clear()
            checker = plans[keys] = _compile(tuple(attributes))
        self._keys = keys
        self._checker = checker

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
