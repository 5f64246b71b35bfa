"""Streaming bulk uploads against the fake server: chunking, ordering, replace, faults, reports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

import batch_audience as ba
from batch_audience.testing import FakeBatchServer
from tests.conftest import RecordingSleep, ServerProcess, client_tasks


def ids(start: int, stop: int, prefix: str = "u") -> Iterator[str]:
    """IDs prefix-start .. prefix-(stop-1), lazily."""
    return (f"{prefix}-{i}" for i in range(start, stop))


async def agen(items: Iterator[object]) -> AsyncIterator[object]:
    """The items as an async iterator."""
    for item in items:
        yield item


async def test_chunked_replace_sends_replace_first_then_adds(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A 25,001-record replace ends with exactly those members; no add precedes its answer."""
    await client.create("r")
    await client.add("r", ids(0, 50))  # old members the replace must wipe
    fake_server.reset_stats()
    records = [ba.Record(f"n-{i}", attributes={"rank": i}) for i in range(25_001)]
    report = await client.replace("r", records, concurrency=4)
    members = fake_server.members("r")
    assert set(members) == {f"n-{i}" for i in range(25_001)}
    assert members["n-25000"].attributes == {"rank": 25_000}
    assert (report.records, report.requests, report.atomic) == (25_001, 3, False)
    first, *rest = fake_server.requests
    assert first.path.endswith("/audiences/replace")
    assert all(r.path.endswith("/audiences/update") for r in rest)
    assert all(r.received >= first.answered for r in rest)


@pytest.mark.slow
async def test_a_million_ids_from_a_generator(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """1,000,000 IDs from a generator all land, never more requests in flight than asked."""
    await client.create("big")
    fake_server.reset_stats()
    report = await client.add("big", ids(0, 1_000_000), concurrency=3)
    assert report.records == 1_000_000
    assert report.requests == 100
    assert len(report.tokens) == 100
    assert len(fake_server.members("big")) == 1_000_000
    assert fake_server.max_in_flight <= 3


async def test_add_then_remove_half(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Adding 30,000 IDs then removing 15,000 of them leaves exactly the other 15,000."""
    await client.create("half")
    await client.add("half", ids(0, 30_000))
    await client.remove("half", (f"u-{i}" for i in range(0, 30_000, 2)))
    assert set(fake_server.members("half")) == {f"u-{i}" for i in range(1, 30_000, 2)}


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_per_id_order_across_chunks(
    client: ba.AudienceClient, fake_server: FakeBatchServer, concurrency: int
) -> None:
    """An ID added, then removed 12,000 entries later, then re-added, ends in its last state."""
    await client.create("order")
    await client.add("order", ["x", "y"])
    stream: list[object] = [ba.Record("x", attributes={"v": 1})]
    stream += [f"pad-{i}" for i in range(12_000)]
    stream += [{"id": "x", "attributes": {"v": 2}}]
    stream += [f"pad2-{i}" for i in range(12_000)]
    # Both removes and adds go through the update route; a mixed stream is two calls.
    await client.add("order", stream, concurrency=concurrency, chunk_size=5_000)
    await client.remove("order", ["x"] + [f"pad-{i}" for i in range(100)], concurrency=concurrency)
    members = fake_server.members("order")
    assert "x" not in members
    assert "y" in members
    report = await client.add(
        "order",
        [{"id": "x", "attributes": {"v": 3}}]
        + [f"z-{i}" for i in range(20_000)]
        + [{"id": "x", "attributes": {"v": 4}}],
        concurrency=concurrency,
        chunk_size=5_000,
    )
    assert report.requests == 5
    assert fake_server.members("order")["x"].attributes == {"v": 4}


async def test_chunks_sharing_an_id_are_never_in_flight_together(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A chunk waits for an earlier in-flight chunk that shares an ID with it."""
    await client.create("seq")
    fake_server.fail_next(delay=0.2, path="/audiences/update")  # the first chunk is slow
    stream = ["dup"] + [f"a-{i}" for i in range(99)] + [f"b-{i}" for i in range(100)] + ["dup"]
    await client.add("seq", stream, chunk_size=100, concurrency=4)
    first, second, third = fake_server.requests[-3:]
    # The third chunk holds "dup" again: it was sent only after the first was answered.
    assert third.received >= first.answered
    # The second chunk shares nothing with the first, so it did not wait for it.
    assert second.received < first.answered


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"status": 429, "retry_after": 1}, id="429-retry-after"),
        pytest.param({"status": 503}, id="503"),
        pytest.param({"drop": True}, id="dropped"),
        pytest.param({"drop": True, "apply": True}, id="dropped-after-apply"),
    ],
)
async def test_faults_during_a_large_upload_lose_nothing(
    client: ba.AudienceClient,
    fake_server: FakeBatchServer,
    sleep: RecordingSleep,
    fault: dict[str, object],
) -> None:
    """Injected faults during a 60,000-record upload are retried and every record lands."""
    await client.create("faulty")
    fake_server.fail_next(times=4, path="/audiences/update", **fault)  # type: ignore[arg-type]
    report = await client.add("faulty", ids(0, 60_000))
    assert len(fake_server.members("faulty")) == 60_000
    assert report.retries == 4
    assert report.records == 60_000
    if fault.get("status") == 429:
        assert sleep.calls == [1.0] * 4


