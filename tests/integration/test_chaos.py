"""Chaos runs: a million records and a cancelled writer under seeded random faults, exact results.

The fake answers about 10% of requests with a mix of 429 (Retry-After 0-1 s), 500/502/503/504,
dropped connections (with and without the write applied), answers stalled past the client's
timeout (write applied), bodies stalled past it, and slow bodies read in time. What is checked
exactly, run by run:

- the final membership and attributes, against the input;
- the report against the server's request log. Each retry resends the same bytes, so the log's
  body digests group the attempts of one chunk: each chunk ends with the one attempt the client
  saw succeed, every earlier one is a failure it saw (an error status, a drop, a fault that
  outlasts its timeout, or an answer it abandoned: ``saw_failure``), ``report.requests`` is the
  number of chunks, ``report.retries`` the number of failed attempts, and the audience's tokens
  are the acknowledged writes plus the writes that landed unacknowledged (outcome unknown);
- the waits: with an injected zero-wait sleep, the waits asked for are exactly each 429's
  Retry-After and the backoff of the other failures; with real sleeps
  (``test_no_retry_comes_before_its_retry_after``), no chunk is resent before its wait ended.

What cannot be checked exactly: which request gets which fault. The faults are drawn in the
order requests reach the server, and with four chunks in flight that order depends on timing;
the seed fixes the sequence of draws, not which chunk each one lands on. The checks above hold
for every such placement.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batch_audience as ba
from batch_audience import AudienceWriter, RetryPolicy, Timeouts
from batch_audience.testing import Chaos, FakeBatchServer, FakeMember, Fault, RecordedRequest
from tests.conftest import RecordingSleep

# A loaded 2-core machine can hold either thread (client, fake) for most of a second, which
# once made the client give up on an attempt the audit counted as read in time (a 1 s timeout
# then): the margin between SLOW_BODY and TIMEOUT is what such a stall must now exceed, and the
# audit also counts what the log proves the client abandoned (``saw_failure``'s ``resent``,
# ``unread``). Only the few stalled attempts wait the whole TIMEOUT.
TIMEOUT = 1.5  # seconds: the client's timeout for one attempt
STALL = 1.8  # seconds: stalled answers and bodies, past TIMEOUT
SLOW_BODY = 0.2  # seconds: slow bodies, well within TIMEOUT
RATE = 0.1  # share of requests that fail
# Retries as in production, without jitter (exact waits) and with room for bad luck: ten
# attempts in a row fail with odds of 1e-10 at 10% faults.
RETRY = RetryPolicy(base=0.5, factor=2.0, cap=30.0, jitter=False, max_attempts=10)
UPDATE = "/audiences/update"
TIERS = ("gold", "silver", "bronze")


def saw_failure(
    attempt: RecordedRequest, timeout: float = TIMEOUT, resent: float | None = None
) -> bool:
    """Whether the client saw this attempt fail: an error status, a drop, its own timeout.

    ``resent``: when the same body next reached the server. Arriving before this attempt's
    answer was complete, the retry proves the client gave up on it (its timeout ran out, e.g.
    while the machine was loaded), whatever the server answered afterwards.
    """
    if not 200 <= attempt.status < 300:
        return True
    fault = attempt.fault
    if fault is not None and max(fault.delay, fault.slow_body) >= timeout:
        return True
    if resent is None:
        return False
    complete = attempt.answered + (fault.slow_body if fault is not None else 0.0)
    return resent < complete


def landed(attempt: RecordedRequest) -> bool:
    """Whether this attempt's write was applied (answered 2xx, or applied before its fault)."""
    return 200 <= attempt.status < 300 or (attempt.fault is not None and attempt.fault.apply)


def unread(attempt: RecordedRequest) -> bool:
    """A write whose body never reached the server whole: the client gave up while sending it."""
    return attempt.method == "POST" and attempt.digest is None and attempt.status == 0


