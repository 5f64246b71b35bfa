"""The client-wide rate budget in IDs per second, learned from the server's 429s (spec §7).

Pure: no aiohttp, and the clock and the sleep are injected, so the arithmetic is tested
without a network or real time. Every write of a client (uploads, the writer) takes its IDs
from the client's one ``RateBudget`` before it goes out, so they share what the server allows
instead of each learning it on its own.

Pacing: a token bucket that writes may borrow from (as in GCRA).

- Until the first 429 the budget has no rate: ``acquire`` returns at once, without awaiting,
  so a server that never throttles pays nothing for it.
- With a rate, a write goes out when the bucket is not in debt, and takes its whole cost,
  possibly leaving the bucket below zero. A 10,000-ID request can always go, even when the rate
  is below 10,000 IDs/s; what it borrowed delays the writes after it. The bucket keeps no
  credit through idle time, so the client never sends faster than the rate, not even in a
  burst: below the server's own rate, the server never has to answer 429.

Learning: AIMD as TCP does it with its window, on a rate, with CUBIC's growth curve.

- One cut per congestion event: 429s of writes sent before the last cut were caused by the
  old rate and do not cut again.
- A cut at rate ``W`` paces at ``decrease * W`` and aims growth at ``near * W``: CUBIC
  (RFC 8312) grows fast back towards the aim, holds there for ``hold`` seconds of accepted
  writes, then grows flat near it and faster again, probing upward. The aim sits below ``W``
  because ``W`` was refused: plateauing just under it keeps 429s rare, and so does the hold,
  since a probe that finds the limit costs a 429 (with ``Retry-After``, a pause of a whole
  second or more) where the aim gives up only ``1 - near`` of the rate. ``W`` is the rate
  when the 429 came, lowered (by ``guard`` at most) towards what the server accepted since
  the cut before, since its bucket can absorb an overshoot for a while; and a cut never goes
  below ``floor`` times the rate the server sustained for ``sustain`` seconds since pacing
  began, so 429s that come at random do not wear the rate down.
- The first cut has no rate to start from. The server accepted ``A`` IDs in the ``T`` seconds
  from the first write to the end of the pause; had it taken the refused write too, it would
  have allowed ``(A + cost) / T``, the aim. After a ``Retry-After`` (the server's bucket had
  the pause to refill) pacing starts at the aim; without one, at ``A / T``, probing upward.
- ``Retry-After`` pauses every write of the client that long (the server's word on when writes
  may go again); without it, the refused write is retried once the new rate has paid for it.
- Once the rate stands ``release`` times above the rate last refused, with writes accepted all
  the way, that refusal no longer describes the server: the budget lets go of the rate, so an
  unmetered server that answered one stray 429 is not slowed down for good.
- ``max_ids_per_second`` caps the rate at all times, before and after any 429.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from ._exceptions import ValidationError

__all__ = ["RateBudget", "SkippedTime", "check_max_ids_per_second"]

logger = logging.getLogger("batch_audience")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# A cut paces at this share of the refused rate (TCP Reno halves, CUBIC keeps 0.7; the
# refused rate here is measured, not a window that overshot for a whole round trip).
DEFAULT_DECREASE: Final = 0.9
DEFAULT_NEAR: Final = 0.97  # growth aims at this share of the refused rate
# Past the hold the rate grows by aim * cubic * t**3 (t: seconds of accepted writes since the
# hold ended): 2 % after 2 s, 25 % after 5 s, 4x (a release) after about 11 s.
DEFAULT_CUBIC: Final = 0.002  # per second cubed
# Seconds of accepted writes spent at the aim before probing past it. A probe that finds the
# limit costs a 429: with Retry-After a pause of a whole second or more, where pacing at the
# aim gives up only 1 - near of the rate, so probing pays only when it is rare.
DEFAULT_HOLD: Final = 10.0
DEFAULT_WINDOW: Final = 10.0  # seconds of accepted writes remembered
DEFAULT_MIN_SPAN: Final = 2.0  # seconds: a shorter span of accepted writes tells a burst
DEFAULT_RECOVER: Final = 0.5  # seconds from a cut back up to the aim
# The accepted rate can lower the refused one by at most this share (a pause or a slow climb
# in its span makes it read low).
DEFAULT_GUARD: Final = 0.9
DEFAULT_FLOOR: Final = 0.5  # a cut keeps at least this share of the sustained accepted rate
DEFAULT_SUSTAIN: Final = 5.0  # seconds over which an accepted rate counts as sustained
DEFAULT_STEP: Final = 1.0  # seconds: the most one accepted write advances the growth curve
DEFAULT_RELEASE: Final = 4.0  # let go once the rate is this many times the last refused one
MIN_RATE: Final = 1.0  # IDs per second: the floor of a rate cut again and again
# A change of the rate by this factor or more since the last INFO line makes a new one.
_LARGE_STEP: Final = 2.0
# A hair of debt left by float rounding is no debt: sleeping 1e-17 s would spin.
_EPSILON_IDS: Final = 1e-6


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
        raise ValidationError(
            f"max_ids_per_second must be None or a finite number >= {MIN_RATE:g}, got {value!r}"
        )
    return float(value)


class RateBudget:
    """One client's budget of IDs per second, shared by all its writes (spec §7)."""

    def __init__(
        self,
        *,
        max_ids_per_second: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
        decrease: float = DEFAULT_DECREASE,
        near: float = DEFAULT_NEAR,
        cubic: float = DEFAULT_CUBIC,
        hold: float = DEFAULT_HOLD,
        window: float = DEFAULT_WINDOW,
        min_span: float = DEFAULT_MIN_SPAN,
        step: float = DEFAULT_STEP,
        recover: float = DEFAULT_RECOVER,
        guard: float = DEFAULT_GUARD,
        floor: float = DEFAULT_FLOOR,
        sustain: float = DEFAULT_SUSTAIN,
        release: float = DEFAULT_RELEASE,
    ) -> None:
        self.cap = check_max_ids_per_second(max_ids_per_second)
        self._clock = clock
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._decrease = decrease
        self._near = near
        self._cubic = cubic
        self._hold = hold
        self._window = window
        self._min_span = min_span
        self._step = step
        self._recover = recover
        self._guard = guard
        self._floor = floor
        self._sustain = sustain
        self._release = release
        now = clock()
        # The learned curve: None until the first 429 (and after a release); else growth
        # follows aim * (1 + cubic * (t - epoch - k) ** 3) from the epoch on.
        self._aim: float | None = None
        self._drop = 0.0  # the share of the aim the last cut fell below it
        self._progress = 0.0  # seconds of the curve walked so far
        self._progressed_at = now
        self._resumed_at = now  # when writes last went out again after a cut
        self._tokens = 0.0  # may be negative: what the last writes borrowed
        self._stamp = now  # when _tokens was last brought up to date
        self._paused_until = -math.inf
        self._last_cut = -math.inf
        self._first_cut = math.inf  # when pacing began (the first cut, since any release)
        # Writes sent from this time on took their tokens when they went out.
        self._paced_since = math.inf if max_ids_per_second is None else -math.inf
        self._first_write: float | None = None
        self._last_accepted = -math.inf
        # (time, IDs) of accepted writes over the last ``window`` seconds.
        self._accepted: deque[tuple[float, int]] = deque()
        self._accepted_sum = 0
        self._refused = 0.0  # the rate the last cut judged refused, IDs per second
        self._logged: float | None = None  # the rate of the last INFO line
        self._lock = asyncio.Lock()
        self.throttled_writes = 0  # writes answered 429
        self.peak_rate: float | None = None  # the highest learned rate paced at, IDs per second

    # -- reading -----------------------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        """The rate writes are paced at now, in IDs per second; None when they are not paced."""
        learned = self._learned()
        cap = self.cap
        if learned is None:
            return cap
        return learned if cap is None else min(learned, cap)

    def now(self) -> float:
        """The budget's clock (a test's skipped waits included)."""
        return self._clock()

    def accepted_since(self, when: float) -> bool:
        """Whether the server accepted a write of this client at or after ``when``."""
        return self._last_accepted >= when

    def describe(self) -> str:
        """The budget for a message: its rate and the writes throttled so far."""
        rate = self.rate
        shown = "not paced" if rate is None else f"{rate:,.0f} IDs/s"
        return f"{shown}, {self.throttled_writes} writes of this client throttled so far"

    @property
    def paused_until(self) -> float:
        """The clock time before which no write goes (the server's last Retry-After)."""
        return self._paused_until

    def _learned(self) -> float | None:
        aim = self._aim
        return None if aim is None else self._curve(aim)

    def _curve(self, aim: float) -> float:
        t = self._progress  # moved by accepted writes, not by the clock alone
        k = self._recover
        if t < k:
            # Concave: back from the cut to the aim in ``recover`` seconds, fast at first.
            left = (k - t) / k
            return max(MIN_RATE, aim * (1.0 - self._drop * left * left * left))
        # Held at the aim a while, then convex: flat just past it, then faster and faster,
        # probing upward.
        t = max(0.0, t - k - self._hold)
        return max(MIN_RATE, aim * (1.0 + self._cubic * t * t * t))

    # -- the three hooks ---------------------------------------------------------------------

    async def acquire(self, cost: int) -> float:
        """Wait until ``cost`` IDs may go out, take them, and return the clock time they did.

        Cancellation-safe: a waiter cancelled before its turn takes nothing.
        """
        now = self._clock()
        if self._first_write is None:
            self._first_write = now
        if (
            self._aim is None
            and self.cap is None
            and now >= self._paused_until
            and not self._lock.locked()
        ):
            # Not paced: no await at all, so an unthrottled upload pays nothing here.
            return now
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._paused_until - now
                rate = self.rate
                if wait <= 0 and rate is not None:
                    self._refill(now, rate)
                    if self._tokens < -_EPSILON_IDS:
                        wait = -self._tokens / rate
                if wait <= 0:
                    if rate is not None:
                        self._tokens -= max(cost, 0)
                    return now
                await self._sleep(wait)

    def throttled(self, cost: int, retry_after: float | None, sent_at: float) -> None:
        """A write of ``cost`` IDs that went out at ``sent_at`` was answered 429."""
        now = self._clock()
        self.throttled_writes += 1
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)
            # The server's word on when writes may go again replaces the bucket's own count:
            # from the pause's end, with nothing owed.
            self._tokens = 0.0
            self._stamp = max(self._stamp, self._paused_until)
        if sent_at < self._last_cut:
            return  # sent at the old rate: the cut already made covers it
        paced = sent_at >= self._paced_since
        before = self.rate
        resume = max(now, self._paused_until)
        learned = self._learned()
        if learned is None:
            # No rate of our own yet: what the server accepted from the first write to the
            # end of the pause is the floor, and had it taken this write too, the aim.
            self._forget(now)
            first = self._first_write if self._first_write is not None else now
            span = max(resume - max(first, now - self._window), 1.0)
            accepted = self._accepted_sum
            if accepted > 0:
                aim = self._near * (accepted + cost) / span
                # After a Retry-After the server's bucket has had the pause to refill: start
                # at the aim. Without one, probe up from what it did take.
                start = aim if retry_after else accepted / span
            elif self.cap is not None:
                start, aim = self._decrease * self.cap, self._near * self.cap
            else:
                # Nothing accepted yet: one such write per pause (or second) is all we know.
                start = aim = cost / (retry_after or 1.0)
            if self.cap is not None:
                start = min(start, self._decrease * self.cap)
                aim = min(aim, self._near * self.cap)
            start = max(MIN_RATE, start)
            aim = max(start, aim)
        else:
            # The server's bucket absorbs an overshoot for a while, so the rate when the 429
            # came can stand well above the server's: what it accepted since the last cut,
            # pause included (a pause refills its bucket), is the better measure.
            refused = learned if self.cap is None else min(learned, self.cap)
            self._forget(now)
            since = max(self._last_cut, now - self._window)
            if now - since >= self._min_span:
                taken = sum(ids for at, ids in self._accepted if at >= since)
                if taken > 0:
                    # Had the server taken this write too, it would have allowed this much:
                    # a bound (its bucket may have drained meanwhile), not the figure itself.
                    measured = (taken + cost) / (now - since)
                    # It guards against a large overshoot only: a slow climb or a pause in
                    # the span makes it read low.
                    refused = min(refused, max(measured, self._guard * refused))
            start = max(MIN_RATE, self._decrease * refused)
            # Never far below what the server took for seconds on end since pacing began:
            # 429s that come at random (not from a limit) must not wear the rate down cut by
            # cut, as they would plain AIMD.
            start = max(start, self._floor * self._sustained(now))
            aim = max(start, self._near * refused)
        if before is not None and start > before:
            # A cut never speeds writes up, whatever the guesses above say.
            start = before
            aim = max(aim, start)
        if self._aim is None:
            self._first_cut = now
            if self.cap is None:
                self._paced_since = now
        self._aim = aim
        self._refused = aim / self._near
        self._drop = 1.0 - start / aim
        self._progress = 0.0
        self._progressed_at = resume
        self._resumed_at = resume
        self._last_cut = now
        if retry_after is None:
            # No word from the server on when to come back: the refused write is retried
            # once the new rate has paid for it, and nothing goes before. What it took when
            # it went out paced is given back first, so it is not paid for twice.
            self._refill(now, start)
            if paced:
                self._tokens += max(cost, 0)
            self._tokens = min(self._tokens, 0.0) - max(cost, 0)
        self._log_step(before, "cut after a 429")

    def succeeded(self, cost: int, sent_at: float) -> None:
        """A write of ``cost`` IDs that went out at ``sent_at`` was accepted."""
        del sent_at  # kept for symmetry with ``throttled``: every success counts
        now = self._clock()
        self._last_accepted = now
        self._accepted.append((now, cost))
        self._accepted_sum += cost
        self._forget(now)
        aim = self._aim
        if aim is None:
            return
        if now > self._progressed_at:
            # The curve's clock runs with the writes: at most ``step`` seconds per accepted
            # write, so a long wait for one large write is not long evidence of success.
            self._progress += min(now - self._progressed_at, self._step)
            self._progressed_at = now
        learned = self._curve(aim)
        rate = learned if self.cap is None else min(learned, self.cap)
        if self.peak_rate is None or rate > self.peak_rate:
            self.peak_rate = rate
        if learned > self._release * self._refused:
            before = self.rate
            self._aim = None
            self._tokens = 0.0
            if self.cap is None:
                self._paced_since = math.inf
            self._log_step(before, "released, far above the rate last refused")
        elif self._logged is not None:
            self._log_step(self._logged, "grown back")

    # -- internals ---------------------------------------------------------------------------

    def _refill(self, now: float, rate: float) -> None:
        if now > self._stamp:
            if self._tokens < 0:
                self._tokens = min(0.0, self._tokens + (now - self._stamp) * rate)
            self._stamp = now

    def _sustained(self, now: float) -> float:
        """The most IDs per second accepted over any ``sustain`` seconds since pacing began."""
        self._forget(now)
        span = self._sustain
        entries = [(at, ids) for at, ids in self._accepted if at > self._first_cut]
        best = total = 0
        low = 0
        for at, ids in entries:
            total += ids
            while entries[low][0] <= at - span:
                total -= entries[low][1]
                low += 1
            best = max(best, total)
        return best / span

    def _forget(self, now: float) -> None:
        horizon = now - self._window
        accepted = self._accepted
        while accepted and accepted[0][0] < horizon:
            self._accepted_sum -= accepted.popleft()[1]

    def _log_step(self, before: float | None, why: str) -> None:
        after = self.rate
        reference = self._logged if self._logged is not None else before
        if reference == after:
            return
        if (
            reference is None
            or after is None
            or max(reference, after) >= _LARGE_STEP * min(reference, after)
        ):
            self._logged = after
            logger.info(
                "rate budget %s: %s -> %s IDs/s after %d throttled writes",
                why,
                "unpaced" if reference is None else f"{reference:,.0f}",
                "unpaced" if after is None else f"{after:,.0f}",
                self.throttled_writes,
                extra={
                    "event": "batch_audience.rate_budget",
                    "rate_before": reference,
                    "rate": after,
                    "throttled": self.throttled_writes,
                },
            )


class SkippedTime:
    """Time for a budget whose client sleeps through an injected (test) sleep.

    A test's zero-wait sleep returns at once, but the waits it stood for did pass as far as
    the budget is concerned: ``clock`` is ``time.monotonic`` plus every wait skipped so far,
    the session's (``sleep``, which still calls the injected one) and the budget's own
    (``skip``, which only yields).
    """

    def __init__(self, sleep: Sleep) -> None:
        self._sleep = sleep
        self.skipped = 0.0  # seconds

    def clock(self) -> float:
        """The monotonic clock, moved on by the skipped waits."""
        return time.monotonic() + self.skipped

    async def sleep(self, seconds: float) -> None:
        """The injected sleep; its wait counts as passed."""
        self.skipped += max(0.0, seconds)
        await self._sleep(seconds)

    async def skip(self, seconds: float) -> None:
        """A budget wait: counted as passed, not slept."""
        self.skipped += max(0.0, seconds)
        await asyncio.sleep(0)
