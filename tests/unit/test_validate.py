"""Record validation: every rule of spec §2.2/§2.3, the wire entries, and the typed-key encoding."""

from __future__ import annotations

import enum
import pickle
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    GENERATIONS_AND_OPERATIONS,
    attributes,
    aware_datetimes,
    invalid_records,
    records,
)

from batch_audience import Record, UnsupportedOperation, Url, ValidationError, _validate
from batch_audience._validate import (
    MAX_ATTRIBUTES,
    EntryEncoder,
    Generation,
    Operation,
    check_audience_name,
)

UTC_DT = datetime(2023, 8, 12, 22, 30, 5, tzinfo=UTC)
PARIS_SUMMER = timezone(timedelta(hours=2))


class Color(enum.StrEnum):
    """A str subclass, as IDs, keys and values may be."""

    RED = "red"


class Level(enum.IntEnum):
    """An int subclass, as values may be."""

    HIGH = 3


def encode(
    item: object, generation: Generation = "2", operation: Operation = "add"
) -> dict[str, Any]:
    """The wire entry of one record at position 0."""
    return EntryEncoder(generation, operation).encode(item, 0)[1]


def reject(
    item: object, generation: Generation = "2", operation: Operation = "add", position: int = 41
) -> ValidationError:
    """The ValidationError that encoding ``item`` at ``position`` raises."""
    with pytest.raises(ValidationError) as info:
        EntryEncoder(generation, operation).encode(item, position)
    assert info.value.position == position
    return info.value


# -- audience names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a", id="one-char"),
        pytest.param("Winback_Q3-2024", id="all-classes"),
        pytest.param("x" * 255, id="255-chars"),
    ],
)
def test_valid_audience_names_are_returned(name: str) -> None:
    """Names of 1 to 255 characters from A-Z, a-z, 0-9, _ and - pass unchanged."""
    assert check_audience_name(name) is name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        pytest.param("", "name rule", id="empty"),
        pytest.param("x" * 256, "name rule", id="256-chars"),
        pytest.param("a b", "name rule", id="space"),
        pytest.param("winback\n", "name rule", id="trailing-newline"),
        pytest.param("café", "name rule", id="non-ascii"),
        pytest.param("a/b", "name rule", id="slash"),
        pytest.param(5, "must be a str, got int 5", id="int"),
        pytest.param(None, "must be a str, got NoneType None", id="none"),
        pytest.param(b"abc", "must be a str, got bytes", id="bytes"),
    ],
)
def test_invalid_audience_names_raise(name: object, rule: str) -> None:
    """A bad name raises ValidationError naming the rule and showing the name."""
    with pytest.raises(ValidationError) as info:
        check_audience_name(name)
    assert rule in info.value.rule
    assert info.value.position is None


def test_long_bad_names_are_shortened_in_the_message() -> None:
    """The message shows a long bad name cut short, never the whole of it."""
    with pytest.raises(ValidationError) as info:
        check_audience_name("é" * 1000)
    assert len(info.value.rule) < 200
    assert "..." in info.value.rule


# -- the encoder -----------------------------------------------------------------------------


def test_encoder_rejects_unknown_generation_and_operation() -> None:
    """The generation and operation are checked when the encoder is built."""
    with pytest.raises(ValueError, match="generation"):
        EntryEncoder("3", "add")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="operation"):
        EntryEncoder("2", "upsert")  # type: ignore[arg-type]


def test_custom_audience_1_0_has_no_replace() -> None:
    """A replace encoder for 1.0 raises UnsupportedOperation: 1.0 has no replace route."""
    with pytest.raises(UnsupportedOperation):
        EntryEncoder("1.0", "replace")


def test_encoder_repr_names_generation_and_operation() -> None:
    """The repr says what the encoder is for."""
    assert repr(EntryEncoder("1.1", "remove")) == "EntryEncoder('1.1', 'remove')"


