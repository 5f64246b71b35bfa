"""Fuzzing records: each input is sent exactly as documented or refused with ValidationError.

The expected wire entry is derived here from the rules as documented (README "Bulk upload",
the docstring of ``_validate``), without the library's code: the key rule by hand, datetimes
converted to UTC by subtracting their offset, URLs by ``urlsplit``. A record the rules accept
must give exactly that entry, with the same types (an int never turns into a float, -0.0 stays
-0.0), encodable by orjson and read back unchanged; a record they refuse must raise
ValidationError naming its position (and its ID when the ID is valid). Nothing else may escape,
and the caller's objects are never modified.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections import OrderedDict, namedtuple
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import batch_audience as ba
from batch_audience._validate import EntryEncoder, Generation, Operation
from tests.strategies import GENERATIONS_AND_OPERATIONS, records

FUZZ_EXAMPLES = 1_500  # odd records, across every generation and operation
ATTRIBUTE_EXAMPLES = 1_000  # one odd attribute on an otherwise valid record
VALID_EXAMPLES = 300  # records within every rule

# -- the documented rules, written out independently ------------------------------------------


class Refused(Exception):
    """The documented rules refuse this record."""


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def _plain_key(text: str) -> bool:
    return 1 <= len(text) <= 30 and set(text) <= _KEY_CHARS


def _key(key: object) -> tuple[str, str]:
    """(kind, base name) of an attribute key; kind is plain, date or url."""
    if not isinstance(key, str):
        raise Refused
    text = str.__str__(key)
    for kind in ("date", "url"):
        if text.startswith(f"{kind}(") and text.endswith(")"):
            base = text[len(kind) + 1 : -1]
            if _plain_key(base):
                return kind, base
    if _plain_key(text):
        return "plain", text
    raise Refused


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain_text(value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise Refused
    text = str.__str__(value)
    if len(text) > limit or not _encodable(text):
        raise Refused
    return text


def _utc(value: datetime) -> str:
    """An aware datetime in UTC as ISO-8601 with Z; microseconds only when there are some."""
    offset = value.utcoffset()
    if offset is None:
        raise Refused  # naive
    try:
        utc = value.replace(tzinfo=None) - offset
    except OverflowError:
        raise Refused from None
    text = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    )
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


def _url(text: str) -> str:
    """An absolute http(s) URL of at most 2048 printable characters, without spaces."""
    if len(text) > 2048 or not text.isprintable() or " " in text:
        raise Refused
    try:
        parts = urlsplit(text)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise Refused
    return text


def _date_text(text: str) -> str:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise Refused from None
    if not _encodable(text):
        raise Refused
    return text


def _value(kind: str, base: str, value: object) -> tuple[str, object]:
    """The wire key and value of one attribute."""
    if isinstance(value, datetime):
        if kind == "url":
            raise Refused
        return f"date({base})", _utc(value)
    if isinstance(value, ba.Url):
        if kind == "date":
            raise Refused
        return f"url({base})", _url(str.__str__(value))
    if isinstance(value, str):
        text = str.__str__(value)
        if kind == "date":
            return f"date({base})", _date_text(text)
        if kind == "url":
            return f"url({base})", _url(text)
        return base, _plain_text(text, 300)
    if kind != "plain" or isinstance(value, bool):
        raise Refused
    if isinstance(value, list | tuple):
        if len(value) > 25 or any(isinstance(item, ba.Url) for item in value):
            raise Refused
        return base, [_plain_text(item, 300) for item in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Refused
        return base, float(value)
    if isinstance(value, numbers.Integral):
        number = int(value)
        if not -(2**63) <= number < 2**63:
            raise Refused
        return base, number
    raise Refused


def _attributes(mapping: Mapping[Any, Any]) -> dict[str, object]:
    if len(mapping) > 15:
        raise Refused
    out: dict[str, object] = {}
    for key, value in mapping.items():
        wire_key, wire_value = _value(*_key(key), value)
        if wire_key in out:
            raise Refused  # two keys that become one wire key
        out[wire_key] = wire_value
    return out


def _tags(tags: list[Any] | tuple[Any, ...]) -> list[str]:
    out = []
    for tag in tags:
        text = _plain_text(tag, 64)
        if not text or text.lower() != text:
            raise Refused
        out.append(text)
    return out


def _valid_id(rid: object) -> str | None:
    if isinstance(rid, str) and str.__str__(rid) and _encodable(rid):
        return str.__str__(rid)
    return None


def _parts(record: object) -> tuple[object, object, object]:
    """ID, attributes and tags of a record of any documented shape."""
    if isinstance(record, str):
        return record, None, None
    if isinstance(record, ba.Record):
        return record.id, record.attributes, record.tags
    if isinstance(record, Mapping):
        if "id" not in record:
            raise Refused
        if any(key not in ("id", "attributes", "tags") for key in record):
            raise Refused
        return record["id"], record.get("attributes"), record.get("tags")
    raise Refused


def expected_entry(record: object, generation: str, operation: str) -> dict[str, object]:
    """The wire entry the documentation promises for ``record``; Refused if it breaks a rule."""
    rid, attributes, tags = _parts(record)
    plain_id = _valid_id(rid)
    if plain_id is None:
        raise Refused
    entry: dict[str, object] = {"id": plain_id}
    if operation != "replace":
        entry["action"] = operation
    if attributes is not None:
        if not isinstance(attributes, Mapping):
            raise Refused
        if generation != "1.0" and operation != "remove":
            entry["attributes"] = _attributes(attributes)
        elif attributes:
            raise Refused
    if tags is not None:
        if type(tags) not in (list, tuple):
            raise Refused
        if generation == "1.1" and operation != "remove":
            entry["tags"] = _tags(tags)
        elif tags:
            raise Refused
    return entry


def expected_record_id(record: object) -> str | None:
    """The ID an error about ``record`` names: its ID when that is valid, else None."""
    if isinstance(record, str):
        return _valid_id(record)
    if isinstance(record, ba.Record):
        return _valid_id(record.id)
    if isinstance(record, Mapping) and "id" in record:
        return _valid_id(record["id"])
    return None


# -- comparing without Python's lenient equality ----------------------------------------------


def same(a: object, b: object) -> bool:
    """Equal values of the same exact types: 1 is not 1.0, -0.0 is not 0.0, nan is nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert isinstance(b, float)
        return a.hex() == b.hex() if math.isfinite(a) else repr(a) == repr(b)
    return a == b


