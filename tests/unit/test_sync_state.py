"""The sync state file (DuckDB): creation, refusals, the lock, the unfinished marker, the
snapshot swap, and the wire round trip the sync relies on to resend staged entries."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_audience import SyncStateError
from batch_audience._intake import Intake
from batch_audience._syncstate import Identity, SyncState
from tests.strategies import records

AUD = Identity(audience="aud", generation="2", base_url="https://api.example", key="proj-1")


def entries(rows: dict[str, int]) -> tuple[list[str], list[bytes]]:
    """IDs and add-wire entries with one attribute each."""
    intake = Intake("2", "add")
    pairs = [
        intake.encode({"id": i, "attributes": {"n": n}}, k) for k, (i, n) in enumerate(rows.items())
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def stage(state: SyncState, rows: dict[str, int]) -> None:
    """Stage records into an open state."""
    ids, wires = entries(rows)
    state.append(ids, wires)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the state file goes."""
    return tmp_path / "aud.state"


def finish(path: Path, rows: dict[str, int], identity: Identity = AUD) -> None:
    """A whole successful sync of ``rows``, as _sync runs it."""
    state = SyncState(path, identity)
    try:
        stage(state, rows)
        state.plan(False)
        state.mark_started()
        state.mark_finished()
    finally:
        state.close()


def test_a_new_state_is_created_with_its_identity_and_no_key(path: Path) -> None:
    """A new state records audience and generation, a salted fingerprint, and never the key."""
    state = SyncState(path, AUD)
    try:
        assert not state.meta.synced and not state.meta.unfinished
        plan = state.plan(False)
        assert state.full  # the first sync of a state is a full one
        assert plan.records == 0
    finally:
        state.close()
    assert path.exists()
    assert b"proj-1" not in path.read_bytes()
    con = duckdb.connect(str(path), read_only=True)
    try:
        ((audience, generation, target),) = con.execute(
            "SELECT audience, generation, target FROM batch_audience_sync"
        ).fetchall()
    finally:
        con.close()
    assert (audience, generation) == ("aud", "2")
    assert len(target) == 16 and "proj" not in target


@pytest.mark.parametrize(
    ("other", "why"),
    [
        pytest.param(
            Identity(audience="other", generation="2", base_url=AUD.base_url, key=AUD.key),
            "state of audience 'aud', not 'other'",
            id="audience",
        ),
        pytest.param(
            Identity(audience="aud", generation="2", base_url=AUD.base_url, key="proj-2"),
            "another server, project or app",
            id="project",
        ),
        pytest.param(
            Identity(audience="aud", generation="1.1", base_url=AUD.base_url, key=AUD.key),
            "API 2, not 1.1",
            id="generation",
        ),
    ],
)
def test_a_state_of_another_audience_or_project_is_refused(
    path: Path, other: Identity, why: str
) -> None:
    """Opening a state made for another audience, project or API generation is refused."""
    finish(path, {"a": 1})
    with pytest.raises(SyncStateError, match="belongs to another audience") as caught:
        SyncState(path, other)
    assert why in str(caught.value)
    assert "proj-1" not in str(caught.value) and "proj-2" not in str(caught.value)


def test_files_that_are_not_a_state_are_refused(path: Path, tmp_path: Path) -> None:
    """A text file, another DuckDB database or a directory is refused, and left as it was."""
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(SyncStateError, match="not a batch_audience sync state"):
        SyncState(text, AUD)
    assert text.read_text() == "hello\n"
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    with pytest.raises(SyncStateError, match="not a batch_audience sync state"):
        SyncState(other, AUD)
    with pytest.raises(SyncStateError, match="not a regular file"):
        SyncState(tmp_path, AUD)
    with pytest.raises(SyncStateError, match="No such file or directory"):
        SyncState(tmp_path / "missing" / "aud.state", AUD)


def test_a_second_open_of_one_state_is_refused_until_the_first_closes(path: Path) -> None:
    """The lock holds between two syncs of one process too, and is released by close."""
    first = SyncState(path, AUD)
    try:
        with pytest.raises(SyncStateError, match="in use by another sync"):
            SyncState(path, AUD)
        with pytest.raises(SyncStateError, match="in use by another sync"):
            SyncState(path, AUD, read_only=True)
    finally:
        first.close()
    SyncState(path, AUD).close()


def test_a_dry_run_creates_nothing_and_changes_nothing(path: Path) -> None:
    """Read-only: no state file for a new state; an existing snapshot stays as it was."""
    state = SyncState(path, AUD, read_only=True)
    stage(state, {"a": 1})
    assert state.plan(False).added == 1
    state.close()
    assert not path.exists() and not Path(str(path) + ".lock").exists()
    assert not Path(str(path) + ".tmp").exists()
    finish(path, {"a": 1, "b": 2})
    state = SyncState(path, AUD, read_only=True)
    try:
        before = state.snapshot()
        stage(state, {"a": 5, "c": 3})
        plan = state.plan(False)
        assert (plan.added, plan.changed, plan.removed, plan.unchanged) == (1, 1, 1, 0)
        with pytest.raises(RuntimeError, match="never writes"):
            state.mark_started()
        assert state.snapshot() == before
    finally:
        state.close()


