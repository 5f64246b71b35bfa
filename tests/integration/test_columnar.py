"""Columnar sources over real HTTP: tables, readers, Parquet and DuckDB into the fake server."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batch_audience as ba
from batch_audience.testing import FakeBatchServer


class ArrowStream:
    """Any library's table (pandas >= 2.2, polars) as the library sees it: __arrow_c_stream__."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        return self.table.__arrow_c_stream__(requested_schema)


def users(rows: int, offset: int = 0) -> pa.Table:
    """A table of users with attributes of each kind and a few null cells."""
    return pa.table(
        {
            "id": [f"u-{i}" for i in range(offset, offset + rows)],
            "plan": [None if i % 5 == 0 else f"plan-{i % 3}" for i in range(rows)],
            "age": pa.array([20 + i % 50 for i in range(rows)], pa.int32()),
            "score": [i / 4 for i in range(rows)],
            "seen": pa.array(
                [datetime(2024, 1, 1 + i % 28, 12, tzinfo=UTC) for i in range(rows)],
                pa.timestamp("s", "UTC"),
            ),
            "url(avatar)": [f"https://cdn.example/{i}.png" for i in range(rows)],
            "interests": [["bikes", "books"] if i % 2 else [] for i in range(rows)],
        }
    )


# Row 7 of users(): what every source kind must land for it.
U7: dict[str, Any] = {
    "plan": "plan-1",
    "age": 27,
    "score": 1.75,
    "date(seen)": "2024-01-08T12:00:00Z",
    "url(avatar)": "https://cdn.example/7.png",
    "interests": ["bikes", "books"],
}


def records_of(table: pa.Table) -> list[dict[str, Any]]:
    """The same rows as record mappings (null cells left out)."""
    names = [n for n in table.column_names if n not in ("id", "tags")]
    out = []
    for row in table.to_pylist():
        record: dict[str, Any] = {
            "id": row["id"],
            "attributes": {n: row[n] for n in names if row[n] is not None},
        }
        if "tags" in row:
            record["tags"] = row["tags"]
        out.append(record)
    return out