def snapshot(value: object) -> object:
    """A deep, comparable picture of a caller's object, to prove it was left as it was."""
    if isinstance(value, Mapping):
        return (type(value), [(snapshot(k), snapshot(v)) for k, v in value.items()])
    if isinstance(value, list | tuple | set | frozenset):
        return (type(value), [snapshot(v) for v in value])
    if isinstance(value, ba.Record):
        return (ba.Record, snapshot(value.id), snapshot(value.attributes), snapshot(value.tags))
    if isinstance(value, float):
        return (type(value), value.hex() if math.isfinite(value) else repr(value))
    if isinstance(value, datetime):
        return (type(value), value.replace(tzinfo=None), value.fold, id(value.tzinfo))
    if isinstance(value, str | bytes | int | Decimal | Fraction | date | time | timedelta):
        return (type(value), id(value))  # immutable: the same object is the same value
    return (type(value), id(value))


def wire_types_only(value: object) -> bool:
    """Only the plain JSON types, no subclass that an encoder might write differently."""
    if type(value) is dict:
        return all(type(k) is str and wire_types_only(v) for k, v in value.items())
    if type(value) is list:
        return all(wire_types_only(v) for v in value)
    return type(value) in (str, int, float)


# -- odd inputs -------------------------------------------------------------------------------


class Plan(enum.StrEnum):
    """A StrEnum: sent as the plain str it stands for."""

    PRO = "pro"


class Level(enum.IntEnum):
    """An IntEnum: sent as the plain int it stands for."""

    HIGH = 3


