"""Intake's fast path sends exactly what EntryEncoder sends, and refuses exactly what it refuses.

EntryEncoder is the authority on the rules (tests/unit/test_validate.py and the record fuzzing
check it against the documentation); Intake must give the same bytes for every record it
accepts and the same ValidationError (message, position, ID) for every record it refuses,
whatever the mix of key sets, types and odd values in a stream, with its caches warm or cold.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import batch_audience as ba
from batch_audience._intake import Intake
from batch_audience._validate import EntryEncoder, Generation, Operation
from tests.strategies import streams
from tests.unit.test_fuzz_records import GENERATIONS_AND_OPERATIONS, fuzz_records

EXAMPLES = 300


def expected(
    items: list[object], generation: Generation, operation: Operation, start: int
) -> tuple[bytes, set[str]] | ba.ValidationError:
    """The bytes and IDs EntryEncoder gives for ``items``, or the error it raises first."""
    encoder = EntryEncoder(generation, operation)
    parts: list[bytes] = []
    ids: set[str] = set()
    for at, item in enumerate(items, start):
        try:
            rid, entry = encoder.encode(item, at)
        except ba.ValidationError as err:
            return err
        ids.add(rid)
        parts.append(orjson.dumps(entry))
    return b",".join(parts), ids


def taken(
    intake: Intake, items: list[object], start: int, step: int
) -> tuple[bytes, set[str]] | ba.ValidationError:
    """What Intake gives for ``items``, pulled ``step`` at a time from one iterator."""
    source = iter(items)
    parts: list[bytes] = []
    ids: set[str] = set()
    position = start
    while True:
        try:
            count, part = intake.take(source, step, position, ids)
        except ba.ValidationError as err:
            return err
        if count:
            parts.append(bytes(part))
        position += count
        if count < step:
            return b",".join(parts), ids


def assert_same(
    got: tuple[bytes, set[str]] | ba.ValidationError,
    want: tuple[bytes, set[str]] | ba.ValidationError,
) -> None:
    if isinstance(want, ba.ValidationError):
        assert isinstance(got, ba.ValidationError), f"accepted what EntryEncoder refuses: {want}"
        assert (str(got), got.position, got.record_id) == (
            str(want),
            want.position,
            want.record_id,
        )
    else:
        assert not isinstance(got, ba.ValidationError), f"refused what EntryEncoder sends: {got}"
        assert got == want


@settings(max_examples=EXAMPLES)
@given(
    items=st.lists(fuzz_records(), max_size=12),
    case=st.sampled_from(GENERATIONS_AND_OPERATIONS),
    start=st.integers(0, 10**9),
    step=st.integers(1, 5),
)
def test_odd_records_give_the_encoders_bytes_or_its_error(
    items: list[object], case: tuple[Generation, Operation], start: int, step: int
) -> None:
    """Any mix of odd records: the same bytes, IDs and first error as EntryEncoder."""
    generation, operation = case
    intake = Intake(generation, operation)
    assert_same(taken(intake, items, start, step), expected(items, generation, operation, start))


@settings(max_examples=EXAMPLES)
@given(data=st.data(), case=st.sampled_from(GENERATIONS_AND_OPERATIONS), step=st.integers(1, 9))
def test_valid_streams_give_the_encoders_bytes(
    data: st.DataObject, case: tuple[Generation, Operation], step: int
) -> None:
    """Valid streams, one Intake reused across them (warm caches): the encoder's bytes."""
    generation, operation = case
    intake = Intake(generation, operation)
    for _ in range(2):
        items = data.draw(streams(generation, operation, max_size=20))
        assert_same(taken(intake, items, 0, step), expected(items, generation, operation, 0))


def test_a_source_that_reuses_its_dicts_is_sent_as_each_was_when_yielded() -> None:
    """A generator that mutates one attributes dict and one tags list between yields."""

    def reuse() -> Iterator[dict[str, Any]]:
        attributes: dict[str, Any] = {}
        tags: list[str] = []
        for n in range(60):
            attributes["n"] = n
            attributes["date(seen)"] = f"2024-01-{n % 28 + 1:02d}T00:00:00Z"
            tags[:] = [f"t{n}"]
            yield {"id": f"u-{n}", "attributes": attributes, "tags": tags}

    ids: set[str] = set()
    count, body = Intake("1.1", "add").take(reuse(), 100, 0, ids)
    entries = orjson.loads(b"[" + bytes(body) + b"]")
    assert count == 60 == len(ids)
    assert [e["attributes"]["n"] for e in entries] == list(range(60))
    assert [e["tags"] for e in entries] == [[f"t{n}"] for n in range(60)]


class Key(enum.StrEnum):
    """Attribute keys as an enum: they equal the plain keys of an earlier key set."""

    PLAN = "plan"
    AGE = "age"


def test_enum_keys_after_plain_keys_are_sent_as_plain_keys() -> None:
    """A key set matched by equality but made of str subclasses still encodes as plain str."""
    items: list[object] = [
        {"id": "a", "attributes": {"plan": "pro", "age": 3}},
        {"id": "b", "attributes": {Key.PLAN: "free", Key.AGE: 4}},
    ]
    assert_same(taken(Intake("2", "add"), items, 0, 2), expected(items, "2", "add", 0))


