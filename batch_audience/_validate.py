"""Record validation: turns each user record into its wire entry, checking every rule first.

Pure, and the hot path of uploads of millions of records: the common shapes (a plain ``str``
ID, a ``Record``, a ``dict``) take exact-type fast paths, the verdict on each attribute key
is cached (the same few keys repeat on every record), and each wire entry is built once.

What is accepted (spec §2.2, §2.3, §3.2, §4.2, §4.3, §5.4, §5.5):

- an item is a ``str`` ID, a ``Record``, or a mapping with ``"id"`` and optional
  ``"attributes"`` (a mapping) and ``"tags"`` (a list or tuple of str); any other key is an
  error, and ``None`` for attributes or tags means "none", as in ``Record``;
- an ID is a non-empty str, sent as given;
- at most 15 attributes; keys ``[a-z0-9_]{1,30}``, optionally written ``date(k)``/``url(k)``;
- values: str (at most 300 characters), int (64-bit), finite float, a list or tuple of at
  most 25 str, a timezone-aware ``datetime`` (sent as ``date(k)``: UTC ISO-8601 with ``Z``),
  a ``Url`` (sent as ``url(k)``); a ``date(k)`` key takes an ISO-8601 str or a datetime, a
  ``url(k)`` key an absolute http(s) URL of at most 2048 characters or a ``Url``;
- tags (1.1 only): non-empty lowercase str of at most 64 characters;
- attributes only in 1.1 and 2.x, attributes and tags only with add and replace.

An empty attributes mapping or tags list is sent as given where attributes (tags) are
allowed, and left out where they are not: it carries nothing, so nothing is lost.
Nothing else is dropped, truncated or rewritten, except the typed-key encoding of
``datetime`` and ``Url`` values and the conversion of str/int/float subclasses (``StrEnum``,
``IntEnum``, numpy numbers) to the plain values they stand for, so any JSON encoder writes
exactly what was validated.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from math import isfinite
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import urlsplit

from ._exceptions import UnsupportedOperation, ValidationError
from ._models import Record, Url

__all__ = [
    "AUDIENCE_NAME",
    "MAX_ARRAY_ITEMS",
    "MAX_ATTRIBUTES",
    "MAX_ENTRIES",
    "MAX_STRING_LENGTH",
    "MAX_TAG_LENGTH",
    "MAX_URL_LENGTH",
    "EntryEncoder",
    "Generation",
    "Operation",
    "check_audience_name",
]

Generation = Literal["1.0", "1.1", "2"]
Operation = Literal["add", "remove", "replace"]

# \Z, not $: "$" also matches before a trailing newline, which would let "name\n" through.
AUDIENCE_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,255}\Z")
MAX_ENTRIES: Final = 10_000  # ID entries per write request (spec §2.3)
MAX_ATTRIBUTES: Final = 15  # attributes per ID entry (spec §2.3)
MAX_STRING_LENGTH: Final = 300  # characters in a str value: the fake server's bound (spec §2.3)
MAX_URL_LENGTH: Final = 2048  # characters in a URL value (spec §2.3)
MAX_ARRAY_ITEMS: Final = 25  # str items in an array value (spec §2.3)
MAX_TAG_LENGTH: Final = 64  # characters in a tag (spec §2.3)
# orjson, the payload encoder, cannot write integers beyond 64 bits: reject them here, where
# the record's position is known, rather than fail a whole request later.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1

_NAME_RULE: Final = "1 to 255 characters from A-Z, a-z, 0-9, _ and -"
_KEY_RULE_TEXT: Final = (
    "lowercase a-z, 0-9 and _, at most 30 characters, optionally wrapped as date(...) or url(...)"
)
_TAG_RULE_TEXT: Final = f"a non-empty lowercase str of at most {MAX_TAG_LENGTH} characters"
_VALUE_TYPES: Final = "str, int, float, a list of str, a timezone-aware datetime or a Url"
_ID_RULE: Final = "id must be a non-empty str"
_RECORD_KEYS: Final = frozenset({"id", "attributes", "tags"})
_GENERATIONS: Final[Mapping[str, str]] = {
    "1.0": "Custom Audience API 1.0",
    "1.1": "Custom Audience API 1.1",
    "2": "Audience API 2.x",
}
_SHOW_LIMIT: Final = 60  # characters of a repr shown in an error message
_MISSING: Final = object()

# The key rule with balanced parentheses; fullmatch only, so no anchors are needed.
_KEY_PATTERN: Final = re.compile(r"(?:(date|url)\(([a-z0-9_]{1,30})\)|[a-z0-9_]{1,30})")
_PLAIN: Final = 0
_DATE: Final = 1
_URL: Final = 2
# Per key: (kind, key as given, wire key for a datetime value, wire key for a Url value);
# "" where that value type is refused, which the kind already says.
_KeyInfo: TypeAlias = tuple[int, str, str, str]
_KEYS: dict[object, _KeyInfo] = {}
# Keys differ per record only in odd streams; clearing past this bound keeps memory flat.
_KEY_CACHE_MAX: Final = 4096
# "YYYY-MM-DDT" per proleptic ordinal day, and two-digit numbers, for formatting datetimes.
_DAYS: dict[int, str] = {}
_DAY_CACHE_MAX: Final = 4096
_TWO: Final = tuple(f"{n:02d}" for n in range(60))


def check_audience_name(name: object) -> str:
    """Return ``name`` if it is a valid audience name (spec §2.2); raise ValidationError if not."""
    if not isinstance(name, str):
        raise ValidationError(f"audience name must be a str, got {_describe(name)}")
    if AUDIENCE_NAME.match(name) is None:
        raise ValidationError(f"audience name {_show(name)} breaks the name rule: {_NAME_RULE}")
    return name


class EntryEncoder:
    """Turns one record into its wire entry for a generation and operation, checking every rule."""

    __slots__ = ("_action", "_attributes_refusal", "_tags_refusal", "generation", "operation")

    def __init__(self, generation: Generation, operation: Operation) -> None:
        if generation not in _GENERATIONS:
            raise ValueError(f"generation must be '1.0', '1.1' or '2', got {generation!r}")
        if operation not in ("add", "remove", "replace"):
            raise ValueError(f"operation must be 'add', 'remove' or 'replace', got {operation!r}")
        if operation == "replace" and generation == "1.0":
            raise UnsupportedOperation(
                "replace", "1.0", "use Custom Audience API 1.1 or Audience API 2.x"
            )
        self.generation: Final = generation
        self.operation: Final = operation
        # Update entries carry an action; replace entries do not (spec §4.3, §5.5).
        self._action: str | None = None if operation == "replace" else operation
        # Why attributes (tags) are refused for this generation and operation; None if allowed.
        self._attributes_refusal: str | None = None
        self._tags_refusal: str | None = None
        if generation == "1.0":
            self._attributes_refusal = "Custom Audience API 1.0 takes no attributes"
        elif operation == "remove":
            self._attributes_refusal = "attributes are only sent with add or replace, not remove"
        if generation != "1.1":
            name = _GENERATIONS[generation]
            self._tags_refusal = f"tags are only supported by Custom Audience API 1.1, not {name}"
        elif operation == "remove":
            self._tags_refusal = "tags are only sent with add or replace, not remove"

    def __repr__(self) -> str:
        return f"EntryEncoder({self.generation!r}, {self.operation!r})"

    def encode(self, item: object, position: int) -> tuple[str, dict[str, Any]]:
        """Return ``(id, wire entry)`` for one record; raise ValidationError on a broken rule."""
        if type(item) is str:
            # The common case by far: a plain ID. isascii() is O(1) in CPython.
            if item and (item.isascii() or _is_utf8(item)):
                if self._action is None:
                    return item, {"id": item}
                return item, {"action": self._action, "id": item}
            raise _id_error(item, position)
        if type(item) is Record:
            rid = item.id
            attributes: object = item.attributes
            tags: object = item.tags
            if type(rid) is not str or not rid or not (rid.isascii() or _is_utf8(rid)):
                rid = _check_id(rid, position)
        elif type(item) is dict:
            rid, attributes, tags = _unpack_mapping(item, position)
        else:
            rid, attributes, tags = _unpack_other(item, position)
        if attributes is None and tags is None:
            if self._action is None:
                return rid, {"id": rid}
            return rid, {"action": self._action, "id": rid}
        try:
            return rid, self._entry(rid, attributes, tags)
        except ValidationError as exc:
            exc.position = position
            exc.record_id = rid
            raise

    def _entry(self, rid: str, attributes: object, tags: object) -> dict[str, Any]:
        entry: dict[str, Any] = (
            {"id": rid} if self._action is None else {"action": self._action, "id": rid}
        )
        if attributes is not None:
            if type(attributes) is dict or isinstance(attributes, Mapping):
                if self._attributes_refusal is None:
                    entry["attributes"] = _encode_attributes(attributes)
                elif attributes:
                    raise ValidationError(self._attributes_refusal)
            else:
                raise ValidationError(
                    self._attributes_refusal
                    or f"attributes must be a mapping of key to value, got {_describe(attributes)}"
                )
        if tags is not None:
            if type(tags) is list or type(tags) is tuple:
                if self._tags_refusal is None:
                    entry["tags"] = _encode_tags(tags)
                elif tags:
                    raise ValidationError(self._tags_refusal)
            else:
                raise ValidationError(
                    self._tags_refusal
                    or f"tags must be a list or tuple of str, got {_describe(tags)}"
                )
        return entry


def _unpack_mapping(item: Mapping[Any, Any], position: int) -> tuple[str, object, object]:
    """The ID, attributes and tags of a mapping record; any other key is an error."""
    rid = item.get("id", _MISSING)
    if rid is _MISSING:
        keys = ", ".join(_show(k) for k in list(item)[:5])
        raise ValidationError(
            f"a record mapping needs an 'id' key, got keys [{keys}]", position=position
        )
    if type(rid) is not str or not rid or not (rid.isascii() or _is_utf8(rid)):
        rid = _check_id(rid, position)
    if len(item) > 1 and not _RECORD_KEYS.issuperset(item):
        bad = next(k for k in item if k not in _RECORD_KEYS)
        raise ValidationError(
            f"record key {_show(bad)} is not one of 'id', 'attributes', 'tags'",
            position=position,
            record_id=rid,
        )
    return rid, item.get("attributes"), item.get("tags")


def _unpack_other(item: object, position: int) -> tuple[str, object, object]:
    """The slow path of ``encode``: other mappings, subclasses, and wrong types."""
    if isinstance(item, Mapping):
        return _unpack_mapping(item, position)
    if isinstance(item, str):
        # A str subclass (StrEnum, numpy.str_): sent as the plain str it stands for.
        return _check_id(item, position), None, None
    if isinstance(item, Record):
        return _check_id(item.id, position), item.attributes, item.tags
    hint = " (decode it to str first)" if isinstance(item, bytes | bytearray) else ""
    raise ValidationError(
        "a record must be a str ID, a Record or a mapping with an 'id' key, "
        f"got {_describe(item)}{hint}",
        position=position,
    )


def _check_id(rid: object, position: int) -> str:
    """Return ``rid`` as a plain str if it is a valid ID; raise the ID rule otherwise."""
    if isinstance(rid, str):
        text = str.__str__(rid)
        if text and (text.isascii() or _is_utf8(text)):
            return text
    raise _id_error(rid, position)


def _id_error(rid: object, position: int) -> ValidationError:
    if isinstance(rid, str) and rid:
        why = ": it holds a lone surrogate, which is not valid Unicode"
        return ValidationError(f"{_ID_RULE}, got {_show(rid)}{why}", position=position)
    hint = " (decode it to str first)" if isinstance(rid, bytes | bytearray) else ""
    return ValidationError(f"{_ID_RULE}, got {_describe(rid)}{hint}", position=position)


def _encode_attributes(attributes: Mapping[Any, Any]) -> dict[str, Any]:
    """The wire attributes of one entry, built in one pass over the user's mapping."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValidationError(
            f"{len(attributes)} attributes break the limit of {MAX_ATTRIBUTES} attributes per entry"
        )
    out: dict[str, Any] = {}
    keys = _KEYS
    for key, value in attributes.items():
        info = keys.get(key)
        if info is None:
            info = _learn_key(key)
        # Inline the common valid cases on exact types; everything else, and every error,
        # goes through _typed, which checks the full rules.
        kind = type(value)
        if info[0] == _PLAIN:
            if kind is str:
                if len(value) <= MAX_STRING_LENGTH and (value.isascii() or _is_utf8(value)):
                    out[info[1]] = value
                    continue
            elif kind is int:
                if _INT_MIN <= value <= _INT_MAX:
                    out[info[1]] = value
                    continue
            elif kind is float:
                if isfinite(value):
                    out[info[1]] = value
                    continue
            elif kind is list or kind is tuple:
                out[info[1]] = _text_list(info[1], value)
                continue
        if kind is datetime and value.tzinfo is UTC and info[0] != _URL:
            out[info[2]] = _utc_text(info[1], value)
            continue
        wire_key, wire_value = _typed(info, value)
        out[wire_key] = wire_value
    if len(out) != len(attributes):
        raise _collision(attributes)
    return out