class Ratio(float):
    """A float subclass."""


class Text(str):
    """A str subclass with a misleading __str__: the value is what counts."""

    def __str__(self) -> str:
        return "not-the-value"


class Stamp(datetime):
    """A datetime subclass (as pandas.Timestamp is)."""


class Items(list):  # type: ignore[type-arg]
    """A list subclass."""


Pair = namedtuple("Pair", "a b")  # a tuple subclass, as user code makes them


class Fold(tzinfo):
    """A zone with a repeated hour: fold=0 is the first pass (-04:00), fold=1 the second."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=-5 if dt is not None and dt.fold else -4)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "FOLD"


class NoOffset(tzinfo):
    """A tzinfo that knows no offset: such a datetime is naive."""

    def utcoffset(self, dt: datetime | None) -> None:
        return None

    def dst(self, dt: datetime | None) -> None:
        return None


class Frozen(Mapping[Any, Any]):
    """A read-only mapping that is not a dict."""

    def __init__(self, data: Mapping[Any, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class Unprintable:
    """A value whose repr raises: the error message must still be built."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


ODD_TEXT = [
    "",
    "\u202eevil",  # right-to-left override
    "a\u200bb",  # zero-width space
    "\u200d",  # zero-width joiner
    "\x00",
    "nul\x00inside",
    "\ud800",  # lone surrogates: not valid Unicode
    "tail\udfff",
    "😀",
    "e\u0301",  # combining accent
    "\ufeffbom",
    "line\u2028sep",
    "line\n",
    " spaced ",
    "x" * 300,
    "x" * 301,
    "é" * 300,
    "é" * 301,
    "\U0010ffff",
    "ǅ",  # titlecase
    "İ",  # lower() makes two characters
    "ß",
    Text("sub"),
    Plan.PRO,
]
ODD_INTS = [
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    10**30,
    Level.HIGH,
    True,
    False,
]
ODD_FLOATS = [
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    -0.0,
    5e-324,
    1.7976931348623157e308,
    Ratio(2.5),
    Ratio(math.nan),
]
URL_TEXTS = [
    "https://cdn.example.com/a.png",
    "HTTP://EXAMPLE.COM",
    "http://127.0.0.1:8080/x?y=1#z",
    "https://é.example/ü",
    "ftp://example.com/x",
    "javascript:alert(1)",
    "not a url",
    "",
    "http://",
    "http:///path",
    "http://a b.com",
    "http://[::1]/x",
    "http://[bad",
    "http://e.com/\ud800",
    "http://e.com/\t",
    "https://e.com/" + "a" * 2034,  # 2048 characters
    "https://e.com/" + "a" * 2035,  # 2049 characters
]
DATE_TEXTS = [
    "2024-01-02T10:00:00Z",
    "2024-01-02T10:00:00+02:00",
    "2024-01-02T10:00:00.123456-05:30",
    "2024-01-02",
    "20240102T100000Z",
    "2024-01-02 10:00:00",
    "2024-13-01T00:00:00Z",
    "2024-01-02T25:00:00Z",
    "yesterday",
    "",
    "2024-01-02\ud80010:00:00",
    "2024-01-02\x0010:00:00",
]
try:
    from zoneinfo import ZoneInfo

    _ZONES: list[tzinfo] = [ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")]
except Exception:  # pragma: no cover - no time zone database on this machine
    _ZONES = []
ZONES: list[tzinfo] = [
    UTC,
    timezone(timedelta(0)),
    timezone(timedelta(hours=-5)),
    timezone(timedelta(hours=9, minutes=30)),
    timezone(timedelta(hours=23, minutes=59)),
    timezone(timedelta(hours=-23, minutes=-59)),
    timezone(timedelta(seconds=1)),
    timezone(timedelta(microseconds=-1)),
    Fold(),
    *_ZONES,
]

odd_texts = st.sampled_from(ODD_TEXT) | st.text(
    st.characters(codec=None, exclude_categories=()), max_size=30
)
datetimes = st.builds(
    lambda dt, fold, zone: dt.replace(fold=fold, tzinfo=zone),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.integers(0, 1),
    st.none() | st.sampled_from([*ZONES, NoOffset()]),
) | st.sampled_from(
    [
        datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),  # before year 1 in UTC
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),  # after year 9999 in UTC
        datetime.min.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
        datetime(2023, 11, 5, 1, 30, fold=1, tzinfo=Fold()),
        Stamp(2024, 1, 2, 10, 0, tzinfo=UTC),
        Stamp(2024, 1, 2, 10, 0, 0, 7, tzinfo=timezone(timedelta(hours=2))),
        Stamp(2024, 1, 2),
    ]
)
odd_scalars = st.one_of(
    odd_texts,
    st.sampled_from(ODD_INTS),
    # Past 4,300 digits repr() raises: built lazily, as hypothesis shows sampled values.
    st.integers(4301, 4310).map(lambda n: -(10**n) if n % 2 else 10**n),
    st.sampled_from(ODD_FLOATS),
    st.floats(),
    st.decimals(),
    st.sampled_from([Fraction(1, 3), complex(1, 2), None]),
    st.builds(object) | st.builds(Unprintable),
    datetimes,
    st.sampled_from([date(2024, 1, 2), time(10, 0), timedelta(days=1)]),
    st.sampled_from(URL_TEXTS) | st.sampled_from(URL_TEXTS).map(ba.Url),
    st.sampled_from(DATE_TEXTS),
    st.binary(max_size=6) | st.binary(max_size=6).map(bytearray),
)
odd_values = st.recursive(
    odd_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(st.sampled_from(ODD_TEXT), max_size=27),
        st.integers(24, 27).map(lambda n: ["a"] * n),  # around the 25-item limit
        st.tuples(inner),
        st.lists(odd_texts, max_size=3).map(Items),
        st.builds(Pair, odd_texts, odd_texts),
        st.dictionaries(st.text(max_size=3), inner, max_size=2),
        st.frozensets(st.integers(), max_size=2) | st.sets(st.text(max_size=2), max_size=2),
    ),
    max_leaves=6,
)
good_values = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(st.characters(codec="utf-8"), max_size=5), max_size=25),
    st.datetimes(timezones=st.sampled_from(ZONES), min_value=datetime(2, 1, 1)),
    st.sampled_from(URL_TEXTS[:4]).map(ba.Url),
)
good_keys = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=30)
odd_keys = st.one_of(
    good_keys.map(lambda k: f"date({k})"),
    good_keys.map(lambda k: f"url({k})"),
    st.sampled_from(
        [
            "a" * 30,
            "a" * 31,
            "Score",
            "date(joined)",
            "url(avatar)",
            "Date(x)",
            "date()",
            "date(x",
            "date((x))",
            "url(date(x))",
            "score\n",
            "\u0455core",  # Cyrillic dze, looks like "s"
            "\uff11",  # fullwidth digit one
            "sc ore",
            "",
            "date(" + "a" * 31 + ")",
            Plan.PRO,
            Text("plan"),
            1,
            None,
            b"key",
            ("t",),
            1.5,
            True,
        ]
    ),
    st.integers(4301, 4302).map(lambda n: 10**n),
    odd_texts,
)
keys = st.one_of(good_keys, good_keys, good_keys, odd_keys)
values = st.one_of(good_values, good_values, odd_values)
# Pairs, not a dict strategy: "joined" with a datetime next to "date(joined)" must be possible.
# Typed keys with the values they take, and some they do not.
date_pairs = st.tuples(
    good_keys.map(lambda k: f"date({k})"),
    st.sampled_from(DATE_TEXTS) | datetimes | st.sampled_from(URL_TEXTS[:2]).map(ba.Url),
)
url_pairs = st.tuples(
    good_keys.map(lambda k: f"url({k})"),
    st.sampled_from(URL_TEXTS) | st.sampled_from(URL_TEXTS).map(ba.Url) | datetimes,
)
pairs = st.one_of(st.tuples(keys, values), st.tuples(keys, values), date_pairs, url_pairs)
attribute_maps = st.lists(pairs, max_size=6).map(dict)
attributes_fields = st.one_of(
    st.none(),
    attribute_maps,
    attribute_maps,
    attribute_maps.map(OrderedDict),
    attribute_maps.map(MappingProxyType),
    attribute_maps.map(Frozen),
    st.sampled_from([{}, [("plan", "pro")], "plan=pro", {"plan"}, 5]),
    st.integers(14, 17).map(lambda n: {f"k{i}": i for i in range(n)}),  # the 15 limit
    # Two keys for one wire key: "date(k)" given, and "k" holding a datetime.
    st.builds(lambda k, d: {f"date({k})": "2024-01-02T10:00:00Z", k: d}, good_keys, datetimes),
)
good_tags = st.text(
    st.characters(categories=["Ll", "Nd", "Lo", "Pd"]).filter(lambda c: c.lower() == c),
    min_size=1,
    max_size=8,
)
tag_items = st.one_of(
    good_tags, good_tags, st.sampled_from(["x" * 64, "x" * 65, "VIP", ""]), odd_scalars
)
tags_fields = st.one_of(
    st.none(),
    st.none(),
    st.lists(tag_items, max_size=4),
    st.lists(tag_items, max_size=4).map(tuple),
    st.sampled_from([[], (), "vip", {"vip"}, Items(["vip"]), ["vip"]]),
)
good_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
ids = st.one_of(
    good_ids,
    good_ids,
    good_ids,
    odd_texts,
    st.sampled_from(["x" * 100_000, "é" * 200_000, ba.Url("https://e.com"), 5, None, b"u-1"]),
    st.integers(4301, 4302).map(lambda n: 10**n),
    st.sampled_from(ODD_FLOATS),
)


