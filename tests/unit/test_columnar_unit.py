"""Columnar sources send exactly what the record path sends for the same rows, and refuse the same.

The reference and how outcomes are compared: ``tests/columnar_paths.py``.
"""

from __future__ import annotations

import asyncio
import math
import string
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import batch_audience as ba
from batch_audience._chunker import Chunk, iter_chunks
from batch_audience._columnar import (
    INSTALL_COMMAND,
    ArrowIds,
    aiter_columnar,
    encode,
    extra,
    is_columnar,
    iter_columnar,
    stream,
)
from batch_audience._intake import Intake
from batch_audience._validate import Generation, Operation
from tests.columnar_paths import Outcome, both, intakes, outcome, records_of


def columnar(table: object, generation: Generation = "2", operation: Operation = "add") -> Outcome:
    """The columnar path's outcome alone."""
    intake, first = intakes(generation, operation)
    return outcome(iter_columnar(table, intake, size=10, first=first))


def schema_error(table: object, generation: Generation = "2", operation: Operation = "add") -> str:
    """The ValidationError the schema check raises, before any chunk."""
    chunks, (message, position, rid) = columnar(table, generation, operation)
    assert chunks == []
    assert message
    assert (position, rid) == (None, None)
    return message


# -- schema: judged once, before the first chunk -------------------------------------------------


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        pytest.param(pa.table({"name": ["a"]}), "needs an 'id' column", id="no-id"),
        pytest.param(pa.table({"id": [1]}), "IDs must be strings", id="id-int"),
        pytest.param(pa.table({"id": ["a"], "Age": [1]}), "breaks the key rule", id="bad-name"),
        pytest.param(
            pa.table({"id": ["a"], "s": pa.array([{"x": 1}])}), "cannot be sent", id="struct"
        ),
        pytest.param(pa.table({"id": ["a"], "b": pa.array([b"x"])}), "cannot be sent", id="binary"),
        pytest.param(pa.table({"id": ["a"], "ok": [True]}), "booleans", id="bool"),
        pytest.param(
            pa.table({"id": ["a"], "t": pa.array([0], pa.timestamp("s"))}),
            "give it a time zone",
            id="timestamp-without-zone",
        ),
        pytest.param(
            pa.table({"id": ["a"], "d": pa.array([0], pa.date32())}), "timestamp", id="date32"
        ),
        pytest.param(
            pa.table({"id": ["a"], "l": pa.array([[1]])}), "cannot be sent", id="list-of-int"
        ),
        pytest.param(
            pa.table({"id": ["a"], **{f"a{i}": [i] for i in range(16)}}),
            "16 attribute columns break the limit of 15",
            id="sixteen-attributes",
        ),
        pytest.param(pa.table({"id": ["a"], "date(x)": [1]}), "takes ISO-8601", id="date-key-int"),
        pytest.param(pa.table({"id": ["a"], "url(x)": [1]}), "takes absolute", id="url-key-int"),
        pytest.param(
            pa.table(
                {"id": ["a"], "x": pa.array([0], pa.timestamp("s", "UTC")), "date(x)": ["2020"]}
            ),
            "both become wire key 'date(x)'",
            id="collision",
        ),
        pytest.param(
            pa.Table.from_arrays([pa.array(["a"]), pa.array([1]), pa.array([2])], ["id", "a", "a"]),
            "appears twice",
            id="duplicate-column",
        ),
        pytest.param(pa.table({"id": ["a"], "tags": [["x"]]}), "tags are only", id="tags-on-2x"),
        pytest.param(pa.chunked_array([[1, 2]]), "must stream record batches", id="not-a-table"),
    ],
)
def test_schema_refusals(table: object, needle: str) -> None:
    """A bad column name or type, a missing id or too many columns refuse the whole source."""
    assert needle in schema_error(table)


@pytest.mark.parametrize(
    ("generation", "operation", "table", "needle"),
    [
        pytest.param(
            "2", "remove", pa.table({"id": ["a"], "x": [1]}), "not remove", id="attrs-remove"
        ),
        pytest.param(
            "1.0", "add", pa.table({"id": ["a"], "x": [1]}), "1.0 takes no attributes", id="1.0"
        ),
        pytest.param(
            "1.1", "remove", pa.table({"id": ["a"], "tags": [["x"]]}), "not remove", id="tags-rm"
        ),
        pytest.param(
            "1.1", "add", pa.table({"id": ["a"], "tags": [[1]]}), "list of strings", id="tag-ints"
        ),
    ],
)
def test_schema_refusals_per_operation(
    generation: Generation, operation: Operation, table: pa.Table, needle: str
) -> None:
    """Columns an operation or API version cannot carry are refused with the record path's rule."""
    assert needle in schema_error(table, generation, operation)


def test_schema_is_checked_before_any_batch_is_read() -> None:
    """A bad schema raises before the first batch is pulled from the stream."""
    pulled = []

    def batches() -> Iterator[pa.RecordBatch]:
        pulled.append(1)
        yield pa.record_batch({"id": ["a"], "Bad": [1]})

    schema = pa.schema([("id", pa.string()), ("Bad", pa.int64())])
    reader = pa.RecordBatchReader.from_batches(schema, batches())
    assert "key rule" in schema_error(reader)
    assert pulled == []


# -- values: every type, nulls, the same entries as the record path -----------------------------


def every_type(rows: int = 23) -> pa.Table:
    """A table with a column of every supported type, with nulls here and there."""

    def some(values: list[Any]) -> list[Any]:
        return [None if i % 7 == 3 else values[i % len(values)] for i in range(rows)]

    when = [
        datetime(2023, 8, 12, 22, 30, 5, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 2, 29, 12, 0, 0, 1500, tzinfo=UTC),
    ]
    return pa.table(
        {
            "id": [f"u-{i}" for i in range(rows)],
            "plan": some(["pro", 'qu"ote\\', "é😀", "", "\x01\n\u2028"]),
            "big": pa.array(some([string.ascii_letters * 5 + "x" * 40]), pa.large_string()),
            "view": pa.array(some(["v1", "v2"]), pa.string_view()),
            "cat": pa.array(some(["a", "b", "a"])).dictionary_encode(),
            "n8": pa.array(some([-128, 127, 0]), pa.int8()),
            "u64": pa.array(some([0, 2**63 - 1]), pa.uint64()),
            "n": pa.array(some([-(2**63), 2**63 - 1, 3]), pa.int64()),
            "f": pa.array(some([0.1, 1.0, -0.0, 1e300, 5e-324, 1e16, 3.0]), pa.float64()),
            "f32": pa.array(some([0.1, 1.5, -2.0]), pa.float32()),
            "seen": pa.array(some(when), pa.timestamp("us", "UTC")),
            "date(ms)": pa.array(some(when[:1] + when[3:]), pa.timestamp("ms", "+05:30")),
            "date(txt)": some(["2023-08-12T22:30:05Z", "2023-08-12", "2023-08-12T22:30:05+02:00"]),
            "url(u)": some(["https://example.com/a?b=c", "http://x.example"]),
            "arr": pa.array(some([["a", "b"], [], ["é"] * 25]), pa.large_list(pa.large_string())),
            "nothing": pa.nulls(rows),
        }
    )


