"""Fuzzing the record encoder: any input is sent exactly as documented or refused, typed."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import event, given, settings
from hypothesis import strategies as st

import batch_audience as ba
from batch_audience._validate import EntryEncoder

EXAMPLES = 400  # per property; the profile in conftest.py derandomizes them

texts = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()), max_size=40
) | st.sampled_from(["", "\u202eabc", "a\u200bb", "\x00", "\ud800", "x" * 301, "é" * 300])
keys = (
    st.sampled_from(["score", "plan", "date(joined)", "url(avatar)", "Bad", "", "a" * 31]) | texts
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.binary(max_size=8),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.datetimes(timezones=st.none() | st.just(UTC) | st.just(timezone(timedelta(hours=-5)))),
    st.builds(ba.Url, st.sampled_from(["https://e.com/a.png", "ftp://x", "not a url", ""])),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(texts, inner, max_size=3)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=8,
)
ids = texts | st.integers() | st.none() | st.binary(max_size=4)
records = st.one_of(
    ids,
    st.builds(
        lambda i, a, t: {"id": i, "attributes": a, "tags": t},
        ids,
        st.none() | st.dictionaries(keys, values, max_size=17),
        st.none() | st.lists(texts, max_size=3) | texts,
    ),
    st.dictionaries(texts, values, max_size=4),
)
generations = st.sampled_from(["1.0", "1.1", "2"])
operations = st.sampled_from(["add", "remove", "replace"])


def expected_value(key: str, value: Any) -> tuple[str, Any]:
    """The documented wire form of one valid attribute."""
    if isinstance(value, datetime):
        base = key[5:-1] if key.startswith("date(") else key
        text = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return f"date({base})", text
    if isinstance(value, ba.Url) and not key.startswith("url("):
        return f"url({key})", str(value)
    if isinstance(value, tuple):
        return key, list(value)
    return key, value


@settings(max_examples=EXAMPLES)
@given(record=records, generation=generations, operation=operations, position=st.integers(0, 10**9))
def test_encoder_sends_exactly_or_refuses(
    record: Any, generation: str, operation: str, position: int
) -> None:
    """Each input is either encoded as documented (and JSON-encodable) or a ValidationError."""
    if generation == "1.0" and operation == "replace":
        return  # 1.0 has no replace; covered by UnsupportedOperation tests
    encoder = EntryEncoder(generation, operation)  # type: ignore[arg-type]
    try:
        record_id, entry = encoder.encode(record, position)
    except ba.ValidationError as err:
        refused_at = err.position
        event("refused")
        assert refused_at == position
        return
    event("sent")
    orjson.dumps(entry)  # whatever was accepted can be sent
    given_id = record if isinstance(record, str) else record["id"]
    assert record_id == entry["id"] == given_id
    if operation == "replace":
        assert "action" not in entry
    else:
        assert entry["action"] == operation
    attributes = None if isinstance(record, str) else record.get("attributes")
    if attributes:
        sent = entry["attributes"]
        assert len(sent) == len(attributes)
        for key, value in attributes.items():
            wire_key, wire_value = expected_value(key, value)
            assert wire_key in sent
            got = sent[wire_key]
            if isinstance(wire_value, float) and math.isnan(wire_value):
                raise AssertionError("NaN must be refused")
            assert got == wire_value, (key, value, got)
            assert type(got) is not bool
    tags = None if isinstance(record, str) else record.get("tags")
    if tags:
        assert entry["tags"] == list(tags)


plain_keys = st.from_regex(r"[a-z0-9_]{1,30}", fullmatch=True)
valid_values = st.one_of(
    st.text(max_size=300).filter(lambda t: t.encode("utf-8", "surrogatepass") and t.isprintable()),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(alphabet="abc xyz", max_size=10), max_size=25),
    st.datetimes(timezones=st.just(UTC) | st.just(timezone(timedelta(hours=9, minutes=30)))),
    st.sampled_from([ba.Url("https://cdn.example.com/a.png"), ba.Url("http://e.com:8080/x?y=1")]),
)
valid_records = st.builds(
    ba.Record,
    st.text(min_size=1, max_size=40).filter(lambda t: t.isprintable()),
    st.dictionaries(plain_keys, valid_values, max_size=15),
)


@settings(max_examples=EXAMPLES)
@given(record=valid_records, generation=st.sampled_from(["1.1", "2"]))
def test_valid_records_are_sent_exactly(record: ba.Record, generation: str) -> None:
    """Records within every rule are accepted, with each value as given or as documented."""
    _, entry = EntryEncoder(generation, "add").encode(record, 0)  # type: ignore[arg-type]
    orjson.dumps(entry)
    assert entry["id"] == record.id
    attributes = dict(record.attributes or {})
    sent = entry.get("attributes", {})
    assert len(sent) == len(attributes)
    for key, value in attributes.items():
        wire_key, wire_value = expected_value(key, value)
        assert sent[wire_key] == wire_value
