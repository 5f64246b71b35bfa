"""Retries, timeouts, cancellation and session ownership, against the fake over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time

import aiohttp
import pytest

import batch_audience as ba
from batch_audience._endpoints import V2Endpoints
from batch_audience._session import Session
from batch_audience.testing import FakeBatchServer
from tests.conftest import FAST_RETRY, RecordingSleep, client_tasks


async def test_429_with_retry_after_waits_exactly_that_long(
    client: ba.AudienceClient, fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A 429 with Retry-After: 7 makes the client ask for a 7 s wait, then succeed."""
    await client.create("a")
    fake_server.fail_next(status=429, retry_after=7)
    await client.view("a")
    assert sleep.calls == [7.0]
    assert [r.status for r in fake_server.requests] == [202, 429, 200]


async def test_retry_after_http_date_is_honoured(
    client: ba.AudienceClient, fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """Retry-After in HTTP-date form becomes a wait until that date."""
    import email.utils

    await client.create("a")
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake_server.fail_next(status=503, retry_after=when)
    await client.view("a")
    assert len(sleep.calls) == 1
    assert 27.0 <= sleep.calls[0] <= 30.0


async def test_real_retry_after_delay_is_respected(fake_server: FakeBatchServer) -> None:
    """With the real sleep, the retry is not sent before the Retry-After delay has passed."""
    async with ba.AudienceClient(
        fake_server.rest_key, fake_server.project_key, base_url=fake_server.url
    ) as c:
        await c.create("a")
        fake_server.fail_next(status=429, retry_after=1)
        await c.view("a")
    refused, retried = fake_server.requests[-2:]
    assert refused.status == 429
    assert retried.received - refused.answered >= 1.0


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"status": 500}, id="500"),
        pytest.param({"status": 502}, id="502"),
        pytest.param({"status": 503}, id="503"),
        pytest.param({"status": 504}, id="504"),
        pytest.param({"drop": True}, id="dropped-connection"),
    ],
)
async def test_transient_faults_are_retried_with_exponential_backoff(
    client: ba.AudienceClient,
    fake_server: FakeBatchServer,
    sleep: RecordingSleep,
    fault: dict[str, object],
) -> None:
    """5xx and dropped connections are retried after 0.5, 1, 2 s (no jitter in tests)."""
    await client.create("a")
    fake_server.fail_next(times=3, **fault)  # type: ignore[arg-type]
    info = await client.view("a")
    assert info.name == "a"
    assert sleep.calls == [0.5, 1.0, 2.0]


async def test_a_400_is_sent_once(
    client: ba.AudienceClient, fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A non-retriable 4xx is raised at once, after a single request."""
    fake_server.fail_next(status=400)
    with pytest.raises(ba.BadRequestError):
        await client.view("a")
    assert len(fake_server.requests) == 1
    assert sleep.calls == []


async def test_full_jitter_stays_within_the_backoff(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """With jitter, each wait is the backoff times the injected random draw."""
    policy = ba.RetryPolicy(base=1.0, factor=2.0, cap=30.0, jitter=True)
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        retry=policy,
        sleep=sleep,
        rand=lambda: 0.25,
    ) as c:
        await c.create("a")
        fake_server.fail_next(status=503, times=3)
        await c.view("a")
    assert sleep.calls == [0.25, 0.5, 1.0]


async def test_deadline_is_checked_before_sleeping(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A wait that would end past the call's deadline is not started."""
    policy = ba.RetryPolicy(base=4.0, jitter=False, deadline=5.0)
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        retry=policy,
        sleep=sleep,
    ) as c:
        fake_server.fail_next(status=503, times=5)
        with pytest.raises(ba.MaintenanceError) as caught:
            await c.view("a")
    assert sleep.calls == [4.0]
    assert "deadline" in "".join(caught.value.__notes__)


async def test_retry_after_above_the_bound_gives_up(
    client: ba.AudienceClient, fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A server asking to wait longer than max_retry_after ends the retries at once."""
    fake_server.fail_next(status=429, retry_after=3600)
    with pytest.raises(ba.RateLimitError) as caught:
        await client.view("a")
    assert caught.value.retry_after == 3600
    assert sleep.calls == []


async def test_timeout_raises_request_timeout(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A response slower than the total timeout raises RequestTimeout (a TimeoutError)."""
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        timeouts=ba.Timeouts(total=0.2),
        retry=ba.RetryPolicy(max_attempts=1),
        sleep=sleep,
    ) as c:
        fake_server.fail_next(delay=1.0)
        with pytest.raises(ba.RequestTimeout) as caught:
            await c.view("a")
    assert isinstance(caught.value, TimeoutError)
    assert "/2.8/audiences/view" in str(caught.value)


