"""The writer's settings, error types and loop behaviour, with the HTTP session stubbed out."""

from __future__ import annotations

import asyncio
import copy
import pickle
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

import batch_audience as ba
from batch_audience._endpoints import ApiRoute
from batch_audience._session import Response
from batch_audience._writer import FlushResult, WriterEntry, WriterError


class StubSend:
    """Stands in for Session.send: records each body's entries and answers with a token.

    ``fail`` holds the (1-based) calls answered with a 400; ``gate``, when set, holds every
    call until it is opened.
    """

    def __init__(self) -> None:
        self.bodies: list[list[dict[str, Any]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.fail: set[int] = set()
        self.gate: asyncio.Event | None = None

    async def __call__(self, route: ApiRoute, **_: Any) -> Response:
        self.in_flight += 1
        self.calls += 1
        call = self.calls
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            if self.gate is not None:
                await self.gate.wait()
            if call in self.fail:
                raise ba.BadRequestError(400, error_code="MALFORMED_PARAMETER", message="bad")
            assert route.body is not None
            self.bodies.append(orjson.loads(bytes(route.body))["ids"])
            return Response(201, {"indexing_token": f"t{len(self.bodies)}"}, 1)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def stub_client() -> AsyncIterator[tuple[ba.AudienceClient, StubSend]]:
    """A 2.x client whose requests never leave the process."""
    async with ba.AudienceClient("rest-key", "project-key", base_url="http://127.0.0.1:9") as c:
        stub = StubSend()
        c._session.send = stub  # type: ignore[method-assign]
        yield c, stub


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"max_records": 0}, id="max_records-0"),
        pytest.param({"max_records": 10_001}, id="max_records-over-limit"),
        pytest.param({"max_records": True}, id="max_records-bool"),
        pytest.param({"max_delay": 0}, id="max_delay-0"),
        pytest.param({"max_delay": float("nan")}, id="max_delay-nan"),
        pytest.param({"max_delay": float("inf")}, id="max_delay-inf"),
        pytest.param({"max_records": 100, "max_pending": 99}, id="max_pending-below-batch"),
        pytest.param({"drain_timeout": -1}, id="drain_timeout-negative"),
        pytest.param({"on_error": "log"}, id="on_error-not-callable"),
    ],
)
async def test_meaningless_settings_are_refused(
    stub_client: tuple[ba.AudienceClient, StubSend], settings: dict[str, Any]
) -> None:
    """Each meaningless setting raises ValidationError naming it, before anything starts."""
    client, _ = stub_client
    with pytest.raises(ba.ValidationError, match=next(iter(settings))):
        client.writer("ok", **settings)


async def test_a_bad_audience_name_is_refused(
    stub_client: tuple[ba.AudienceClient, StubSend],
) -> None:
    """An audience name breaking the name rule raises ValidationError at once."""
    client, _ = stub_client
    with pytest.raises(ba.ValidationError):
        client.writer("no spaces")


async def test_batches_go_one_at_a_time_in_order(
    stub_client: tuple[ba.AudienceClient, StubSend],
) -> None:
    """Mixed adds and removes reach the session in call order, one request at a time."""
    client, stub = stub_client
    async with client.writer("w", max_records=3, max_delay=60) as writer:
        for i in range(10):
            await (writer.add(f"u-{i}", attributes={"v": i}) if i % 2 else writer.remove(f"u-{i}"))
    sent = [(e["action"], e["id"]) for body in stub.bodies for e in body]
    expected = [("add" if i % 2 else "remove", f"u-{i}") for i in range(10)]
    assert sent == expected
    assert [len(b) for b in stub.bodies] == [3, 3, 3, 1]
    assert stub.max_in_flight == 1


async def test_a_tight_producer_loop_still_lets_other_tasks_run(
    stub_client: tuple[ba.AudienceClient, StubSend],
) -> None:
    """Adds that never block still hand the loop a turn now and then, so nothing starves."""
    client, _ = stub_client
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    side = asyncio.create_task(ticker())
    try:
        async with client.writer("w", max_pending=100_000) as writer:
            for i in range(5_000):
                await writer.add(f"u-{i}")
            assert ticks >= 5_000 // 512
    finally:
        side.cancel()
        await asyncio.gather(side, return_exceptions=True)


async def test_an_idle_writer_sends_nothing(
    stub_client: tuple[ba.AudienceClient, StubSend],
) -> None:
    """An open writer holding no entries makes no request, on its own or when closed."""
    client, stub = stub_client
    async with client.writer("w", max_delay=0.01) as writer:
        await asyncio.sleep(0.05)
        assert await writer.flush() == FlushResult()
    assert stub.bodies == []


async def test_attributes_go_with_an_id_string_only(
    stub_client: tuple[ba.AudienceClient, StubSend],
) -> None:
    """attributes= with a Record raises ValidationError: the record carries its own."""
    client, stub = stub_client
    async with client.writer("w") as writer:
        with pytest.raises(ba.ValidationError, match="ID str"):
            await writer.add(ba.Record("r"), attributes={"v": 1})
    assert stub.bodies == []