async def test_a_table_lands_like_the_same_records(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A pyarrow Table gives the audience exactly what its rows as records give."""
    table = users(12_345)
    await client.create("cols")
    await client.create("recs")
    # 5,000 rows per request keep each body under aiohttp's 1 MiB warning threshold.
    from_table = await client.add("cols", table, chunk_size=5_000)
    from_records = await client.add("recs", records_of(table), chunk_size=5_000)
    members = fake_server.members("cols")
    assert members == fake_server.members("recs")
    assert len(members) == 12_345
    assert members["u-7"].attributes == U7
    assert "plan" not in members["u-5"].attributes
    assert (from_table.records, from_table.requests, from_table.audience) == (12_345, 3, "cols")
    assert from_records.records == from_table.records


async def test_a_parquet_reader_with_tags_on_1_1(
    client_v11: ba.CustomAudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """A RecordBatchReader over a Parquet file (small batches) fills a 1.1 audience with tags."""
    table = users(21_000).append_column(
        "tags", pa.array([["vip"] if i % 3 == 0 else ["new", "fr"] for i in range(21_000)])
    )
    path = tmp_path / "users.parquet"
    pq.write_table(table, path, row_group_size=4_000)
    file = pq.ParquetFile(path)
    reader = pa.RecordBatchReader.from_batches(
        file.schema_arrow, file.iter_batches(batch_size=3_333)
    )
    await client_v11.create("pq")
    report = await client_v11.add("pq", reader, chunk_size=5_000)
    members = fake_server.members("pq", api_key=fake_server.api_key)
    assert len(members) == 21_000
    assert members["u-3"].tags == ("vip",)
    assert members["u-4"].tags == ("new", "fr")
    assert members["u-4"].attributes["date(seen)"] == "2024-01-05T12:00:00Z"
    assert (report.records, report.requests) == (21_000, 5)


async def test_a_duckdb_relation_and_any_arrow_stream(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A DuckDB relation and any object with __arrow_c_stream__ are columnar sources too."""
    con = duckdb.connect()
    try:
        relation = con.sql(
            "SELECT 'd-' || i::VARCHAR AS id, i % 7 AS bucket, 'x' || (i % 3)::VARCHAR AS label "
            "FROM range(15000) t(i)"
        )
        await client.create("duck")
        report = await client.add("duck", relation)
    finally:
        con.close()
    members = fake_server.members("duck")
    assert len(members) == 15_000 and report.records == 15_000
    assert members["d-10"].attributes == {"bucket": 3, "label": "x1"}

    await client.create("stream")
    await client.create("table")
    await client.add("stream", ArrowStream(users(500)))
    await client.add("table", users(500))
    assert len(fake_server.members("stream")) == 500
    assert fake_server.members("stream") == fake_server.members("table")


async def test_pandas_and_polars_dataframes(
    client_v11: ba.CustomAudienceClient, fake_server: FakeBatchServer
) -> None:
    """pandas and polars DataFrames go in as they are: the members the same rows give as a table."""
    import pandas as pd
    import polars as pl

    table = users(7_000).append_column(
        "tags", pa.array([["vip"] if i % 3 == 0 else ["new", "fr"] for i in range(7_000)])
    )
    pandas_frame = table.to_pandas()
    assert isinstance(pandas_frame, pd.DataFrame) and hasattr(pandas_frame, "__arrow_c_stream__")
    polars_frame = pl.from_arrow(table)
    assert isinstance(polars_frame, pl.DataFrame)
    for name, source in (("arrow", table), ("pandas", pandas_frame), ("polars", polars_frame)):
        await client_v11.create(name)
        report = await client_v11.add(name, source, chunk_size=5_000)
        assert (report.records, report.requests) == (7_000, 2), name
    members = {
        name: fake_server.members(name, api_key=fake_server.api_key)
        for name in ("arrow", "pandas", "polars")
    }
    assert len(members["arrow"]) == 7_000
    assert members["pandas"] == members["arrow"]
    assert members["polars"] == members["arrow"]
    assert members["polars"]["u-3"].tags == ("vip",)
    assert members["pandas"]["u-7"].attributes == U7
    assert "plan" not in members["polars"]["u-5"].attributes


async def test_a_chunked_replace_of_25001_rows(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A 25,001-row replace: exactly those members; the adds follow the replace's answer."""
    await client.create("r")
    await client.add("r", [f"old-{i}" for i in range(50)])
    fake_server.reset_stats()
    table = pa.table({"id": [f"n-{i}" for i in range(25_001)], "rank": list(range(25_001))})
    report = await client.replace("r", table, concurrency=4)
    members = fake_server.members("r")
    assert set(members) == {f"n-{i}" for i in range(25_001)}
    assert members["n-25000"].attributes == {"rank": 25_000}
    assert (report.records, report.requests, report.atomic) == (25_001, 3, False)
    first, *rest = fake_server.requests
    assert first.path.endswith("/audiences/replace")
    assert all(r.path.endswith("/audiences/update") for r in rest)
    assert all(r.received >= first.answered for r in rest)


async def test_a_bad_row_at_25000_is_named_and_nothing_from_it_is_sent(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A null ID at row 25,000 raises naming that row; only the chunks before it land."""
    ids: list[str | None] = [f"u-{i}" for i in range(30_000)]
    ids[25_000] = None
    await client.create("bad")
    fake_server.reset_stats()
    with pytest.raises(ba.ValidationError) as caught:
        await client.add("bad", pa.table({"id": ids, "n": list(range(30_000))}), concurrency=2)
    err = caught.value
    assert (err.position, err.record_id) == (25_000, None)
    assert "id must be a non-empty str" in str(err)
    assert err.acknowledged == 20_000
    assert len(fake_server.members("bad")) == 20_000
    assert sum(r.entries for r in fake_server.requests) == 20_000


async def test_a_bad_schema_sends_nothing(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """An unsupported column type raises before any request."""
    await client.create("schema")
    fake_server.reset_stats()
    table = pa.table({"id": ["a"], "flag": [True]})
    with pytest.raises(ba.ValidationError, match=r"'flag'.*booleans"):
        await client.add("schema", table)
    assert fake_server.requests == []


async def test_remove_with_a_table_of_ids(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """remove takes a table of IDs; the other members stay."""
    await client.create("rm")
    await client.add("rm", users(100))
    report = await client.remove("rm", pa.table({"id": [f"u-{i}" for i in range(0, 100, 2)]}))
    assert set(fake_server.members("rm")) == {f"u-{i}" for i in range(1, 100, 2)}
    assert report.records == 50


async def test_without_the_extra_the_upload_says_what_to_install(
    client: ba.AudienceClient, fake_server: FakeBatchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without duckdb importable, a columnar upload names the install command and sends nothing."""
    await client.create("extra")
    fake_server.reset_stats()
    monkeypatch.setitem(sys.modules, "duckdb", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'batch-audience\[data\]'"):
        await client.add("extra", ArrowStream(pa.table({"id": ["a"]})))
    assert fake_server.requests == []


async def test_list_views_polars_categories_and_nanosecond_extremes_land_exactly(
    client_v11: ba.CustomAudienceClient, fake_server: FakeBatchServer
) -> None:
    """List views (overlapping, out of order), polars Categorical and Enum (IDs, attributes,
    tags) and nanosecond timestamps at the ends of int64 land with their exact values."""
    import polars as pl

    items = pa.array(["x", "bikes", "books", "vip", "fr"])
    views = pa.ListViewArray.from_arrays(
        pa.array([1, 0, 3, 1], pa.int32()), pa.array([2, 0, 2, 1], pa.int32()), items
    )
    large = pa.LargeListViewArray.from_arrays(
        pa.array([3, 3, 0, 1], pa.int64()), pa.array([2, 1, 0, 2], pa.int64()), items
    )
    table = pa.table(
        {
            "id": ["u-0", "u-1", "u-2", "u-3"],
            "interests": views,
            "tags": large,
            "seen": pa.array([2**63 - 1, -(2**63), 0, 1], pa.timestamp("ns", "UTC")),
        }
    )
    await client_v11.create("views")
    await client_v11.add("views", table)
    members = fake_server.members("views", api_key=fake_server.api_key)
    assert {rid: (m.attributes, m.tags) for rid, m in members.items()} == {
        "u-0": (
            {"interests": ["bikes", "books"], "date(seen)": "2262-04-11T23:47:16.854775807Z"},
            ("vip", "fr"),
        ),
        "u-1": ({"interests": [], "date(seen)": "1677-09-21T00:12:43.145224192Z"}, ("vip",)),
        "u-2": ({"interests": ["vip", "fr"], "date(seen)": "1970-01-01T00:00:00Z"}, ()),
        "u-3": (
            {"interests": ["bikes"], "date(seen)": "1970-01-01T00:00:00.000000001Z"},
            ("bikes", "books"),
        ),
    }

    frame = pl.DataFrame(
        {
            "id": ["p-1", "p-2", "p-3"],
            "plan": ["pro", None, "free"],
            "tier": ["gold", "silver", "gold"],
            "tags": [["vip", "fr"], [], None],
        },
        schema={
            "id": pl.Categorical,
            "plan": pl.Categorical,
            "tier": pl.Enum(["silver", "gold"]),
            "tags": pl.List(pl.Categorical),
        },
    )
    await client_v11.create("polars")
    await client_v11.add("polars", frame)
    members = fake_server.members("polars", api_key=fake_server.api_key)
    assert {rid: (m.attributes, m.tags) for rid, m in members.items()} == {
        "p-1": ({"plan": "pro", "tier": "gold"}, ("vip", "fr")),
        "p-2": ({"tier": "silver"}, ()),
        "p-3": ({"plan": "free", "tier": "gold"}, ()),
    }