@pytest.mark.parametrize(("generation", "operation"), GENERATIONS_AND_OPERATIONS)
@pytest.mark.parametrize(
    "item",
    [
        pytest.param("u-1", id="str"),
        pytest.param(Record("u-1"), id="record"),
        pytest.param({"id": "u-1"}, id="dict"),
        pytest.param({"id": "u-1", "attributes": None, "tags": None}, id="dict-nones"),
        pytest.param(MappingProxyType({"id": "u-1"}), id="mapping"),
        pytest.param(Color.RED, id="str-subclass"),
    ],
)
def test_plain_ids_encode_for_every_generation(
    generation: Generation, operation: Operation, item: object
) -> None:
    """An ID-only record is {"action", "id"} for updates and {"id"} for replace."""
    rid, entry = EntryEncoder(generation, operation).encode(item, 0)
    expected_id = "red" if item is Color.RED else "u-1"
    assert rid == expected_id
    assert type(rid) is str
    if operation == "replace":
        assert entry == {"id": expected_id}
    else:
        assert entry == {"action": operation, "id": expected_id}


def test_ids_are_sent_as_given() -> None:
    """Nothing is stripped or case-folded in an ID."""
    assert encode("  Mixed-Case ID\t")["id"] == "  Mixed-Case ID\t"


def test_full_record_in_1_1() -> None:
    """1.1 add sends typed attributes and tags, keyed as the spec's 1.1 example."""
    record = Record(
        "INSTALL-1",
        {
            "tier": 3,
            "plan": "gold",
            "ratio": 0.25,
            "last_seen": UTC_DT,
            "avatar": Url("https://example.com/a.png"),
            "interests": ["bikes", "cars"],
            "date(first_seen)": "2024-01-02T10:00:00",
            "url(home)": "https://example.com/",
        },
        ["vip", "beta"],
    )
    assert encode(record, "1.1") == {
        "action": "add",
        "id": "INSTALL-1",
        "attributes": {
            "tier": 3,
            "plan": "gold",
            "ratio": 0.25,
            "date(last_seen)": "2023-08-12T22:30:05Z",
            "url(avatar)": "https://example.com/a.png",
            "interests": ["bikes", "cars"],
            "date(first_seen)": "2024-01-02T10:00:00",
            "url(home)": "https://example.com/",
        },
        "tags": ["vip", "beta"],
    }


def test_replace_entries_have_no_action() -> None:
    """Replace entries carry id and attributes only (spec §5.5)."""
    assert encode(Record("C-1", {"score": 3}), "2", "replace") == {
        "id": "C-1",
        "attributes": {"score": 3},
    }
    assert encode({"id": "I-1", "tags": ["vip"]}, "1.1", "replace") == {
        "id": "I-1",
        "tags": ["vip"],
    }


def test_keys_absent_when_the_record_has_none() -> None:
    """No "attributes" or "tags" key is sent for a record without them."""
    assert encode(Record("u-1", None, None), "1.1") == {"action": "add", "id": "u-1"}


def test_empty_containers_are_sent_where_allowed() -> None:
    """An explicitly empty mapping or list is sent as given where attributes/tags are allowed."""
    assert encode(Record("u-1", {}, []), "1.1") == {
        "action": "add",
        "id": "u-1",
        "attributes": {},
        "tags": [],
    }


@pytest.mark.parametrize(
    ("generation", "operation"),
    [
        pytest.param("1.0", "add", id="1.0-add"),
        pytest.param("2", "remove", id="2-remove"),
        pytest.param("1.1", "remove", id="1.1-remove"),
        pytest.param("2", "add", id="2-add-tags"),
    ],
)
def test_empty_containers_are_left_out_where_refused(
    generation: Generation, operation: Operation
) -> None:
    """An empty mapping or list carries nothing, so it is left out where it is not allowed."""
    entry = encode({"id": "u-1", "attributes": {}, "tags": ()}, generation, operation)
    assert "tags" not in entry
    if generation == "2" and operation == "add":
        assert entry["attributes"] == {}
    else:
        assert "attributes" not in entry


