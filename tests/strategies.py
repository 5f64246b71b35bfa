"""Hypothesis strategies for records and record streams, valid for a generation and operation."""

from __future__ import annotations

import string
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from batch_audience._models import Record, Url
from batch_audience._validate import (
    MAX_ARRAY_ITEMS,
    MAX_ATTRIBUTES,
    MAX_STRING_LENGTH,
    MAX_TAG_LENGTH,
    Generation,
    Operation,
)

__all__ = [
    "GENERATIONS_AND_OPERATIONS",
    "attribute_keys",
    "attributes",
    "aware_datetimes",
    "invalid_records",
    "record_ids",
    "records",
    "streams",
    "tag_lists",
    "urls",
]

# Every (generation, operation) an EntryEncoder can be built for.
GENERATIONS_AND_OPERATIONS: list[tuple[Generation, Operation]] = [
    ("1.0", "add"),
    ("1.0", "remove"),
    ("1.1", "add"),
    ("1.1", "remove"),
    ("1.1", "replace"),
    ("2", "add"),
    ("2", "remove"),
    ("2", "replace"),
]

# Any character that can be encoded: no lone surrogates.
_TEXT = st.characters(codec="utf-8")


def record_ids() -> st.SearchStrategy[str]:
    """Valid IDs: non-empty str, with a few repeats so chunks hold duplicate IDs."""
    return st.one_of(
        st.sampled_from(["u-1", "u-2", "INSTALL-3", "é-4"]),
        st.text(_TEXT, min_size=1, max_size=24),
    )


def attribute_keys() -> st.SearchStrategy[str]:
    """Plain attribute keys: lowercase a-z, 0-9 and _, 1 to 30 characters."""
    return st.text(string.ascii_lowercase + string.digits + "_", min_size=1, max_size=30)


def aware_datetimes() -> st.SearchStrategy[datetime]:
    """Timezone-aware datetimes whose UTC value stays in datetime's range."""
    offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
    return st.datetimes(
        min_value=datetime(2, 1, 1),
        max_value=datetime(9998, 12, 30),
        timezones=st.just(UTC) | offsets,
    )


def urls() -> st.SearchStrategy[str]:
    """Absolute http(s) URLs."""
    return st.builds(
        "{}://{}.example/{}".format,
        st.sampled_from(["http", "https", "HTTPS"]),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9_./%-]{0,40}", fullmatch=True),
    )


def _iso_texts() -> st.SearchStrategy[str]:
    """ISO-8601 date-time strings as Batch's examples write them: with Z, an offset, or no zone."""
    naive = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))
    return st.builds(
        lambda dt, tail: dt.isoformat() + tail, naive, st.sampled_from(["", "Z", "+02:00"])
    )


def _plain_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(_TEXT, max_size=12),
        st.text(_TEXT, min_size=MAX_STRING_LENGTH, max_size=MAX_STRING_LENGTH),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.lists(st.text(_TEXT, max_size=4), max_size=MAX_ARRAY_ITEMS),
        st.tuples(st.text(_TEXT, max_size=5)),
        aware_datetimes(),
        urls().map(Url),
    )


@st.composite
def _attribute(draw: st.DrawFn, base: str) -> tuple[str, Any]:
    """One attribute for a base name: a plain key with any value, or a wire-form typed key."""
    form = draw(st.sampled_from(["plain", "date", "url"]))
    if form == "date":
        return f"date({base})", draw(_iso_texts() | aware_datetimes())
    if form == "url":
        return f"url({base})", draw(urls() | urls().map(Url))
    return base, draw(_plain_values())


@st.composite
def attributes(draw: st.DrawFn, max_size: int = MAX_ATTRIBUTES) -> dict[str, Any]:
    """Valid attributes: distinct base names, so no two keys become one wire key."""
    bases = draw(st.lists(attribute_keys(), unique=True, max_size=max_size))
    return dict(draw(_attribute(base)) for base in bases)


def tag_lists() -> st.SearchStrategy[list[str]]:
    """Valid tags: non-empty lowercase str of at most 64 characters."""
    lowercase = st.characters(codec="utf-8").filter(lambda c: c.lower() == c)
    tag = st.text(lowercase, min_size=1, max_size=12) | st.just("x" * MAX_TAG_LENGTH)
    return st.lists(tag, max_size=4)


@st.composite
def records(draw: st.DrawFn, generation: Generation, operation: Operation) -> object:
    """A record valid for the generation and operation, as a str, a Record or a dict."""
    rid = draw(record_ids())
    with_attributes = generation != "1.0" and operation != "remove"
    with_tags = generation == "1.1" and operation != "remove"
    attrs: Mapping[str, Any] | None = (
        draw(st.none() | attributes(max_size=5)) if with_attributes else None
    )
    tags: list[str] | None = draw(st.none() | tag_lists()) if with_tags else None
    shape = draw(st.sampled_from(["str", "record", "dict"]))
    if shape == "str" or (
        shape == "dict" and attrs is None and tags is None and draw(st.booleans())
    ):
        return rid
    if shape == "record":
        return Record(rid, attrs, tags)
    item: dict[str, Any] = {"id": rid}
    if attrs is not None:
        item["attributes"] = attrs
    if tags is not None:
        item["tags"] = tags
    return item


@st.composite
def streams(
    draw: st.DrawFn, generation: Generation, operation: Operation, max_size: int = 40
) -> list[object]:
    """A short stream of valid records (chunk sizes in tests are small to cross boundaries)."""
    return draw(st.lists(records(generation, operation), max_size=max_size))


def invalid_records() -> st.SearchStrategy[object]:
    """Records that break a rule in every generation and operation."""
    return st.sampled_from(
        [
            5,
            None,
            b"u-1",
            "",
            ["u-1"],
            {"ID": "u-1"},
            {"id": "u-1", "extra": 1},
            {"id": 7},
            Record(""),
            Record("u-1", {"Score": 1}),
            Record("u-1", {"score": True}),
            Record("u-1", {"joined": datetime(2024, 1, 1)}),
            Record("u-1", tags=["VIP"]),
            Record("u-1", tags="vip"),
        ]
    )
