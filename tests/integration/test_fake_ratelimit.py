"""The fake's token bucket counted in IDs per second, with burst and optional Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from batch_audience.testing import FakeBatchServer, RateLimit
from tests.integration.test_fake_server import Api, add


@pytest.fixture
async def server() -> AsyncIterator[FakeBatchServer]:
    """A started fake server (own thread, the default)."""
    async with FakeBatchServer() as fake:
        yield fake


@pytest.fixture
async def api(server: FakeBatchServer) -> AsyncIterator[Api]:
    """Raw access to the started fake server."""
    async with aiohttp.ClientSession() as http:
        yield Api(server, http)


def ids(prefix: str, count: int) -> list[dict[str, Any]]:
    """``count`` add entries with IDs ``prefix0``, ``prefix1``, ..."""
    return [add(f"{prefix}{n}") for n in range(count)]


async def test_a_write_costs_one_token_per_id(api: Api, server: FakeBatchServer) -> None:
    """per="id": a write takes one token per ID: 3 + 2 IDs fit a burst of 5, one more does not."""
    await api.create("a")
    # A slow refill: nothing comes back during the test.
    server.rate_limit = RateLimit(rate=0.001, burst=5, per="id")
    assert (await api.update("a", ids("x", 3))).status == 202
    assert (await api.update("a", ids("y", 2))).status == 202
    refused = await api.update("a", ids("z", 1))
    assert (refused.status, refused.code) == (429, "TOO_MANY_REQUESTS")
    assert "IDs/s" in refused.message
    assert set(server.members("a")) == {"x0", "x1", "x2", "y0", "y1"}


async def test_reads_cost_one_token(api: Api, server: FakeBatchServer) -> None:
    """per="id": a read takes one token, whatever it returns."""
    server.rate_limit = RateLimit(rate=0.001, burst=2, per="id")
    assert (await api.v2("list")).status == 200
    assert (await api.v2("list")).status == 200
    assert (await api.v2("list")).status == 429


async def test_a_write_larger_than_the_burst_borrows(api: Api, server: FakeBatchServer) -> None:
    """A write dearer than the whole bucket goes when it is full and leaves it in debt."""
    await api.create("a")
    server.rate_limit = RateLimit(rate=1000, burst=10, per="id")
    assert (await api.update("a", ids("x", 200))).status == 202
    # 190 IDs of debt: about 0.19 s before even one token is back, so a read now is refused
    # and told to come back in (at least) a whole second.
    refused = await api.v2("list")
    assert (refused.status, refused.headers["Retry-After"]) == (429, "1")
    assert len(server.members("a")) == 200


async def test_retry_after_in_whole_seconds_for_the_tokens_missing(
    api: Api, server: FakeBatchServer
) -> None:
    """Retry-After says how many whole seconds until the write's tokens are back."""
    await api.create("a")
    server.rate_limit = RateLimit(rate=2, burst=6, per="id")
    assert (await api.update("a", ids("x", 6))).status == 202
    refused = await api.update("a", ids("y", 5))
    # 5 tokens missing at 2 per second: 2.5 s, rounded up.
    assert (refused.status, refused.headers["Retry-After"]) == (429, "3")
    assert server.requests[-1].retry_after == "3"


async def test_retry_after_can_be_left_out(api: Api, server: FakeBatchServer) -> None:
    """retry_after=False answers 429 without Retry-After, as Batch may."""
    await api.create("a")
    server.rate_limit = RateLimit(rate=0.001, burst=1, per="id", retry_after=False)
    assert (await api.update("a", ids("x", 1))).status == 202
    refused = await api.update("a", ids("y", 1))
    assert refused.status == 429
    assert "Retry-After" not in refused.headers
    assert server.requests[-1].retry_after is None
    assert set(server.members("a")) == {"x0"}


async def test_ids_come_back_at_the_rate(api: Api, server: FakeBatchServer) -> None:
    """Tokens refill at ``rate`` IDs per second, up to the burst."""
    await api.create("a")
    server.rate_limit = RateLimit(rate=2000, burst=100, per="id")
    assert (await api.update("a", ids("x", 100))).status == 202
    assert (await api.update("a", ids("y", 100))).status == 429
    # 100 IDs at 2,000 IDs/s: 50 ms; generous, for a loaded machine.
    await asyncio.sleep(0.2)
    assert (await api.update("a", ids("y", 100))).status == 202
    assert len(server.members("a")) == 200


async def test_per_request_counting_is_unchanged(api: Api, server: FakeBatchServer) -> None:
    """per="request" (the default) charges a 1,000-ID write one token."""
    await api.create("a")
    server.rate_limit = RateLimit(rate=0.001, burst=2)
    assert (await api.update("a", ids("x", 1000))).status == 202
    assert (await api.update("a", ids("y", 1000))).status == 202
    assert (await api.update("a", ids("z", 1))).status == 429


async def test_1x_writes_are_counted_in_ids(api: Api, server: FakeBatchServer) -> None:
    """The 1.x custom-audience routes meter IDs too, in the app's own bucket."""
    server.rate_limit = RateLimit(rate=0.001, burst=4, per="id")
    # The create carries no IDs and costs one token; the 3-ID update takes the other three.
    assert (await api.v1("POST", "1.1", "vip", {})).status == 200
    entries = [{"id": uid, "action": "add"} for uid in ("a", "b", "c")]
    assert (await api.v1("PATCH", "1.1", "vip", {"ids": entries})).status == 201
    refused = await api.v1("PATCH", "1.1", "vip", {"ids": [{"id": "d", "action": "add"}]})
    assert refused.status == 429
    assert set(server.members("vip", api_key=server.api_key)) == {"a", "b", "c"}
    # The 2.x project has a bucket of its own.
    assert (await api.v2("list")).status == 200


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        pytest.param({"rate": 1, "per": "ids"}, "per", id="unknown-unit"),
        pytest.param({"rate": 1, "retry_after": "yes"}, "retry_after", id="retry-after-not-bool"),
    ],
)
def test_meaningless_settings_are_refused(fields: dict[str, Any], match: str) -> None:
    """``per`` is "request" or "id" and ``retry_after`` a bool."""
    with pytest.raises((ValueError, TypeError), match=match):
        RateLimit(**fields)