async def test_429_halves_the_concurrency(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """After 429s the upload sends fewer chunks at once, then recovers."""
    await client.create("aimd")
    fake_server.fail_next(status=429, retry_after=0, times=2, path="/audiences/update")
    fake_server.reset_stats()
    await client.add("aimd", ids(0, 80_000), concurrency=4, chunk_size=2_000)
    assert len(fake_server.members("aimd")) == 80_000
    assert fake_server.max_in_flight <= 4


async def test_bad_record_is_reported_and_never_sent(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A bad record at position 25,000 raises with its position and ID and is never sent."""
    await client.create("bad")

    def stream() -> Iterator[object]:
        yield from ids(0, 25_000)
        yield {"id": "evil", "attributes": {"Not-A-Key": 1}}
        yield from ids(25_000, 30_000)

    with pytest.raises(ba.ValidationError) as caught:
        await client.add("bad", stream(), concurrency=2)
    err = caught.value
    assert (err.position, err.record_id) == (25_000, "evil")
    assert "Not-A-Key" in str(err)
    assert err.acknowledged == 20_000
    assert err.report is not None and err.report.records == 20_000
    assert "evil" not in fake_server.members("bad")
    assert len(fake_server.members("bad")) == 20_000
    assert sum(r.entries for r in fake_server.requests) == 20_000


async def test_async_iterable_source_matches_list(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """An async iterator source gives the same membership and report as a list."""
    await client.create("l")
    await client.create("a")
    items = [ba.Record(f"m-{i}", attributes={"n": i}) for i in range(12_345)]
    from_list = await client.add("l", items)
    from_async = await client.add("a", agen(iter(items)))
    assert fake_server.members("l") == fake_server.members("a")
    assert (
        (from_list.records, from_list.requests)
        == (from_async.records, from_async.requests)
        == (12_345, 2)
    )


async def test_progress_is_called_after_each_chunk(client: ba.AudienceClient) -> None:
    """progress= gets the records done after each acknowledged chunk, and a list's total."""
    await client.create("p")
    updates: list[ba.Progress] = []
    await client.add("p", [f"i-{i}" for i in range(25_000)], progress=updates.append, concurrency=1)
    assert [u.records for u in updates] == [10_000, 20_000, 25_000]
    assert {u.total for u in updates} == {25_000}
    generator_updates: list[ba.Progress] = []
    await client.add("p", ids(0, 15_000), progress=generator_updates.append)
    assert generator_updates[-1].records == 15_000
    assert generator_updates[-1].total is None


async def test_failure_part_way_carries_the_partial_report(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """An upload that fails for good raises the API error with the partial report attached."""
    await client.create("part")

    def arm(progress: ba.Progress) -> None:
        # With one chunk in flight, the third chunk is sent only after this call.
        if progress.records == 20_000:
            fake_server.fail_next(status=400, path="/audiences/update")

    with pytest.raises(ba.BadRequestError) as caught:
        await client.add("part", ids(0, 30_000), concurrency=1, progress=arm)
    report = caught.value.report
    assert report is not None
    assert (report.records, report.requests, len(report.tokens)) == (20_000, 2, 2)
    assert any("20000 records acknowledged" in note for note in caught.value.__notes__)


async def test_cancelling_an_upload_leaves_no_task(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Cancelling an upload cancels its requests, leaves no task and propagates CancelledError."""
    await client.create("c")
    before = asyncio.all_tasks()
    fake_server.fail_next(delay=5.0, times=4, path="/audiences/update")
    task = asyncio.create_task(client.add("c", ids(0, 100_000)))
    while fake_server.in_flight < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert client_tasks(asyncio.all_tasks() - before) == set()


async def test_empty_replace_empties_the_audience(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Replacing with an empty stream sends one replace with no IDs."""
    await client.create("e")
    await client.add("e", ["a", "b"])
    report = await client.replace("e", [])
    assert fake_server.members("e") == {}
    assert (report.records, report.requests, report.atomic) == (0, 1, True)


async def test_wait_true_puts_final_states_in_the_report(
    fake_server: FakeBatchServer, client: ba.AudienceClient
) -> None:
    """add(wait=True) waits for indexing and reports every token's final state."""
    await client.create("w")
    report = await client.add("w", ids(0, 25_000), wait=True)
    assert report.states is not None
    assert set(report.states) == set(report.tokens)
    assert set(report.states.values()) == {ba.IndexingState.APPLIED}


async def test_upload_never_stalls_the_event_loop(fake_server_process: ServerProcess) -> None:
    """During a 200,000-record upload the event loop is never held for 50 ms or more.

    Measured in CPU time of the loop's thread between two ticks of a watcher, not wall time:
    on a loaded machine the process can be descheduled for longer than that, which says
    nothing of what the library holds (wall-clock figures are benchmarks/upload.py's job).
    """
    server = fake_server_process
    client = ba.AudienceClient(server.rest_key, server.project_key, base_url=server.url)
    await client.create("lag")
    lags: list[float] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            start = time.thread_time()
            await asyncio.sleep(0.001)
            lags.append(time.thread_time() - start)

    watcher = asyncio.create_task(watch())
    records = (
        ba.Record(
            f"lag-{i}", attributes={"a": i, "b": "x", "c": 1.5, "d": ba.Url("https://e.com/x")}
        )
        for i in range(200_000)
    )
    async with client:
        report = await client.add("lag", records)
    stop.set()
    await watcher
    assert report.records == 200_000
    assert len(lags) > 50
    assert max(lags) < 0.050, f"the loop was held {max(lags) * 1000:.1f} ms of CPU at once"


async def test_an_upload_leaves_the_garbage_collector_alone(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """The process's GC stays as its owner set it, seen from inside the source, mid-upload."""
    import gc

    await client.create("gc")
    thresholds = gc.get_threshold()
    seen: list[tuple[bool, tuple[int, int, int]]] = []

    async def source() -> AsyncIterator[str]:
        for n in range(25_000):
            if n % 5_000 == 0:
                seen.append((gc.isenabled(), gc.get_threshold()))
                await asyncio.sleep(0)
            yield f"g-{n}"

    assert gc.isenabled()
    await client.add("gc", source())
    assert seen == [(True, thresholds)] * 5
    assert gc.isenabled() and gc.get_threshold() == thresholds
    assert len(fake_server.members("gc")) == 25_000


async def paced(
    stream: list[object], waits: dict[int, Callable[[], Awaitable[None]]]
) -> AsyncIterator[object]:
    """The items of ``stream`` as an async iterator, awaiting ``waits[i]()`` before item ``i``."""
    for position, item in enumerate(stream):
        wait = waits.get(position)
        if wait is not None:
            await wait()
        yield item


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (the test's own timeout bounds the wait)."""
    while not condition():
        await asyncio.sleep(0.005)


def chunk_tasks_done() -> bool:
    """Whether every task of the client (the current upload's chunk requests) has ended."""
    return not client_tasks(asyncio.all_tasks())


async def test_bad_record_while_a_chunk_fails_in_flight_shows_both(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A bad record pulled while an earlier chunk fails in flight: the API error is not hidden.

    Chunk 0 is answered 400 after the three chunks behind it succeeded: the resume point is
    the contiguous acknowledged prefix (0), not the 300 records acknowledged out of order.
    """
    await client.create("mixed")
    fake_server.reset_stats()
    fake_server.fail_next(status=400, delay=0.3, path="/audiences/update")
    stream: list[object] = [f"m-{i}" for i in range(400)]
    stream.append({"id": "evil", "attributes": {"Not-A-Key": 1}})
    waits = {
        # Chunk 0 holds the fault: chunk 1 is pulled only once chunk 0 is at the server.
        100: lambda: until(lambda: fake_server.in_flight >= 1),
        # The bad record comes while chunk 0 is still held and the others were answered.
        400: lambda: until(lambda: sum(r.status == 202 for r in fake_server.requests) >= 3),
    }
    with pytest.raises(ba.ValidationError) as caught:
        await client.add("mixed", paced(stream, waits), concurrency=4, chunk_size=100)
    err = caught.value
    assert (err.position, err.record_id) == (400, "evil")
    assert err.acknowledged == 0
    assert isinstance(err.__cause__, ba.BadRequestError)
    assert err.errors == (err.__cause__,)
    text = str(err)
    assert "Not-A-Key" in text
    assert "1 chunk" in text and "failed" in text and "HTTP 400" in text
    assert any("records 0-99" in note for note in err.__notes__)
    assert err.report is not None
    assert (err.report.records, err.report.requests, len(err.report.tokens)) == (300, 3, 3)
    members = fake_server.members("mixed")
    assert set(members) == {f"m-{i}" for i in range(100, 400)}


async def test_api_error_with_chunks_in_flight_keeps_every_failure(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Two chunks fail, two later ones succeed: the first error is raised, the second noted.

    The report counts the two acknowledged chunks, and the notes give the safe resume point:
    the contiguous acknowledged prefix, here the stream's start.
    """
    await client.create("two")
    fake_server.reset_stats()
    fake_server.fail_next(status=400, times=2, path="/audiences/update")
    stream: list[object] = [f"t-{i}" for i in range(500)]

    def answered(n: int) -> Callable[[], Awaitable[None]]:
        return lambda: until(lambda: len(fake_server.requests) >= n)

    # One chunk at a time reaches the server (so the faults hit chunks 0 and 1); chunk 4 is
    # pulled once the client holds all four answers.
    waits = {100: answered(1), 200: answered(2), 300: answered(3)}
    waits[400] = lambda: until(chunk_tasks_done)
    with pytest.raises(ba.BadRequestError) as caught:
        await client.add("two", paced(stream, waits), concurrency=4, chunk_size=100)
    err = caught.value
    notes = "\n".join(err.__notes__)
    assert notes.count("another chunk failed too") == 1
    assert "records 100-199: HTTP 400" in notes
    assert "resume from position 0" in notes
    assert err.report is not None
    assert (err.report.records, err.report.requests) == (200, 2)
    assert set(fake_server.members("two")) == {f"t-{i}" for i in range(200, 400)}


async def test_cancel_while_settling_after_a_bad_record_leaves_no_task(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """Cancelled while its chunks in flight settle after a bad record: nothing outlives the call.

    The fake holds the four chunks, then answers 503: a chunk task left running would retry
    after the cancelled call returned.
    """
    await client.create("settle")
    fake_server.reset_stats()
    before = asyncio.all_tasks()
    fake_server.fail_next(status=503, delay=1.0, times=4, path="/audiences/update")
    reached = asyncio.Event()

    async def bad_record() -> None:
        reached.set()

    stream: list[object] = [f"s-{i}" for i in range(400)]
    stream.append({"id": "evil", "attributes": {"Not-A-Key": 1}})
    task = asyncio.create_task(
        client.add("settle", paced(stream, {400: bad_record}), concurrency=4, chunk_size=100)
    )
    await reached.wait()
    await until(lambda: fake_server.in_flight == 4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancelled_at = time.monotonic()
    assert client_tasks(asyncio.all_tasks() - before) == set()
    # The fake answers the four held requests; nothing new may arrive after the cancellation.
    await until(lambda: fake_server.in_flight == 0)
    await asyncio.sleep(0.2)
    assert len(fake_server.requests) == 4
    assert all(r.received < cancelled_at for r in fake_server.requests)


async def test_full_chunks_over_a_mebibyte_go_without_warnings(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A 10,000-entry chunk of 2.5 MB is sent as a stream: no ResourceWarning, same result.

    aiohttp warns about bytes bodies over 1 MiB; the suite turns warnings into errors, as a
    user's suite may.
    """
    await client.create("big-bodies")
    text = "x" * 200
    records = [ba.Record(f"b-{n}", {"note": text, "n": n}) for n in range(10_000)]
    fake_server.reset_stats()
    report = await client.add("big-bodies", records)
    (request,) = [r for r in fake_server.requests if r.path.endswith("/audiences/update")]
    assert request.entries == 10_000 and request.status == 202
    assert report.requests == 1
    members = fake_server.members("big-bodies")
    assert len(members) == 10_000 and members["b-9999"].attributes == {"note": text, "n": 9999}