@attrs.frozen
class Audit:
    """The write attempts of one run, as the server logged them, grouped by body."""

    attempts: int  # write requests that reached the server with their whole body
    failures: int  # of those, attempts the client saw fail
    unread: int  # writes cut off while the client sent them: failures of no known chunk
    bodies: int  # distinct bodies: chunks, or writer batches
    acknowledged: int  # entries in the attempts the client saw succeed
    ok_answers: int  # 2xx answers, whether or not the client was still listening
    late: int  # 2xx answers the client no longer waited for, so retried
    landed_unacknowledged: int  # writes applied although the client saw a failure
    waits: collections.Counter[float]  # the wait before each retry, as the client must ask
    kinds: collections.Counter[str]  # chaos kinds drawn
    by_body: dict[str, list[RecordedRequest]]

    @property
    def retries(self) -> int:
        """Every failure the client saw, each followed by one retry."""
        return self.failures + self.unread

    def check_waits(self, waits: Sequence[float], policy: RetryPolicy = RETRY) -> None:
        """The waits asked for are exactly the Retry-Afters and backoffs the failures call for."""
        if not self.unread:
            assert collections.Counter(waits) == self.waits
            return
        # A cut-off write belongs to no known chunk, so the attempt numbers of its chunk's
        # later attempts are unknown (rare: the client stalled mid-send). Check what can be.
        assert len(waits) == self.retries
        backoffs = {policy.backoff(n) for n in range(1, policy.max_attempts)}
        assert set(waits) <= set(self.waits) | backoffs


def audit(log: Sequence[RecordedRequest], policy: RetryPolicy = RETRY) -> Audit:
    """Group the logged writes by body and check each ends with its only success."""
    by_body: dict[str, list[RecordedRequest]] = {}
    for attempt in log:
        if attempt.method == "POST" and attempt.digest is not None:
            by_body.setdefault(attempt.digest, []).append(attempt)
    waits: collections.Counter[float] = collections.Counter()
    failed: list[RecordedRequest] = []
    for attempts in by_body.values():
        *earlier, last = attempts
        assert not saw_failure(last), "a chunk whose last attempt failed"
        for number, (attempt, retry) in enumerate(zip(earlier, attempts[1:], strict=True), 1):
            assert saw_failure(attempt, resent=retry.received), (
                "a chunk sent again after the client saw it succeed"
            )
            failed.append(attempt)
            if attempt.retry_after is not None:
                waits[float(attempt.retry_after)] += 1
            else:
                waits[policy.backoff(number)] += 1
    writes = [a for attempts in by_body.values() for a in attempts]
    return Audit(
        attempts=len(writes),
        failures=len(failed),
        unread=sum(unread(a) for a in log),
        bodies=len(by_body),
        acknowledged=sum(attempts[-1].entries for attempts in by_body.values()),
        ok_answers=sum(200 <= a.status < 300 for a in writes),
        late=sum(200 <= a.status < 300 for a in failed),
        landed_unacknowledged=sum(landed(a) for a in failed),
        waits=waits,
        kinds=collections.Counter(a.chaos for a in writes if a.chaos is not None),
        by_body=by_body,
    )


def check_report(
    report: ba.UploadReport,
    found: Audit,
    *,
    records: int,
    chunk_size: int,
    new_tokens: int,
    waits: list[float] | None,
) -> None:
    """The report agrees with the server's log: chunks, retries, tokens and waits."""
    assert report.records == records
    assert report.requests == found.bodies == math.ceil(records / chunk_size)
    assert report.retries == found.retries
    assert found.failures == found.attempts - report.requests
    # 2xx answers the client never read (stalled past its timeout) were retried: duplicates.
    assert report.requests == found.ok_answers - found.late
    assert found.acknowledged == records
    # One token per write that landed: the acknowledged ones, and those whose answer was lost.
    assert new_tokens == report.requests + found.landed_unacknowledged
    if waits is not None:
        found.check_waits(waits)


async def settled(server: FakeBatchServer, writes: int | None = None) -> None:
    """Wait until the server holds no request and has logged ``writes`` write attempts.

    Stalled answers are logged when they end; and on a loaded machine an attempt the client
    gave up on can reach the fake's handler only after the client finished.
    """
    deadline = time.monotonic() + 10
    while server.in_flight or (
        writes is not None and sum(r.method == "POST" for r in server.requests) < writes
    ):
        assert time.monotonic() < deadline, "the server never settled"
        await asyncio.sleep(0.01)


@pytest.fixture
async def chaos_client(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> AsyncIterator[ba.AudienceClient]:
    """A 2.x client with a TIMEOUT per attempt, ten attempts and zero-wait (recorded) sleeps."""
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        retry=RETRY,
        timeouts=Timeouts(total=TIMEOUT),
        sleep=sleep,
    ) as client:
        yield client


