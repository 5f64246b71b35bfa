"""The rate budget's arithmetic, on an injected clock: pacing, readings of 429s, probes, release.

The last tests run whole uploads of one or more independent clients against a simulated
token-bucket server (``ratesim``) on an event loop whose clock jumps from timer to timer:
deterministic for a seed, and seconds of traffic in milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import statistics
from collections.abc import Coroutine
from typing import Any

import pytest
from ratesim import Server, allowed_time, simulate

import batch_audience as ba
from batch_audience import _ratebudget as rb
from batch_audience._ratebudget import RateBudget, check_max_ids_per_second


class Clock:
    """A manual clock whose sleep moves it forward by exactly the time asked for."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def budget(clock: Clock, **kwargs: Any) -> RateBudget:
    """A budget on the manual clock, its random draws at the middle (no jitter)."""
    return RateBudget(clock=clock, sleep=clock.sleep, rand=lambda: 0.5, **kwargs)


def run_now(coro: Coroutine[Any, Any, float]) -> float:
    """Run a coroutine that must finish without suspending once; return its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return float(done.value)
    coro.close()
    raise AssertionError("the coroutine suspended")


async def write(rates: RateBudget, clock: Clock, cost: int, *, after: float = 0.0) -> float:
    """One write accepted ``after`` seconds after it went out; when it went out."""
    sent = await rates.acquire(cost)
    clock.now += after
    rates.succeeded(cost, sent)
    return sent


async def paced(clock: Clock, cost: int = 10_000, **kwargs: Any) -> RateBudget:
    """A budget paced at its first estimate: one write accepted, then two 429s with
    Retry-After: 1 (the first starts a climb, the second ends it where it began)."""
    rates = budget(clock, **kwargs)
    await write(rates, clock, cost, after=0.01)
    rates.throttled(cost, 1.0, await rates.acquire(cost))
    clock.now += 1.0
    rates.throttled(cost, 1.0, await rates.acquire(cost))
    assert rates._mode == rb._PACED
    return rates


# -- pacing ---------------------------------------------------------------------------------


def test_an_unthrottled_budget_never_suspends() -> None:
    """Before any 429 and without a cap, acquire returns at once without awaiting anything."""
    clock = Clock()
    rates = budget(clock)
    for cost in (10_000, 10_000, 1, 10_000):
        assert run_now(rates.acquire(cost)) == clock.now
    assert rates.rate is None
    assert clock.sleeps == []


async def test_a_cap_paces_writes_at_its_rate() -> None:
    """max_ids_per_second=1000: writes of 500 IDs go every half second, the first at once."""
    clock = Clock()
    rates = budget(clock, max_ids_per_second=1000)
    for _ in range(4):
        await rates.acquire(500)
    assert clock.sleeps == pytest.approx([0.5, 0.5, 0.5])
    assert rates.rate == 1000


async def test_a_write_larger_than_a_second_borrows() -> None:
    """A 10,000-ID write goes at once under a 1,000 IDs/s cap; the next waits out its debt."""
    clock = Clock()
    rates = budget(clock, max_ids_per_second=1000)
    await rates.acquire(10_000)
    assert clock.sleeps == []
    await rates.acquire(1)
    assert clock.sleeps == pytest.approx([10.0])


async def test_idle_time_buys_no_burst() -> None:
    """After a long idle spell only one write goes at once: no credit is kept."""
    clock = Clock()
    rates = budget(clock, max_ids_per_second=1000)
    await rates.acquire(1000)
    clock.now += 60
    await rates.acquire(1000)
    await rates.acquire(1000)
    assert clock.sleeps == pytest.approx([1.0])


async def test_waiters_go_in_arrival_order() -> None:
    """Writers waiting for tokens are served first come, first served."""
    clock = Clock()
    rates = budget(clock, max_ids_per_second=100)
    order: list[int] = []

    async def one(n: int) -> None:
        await rates.acquire(100)
        order.append(n)

    await asyncio.gather(*(one(n) for n in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert clock.sleeps == pytest.approx([1.0] * 4)


async def test_a_cancelled_waiter_takes_nothing() -> None:
    """Cancelling a write that waits for tokens leaves the bucket as it was, and no task."""
    clock = Clock()
    gate = asyncio.Event()

    async def held(seconds: float) -> None:
        clock.sleeps.append(seconds)
        await gate.wait()

    rates = RateBudget(clock=clock, sleep=held, max_ids_per_second=100)
    await rates.acquire(100)
    before = asyncio.all_tasks()
    waiter = asyncio.create_task(rates.acquire(5_000))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert asyncio.all_tasks() == before
    gate.set()
    clock.now += 1.0
    assert run_now(rates.acquire(100)) == clock.now


async def test_a_waiter_wakes_when_the_rate_goes_up() -> None:
    """A write waiting for its turn looks again as soon as a climb raises the rate."""
    clock = Clock()
    rates = budget(clock)
    for _ in range(8):  # 80,000 IDs in 0.08 s: the server took far more than one second's worth
        await write(rates, clock, 10_000, after=0.01)
    rates.throttled(10_000, None, await rates.acquire(10_000))  # noise? the climb begins
    level = rates.rate
    assert level is not None
    first = await rates.acquire(10_000)  # the refused write again, at once
    asked: list[float] = []
    gate = asyncio.Event()

    async def hold(seconds: float) -> None:
        asked.append(seconds)
        await gate.wait()  # only a wake-up ends it early

    rates._sleep = hold
    waiter = asyncio.create_task(rates.acquire(10_000))
    for _ in range(5):
        await asyncio.sleep(0)
    assert asked == [pytest.approx(10_000 / level)]
    rates.succeeded(10_000, first)  # accepted: the climb raises the rate
    raised = rates.rate
    assert raised is not None and raised == pytest.approx(level * rb.CLIMB)
    for _ in range(50):
        await asyncio.sleep(0)
    assert asked[1:] == [pytest.approx(10_000 / raised)]
    gate.set()
    clock.now += 1.0
    await asyncio.wait_for(waiter, 1.0)


# -- readings of a 429 ----------------------------------------------------------------------


async def test_first_429_with_retry_after_paces_near_the_estimate() -> None:
    """One write taken, the next refused with Retry-After: 1: pace near 20,000 IDs per 1 s."""
    clock = Clock()
    rates = budget(clock)
    await write(rates, clock, 10_000, after=0.04)
    sent = await rates.acquire(10_000)
    rates.throttled(10_000, 1.0, sent)
    # 10,000 IDs taken and 10,000 refused; the span runs from the first write to the end of
    # the pause (the refused write went out 0.04 s after the first).
    assert rates.rate == pytest.approx(rb.NEAR * 20_000 / 1.04)
    assert rates.throttled_writes == 1


async def test_a_short_span_is_read_as_at_least_one_second() -> None:
    """Without Retry-After a 429 right after a burst is not read as a huge rate (BURST_SPAN)."""
    clock = Clock()
    rates = budget(clock)
    await write(rates, clock, 10_000, after=0.01)
    rates.throttled(10_000, None, await rates.acquire(10_000))
    rate = rates.rate
    # The server took 10,000 IDs in 0.01 s: 1,000,000 IDs/s seen, so the refused write may be
    # noise and goes again at once (a climb), starting from 20,000 IDs per second.
    assert rate == pytest.approx(rb.NEAR * 20_000)
    assert run_now(rates.acquire(10_000)) == clock.now


async def test_a_stray_429_is_forgotten_once_writes_go_through_again() -> None:
    """No further 429: each accepted write multiplies the rate by CLIMB, then it is let go."""
    clock = Clock()
    rates = budget(clock)
    for _ in range(4):
        await write(rates, clock, 10_000, after=0.01)
    rates.throttled(10_000, None, await rates.acquire(10_000))
    seen = [rates.rate]
    while rates.rate is not None and len(seen) < 20:
        await write(rates, clock, 10_000, after=0.01)
        seen.append(rates.rate)
    assert rates.rate is None, seen
    rates_seen = [rate for rate in seen if rate is not None]
    steps = [b / a for a, b in itertools.pairwise(rates_seen)]
    # Each accepted write multiplied the rate by CLIMB, the last step up to the target.
    assert steps and all(step == pytest.approx(rb.CLIMB) for step in steps[:-1])


async def test_a_third_429_ends_the_climb_at_the_highest_rate_that_held() -> None:
    """Two 429s on the way back are forgiven (each steps the climb back below the rate
    refused); a third is a limit: paced at the highest climb rate below the one refused."""
    clock = Clock()
    rates = budget(clock)
    for _ in range(4):
        await write(rates, clock, 10_000, after=0.01)
    rates.throttled(10_000, None, await rates.acquire(10_000))
    start = rates.rate
    assert start is not None
    await write(rates, clock, 10_000, after=0.01)  # accepted: the climb goes up
    high = rates.rate
    assert high == pytest.approx(start * rb.CLIMB)
    await write(rates, clock, 10_000, after=0.01)  # accepted at the higher rate
    for _ in range(rb.SKIPS):
        rates.throttled(10_000, None, await rates.acquire(10_000))
        assert rates._mode == rb._CLIMB
    refused = await rates.acquire(10_000)
    at = rates.rate
    rates.throttled(10_000, None, refused)
    assert rates._mode == rb._PACED
    assert rates.rate is not None and at is not None
    assert start <= rates.rate <= at <= high


async def test_one_reading_per_congestion_event() -> None:
    """429s of writes sent before the last reading change nothing; a later one is read."""
    clock = Clock()
    rates = await paced(clock)
    level = rates.rate
    clock.now += 5.0
    stamps = [await rates.acquire(100) for _ in range(3)]
    clock.now += 0.5
    for sent in stamps:
        rates.throttled(100, None, sent)
    assert rates.throttled_writes == 5  # two while getting paced, three now
    assert rates.rate == level  # the first reading (contention) kept the level; the rest: none
    assert rates._last_cut == clock.now


async def test_a_429_at_the_level_while_writes_get_through_keeps_the_level() -> None:
    """Another client takes a share: a client that still gets most writes through keeps pace."""
    clock = Clock()
    rates = await paced(clock)
    level = rates.rate
    assert level is not None
    for _ in range(rb.OUTCOMES):
        clock.now += 0.6
        await write(rates, clock, 10_000)
    rates.throttled(10_000, None, await rates.acquire(10_000))
    assert rates.rate == level


async def test_sharing_a_limit_a_client_tries_as_often_as_a_newcomer() -> None:
    """Losing a good part of its writes to another client, the rate rises to the newcomer's."""
    clock = Clock()
    rates = await paced(clock, cost=1_000)
    for k in range(20):
        clock.now += 0.6
        sent = await rates.acquire(1_000)
        if k % 2:
            rates.succeeded(1_000, sent)
        else:
            rates.throttled(1_000, None, sent)
    assert rates.rate is not None and rates.rate >= 1_000 / rb.NEWCOMER