# -- typed values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(UTC_DT, "2023-08-12T22:30:05Z", id="utc"),
        pytest.param(UTC_DT.replace(microsecond=7), "2023-08-12T22:30:05.000007Z", id="micro"),
        pytest.param(
            datetime(2023, 8, 13, 0, 30, 5, tzinfo=PARIS_SUMMER),
            "2023-08-12T22:30:05Z",
            id="offset",
        ),
        pytest.param(
            datetime(2024, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
            "2023-12-31T23:30:00Z",
            id="offset-crosses-year",
        ),
        pytest.param(
            datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC), "0999-01-02T03:04:05Z", id="year-below-1000"
        ),
        pytest.param(
            datetime(2023, 8, 12, 22, 30, 5, tzinfo=timezone(timedelta(0))),
            "2023-08-12T22:30:05Z",
            id="other-utc-object",
        ),
    ],
)
def test_datetimes_become_date_keys_in_utc(value: datetime, text: str) -> None:
    """A datetime under "k" is sent as date(k): UTC ISO-8601 with Z, microseconds kept."""
    assert encode(Record("u-1", {"joined": value}))["attributes"] == {"date(joined)": text}


def test_datetime_under_a_date_key_keeps_the_key() -> None:
    """A datetime under an already written date(k) key is encoded the same way."""
    entry = encode(Record("u-1", {"date(joined)": UTC_DT}))
    assert entry["attributes"] == {"date(joined)": "2023-08-12T22:30:05Z"}


def test_datetime_subclass_is_encoded_by_its_own_isoformat() -> None:
    """A datetime subclass is encoded too (it may hold more precision than datetime)."""

    class Stamp(datetime):
        pass

    value = Stamp(2023, 8, 12, 22, 30, 5, 1, tzinfo=UTC)
    entry = encode(Record("u-1", {"joined": value}))
    assert entry["attributes"] == {"date(joined)": "2023-08-12T22:30:05.000001Z"}


@given(aware_datetimes())
def test_datetime_encoding_round_trips(value: datetime) -> None:
    """The wire text of any aware datetime parses back to the same instant, in UTC."""
    text = encode(Record("u-1", {"at": value}))["attributes"]["date(at)"]
    assert text.endswith("Z")
    assert len(text) in (20, 27)
    assert datetime.fromisoformat(text) == value


def test_url_values_become_url_keys() -> None:
    """A Url under "k" is sent as url(k), as a plain str."""
    entry = encode(Record("u-1", {"avatar": Url("https://example.com/a.png")}))
    assert entry["attributes"] == {"url(avatar)": "https://example.com/a.png"}
    assert type(entry["attributes"]["url(avatar)"]) is str


def test_arrays_are_copied() -> None:
    """An array is sent as a fresh list: changing the user's list later cannot reach the wire."""
    interests = ["bikes"]
    tags = ["vip"]
    entry = encode(Record("u-1", {"interests": interests}, tags), "1.1")
    interests.append("cars")
    tags.append("new")
    assert entry["attributes"]["interests"] == ["bikes"]
    assert entry["tags"] == ["vip"]
    assert encode(Record("u-1", {"interests": ("a", "b")}))["attributes"]["interests"] == ["a", "b"]


def test_subclasses_are_sent_as_plain_values() -> None:
    """StrEnum and IntEnum values, keys and IDs go out as the plain str/int they stand for."""
    rid, entry = EntryEncoder("1.1", "add").encode(
        Record(
            Color.RED, {Color.RED: Color.RED, "level": Level.HIGH, "list": [Color.RED]}, [Color.RED]
        ),
        0,
    )
    assert rid == "red"
    assert entry["attributes"] == {"red": "red", "level": 3, "list": ["red"]}
    assert entry["tags"] == ["red"]
    values = [
        rid,
        *entry["attributes"],
        *entry["attributes"].values(),
        *entry["attributes"]["list"],
    ]
    assert all(type(v) in (str, int, list) for v in values)
    assert type(entry["attributes"]["level"]) is int
    assert type(entry["tags"][0]) is str


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x" * 300, id="str-300"),
        pytest.param("", id="str-empty"),
        pytest.param(2**63 - 1, id="int-max"),
        pytest.param(-(2**63), id="int-min"),
        pytest.param(-0.0, id="float"),
        pytest.param(["x"] * 25, id="array-25"),
        pytest.param([], id="array-empty"),
    ],
)
def test_values_at_their_limits_pass(value: Any) -> None:
    """Values exactly at a limit are sent unchanged."""
    assert encode(Record("u-1", {"v": value}))["attributes"] == {"v": value}