def test_writer_error_counts_entries_without_showing_ids() -> None:
    """WriterError's message and repr count entries and name error types, never IDs."""
    cause = ba.BadRequestError(400, error_code="MALFORMED_PARAMETER", message="bad")
    entries = [WriterEntry("add", "secret-id"), WriterEntry("remove", "other-id")]
    err = WriterError([(entries[:1], cause), (entries[1:], cause)])
    assert err.entries == tuple(entries) and err.error is cause and err.errors == (cause,)
    assert "2 entries in 2 batches" in str(err) and "BadRequestError 400" in str(err)
    assert "secret-id" not in str(err) + repr(err)
    assert isinstance(err, ba.BatchAudienceError)


def test_writer_entry_turns_back_into_a_record() -> None:
    """A failed add's entry becomes a Record with its wire attributes and tags."""
    entry = WriterEntry("add", "u", {"date(joined)": "2024-01-01T00:00:00Z"}, ["t"])
    assert entry.record == ba.Record("u", {"date(joined)": "2024-01-01T00:00:00Z"}, ["t"])


async def test_an_open_writer_warns_when_collected(
    stub_client: tuple[ba.AudienceClient, StubSend],
) -> None:
    """A writer left open warns with ResourceWarning; a closed one stays silent."""
    client, _ = stub_client
    writer = client.writer("w")
    warned: list[Any] = []
    async with writer:
        writer.__del__(lambda *args, **kwargs: warned.append(args))
    writer.__del__(lambda *args, **kwargs: warned.append(args))
    assert len(warned) == 1 and warned[0][1] is ResourceWarning


async def test_a_sender_that_stops_on_its_own_never_leaves_add_or_flush_waiting(
    stub_client: tuple[ba.AudienceClient, StubSend],
) -> None:
    """If the sender task ends outside a close, waiting and later calls raise; close hands over."""
    client, stub = stub_client
    stub.gate = asyncio.Event()
    writer = client.writer("w", max_records=1, max_pending=1, max_delay=60)
    async with asyncio.timeout(5):  # before the fix the waiting add never returned
        await writer.add("in-flight")
        waiting = asyncio.create_task(writer.add("waits"))
        await asyncio.sleep(0.01)
        assert writer._sender is not None
        writer._sender.cancel()  # as a loop shutdown or a cancel-all helper would
        with pytest.raises(ba.ClientClosedError, match="sender stopped"):
            await waiting
        with pytest.raises(ba.ClientClosedError, match="sender stopped"):
            await writer.flush()
        with pytest.raises(ba.ClientClosedError, match="sender stopped"):
            await writer.remove("later")
        with pytest.raises(WriterError) as caught:
            await writer.aclose()
    assert [e.id for e in caught.value.entries] == ["in-flight"]
    assert isinstance(caught.value.error, ba.ClientClosedError)
    assert writer.closed


async def test_failed_entries_are_forgotten_by_the_writer_once_dropped(
    stub_client: tuple[ba.AudienceClient, StubSend],
) -> None:
    """The writer tracks IDs only while someone holds their failed entries: memory stays bounded."""
    client, stub = stub_client
    stub.fail = {1}
    parked: list[WriterEntry] = []

    def on_error(entries: Sequence[WriterEntry], error: Exception) -> None:
        parked.extend(entries)

    async with client.writer("w", max_records=2, max_delay=60, on_error=on_error) as writer:
        await writer.add("a")
        await writer.add("b")
        await writer.remove("a")
        await writer.flush()
        assert [(e.id, e.superseded) for e in parked] == [("a", True), ("b", False)]
        assert set(writer._ledger.latest) == {"a", "b"}
        parked.clear()
        assert writer._ledger.latest == {} and writer._ledger.refs == {}
        await writer.add("c")


async def test_a_copied_entry_keeps_its_origin_and_a_pickled_one_leaves_it(
    stub_client: tuple[ba.AudienceClient, StubSend],
) -> None:
    """copy/deepcopy share what resend knows; pickle (another process) drops it, equality holds."""
    client, stub = stub_client
    stub.fail = {1}
    async with client.writer("w", max_records=1, max_delay=60) as writer:
        await writer.add("a", attributes={"v": 1})
        with pytest.raises(WriterError) as caught:
            await writer.flush()
        await writer.remove("a")
        [entry] = caught.value.entries
        assert entry.superseded and copy.copy(entry).superseded and copy.deepcopy(entry).superseded
        thawed = pickle.loads(pickle.dumps(entry))
        assert thawed == entry and not thawed.superseded
        assert repr(entry) == "WriterEntry(action='add', id='a', attributes={'v': 1}, tags=None)"
        assert (await writer.resend([thawed])).resent == 1


async def test_flush_racing_the_age_timer_sends_each_entry_once(
    stub_client: tuple[ba.AudienceClient, StubSend],
) -> None:
    """flush() called as the age timer comes due seals each entry into exactly one batch."""
    client, stub = stub_client
    sent = 0
    async with client.writer("w", max_delay=0.001) as writer:
        for i in range(150):
            await writer.add(f"u-{i}")
            await asyncio.sleep(0.001 * (i % 3))
            sent += (await writer.flush()).entries
    assert sent == 150
    assert [e["id"] for body in stub.bodies for e in body] == [f"u-{i}" for i in range(150)]
    assert all(stub.bodies)