def _learn_key(key: object) -> _KeyInfo:
    """Judge an attribute key once and cache the verdict; raise the key rule if it breaks it."""
    text = str.__str__(key) if isinstance(key, str) else None
    match = _KEY_PATTERN.fullmatch(text) if text is not None else None
    if text is None or match is None:
        raise ValidationError(f"attribute key {_show(key)} breaks the key rule: {_KEY_RULE_TEXT}")
    prefix = match.group(1)
    if prefix is None:
        info = (_PLAIN, text, f"date({text})", f"url({text})")
    elif prefix == "date":
        info = (_DATE, text, text, "")
    else:
        info = (_URL, text, "", text)
    if len(_KEYS) >= _KEY_CACHE_MAX:
        _KEYS.clear()
    _KEYS[key] = info
    return info


def _typed(info: _KeyInfo, value: object) -> tuple[str, Any]:
    """Check one attribute value against its key's kind; return the wire key and value."""
    kind, key, date_key, url_key = info
    if isinstance(value, datetime):
        if kind == _URL:
            raise _wrong_kind(key, kind, value)
        return date_key, _utc_text(key, value)
    if isinstance(value, Url):
        if kind == _DATE:
            raise _wrong_kind(key, kind, value)
        text = str.__str__(value)
        _check_url(key, text)
        return url_key, text
    if isinstance(value, str):
        text = str.__str__(value)
        if kind == _DATE:
            _check_date_text(key, text)
        elif kind == _URL:
            _check_url(key, text)
        else:
            _check_text(f"attribute {key!r}", text)
        return key, text
    if kind != _PLAIN:
        raise _wrong_kind(key, kind, value)
    if isinstance(value, bool):
        raise ValidationError(
            f"attribute {key!r} is a bool ({value}): booleans are not an audience attribute type "
            "(spec §2.3); send a number or a str instead"
        )
    if isinstance(value, list | tuple):
        return key, _text_list(key, value)
    if isinstance(value, float):
        if not isfinite(value):
            raise ValidationError(f"attribute {key!r} is {value!r}: numbers must be finite")
        return key, float(value)
    if isinstance(value, numbers.Integral):
        # int subclasses (IntEnum) and numpy integers convert exactly.
        number = int(value)
        if not _INT_MIN <= number <= _INT_MAX:
            raise ValidationError(
                f"attribute {key!r} is {_show(number)}: integers must fit in 64 bits "
                f"({_INT_MIN} to {_INT_MAX})"
            )
        return key, number
    raise ValidationError(
        f"attribute {key!r} has unsupported type {type(value).__name__}: use {_VALUE_TYPES}"
    )


