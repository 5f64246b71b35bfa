"""Mirror sync against the fake server over HTTP: first and incremental syncs, dry runs,
failures and reruns, refusals, concurrent syncs, drift, duplicates, API generations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

import batch_audience as ba
from batch_audience.testing import FakeBatchServer
from tests.conftest import RecordingSleep, make_v1_client

UPDATE = "/audiences/update"
REPLACE = "/audiences/replace"


def people(ids: Iterable[int], rank: int = 0, prefix: str = "u") -> list[dict[str, Any]]:
    """Records ``prefix-i`` with attribute ``rank`` = i + rank."""
    return [{"id": f"{prefix}-{i}", "attributes": {"rank": i + rank}} for i in ids]


def writes(server: FakeBatchServer) -> list[tuple[str, int]]:
    """The write requests the server got: (route, entries)."""
    return [
        (r.path.rsplit("/", 1)[-1], r.entries)
        for r in server.requests
        if r.path.endswith((UPDATE, REPLACE))
    ]


def ranks(server: FakeBatchServer, name: str) -> dict[str, Any]:
    """Each member's rank attribute."""
    return {i: m.attributes.get("rank") for i, m in server.members(name).items()}


async def test_a_first_sync_replaces_then_later_ones_send_only_the_changes(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """The first sync replaces (not atomic past 10,000); the next sends exact changes only."""
    state = tmp_path / "aud.state"
    await client.create("aud")
    await client.add("aud", ["stranger"])  # a replace wipes what was there before
    fake_server.reset_stats()
    first = await client.sync("aud", people(range(25_000)), state=state)
    assert (first.full, first.atomic, first.dry_run, first.resumed) == (True, False, False, False)
    assert (first.records, first.added, first.requests, len(first.tokens)) == (25_000, 25_000, 3, 3)
    assert writes(fake_server) == [("replace", 10_000), ("update", 10_000), ("update", 5_000)]
    assert ranks(fake_server, "aud") == {f"u-{i}": i for i in range(25_000)}

    # 300 gone, 50 changed, 10 new, the rest as they were.
    second_source = people(range(300, 25_000))
    for record in second_source[:50]:
        record["attributes"] = {"rank": -1}
    second_source += people(range(90_000, 90_010))
    fake_server.reset_stats()
    second = await client.sync("aud", second_source, state=state)
    assert (second.added, second.changed, second.removed, second.unchanged) == (
        10,
        50,
        300,
        24_650,
    )
    assert (second.full, second.records, second.sent, second.requests) == (False, 24_710, 360, 2)
    assert writes(fake_server) == [("update", 300), ("update", 60)]  # removes, then adds
    expected = {f"u-{i}": i for i in range(350, 25_000)}
    expected |= {f"u-{i}": -1 for i in range(300, 350)}
    expected |= {f"u-{i}": i for i in range(90_000, 90_010)}
    assert ranks(fake_server, "aud") == expected

    fake_server.reset_stats()
    third = await client.sync("aud", second_source, state=state, wait=True)
    assert (third.sent, third.requests, third.unchanged, third.states) == (0, 0, 24_710, None)
    assert writes(fake_server) == []


async def test_a_dry_run_sends_nothing_and_leaves_the_state(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """A dry run plans with example IDs; no write is sent and a later sync plans the same."""
    state = tmp_path / "aud.state"
    await client.create("aud")
    plan = await client.sync("aud", people(range(10)), state=state, dry_run=True)
    assert (plan.dry_run, plan.full, plan.added, plan.requests) == (True, True, 10, 1)
    assert not state.exists()
    await client.sync("aud", people(range(10)), state=state)
    fake_server.reset_stats()
    source = people(range(2, 12))
    source[0]["attributes"] = {"rank": 99}
    plan = await client.sync("aud", source, state=state, dry_run=True)
    assert (plan.added, plan.changed, plan.removed, plan.unchanged) == (2, 1, 2, 7)
    assert plan.examples == {
        "added": ("u-10", "u-11"),
        "changed": ("u-2",),
        "removed": ("u-0", "u-1"),
    }
    assert (plan.requests, plan.tokens) == (2, ())
    assert writes(fake_server) == []
    assert set(fake_server.members("aud")) == {f"u-{i}" for i in range(10)}
    report = await client.sync("aud", source, state=state)
    assert (report.added, report.changed, report.removed) == (2, 1, 2)
    assert report.examples == {}


async def test_a_sync_failing_part_way_is_converged_by_a_rerun(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """A refused 2nd update stops the sync; the state keeps the last one; rerunning converges."""
    state = tmp_path / "aud.state"
    await client.create("aud")
    await client.sync("aud", people(range(20_000)), state=state)
    # New IDs first: they go out in the first add request, which lands.
    source = people(range(50_000, 50_100)) + people(range(500, 20_000), rank=1)

    def fail_after_the_first_write(update: ba.Progress) -> None:
        if update.operation == "add" and update.requests == 1:
            fake_server.fail_next(status=400, path=UPDATE)

    fake_server.reset_stats()
    with pytest.raises(ba.BadRequestError) as caught:
        await client.sync(
            "aud", source, state=state, concurrency=1, progress=fail_after_the_first_write
        )
    assert any("run the same sync again" in note for note in caught.value.__notes__)
    # The removes, then the first add request; the second add request was refused.
    assert writes(fake_server) == [("update", 500), ("update", 10_000), ("update", 9_600)]
    assert fake_server.requests[-1].status == 400
    assert "u-50000" in fake_server.members("aud")

    # The rerun's source also drops u-50000, which the failed run may have added: it goes too.
    source = [r for r in source if r["id"] != "u-50000"]
    rerun = await client.sync("aud", source, state=state)
    assert rerun.resumed and not rerun.full
    expected = {f"u-{i}": i + 1 for i in range(500, 20_000)}
    expected |= {f"u-{i}": i for i in range(50_001, 50_100)}
    assert ranks(fake_server, "aud") == expected
    fake_server.reset_stats()
    again = await client.sync("aud", source, state=state)
    assert (again.resumed, again.sent, writes(fake_server)) == (False, 0, [])


async def test_a_bad_record_sends_nothing_and_keeps_the_state(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """A record breaking a rule stops the sync before any request; the state is untouched."""
    state = tmp_path / "aud.state"
    await client.create("aud")
    await client.sync("aud", people(range(5)), state=state)
    fake_server.reset_stats()
    bad = [*people(range(5, 10)), {"id": "x", "attributes": {"Bad Key": 1}}]
    with pytest.raises(ba.ValidationError) as caught:
        await client.sync("aud", bad, state=state)
    assert caught.value.position == 5
    assert writes(fake_server) == []
    report = await client.sync("aud", people(range(5)), state=state)
    assert (report.sent, report.resumed) == (0, False)


async def test_a_state_of_another_audience_is_refused_before_sending(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """A state made for one audience refuses another, before any request."""
    state = tmp_path / "aud.state"
    await client.create("one")
    await client.create("two")
    await client.sync("one", people(range(3)), state=state)
    fake_server.reset_stats()
    with pytest.raises(ba.SyncStateError, match="state of audience 'one', not 'two'"):
        await client.sync("two", people(range(3)), state=state)
    assert fake_server.requests == []
    assert fake_server.members("two") == {}


async def test_a_second_sync_of_one_state_at_once_is_refused(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """While a sync holds its state, another sync of it is refused; the first one goes on."""
    state = tmp_path / "aud.state"
    await client.create("aud")
    reading = asyncio.Event()
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[object]:
        yield "a"
        reading.set()  # the state is open (and locked) before the source is read
        await gate.wait()
        yield "b"

    first = asyncio.create_task(client.sync("aud", slow(), state=state))
    await asyncio.wait_for(reading.wait(), timeout=30)
    with pytest.raises(ba.SyncStateError, match="in use by another sync"):
        await client.sync("aud", ["c"], state=state)
    gate.set()
    report = await first
    assert report.added == 2
    assert set(fake_server.members("aud")) == {"a", "b"}


async def test_drift_is_detected_and_a_full_sync_repairs_it(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """A member added elsewhere stops the next sync, naming full=True, which then repairs it."""
    state = tmp_path / "aud.state"
    await client.create("aud")
    await client.sync("aud", people(range(100)), state=state)
    await client.add("aud", ["intruder"])
    fake_server.reset_stats()
    with pytest.raises(ba.SyncDriftError, match=r"holds 101 IDs, but the last sync left 100"):
        await client.sync("aud", people(range(100)), state=state)
    assert writes(fake_server) == []
    with pytest.raises(ba.SyncDriftError, match=r"full=True"):
        await client.sync("aud", people(range(100)), state=state, dry_run=True)
    report = await client.sync("aud", people(range(100)), state=state, full=True)
    assert (report.full, report.unchanged, report.requests) == (True, 100, 1)
    assert writes(fake_server) == [("replace", 100)]
    assert set(fake_server.members("aud")) == {f"u-{i}" for i in range(100)}
    again = await client.sync("aud", people(range(100)), state=state)
    assert (again.full, again.sent) == (False, 0)


async def test_drift_is_not_judged_while_indexing_is_in_progress(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """nb_ids may lag behind writes being indexed: no drift error until they are APPLIED."""
    state = tmp_path / "aud.state"
    await client.create("aud")
    await client.sync("aud", ["a", "b"], state=state)
    fake_server.indexing_delay = 3600
    await client.add("aud", ["intruder"])
    report = await client.sync("aud", ["a", "b", "c"], state=state)
    assert report.added == 1


async def test_duplicate_ids_are_counted_and_the_last_occurrence_wins(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """Duplicates: counted, and the last record of an ID is what the audience holds."""
    state = tmp_path / "aud.state"
    await client.create("aud")
    source = [*people([1, 2], rank=0), *people([1], rank=10), *people([2], rank=20), "3"]
    first = await client.sync("aud", source, state=state)
    assert (first.records, first.duplicates) == (3, 2)
    assert ranks(fake_server, "aud") == {"u-1": 11, "u-2": 22, "3": None}
    second = await client.sync(
        "aud", [*people([1], rank=10), *people([1], rank=0), "3"], state=state
    )
    assert (second.duplicates, second.changed, second.removed, second.unchanged) == (1, 1, 1, 1)
    assert ranks(fake_server, "aud") == {"u-1": 1, "3": None}


async def test_tags_changes_on_custom_audience_api_1_1(
    fake_server: FakeBatchServer, sleep: RecordingSleep, tmp_path: Path
) -> None:
    """1.1: a changed tag list is a change; the members end with exactly the source's tags."""
    state = tmp_path / "aud.state"
    async with make_v1_client(fake_server, "1.1", sleep) as client:
        await client.create("aud")
        await client.sync("aud", [ba.Record("i-1", tags=["a"]), ba.Record("i-2")], state=state)
        fake_server.reset_stats()
        report = await client.sync(
            "aud", [ba.Record("i-1", tags=["b"]), ba.Record("i-2")], state=state
        )
        assert (report.changed, report.unchanged, report.requests) == (1, 1, 1)
        members = fake_server.members("aud", api_key=fake_server.api_key)
        assert {i: set(m.tags) for i, m in members.items()} == {"i-1": {"b"}, "i-2": set()}


async def test_custom_audience_api_1_0_syncs_an_empty_audience_with_adds(
    fake_server: FakeBatchServer, sleep: RecordingSleep, tmp_path: Path
) -> None:
    """1.0 has no replace: a first sync adds into an empty audience, and refuses a filled one."""
    async with make_v1_client(fake_server, "1.0", sleep) as client:
        await client.create("empty")
        report = await client.sync("empty", ["a", "b"], state=tmp_path / "empty.state")
        assert (report.full, report.added) == (True, 2)
        assert set(fake_server.members("empty", api_key=fake_server.api_key)) == {"a", "b"}
        again = await client.sync("empty", ["b"], state=tmp_path / "empty.state")
        assert (again.removed, again.requests) == (1, 1)
        await client.create("filled")
        await client.add("filled", ["x"])
        with pytest.raises(ba.UnsupportedOperation, match="delete and recreate"):
            await client.sync("filled", ["a"], state=tmp_path / "filled.state")
        assert set(fake_server.members("filled", api_key=fake_server.api_key)) == {"x"}


async def test_progress_reports_each_phase_in_order(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """read (with the source's length), diff, then each upload with the planned total."""
    state = tmp_path / "aud.state"
    await client.create("aud")
    await client.sync("aud", ["a", "b"], state=state)
    seen: list[ba.Progress] = []
    await client.sync("aud", ["b", "c"], state=state, progress=seen.append)
    phases = [p.operation for p in seen]
    assert phases == ["read", "diff", "remove", "add"]
    assert (seen[0].records, seen[0].total) == (2, 2)
    assert [(p.records, p.total) for p in seen[2:]] == [(1, 1), (1, 1)]


async def test_a_cancelled_sync_releases_its_state_and_a_rerun_converges(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """Cancelled while sending: the lock is released, the task ends, and a rerun converges."""
    state = tmp_path / "aud.state"
    await client.create("aud")
    await client.sync("aud", people(range(100)), state=state)
    fake_server.fail_next(delay=3600, path=UPDATE)  # the first write hangs
    task = asyncio.create_task(client.sync("aud", people(range(50, 150)), state=state))
    for _ in range(3000):
        if fake_server.in_flight:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    fake_server.clear_faults()
    report = await client.sync("aud", people(range(50, 150)), state=state)
    assert report.resumed
    assert set(fake_server.members("aud")) == {f"u-{i}" for i in range(50, 150)}


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"concurrency": 0}, id="concurrency"),
        pytest.param({"chunk_size": 0}, id="chunk"),
    ],
)
async def test_bad_arguments_are_refused_before_the_state_is_opened(
    client: ba.AudienceClient, tmp_path: Path, bad: dict[str, int]
) -> None:
    """A bad concurrency or chunk size never leaves a state behind, let alone an unfinished one."""
    state = tmp_path / "aud.state"
    with pytest.raises(ba.ValidationError, match="must be an integer"):
        await client.sync("aud", ["a"], state=state, **bad)  # type: ignore[arg-type]
    assert not state.exists()


async def test_a_columnar_source_syncs_like_records(
    client: ba.AudienceClient, fake_server: FakeBatchServer, tmp_path: Path
) -> None:
    """A pyarrow Table: first sync, then only the changes; the same digests as records."""
    import pyarrow as pa

    state = tmp_path / "aud.state"
    await client.create("aud")

    def table(ids: range, changed: int = -1) -> Any:
        return pa.table(
            {
                "id": [f"u-{i}" for i in ids],
                "rank": [-1 if i == changed else i for i in ids],
            }
        )

    first = await client.sync("aud", table(range(12_000)), state=state)
    assert (first.full, first.records, first.requests) == (True, 12_000, 2)
    fake_server.reset_stats()
    second = await client.sync("aud", table(range(10, 12_010), changed=500), state=state)
    assert (second.added, second.changed, second.removed) == (10, 1, 10)
    assert writes(fake_server) == [("update", 10), ("update", 11)]
    expected = {f"u-{i}": i for i in range(10, 12_010)} | {"u-500": -1}
    assert ranks(fake_server, "aud") == expected
    # The same rows as records: nothing to send.
    records = [{"id": i, "attributes": {"rank": r}} for i, r in expected.items()]
    again = await client.sync("aud", records, state=state)
    assert (again.sent, again.unchanged) == (0, 12_000)
    # A DuckDB relation (a Parquet file read by DuckDB would be one) with one change.
    import duckdb

    con = duckdb.connect()
    try:
        relation = con.sql(
            "SELECT 'u-' || i AS id, CASE WHEN i = 500 THEN 5 ELSE i END AS rank "
            "FROM range(10, 12010) t(i)"
        )
        last = await client.sync("aud", relation, state=state)
    finally:
        con.close()
    assert (last.changed, last.added, last.removed, last.requests) == (1, 0, 0, 1)
    assert fake_server.members("aud")["u-500"].attributes == {"rank": 5}