def test_fifteen_attributes_pass() -> None:
    """15 attributes is the limit, not over it."""
    given_attributes = {f"k{i}": i for i in range(MAX_ATTRIBUTES)}
    assert encode(Record("u-1", given_attributes))["attributes"] == given_attributes


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("a", id="one-char"),
        pytest.param("a" * 30, id="30-chars"),
        pytest.param("att_15", id="underscore-digits"),
        pytest.param("date(" + "a" * 30 + ")", id="date-30"),
    ],
)
def test_valid_keys_pass(key: str) -> None:
    """Keys of the key rule pass as given."""
    value = "2024-01-02T10:00:00Z" if key.startswith("date(") else 1
    assert encode(Record("u-1", {key: value}))["attributes"] == {key: value}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2012-08-12T22:30:05", id="no-zone"),
        pytest.param("2023-08-12T22:30:05Z", id="z"),
        pytest.param("2023-08-12T22:30:05.123+02:00", id="offset"),
    ],
)
def test_date_strings_are_sent_as_given(text: str) -> None:
    """An ISO-8601 str under a date(k) key is checked and sent unchanged."""
    assert encode(Record("u-1", {"date(att15)": text}))["attributes"] == {"date(att15)": text}


def test_key_verdicts_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each key is judged once; later records reuse the verdict instead of running the regex."""
    encoder = EntryEncoder("2", "add")
    encoder.encode(Record("u-1", {"cached_key_1": 1}), 0)
    assert "cached_key_1" in _validate._KEYS

    def fail(key: object) -> Any:
        raise AssertionError(f"key {key!r} judged twice")

    monkeypatch.setattr(_validate, "_learn_key", fail)
    for position in range(3):
        encoder.encode(Record("u-1", {"cached_key_1": position}), position)


def test_key_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream with ever-new keys does not grow the cache without bound."""
    monkeypatch.setattr(_validate, "_KEY_CACHE_MAX", 10)
    monkeypatch.setattr(_validate, "_KEYS", {})
    encoder = EntryEncoder("2", "add")
    for n in range(100):
        encoder.encode(Record("u-1", {f"k{n}": n}), n)
    assert len(_validate._KEYS) <= 10


@given(data=st.data(), kind=st.sampled_from(GENERATIONS_AND_OPERATIONS))
def test_valid_records_encode(data: st.DataObject, kind: tuple[Generation, Operation]) -> None:
    """Any valid record encodes, keeps its ID, and its entry holds what the record gave."""
    generation, operation = kind
    item = data.draw(records(generation, operation))
    rid, entry = EntryEncoder(generation, operation).encode(item, 3)
    given_id: object
    given_attributes: Any = None
    given_tags: Any = None
    if isinstance(item, Record):
        given_id, given_attributes, given_tags = item.id, item.attributes, item.tags
    elif isinstance(item, Mapping):
        given_id, given_attributes, given_tags = (
            item["id"],
            item.get("attributes"),
            item.get("tags"),
        )
    else:
        given_id = item
    assert rid == entry["id"] == given_id
    assert ("action" in entry) == (operation != "replace")
    assert len(entry.get("attributes") or {}) == len(given_attributes or {})
    assert entry.get("tags") == (None if given_tags is None else list(given_tags))


@given(attributes())
def test_attribute_wire_keys_follow_the_value_types(given_attributes: dict[str, Any]) -> None:
    """Datetimes go under date(...), Urls under url(...), everything else under its own key."""
    wire = encode(Record("u-1", given_attributes))["attributes"]
    assert len(wire) == len(given_attributes)
    for key, value in given_attributes.items():
        if isinstance(value, datetime):
            wire_key = key if key.startswith("date(") else f"date({key})"
            assert datetime.fromisoformat(wire[wire_key]) == value
        elif isinstance(value, Url):
            wire_key = key if key.startswith("url(") else f"url({key})"
            assert wire[wire_key] == str(value)
        elif isinstance(value, tuple):
            assert wire[key] == list(value)
        else:
            assert wire[key] == value


# -- rule violations -------------------------------------------------------------------------

KEY_RULE = (
    "breaks the key rule: lowercase a-z, 0-9 and _, at most 30 characters, "
    "optionally wrapped as date(...) or url(...)"
)