async def test_a_newcomer_keeps_trying() -> None:
    """A client none of whose writes got through tries one write per NEWCOMER seconds, always."""
    clock = Clock()
    rates = budget(clock)
    for _ in range(50):
        rates.throttled(10_000, None, await rates.acquire(10_000))
    assert rates.rate == pytest.approx(10_000 / rb.NEWCOMER)


async def test_refused_far_more_than_taken_falls_to_what_the_server_took() -> None:
    """Refused again and again at the level, the rate falls to what the server accepted."""
    clock = Clock()
    rates = await paced(clock)  # about 19,000 IDs/s after one 10,000-ID write
    start = rates.rate
    assert start is not None
    for _ in range(40):  # small writes, all refused: the newcomer's floor is 40 IDs/s
        clock.now += 0.25
        rates.throttled(10, None, await rates.acquire(10))
    rate = rates.rate
    # What the server took over the last WINDOW seconds: the one write, long gone.
    assert rate is not None and rate <= 10 / rb.NEWCOMER + 1e-9
    assert rate < start / 100


async def test_a_probe_steps_up_after_the_hold_and_grows_while_it_holds() -> None:
    """After HOLD seconds the rate tries STEP more; CONFIRM writes there make it the level."""
    clock = Clock()
    rates = await paced(clock, hold=2.0)
    level = rates.rate
    assert level is not None
    clock.now += 2.0 * (1 + rb.HOLD_JITTER) + 0.1
    assert rates.rate == pytest.approx(level * (1 + rb.STEP))
    for _ in range(rb.CONFIRM):
        await write(rates, clock, 10_000)
    assert rates._level == pytest.approx(level * (1 + rb.STEP))
    # The next probe follows at once, twice the step.
    assert rates.rate == pytest.approx(level * (1 + rb.STEP) * (1 + 2 * rb.STEP))