def _utc_text(key: str, value: datetime) -> str:
    """A timezone-aware datetime as UTC ISO-8601 with Z; microseconds kept when non-zero."""
    if value.tzinfo is not UTC:
        if value.utcoffset() is None:
            raise ValidationError(
                f"attribute {key!r} is a naive datetime ({value.isoformat()}): "
                "give a timezone-aware value"
            )
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            raise ValidationError(
                f"attribute {key!r} datetime {value.isoformat()} is out of range once in UTC"
            ) from None
    if type(value) is not datetime:
        # A subclass (pandas.Timestamp) may hold more than microseconds: let it say so itself.
        # isoformat() of a UTC value ends in "+00:00".
        return value.isoformat()[:-6] + "Z"
    # isoformat() costs ~0.6 us; a per-day cache of "YYYY-MM-DDT" plus table lookups ~0.15 us.
    day = value.toordinal()
    head = _DAYS.get(day)
    if head is None:
        if len(_DAYS) >= _DAY_CACHE_MAX:
            _DAYS.clear()
        head = _DAYS[day] = f"{value.date().isoformat()}T"
    if value.microsecond:
        return (
            f"{head}{_TWO[value.hour]}:{_TWO[value.minute]}:{_TWO[value.second]}"
            f".{value.microsecond:06d}Z"
        )
    return f"{head}{_TWO[value.hour]}:{_TWO[value.minute]}:{_TWO[value.second]}Z"