def test_the_plan_counts_each_kind_with_examples_and_the_last_duplicate_wins(path: Path) -> None:
    """Added, changed, removed, unchanged and duplicates, against the last snapshot."""
    finish(path, {"a": 1, "b": 2, "c": 3, "d": 4})
    state = SyncState(path, AUD)
    try:
        ids, wires = entries({"a": 1, "b": 20, "e": 5})
        # "c" twice: once changed, then back to its synced value (the last one wins).
        more_ids, more_wires = entries({"c": 30})
        last_ids, last_wires = entries({"c": 3})
        state.append(ids + more_ids, wires + more_wires)
        state.append(last_ids, last_wires)
        plan = state.plan(False)
        assert not state.full
        assert (plan.records, plan.rows, plan.duplicates) == (4, 5, 1)
        assert (plan.added, plan.changed, plan.removed, plan.unchanged) == (1, 1, 1, 2)
        assert plan.examples == {"added": ("e",), "changed": ("b",), "removed": ("d",)}
        assert [b for batch in state.reader("remove", 10) for b in batch] == ["d"]
        sent = [orjson.loads(w) for batch in state.reader("add", 10) for w in batch]
        assert [e["id"] for e in sent] == ["b", "e"]
    finally:
        state.close()


def test_an_unfinished_sync_leaves_the_snapshot_and_marks_its_ids_unknown(path: Path) -> None:
    """Started but not finished: the old snapshot stays, and its IDs are resent next time."""
    finish(path, {"a": 1, "b": 2, "c": 3})
    state = SyncState(path, AUD)
    try:
        before = state.snapshot()
        stage(state, {"a": 1, "b": 2, "x": 9})  # c removed, x added
        state.plan(False)
        state.mark_started()
    finally:
        state.close()  # as if killed while sending
    state = SyncState(path, AUD)
    try:
        assert state.meta.unfinished
        assert state.snapshot() == before
        # The next source drops x again and brings c back: both were touched, both are sent.
        stage(state, {"a": 1, "b": 2, "c": 3})
        plan = state.plan(False)
        assert (plan.added, plan.changed, plan.removed, plan.unchanged) == (0, 1, 1, 2)
        assert plan.examples == {"added": (), "changed": ("c",), "removed": ("x",)}
        state.mark_started()
        state.mark_finished()
    finally:
        state.close()
    state = SyncState(path, AUD)
    try:
        assert not state.meta.unfinished and state.meta.snapshot_count == 3
        stage(state, {"a": 1, "b": 2, "c": 3})
        plan = state.plan(False)
        assert (plan.added, plan.changed, plan.removed, plan.unchanged) == (0, 0, 0, 3)
    finally:
        state.close()


def test_an_unfinished_full_sync_makes_the_next_one_full(path: Path) -> None:
    """A replace cut short left the audience partial: only another replace repairs it."""
    finish(path, {"a": 1})
    state = SyncState(path, AUD)
    stage(state, {"a": 1, "b": 2})
    state.plan(True)
    state.mark_started()
    state.close()
    state = SyncState(path, AUD)
    try:
        assert state.meta.needs_full
        stage(state, {"a": 1, "b": 2})
        state.plan(False)
        assert state.full
    finally:
        state.close()


@pytest.mark.parametrize("changed", [1, 60], ids=["patched", "rewritten"])
def test_the_snapshot_swap_holds_exactly_the_new_source(path: Path, changed: int) -> None:
    """Patched in place (a small change) or rewritten whole, the new snapshot is the source."""
    finish(path, {f"u{i}": i for i in range(100)})
    new = {f"u{i}": (-i if i < changed else i) for i in range(5, 120)}
    finish(path, new)
    state = SyncState(path, AUD)
    try:
        assert state.meta.snapshot_count == len(new)
        snapshot = state.snapshot()
        assert set(snapshot) == set(new)
        stage(state, new)
        plan = state.plan(False)
        assert plan.unchanged == len(new) and plan.added == plan.changed == plan.removed == 0
    finally:
        state.close()


@given(
    st.sampled_from(["1.0", "1.1", "2"]).flatmap(lambda g: st.tuples(st.just(g), records(g, "add")))
)
def test_a_staged_wire_entry_turns_back_into_the_same_bytes(case: tuple[str, object]) -> None:
    """A wire entry without its action is a record that the intake encodes to the same bytes."""
    generation, record = case
    intake = Intake(generation, "add")  # type: ignore[arg-type]
    rid, wire = intake.encode(record, 0)
    again = orjson.loads(wire)
    del again["action"]
    assert intake.encode(again, 0) == (rid, wire)
    assert Intake(generation, "add").encode(again, 0) == (rid, wire)  # type: ignore[arg-type]
