"""wait_applied against the fake server: indexing delays, REPLACED, deadlines, many tokens."""

from __future__ import annotations

import pytest

import batch_audience as ba
from batch_audience.testing import FakeBatchServer
from tests.conftest import RecordingSleep, make_v1_client


async def test_waits_through_an_indexing_delay(fake_server: FakeBatchServer) -> None:
    """Tokens IN_PROGRESS for 0.3 s are reported APPLIED once indexing caught up."""
    fake_server.indexing_delay = 0.3
    poll = ba.PollPolicy(initial=0.05, factor=1.5, max_interval=0.2, timeout=5)
    async with ba.AudienceClient(
        fake_server.rest_key, fake_server.project_key, base_url=fake_server.url, poll=poll
    ) as c:
        await c.create("slow")
        report = await c.add("slow", ["a", "b"])
        assert (
            await c.view("slow", token=report.tokens[0])
        ).indexing_state == ba.IndexingState.IN_PROGRESS
        states = await c.wait_applied("slow", report.tokens)
    assert states == {report.tokens[0]: ba.IndexingState.APPLIED}
    views = [r for r in fake_server.requests if r.path.endswith("/view")]
    assert len(views) >= 3


class _Enough(Exception):
    """Stops a wait after a few polls."""


async def test_poll_intervals_grow_as_configured(fake_server: FakeBatchServer) -> None:
    """Without jitter the waits between polls are 0.5, 0.75, 1.125 s … as the PollPolicy says."""
    fake_server.indexing_delay = 3600
    calls: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 5:
            raise _Enough

    poll = ba.PollPolicy(initial=0.5, factor=1.5, max_interval=10, jitter=False, timeout=3600)
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        poll=poll,
        sleep=recording_sleep,
    ) as c:
        await c.create("g")
        token = (await c.add("g", ["a"])).tokens[0]
        with pytest.raises(_Enough):
            await c.wait_applied("g", token)
        assert calls == [0.5, 0.75, 1.125, 1.6875, 2.53125]
        # A wait that would end past the deadline is cut to end at it, for one last poll.
        calls.clear()
        fake_server.reset_stats()
        with pytest.raises(ba.IndexingTimeout):
            await c.wait_applied("g", token, timeout=0.4)
        assert len(calls) == 1 and 0 < calls[0] <= 0.4
        assert len(fake_server.requests) == 2


async def test_replaced_counts_as_done(client: ba.AudienceClient) -> None:
    """A token overtaken by a later replace is REPLACED, which ends the wait."""
    await client.create("r")
    add = await client.add("r", ["a"])
    await client.replace("r", ["b"])
    states = await client.wait_applied("r", add.tokens)
    assert states == {add.tokens[0]: ba.IndexingState.REPLACED}


async def test_timeout_carries_the_last_states(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """At the deadline IndexingTimeout holds the last known state of every token."""
    fake_server.indexing_delay = 3600
    async with ba.AudienceClient(
        fake_server.rest_key, fake_server.project_key, base_url=fake_server.url, sleep=sleep
    ) as c:
        await c.create("t")
        tokens = [(await c.add("t", [f"x{i}"])).tokens[0] for i in range(3)]
        with pytest.raises(ba.IndexingTimeout) as caught:
            await c.wait_applied("t", tokens, timeout=0.2, interval=0.05)
    assert caught.value.states == {t: ba.IndexingState.IN_PROGRESS for t in tokens}
    assert isinstance(caught.value, TimeoutError)


async def test_a_thousand_tokens_stay_within_the_in_flight_bound(
    fake_server: FakeBatchServer,
) -> None:
    """Polling 1,000 tokens never has more view calls in flight than the client's limit."""
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        limits=ba.Limits(max_in_flight=4),
    ) as c:
        await c.create("many")
        report = await c.add("many", [f"id-{i}" for i in range(1_000)], chunk_size=1)
        assert len(report.tokens) == 1_000
        fake_server.reset_stats()
        states = await c.wait_applied("many", report.tokens)
    assert len(states) == 1_000
    assert set(states.values()) == {ba.IndexingState.APPLIED}
    assert fake_server.max_in_flight <= 4
    assert fake_server.request_count == 1_000