@pytest.mark.parametrize(
    ("generation", "operation"), [("2", "add"), ("2", "replace"), ("1.1", "add")]
)
def test_every_type_matches_the_record_path(generation: Generation, operation: Operation) -> None:
    """Each supported column type is sent as the record path sends the row's Python value."""
    table = every_type()
    if generation == "1.1":
        table = table.drop_columns(["plan"]).append_column(
            "tags", pa.array([["vip", "été"], None, []] * 7 + [["x"], ["y"]])
        )
    expected, got = both(table, generation, operation)
    assert got == expected
    assert got[1] == ("", None, None)
    assert [count for _, count, _ in got[0]] == [10, 10, 3]


def test_values_keep_their_json_types() -> None:
    """Ints stay ints, floats floats (even whole), dates become the library's UTC text."""
    table = pa.table(
        {
            "id": ["a", "b"],
            "n": [1, None],
            "f": [2.0, 0.5],
            "t": pa.array(
                [datetime(2023, 1, 2, 3, 4, 5, tzinfo=UTC), None], pa.timestamp("s", "UTC")
            ),
            "t2": pa.array(
                [datetime(2023, 1, 2, 3, 4, 5, 600, tzinfo=UTC)] * 2, pa.timestamp("us", "UTC")
            ),
        }
    )
    (chunk,) = list(iter_columnar(table, Intake("2", "add"), size=10))
    text = bytes(chunk.body).decode()
    assert '"n":1,' in text and '"f":2.0' in text
    entries = chunk.entries()
    assert entries[0] == {
        "action": "add",
        "id": "a",
        "attributes": {
            "n": 1,
            "f": 2.0,
            "date(t)": "2023-01-02T03:04:05Z",
            "date(t2)": "2023-01-02T03:04:05.000600Z",
        },
    }
    assert type(entries[0]["attributes"]["f"]) is float
    # A null cell leaves that attribute out of that row only.
    assert entries[1]["attributes"] == {"f": 0.5, "date(t2)": "2023-01-02T03:04:05.000600Z"}


def test_nanoseconds_are_kept() -> None:
    """A nanosecond timestamp keeps its nanoseconds; whole microseconds print six digits."""
    table = pa.table(
        {"id": ["a", "b", "c"], "t": pa.array([1, 1_000, 10**9], pa.timestamp("ns", "UTC"))}
    )
    (chunk,) = list(iter_columnar(table, Intake("2", "add"), size=10))
    assert [e["attributes"]["date(t)"] for e in chunk.entries()] == [
        "1970-01-01T00:00:00.000000001Z",
        "1970-01-01T00:00:00.000001Z",
        "1970-01-01T00:00:01Z",
    ]


def test_a_table_without_attributes_sends_bare_ids() -> None:
    """Only an id column gives the same entries as plain ID strings, for every operation."""
    table = pa.table({"id": [f"u-{i}" for i in range(12)]})
    for generation, operation in [("2", "remove"), ("1.0", "add"), ("2", "replace")]:
        expected, got = both(table, generation, operation)  # type: ignore[arg-type]
        assert got == expected
        assert "attributes" not in got[0][0][2][0]


def test_chunks_cross_batches_of_any_size() -> None:
    """Batches of any size (empty ones too) make chunks of exactly ``size``, positions counted."""
    table = every_type(45)
    whole = table.combine_chunks().to_batches()[0]
    batches = [whole.slice(0, 3), whole.slice(3, 0), whole.slice(3, 7), whole.slice(10, 35)]
    reader = pa.RecordBatchReader.from_batches(table.schema, batches)
    intake, _ = intakes("2", "add")
    got = outcome(iter_columnar(reader, intake, size=10, start=100))
    expected = outcome(iter_chunks(records_of(table), Intake("2", "add"), size=10, start=100))
    assert got == expected
    assert [(start, count) for start, count, _ in got[0]] == [
        (100, 10),
        (110, 10),
        (120, 10),
        (130, 10),
        (140, 5),
    ]


def test_a_replace_first_chunk_has_no_action() -> None:
    """A chunked replace: the first chunk's entries carry no action, later ones "add"."""
    table = pa.table({"id": [f"u-{i}" for i in range(25)], "n": list(range(25))})
    chunks, _ = columnar(table, "2", "replace")
    assert "action" not in chunks[0][2][0]
    assert {e["action"] for _, _, entries in chunks[1:] for e in entries} == {"add"}


def test_big_steps_split_into_chunks_at_the_same_places() -> None:
    """A source longer than one worker step is cut into the same chunks as the record path."""
    rows = 2 * stream.STEP_ROWS + 123
    table = pa.table({"id": [f"u-{i}" for i in range(rows)], "n": list(range(rows))})
    intake = Intake("2", "add")
    got = [(c.start, c.count, c.body) for c in iter_columnar(table, intake, size=9_999)]
    expected = [
        (c.start, c.count, c.body) for c in iter_chunks(records_of(table), intake, size=9_999)
    ]
    assert got == expected


# -- a bad value: the same error as the record path, and nothing from its chunk on -------------