# -- a limit that changes over time, a fault at the Nth request, random 429s without a wait ---


async def test_the_rate_follows_the_schedule(api: Api, server: FakeBatchServer) -> None:
    """schedule: no refill at first, then 100,000 IDs/s from 0.3 s after the first request."""
    await api.create("a")
    server.rate_limit = RateLimit(rate=0.001, burst=100, per="id", schedule=((0.3, 100_000),))
    assert (await api.update("a", ids("x", 100))).status == 202
    refused = await api.update("a", ids("y", 100))
    # Retry-After at the rate in force: 100 IDs at 0.001/s.
    assert (refused.status, refused.headers["Retry-After"]) == (429, "100000")
    await asyncio.sleep(0.5)
    assert (await api.update("a", ids("y", 100))).status == 202
    assert len(server.members("a")) == 200


async def test_setting_the_limit_restarts_its_schedule(api: Api, server: FakeBatchServer) -> None:
    """The schedule counts from the first request after the limit was set, not from before."""
    await api.create("a")
    server.rate_limit = RateLimit(rate=100_000, burst=100, per="id", schedule=((0.2, 0.001),))
    assert (await api.update("a", ids("x", 100))).status == 202
    await asyncio.sleep(0.3)  # past the step: the rate is near zero now
    assert (await api.update("a", ids("y", 100))).status == 202  # refilled before the step
    assert (await api.update("a", ids("z", 100))).status == 429
    server.rate_limit = RateLimit(rate=100_000, burst=100, per="id", schedule=((0.2, 0.001),))
    assert (await api.update("a", ids("z", 100))).status == 202  # a fresh bucket and clock
    await asyncio.sleep(0.05)
    assert (await api.update("a", ids("w", 100))).status == 202  # still before its step


def test_refill_integrates_the_schedule() -> None:
    """refill() sums each step's rate over the part of the span it covers."""
    limit = RateLimit(rate=10, schedule=((1.0, 100), (3.0, 1)))
    assert (limit.rate_at(0.0), limit.rate_at(1.0), limit.rate_at(2.9), limit.rate_at(9.0)) == (
        10,
        100,
        100,
        1,
    )
    assert limit.refill(0.5, 4.0) == pytest.approx(0.5 * 10 + 2 * 100 + 1 * 1)
    assert limit.refill(1.5, 2.5) == pytest.approx(100)
    assert RateLimit(rate=5).refill(1.0, 3.0) == pytest.approx(10)


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param(((2.0, 10), (1.0, 10)), id="decreasing"),
        pytest.param(((1.0, 10), (1.0, 20)), id="repeated"),
        pytest.param(((-1.0, 10),), id="negative-time"),
        pytest.param(((1.0, 0),), id="zero-rate"),
        pytest.param(((float("inf"), 10),), id="infinite-time"),
    ],
)
def test_a_bad_schedule_is_refused(schedule: Any) -> None:
    """Schedule times are finite, >= 0 and increasing; rates are finite and > 0."""
    with pytest.raises(ValueError, match=r"schedule times|rate must be"):
        RateLimit(rate=10, schedule=schedule)


async def test_fail_next_after_lets_requests_through_first(
    api: Api, server: FakeBatchServer
) -> None:
    """after=2: two matching requests go through, the third gets the fault; others do not count."""
    await api.create("a")
    server.fail_next(status=503, path="/audiences/update", after=2)
    assert (await api.update("a", ids("a", 1))).status == 202
    assert (await api.v2("list")).status == 200  # not matching: not counted
    assert (await api.update("a", ids("b", 1))).status == 202
    assert server.pending_faults == 1
    assert (await api.update("a", ids("c", 1))).status == 503
    assert (await api.update("a", ids("c", 1))).status == 202
    assert server.pending_faults == 0


async def test_faults_behind_a_delayed_one_wait_their_turn(
    api: Api, server: FakeBatchServer
) -> None:
    """Queued faults stay in order: the one behind a fault with ``after`` comes after it."""
    await api.create("a")
    server.fail_next(status=503, path="/audiences/update", after=1)
    server.fail_next(status=500, path="/audiences/update", times=2)
    statuses = [(await api.update("a", ids(f"u{k}", 1))).status for k in range(5)]
    assert statuses == [202, 503, 500, 500, 202]


@pytest.mark.parametrize("after", [-1, 1.5, "2", True])
def test_fail_next_after_is_a_count(server: FakeBatchServer, after: Any) -> None:
    """after must be an int >= 0."""
    with pytest.raises(ValueError, match="after must be an int"):
        server.fail_next(status=429, after=after)


async def test_chaos_429s_without_retry_after(api: Api, server: FakeBatchServer) -> None:
    """chaos(retry_after=None): refused writes carry no Retry-After, as Batch may answer."""
    await api.create("a")
    server.chaos(1.0, seed=1, kinds=("429",), path="/audiences/update", retry_after=None)
    refused = await api.update("a", ids("a", 1))
    assert refused.status == 429 and "Retry-After" not in refused.headers
    assert server.requests[-1].retry_after is None and server.requests[-1].chaos == "429"
    assert (await api.v2("list")).status == 200  # not matching the path
    server.chaos(None)
    assert server.members("a") == {}
