"""The buffered writer against the fake server over real HTTP: flush triggers, backpressure,
per-ID order through retries, failures, cancellation and lifecycle."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batch_audience as ba
from batch_audience._writer import AudienceWriter, DrainTimeout, WriterEntry, WriterError
from batch_audience.testing import FakeBatchServer
from tests.conftest import make_v1_client

UPDATE = "/audiences/update"


def updates(server: FakeBatchServer) -> list[Any]:
    """The recorded 2.x update requests, oldest first."""
    return [r for r in server.requests if r.path.endswith(UPDATE)]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``check`` every 5 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def writer_tasks() -> list[asyncio.Task[Any]]:
    """The writer sender tasks still alive on this loop."""
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("batch_audience.writer") and not t.done()
    ]


def replay(ops: Sequence[tuple[str, str, int]]) -> dict[str, dict[str, Any]]:
    """The members an ordered list of (action, id, value) ends with: ID -> attributes."""
    state: dict[str, dict[str, Any]] = {}
    for action, uid, value in ops:
        if action == "add":
            state[uid] = {"v": value}
        else:
            state.pop(uid, None)
    return state


def members(server: FakeBatchServer, name: str) -> dict[str, dict[str, Any]]:
    """The fake's members of an audience: ID -> attributes."""
    return {uid: dict(m.attributes) for uid, m in server.members(name).items()}