async def test_a_failed_probe_goes_back_and_waits_twice_as_long() -> None:
    """A probe answered 429: back to the level that held; the next probe waits 2x the hold."""
    clock = Clock()
    rates = await paced(clock, hold=2.0)
    level = rates.rate
    clock.now += 3.1
    probe = await rates.acquire(10_000)
    assert rates.rate is not None and level is not None and rates.rate > level
    rates.throttled(10_000, None, probe)
    assert rates.rate == pytest.approx(level)
    assert rates._hold_until - clock.now == pytest.approx(4.0)


async def test_far_below_the_best_rate_taken_the_probe_jumps_back() -> None:
    """A limit that dropped for a while: the probe goes straight back to near the best rate."""
    clock = Clock()
    rates = await paced(clock, jump_hold=1.0)
    level = rates.rate
    assert level is not None
    for _ in range(20):  # 10 s at the level: the best rate the server took is remembered
        clock.now += 10_000 / level
        await write(rates, clock, 10_000)
    for _ in range(20):  # then small writes refused over and over: the level falls
        clock.now += 0.25
        rates.throttled(10, None, await rates.acquire(10))
    assert rates._level < level / 2
    best = rates._best()
    clock.now += 1.6
    assert rates.rate == pytest.approx(rb.NEAR * best)
    assert rates.rate is not None and rates.rate > level / 2