def _check_date_text(key: str, text: str) -> None:
    # Python 3.11's fromisoformat reads a trailing "Z" as UTC, so no rewriting is needed.
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"attribute {key!r} value {_show(text)} is not an ISO-8601 date-time "
            "(like 2023-08-12T22:30:05Z)"
        ) from None
    # fromisoformat takes any character between date and time, a lone surrogate included,
    # which the JSON encoder would then fail on with a TypeError for the whole request.
    if not (text.isascii() or _is_utf8(text)):
        raise ValidationError(
            f"attribute {key!r} value {_show(text)} holds a lone surrogate, which is not valid "
            "Unicode"
        )


# The common shape, checked in one regex match (~0.3 us) instead of urlsplit (~5 us): an http(s)
# scheme, a plain host name, an optional port, then printable ASCII without spaces.
_PLAIN_URL: Final = re.compile(
    r"[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:[/?#][!-~]*)?\Z"
)


def _check_url(key: str, text: str) -> None:
    if len(text) <= MAX_URL_LENGTH and _PLAIN_URL.match(text):
        return
    if len(text) > MAX_URL_LENGTH:
        raise ValidationError(
            f"attribute {key!r} is a URL of {len(text)} characters: "
            f"URLs are at most {MAX_URL_LENGTH} characters"
        )
    # urlsplit silently strips tabs, newlines and leading controls: refuse them before it does.
    problem = not text.isprintable() or " " in text
    if not problem:
        try:
            parts = urlsplit(text)
            problem = parts.scheme.lower() not in ("http", "https") or not parts.hostname
        except ValueError:
            problem = True
    if problem:
        raise ValidationError(
            f"attribute {key!r} value {_show(text)} is not an absolute http or https URL"
        )