@pytest.mark.parametrize(
    ("column", "bad"),
    [
        pytest.param("id", None, id="null-id"),
        pytest.param("id", "", id="empty-id"),
        pytest.param("plan", "x" * 301, id="long-string"),
        pytest.param("plan", "é" * 301, id="long-non-ascii-string"),
        pytest.param("f", float("nan"), id="nan"),
        pytest.param("f", float("-inf"), id="inf"),
        pytest.param("u64", 2**63, id="uint64-too-big"),
        pytest.param("arr", ["a"] * 26, id="array-too-long"),
        pytest.param("arr", ["a", None], id="array-null-item"),
        pytest.param("arr", ["y" * 301], id="array-long-item"),
        pytest.param("date(d)", "2023-02-30T00:00:00", id="date-no-such-day"),
        pytest.param("date(d)", "0000-01-01T00:00:00", id="date-year-zero"),
        pytest.param("date(d)", "yesterday", id="date-text"),
        pytest.param("url(u)", "ftp://example.com", id="url-scheme"),
        pytest.param("url(u)", "https://exa mple.com", id="url-space"),
        pytest.param("url(u)", "https://e.com/" + "a" * 2040, id="url-too-long"),
    ],
)
def test_a_bad_value_raises_what_the_record_path_raises(column: str, bad: object) -> None:
    """The first bad row raises the record path's error; the chunks before it are kept."""
    rows = 40
    values: dict[str, list[Any]] = {
        "id": [f"u-{i}" for i in range(rows)],
        "plan": ["pro"] * rows,
        "f": [1.5] * rows,
        "u64": [7] * rows,
        "arr": [["a"]] * rows,
        "date(d)": ["2023-08-12T22:30:05Z"] * rows,
        "url(u)": ["https://example.com/"] * rows,
    }
    values[column][25] = bad
    values[column][33] = bad  # a later bad row must not be the one named
    types = {"u64": pa.uint64(), "f": pa.float64(), "arr": pa.list_(pa.string())}
    table = pa.table({k: pa.array(v, types.get(k)) for k, v in values.items()})
    expected, got = both(table, size=10, start=1_000)
    assert got == expected
    chunks, (message, position, _) = got
    assert position == 1_025
    assert message
    assert [start for start, _, _ in chunks] == [1_000, 1_010]


@pytest.mark.parametrize(
    ("generation", "bad"),
    [
        pytest.param("1.1", ["Vip"], id="uppercase"),
        pytest.param("1.1", [""], id="empty"),
        pytest.param("1.1", [None], id="null"),
        pytest.param("1.1", ["x" * 65], id="long"),
        pytest.param("1.1", ["ÉTÉ"], id="non-ascii-uppercase"),
    ],
)
def test_a_bad_tag_raises_what_the_record_path_raises(generation: Generation, bad: object) -> None:
    """Tags follow the record path's tag rule, row by row."""
    tags: list[Any] = [["vip"]] * 30
    tags[12] = bad
    table = pa.table({"id": [f"u-{i}" for i in range(30)], "tags": tags})
    expected, got = both(table, generation, "add")
    assert got == expected
    assert got[1][1] == 12


@pytest.mark.parametrize(
    ("column", "value"),
    [
        pytest.param("tags", ["été", "straße"], id="non-ascii-lowercase-tag"),
        pytest.param("date(d)", "2023-08-12", id="date-only"),
        pytest.param("date(d)", "2023-08-12 22:30:05", id="date-space"),
        pytest.param("date(d)", "2023-08-12T22:30:05.1+02:00", id="date-short-fraction"),
        pytest.param("url(u)", "http://user@example.com/x", id="url-userinfo"),
    ],
)
def test_unusual_but_valid_values_pass(column: str, value: object) -> None:
    """A value the vectorised check is unsure of is judged by EntryEncoder, and sent as given."""
    values: dict[str, Any] = {
        "id": ["a", "b"],
        "tags": [["x"], ["y"]],
        "date(d)": ["2023-08-12T22:30:05Z"] * 2,
        "url(u)": ["https://example.com/"] * 2,
    }
    values[column] = [values[column][0], value]
    expected, got = both(pa.table(values), "1.1", "add")
    assert got == expected
    assert got[1] == ("", None, None)


def test_a_timestamp_out_of_range_names_the_row() -> None:
    """A timestamp outside years 1 to 9999 cannot be a date: it names its row and ID."""
    seconds = [0] * 15
    seconds[12] = 253_402_300_800  # year 10000
    table = pa.table(
        {"id": [f"u-{i}" for i in range(15)], "t": pa.array(seconds, pa.timestamp("s", "UTC"))}
    )
    chunks, (message, position, rid) = columnar(table)
    assert [start for start, _, _ in chunks] == [0]
    assert (position, rid) == (12, "u-12")
    assert "outside years 1 to 9999" in message


def test_the_bad_row_of_a_replace_first_chunk() -> None:
    """A bad row in a replace's first chunk raises the replace intake's error; nothing is sent."""
    table = pa.table({"id": ["a", None, "c"]})
    expected, got = both(table, "2", "replace")
    assert got == expected
    assert got[0] == []
    assert got[1][1:] == (1, None)


# -- hypothesis: generated tables against the record path ---------------------------------------

_TEXT = st.characters(codec="utf-8")
_WHEN = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 30))
_ZONES = ["UTC", "+05:30", "-08:00"]


def _column(kind: str) -> tuple[pa.DataType, st.SearchStrategy[Any]]:
    """The Arrow type of a generated column and a strategy of its (mostly valid) values."""
    if kind == "str":
        return pa.string(), st.text(_TEXT, max_size=6) | st.just("x" * 301)
    if kind == "int":
        return pa.int64(), st.integers(-(2**63), 2**63 - 1)
    if kind == "uint":
        return pa.uint64(), st.integers(0, 2**64 - 1)
    if kind == "float":
        return pa.float64(), st.floats()
    if kind == "decimal":  # few decimals
        return pa.float64(), st.builds(
            lambda i, places: i / 10**places, st.integers(-(10**14), 10**14), st.integers(0, 9)
        )
    if kind == "float32":
        return pa.float32(), st.floats(width=32)
    if kind.startswith("ts-"):
        zone = kind[3:]
        return pa.timestamp("us", zone), _WHEN.map(lambda d: d.replace(tzinfo=UTC))
    if kind == "date-text":
        return pa.string(), st.sampled_from(
            [
                "2023-08-12T22:30:05Z",
                "2023-08-12T22:30:05",
                "2023-08-12T22:30:05.123456+02:00",
                "2023-02-29T00:00:00",
                "2024-02-29T00:00:00",
                "2023-08-12",
                "2023-13-01T00:00:00",
                "garbage",
            ]
        )
    if kind == "url-text":
        return pa.string(), st.sampled_from(
            ["https://example.com/a", "HTTP://x.example:8080/?q=1", "ftp://x", "https://a b", "x"]
        )
    if kind == "array":
        return pa.list_(pa.string()), st.lists(st.text(_TEXT, max_size=3) | st.none(), max_size=26)
    raise AssertionError(kind)