async def test_far_above_the_rate_last_refused_the_budget_lets_go() -> None:
    """Probes that keep holding raise the level; RELEASE times the refused rate: unpaced."""
    clock = Clock()
    rates = await paced(clock, hold=0.5)
    for _ in range(200):
        clock.now += 0.01
        rate = rates.rate
        if rate is None:
            break
        await write(rates, clock, 100)
    assert rates.rate is None
    assert rates.peak_rate is not None


async def test_a_refused_retry_after_teaches_nothing() -> None:
    """learn=False (the call will not wait that long): counted, nothing paced, no wait owed."""
    clock = Clock()
    rates = budget(clock)
    await write(rates, clock, 10_000)
    rates.throttled(10_000, None, await rates.acquire(10_000), learn=False)
    assert rates.throttled_writes == 1
    assert rates.rate is None
    assert run_now(rates.acquire(10_000)) == clock.now


async def test_the_cap_bounds_the_learned_rate() -> None:
    """max_ids_per_second caps the rate after readings and probes alike."""
    clock = Clock()
    rates = budget(clock, max_ids_per_second=500, hold=0.5)
    rates.throttled(100, None, await rates.acquire(100))
    for _ in range(100):
        clock.now += 0.2
        await write(rates, clock, 100)
        rate = rates.rate
        assert rate is not None and rate <= 500


async def test_owed_ids_vary_with_the_random_draw() -> None:
    """The refused write's owed IDs vary by JITTER either way, so clients do not return together."""
    waits = []
    for draw in (0.0, 1.0):
        clock = Clock()
        rates = RateBudget(clock=clock, sleep=clock.sleep, rand=lambda d=draw: d)
        await write(rates, clock, 10_000, after=2.0)
        rates.throttled(10_000, 1.0, await rates.acquire(10_000))  # Retry-After: no climb
        await rates.acquire(1)
        waits.append(clock.sleeps[-1] * rates.rate)  # type: ignore[operator]
    assert waits == pytest.approx([10_000 * (1 - rb.JITTER), 10_000 * (1 + rb.JITTER)])