def _check_text(what: str, text: str) -> None:
    if len(text) > MAX_STRING_LENGTH:
        raise ValidationError(
            f"{what} is a str of {len(text)} characters: "
            f"str values are at most {MAX_STRING_LENGTH} characters"
        )
    if not (text.isascii() or _is_utf8(text)):
        raise ValidationError(
            f"{what} value {_show(text)} holds a lone surrogate, which is not valid Unicode"
        )


def _text_list(key: str, values: list[Any] | tuple[Any, ...]) -> list[str]:
    """An array value as a fresh list, so later changes to the user's list cannot reach the wire."""
    if len(values) <= MAX_ARRAY_ITEMS:
        for text in values:
            if type(text) is not str or len(text) > MAX_STRING_LENGTH:
                break
            if not (text.isascii() or _is_utf8(text)):
                break
        else:
            return list(values)
    # Slow path: name the problem, or convert str subclasses to the plain str they stand for.
    if len(values) > MAX_ARRAY_ITEMS:
        raise ValidationError(
            f"attribute {key!r} has {len(values)} items: arrays are at most {MAX_ARRAY_ITEMS} str"
        )
    out: list[str] = []
    for index, value in enumerate(values):
        if not isinstance(value, str) or isinstance(value, Url):
            raise ValidationError(
                f"attribute {key!r} item {index} is {_describe(value)}: array items must be str"
            )
        text = str.__str__(value)
        _check_text(f"attribute {key!r} item {index}", text)
        out.append(text)
    return out