def test_changing_key_sets_are_each_checked() -> None:
    """Alternating key sets each get their own checks: a bad value under either is refused."""
    intake = Intake("2", "add")
    good: list[object] = [
        {"id": f"u-{n}", "attributes": {"a": n} if n % 2 else {"b": "x", "url(c)": "https://e.x/"}}
        for n in range(10)
    ]
    assert_same(taken(intake, good, 0, 3), expected(good, "2", "add", 0))
    bad = [*good, {"id": "bad", "attributes": {"b": "x", "url(c)": "ftp://e.x/"}}]
    got = taken(intake, bad, 0, 3)
    assert isinstance(got, ba.ValidationError)
    assert (got.position, got.record_id) == (10, "bad")
    assert "url(c)" in str(got)


@pytest.mark.parametrize(
    ("attributes", "rule"),
    [
        ({"n": 2**63}, "64 bits"),
        ({"n": float("nan")}, "finite"),
        ({"n": True}, "bool"),
        ({"s": "x" * 301}, "300"),
        ({"date(d)": "yesterday"}, "ISO-8601"),
        ({f"k{n}": n for n in range(16)}, "15"),
        ({"Bad": 1}, "key rule"),
    ],
)
def test_a_warm_key_set_still_checks_every_value(attributes: dict[str, Any], rule: str) -> None:
    """After good records with the same keys, a bad value is refused with its rule and place."""
    # The good records carry a valid key set of the same shape (at most 15 lowercase keys).
    keys = [k.lower() for k in attributes][:15]
    good = {k: (1 if not k.startswith("date(") else "2024-01-01T00:00:00Z") for k in keys}
    if "s" in good:
        good["s"] = "ok"
    items: list[object] = [{"id": f"u-{n}", "attributes": dict(good)} for n in range(5)]
    items.append({"id": "odd", "attributes": attributes})
    got = taken(Intake("2", "add"), items, 100, 4)
    assert isinstance(got, ba.ValidationError)
    assert (got.position, got.record_id) == (105, "odd")
    assert rule in str(got)


def test_datetime_values_are_converted_as_the_encoder_does() -> None:
    """Values that need converting (datetime, Url) take the encoder's path, same bytes."""
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    items: list[object] = [
        ba.Record("a", {"seen": when, "site": ba.Url("https://e.x/a")}),
        {"id": "b", "attributes": {"seen": "text"}},
    ]
    assert_same(taken(Intake("2", "add"), items, 0, 5), expected(items, "2", "add", 0))


@settings(max_examples=EXAMPLES)
@given(
    items=st.lists(fuzz_records(), min_size=1, max_size=6),
    case=st.sampled_from(GENERATIONS_AND_OPERATIONS),
)
def test_encode_one_record_matches_the_encoder(
    items: list[object], case: tuple[Generation, Operation]
) -> None:
    """``encode`` (the writer's path), record by record with warm caches: the encoder's bytes."""
    generation, operation = case
    intake = Intake(generation, operation)
    for at, item in enumerate(items):
        want = expected([item], generation, operation, at)
        try:
            rid, body = intake.encode(item, at)
        except ba.ValidationError as err:
            assert_same(err, want)
        else:
            assert_same((body, {rid}), want)


def test_converted_values_and_changing_types_under_one_key() -> None:
    """datetime and Url values (renamed keys), types changing under a key, zones, collisions."""
    from datetime import timedelta, timezone

    paris = timezone(timedelta(hours=1))
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    items: list[object] = [
        ba.Record("a", {"seen": when, "site": ba.Url("https://e.x/a"), "n": 1}),
        ba.Record(
            "b", {"seen": when.replace(microsecond=5), "site": ba.Url("https://e.x/b"), "n": 2}
        ),
        ba.Record("c", {"seen": "text now", "site": "plain", "n": 3}),
        ba.Record("d", {"seen": when.astimezone(paris), "site": ba.Url("https://e.x/d"), "n": 4}),
        {"id": "e", "attributes": {"date(seen)": when, "url(site)": ba.Url("https://e.x/e")}},
        {"id": "f", "attributes": {"date(seen)": "2024-01-01T00:00:00Z", "url(site)": "https://f"}},
        ba.Record("g", {"seen": when, "site": ba.Url("https://e.x/g"), "n": 7}),
    ]
    assert_same(taken(Intake("2", "add"), items, 0, 3), expected(items, "2", "add", 0))
    collide: list[object] = [*items, {"id": "h", "attributes": {"seen": when, "date(seen)": "x"}}]
    assert_same(taken(Intake("2", "add"), collide, 0, 4), expected(collide, "2", "add", 0))
    bad_url: list[object] = [*items, ba.Record("i", {"seen": when, "site": ba.Url("ftp://x")})]
    assert_same(taken(Intake("2", "add"), bad_url, 0, 4), expected(bad_url, "2", "add", 0))
