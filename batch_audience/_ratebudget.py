"""The client-wide rate budget in IDs per second, learned from the server's 429s (spec §7).

Pure: no aiohttp, the clock and the sleep are injected, so the arithmetic is tested without a
network or real time. Every write of a client (uploads, the writer) takes its IDs from one
``RateBudget`` before it goes out.

How it paces (a token bucket that may be borrowed from, as in GCRA):

- Until the first 429 the budget has no rate: ``acquire`` returns at once, without awaiting,
  so a server that never throttles pays nothing for it.
- With a rate, a write goes out when the bucket is not in debt and then takes its whole cost,
  possibly leaving the bucket below zero: a request of 10,000 IDs can always go, even when the
  rate is below 10,000 IDs/s, and what it borrowed delays the writes after it. The bucket holds
  at most ``burst_seconds`` of the rate, so an idle spell does not buy a burst the server's own
  bucket would refuse.

How it learns (AIMD, as TCP does with its window, but on a rate):

- A 429 is one congestion event per round: 429s of writes that went out before the last cut
  were caused by the old rate and do not cut again.
- On a cut the rate becomes ``decrease`` times the smaller of the current rate and the rate the
  server accepted over the last seconds (what it delivered is the best estimate of what it
  allows). A ``Retry-After`` pauses every write of the client that long.
- While writes succeed and the budget is what holds them back, the rate grows: fast
  (``fast_growth`` per second) until the second cut ever, while nothing is known of the
  server's limit, then ``growth`` per second, probing for more. Once it stands far above what
  the server has ever accepted, the budget lets go of it altogether: an unmetered server that
  answered one stray 429 is not slowed down for good.
- ``max_ids_per_second`` caps the rate at all times, before and after any 429: below the
  server's real limit, the server never has to answer 429.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

import attrs

__all__ = ["BudgetSnapshot", "RateBudget", "check_max_ids_per_second"]

logger = logging.getLogger("batch_audience")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# A cut keeps this share of the rate the server accepted (spec §7: "halved" is TCP Reno's 0.5;
# anchoring on the accepted rate makes a milder cut safe and keeps uploads near the limit).
DEFAULT_DECREASE: Final = 0.8
DEFAULT_GROWTH: Final = 0.05  # per second, while the budget holds writes back
DEFAULT_FAST_GROWTH: Final = 0.5  # per second, until the server's limit was met twice
DEFAULT_WINDOW: Final = 4.0  # seconds of accepted writes to estimate the server's rate
DEFAULT_MIN_WINDOW: Final = 1.0  # seconds: shorter spans tell a burst, not a rate
DEFAULT_BURST_SECONDS: Final = 0.0  # seconds of the rate the bucket keeps through idle time
DEFAULT_RELEASE: Final = 4.0  # let go of the rate once it is this many times the accepted peak
MIN_RATE: Final = 1.0  # IDs per second: the floor of a rate cut again and again
_EPSILON_IDS: Final = 1e-6
# A change of the rate by this factor or more is logged at INFO.
_LARGE_STEP: Final = 2.0


def check_max_ids_per_second(value: float | None) -> float | None:
    """``max_ids_per_second`` is None (no cap) or a finite number >= 1."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < MIN_RATE
    ):
        from ._exceptions import ValidationError

        raise ValidationError(
            f"max_ids_per_second must be None or a finite number >= 1, got {value!r}"
        )
    return float(value)


@attrs.frozen(kw_only=True)
class BudgetSnapshot:
    """The budget at one moment: throttled writes so far and the rate it paces at."""

    throttled: int  # writes answered 429
    rate: float | None  # IDs per second; None when writes are not paced


