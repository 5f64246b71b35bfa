"""``batch-audience sync`` as a subprocess against the fake server: end to end, the plan and
report, exit statuses, refusals and drift, and a SIGKILLed sync that a rerun converges."""

from __future__ import annotations

import asyncio
import io
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import batch_audience as ba
from batch_audience._cli.output import Console
from batch_audience._cli.sync import _PhaseBars
from batch_audience.testing import FakeBatchServer
from tests.integration.test_cli import (
    APP,
    PROJECT,
    REST,
    UPDATE,
    assert_clean,
    cli,
    environment,
    running,
    write,
)

REPLACE = "/audiences/replace"


@pytest.fixture
async def server() -> AsyncIterator[FakeBatchServer]:
    """A fake server that accepts the canary keys of test_cli."""
    async with FakeBatchServer(rest_key=REST, project_key=PROJECT, api_key=APP) as fake:
        yield fake


def csv(ids: range, rank: int = 0, first: str = "") -> str:
    """A CSV with an int attribute; ``first`` rows go before the others."""
    return "id,int:rank\n" + first + "".join(f"u-{i},{i + rank}\n" for i in ids)


def writes(server: FakeBatchServer) -> list[tuple[str, int]]:
    """The write requests the server got: (route, entries)."""
    return [
        (r.path.rsplit("/", 1)[-1], r.entries)
        for r in server.requests
        if r.path.endswith((UPDATE, REPLACE))
    ]


async def test_sync_end_to_end_with_a_dry_run_and_json(
    server: FakeBatchServer,
    tmp_path: Path,
) -> None:
    """First sync, a dry run that sends nothing, an incremental sync; tables and JSON."""
    state = str(tmp_path / "aud.state")
    assert (await cli(server, "create", "aud")).code == 0
    first = await cli(server, "sync", "aud", str(write(tmp_path / "a.csv", csv(range(50)))),
                      "--state", state)  # fmt: skip
    assert first.code == 0, first.err
    assert "sync 'aud' from" in first.out and "50 records" in first.out
    assert "sent the whole input as a replace: 50 IDs in 1 request" in first.out
    assert writes(server) == [("replace", 50)]

    second = write(tmp_path / "b.csv", csv(range(5, 50), first="u-7,-7\nnew,1\nnew,2\n"))
    server.reset_stats()
    plan = await cli(server, "sync", "aud", str(second), "--state", state, "--dry-run")
    assert plan.code == 0, plan.err
    assert writes(server) == []
    assert "dry run:" in plan.out and "Nothing was sent" in plan.out
    assert "2 duplicate IDs" in plan.out
    assert "e.g. u-0, u-1, u-2, u-3, u-4" in plan.out  # removed examples
    done = await cli(server, "sync", "aud", str(second), "--state", state, "--json", "--wait")
    assert done.code == 0, done.err
    report = done.json()
    assert {k: report[k] for k in ("added", "changed", "removed", "unchanged", "duplicates")} == {
        "added": 1,
        "changed": 0,  # u-7 comes again later with its old value: the last one wins
        "removed": 5,
        "unchanged": 45,
        "duplicates": 2,
    }
    assert (report["full"], report["requests"], report["file"], report["format"]) == (
        False,
        2,
        str(second),
        "csv",
    )
    assert set(report["states"].values()) == {"APPLIED"}
    members = server.members("aud")
    assert set(members) == {f"u-{i}" for i in range(5, 50)} | {"new"}
    assert members["new"].attributes == {"rank": 2}


