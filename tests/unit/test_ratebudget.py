"""The rate budget's arithmetic, on an injected clock: pacing, cuts, growth, release, cap.

The last tests run whole uploads against a simulated token-bucket server on an event loop
whose clock jumps from timer to timer: deterministic, and seconds of traffic in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Coroutine
from typing import Any

import pytest

import batch_audience as ba
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
    """A budget on the manual clock."""
    return RateBudget(clock=clock, sleep=clock.sleep, **kwargs)


def run_now(coro: Coroutine[Any, Any, float]) -> float:
    """Run a coroutine that must finish without suspending once; return its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return float(done.value)
    coro.close()
    raise AssertionError("the coroutine suspended")


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

    async def write(n: int) -> None:
        await rates.acquire(100)
        order.append(n)

    await asyncio.gather(*(write(n) for n in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert clock.sleeps == pytest.approx([1.0] * 4)


async def test_a_cancelled_waiter_takes_nothing() -> None:
    """Cancelling a write that waits for tokens leaves the bucket as it was."""
    clock = Clock()
    gate = asyncio.Event()

    async def held(seconds: float) -> None:
        clock.sleeps.append(seconds)
        await gate.wait()

    rates = RateBudget(clock=clock, sleep=held, max_ids_per_second=100)
    await rates.acquire(100)
    waiter = asyncio.create_task(rates.acquire(5_000))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.set()
    clock.now += 1.0
    assert run_now(rates.acquire(100)) == clock.now


# -- learning -------------------------------------------------------------------------------


async def test_retry_after_pauses_every_write() -> None:
    """A 429 with Retry-After: 2 holds all writes of the budget for 2 s."""
    clock = Clock()
    rates = budget(clock)
    sent = await rates.acquire(100)
    rates.succeeded(100, sent)
    sent = await rates.acquire(100)
    rates.throttled(100, 2.0, sent)
    assert rates.paused_until == clock.now + 2.0
    await rates.acquire(1)
    assert clock.sleeps[0] == pytest.approx(2.0)
    assert rates.throttled_writes == 1


async def test_first_cut_after_retry_after_starts_at_the_guess() -> None:
    """First 429 with Retry-After: pace at what the server would have allowed with this write."""
    clock = Clock()
    rates = budget(clock, near=0.97)
    sent = await rates.acquire(10_000)
    clock.now += 0.04
    rates.succeeded(10_000, sent)
    second = await rates.acquire(10_000)
    rates.throttled(10_000, 1.0, second)
    # 10,000 IDs accepted and 10,000 refused over the 1.04 s from the first write to the end
    # of the pause: the server's bucket refilled during the pause.
    assert rates.rate == pytest.approx(0.97 * 20_000 / 1.04)


async def test_first_cut_without_retry_after_starts_at_what_was_accepted() -> None:
    """First 429 without Retry-After: pace at what the server accepted, then probe upward."""
    clock = Clock()
    rates = budget(clock)
    sent = await rates.acquire(10_000)
    clock.now += 2.0
    rates.succeeded(10_000, sent)
    rates.throttled(10_000, None, await rates.acquire(10_000))
    assert rates.rate == pytest.approx(10_000 / 2.0)


async def test_without_retry_after_the_refused_write_waits_for_its_ids() -> None:
    """No Retry-After: the refused write is retried once the new rate has paid for it."""
    clock = Clock()
    rates = budget(clock)
    sent = await rates.acquire(2_000)
    clock.now += 1.0
    rates.succeeded(2_000, sent)
    again = await rates.acquire(2_000)
    rates.throttled(2_000, None, again)
    rate = rates.rate
    assert rate == pytest.approx(2_000)
    await rates.acquire(2_000)
    # The refused write's 2,000 IDs at 2,000 IDs/s (sent unpaced, it took nothing then).
    assert clock.sleeps == pytest.approx([1.0])


async def test_one_cut_per_congestion_event() -> None:
    """429s of writes sent before the last cut do not cut again; a later one does."""
    clock = Clock()
    rates = budget(clock, max_ids_per_second=10_000)
    stamps = [await rates.acquire(100) for _ in range(3)]
    clock.now += 1.0
    rates.throttled(100, None, stamps[0])
    after_first = rates.rate
    assert after_first is not None and after_first < 10_000
    rates.throttled(100, None, stamps[1])
    rates.throttled(100, None, stamps[2])
    assert rates.rate == after_first
    assert rates.throttled_writes == 3
    later = await rates.acquire(100)
    rates.throttled(100, None, later)
    second = rates.rate
    assert second is not None and second < after_first


async def test_a_cut_keeps_most_of_the_refused_rate() -> None:
    """A paced budget cut by a 429 paces at ``decrease`` times its rate, aiming just below it."""
    clock = Clock()
    rates = budget(clock, max_ids_per_second=10_000, decrease=0.85, near=0.95, recover=1.0)
    sent = await rates.acquire(100)
    rates.throttled(100, None, sent)
    assert rates.rate == pytest.approx(8_500)
    # Back at the aim after one second of accepted writes.
    for _ in range(10):
        clock.now += 0.1
        rates.succeeded(900, clock.now)
    assert rates.rate == pytest.approx(9_500)


async def test_growth_probes_upward_then_lets_go() -> None:
    """While writes succeed the rate grows past the aim, and is let go of far above the peak."""
    clock = Clock()
    rates = budget(clock)
    sent = await rates.acquire(1_000)
    clock.now += 1.0
    rates.succeeded(1_000, sent)
    rates.throttled(1_000, None, await rates.acquire(1_000))
    cut = rates.rate
    assert cut is not None
    seen = [cut]
    for _ in range(200):
        clock.now += 0.5
        rates.succeeded(10, clock.now)
        rate = rates.rate
        if rate is None:
            break
        seen.append(rate)
    assert rates.rate is None, "the budget never let go of a rate far above what was accepted"
    assert seen == sorted(seen)
    assert rates.peak_rate is not None and rates.peak_rate > 3 * cut


async def test_growth_holds_at_the_aim_before_probing() -> None:
    """After a cut the rate stays at the aim for ``hold`` seconds of accepted writes.

    A probe past the limit costs a 429 and a pause of a second or more: probing every few
    seconds would lose more than the margin kept under the refused rate.
    """
    clock = Clock()
    rates = budget(clock, recover=0.5, hold=10.0)
    sent = await rates.acquire(10_000)
    clock.now += 1.0
    rates.succeeded(10_000, sent)
    rates.throttled(10_000, 1.0, await rates.acquire(10_000))
    aim = rates.rate
    assert aim is not None
    for _ in range(20):  # 10 s of writes accepted every half second
        clock.now += 0.5
        rates.succeeded(10_000, clock.now)
        assert rates.rate == pytest.approx(aim)
    for _ in range(4):
        clock.now += 0.5
        rates.succeeded(10_000, clock.now)
    assert rates.rate is not None and rates.rate > aim


async def test_one_slow_write_is_not_long_evidence() -> None:
    """A single write accepted after a long wait moves the growth curve by at most a second."""
    clock = Clock()
    rates = budget(clock, recover=1.0, cubic=0.005, hold=0.0)
    sent = await rates.acquire(10_000)
    clock.now += 1.0
    rates.succeeded(10_000, sent)
    rates.throttled(10_000, None, await rates.acquire(10_000))
    clock.now += 30.0
    rates.succeeded(10_000, clock.now)
    aim = rates.rate
    clock.now += 30.0
    rates.succeeded(10_000, clock.now)
    # One more second of the curve: just past the aim, not 30 s of cubic growth.
    assert aim is not None and rates.rate == pytest.approx(aim * 1.005, rel=1e-6)


async def test_random_429s_do_not_wear_the_rate_down() -> None:
    """Cut after cut, the rate stays at least half of what the server sustained for seconds."""
    clock = Clock()
    rates = budget(clock, max_ids_per_second=20_000)
    rates.throttled(1_000, None, await rates.acquire(1_000))
    for _ in range(50):  # 5 s of 1,000-ID writes every 0.1 s: 10,000 IDs/s sustained
        clock.now += 0.1
        rates.succeeded(1_000, clock.now)
    for _ in range(30):
        clock.now += 0.1
        rates.throttled(1_000, None, clock.now)
        rate = rates.rate
        assert rate is not None and rate >= 5_000


async def test_the_cap_bounds_the_learned_rate() -> None:
    """max_ids_per_second caps the rate after cuts and growth alike."""
    clock = Clock()
    rates = budget(clock, max_ids_per_second=500)
    rates.throttled(100, None, await rates.acquire(100))
    for _ in range(100):
        clock.now += 1.0
        rates.succeeded(500, clock.now)
        rate = rates.rate
        assert rate is not None and rate <= 500


async def test_large_steps_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """One INFO line when the rate changes by 2x or more, none for small moves."""
    clock = Clock()
    rates = budget(clock)
    caplog.set_level(logging.INFO, logger="batch_audience")
    sent = await rates.acquire(1_000)
    clock.now += 1.0
    rates.succeeded(1_000, sent)
    rates.throttled(1_000, None, await rates.acquire(1_000))
    lines = [r for r in caplog.records if getattr(r, "event", None) == "batch_audience.rate_budget"]
    assert len(lines) == 1
    assert "unpaced ->" in lines[0].getMessage()
    clock.now += 0.1
    rates.succeeded(10, clock.now)
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


# -- whole uploads against a simulated server -----------------------------------------------


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer instead of waiting for it."""

    def __init__(self) -> None:
        super().__init__()
        self.virtual = 0.0
        real: Any = vars(self)["_selector"]
        loop = self

        class Selector:
            def select(self, timeout: float | None = None) -> Any:
                ready = real.select(0)
                if not ready:
                    if timeout is None:
                        raise RuntimeError("deadlock: every task waits and no timer is set")
                    loop.virtual += timeout
                return ready

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        self._selector = Selector()

    def time(self) -> float:
        return self.virtual


class BucketServer:
    """A token bucket of ``rate`` IDs/s and ``burst`` IDs, as the fake (and Batch) meters."""

    def __init__(self, rate: float, burst: int, retry_after: bool, clock: Any) -> None:
        self.rate = rate
        self.burst = burst
        self.retry_after = retry_after
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self, cost: int) -> tuple[bool, float | None]:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        needed = min(cost, self.burst)
        if self.tokens >= needed:
            self.tokens -= cost
            return True, None
        wait = max(1, math.ceil((needed - self.tokens) / self.rate))
        return False, float(wait) if self.retry_after else None


async def simulate(
    rate: float, burst: int, retry_after: bool, ids: int, *, uploads: int = 1
) -> tuple[float, int, int]:
    """Upload ``ids`` IDs per upload in 10,000-ID writes, 4 in flight; (seconds, writes, 429s)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(7)
    server = BucketServer(rate, burst, retry_after, loop.time)
    rates = RateBudget(clock=loop.time)
    counts = {"writes": 0, "throttled": 0}

    async def write(cost: int) -> None:
        while True:
            sent = await rates.acquire(cost)
            # 20 to 40 ms each way: a loaded network, not a perfect one.
            await asyncio.sleep(0.02 + rng.uniform(0, 0.02))
            accepted, wait = server.take(cost)
            counts["writes"] += 1
            await asyncio.sleep(0.02)
            if accepted:
                rates.succeeded(cost, sent)
                return
            counts["throttled"] += 1
            rates.throttled(cost, wait, sent)
            if wait is not None:
                await asyncio.sleep(wait)

    async def upload() -> None:
        slots = asyncio.Semaphore(4)

        async def one() -> None:
            async with slots:
                await write(10_000)

        await asyncio.gather(*(one() for _ in range(ids // 10_000)))

    started = loop.time()
    await asyncio.gather(*(upload() for _ in range(uploads)))
    return loop.time() - started, counts["writes"], counts["throttled"]


def run_virtual(coro: Coroutine[Any, Any, tuple[float, int, int]]) -> tuple[float, int, int]:
    """Run on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("rate", "burst", "retry_after", "ids", "uploads", "bound", "share"),
    [
        # Without Retry-After, 10,000-ID writes at 2,000 IDs/s are found by probing: 429s are
        # cheap there (a round trip each), and each write must wait 5 s anyway. The bounds
        # are today's figures with a margin (the simulation is deterministic): a regression
        # guard. The first four writes go out together, unpaced: some meet an empty bucket.
        pytest.param(2_000, 10_000, False, 40_000, 1, 1.3, 0.8, id="2k-no-retry-after"),
        # At 20,000 IDs/s one probe past the limit costs more than pacing at the aim gives
        # up over the whole upload: held at the aim, the budget finds the rate once.
        pytest.param(20_000, 10_000, True, 200_000, 1, 1.2, 0.2, id="20k-retry-after"),
        pytest.param(20_000, 10_000, False, 200_000, 1, 1.27, 0.25, id="20k-no-retry-after"),
        pytest.param(20_000, 20_000, True, 200_000, 1, 1.25, 0.3, id="20k-burst-20k"),
        pytest.param(20_000, 20_000, True, 100_000, 3, 1.15, 0.4, id="20k-three-uploads"),
        pytest.param(20_000, 10_000, True, 80_000, 2, 1.2, 0.4, id="20k-two-uploads"),
    ],
)
def test_uploads_finish_near_the_servers_rate(
    rate: float,
    burst: int,
    retry_after: bool,
    ids: int,
    uploads: int,
    bound: float,
    share: float,
) -> None:
    """Against a token-bucket server uploads end within ``bound`` x the time the limit allows."""
    elapsed, writes, throttled = run_virtual(
        simulate(rate, burst, retry_after, ids, uploads=uploads)
    )
    allowed = (ids * uploads - burst) / rate
    assert elapsed <= bound * allowed, (elapsed, allowed, writes, throttled)
    # Every write went through in the end, and few were refused on the way.
    assert writes - throttled == ids * uploads // 10_000
    assert throttled <= share * writes, (throttled, writes)


def test_an_unmetered_server_is_not_paced() -> None:
    """With no limit at all, nothing waits: the upload takes its round trips and no more."""
    elapsed, writes, throttled = run_virtual(simulate(1e12, 10**12, True, 200_000))
    assert (writes, throttled) == (20, 0)
    assert elapsed < 5 * 0.06