class RateBudget:
    """One client's budget of IDs per second, shared by all its writes (spec §7)."""

    def __init__(
        self,
        *,
        max_ids_per_second: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
        decrease: float = DEFAULT_DECREASE,
        growth: float = DEFAULT_GROWTH,
        fast_growth: float = DEFAULT_FAST_GROWTH,
        window: float = DEFAULT_WINDOW,
        min_window: float = DEFAULT_MIN_WINDOW,
        soft_decrease: float = 0.9,
        near: float = 0.9,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        release: float = DEFAULT_RELEASE,
    ) -> None:
        self.cap = check_max_ids_per_second(max_ids_per_second)
        self._clock = clock
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._decrease = decrease
        self._growth = growth
        self._fast_growth = fast_growth
        self._window = window
        self._min_window = min_window
        self._soft_decrease = soft_decrease
        self._near = near
        self._target = 0.0
        self._burst_seconds = burst_seconds
        self._release = release
        # The rate learned from 429s, or None while nothing throttled (or after a release).
        self._learned: float | None = None
        now = clock()
        self._tokens = 0.0  # may be negative: what the last writes borrowed
        self._stamp = now  # when _tokens was last brought up to date
        self._paused_until = -math.inf
        self._last_cut = -math.inf
        self._cuts = 0
        self._grown_at = now
        # When a writer last had to wait for tokens: growth only while the budget binds.
        self._held_at = -math.inf
        # (time, IDs) of accepted writes over the last ``window`` seconds.
        self._accepted: deque[tuple[float, int]] = deque()
        self._accepted_sum = 0
        self._first_write = -math.inf
        self._peak_accepted = 0.0
        self._lock = asyncio.Lock()
        self.throttled_count = 0
        self.peak_rate: float | None = None

    # -- reading -----------------------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        """The rate writes are paced at, in IDs per second; None when they are not paced."""
        learned = self._learned
        cap = self.cap
        if learned is None:
            return cap
        return learned if cap is None else min(learned, cap)

    def snapshot(self) -> BudgetSnapshot:
        """Throttled writes so far and the current rate."""
        return BudgetSnapshot(throttled=self.throttled_count, rate=self.rate)

    def accepted_rate(self) -> float:
        """IDs per second the server accepted over the last window (at least a second)."""
        now = self._clock()
        self._forget(now)
        if not self._accepted:
            return 0.0
        since = max(self._first_write, now - self._window)
        span = max(now - since, DEFAULT_MIN_WINDOW)
        return self._accepted_sum / span

    # -- the three hooks ---------------------------------------------------------------------

    async def acquire(self, cost: int) -> float:
        """Wait until ``cost`` IDs may go out, take them, and return the time they did."""
        now = self._clock()
        if self._first_write == -math.inf:
            self._first_write = now
        if self.rate is None and now >= self._paused_until and not self._lock.locked():
            # Not paced: no await at all, so an unthrottled upload pays nothing here.
            return now
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._paused_until - now
                rate = self.rate
                if wait <= 0 and rate is not None:
                    self._refill(now, rate)
                    # A hair of debt left by float rounding is no debt: waiting out 1e-17 s
                    # would spin.
                    if self._tokens < -_EPSILON_IDS:
                        wait = -self._tokens / rate
                if wait <= 0:
                    if rate is not None:
                        self._tokens -= max(cost, 0)
                    return now
                self._held_at = now
                await self._sleep(wait)

    def throttled(self, cost: int, retry_after: float | None, sent_at: float) -> None:
        """A write of ``cost`` IDs sent at ``sent_at`` was answered 429."""
        now = self._clock()
        self.throttled_count += 1
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)
            # The pause is the server's word on when writes may go again: the bucket starts
            # its count from the pause's end, empty.
            self._tokens = min(self._tokens, 0.0)
            self._stamp = max(self._stamp, self._paused_until)
        if sent_at < self._last_cut:
            return  # sent at the old rate: the cut already made covers it
        before = self.rate
        resume = max(now, self._paused_until)
        estimate = self._estimate(now, resume)
        accepted = self._accepted_sum
        span = max(resume - max(self._first_write, now - self._window), self._min_window)
        if before is None:
            new = estimate if estimate is not None else cost / (retry_after or 1.0)
            # Had the server let this write through as well, it would have allowed this much:
            # an upper guess of its rate, the level fast growth aims for.
            self._target = self._near * (accepted + cost) / span
        else:
            new = self._decrease * before
            self._target = self._near * before
        self._learned = max(MIN_RATE, new)
        self._last_cut = now
        self._cuts += 1
        self._grown_at = resume
        if retry_after is None:
            # No word from the server on when to come back: the throttled write is retried
            # once the new rate has paid for it, and nothing goes before.
            self._refill(now, self._learned)
            self._tokens = min(self._tokens, 0.0) - cost
        self._log_step(before, "cut after a 429")

    def succeeded(self, cost: int, sent_at: float) -> None:
        """A write of ``cost`` IDs sent at ``sent_at`` was accepted."""
        del sent_at
        now = self._clock()
        self._accepted.append((now, cost))
        self._accepted_sum += cost
        learned = self._learned
        if learned is None:
            return
        elapsed = min(now - self._grown_at, 1.0)
        self._grown_at = max(now, self._grown_at)
        if elapsed <= 0 or now - self._held_at > 1.0:
            return  # the budget did not hold anything back: no evidence more would pass
        before = self.rate
        if learned < self._target:
            learned = min(self._target, learned * (1.0 + self._fast_growth * elapsed))
        else:
            learned *= 1.0 + self._growth * elapsed
        if self.cap is not None:
            learned = min(learned, self.cap)
        self._learned = learned
        self._log_step(before, "grown back")

    def _estimate(self, now: float, resume: float) -> float | None:
        """IDs per second the server accepted lately, counted up to when writes resume."""
        self._forget(now)
        if not self._accepted:
            return None
        since = max(self._first_write, now - self._window)
        return self._accepted_sum / max(resume - since, self._min_window)

    # -- internals ---------------------------------------------------------------------------

    def _refill(self, now: float, rate: float) -> None:
        if now > self._stamp:
            ceiling = rate * self._burst_seconds
            if self._tokens < ceiling:
                self._tokens = min(ceiling, self._tokens + (now - self._stamp) * rate)
            self._stamp = now

    def _forget(self, now: float) -> None:
        horizon = now - self._window
        accepted = self._accepted
        while accepted and accepted[0][0] < horizon:
            self._accepted_sum -= accepted.popleft()[1]

    def _log_step(self, before: float | None, why: str) -> None:
        after = self.rate
        if before == after:
            return
        if (
            before is None
            or after is None
            or max(before, after) >= _LARGE_STEP * min(before, after)
        ):
            logger.info(
                "rate budget %s: %s -> %s IDs/s",
                why,
                "unpaced" if before is None else f"{before:,.0f}",
                "unpaced" if after is None else f"{after:,.0f}",
                extra={
                    "event": "batch_audience.rate_budget",
                    "rate_before": before,
                    "rate": after,
                    "throttled": self.throttled_count,
                },
            )