async def test_making_progress_spares_attempts_for_a_minute_of_429s() -> None:
    """429s use up no attempts while writes got through recently, or for their first minute."""
    clock = Clock()
    rates = budget(clock)
    began = clock.now
    assert rates.making_progress(began)
    rates.throttled(100, None, await rates.acquire(100))
    clock.now += rb.PROGRESS_WINDOW - 1
    assert rates.making_progress(began)  # refused for under a minute: a shared limit, maybe
    clock.now += 2
    assert not rates.making_progress(began)
    await write(rates, clock, 100)
    assert rates.making_progress(began)  # a write got through during the call


async def test_large_steps_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """One INFO line when the rate changes by 2x or more, none for small moves."""
    clock = Clock()
    caplog.set_level(logging.INFO, logger="batch_audience")
    rates = await paced(clock)
    lines = [r for r in caplog.records if getattr(r, "event", None) == "batch_audience.rate_budget"]
    assert len(lines) == 1
    assert "unpaced ->" in lines[0].getMessage()
    await write(rates, clock, 10)
    lines = [r for r in caplog.records if getattr(r, "event", None) == "batch_audience.rate_budget"]
    assert len(lines) == 1


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(0, id="zero"),
        pytest.param(0.5, id="below-one"),
        pytest.param(-1, id="negative"),
        pytest.param(math.inf, id="infinite"),
        pytest.param(math.nan, id="nan"),
        pytest.param(True, id="bool"),
        pytest.param("100", id="str"),
    ],
)
def test_meaningless_caps_are_refused(value: object) -> None:
    """max_ids_per_second is None or a finite number >= 1."""
    with pytest.raises(ba.ValidationError, match="max_ids_per_second"):
        check_max_ids_per_second(value)  # type: ignore[arg-type]


def test_caps_are_kept_as_floats() -> None:
    """Valid caps come back as floats, None as None."""
    assert check_max_ids_per_second(None) is None
    assert check_max_ids_per_second(2000) == 2000.0


# -- whole uploads against a simulated server (virtual time) ---------------------------------

SEEDS = range(10)
UNMETERED = 1_000_000  # IDs


def unmetered_time() -> float:
    """The time 1,000,000 IDs take against the simulated server with no limit at all."""
    return simulate(Server(rate=None), [[UNMETERED]]).elapsed


@pytest.mark.parametrize(
    ("rate", "burst", "retry_after", "ids", "uploads", "median", "bound", "share"),
    [
        # The figures: 2,000 IDs/s <= 1.2x; 20,000 IDs/s <= 1.15x (the median over
        # the seeds; single runs within 1.2x). Without Retry-After at 2,000 IDs/s most writes
        # are refused (cheap: a round trip each, while each write must wait 5 s anyway).
        pytest.param(2_000, 10_000, False, 40_000, 1, 1.2, 1.2, 0.95, id="2k-no-retry-after"),
        pytest.param(20_000, 10_000, True, 200_000, 1, 1.15, 1.2, 0.25, id="20k-retry-after"),
        pytest.param(20_000, 10_000, False, 200_000, 1, 1.15, 1.2, 0.3, id="20k-no-retry-after"),
        pytest.param(20_000, 20_000, True, 200_000, 1, 1.15, 1.2, 0.6, id="20k-burst-20k"),
        pytest.param(20_000, 10_000, True, 100_000, 2, 1.15, 1.2, 0.35, id="20k-two-uploads"),
    ],
)
def test_uploads_finish_near_the_servers_rate(
    rate: float,
    burst: int,
    retry_after: bool,
    ids: int,
    uploads: int,
    median: float,
    bound: float,
    share: float,
) -> None:
    """Against a token-bucket server one client's uploads end near the allowed time."""
    ratios = []
    for seed in SEEDS:
        server = Server(rate=rate, burst=burst, retry_after=retry_after, seed=seed)
        out = simulate(server, [[ids] * uploads])
        allowed = allowed_time(server, ids * uploads)
        ratios.append(out.elapsed / allowed)
        assert out.elapsed <= bound * allowed, (seed, out.elapsed, allowed)
        assert out.failed == [None]
        assert out.accepted == ids * uploads
        assert out.throttled <= share * out.writes, (seed, out.throttled, out.writes)
    assert statistics.median(ratios) <= median, ratios


