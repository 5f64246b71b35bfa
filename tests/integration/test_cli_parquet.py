"""`upload FILE.parquet`: the same pre-check, dry run, report and checkpoint as CSV and NDJSON."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batch_audience as ba
from batch_audience.testing import FakeBatchServer
from tests.integration.test_cli import (
    APP,
    PROJECT,
    REPLACE,
    REST,
    UPDATE,
    cli,
    environment,
    running,
    wait_for_acks,
)


@pytest.fixture
async def server() -> AsyncIterator[FakeBatchServer]:
    """A fake server that accepts the canary keys of the CLI tests."""
    async with FakeBatchServer(rest_key=REST, project_key=PROJECT, api_key=APP) as fake:
        yield fake


@pytest.fixture
async def client(server: FakeBatchServer) -> AsyncIterator[ba.AudienceClient]:
    """A 2.x client of the fake server, for setting up and checking."""
    async with ba.AudienceClient(REST, PROJECT, base_url=server.url) as c:
        yield c


def write_parquet(path: Path, rows: int, *, bad_row: int | None = None) -> Path:
    """A Parquet file of ``rows`` users (small row groups), with a null ID at ``bad_row``."""
    ids: list[str | None] = [f"u-{i}" for i in range(rows)]
    if bad_row is not None:
        ids[bad_row] = None
    table = pa.table(
        {
            "id": ids,
            "rank": list(range(rows)),
            "plan": [None if i % 4 == 0 else "pro" for i in range(rows)],
            "seen": pa.array(
                [datetime(2024, 1, 2, 10, tzinfo=UTC)] * rows, pa.timestamp("ms", "UTC")
            ),
        }
    )
    pq.write_table(table, path, row_group_size=300)
    return path


async def test_upload_a_parquet_file(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """A .parquet file is read by its extension and lands with typed attributes."""
    await client.create("pq")
    data = write_parquet(tmp_path / "users.parquet", 2_500)
    result = await cli(server, "upload", "pq", str(data), "--chunk-size", "1000", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert (report["records"], report["requests"], report["format"]) == (2_500, 3, "parquet")
    members = server.members("pq")
    assert len(members) == 2_500
    assert members["u-5"].attributes == {
        "rank": 5,
        "plan": "pro",
        "date(seen)": "2024-01-02T10:00:00Z",
    }
    assert members["u-4"].attributes == {"rank": 4, "date(seen)": "2024-01-02T10:00:00Z"}


async def test_a_bad_row_is_found_before_anything_is_sent(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """The whole file is checked first: a null ID at row 1,701 exits 2 naming it; nothing sent."""
    await client.create("pq")
    data = write_parquet(tmp_path / "users.parquet", 2_000, bad_row=1_700)
    server.reset_stats()
    result = await cli(server, "upload", "pq", str(data), "--chunk-size", "100")
    assert result.code == 2
    assert "users.parquet:1701: record 1701" in result.err
    assert "id must be a non-empty str" in result.err
    assert server.requests == []


async def test_a_bad_schema_and_a_dry_run(tmp_path: Path) -> None:
    """--dry-run checks and plans without keys; a refused column type or stdin exits 2."""
    data = write_parquet(tmp_path / "users.parquet", 2_345)
    planned = await cli(None, "upload", "any", str(data), "--dry-run", "--json")
    assert planned.code == 0, planned.err
    assert (planned.json()["records"], planned.json()["requests"]) == (2_345, 1)
    bad = tmp_path / "flags.parquet"
    pq.write_table(pa.table({"id": ["a"], "flag": [True]}), bad)
    refused = await cli(None, "upload", "any", str(bad), "--dry-run")
    assert refused.code == 2
    assert "'flag'" in refused.err and "booleans" in refused.err
    piped = await cli(None, "upload", "any", "-", "--format", "parquet", "--dry-run", stdin=b"")
    assert piped.code == 2
    assert "Parquet cannot be read from stdin" in piped.err


async def test_remove_reads_only_the_ids(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """--mode remove with the file that filled the audience removes its IDs."""
    await client.create("pq")
    await client.add("pq", ["keep", *(f"u-{i}" for i in range(500))])
    data = write_parquet(tmp_path / "users.parquet", 500)
    result = await cli(server, "upload", "pq", str(data), "--mode", "remove")
    assert result.code == 0, result.err
    assert set(server.members("pq")) == {"keep"}


@pytest.mark.parametrize(
    ("module", "extra_env"),
    [
        ("pyarrow", {}),
        ("numpy", {}),
        ("duckdb", {}),
    ],
)
async def test_without_the_extra_the_command_says_what_to_install(
    tmp_path: Path, module: str, extra_env: dict[str, str]
) -> None:
    """Without a module of the extra importable, a Parquet upload exits 2 with the install
    command."""
    data = write_parquet(tmp_path / "users.parquet", 10)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / f"{module}.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\")\n"
    )
    env = environment(None, PYTHONPATH=str(shadow), **extra_env)
    result = await cli(None, "upload", "any", str(data), "--dry-run", env=env)
    assert result.code == 2
    assert "pip install 'batch-audience[data]'" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("mode", ["add", "replace"])
async def test_an_interrupted_parquet_upload_resumes_from_its_checkpoint(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path, mode: str
) -> None:
    """Killed mid-way, the same command resumes after the acknowledged rows: exact members."""
    await client.create("resume")
    await client.add("resume", ["old-1"])
    data = write_parquet(tmp_path / "in.parquet", 2_000)
    checkpoint = tmp_path / "in.ckpt"
    args = (
        "upload", "resume", str(data), "--mode", mode, "--chunk-size", "100",
        "--concurrency", "2", "--checkpoint", str(checkpoint),
    )  # fmt: skip
    server.reset_stats()
    path = REPLACE if mode == "replace" else UPDATE
    server.fail_next(delay=0.01, times=1, path=path)
    server.fail_next(delay=0.01, times=5, path=UPDATE)
    server.fail_next(delay=30, times=20, path=UPDATE)
    async with running(*args, env=environment(server)) as process:
        await wait_for_acks(checkpoint, 6, process)
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), timeout=30)
    first_run = len(server.requests)
    server.clear_faults()

    result = await cli(server, *args, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert (report["records"], report["resumed_from"]) == (2_000, 600)
    later = [r for r in server.requests[first_run:] if r.path.endswith((UPDATE, REPLACE))]
    assert len(later) == 14  # chunks 6..19 only
    assert not any(r.path.endswith(REPLACE) for r in later)
    members = server.members("resume")
    expected = {f"u-{i}" for i in range(2_000)} | (set() if mode == "replace" else {"old-1"})
    assert set(members) == expected
    assert members["u-1999"].attributes["rank"] == 1999
    assert not checkpoint.exists()