_KINDS = ["str", "int", "uint", "float", "decimal", "float32", "date-text", "url-text", "array"] + [
    f"ts-{zone}" for zone in _ZONES
]


@st.composite
def tables(draw: st.DrawFn, generation: Generation, operation: Operation) -> pa.Table:
    """A table of a few rows with random supported columns, values and nulls (some invalid)."""
    rows = draw(st.integers(0, 25))
    ids = st.sampled_from(["u-1", "u-2", "é-3", ""]) | st.text(_TEXT, min_size=1, max_size=8)
    columns: dict[str, pa.Array] = {
        "id": pa.array(
            draw(
                st.lists(
                    ids | st.none().filter(lambda _: draw(st.booleans())),
                    min_size=rows,
                    max_size=rows,
                )
            ),
            pa.string(),
        )
    }
    if generation != "1.0" and operation != "remove":
        kinds = draw(st.lists(st.sampled_from(_KINDS), max_size=5))
        for number, kind in enumerate(kinds):
            type_, values = _column(kind)
            name = {"date-text": f"date(d{number})", "url-text": f"url(u{number})"}.get(
                kind, f"c{number}"
            )
            cells = draw(st.lists(values | st.none(), min_size=rows, max_size=rows))
            columns[name] = pa.array(cells, type_)
    if generation == "1.1" and operation != "remove" and draw(st.booleans()):
        tag = st.sampled_from(["vip", "gold", "Gold", "", "été", "ÉTÉ", "x" * 65]) | st.none()
        lists = st.lists(tag, max_size=3) | st.none()
        columns["tags"] = pa.array(draw(st.lists(lists, min_size=rows, max_size=rows)))
    return pa.table(columns)


@settings(max_examples=120)
@given(
    data=st.data(),
    case=st.sampled_from(
        [
            ("2", "add"),
            ("2", "replace"),
            ("1.1", "add"),
            ("1.1", "replace"),
            ("2", "remove"),
            ("1.0", "add"),
        ]
    ),
    size=st.integers(1, 7),
    start=st.integers(0, 10**9),
)
def test_generated_tables_match_the_record_path(
    data: st.DataObject, case: tuple[Generation, Operation], size: int, start: int
) -> None:
    """For any table, the chunks and the first error equal the record path's."""
    generation, operation = case
    table = data.draw(tables(generation, operation))
    expected, got = both(table, generation, operation, size=size, start=start)
    assert got == expected


# -- chunk IDs: overlap without a Python object per row -----------------------------------------


def test_chunk_ids_overlap_like_sets() -> None:
    """isdisjoint answers as sets would, for chunks near or far apart in the stream."""
    rows = [f"u-{i % 37}" if i % 50 == 0 else f"u-{i}" for i in range(200)]
    table = pa.table({"id": rows})
    chunks = list(iter_columnar(table, Intake("2", "add"), size=10))
    plain = [set(rows[c.start : c.end]) for c in chunks]
    for a, chunk_a in enumerate(chunks):
        for b, chunk_b in enumerate(chunks):
            if a != b:
                assert chunk_a.ids.isdisjoint(chunk_b.ids) == plain[a].isdisjoint(plain[b])
        assert chunk_a.ids.isdisjoint(plain[(a + 1) % len(chunks)] | {"nobody"}) == plain[
            a
        ].isdisjoint(plain[(a + 1) % len(chunks)])
    assert not chunks[0].ids.isdisjoint(chunks[0].ids)