@pytest.mark.parametrize(
    ("item", "rule"),
    [
        pytest.param(5, "a record must be a str ID, a Record or a mapping", id="int"),
        pytest.param(None, "got NoneType None", id="none"),
        pytest.param(b"u-1", "got bytes b'u-1' (decode it to str first)", id="bytes"),
        pytest.param(["u-1"], "got list", id="list"),
        pytest.param("", "id must be a non-empty str, got str ''", id="empty-str"),
        pytest.param("u-\ud800", "lone surrogate", id="surrogate"),
        pytest.param(Record(""), "id must be a non-empty str", id="record-empty-id"),
        pytest.param(Record(5), "id must be a non-empty str, got int 5", id="record-int-id"),  # type: ignore[arg-type]
        pytest.param(Record(b"u"), "got bytes b'u' (decode", id="record-bytes-id"),  # type: ignore[arg-type]
        pytest.param({"ID": "u-1"}, "needs an 'id' key, got keys ['ID']", id="dict-no-id"),
        pytest.param({"id": None}, "id must be a non-empty str, got NoneType", id="dict-none-id"),
        pytest.param({"id": 7}, "id must be a non-empty str, got int 7", id="dict-int-id"),
    ],
)
def test_bad_items_and_ids(item: object, rule: str) -> None:
    """A record that is not a record, or has no valid ID, raises with no record_id."""
    error = reject(item)
    assert rule in error.rule
    assert error.record_id is None
    assert str(error).startswith("record 41: ")


def test_unknown_record_keys_are_named() -> None:
    """A mapping key other than id/attributes/tags is an error naming the key, not ignored."""
    error = reject({"id": "u-1", "attributes": {}, "atributes": {"x": 1}})
    assert error.rule == "record key 'atributes' is not one of 'id', 'attributes', 'tags'"
    assert error.record_id == "u-1"
    assert str(error) == (
        "record 41, id 'u-1': record key 'atributes' is not one of 'id', 'attributes', 'tags'"
    )