async def test_timeout_is_retried(
    client: ba.AudienceClient, fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A timed-out request is retried like any transport failure."""
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        timeouts=ba.Timeouts(total=0.2),
        retry=FAST_RETRY,
        sleep=sleep,
    ) as c:
        await c.create("a")
        fake_server.fail_next(delay=1.0)
        assert (await c.view("a")).name == "a"
    assert sleep.calls == [0.5]


async def test_cancelling_a_call_leaves_no_task_and_no_connection(
    fake_server: FakeBatchServer,
) -> None:
    """Cancelling mid-flight propagates CancelledError, leaves no task and no open connection."""
    async with (
        aiohttp.ClientSession() as http,
        ba.AudienceClient(
            fake_server.rest_key, fake_server.project_key, base_url=fake_server.url, session=http
        ) as c,
    ):
        await c.create("a")
        before = asyncio.all_tasks()
        fake_server.fail_next(delay=5.0)
        task = asyncio.create_task(c.view("a"))
        while fake_server.in_flight == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert client_tasks(asyncio.all_tasks() - before) == set()
        connector = http.connector
        assert connector is not None
        # The cancelled request's connection was closed, not returned to the pool.
        assert sum(len(v) for v in connector._conns.values()) <= 1
        assert len(connector._acquired) == 0


async def test_a_callers_session_stays_open(fake_server: FakeBatchServer) -> None:
    """A session handed in by the caller is used and never closed by the client."""
    async with aiohttp.ClientSession() as http:
        async with ba.AudienceClient(
            fake_server.rest_key, fake_server.project_key, base_url=fake_server.url, session=http
        ) as c:
            await c.create("a")
        assert c.closed
        assert not http.closed
        async with http.get(fake_server.url + "/nope") as resp:
            assert resp.status in (401, 404)


async def test_in_flight_bound_holds(fake_server: FakeBatchServer) -> None:
    """No more than Limits.max_in_flight requests reach the server at once."""
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        limits=ba.Limits(max_in_flight=3),
    ) as c:
        await c.create("a")
        fake_server.fail_next(delay=0.1, times=10)
        await asyncio.gather(*(c.view("a") for _ in range(10)))
    assert fake_server.max_in_flight == 3


async def test_closed_client_refuses_calls(fake_server: FakeBatchServer) -> None:
    """A closed client raises ClientClosedError; aclose is idempotent."""
    c = ba.AudienceClient(fake_server.rest_key, fake_server.project_key, base_url=fake_server.url)
    await c.create("a")
    await c.aclose()
    await c.aclose()
    with pytest.raises(ba.ClientClosedError):
        await c.view("a")


async def test_unclosed_client_warns() -> None:
    """A client that opened a session and was never closed warns with ResourceWarning."""
    import gc

    async with FakeBatchServer() as server:
        holder = [ba.AudienceClient(server.rest_key, server.project_key, base_url=server.url)]
        await holder[0].create("a")
        session = holder[0]._session._session
        assert session is not None
        with pytest.warns(ResourceWarning, match="unclosed AudienceClient"):
            holder.clear()  # the last reference: __del__ runs here
        gc.collect()
        await session.close()


async def test_connection_refused_is_a_connect_error(sleep: RecordingSleep) -> None:
    """Nothing listening: ConnectError after the retries, without the key in its text."""
    async with FakeBatchServer() as server:
        url = server.url
    async with ba.AudienceClient(
        "k", "project_p", base_url=url, retry=FAST_RETRY, sleep=sleep
    ) as c:
        with pytest.raises(ba.ConnectError) as caught:
            await c.view("a")
    assert len(sleep.calls) == 5
    assert caught.value.cause
    # Never connected: nothing was sent, so nothing can have been applied.
    assert caught.value.request_sent is False
    assert caught.value.after_unknown_outcome is False


# -- statuses that are not retried (spec §7) -------------------------------------------------------


@pytest.mark.parametrize("status", [501, 505, 507, 511, 599])
async def test_5xx_other_than_500_502_503_504_is_sent_once(
    client: ba.AudienceClient, fake_server: FakeBatchServer, sleep: RecordingSleep, status: int
) -> None:
    """Only 500, 502, 503 and 504 are transient; 501, 505, 507 ... are raised at once."""
    await client.create("a")
    fake_server.reset_stats()
    fake_server.fail_next(status=status)
    with pytest.raises(ba.ServerError) as caught:
        await client.view("a")
    assert caught.value.status == status
    assert caught.value.retriable is False
    assert len(fake_server.requests) == 1
    assert sleep.calls == []


# -- a caller's session defaults (issue item 9) ----------------------------------------------------


async def _fail_on_status(response: aiohttp.ClientResponse) -> None:
    response.raise_for_status()


@pytest.mark.parametrize(
    "raise_for_status",
    [pytest.param(True, id="true"), pytest.param(_fail_on_status, id="callable")],
)
async def test_a_callers_raise_for_status_does_not_change_status_handling(
    fake_server: FakeBatchServer, sleep: RecordingSleep, raise_for_status: object
) -> None:
    """A session made with raise_for_status still gets a 404 once, as NotFoundError."""
    async with (
        aiohttp.ClientSession(raise_for_status=raise_for_status) as http,  # type: ignore[arg-type]
        ba.AudienceClient(
            fake_server.rest_key,
            fake_server.project_key,
            base_url=fake_server.url,
            session=http,
            retry=FAST_RETRY,
            sleep=sleep,
        ) as c,
    ):
        with pytest.raises(ba.NotFoundError):
            await c.view("missing")
        fake_server.fail_next(status=503)
        await c.create("a")
    assert [r.status for r in fake_server.requests] == [404, 503, 202]
    assert sleep.calls == [0.5]


async def test_a_callers_auto_decompress_false_still_reads_compressed_answers() -> None:
    """A session that leaves bodies compressed by default still gets decoded JSON answers."""
    from aiohttp import web

    async def view(request: web.Request) -> web.Response:
        response = web.json_response({"name": "z", "type": "CUSTOM_ID", "nb_ids": 3})
        response.enable_compression(web.ContentCoding.gzip)
        return response

    app = web.Application()
    app.router.add_get("/2.8/audiences/view", view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as http,
            ba.AudienceClient(
                "rest", "project_p", base_url=f"http://127.0.0.1:{port}", session=http
            ) as c,
        ):
            info = await c.view("z")
        assert (info.name, info.nb_ids) == ("z", 3)
    finally:
        await runner.cleanup()


async def test_a_callers_default_auth_is_refused() -> None:
    """A session with a default auth would add a second credential: refused at construction."""
    # aiohttp 3.14 deprecates BasicAuth and auth=; callers' sessions still carry them.
    with pytest.warns(DeprecationWarning, match="BasicAuth|auth"):
        session = aiohttp.ClientSession(auth=aiohttp.BasicAuth("user", "pass"))
    async with session as http:
        with pytest.raises(ba.ValidationError, match="default auth"):
            ba.AudienceClient("rest", "project_p", session=http)
        with pytest.raises(ba.ValidationError, match="default auth"):
            ba.CustomAudienceClient("app", "rest", session=http)


async def test_a_callers_default_credential_headers(fake_server: FakeBatchServer) -> None:
    """Default credential headers that ours replace are fine; ones sent beside ours are refused."""
    async with aiohttp.ClientSession(
        headers={"Authorization": "Bearer someone-elses", "X-Trace": "t1"}
    ) as http:
        # 2.x sends its own Authorization, which replaces the default one.
        async with ba.AudienceClient(
            fake_server.rest_key, fake_server.project_key, base_url=fake_server.url, session=http
        ) as c:
            await c.create("a")
        assert fake_server.requests[-1].headers["X-Trace"] == "t1"
        # 1.x authenticates with X-Authorization: the default Authorization would go along.
        with pytest.raises(ba.ValidationError, match="Authorization") as caught:
            ba.CustomAudienceClient(fake_server.api_key, fake_server.rest_key, session=http)
        assert "someone-elses" not in str(caught.value)


# -- the call's deadline bounds the attempts (issue item 11) -------------------------------------


class FakeClock:
    """A monotonic clock that moves only when the injected sleep (or the test) moves it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def make_session(server: FakeBatchServer, policy: ba.RetryPolicy, clock: FakeClock) -> Session:
    """A Session of the fake's 2.x project with a fake clock and sleep."""
    return Session(
        base_url=server.url,
        headers=V2Endpoints("2.8", server.project_key).auth_headers(server.rest_key),
        secrets=(server.rest_key,),
        retry=policy,
        timeouts=ba.Timeouts(),
        limits=ba.Limits(),
        sleep=clock.sleep,
        clock=clock,
    )


async def test_a_retry_never_starts_with_no_time_left(fake_server: FakeBatchServer) -> None:
    """A wait that would end exactly at the deadline is not started: the retry would have none."""
    clock = FakeClock()
    policy = ba.RetryPolicy(base=1.0, factor=1.0, jitter=False, deadline=2.0)
    session = make_session(fake_server, policy, clock)
    route = V2Endpoints("2.8", fake_server.project_key).view("a", None)
    fake_server.fail_next(status=503, times=3)
    try:
        with pytest.raises(ba.MaintenanceError) as caught:
            await session.send(route)
    finally:
        await session.aclose()
    assert clock.sleeps == [1.0]
    assert len(fake_server.requests) == 2
    assert "deadline of 2 s" in "".join(caught.value.__notes__)


async def test_no_attempt_starts_once_the_deadline_passed(fake_server: FakeBatchServer) -> None:
    """Time spent before the first attempt (waiting for a slot) counts: none is left, none sent."""
    clock = FakeClock()
    session = make_session(fake_server, ba.RetryPolicy(deadline=1.0), clock)
    route = V2Endpoints("2.8", fake_server.project_key).view("a", None)
    session._semaphore = asyncio.Semaphore(1)
    await session._semaphore.acquire()  # the only slot taken ...
    task = asyncio.create_task(session.send(route))
    await asyncio.sleep(0)
    clock.now = 1.5  # ... until past the deadline
    session._semaphore.release()
    try:
        with pytest.raises(ba.RequestTimeout, match="deadline of 1 s passed before") as caught:
            await task
    finally:
        await session.aclose()
    assert caught.value.request_sent is False
    assert fake_server.requests == []


async def test_waiting_for_a_slot_is_bounded_by_the_deadline(fake_server: FakeBatchServer) -> None:
    """With every slot held by a stalled request, a call gives up at its deadline, unsent."""
    session = Session(
        base_url=fake_server.url,
        headers=V2Endpoints("2.8", fake_server.project_key).auth_headers(fake_server.rest_key),
        secrets=(fake_server.rest_key,),
        retry=ba.RetryPolicy(max_attempts=1),
        timeouts=ba.Timeouts(),
        limits=ba.Limits(max_in_flight=1),
    )
    route = V2Endpoints("2.8", fake_server.project_key).view("a", None)
    fake_server.fail_next(delay=5.0)
    hog = asyncio.create_task(session.send(route))
    try:
        while fake_server.in_flight == 0:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(ba.RequestTimeout, match="before the request could be sent"):
            await session.send(route, retry=ba.RetryPolicy(deadline=0.3))
        assert time.monotonic() - started < 3.0  # generous: the slot was held 5 s
        assert len(fake_server.requests) == 0
    finally:
        hog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hog
        await session.aclose()


async def test_the_deadline_cuts_an_attempts_timeout(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """Deadline 1 s, attempts of 5 s: a retry stalled by the server ends at the deadline."""
    policy = ba.RetryPolicy(base=0.1, jitter=False, deadline=1.0)
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        retry=policy,
        timeouts=ba.Timeouts(total=5.0),
        sleep=sleep,
    ) as c:
        await c.create("a")
        fake_server.fail_next(status=503)
        fake_server.fail_next(delay=10.0)
        started = time.monotonic()
        with pytest.raises(ba.RequestTimeout) as caught:
            await c.view("a")
        elapsed = time.monotonic() - started
    assert "deadline of 1 s passed" in str(caught.value)
    assert "deadline of 1 s passed" in "".join(caught.value.__notes__)
    # Before the fix the retry ran its full 5 s; generous against a loaded machine.
    assert 0.9 <= elapsed < 4.0


SECOND_RUN = """
import asyncio, sys
import batch_audience as ba
from batch_audience.testing import FakeBatchServer

loop = asyncio.new_event_loop()  # the fake serves from its own thread; this loop only starts it
server = loop.run_until_complete(FakeBatchServer().__aenter__())
client = ba.AudienceClient(server.rest_key, server.project_key, base_url=server.url)
asyncio.run(client.create("x"))
try:
    asyncio.run(client.view("x"))
except ba.ClientClosedError as exc:
    print("ClientClosedError:", exc)
try:
    asyncio.run(client.view("x"))
except ba.ClientClosedError as exc:
    print("again:", exc)
"""


def test_a_client_under_a_second_asyncio_run_raises_client_closed_error() -> None:
    """A client reused under a second asyncio.run() raises ClientClosedError saying why, and
    nothing reports an unclosed session or a closed loop."""
    result = subprocess.run(
        [sys.executable, "-c", SECOND_RUN], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ClientClosedError: this client was first used in another event")
    assert "asyncio.run()" in lines[0]
    assert lines[1].startswith("again: this client was first used in another event loop")
    assert "Unclosed" not in result.stderr and "Event loop is closed" not in result.stderr
    assert result.stderr == ""