def start_chaos(server: FakeBatchServer, seed: int) -> None:
    """About 10% of requests fail, drawn from every kind."""
    server.reset_stats()
    server.chaos(RATE, seed=seed, stall=STALL, slow_body=SLOW_BODY)


def attributes_of(i: int) -> dict[str, Any]:
    """The attributes record i carries: every third record has two, the others none."""
    return {"n": i, "tier": TIERS[i % 3]} if i % 3 == 0 else {}


def records(count: int) -> Iterator[ba.Record | str]:
    """``count`` records u-0, u-1, …, with attributes on every third."""
    for i in range(count):
        attributes = attributes_of(i)
        yield ba.Record(f"u-{i}", attributes=attributes) if attributes else f"u-{i}"


def check_members(server: FakeBatchServer, name: str, count: int) -> None:
    """The audience holds exactly u-0 … u-(count-1), each with exactly its attributes."""
    members = server.members(name)
    assert len(members) == count
    wrong = []
    for i in range(count):
        member = members.get(f"u-{i}")
        if member is None or member.attributes != attributes_of(i):
            wrong.append(f"u-{i}")
    assert not wrong, f"{len(wrong)} members missing or with other attributes, e.g. {wrong[:5]}"


# -- a million records ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_million_adds_under_chaos_land_exactly(
    chaos_client: ba.AudienceClient, fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """1,000,000 adds with 10% faults end exact, and the report matches the server's log."""
    await chaos_client.create("adds")
    # Stale attributes on a tenth of the IDs: an add replaces them wholesale.
    fake_server.seed("adds", {f"u-{i}": FakeMember({"old": 1}) for i in range(0, 10**6, 10)})
    start_chaos(fake_server, seed=1234)
    report = await chaos_client.add("adds", records(1_000_000), chunk_size=2_000)
    await settled(fake_server, report.requests + report.retries)
    fake_server.chaos(None)
    found = audit(fake_server.requests)
    check_members(fake_server, "adds", 1_000_000)
    check_report(
        report,
        found,
        records=1_000_000,
        chunk_size=2_000,
        new_tokens=len(fake_server.audience("adds").tokens) - 1,  # less create's
        waits=sleep.calls,
    )
    # The seed fixes the sequence of draws, so this mix is the same on every run.
    assert set(found.kinds) == set(Chaos.KINDS)
    assert found.failures > 30