@pytest.mark.parametrize(
    ("attributes_given", "rule"),
    [
        pytest.param({"Score": 1}, f"attribute key 'Score' {KEY_RULE}", id="uppercase-key"),
        pytest.param({"a" * 31: 1}, KEY_RULE, id="31-char-key"),
        pytest.param({"": 1}, f"attribute key '' {KEY_RULE}", id="empty-key"),
        pytest.param({"my-key": 1}, KEY_RULE, id="dash-key"),
        pytest.param({"date(x": "2024-01-01"}, KEY_RULE, id="unbalanced-open"),
        pytest.param({"x)": 1}, KEY_RULE, id="unbalanced-close"),
        pytest.param({"time(x)": 1}, KEY_RULE, id="unknown-wrapper"),
        pytest.param({"date()": "2024-01-01"}, KEY_RULE, id="empty-wrapped"),
        pytest.param({5: 1}, f"attribute key 5 {KEY_RULE}", id="int-key"),
        pytest.param(
            {f"k{i}": i for i in range(16)},
            "16 attributes break the limit of 15 attributes per entry",
            id="16-attributes",
        ),
        pytest.param(
            {"vip": True},
            "attribute 'vip' is a bool (True): booleans are not an audience attribute type",
            id="bool",
        ),
        pytest.param({"s": float("nan")}, "attribute 's' is nan: numbers must be finite", id="nan"),
        pytest.param({"s": float("-inf")}, "is -inf: numbers must be finite", id="inf"),
        pytest.param({"n": 2**63}, "integers must fit in 64 bits", id="int-too-big"),
        pytest.param({"n": -(2**63) - 1}, "integers must fit in 64 bits", id="int-too-small"),
        pytest.param(
            {"bio": "x" * 301},
            "attribute 'bio' is a str of 301 characters: str values are at most 300 characters",
            id="str-301",
        ),
        pytest.param({"bio": "a\udc80"}, "lone surrogate", id="str-surrogate"),
        pytest.param({"x": None}, "attribute 'x' has unsupported type NoneType", id="none"),
        pytest.param({"x": {"a": 1}}, "unsupported type dict", id="dict"),
        pytest.param({"x": b"a"}, "unsupported type bytes", id="bytes"),
        pytest.param({"x": {"a"}}, "unsupported type set", id="set"),
        pytest.param({"x": Decimal("1.5")}, "unsupported type Decimal", id="decimal"),
        pytest.param({"x": date(2024, 1, 1)}, "unsupported type date", id="date"),
        pytest.param(
            {"x": ["a"] * 26},
            "attribute 'x' has 26 items: arrays are at most 25 str",
            id="array-26",
        ),
        pytest.param(
            {"x": ["a", 1]},
            "attribute 'x' item 1 is int 1: array items must be str",
            id="array-int",
        ),
        pytest.param({"x": ["a" * 301]}, "attribute 'x' item 0 is a str of 301", id="array-long"),
        pytest.param({"x": [Url("https://a.example")]}, "array items must be str", id="array-url"),
        pytest.param(
            {"joined": datetime(2024, 1, 1)},
            "attribute 'joined' is a naive datetime (2024-01-01T00:00:00): "
            "give a timezone-aware value",
            id="naive-datetime",
        ),
        pytest.param(
            {"joined": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))},
            "out of range once in UTC",
            id="datetime-overflow",
        ),
        pytest.param(
            {"joined": UTC_DT, "date(joined)": "2024-01-01"},
            "attribute keys 'joined' and 'date(joined)' both become wire key 'date(joined)'",
            id="typed-collision",
        ),
        pytest.param(
            {"url(avatar)": "https://a.example", "avatar": Url("https://b.example")},
            "both become wire key 'url(avatar)'",
            id="url-collision",
        ),
        pytest.param(
            {"date(joined)": "yesterday"},
            "attribute 'date(joined)' value 'yesterday' is not an ISO-8601 date-time",
            id="date-text",
        ),
        pytest.param(
            {"date(joined)": 1700000000},
            "attribute 'date(joined)' takes an ISO-8601 date-time str or a timezone-aware "
            "datetime, got int 1700000000",
            id="date-int",
        ),
        pytest.param(
            {"date(joined)": Url("https://a.example")},
            "takes an ISO-8601 date-time str or a timezone-aware datetime, got Url(",
            id="date-url",
        ),
        pytest.param(
            {"date(joined)": datetime(2024, 1, 1)}, "naive datetime", id="date-naive-datetime"
        ),
        pytest.param(
            {"url(avatar)": UTC_DT},
            "attribute 'url(avatar)' takes an absolute http or https URL str or a Url, "
            "got datetime",
            id="url-datetime",
        ),
        pytest.param({"url(avatar)": ["a"]}, "takes an absolute http or https URL", id="url-list"),
        pytest.param(
            {"url(avatar)": "ftp://a.example/x"},
            "attribute 'url(avatar)' value 'ftp://a.example/x' is not an absolute http or https "
            "URL",
            id="url-scheme",
        ),
        pytest.param({"url(avatar)": "/a.png"}, "not an absolute http", id="url-relative"),
        pytest.param({"url(avatar)": "https://"}, "not an absolute http", id="url-no-host"),
        pytest.param(
            {"url(avatar)": "https://a b.example"}, "not an absolute http", id="url-space"
        ),
        pytest.param({"url(avatar)": "https://a.example/\n"}, "not an absolute", id="url-newline"),
        pytest.param({"url(avatar)": "https://[::1"}, "not an absolute http", id="url-bad-ipv6"),
        pytest.param(
            {"url(avatar)": "https://a.example/" + "a" * 2031},
            "attribute 'url(avatar)' is a URL of 2049 characters: URLs are at most 2048 characters",
            id="url-2049",
        ),
        pytest.param({"avatar": Url("mailto:a@b.example")}, "not an absolute http", id="url-value"),
    ],
)
def test_attribute_rules(attributes_given: dict[Any, Any], rule: str) -> None:
    """Each attribute rule raises with the position, the record's ID and a rule text."""
    error = reject(Record("C-1", attributes_given))
    assert rule in error.rule
    assert error.record_id == "C-1"
    assert str(error).startswith("record 41, id 'C-1': ")