@st.composite
def fuzz_records(draw: st.DrawFn) -> object:
    """A record of any shape: mostly well-formed, with odd IDs, keys, values and tags mixed in."""
    rid, attributes, tags = draw(ids), draw(attributes_fields), draw(tags_fields)
    shape = draw(
        st.sampled_from(["str", "record", "record", "dict", "dict", "mapping", "extra", "other"])
    )
    if shape == "str":
        return rid
    if shape == "record":
        return ba.Record(rid, attributes, tags)  # type: ignore[arg-type]
    item: dict[Any, Any] = {"id": rid}
    if attributes is not None or draw(st.booleans()):
        item["attributes"] = attributes
    if tags is not None or draw(st.booleans()):
        item["tags"] = tags
    if shape == "mapping":
        return draw(st.sampled_from([OrderedDict, MappingProxyType, Frozen]))(item)
    if shape == "extra":
        item[draw(st.sampled_from(["ids", "ID", "action", 1, None]))] = "x"
        if draw(st.booleans()):
            del item["id"]
        return item
    if shape == "other":
        return draw(st.sampled_from([[rid], (rid,), frozenset({"u-1"}), 5, None]))
    return item


# -- the properties ---------------------------------------------------------------------------


def check(record: object, generation: Generation, operation: Operation, position: int) -> None:
    """Encode ``record`` and compare it with the documented outcome (see the module docstring)."""
    before = snapshot(record)
    encoder = EntryEncoder(generation, operation)
    try:
        wanted: dict[str, object] | None = expected_entry(record, generation, operation)
    except Refused:
        wanted = None
    error: ba.ValidationError | None = None
    try:
        record_id, entry = encoder.encode(record, position)
    except ba.ValidationError as err:
        error = err
    if error is not None:
        event("refused")
        assert wanted is None, f"refused a record the rules accept: {error}"
        assert error.position == position
        assert error.record_id == expected_record_id(record)
        assert error.rule and str(error) and repr(error)
    else:
        event("sent")
        assert wanted is not None, f"accepted a record the rules refuse: {entry!r}"
        assert same(entry, wanted), (entry, wanted)
        assert record_id == wanted["id"] and type(record_id) is str
        assert wire_types_only(entry)
        # orjson writes exactly what was validated: read back, it is the same entry.
        assert same(orjson.loads(orjson.dumps(entry)), entry)
        # A second encoding (the key cache now warm) gives the same entry.
        assert same(encoder.encode(record, position)[1], entry)
        # The entry shares no mutable object with the caller's record.
        _, attributes, tags = _parts(record)
        given = {id(attributes), id(tags)}
        if isinstance(attributes, Mapping):
            given |= {id(v) for v in attributes.values()}
        sent = entry.get("attributes")
        shared = [entry.get("tags"), sent, *(sent.values() if isinstance(sent, dict) else ())]
        assert not any(id(v) in given for v in shared if isinstance(v, dict | list))
    assert snapshot(record) == before, "the caller's record was modified"