def test_one_stray_429_costs_little() -> None:
    """No limit, one 429 at the 5th write of 1,000,000 IDs: <= 1.5x the time without it."""
    clean = unmetered_time()
    out = simulate(Server(rate=None, nth_429=5), [[UNMETERED]])
    assert out.throttled == 1
    assert out.elapsed <= 1.5 * clean, (out.elapsed, clean)


def test_random_429s_on_an_unmetered_server_do_not_wear_the_rate_down() -> None:
    """No limit, 3% of writes answered 429 at random: <= 2x the time without them."""
    clean = unmetered_time()
    for seed in SEEDS:
        out = simulate(Server(rate=None, random_429=0.03, seed=seed), [[UNMETERED]])
        assert out.elapsed <= 2 * clean, (seed, out.elapsed, clean)


def test_two_clients_share_one_limit() -> None:
    """Two independent clients, 20,000 IDs/s burst 10,000: the limit used well, none starved.

    Each run: all IDs within 1.3x the allowed time, and the slower client done within 2.5x
    the faster's; over the runs, the median spread within 1.5x (the issue's goal).
    """
    spreads = []
    for retry_after in (True, False):
        for seed in SEEDS:
            server = Server(rate=20_000, burst=10_000, retry_after=retry_after, seed=seed)
            out = simulate(server, [[200_000], [200_000]], starts=[0.0, 0.05])
            allowed = allowed_time(server, 400_000)
            assert out.failed == [None, None]
            assert out.elapsed <= 1.3 * allowed, (retry_after, seed, out.elapsed, allowed)
            spread = max(out.finished) / min(out.finished)
            assert spread <= 2.5, (retry_after, seed, out.finished)
            spreads.append(spread)
    assert statistics.median(spreads) <= 1.5, spreads


def test_a_client_joining_a_held_limit_gets_its_share_and_does_not_fail() -> None:
    """A second client starts 5 s into another's upload: its 429s cost it no attempts, and
    both are done within 1.5x the time the limit allows for all IDs."""
    for retry_after in (True, False):
        for seed in SEEDS:
            server = Server(rate=20_000, burst=10_000, retry_after=retry_after, seed=seed)
            out = simulate(server, [[400_000], [100_000]], starts=[0.0, 5.0])
            assert out.failed == [None, None]
            assert out.elapsed <= 1.5 * allowed_time(server, 500_000), (seed, out.finished)


def test_a_limit_that_drops_ten_fold_for_ten_seconds_is_tracked() -> None:
    """20,000 IDs/s, 2,000 from the 5th to the 15th second, then 20,000: <= 1.3x allowed."""
    for retry_after in (True, False):
        for seed in SEEDS:
            server = Server(
                rate=20_000,
                burst=10_000,
                retry_after=retry_after,
                schedule=((5.0, 2_000), (15.0, 20_000)),
                seed=seed,
            )
            out = simulate(server, [[330_000]])
            allowed = allowed_time(server, 330_000)
            assert out.elapsed <= 1.3 * allowed, (retry_after, seed, out.elapsed, allowed)


def test_an_unmetered_server_is_not_paced() -> None:
    """With no limit at all, nothing waits: the upload takes its round trips and no more."""
    out = simulate(Server(rate=None), [[200_000]])
    assert (out.writes, out.throttled) == (20, 0)


def test_the_simulated_server_meters_like_the_fake() -> None:
    """The simulation's bucket refuses what the fake's would: a sanity check of the model."""
    server = Server(rate=1_000, burst=1_000, retry_after=True)
    assert server.decide(1_000, 0.0) == (True, None)
    assert server.decide(1_000, 0.5) == (False, 1.0)  # half refilled: ceil(0.5 s) to wait
    assert server.decide(1_000, 1.0) == (True, None)
    dropping = Server(rate=1_000, burst=1_000, schedule=((0.5, 100),))
    assert dropping.decide(1_000, 0.0)[0]
    assert not dropping.decide(1_000, 1.0)[0]  # 500 + 50 IDs refilled by then: short
    assert dropping.decide(1_000, 5.5)[0]  # 550 + 450: full again