def test_url_at_its_limit_passes() -> None:
    """A URL of exactly 2048 characters is sent."""
    url = "https://a.example/" + "a" * 2030
    assert len(url) == 2048
    assert encode(Record("u-1", {"url(avatar)": url}))["attributes"] == {"url(avatar)": url}


@pytest.mark.parametrize(
    ("item", "generation", "operation", "rule"),
    [
        pytest.param(
            Record("u-1", {"x": 1}),
            "1.0",
            "add",
            "Custom Audience API 1.0 takes no attributes",
            id="1.0-attrs",
        ),
        pytest.param(
            Record("u-1", {"x": 1}),
            "2",
            "remove",
            "attributes are only sent with add",
            id="2-remove-attrs",
        ),
        pytest.param(
            Record("u-1", {"x": 1}),
            "1.1",
            "remove",
            "attributes are only sent with add",
            id="1.1-remove-attrs",
        ),
        pytest.param(
            Record("u-1", tags=["vip"]),
            "2",
            "add",
            "tags are only supported by Custom Audience API 1.1, not Audience API 2.x",
            id="2-tags",
        ),
        pytest.param(
            Record("u-1", tags=["vip"]),
            "1.0",
            "add",
            "tags are only supported by Custom Audience API 1.1, not Custom Audience API 1.0",
            id="1.0-tags",
        ),
        pytest.param(
            Record("u-1", tags=["vip"]),
            "2",
            "replace",
            "only supported by Custom Audience API 1.1",
            id="2-replace-tags",
        ),
        pytest.param(
            Record("u-1", tags=["vip"]),
            "1.1",
            "remove",
            "tags are only sent with add",
            id="1.1-remove-tags",
        ),
        pytest.param(
            Record("u-1", tags=["VIP"]),
            "1.1",
            "add",
            "tag 'VIP' breaks the tag rule: a non-empty lowercase str of at most 64 characters",
            id="uppercase-tag",
        ),
        pytest.param(
            Record("u-1", tags=[""]), "1.1", "add", "tag '' breaks the tag rule", id="empty-tag"
        ),
        pytest.param(
            Record("u-1", tags=["x" * 65]), "1.1", "add", "breaks the tag rule", id="65-char-tag"
        ),
        pytest.param(
            Record("u-1", tags=[3]),  # type: ignore[list-item]
            "1.1",
            "add",
            "tag int 3 breaks the tag rule",
            id="int-tag",
        ),
        pytest.param(
            Record("u-1", tags=["a\ud800"]), "1.1", "add", "lone surrogate", id="surrogate-tag"
        ),
        pytest.param(
            Record("u-1", tags="vip"),
            "1.1",
            "add",
            "tags must be a list or tuple of str, got str 'vip'",
            id="str-tags",
        ),
        pytest.param(Record("u-1", tags={"vip"}), "1.1", "add", "got set", id="set-tags"),  # type: ignore[arg-type]
        pytest.param(
            Record("u-1", [("x", 1)]),  # type: ignore[arg-type]
            "2",
            "add",
            "attributes must be a mapping of key to value, got list",
            id="list-attributes",
        ),
    ],
)
def test_generation_and_operation_rules(
    item: object, generation: Generation, operation: Operation, rule: str
) -> None:
    """Attributes and tags are refused where the generation or operation has none."""
    error = reject(item, generation, operation)
    assert rule in error.rule
    assert error.record_id == "u-1"


def test_tags_keep_their_64_character_limit() -> None:
    """A 64-character lowercase tag passes, unchanged."""
    assert encode(Record("u-1", tags=["x" * 64, "été"]), "1.1")["tags"] == ["x" * 64, "été"]


@pytest.mark.parametrize(("generation", "operation"), GENERATIONS_AND_OPERATIONS)
@given(bad=invalid_records())
def test_invalid_records_fail_everywhere(
    generation: Generation, operation: Operation, bad: object
) -> None:
    """The strategy's invalid records break a rule in every generation and operation."""
    reject(bad, generation, operation, position=9)


def test_validation_errors_survive_pickling() -> None:
    """A ValidationError from the encoder keeps its fields through pickle (multiprocessing)."""
    error = reject(Record("C-1", {"x": None}))  # type: ignore[dict-item]
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.rule, copy.position, copy.record_id) == (error.rule, 41, "C-1")