@settings(max_examples=FUZZ_EXAMPLES)
@given(
    record=fuzz_records(),
    case=st.sampled_from(GENERATIONS_AND_OPERATIONS),
    position=st.integers(0, 10**12),
)
def test_any_record_is_sent_as_documented_or_refused(
    record: object, case: tuple[Generation, Operation], position: int
) -> None:
    """Odd records of every shape give the documented entry or a ValidationError, nothing else."""
    check(record, *case, position)


@settings(max_examples=ATTRIBUTE_EXAMPLES)
@given(
    pair=pairs,
    case=st.sampled_from([("1.1", "add"), ("1.1", "replace"), ("2", "add"), ("2", "replace")]),
)
def test_any_single_attribute_is_sent_as_documented_or_refused(
    pair: tuple[object, object], case: tuple[Generation, Operation]
) -> None:
    """One odd key or value on an otherwise valid record: the documented entry or refused."""
    key, value = pair
    check(ba.Record("u-1", {key: value}), *case, 3)  # type: ignore[dict-item]


@st.composite
def valid_cases(draw: st.DrawFn) -> tuple[object, Generation, Operation]:
    """A record within every rule of its generation and operation (tests/strategies.py)."""
    generation, operation = draw(st.sampled_from(GENERATIONS_AND_OPERATIONS))
    return draw(records(generation, operation)), generation, operation