async def test_sync_refusals_and_bad_input_exit_2_and_send_nothing(
    server: FakeBatchServer,
    tmp_path: Path,
) -> None:
    """Another audience's state, drift, a bad record: exit 2 with a clear message, no write."""
    state = str(tmp_path / "aud.state")
    data = str(write(tmp_path / "a.csv", csv(range(10))))
    await cli(server, "create", "aud")
    await cli(server, "create", "other")
    assert (await cli(server, "sync", "aud", data, "--state", state)).code == 0
    server.reset_stats()
    refused = await cli(server, "sync", "other", data, "--state", state)
    assert refused.code == 2
    assert "belongs to another audience" in refused.err

    bad = write(tmp_path / "bad.csv", "id,int:rank\nu-1,1\nu-2,zz\n")
    wrong = await cli(server, "sync", "aud", str(bad), "--state", state)
    assert wrong.code == 2
    assert "bad.csv:3" in wrong.err

    assert (await cli(server, "upload", "aud", str(write(tmp_path / "x.csv", "id\nx\n")))).code == 0
    server.reset_stats()
    drift = await cli(server, "sync", "aud", data, "--state", state)
    assert drift.code == 2
    assert "--full" in drift.err and "changed by something else" in drift.err
    assert writes(server) == []
    fixed = await cli(server, "sync", "aud", data, "--state", state, "--full", "--json")
    assert fixed.code == 0, fixed.err
    assert fixed.json()["full"] is True
    assert set(server.members("aud")) == {f"u-{i}" for i in range(10)}

    missing = await cli(server, "sync", "nosuch", data, "--state", str(tmp_path / "n.state"))
    assert missing.code == 1


async def test_a_killed_sync_is_converged_by_a_rerun(
    server: FakeBatchServer,
    tmp_path: Path,
) -> None:
    """SIGKILL while sending: the state keeps the last sync; the same command converges."""
    state = str(tmp_path / "aud.state")
    await cli(server, "create", "aud")
    assert (await cli(server, "sync", "aud", str(write(tmp_path / "a.csv", csv(range(2_000)))),
                      "--state", state)).code == 0  # fmt: skip
    # New IDs first (they land before the kill), then 2,000 changed ranks: 21 adds of 100.
    new = "".join(f"n-{i},{i}\n" for i in range(100))
    second = write(tmp_path / "b.csv", csv(range(2_000), rank=1, first=new))
    server.reset_stats()
    server.fail_next(delay=0.01, times=3, path=UPDATE)
    server.fail_next(delay=30, times=30, path=UPDATE)
    args = ("sync", "aud", str(second), "--state", state, "--chunk-size", "100",
            "--concurrency", "1")  # fmt: skip
    async with running(*args, env=environment(server)) as process:
        for _ in range(3000):
            if len([r for r in server.requests if r.path.endswith(UPDATE)]) >= 3:
                break
            assert process.returncode is None, "the sync ended before it could be killed"
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the sync never sent its first requests")
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), timeout=30)
    server.clear_faults()
    assert "n-0" in server.members("aud")
    # The rerun's file no longer holds n-0, which the killed run added: it is removed.
    third = write(tmp_path / "c.csv", csv(range(2_000), rank=1, first=new.split("\n", 1)[1]))
    result = await cli(server, "sync", "aud", str(third), "--state", state, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["resumed"] is True and report["full"] is False
    members = server.members("aud")
    assert set(members) == {f"u-{i}" for i in range(2_000)} | {f"n-{i}" for i in range(1, 100)}
    assert all(members[f"u-{i}"].attributes == {"rank": i + 1} for i in range(2_000))
    assert_clean(result.out, result.err)


def test_a_bar_per_phase_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading, diffing and each upload get their own bar, each replacing the last."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    console = Console()
    bars = _PhaseBars(console, enabled=True)
    for operation, records, total in (
        ("read", 50_000, None),
        ("read", 100_000, None),
        ("diff", 100_000, 100_000),
        ("remove", 5_000, 5_000),
        ("add", 2_000, 4_000),
    ):
        update = ba.Progress(
            audience="aud", operation=operation, records=records, total=total, requests=1,
            retries=0, elapsed=1.0,
        )  # fmt: skip
        bars.progress(update)
    assert console.bar is not None
    bars.close()
    shown = stderr.getvalue()
    for desc in ("reading", "diffing", "removing", "adding"):
        assert desc in shown
    assert "100k" in shown and "2.00k/4.00k" in shown
    assert console.bar is None