async def test_age_flush_arrives_within_max_delay(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Entries are sent max_delay after the oldest was buffered: not before, not much later."""
    await client.create("aged")
    async with client.writer("aged", max_delay=0.2) as writer:
        start = time.monotonic()
        await writer.add("u-1", attributes={"plan": "pro"})
        await writer.add("u-2")
        await writer.remove("u-3")
        await until(lambda: bool(updates(fake_server)))
        elapsed = time.monotonic() - start
        # Not before max_delay; the upper bound leaves room for a loaded machine's scheduling.
        assert 0.2 <= elapsed <= 0.2 + 1.0
        assert len(updates(fake_server)) == 1
    assert members(fake_server, "aged") == {"u-1": {"plan": "pro"}, "u-2": {}}


async def test_size_flush_sends_full_batches_at_once(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Reaching max_records sends a batch without waiting for max_delay; the rest goes at exit."""
    await client.create("sized")
    async with client.writer("sized", max_records=100, max_delay=60) as writer:
        for i in range(250):
            await writer.add(f"u-{i}")
        await until(lambda: len(updates(fake_server)) == 2)
        assert writer.pending == 50
    assert [r.entries for r in updates(fake_server)] == [100, 100, 50]
    assert set(fake_server.members("sized")) == {f"u-{i}" for i in range(250)}


async def test_add_waits_while_the_server_stalls_then_resumes(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """With max_pending entries held during a stalled request, add blocks until the request ends."""
    await client.create("stall")
    fake_server.fail_next(delay=1.0, path=UPDATE)
    async with client.writer("stall", max_records=10, max_pending=20, max_delay=60) as writer:
        for i in range(20):  # the first 10 go out and stall; the next 10 fill the buffer
            await writer.add(f"u-{i}")
        await until(lambda: fake_server.in_flight >= 1)
        started = time.monotonic()
        blocked = asyncio.create_task(writer.add("u-20"))
        await asyncio.sleep(0.3)
        assert not blocked.done()
        assert writer.pending == 20
        await blocked
        assert time.monotonic() - started >= 0.5
    assert set(fake_server.members("stall")) == {f"u-{i}" for i in range(21)}


async def test_random_stream_with_503s_ends_with_the_exact_members(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """50,000 seeded adds/removes at random pacing, with 503s injected, end as replayed."""
    await client.create("churn")
    rng = random.Random(1234)
    ops: list[tuple[str, str, int]] = []
    async with client.writer("churn", max_records=1_000, max_delay=0.02) as writer:
        for i in range(50_000):
            uid = f"u-{rng.randrange(3_000)}"
            if rng.random() < 0.6:
                await writer.add(uid, attributes={"v": i})
                ops.append(("add", uid, i))
            else:
                await writer.remove(uid)
                ops.append(("remove", uid, i))
            if i % 10_000 == 5_000:
                fake_server.fail_next(status=503, times=2, path=UPDATE)
            if rng.random() < 0.002:
                await asyncio.sleep(rng.random() * 0.03)  # sometimes long enough to age-flush
        result = await writer.flush()
    assert members(fake_server, "churn") == replay(ops)
    assert result.retries == 10
    assert sum(r.entries for r in updates(fake_server) if r.status < 300) == 50_000


async def test_cancelling_the_owner_mid_stream_loses_nothing(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Cancelling the task inside the block drains the writer: every accepted entry lands."""
    await client.create("cancel")
    accepted: list[tuple[str, str, int]] = []
    holder: list[AudienceWriter] = []

    async def consume() -> None:
        rng = random.Random(99)
        async with client.writer("cancel", max_records=500, max_delay=60) as writer:
            holder.append(writer)
            for i in range(10_000_000):
                uid = f"u-{rng.randrange(2_000)}"
                if rng.random() < 0.7:
                    await writer.add(uid, attributes={"v": i})
                    accepted.append(("add", uid, i))
                else:
                    await writer.remove(uid)
                    accepted.append(("remove", uid, i))

    task = asyncio.create_task(consume())
    await until(lambda: len(updates(fake_server)) >= 5 and len(accepted) % 500 > 100)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    writer = holder[0]
    assert writer.closed and writer.unsent == ()
    assert members(fake_server, "cancel") == replay(accepted)
    assert writer_tasks() == []


async def test_a_drain_past_its_timeout_keeps_the_entries_and_logs_no_ids(
    client: ba.AudienceClient, fake_server: FakeBatchServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries still unsent when drain_timeout passes stay in writer.unsent; the log has no IDs."""
    await client.create("slow")
    fake_server.fail_next(delay=2.0, path=UPDATE)
    holder: list[AudienceWriter] = []

    async def consume() -> None:
        async with client.writer("slow", max_records=5, drain_timeout=0.2) as writer:
            holder.append(writer)
            for i in range(8):
                await writer.add(f"secret-{i}")
            await asyncio.sleep(10)

    task = asyncio.create_task(consume())
    await until(lambda: fake_server.in_flight >= 1)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="batch_audience"):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert time.monotonic() - started < 1.0
    writer = holder[0]
    assert [e.id for e in writer.unsent] == [f"secret-{i}" for i in range(8)]
    assert {e.action for e in writer.unsent} == {"add"}
    assert any("8 entries" in r.getMessage() for r in caplog.records)
    assert not any("secret-" in r.getMessage() for r in caplog.records)
    assert writer_tasks() == []
    # What was left can be handed to a new writer.
    async with client.writer("slow") as again:
        await again.resend(writer.unsent)
    assert set(fake_server.members("slow")) >= {f"secret-{i}" for i in range(8)}


async def test_on_error_receives_exactly_the_failed_entries(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """After an injected 400, on_error gets that batch's entries, in order; later batches land."""
    await client.create("errs")
    failures: list[tuple[list[WriterEntry], Exception]] = []

    def on_error(entries: Sequence[WriterEntry], error: Exception) -> None:
        failures.append((list(entries), error))

    fake_server.fail_next(status=400, path=UPDATE)
    async with client.writer("errs", max_records=100, on_error=on_error) as writer:
        for i in range(100):
            await writer.add(f"a-{i}", attributes={"v": i})
        for i in range(100):
            await writer.remove(f"r-{i}") if i % 2 else await writer.add(f"b-{i}")
        result = await writer.flush()
    assert (result.entries, result.failed, result.requests) == (100, 100, 1)
    [(entries, error)] = failures
    assert isinstance(error, ba.BadRequestError)
    assert entries == [WriterEntry("add", f"a-{i}", {"v": i}) for i in range(100)]
    assert set(fake_server.members("errs")) == {f"b-{i}" for i in range(0, 100, 2)}


async def test_without_on_error_failures_are_raised_with_their_entries(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Without on_error, flush raises a WriterError holding the entries; resend recovers them."""
    await client.create("raise")
    fake_server.fail_next(status=400, path=UPDATE)
    async with client.writer("raise") as writer:
        await writer.add("x-1", attributes={"v": 1})
        await writer.remove("x-2")
        with pytest.raises(WriterError) as caught:
            await writer.flush()
        err = caught.value
        assert [(e.action, e.id) for e in err.entries] == [("add", "x-1"), ("remove", "x-2")]
        assert isinstance(err.error, ba.BadRequestError) and err.__cause__ is err.error
        assert "x-1" not in str(err) and "x-1" not in repr(err)
        await writer.resend(err.entries)
        assert (await writer.flush()).entries == 2
    assert members(fake_server, "raise") == {"x-1": {"v": 1}}


async def test_a_later_add_raises_earlier_failures_and_buffers_nothing(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A failure with no on_error surfaces from the next add, which does not buffer its entry."""
    await client.create("next")
    fake_server.fail_next(status=400, path=UPDATE)
    async with client.writer("next", max_records=1) as writer:
        await writer.add("first")
        await until(lambda: bool(updates(fake_server)))
        await until(lambda: writer.pending == 0)
        with pytest.raises(WriterError) as caught:
            await writer.add("second")
        assert [e.id for e in caught.value.entries] == ["first"]
        assert writer.pending == 0
        await writer.add("third")
    assert set(fake_server.members("next")) == {"third"}


async def test_failures_left_at_a_normal_exit_are_raised_from_the_block(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Leaving the block normally raises what failed during the final flush, entries attached."""
    await client.create("exit")
    fake_server.fail_next(status=400, path=UPDATE)
    with pytest.raises(WriterError) as caught:
        async with client.writer("exit") as writer:
            await writer.add("lost?")
    assert [e.id for e in caught.value.entries] == ["lost?"]
    assert writer.closed and writer.unsent == ()


@pytest.mark.parametrize(
    ("max_records", "fault_on"),
    [
        pytest.param(1, "add", id="each-op-its-own-batch-add-retried"),
        pytest.param(1, "remove", id="each-op-its-own-batch-remove-retried"),
        pytest.param(2, "add", id="across-a-size-boundary"),
    ],
)
async def test_add_then_remove_across_flushes_and_retries_ends_removed(
    client: ba.AudienceClient, fake_server: FakeBatchServer, max_records: int, fault_on: str
) -> None:
    """An add and a later remove of one ID, in separate requests, one retried, end removed."""
    await client.create("order")
    async with client.writer("order", max_records=max_records, max_delay=60) as writer:
        if fault_on == "add":
            fake_server.fail_next(status=503, times=2, path=UPDATE)
        await writer.add("x", attributes={"v": 1})
        await writer.add("pad")
        if fault_on == "remove":
            await writer.flush()
            fake_server.fail_next(status=503, times=2, path=UPDATE)
        await writer.remove("x")
        await writer.flush()
        await writer.add("y", attributes={"v": 1})
        await writer.flush()
        await writer.remove("y")
    assert set(fake_server.members("order")) == {"pad"}
    statuses = [r.status for r in updates(fake_server)]
    assert statuses.count(503) == 2


async def test_a_dropped_connection_is_retried_in_order(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A dropped connection resends the same batch before the next one: the later remove wins."""
    await client.create("drop")
    async with client.writer("drop", max_records=1, max_delay=60) as writer:
        fake_server.fail_next(drop=True, path=UPDATE)
        await writer.add("x")
        await writer.remove("x")
        await writer.add("y")
    assert set(fake_server.members("drop")) == {"y"}


async def test_validation_errors_are_raised_at_once_and_nothing_is_buffered(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A bad entry raises ValidationError at once, with its position; good ones still land."""
    await client.create("valid")
    async with client.writer("valid") as writer:
        await writer.add("ok-1")
        with pytest.raises(ba.ValidationError) as caught:
            await writer.add("bad", attributes={"Bad Key": 1})
        assert caught.value.position == 1 and caught.value.record_id == "bad"
        with pytest.raises(ba.ValidationError):
            await writer.remove(ba.Record("r", attributes={"v": 1}))
        with pytest.raises(ba.ValidationError):
            await writer.add("")
        assert writer.pending == 1
        await writer.add(ba.Record("ok-2", attributes={"v": 2}))
        await writer.add({"id": "ok-3", "attributes": {"v": 3}})
    assert members(fake_server, "valid") == {"ok-1": {}, "ok-2": {"v": 2}, "ok-3": {"v": 3}}


async def test_flush_reports_what_was_sent_since_the_last_flush(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """flush() counts entries, requests and tokens since the last flush, size flushes included."""
    await client.create("report")
    async with client.writer("report", max_records=10, max_delay=60) as writer:
        assert await writer.flush() == ba_flush_result()
        for i in range(25):
            await writer.add(f"u-{i}")
        first = await writer.flush()
        await writer.add("u-25")
        second = await writer.flush()
    assert (first.entries, first.requests, len(first.tokens), first.retries) == (25, 3, 3, 0)
    assert (second.entries, second.requests, len(second.tokens)) == (1, 1, 1)
    assert set(first.tokens).isdisjoint(second.tokens)


def ba_flush_result() -> Any:
    """An empty FlushResult."""
    from batch_audience._writer import FlushResult

    return FlushResult()


async def test_aclose_is_idempotent_and_use_after_close_raises(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """aclose twice is fine, every use afterwards raises ClientClosedError, no task is left."""
    await client.create("life")
    writer = client.writer("life")
    await writer.add("u-1")  # a writer used without 'async with' starts on first use
    assert len(writer_tasks()) == 1
    await writer.aclose()
    await writer.aclose()
    assert writer.closed and writer_tasks() == []
    assert set(fake_server.members("life")) == {"u-1"}
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: writer.add("u-2"),
        lambda: writer.remove("u-1"),
        writer.flush,
        lambda: writer.resend([WriterEntry("add", "u-3")]),
        writer.__aenter__,
    ]
    for call in calls:
        with pytest.raises(ba.ClientClosedError):
            await call()


async def test_concurrent_aclose_calls_both_wait_for_the_drain(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Two tasks closing the writer at once both return after everything was sent."""
    await client.create("twice")
    writer = client.writer("twice", max_delay=60)
    for i in range(30):
        await writer.add(f"u-{i}")
    await asyncio.gather(writer.aclose(), writer.aclose())
    assert len(fake_server.members("twice")) == 30
    assert writer_tasks() == []


async def test_an_idle_writer_sends_nothing_and_a_blocked_add_sees_the_close(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """An idle writer sends nothing; an add waiting for space at close raises ClientClosedError."""
    await client.create("idle")
    fake_server.reset_stats()
    fake_server.fail_next(delay=1.0, path=UPDATE)
    writer = client.writer("idle", max_records=1, max_pending=1, max_delay=0.01, drain_timeout=5)
    async with writer:
        await asyncio.sleep(0.1)
        assert fake_server.requests == []
        await writer.add("a")
        waiting = asyncio.create_task(writer.add("b"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        closing = asyncio.create_task(writer.aclose())
        with pytest.raises(ba.ClientClosedError):
            await waiting
        await closing
    assert set(fake_server.members("idle")) == {"a"}


async def test_v10_writer_names_the_audience_type(fake_server: FakeBatchServer, sleep: Any) -> None:
    """With Custom Audience API 1.0 the writer looks the type up once and sends it in each body."""
    async with make_v1_client(fake_server, "1.0", sleep) as client:
        await client.create("legacy", audience_type="advertising_ids")
        async with client.writer("legacy", max_records=2) as writer:
            for i in range(5):
                await writer.add(f"ad-{i}")
            await writer.remove("ad-0")
    assert set(fake_server.members("legacy")) == {f"ad-{i}" for i in range(1, 5)}


async def test_v11_writer_sends_tags(fake_server: FakeBatchServer, sleep: Any) -> None:
    """With Custom Audience API 1.1 the writer sends attributes and tags of each add."""
    async with make_v1_client(fake_server, "1.1", sleep) as client:
        await client.create("installs")
        async with client.writer("installs") as writer:
            await writer.add("i-1", attributes={"v": 1}, tags=["early"])
    member = fake_server.members("installs")["i-1"]
    assert (dict(member.attributes), list(member.tags)) == ({"v": 1}, ["early"])


async def test_a_failing_on_error_keeps_the_entries(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """When on_error itself raises, the entries are kept and raised, never dropped."""
    await client.create("handler")

    def on_error(entries: Sequence[WriterEntry], error: Exception) -> None:
        raise RuntimeError("handler broke")

    fake_server.fail_next(status=400, path=UPDATE)
    writer = client.writer("handler", on_error=on_error)
    await writer.add("kept")
    with pytest.raises(WriterError) as caught:
        await writer.aclose()
    assert [e.id for e in caught.value.entries] == ["kept"]
    [handler_error] = caught.value.handler_errors
    assert str(handler_error) == "handler broke" and caught.value.__cause__ is handler_error
    assert "on_error raised RuntimeError" in str(caught.value)


async def test_drain_timeout_entries_go_to_on_error(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """With on_error, entries cut off by drain_timeout reach it with a DrainTimeout."""
    await client.create("cut")
    got: list[tuple[list[str], Exception]] = []
    fake_server.fail_next(delay=2.0, path=UPDATE)
    writer = client.writer(
        "cut",
        drain_timeout=0.1,
        on_error=lambda entries, error: got.append(([e.id for e in entries], error)),
    )
    await writer.add("late")
    await writer.aclose()
    [(ids, error)] = got
    assert ids == ["late"] and isinstance(error, DrainTimeout)
    assert writer.unsent == () and writer_tasks() == []


# -- per-ID order across failures: resend never undoes a later event -------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"status": 400}, id="rejected-400"),
        pytest.param({"status": 503, "times": 6}, id="retries-exhausted-503"),
    ],
)
async def test_resend_after_a_failed_batch_never_undoes_a_later_event(
    client: ba.AudienceClient, fake_server: FakeBatchServer, fault: dict[str, Any]
) -> None:
    """Later batches go on after one fails; resending it skips entries a later event superseded."""
    await client.create("undo")
    ops: list[tuple[str, str, int]] = []
    fake_server.fail_next(path=UPDATE, **fault)
    async with client.writer("undo", max_records=3, max_delay=60) as writer:

        async def event(action: str, uid: str, value: int) -> None:
            ops.append((action, uid, value))
            if action == "add":
                await writer.add(uid, attributes={"v": value})
            else:
                await writer.remove(uid)

        await event("add", "x", 1)  # batch 1 fails for good
        await event("add", "y", 1)
        await event("remove", "z", 1)
        await event("remove", "x", 2)  # batch 2 lands: supersedes batch 1's x
        await event("add", "y", 2)  # supersedes batch 1's y
        await event("add", "w", 2)
        await event("add", "z", 3)  # still buffered at the failure: supersedes z's remove
        with pytest.raises(WriterError) as caught:
            await writer.flush()
        failed = caught.value.entries
        assert [(e.action, e.id) for e in failed] == [("add", "x"), ("add", "y"), ("remove", "z")]
        result = await writer.resend(failed)
        await writer.flush()
        assert members(fake_server, "undo") == replay(ops)
        assert result == ba.ResendResult(resent=0, superseded=failed)
        assert all(e.superseded for e in failed)
        await event("add", "v", 4)  # an entry with no later event is resent
        fake_server.fail_next(status=400, path=UPDATE)
        with pytest.raises(WriterError) as caught:
            await writer.flush()
        again = await writer.resend(caught.value.entries)
        assert (again.resent, again.superseded) == (1, ())
        assert (await writer.resend(caught.value.entries)).superseded == caught.value.entries
    assert members(fake_server, "undo") == replay(ops)


async def test_entries_handed_to_on_error_are_resent_in_order_with_the_stream(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Entries from on_error, resent while events go on, end as the replay of the events."""
    await client.create("requeue")
    parked: list[WriterEntry] = []
    ops: list[tuple[str, str, int]] = []
    fake_server.fail_next(status=400, path=UPDATE)
    async with client.writer(
        "requeue", max_records=2, max_delay=60, on_error=lambda e, _: parked.extend(e)
    ) as writer:
        for i, (action, uid) in enumerate(
            [("add", "a"), ("add", "b"), ("remove", "a"), ("add", "c"), ("add", "c")]
        ):
            ops.append((action, uid, i))
            await (writer.add(uid, attributes={"v": i}) if action == "add" else writer.remove(uid))
        await writer.flush()
        assert [e.id for e in parked] == ["a", "b"]
        result = await writer.resend(parked)
        assert [e.id for e in result.superseded] == ["a"] and result.resent == 1
        ops.append(("remove", "b", 9))
        await writer.remove("b")
    assert members(fake_server, "requeue") == replay(ops)


async def test_an_old_writers_unsent_entries_skip_what_it_sent_later(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """unsent left by a block that raised carries its supersession to a new writer's resend."""
    await client.create("handover")
    fake_server.fail_next(status=400, path=UPDATE, times=2)
    old = client.writer("handover", max_records=1, max_delay=60)

    async def consume() -> None:
        async with old:
            await old.add("x", attributes={"v": 1})  # fails for good
            await old.add("y", attributes={"v": 1})  # fails too: nothing later touches y
            await old.remove("x")  # lands
            await until(lambda: old.pending == 0)
            raise LookupError("the consumer broke")

    with pytest.raises(LookupError):
        await consume()
    assert [(e.action, e.id) for e in old.unsent] == [("add", "x"), ("add", "y")]
    async with client.writer("handover") as new:
        result = await new.resend(old.unsent)
    assert [e.id for e in result.superseded] == ["x"] and result.resent == 1
    assert members(fake_server, "handover") == {"y": {"v": 1}}


EVENTS = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(["a", "b", "c", "d"])),
    min_size=1,
    max_size=24,
)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=EVENTS,
    batch=st.integers(1, 4),
    fail_at=st.integers(0, 5),
    resend_at=st.integers(0, 24),
    handler=st.booleans(),
)
async def test_any_history_with_one_failed_batch_resent_ends_replayed(
    client: ba.AudienceClient,
    fake_server: FakeBatchServer,
    events: list[tuple[str, str]],
    batch: int,
    fail_at: int,
    resend_at: int,
    handler: bool,
) -> None:
    """One batch failing for good at any point, resent at any later point, ends as the replay."""
    name = f"replay-{len(fake_server.audiences())}"
    await client.create(name)
    ops = [(action, uid, i) for i, (action, uid) in enumerate(events)]
    parked: list[WriterEntry] = []
    if fail_at:
        fake_server.fail_next(path=UPDATE, times=fail_at)  # these pass untouched
    fake_server.fail_next(status=400, path=UPDATE)
    on_error = (lambda entries, _: parked.extend(entries)) if handler else None
    resent = False

    async def resend() -> None:
        nonlocal resent
        try:
            await writer.flush()
        except WriterError as error:  # without on_error
            parked.extend(error.entries)
        if parked:
            resent = True
            await writer.resend(parked)
            parked.clear()

    try:
        async with asyncio.timeout(30):
            async with client.writer(
                name, max_records=batch, max_delay=60, on_error=on_error
            ) as writer:
                for i, (action, uid, value) in enumerate(ops):
                    if i == resend_at and not resent:
                        await resend()
                    await (
                        writer.add(uid, attributes={"v": value})
                        if action == "add"
                        else writer.remove(uid)
                    )
                if not resent:
                    await resend()
                await writer.flush()
    finally:
        fake_server.clear_faults()
    assert members(fake_server, name) == replay(ops)


# -- an on_error that raises --------------------------------------------------------------------


async def test_what_on_error_raises_surfaces_from_the_next_add_and_the_writer_goes_on(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """The handler's exception comes out of the next add with the entries it did not take."""
    await client.create("raising")
    broke = RuntimeError("handler broke")

    def on_error(entries: Sequence[WriterEntry], error: Exception) -> None:
        raise broke

    fake_server.fail_next(status=400, path=UPDATE)
    async with asyncio.timeout(10):
        async with client.writer("raising", max_records=1, on_error=on_error) as writer:
            await writer.add("first")
            await until(lambda: writer.pending == 0)
            with pytest.raises(WriterError) as caught:
                await writer.add("second")
            assert caught.value.handler_errors == (broke,) and caught.value.__cause__ is broke
            assert isinstance(caught.value.error, ba.BadRequestError)
            assert [e.id for e in caught.value.entries] == ["first"]
            await writer.add("third")
            assert (await writer.flush()).entries == 1
    assert set(fake_server.members("raising")) == {"third"}


@pytest.mark.parametrize(
    "raised",
    [
        pytest.param(asyncio.CancelledError, id="CancelledError"),
        pytest.param(GeneratorExit, id="GeneratorExit"),
    ],
)
async def test_an_on_error_raising_a_base_exception_never_leaves_add_waiting(
    client: ba.AudienceClient, fake_server: FakeBatchServer, raised: type[BaseException]
) -> None:
    """An add waiting for space while on_error raises a BaseException returns; nothing hangs."""
    await client.create("blocked")

    def on_error(entries: Sequence[WriterEntry], error: Exception) -> None:
        raise raised("from the handler")

    fake_server.fail_next(status=400, delay=0.2, path=UPDATE)
    writer = client.writer("blocked", max_records=1, max_pending=1, max_delay=60, on_error=on_error)
    async with asyncio.timeout(10):  # before the fix: the sender died and the add waited forever
        async with writer:
            await writer.add("failing")
            await writer.add("waits-for-space")
            with pytest.raises(WriterError) as caught:
                await writer.flush()
            [handler_error] = caught.value.handler_errors
            assert isinstance(handler_error, raised)
            assert [e.id for e in caught.value.entries] == ["failing"]
            await writer.add("after")
    assert set(fake_server.members("blocked")) == {"waits-for-space", "after"}


@pytest.mark.parametrize(
    "raised",
    [
        pytest.param(RuntimeError, id="RuntimeError"),
        pytest.param(asyncio.CancelledError, id="CancelledError"),
    ],
)
async def test_an_on_error_failing_during_a_cancelled_drain_keeps_entries_and_its_error(
    client: ba.AudienceClient,
    fake_server: FakeBatchServer,
    caplog: pytest.LogCaptureFixture,
    raised: type[BaseException],
) -> None:
    """A batch failing while a cancelled owner drains, with on_error raising, stays in unsent."""
    await client.create("drained")
    holder: list[AudienceWriter] = []

    def on_error(entries: Sequence[WriterEntry], error: Exception) -> None:
        raise raised("handler broke")

    async def consume() -> None:
        async with client.writer("drained", max_delay=60, on_error=on_error) as writer:
            holder.append(writer)
            await writer.add("d-1")
            await writer.remove("d-2")
            await asyncio.sleep(10)

    fake_server.fail_next(status=400, path=UPDATE)
    task = asyncio.create_task(consume())
    await until(lambda: bool(holder))
    with caplog.at_level(logging.ERROR, logger="batch_audience"):
        task.cancel()
        async with asyncio.timeout(10):
            with pytest.raises(asyncio.CancelledError) as caught:
                await task
    writer = holder[0]
    assert [(e.action, e.id) for e in writer.unsent] == [("add", "d-1"), ("remove", "d-2")]
    assert any(f"on_error raised {raised.__name__}" in n for n in caught.value.__notes__)
    [logged] = [r for r in caplog.records if r.exc_info and r.exc_info[0] is raised]
    assert "d-1" not in logged.getMessage()
    assert writer_tasks() == []