def test_chunk_ids_across_steps_use_the_window_and_the_fallback() -> None:
    """An ID repeated a step later, or further, is still seen as an overlap."""
    size = 1_000
    rows = 4 * stream.STEP_ROWS
    ids = [f"u-{i}" for i in range(rows)]
    ids[stream.STEP_ROWS + 5] = ids[3]  # next step
    ids[3 * stream.STEP_ROWS + 5] = ids[4]  # three steps later: outside the window
    chunks = list(iter_columnar(pa.table({"id": ids}), Intake("2", "add"), size=size))
    first = chunks[0]
    assert not first.ids.isdisjoint(chunks[stream.STEP_ROWS // size].ids)
    assert not chunks[3 * stream.STEP_ROWS // size].ids.isdisjoint(first.ids)
    assert first.ids.isdisjoint(chunks[1].ids)
    assert chunks[2].ids.isdisjoint(chunks[stream.STEP_ROWS // size + 3].ids)


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
@pytest.mark.parametrize(
    "years",
    [
        pytest.param([2024, 1000, 9999], id="four-digit-years"),  # one fixed-width pass
        pytest.param([2024, 999, 1], id="shorter-years"),  # Arrow's replace and join
    ],
)
def test_timestamps_read_as_the_record_path_writes_them(unit: str, years: list[int]) -> None:
    """Whole seconds of any year and fractions give the record path's date texts."""
    whens = [datetime(y, 12, 31, 23, 59, 59, tzinfo=UTC) for y in years]
    whens.append(datetime(2024, 1, 2, 10, 0, 0, tzinfo=UTC))
    table = pa.table(
        {
            "id": [f"u-{i}" for i in range(len(whens))],
            "t": pa.array(whens, pa.timestamp(unit, "UTC")),
        }
    )
    expected, got = both(table)
    assert got == expected
    texts = [e["attributes"]["date(t)"] for _, _, entries in got[0] for e in entries]
    assert texts[0] == f"{years[0]:04d}-12-31T23:59:59Z" and texts[-1] == "2024-01-02T10:00:00Z"


def test_iso_texts_of_fixed_and_mixed_widths() -> None:
    """Arrow's timestamp texts become the wire form, in one pass or in two."""
    pc = extra.Kernels(pa, pa.system_memory_pool())
    fixed = pa.array(["2024-01-02 10:00:00", "9999-12-31 23:59:59"])
    assert encode._iso_utc(pa, pc, fixed).to_pylist() == [
        "2024-01-02T10:00:00Z",
        "9999-12-31T23:59:59Z",
    ]
    mixed = pa.array(["0999-01-02 10:00:00", None, "2024-01-02 10:00:00.500000"])
    assert encode._iso_utc(pa, pc, mixed).to_pylist() == [
        "0999-01-02T10:00:00Z",
        None,
        "2024-01-02T10:00:00.500000Z",
    ]
    assert encode._iso_utc(pa, pc, fixed.slice(1)).to_pylist() == ["9999-12-31T23:59:59Z"]


def not_utf8(texts: list[bytes]) -> pa.Array:
    """A string array over raw bytes: Arrow does not check UTF-8 when built from buffers."""
    ends = [0]
    for text in texts:
        ends.append(ends[-1] + len(text))
    offsets = pa.py_buffer(b"".join(end.to_bytes(4, "little") for end in ends))
    return pa.Array.from_buffers(
        pa.string(), len(texts), [None, offsets, pa.py_buffer(b"".join(texts))]
    )


@pytest.mark.parametrize(
    ("column", "rule", "record_id"),
    [
        ("id", "the ID is not UTF-8 text", "u-\\xff"),
        ("plan", "attribute 'plan' is not UTF-8 text", "u-12"),
        ("interests", "attribute 'interests' is not UTF-8 text", "u-12"),
        ("tags", "a tag is not UTF-8 text", "u-12"),
    ],
)
def test_text_that_is_not_utf8_is_refused_at_its_row(
    column: str, rule: str, record_id: str
) -> None:
    """Bytes that are not UTF-8, in any text column, raise at their row; none are sent."""
    rows = 25
    texts = [f"u-{i}".encode() for i in range(rows)]
    ids = not_utf8([b"u-\xff" if i == 12 and column == "id" else t for i, t in enumerate(texts)])
    plans = not_utf8([b"pro\xc3(" if i == 12 and column == "plan" else b"pro" for i in range(rows)])
    items = not_utf8([b"a\xe2\x82" if i == 12 else b"a" for i in range(rows)])
    lists = pa.ListArray.from_arrays(pa.array(range(rows + 1), pa.int32()), items)
    good = pa.array([["a"]] * rows)
    table = pa.table(
        {
            "id": ids,
            "plan": plans,
            "interests": lists if column == "interests" else good,
            "tags": lists if column == "tags" else good,
        }
    )
    chunks, error = columnar(table, "1.1")
    assert error == (f"record 12, id {record_id!r}: {rule}", 12, record_id)
    assert [count for _, count, _ in chunks] == [10]  # the chunk before row 12's only


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamps_of_any_unit_and_fraction(unit: str) -> None:
    """Timestamps are written as _timestamp_text writes them: fractions of 6 or 9 digits."""
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    seconds = [-62_135_596_800, -1, 0, 1_700_000_000, 253_402_300_799]
    fractions = [0, per_second // 2, per_second - 1, per_second // 1000 * 7]
    values = [
        s * per_second + f
        for s in seconds
        for f in fractions
        if unit != "ns" or -(2**63) < s * per_second + f < 2**63
    ]
    column = pa.array(values, pa.int64()).cast(pa.timestamp(unit, "UTC"))
    table = pa.table({"id": [f"u-{i}" for i in range(len(values))], "t": column})
    pc = extra.Kernels(pa, pa.system_memory_pool())
    texts = encode.timestamp_text(pa, pc, column, unit).to_pylist()
    chunks, error = columnar(table)
    assert error == ("", None, None)
    assert [e["attributes"]["date(t)"] for _, _, entries in chunks for e in entries] == texts
    assert "2023-11-14T22:13:20Z" in texts
    if unit != "s":
        assert "2023-11-14T22:13:20.500000Z" in texts
    if unit == "ns":
        assert "2023-11-14T22:13:20.999999999Z" in texts
    else:  # 64-bit nanoseconds reach back to 1677 only
        assert texts[0] == "0001-01-01T00:00:00Z" and "9999-12-31T23:59:59Z" in texts


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(
            [0.1, 1.5, -2.25, 123456.789, 0.0, -0.0, 1e14, 0.12345678, 3.0], id="few-decimals"
        ),
        pytest.param([0.1, 1.5, 0.123456789, 1e15, 5e-324, 1e300], id="and-others"),
    ],
)
def test_floats_are_written_as_the_record_path_writes_them(values: list[float]) -> None:
    """Floats keep their value and stay floats, whichever way a step writes them."""
    table = pa.table({"id": [f"u-{i}" for i in range(len(values))], "f": values})
    expected, got = both(table)
    assert got == expected
    written = [e["attributes"]["f"] for _, _, entries in got[0] for e in entries]
    assert written == [("float", v) for v in values]
    assert [math.copysign(1, v) for _, v in written] == [math.copysign(1, v) for v in values]


def test_batches_are_read_into_memory_of_the_library() -> None:
    """The stream's batches are copied when read: nothing sent keeps the source's buffers."""
    table = pa.table({"id": [f"u-{i}" for i in range(250)], "n": list(range(250))})
    source = table.column("id").chunk(0).buffers()[2]
    low, high = source.address, source.address + source.size
    chunks = list(iter_columnar(table, Intake("2", "add"), size=100))
    assert [c.count for c in chunks] == [100, 100, 50]
    for chunk in chunks:
        assert isinstance(chunk.ids, ArrowIds)
        data = chunk.ids._array.buffers()[2]
        assert not low <= data.address < high
    assert sorted(i for c in chunks for i in c.ids) == sorted(table.column("id").to_pylist())


def test_an_upload_allocates_from_its_own_pool_and_leaves_the_default() -> None:
    """Batches are copied into the library's pool (jemalloc's where pyarrow has it); the
    process's default pool stays the application's."""
    pool = extra.memory_pool(pa)
    assert pool.backend_name in ("jemalloc", "system")
    default = pa.default_memory_pool().backend_name
    before = pool.bytes_allocated()
    table = pa.table({"id": [f"u-{i}" for i in range(5_000)]})
    chunks = list(iter_columnar(table, Intake("2", "add"), size=1_000))
    assert pool.bytes_allocated() > before  # the chunks' IDs live in the copies
    assert pa.default_memory_pool().backend_name == default
    assert sum(c.count for c in chunks) == 5_000


@settings(max_examples=60, deadline=None)
@given(
    picks=st.lists(st.integers(0, 60), min_size=1, max_size=400),
    size=st.integers(1, 12),
    step_rows=st.integers(1, 60),
)
def test_any_repeats_between_chunks_are_found_like_sets(
    picks: list[int], size: int, step_rows: int
) -> None:
    """Whatever the IDs repeat and however steps cut them, chunks overlap exactly as sets do."""
    rows = [f"u-{p}" for p in picks]
    original = stream.STEP_ROWS
    stream.STEP_ROWS = step_rows  # steps of one to a few chunks: the window is crossed
    try:
        chunks = list(iter_columnar(pa.table({"id": rows}), Intake("2", "add"), size=size))
    finally:
        stream.STEP_ROWS = original
    plain = [set(rows[c.start : c.end]) for c in chunks]
    for later in range(len(chunks)):
        for earlier in range(later):
            expected = plain[later].isdisjoint(plain[earlier])
            assert chunks[later].ids.isdisjoint(chunks[earlier].ids) == expected
            assert chunks[earlier].ids.isdisjoint(chunks[later].ids) == expected


def test_chunk_ids_hide_their_values() -> None:
    """A chunk's IDs never appear in its repr; len, iteration and membership work."""
    (chunk,) = list(iter_columnar(pa.table({"id": ["secret-1", "b"]}), Intake("2", "add"), size=5))
    assert isinstance(chunk.ids, ArrowIds)
    assert "secret" not in repr(chunk) and "secret" not in repr(chunk.ids)
    assert len(chunk.ids) == 2
    assert sorted(chunk.ids) == ["b", "secret-1"]
    assert "b" in chunk.ids and "c" not in chunk.ids and 3 not in chunk.ids


# -- sources, the event loop, and the optional extra ---------------------------------------------


class ArrowStream:
    """A stand-in for any library's table (pandas, polars): only ``__arrow_c_stream__``."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        return self.table.__arrow_c_stream__(requested_schema)


def test_any_arrow_stream_is_a_columnar_source() -> None:
    """pyarrow tables and readers, DuckDB relations and any __arrow_c_stream__ object qualify."""
    table = every_type()
    con = duckdb.connect()
    try:
        relation = con.sql("SELECT 'r-' || i::VARCHAR AS id, i AS n FROM range(25) t(i)")
        sources: list[object] = [table, table.to_reader(), ArrowStream(table), relation]
        assert all(is_columnar(s) for s in sources)
        assert not is_columnar([{"id": "a"}]) and not is_columnar("abc")
        expected = columnar(table)
        assert columnar(table.to_reader()) == expected
        assert columnar(ArrowStream(table)) == expected
        chunks, error = columnar(relation)
        assert error == ("", None, None)
        assert chunks[2][2][4] == {"action": "add", "id": "r-24", "attributes": {"n": 24}}
    finally:
        con.close()


async def test_aiter_chunks_reads_columns_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading, checking, encoding and importing the extra all run off the event loop."""
    loop_thread = threading.get_ident()
    threads: dict[str, set[int]] = {"read": set(), "encode": set(), "import": set()}
    table = every_type(35)

    def spy(kind: str, original: Any) -> Any:
        def call(*args: Any) -> Any:
            threads[kind].add(threading.get_ident())
            return original(*args)

        return call

    monkeypatch.setattr(stream._Stream, "next_step", spy("read", stream._Stream.next_step))
    monkeypatch.setattr(stream._Encoder, "chunks", spy("encode", stream._Encoder.chunks))
    monkeypatch.setattr(stream, "import_extra", spy("import", stream.import_extra))
    got = [c async for c in aiter_columnar(table, Intake("2", "add"), size=10)]

    def expected() -> list[tuple[int, Any]]:  # off the loop too: to_pylist imports zoneinfo
        chunks = iter_chunks(records_of(table), Intake("2", "add"), size=10)
        return [(c.start, c.entries()) for c in chunks]

    assert [(c.start, c.entries()) for c in got] == await asyncio.to_thread(expected)
    for kind, seen in threads.items():
        assert seen and loop_thread not in seen, kind


async def test_a_consumer_that_stops_early_closes_the_stream() -> None:
    """Leaving the iteration early closes the stream once its worker step is done."""
    closed = threading.Event()
    original = stream._Stream.close

    def spy(self: stream._Stream) -> None:
        original(self)
        closed.set()

    rows = 3 * stream.STEP_ROWS
    table = pa.table({"id": [f"u-{i}" for i in range(rows)]})
    stream._Stream.close = spy  # type: ignore[method-assign]
    try:
        chunks = aiter_columnar(table, Intake("2", "add"), size=10_000)
        first = await anext(chunks)
        await chunks.aclose()  # type: ignore[attr-defined]
        assert first.start == 0
        assert await asyncio.to_thread(closed.wait, 30)
    finally:
        stream._Stream.close = original  # type: ignore[method-assign]


async def test_steps_are_encoded_before_the_consumer_asks_for_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the loop holds the first chunk, the next steps are read and encoded already."""
    encoded = threading.Semaphore(0)
    original = stream._Encoder.chunks

    def spy(self: stream._Encoder, step: Any) -> list[Chunk]:
        chunks = original(self, step)
        encoded.release()
        return chunks

    monkeypatch.setattr(stream._Encoder, "chunks", spy)
    rows = (stream.AHEAD + 2) * stream.STEP_ROWS
    table = pa.table({"id": [f"u-{i}" for i in range(rows)]})
    chunks = aiter_columnar(table, Intake("2", "add"), size=10_000)
    try:
        first = await anext(chunks)
        assert first.start == 0
        # The first step and the ones queued behind it: encoded with no further request.
        for _ in range(stream.AHEAD):
            assert await asyncio.to_thread(encoded.acquire, True, 30)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("missing", ["duckdb", "pyarrow", "numpy"])
def test_without_the_extra_the_error_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    """Without pyarrow, duckdb or numpy, a columnar source raises an error naming the install."""
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'batch-audience\[data\]'") as info:
        aiter_columnar(ArrowStream(pa.table({"id": ["a"]})), Intake("2", "add"))
    assert info.value.name == missing
    assert INSTALL_COMMAND in str(info.value)


def run_python(code: str) -> None:
    """Run ``code`` in a new interpreter (its imports are its own); fail with its stderr."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_record_path_does_not_import_the_extra() -> None:
    """Uploading records never imports pyarrow or duckdb (the extra stays optional)."""
    code = (
        "import sys, batch_audience as ba\n"
        "from batch_audience._chunker import iter_chunks\n"
        "from batch_audience._intake import Intake\n"
        "list(iter_chunks(['a', {'id': 'b', 'attributes': {'n': 1}}], Intake('2', 'add')))\n"
        "assert 'pyarrow' not in sys.modules and 'duckdb' not in sys.modules, 'imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
        # Imported with the package, so that a first columnar upload does not import it on
        # the caller's loop: without its heavy dependencies.
        "assert 'batch_audience._columnar' in sys.modules\n"
    )
    run_python(code)


def test_a_columnar_upload_does_not_import_pandas(tmp_path: Any) -> None:
    """Columns of every kind, repeated IDs and a bad row go through without importing pandas.

    pyarrow imports pandas, when it is installed, the first time it converts a Python value
    (~0.4 s and ~50 MB): the library never asks it to. pandas is installed here (test extra).
    """
    import importlib.util

    import pyarrow.parquet as pq

    assert importlib.util.find_spec("pandas") is not None
    table = every_type(60)
    ids = table.column("id").to_pylist()
    ids[40] = ids[3]  # a repeat a few chunks later
    good = table.set_column(0, "id", pa.array(ids))
    ids[50] = ""  # a bad row: checked by EntryEncoder, then raised
    pq.write_table(good, tmp_path / "good.parquet")
    pq.write_table(good.set_column(0, "id", pa.array(ids)), tmp_path / "bad.parquet")
    code = (
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n"
        "import batch_audience as ba\n"
        "from batch_audience._columnar import iter_columnar\n"
        "from batch_audience._intake import Intake\n"
        "def read(path):\n"
        "    file = pq.ParquetFile(path)\n"
        "    return pa.RecordBatchReader.from_batches(file.schema_arrow, file.iter_batches())\n"
        f"good = read({str(tmp_path / 'good.parquet')!r})\n"
        f"bad = read({str(tmp_path / 'bad.parquet')!r})\n"
        "assert 'pandas' not in sys.modules, 'by the test itself'\n"
        "got = [c.count for c in iter_columnar(good, Intake('2', 'add'), size=7)]\n"
        "assert sum(got) == 60, got\n"
        "try:\n"
        "    list(iter_columnar(bad, Intake('2', 'add'), size=7))\n"
        "except ba.ValidationError as err:\n"
        "    assert err.position == 50, err\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "assert 'pandas' not in sys.modules, 'imported'\n"
    )
    run_python(code)


def test_json_body_is_one_valid_array() -> None:
    """The body is a JSON array with one entry per row (no trailing comma)."""
    table = pa.table({"id": [f"u-{i}" for i in range(3)], "n": [1, None, 3]})
    (chunk,) = list(iter_columnar(table, Intake("2", "add"), size=10))
    assert bytes(chunk.body).startswith(b"[{") and bytes(chunk.body).endswith(b"}]")
    assert len(orjson.loads(chunk.body)) == 3


def test_zones_are_converted_to_utc() -> None:
    """A timestamp in any zone is sent as its UTC instant."""
    paris = timezone(timedelta(hours=2))
    table = pa.table(
        {
            "id": ["a"],
            "t": pa.array([datetime(2023, 6, 1, 12, 0, tzinfo=paris)], pa.timestamp("s", "+02:00")),
        }
    )
    (chunk,) = list(iter_columnar(table, Intake("2", "add"), size=10))
    assert chunk.entries()[0]["attributes"] == {"date(t)": "2023-06-01T10:00:00Z"}


def test_a_stream_that_fails_mid_way_raises_its_error() -> None:
    """An error of the source after some batches reaches the caller, after the chunks before."""
    schema = pa.schema([("id", pa.string())])

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch({"id": [f"u-{i}" for i in range(10)]}, schema=schema)
        raise OSError("the disk went away")

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    chunks = iter_columnar(reader, Intake("2", "add"), size=10)
    assert next(chunks).count == 10
    with pytest.raises(OSError, match="the disk went away"):
        next(chunks)


def test_batches_are_read_one_ahead_from_the_second_step_on() -> None:
    """The first step reads only what it needs (the first request waits for it); from the
    second on, the next batch is read as soon as the last is taken; an error met ahead is
    raised in its turn, after the rows read before it."""
    schema = pa.schema([("id", pa.string())])
    pulled: list[object] = []

    def batches() -> Iterator[pa.RecordBatch]:
        for number in range(4):
            pulled.append(number)
            yield pa.record_batch({"id": [f"u-{number}-{i}" for i in range(10)]}, schema=schema)
        pulled.append("error")
        raise OSError("the disk went away")

    intake = Intake("2", "add")
    reader = pa.RecordBatchReader.from_batches(schema, batches())
    steps = stream._Stream(reader, intake, intake, 10, 0)
    try:
        counts = []
        for expected in ([0], [0, 1, 2, 3], [0, 1, 2, 3, "error"]):
            counts.append([count for _, _, count, _ in steps.next_step().places])
            assert pulled == expected
        assert counts == [[10], [10, 10], [10]]
        with pytest.raises(OSError, match="the disk went away"):
            steps.next_step()
    finally:
        steps.close()


def test_integers_at_every_digit_count() -> None:
    """Integers of each number of digits, at its bounds, signed and unsigned, as records."""
    edges = sorted({v for k in range(19) for v in (10**k - 1, 10**k)} | {2**63 - 1})
    signed = [*edges, *(-v for v in edges), -(2**63)]
    unsigned = edges  # above 2**63 - 1 is refused (test above)
    table = pa.table(
        {
            "id": [f"u-{i}" for i in range(len(signed))],
            "n": pa.array(signed, pa.int64()),
            "u": pa.array(unsigned + [0] * (len(signed) - len(unsigned)), pa.uint64()),
        }
    )
    expected, got = both(table)
    assert got == expected
    entries = [entry for _, _, chunk in got[0] for entry in chunk]
    assert [e["attributes"]["n"] for e in entries] == signed
    assert got[1] == ("", None, None)


def test_steps_grow_from_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first step is one chunk, then 2, 4... up to the step size: the first requests go
    out early and the next are ready while the server reads them."""
    monkeypatch.setattr(stream, "STEP_ROWS", 80)
    intake = Intake("2", "add")
    table = pa.table({"id": [f"u-{i}" for i in range(395)]})
    steps = stream._Stream(table, intake, intake, 10, 0)
    try:
        sizes = []
        while places := steps.next_step().places:
            sizes.append([count for _, _, count, _ in places])
    finally:
        steps.close()
    assert [len(step) for step in sizes] == [1, 2, 4, 8, 8, 8, 8, 1]
    assert [count for step in sizes for count in step] == [10] * 39 + [5]


def test_chunk_ids_over_irregular_batches_match_sets() -> None:
    """Batches that make steps of uneven sizes: every nearby pair of chunks answers as sets do."""
    size = 500
    rows = 3 * stream.STEP_ROWS
    ids = [f"u-{i}" for i in range(rows)]
    for i in range(0, rows, 4_999):  # an ID repeated ~3 chunks later, every ~10 chunks
        ids[min(rows - 1, i + 1_600)] = ids[i]
    table = pa.table({"id": ids})
    # 6,600-row batches: steps of whole chunks from one batch, then one chunk across two.
    reader = table.to_reader(max_chunksize=6_600)
    chunks = list(iter_columnar(reader, Intake("2", "add"), size=size))
    plain = [set(ids[c.start : c.end]) for c in chunks]
    for later in range(len(chunks)):
        for earlier in range(max(0, later - 15), later):
            expected = plain[later].isdisjoint(plain[earlier])
            assert chunks[later].ids.isdisjoint(chunks[earlier].ids) == expected
            assert chunks[earlier].ids.isdisjoint(chunks[later].ids) == expected


def test_a_pandas_unnamed_index_is_not_sent() -> None:
    """A pandas frame's unnamed index (``__index_level_0__``) is row labels, not an attribute.

    The schema is the one pandas >= 2.2 exports for ``DataFrame({...}, index=[10, 11])``; a
    named index (``set_index("id")``) is a column like any other.
    """
    metadata = {b"pandas": orjson.dumps({"index_columns": ["__index_level_0__"], "columns": []})}
    table = pa.table(
        {"id": ["a", "b"], "n": [1, 2], "__index_level_0__": [10, 11]}
    ).replace_schema_metadata(metadata)
    assert columnar(table)[0][0][2] == [
        {"action": "add", "id": "a", "attributes": {"n": 1}},
        {"action": "add", "id": "b", "attributes": {"n": 2}},
    ]
    named = pa.table({"n": [1], "id": ["a"]}).replace_schema_metadata(
        {b"pandas": orjson.dumps({"index_columns": ["id"]})}
    )
    assert columnar(named)[0][0][2] == [{"action": "add", "id": "a", "attributes": {"n": 1}}]
    # Without pandas' metadata, such a name is an ordinary attribute column.
    plain = pa.table({"id": ["a"], "__index_level_0__": [10]})
    assert columnar(plain)[0][0][2][0]["attributes"] == {"__index_level_0__": 10}


# -- an engine's error is a ValidationError naming the column ----------------------------------


def test_an_arrow_error_in_a_column_step_names_the_column(monkeypatch: pytest.MonkeyPatch) -> None:
    """An Arrow error while a column is checked becomes a ValidationError naming that column;
    running out of memory stays what it is."""
    from batch_audience._columnar import checks

    original = checks._attribute_rows

    def failing(pa_: Any, pc: Any, kind: str, column: Any) -> Any:
        if kind == "float":
            raise pa.ArrowNotImplementedError("no kernel for this")
        return original(pa_, pc, kind, column)

    monkeypatch.setattr(checks, "_attribute_rows", failing)
    table = pa.table({"id": ["a", "b"], "plan": ["x", "y"], "score": [1.5, 2.5]})
    chunks, (message, position, rid) = columnar(table)
    assert chunks == []
    assert message == "column 'score' cannot be read (ArrowNotImplementedError: no kernel for this)"
    assert (position, rid) == (None, None)

    def out_of_memory(*args: Any) -> Any:
        raise pa.ArrowMemoryError("malloc failed")

    monkeypatch.setattr(checks, "_attribute_rows", out_of_memory)
    with pytest.raises(pa.ArrowMemoryError):
        list(iter_columnar(table, Intake("2", "add")))


def test_a_duckdb_error_names_the_column(monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB failing to write a step becomes a ValidationError naming the column it fails on."""
    original = encode._value_sql

    def failing(plan: Any, number: int, quoted: frozenset[int] = frozenset()) -> list[str]:
        if number == 2:
            return ["error('cannot write this')"]
        return original(plan, number, quoted)

    monkeypatch.setattr(encode, "_value_sql", failing)
    table = pa.table({"id": ["a", "b"], "plan": ["x", "y"], "score": [1.5, 2.5]})
    chunks, (message, _, _) = columnar(table)
    assert chunks == []
    assert message.startswith("column 'score' cannot be written (")
    assert "cannot write this" in message


# -- one in-memory table, checked whole then encoded (for a sync's difference) ------------------


def test_a_table_checked_whole_is_encoded_as_a_stream_of_it_is() -> None:
    """check_table then encode_table give the stream's bodies; a bad row raises at its
    position; an empty table gives no body."""
    from batch_audience._columnar import (
        Kernels,
        Writer,
        check_table,
        encode_table,
        memory_pool,
        plan_columns,
    )
    from batch_audience._validate import EntryEncoder

    table = every_type(45).drop_columns(["plan"])
    table = pa.concat_tables([table.slice(0, 20), table.slice(20)])  # two chunks
    pc = Kernels(pa, memory_pool(pa))
    plan = plan_columns(pa, table.schema, EntryEncoder("2", "add"))
    checked = check_table(pc, table, plan, start=100)
    writer = Writer(pc)
    try:
        bodies = encode_table(writer, checked, plan, "add", size=10)
        empty = check_table(pc, table.slice(0, 0), plan)
        assert encode_table(writer, empty, plan, "add") == []
    finally:
        writer.close()
    expected = [bytes(c.body) for c in iter_columnar(table, Intake("2", "add"), size=10)]
    assert [bytes(b) for b in bodies] == expected
    ids = table.column("id").to_pylist()
    ids[33] = ""
    with pytest.raises(ba.ValidationError) as info:
        check_table(pc, table.set_column(0, "id", pa.array(ids)), plan, start=100)
    assert info.value.position == 133