def _encode_tags(tags: list[Any] | tuple[Any, ...]) -> list[str]:
    """The wire tags of one entry: a fresh list of checked tags, never lowercased for the user."""
    for tag in tags:
        if type(tag) is not str or not tag or len(tag) > MAX_TAG_LENGTH or tag.lower() != tag:
            break
        if not (tag.isascii() or _is_utf8(tag)):
            break
    else:
        return list(tags)
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise ValidationError(f"tag {_describe(tag)} breaks the tag rule: {_TAG_RULE_TEXT}")
        text = str.__str__(tag)
        if not text or len(text) > MAX_TAG_LENGTH or text.lower() != text:
            raise ValidationError(f"tag {_show(text)} breaks the tag rule: {_TAG_RULE_TEXT}")
        if not (text.isascii() or _is_utf8(text)):
            raise ValidationError(
                f"tag {_show(text)} holds a lone surrogate, which is not valid Unicode"
            )
        out.append(text)
    return out


def _collision(attributes: Mapping[object, object]) -> ValidationError:
    """Name the two keys that became one wire key (only reached when one did)."""
    seen: dict[str, object] = {}
    for key, value in attributes.items():
        info = _KEYS.get(key) or _learn_key(key)
        if isinstance(value, datetime):
            wire_key = info[2]
        elif isinstance(value, Url):
            wire_key = info[3]
        else:
            wire_key = info[1]
        if wire_key in seen:
            return ValidationError(
                f"attribute keys {_show(seen[wire_key])} and {_show(key)} both become wire key "
                f"{wire_key!r}: give each attribute once"
            )
        seen[wire_key] = key
    return ValidationError("two attribute keys become the same wire key")  # pragma: no cover


def _wrong_kind(key: str, kind: int, value: object) -> ValidationError:
    if kind == _DATE:
        wanted = "an ISO-8601 date-time str or a timezone-aware datetime"
    else:
        wanted = "an absolute http or https URL str or a Url"
    return ValidationError(f"attribute {key!r} takes {wanted}, got {_describe(value)}")


def _is_utf8(text: str) -> bool:
    """Whether ``text`` can be encoded (no lone surrogates), so the JSON encoder will not fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(value: object) -> str:
    """A repr for error messages, cut short: messages name values, they do not dump them."""
    try:
        text = repr(value)
    except Exception:
        # An int past sys.get_int_max_str_digits() (4300 digits) cannot be printed, and a
        # user's object may have a broken __repr__: either must not replace the ValidationError.
        text = f"<{type(value).__name__} that cannot be shown>"
    if len(text) > _SHOW_LIMIT:
        text = f"{text[: _SHOW_LIMIT - 3]}..."
    return text


def _describe(value: object) -> str:
    """A value with its type, e.g. ``int 5``; just the repr when it already names the type."""
    shown = _show(value)
    name = type(value).__name__
    head, paren, _ = shown.partition("(")
    if paren and (head == name or head.endswith(f".{name}")):
        return shown
    return f"{name} {shown}"