@settings(max_examples=VALID_EXAMPLES)
@given(case=valid_cases())
def test_valid_records_are_always_sent_exactly(case: tuple[object, Generation, Operation]) -> None:
    """A record within every rule is always accepted, and sent as the documentation says."""
    record, generation, operation = case
    assert expected_entry(record, generation, operation)  # the oracle agrees it is valid
    check(record, generation, operation, 7)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        pytest.param(
            datetime(2023, 11, 5, 1, 30, tzinfo=Fold()), "2023-11-05T05:30:00Z", id="fold-0"
        ),
        pytest.param(
            datetime(2023, 11, 5, 1, 30, fold=1, tzinfo=Fold()), "2023-11-05T06:30:00Z", id="fold-1"
        ),
        pytest.param(
            datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=9, minutes=30))),
            "2023-12-31T14:30:00.000001Z",
            id="offset-microsecond",
        ),
        pytest.param(Stamp(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02T03:04:05Z", id="subclass"),
        pytest.param(
            datetime(1, 1, 1, 5, tzinfo=timezone(timedelta(hours=4))),
            "0001-01-01T01:00:00Z",
            id="year-1",
        ),
    ],
)
def test_datetimes_are_sent_in_utc_with_z(value: datetime, wire: str) -> None:
    """Aware datetimes, fold and sub-second offsets included, become the documented UTC text."""
    _, entry = EntryEncoder("2", "add").encode({"id": "u", "attributes": {"joined": value}}, 0)
    assert entry["attributes"] == {"date(joined)": wire}


def test_replace_on_1_0_is_unsupported_not_a_validation_error() -> None:
    """Custom Audience API 1.0 has no replace: UnsupportedOperation, before any record."""
    with pytest.raises(ba.UnsupportedOperation):
        EntryEncoder("1.0", "replace")