@pytest.mark.slow
async def test_a_million_record_replace_under_chaos_lands_exactly(
    chaos_client: ba.AudienceClient, fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A 1,000,000-record replace with 10% faults leaves exactly the new records and attributes."""
    await chaos_client.create("swap")
    old = {f"old-{i}": FakeMember({"n": -1}) for i in range(50_000)}
    old.update({f"u-{i}": FakeMember({"stale": 1}) for i in range(0, 10**6, 7)})
    fake_server.seed("swap", old)
    start_chaos(fake_server, seed=99)
    report = await chaos_client.replace("swap", records(1_000_000), chunk_size=2_000)
    await settled(fake_server, report.requests + report.retries)
    fake_server.chaos(None)
    found = audit(fake_server.requests)
    check_members(fake_server, "swap", 1_000_000)
    check_report(
        report,
        found,
        records=1_000_000,
        chunk_size=2_000,
        new_tokens=len(fake_server.audience("swap").tokens) - 1,
        waits=sleep.calls,
    )
    assert not report.atomic
    # The replace chunk went first; every add chunk was sent after its 2xx.
    replaces = [a for a in fake_server.requests if a.path.endswith("/audiences/replace")]
    first_add = min(a.received for a in fake_server.requests if a.path.endswith(UPDATE))
    assert replaces and first_add > replaces[-1].answered
    assert set(found.kinds) == set(Chaos.KINDS)


async def test_no_retry_comes_before_its_retry_after(fake_server: FakeBatchServer) -> None:
    """With real sleeps, no chunk is resent before its Retry-After (or backoff) has passed."""
    policy = RetryPolicy(base=0.05, factor=2.0, jitter=False, max_attempts=10)
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        retry=policy,
        timeouts=Timeouts(total=TIMEOUT),
    ) as client:
        await client.create("patient")
        fake_server.reset_stats()
        fake_server.chaos(0.3, seed=5, kinds={"429": 8, "503": 1, "drop": 1}, retry_after=(0, 1))
        report = await client.add("patient", records(20_000), chunk_size=1_000)
    await settled(fake_server, report.requests + report.retries)
    fake_server.chaos(None)
    found = audit(fake_server.requests, policy)
    check_members(fake_server, "patient", 20_000)
    check_report(
        report,
        found,
        records=20_000,
        chunk_size=1_000,
        new_tokens=len(fake_server.audience("patient").tokens) - 1,
        waits=None,
    )
    assert found.kinds["429"] >= 4
    gaps = []
    for attempts in found.by_body.values():
        for number, (refused, retry) in enumerate(itertools.pairwise(attempts), 1):
            # Every failure here was answered (or cut) by the server before the client saw it,
            # so the client's wait started after ``answered``; asyncio wakes no earlier than
            # the clock's resolution allows (1e-9 s on Linux).
            wait = (
                float(refused.retry_after)
                if refused.retry_after is not None
                else policy.backoff(number)
            )
            gaps.append((retry.received - refused.answered) - wait)
    assert min(gaps) >= -1e-6


# -- the writer -----------------------------------------------------------------------------------


def events(count: int, seed: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Seeded adds (60%, half with attributes) and removes over 20,000 IDs."""
    rng = random.Random(seed)
    out: list[tuple[str, str, dict[str, Any] | None]] = []
    for i in range(count):
        uid = f"w-{rng.randrange(20_000)}"
        if rng.random() < 0.6:
            out.append(("add", uid, {"v": i} if rng.random() < 0.5 else None))
        else:
            out.append(("remove", uid, None))
    return out


def replay(ops: Sequence[tuple[str, str, dict[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """The members an ordered list of events ends with: ID -> attributes."""
    state: dict[str, dict[str, Any]] = {}
    for action, uid, attributes in ops:
        if action == "add":
            state[uid] = attributes or {}
        else:
            state.pop(uid, None)
    return state


def attributes_by_id(server: FakeBatchServer, name: str) -> dict[str, dict[str, Any]]:
    """The fake's members of an audience: ID -> attributes."""
    return {uid: dict(m.attributes) for uid, m in server.members(name).items()}


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` every 5 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.mark.slow
async def test_a_cancelled_writer_under_chaos_loses_nothing(
    chaos_client: ba.AudienceClient, fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """200,000 events, the owner cancelled part-way, 10% faults: every accepted event lands."""
    await chaos_client.create("stream")
    stream = events(200_000, seed=42)
    accepted = 0
    holder: list[AudienceWriter] = []

    async def consume() -> None:
        nonlocal accepted
        # max_pending is not a whole number of batches: the producer waits with a batch
        # half-filled, so the cancellation finds entries in the open batch too.
        async with chaos_client.writer(
            "stream", max_records=1_000, max_pending=3_500, max_delay=0.05, drain_timeout=60
        ) as writer:
            holder.append(writer)
            for action, uid, attributes in stream:
                if action == "add":
                    await writer.add(uid, attributes=attributes)
                else:
                    await writer.remove(uid)
                accepted += 1  # add/remove returned: the event is the writer's now

    start_chaos(fake_server, seed=7)
    task = asyncio.create_task(consume())
    await until(lambda: accepted >= 150_000)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    def all_attempts_logged() -> bool:
        # Each wait was followed by a retry: one attempt per batch, one more per wait.
        posts = [r for r in fake_server.requests if r.method == "POST"]
        return len(posts) >= len({r.digest for r in posts if r.digest}) + len(sleep.calls)

    await settled(fake_server)
    await until(all_attempts_logged, timeout=10)
    fake_server.chaos(None)
    writer = holder[0]
    assert 150_000 <= accepted < 200_000
    assert writer.closed and writer.unsent == ()
    assert attributes_by_id(fake_server, "stream") == replay(stream[:accepted])
    found = audit(fake_server.requests)
    # Every accepted event went out in exactly one batch the client saw acknowledged.
    assert found.acknowledged == accepted
    found.check_waits(sleep.calls)
    assert found.retries == len(sleep.calls) > 5
    assert len(fake_server.audience("stream").tokens) - 1 == (
        found.bodies + found.landed_unacknowledged
    )


# -- outcome unknown: a retried write never overtakes a later one ---------------------------------


@pytest.fixture
async def quick_client(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> AsyncIterator[ba.AudienceClient]:
    """A 2.x client that gives up on an attempt after 0.2 s, with zero-wait retries."""
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        retry=RETRY,
        timeouts=Timeouts(total=0.2),
        sleep=sleep,
    ) as client:
        yield client


async def test_a_retried_add_never_overtakes_a_later_remove_in_the_writer(
    quick_client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """An add applied then stalled past the timeout is retried before the later remove is sent."""
    await quick_client.create("order")
    fake_server.fail_next(delay=0.6, apply=True, path=UPDATE)
    async with quick_client.writer("order", max_records=2, max_delay=60) as writer:
        await writer.add("x", attributes={"v": 1})
        await writer.add("pad")
        await writer.remove("x")
        await writer.add("pad2")
    await settled(fake_server)
    assert set(fake_server.members("order")) == {"pad", "pad2"}
    stalled, retried, removal = sorted(fake_server.requests[-3:], key=lambda r: r.received)
    assert stalled.digest == retried.digest != removal.digest
    # The timing was adversarial: the remove went out while the stalled first attempt was
    # still held by the server, but only after the retry of the add was acknowledged.
    assert retried.answered <= removal.received < stalled.answered


async def test_a_retried_chunk_never_overtakes_a_later_chunk_with_the_same_id(
    quick_client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Within an upload, a chunk whose first attempt stalled lands before a later chunk's update."""
    await quick_client.create("again")
    fake_server.fail_next(delay=0.6, apply=True, path=UPDATE)
    stream: list[ba.Record | str] = [ba.Record("x", attributes={"v": 1})]
    stream += [f"a-{i}" for i in range(299)]
    stream += [ba.Record("x", attributes={"v": 2})]
    report = await quick_client.add("again", stream, chunk_size=100, concurrency=4)
    await settled(fake_server)
    assert fake_server.members("again")["x"].attributes == {"v": 2}
    assert (report.requests, report.retries) == (4, 1)
    log = sorted(fake_server.requests[-5:], key=lambda r: r.received)
    first = [r for r in log if r.digest == log[0].digest]
    last = log[-1]
    assert len(first) == 2 and last.digest != log[0].digest
    assert first[1].answered <= last.received < first[0].answered


async def test_a_write_held_before_it_lands_can_still_land_late(
    quick_client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A write the server holds unapplied past the timeout can still land after a later remove."""
    # The limit of any client without a sequence number or idempotency key from the server:
    # the library's own retry lands before the remove is sent, but the first attempt, still
    # held by the server when the client gave up, lands after it. This pins the fake's
    # documented behaviour ("Order of writes" in testing/_app.py); chaos mode never draws it.
    await quick_client.create("late")
    fake_server.fail_next(delay=0.6, path=UPDATE)  # not applied until the delay ends
    async with quick_client.writer("late", max_records=1, max_delay=60) as writer:
        await writer.add("x")
        await writer.remove("x")
    await settled(fake_server)
    held, retried, removal = sorted(fake_server.requests[-3:], key=lambda r: r.received)
    assert retried.answered <= removal.received < held.answered
    assert set(fake_server.members("late")) == {"x"}


Op = tuple[str, str, int]


@st.composite
def histories(draw: st.DrawFn) -> list[Op]:
    """Adds and removes of a few IDs, so that the same ID recurs across chunks and batches."""
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["add", "remove"]),
                st.sampled_from(["a", "b", "c"]),
                st.integers(0, 9),
            ),
            min_size=8,
            max_size=40,
        )
    )
    return [(action, uid, value) for action, uid, value in ops]


def replay_ops(ops: Sequence[Op]) -> dict[str, dict[str, Any]]:
    """The members an ordered list of (action, id, value) ends with."""
    return replay([(a, uid, {"v": v} if a == "add" else None) for a, uid, v in ops])


@pytest.mark.slow
@settings(
    max_examples=12,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=histories(),
    seed=st.integers(0, 2**16),
    rate=st.sampled_from([0.4, 0.2, 0.6]),
    stall=st.sampled_from([0.3, 0.1, 0.5]),
    batch=st.integers(1, 4),
)
async def test_adds_and_removes_end_replayed_whatever_the_faults(
    quick_client: ba.AudienceClient,
    fake_server: FakeBatchServer,
    ops: list[Op],
    seed: int,
    rate: float,
    stall: float,
    batch: int,
) -> None:
    """Whatever faults hit which attempt and however long stalls last, the final state replays."""
    # Stalls shorter than the 0.2 s timeout end in a late success, longer ones in a retry of a
    # write that already landed. Uploads: one per run of adds or removes, up to four chunks in
    # flight; the writer: mixed batches, one at a time.
    name = f"h{seed}-{len(fake_server.audiences())}"
    await quick_client.create(f"{name}-u")
    await quick_client.create(f"{name}-w")
    fake_server.chaos(rate, seed=seed, stall=stall, slow_body=stall / 2)
    try:
        start = 0
        while start < len(ops):  # one upload per run of the same action
            end = start
            while end < len(ops) and ops[end][0] == ops[start][0]:
                end += 1
            run = ops[start:end]
            if run[0][0] == "add":
                await quick_client.add(
                    f"{name}-u",
                    [ba.Record(uid, attributes={"v": v}) for _, uid, v in run],
                    chunk_size=batch,
                    concurrency=4,
                )
            else:
                await quick_client.remove(
                    f"{name}-u", [uid for _, uid, _ in run], chunk_size=batch, concurrency=4
                )
            start = end
        async with quick_client.writer(f"{name}-w", max_records=batch, max_delay=60) as writer:
            for action, uid, value in ops:
                if action == "add":
                    await writer.add(uid, attributes={"v": value})
                else:
                    await writer.remove(uid)
    finally:
        fake_server.chaos(None)
    await settled(fake_server)
    expected = replay_ops(ops)
    assert attributes_by_id(fake_server, f"{name}-u") == expected
    assert attributes_by_id(fake_server, f"{name}-w") == expected


def test_the_chaos_faults_are_all_applied_or_not_before_the_client_gives_up() -> None:
    """Every fault chaos mode draws either applies nothing or applies before answering late."""
    chaos = Chaos(rate=1.0, stall=STALL, slow_body=SLOW_BODY)
    rng = random.Random(0)
    for kind in Chaos.KINDS:
        fault = chaos.fault(kind, rng)
        held_unapplied = fault.delay and not fault.apply and fault.status is None
        assert not held_unapplied, kind
    assert chaos.fault("stall", rng) == Fault(delay=STALL, apply=True)


def logged(
    received: float,
    answered: float,
    *,
    status: int = 202,
    digest: str | None = "d1",
    fault: Fault | None = None,
) -> RecordedRequest:
    """A write attempt as the fake logs it."""
    return RecordedRequest(
        method="POST",
        path=UPDATE,
        query={},
        status=status,
        entries=0 if digest is None else 10,
        received=received,
        answered=answered,
        fault=fault,
        digest=digest,
    )


def test_the_audit_counts_attempts_the_log_proves_the_client_abandoned() -> None:
    """A 2xx whose retry arrived before it was answered, and a cut-off body, are failures seen."""
    slow = Fault(slow_body=SLOW_BODY)
    log = [
        # Answered in time by the fake, but the same body came back before the slow body was
        # complete: the client (held up by a loaded machine) had given up on it.
        logged(10.0, 10.1, fault=slow),
        logged(10.2, 10.25),
        # A write whose body never arrived whole (the client gave up while sending it) ...
        logged(11.0, 12.0, status=0, digest=None),
        # ... and its chunk's next attempt, the one the client saw succeed.
        logged(12.1, 12.2, digest="d2"),
    ]
    found = audit(log)
    assert (found.attempts, found.failures, found.unread, found.retries) == (3, 1, 1, 2)
    assert (found.bodies, found.ok_answers, found.late, found.landed_unacknowledged) == (2, 3, 1, 1)
    found.check_waits([RETRY.backoff(1), RETRY.backoff(1)])
    # A retry that came after the answer was complete is still a resend after a success.
    with pytest.raises(AssertionError, match="after the client saw it succeed"):
        audit([logged(10.0, 10.1), logged(10.2, 10.25)])