async def test_v1_tokens(fake_server: FakeBatchServer, sleep: RecordingSleep) -> None:
    """1.x tokens are waited on the same way (1.x never reports REPLACED)."""
    async with make_v1_client(fake_server, "1.1", sleep) as c:
        await c.create("inst")
        add = await c.add("inst", ["a"])
        await c.replace("inst", ["b"])
        states = await c.wait_applied("inst", add.tokens)
    assert states == {add.tokens[0]: ba.IndexingState.APPLIED}


async def test_tokens_survive_as_plain_strings(fake_server: FakeBatchServer) -> None:
    """A token stored as text can be waited on later by a different client."""
    async with ba.AudienceClient(
        fake_server.rest_key, fake_server.project_key, base_url=fake_server.url
    ) as first:
        await first.create("later")
        stored = ",".join((await first.add("later", ["a"])).tokens)
    async with ba.AudienceClient(
        fake_server.rest_key, fake_server.project_key, base_url=fake_server.url
    ) as second:
        states = await second.wait_applied("later", stored.split(","))
    assert list(states.values()) == [ba.IndexingState.APPLIED]


async def test_unknown_token_raises_bad_request(client: ba.AudienceClient) -> None:
    """A token the server does not know is an error, not an endless wait."""
    await client.create("u")
    with pytest.raises(ba.BadRequestError):
        await client.wait_applied("u", ["0" * 32])


@pytest.mark.parametrize("tokens", [[""], [None], [5]])
async def test_bad_tokens_are_refused(client: ba.AudienceClient, tokens: list[object]) -> None:
    """Tokens must be non-empty strings."""
    with pytest.raises(ba.ValidationError):
        await client.wait_applied("u", tokens)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("delay", "interval"),
    [
        pytest.param(0.9, 0.5, id="interval-past-the-deadline"),
        pytest.param(0.5, 1.0, id="interval-equals-timeout"),
    ],
)
async def test_indexing_done_before_the_deadline_is_seen_by_a_poll_at_the_deadline(
    fake_server: FakeBatchServer, delay: float, interval: float
) -> None:
    """With real sleeps, a write indexed before the deadline is found by the poll at it."""
    fake_server.indexing_delay = delay
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        poll=ba.PollPolicy(jitter=False),
    ) as c:
        await c.create("edge")
        token = (await c.add("edge", ["a"])).tokens[0]
        # Before the fix: IndexingTimeout after the poll at 0.5 s (or at once), never polling
        # at 1.0 s, by when the write was indexed.
        states = await c.wait_applied("edge", token, timeout=1.0, interval=interval)
    assert states == {token: ba.IndexingState.APPLIED}


async def test_in_process_spelling_is_not_finished(fake_server: FakeBatchServer) -> None:
    """A server spelling the state IN_PROCESS is waited on, and the string passes through."""
    fake_server.in_progress_state = "IN_PROCESS"
    fake_server.indexing_delay = 0.3
    poll = ba.PollPolicy(initial=0.05, factor=1.0, max_interval=0.05, timeout=10)
    async with ba.AudienceClient(
        fake_server.rest_key, fake_server.project_key, base_url=fake_server.url, poll=poll
    ) as c:
        await c.create("spelt")
        token = (await c.add("spelt", ["a"])).tokens[0]
        assert (await c.view("spelt", token=token)).indexing_state == "IN_PROCESS"
        assert await c.wait_applied("spelt", token) == {token: ba.IndexingState.APPLIED}
        fake_server.indexing_delay = 3600
        slow = (await c.add("spelt", ["b"])).tokens[0]
        with pytest.raises(ba.IndexingTimeout) as caught:
            await c.wait_applied("spelt", slow, timeout=0.2)
    assert caught.value.states == {slow: "IN_PROCESS"}
    views = [r for r in fake_server.requests if r.path.endswith("/view")]
    assert len(views) >= 3
