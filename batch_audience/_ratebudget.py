"""The client-wide rate budget in IDs per second, learned from the server's 429s (spec §7).

Pure: no aiohttp, and the clock, the sleep and the random draws are injected, so the arithmetic
is tested without a network or real time. Every write of a client (uploads, the writer) takes
its IDs from the client's one ``RateBudget`` before it goes out, so they share what the server
allows instead of each learning it on its own.

The server it is built for. Batch meters writes in IDs with a token bucket (its Profile API
documents 10,000 IDs/s for mass updates, "no burst", requests of at most 10,000 IDs, a 429
when the bucket is short, and asks to wait a few seconds before retrying one without
``Retry-After``). A write is accepted when the bucket holds its IDs and refused otherwise, and
a refusal costs the bucket nothing. So when the bucket holds about one request, the server
takes one write per ``cost / rate`` seconds from whoever comes first once it has refilled:
a 429 says "too early", never "too much in flight".

Pacing: a token bucket that writes may borrow from (as in GCRA).

- Until the first 429 the budget has no rate: ``acquire`` returns at once, without awaiting,
  so a server that never throttles pays nothing for it.
- With a rate, a write goes out when the bucket is not in debt and takes its whole cost,
  possibly leaving the bucket below zero: a 10,000-ID request can always go; what it borrowed
  delays the writes after it. The bucket keeps no credit through idle time, so the client never
  bursts above its rate. A write waiting for its turn wakes early when the rate goes up.
- ``max_ids_per_second`` caps the rate at all times, before and after any 429.

Learning: a level the server is known to take, probed upward now and then, and three ways to
read a 429 (one reading per congestion event: 429s of writes sent before the last reading were
caused by what came before it).

1. The first 429 (unpaced until then). The server took ``A`` IDs in the ``T`` seconds before
   it (the last ``WINDOW`` at most); had it taken this write too, it would have allowed
   ``(A + cost) / T``, and ``Retry-After``, when given, is time its bucket had to refill, so it
   counts in ``T``. ``T`` is at least ``BURST_SPAN``: over a shorter span a bucket's burst
   looks like a rate. The budget paces at ``NEAR`` times that. A client whose writes were all
   refused starts at one write per ``NEWCOMER`` seconds (see 3).
2. A 429 that may be noise: after the server took some writes (a 429 early in an upload and
   one on an unmetered server look the same), each accepted write multiplies the rate by
   ``CLIMB`` back towards what the server took (``CLIMB`` times the estimate at least), the
   refused write going again at once. Reaching it, the budget lets go of the rate (unpaced
   again): a 429 not followed by more was noise. ``SKIPS`` 429s on the way are forgiven too;
   one more ends the climb at the highest rate below it. After a ``Retry-After`` (a limit's
   word, but rounded up to whole seconds it can make the estimate several times too low) the
   climb only doubles per write, the refused write waits, and one 429 ends it. A 429 of a
   write the budget did not hold back (its pacing was not what limited it) starts the same
   check.
3. Later 429s, paced. A write sent above the level (a probe) found the limit: back to the
   level, and the next probe waits twice as long. A write refused at the level while the
   server still takes at least ``COMPETE`` of this client's writes means another client takes
   a share of the same limit (or noise): the level stays (and while fewer than ``SHARED`` of
   its writes get through, it tries at least as often as a newcomer), so the clients keep
   competing on equal terms (the server gives each refill to whoever comes first), instead of
   the one refused first backing off until it starves. Refused more often than that, the
   level falls to what the server took (``(A + cost) / T`` over the window), but not below
   one write per ``NEWCOMER`` seconds while so few writes get through: a client that backs
   off below that never gets a share of a limit others hold. This is where the budget trades
   Batch's "wait a few seconds" for a share: a client alone at a low limit that keeps being
   refused tries four writes a second (each refusal costs the server little); one that gets
   its writes through waits for its IDs at its rate (at 10,000 IDs/s, a second per
   10,000-ID write).

Growth: after ``HOLD`` seconds at a level (drawn at random around it, so that clients do not
probe together), the rate tries ``STEP`` more; ``CONFIRM`` writes accepted there make it the
level, and the next step is twice as large (up to doubling), so a limit that rose is found in
a few steps. Below half the best rate the server took over any ``SUSTAIN`` seconds of the last
``MEMORY``, the probe goes straight back to ``NEAR`` times that rate after ``JUMP_HOLD``
seconds: a limit that dropped for a while is tracked back up. Once the level stands
``RELEASE`` times above the rate last refused, the budget lets go of it.

After every reading the refused write's IDs are owed again at the new rate (give or take
``JITTER``, so clients refused together do not come back together): a write refused without
``Retry-After`` waits for them, and so do the writes after it. With ``Retry-After`` the session
holds the refused write that long; the budget does not stop its other writes for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from ._exceptions import ValidationError

__all__ = ["PROGRESS_WINDOW", "RateBudget", "SkippedTime", "check_max_ids_per_second"]

logger = logging.getLogger("batch_audience")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Seconds: a span shorter than this cannot tell a bucket's burst from its rate. Batch's
# mass-update bucket has "no burst" beyond one request of at most 10,000 IDs at 10,000 IDs/s:
# about one second of its rate.
BURST_SPAN: Final = 1.0
NEAR: Final = 0.97  # the share of an estimated rate the budget paces at
WINDOW: Final = 10.0  # seconds of accepted writes an estimate reads
MEMORY: Final = 30.0  # seconds over which the best rate the server took is remembered
SUSTAIN: Final = 2.0  # seconds: the span of "the best rate the server took"
# Seconds at a level before probing above it, drawn from HOLD * (1 +- HOLD_JITTER). A probe past
# the limit costs a 429 (with Retry-After, that write waits a second or more), so probing pays
# only when it is rare; each failed probe doubles the hold, up to HOLD_MAX.
HOLD: Final = 12.0
HOLD_MAX: Final = 24.0
HOLD_JITTER: Final = 0.5
JUMP_HOLD: Final = 1.5  # seconds before probing back to a best rate the level fell far below
STEP: Final = 0.05  # the first probe's share above the level; doubles while probes succeed
STEP_MAX: Final = 1.0
CONFIRM: Final = 2  # writes accepted at a probe's rate make it the level
CLIMB: Final = 4.0  # the factor per accepted write of the climb after a 429 that may be noise
SKIPS: Final = 2  # 429s a climb forgives: three on the way make a limit
# After a Retry-After (a limit's word, though rounded up to whole seconds it can read a rate
# several times too low), the climb doubles per accepted write and forgives no 429.
GENTLE: Final = 2.0
COMPETE: Final = 0.2  # the share of accepted writes above which a 429 at the level is contention
SHARED: Final = 0.8  # below this share of accepted writes, a competing client tries as a newcomer
# Seconds: while fewer than COMPETE of its writes get through, a client still tries one write
# per this many seconds; slower, it would never win a share of a limit others hold.
NEWCOMER: Final = 0.25
OUTCOMES: Final = 20  # the writes the accepted share is read over
RELEASE: Final = 4.0  # let go once the level is this many times the rate last refused
JITTER: Final = 0.1  # the owed IDs of a refused write vary by this share either way
MIN_RATE: Final = 1.0  # IDs per second: the floor of a rate cut again and again
# A 429 does not use up an attempt while the server accepted a write of this client in the last
# PROGRESS_WINDOW seconds, or while its 429s began less than that long ago (spec §7).
PROGRESS_WINDOW: Final = 60.0  # seconds
# A change of the rate by this factor or more since the last INFO line makes a new one.
_LARGE_STEP: Final = 2.0
# A hair of debt left by float rounding is no debt: sleeping 1e-17 s would spin.
_EPSILON_IDS: Final = 1e-6
_GRANTS: Final = 256  # recent grants kept to look up the rate a write went out at

_UNPACED: Final = 0
_CLIMB: Final = 1
_PACED: Final = 2


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
        rand: Callable[[], float] | None = None,
        hold: float = HOLD,
        jump_hold: float = JUMP_HOLD,
    ) -> None:
        self.cap = check_max_ids_per_second(max_ids_per_second)
        self._clock = clock
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._rand = rand if rand is not None else random.Random().random
        self._hold_base = hold
        self._jump_hold = jump_hold
        now = clock()
        self._mode = _UNPACED
        self._level = 0.0  # the rate the server is known to take (paced), or the climb's rate
        # Paced: the rate tried from _hold_until on, and what came of it so far.
        self._probe = 0.0
        self._hold_until = math.inf
        self._probe_accepts = 0
        self._failures = 0  # probes refused since the last one that held
        self._step = STEP
        self._refused_rate = 0.0  # the rate the last reading found too high
        # Climb: the rate it climbs back to and the rates accepted on the way.
        self._target = 0.0
        self._climbed: list[float] = []
        self._skipped = 0  # 429s forgiven on the way
        self._gentle = False  # a climb after a Retry-After
        self._tokens = 0.0  # may be negative: what the last writes borrowed
        self._stamp = now  # when _tokens was last brought up to date
        self._last_cut = -math.inf
        self._since_cut = 0  # writes accepted that went out after the last reading
        self._first_write: float | None = None
        self._last_accepted = -math.inf
        self._refused_from: float | None = None  # the first 429 since the last accepted write
        self._accepted: deque[tuple[float, int]] = deque()  # (time, IDs) over MEMORY
        self._outcomes: deque[bool] = deque(maxlen=OUTCOMES)
        # (time, learned rate, whether the write waited for its turn) of recent grants.
        self._grants: deque[tuple[float, float, bool]] = deque(maxlen=_GRANTS)
        self._lock = asyncio.Lock()
        self._raised: asyncio.Future[None] | None = None  # resolved when the rate goes up
        self._logged: float | None = None  # the rate of the last INFO line
        self.throttled_writes = 0  # writes answered 429
        self.peak_rate: float | None = None  # the highest learned rate paced at, IDs per second

    # -- reading -----------------------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        """The rate writes are paced at now, in IDs per second; None when they are not paced."""
        learned = self._learned(self._clock())
        cap = self.cap
        if learned is None:
            return cap
        return learned if cap is None else min(learned, cap)

    def now(self) -> float:
        """The budget's clock (a test's skipped waits included)."""
        return self._clock()

    def making_progress(self, began: float) -> bool:
        """Whether a 429 of a call that began at ``began`` should leave its attempts alone.

        True while the server accepted a write of this client since the call began or within
        ``PROGRESS_WINDOW``, and while this client's 429s began less than that long ago: a
        client that shares a limit may wait a while for its first write to get through.
        """
        now = self._clock()
        if self._last_accepted >= min(began, now - PROGRESS_WINDOW):
            return True
        refused = self._refused_from
        return refused is None or now - refused < PROGRESS_WINDOW

    def describe(self) -> str:
        """The budget for a message: its rate and the writes throttled so far."""
        rate = self.rate
        shown = "not paced" if rate is None else f"{rate:,.0f} IDs/s"
        return f"{shown}, {self.throttled_writes} writes of this client throttled so far"

    def _learned(self, now: float) -> float | None:
        if self._mode == _UNPACED:
            return None
        if self._mode == _PACED and now >= self._hold_until:
            return self._probe
        return self._level

    # -- the three hooks ---------------------------------------------------------------------

    async def acquire(self, cost: int) -> float:
        """Wait until ``cost`` IDs may go out, take them, and return the clock time they did.

        Cancellation-safe: a waiter cancelled before its turn takes nothing.
        """
        now = self._clock()
        if self._first_write is None:
            self._first_write = now
        if self._mode == _UNPACED and self.cap is None and not self._lock.locked():
            # Not paced: no await at all, so an unthrottled upload pays nothing here.
            return now
        waited = False
        async with self._lock:
            while True:
                now = self._clock()
                rate = self.rate
                if rate is None:
                    return now
                self._refill(now, rate)
                wait = -self._tokens / rate if self._tokens < -_EPSILON_IDS else 0.0
                if wait <= 0:
                    self._tokens -= max(cost, 0)
                    learned = self._learned(now)
                    self._grants.append((now, rate if learned is None else learned, waited))
                    return now
                waited = True
                if self._mode == _PACED and now < self._hold_until:
                    # A probe starting meanwhile raises the rate: look again then.
                    wait = min(wait, self._hold_until - now + 1e-3)
                await self._wait(wait)

    def throttled(
        self, cost: int, retry_after: float | None, sent_at: float, *, learn: bool = True
    ) -> None:
        """A write of ``cost`` IDs that went out at ``sent_at`` was answered 429.

        ``retry_after`` is the wait the client honours for it (seconds), or None. With
        ``learn=False`` (the client refused to wait that long: the call ends) the 429 is only
        counted: the rate stays as it was and no other write waits for it.
        """
        now = self._clock()
        self.throttled_writes += 1
        if not learn:
            return
        self._outcomes.append(False)
        if self._refused_from is None or self._last_accepted > self._refused_from:
            self._refused_from = now
        if sent_at < self._last_cut:
            return  # sent at the old rate: the reading already made covers it
        before = self.rate
        if before is not None:
            self._refill(now, before)
        self._forget(now)
        sent_rate, held = self._grant(sent_at) if self._mode != _UNPACED else (None, False)
        pause = retry_after if retry_after is not None and retry_after > 0 else 0.0
        since = max(self._first_write if self._first_write is not None else now, now - WINDOW)
        taken = sum(ids for at, ids in self._accepted if at >= since)
        # Had the server taken this write too, it would have allowed this much. The first time,
        # the span ends when the refused write went out (its answer's delay is not the
        # server's refill); later the reading's own time is the better end.
        end = sent_at if self._mode == _UNPACED else now
        estimate = (taken + cost) / max(end + pause - since, BURST_SPAN)
        losing = self._share() < COMPETE
        floor = cost / NEWCOMER if losing or not taken else MIN_RATE
        owed = float(max(cost, 0))
        if self._mode == _UNPACED or (
            self._mode == _PACED
            and sent_rate is not None
            and not held
            and sent_at < self._hold_until
            and self._since_cut > 0
        ):
            # The first 429, or one of a write the pacing did not hold back.
            level = NEAR * estimate if taken else floor
            if self._mode == _PACED:
                level = self._level
            if self.cap is not None:
                level = min(level, self.cap)
            if taken:
                # What the server was taking, or more: a climb that gets there was noise.
                seen = taken / max(now - since, now - sent_at, 1e-3)
                self._start_climb(level, max(seen, CLIMB * level), gentle=pause > 0)
                if pause == 0:
                    owed = 0.0  # goes again at once: a 429 not followed by another is noise
            else:
                self._pace_at(level, now)
        elif self._mode == _CLIMB:
            good = [rate for rate in self._climbed if sent_rate is None or rate < sent_rate]
            level = max(good) if good else self._climbed[0]
            if (
                not self._gentle
                and self._skipped < SKIPS
                and sent_rate is not None
                and sent_rate < self._target
            ):
                # A 429 or two on the way back are forgiven; the climb goes on from what held.
                self._skipped += 1
                self._level = level
                self._climbed = [rate for rate in self._climbed if rate <= level]
            else:
                self._pace_at(level, now)
        elif sent_rate is not None and sent_rate > self._level and sent_at >= self._hold_until:
            # A probe found the limit: back to the level that held, and probe later.
            self._refused_rate = sent_rate
            self._failures += 1
            self._schedule_probe(now)
        elif not losing:
            # Refused at a rate the server took before, while it still takes a fair share of
            # this client's writes: another client competes for the same limit. Keep the level,
            # and while the other takes a good part, try at least as often as a newcomer does:
            # the server gives each refill to whoever comes first, so clients that try equally
            # often share equally.
            if self._share() < SHARED:
                self._level = max(self._level, cost / NEWCOMER)
        else:
            level = max(min(0.9 * self._level, estimate), min(floor, self._level))
            self._refused_rate = self._level
            self._level = max(MIN_RATE, level)
            self._failures = 0
            self._step = STEP
            self._schedule_probe(now)
        self._last_cut = now
        self._since_cut = 0
        self._stamp = max(self._stamp, now)
        if sent_rate is not None:
            self._tokens += max(cost, 0)  # its IDs are owed again below, not twice
        owed *= 1.0 + JITTER * (2.0 * self._rand() - 1.0)
        self._tokens = min(self._tokens, 0.0) - owed
        self._log_step(before, "after a 429")

    def succeeded(self, cost: int, sent_at: float) -> None:
        """A write of ``cost`` IDs that went out at ``sent_at`` was accepted."""
        now = self._clock()
        self._last_accepted = now
        self._outcomes.append(True)
        self._accepted.append((now, cost))
        self._forget(now)
        if sent_at < self._last_cut:
            return
        self._since_cut += 1
        if self._mode == _UNPACED:
            return
        sent_rate, _ = self._grant(sent_at)
        if sent_rate is None:
            return
        before = self.rate
        if self._mode == _CLIMB:
            if sent_rate >= self._target:
                self._release(now, before, "released: the 429 was not followed by more")
                return
            top = self._climbed[-1]
            if sent_rate >= top * 0.999:
                self._level = min(self._target, top * (GENTLE if self._gentle else CLIMB))
                self._climbed.append(self._level)
                self._rate_raised(now, before, log=False)  # its end is logged, not each step
            return
        if now < self._hold_until or sent_rate < self._probe * 0.999:
            return
        self._probe_accepts += 1
        if self._probe_accepts < CONFIRM:
            return
        self._level = self._probe
        self._failures = 0
        self._step = min(STEP_MAX, 2.0 * self._step)
        if self.peak_rate is None or self._level > self.peak_rate:
            self.peak_rate = self._level
        if self._level > RELEASE * self._refused_rate:
            self._release(now, before, "released, far above the rate last refused")
            return
        self._schedule_probe(now, hold=0.0)
        self._rate_raised(now, before)

    # -- internals ---------------------------------------------------------------------------

    def _start_climb(self, level: float, target: float, *, gentle: bool) -> None:
        self._mode = _CLIMB
        self._level = max(MIN_RATE, level)
        self._target = target
        self._climbed = [self._level]
        self._skipped = 0
        self._gentle = gentle
        self._hold_until = math.inf

    def _pace_at(self, level: float, now: float) -> None:
        self._mode = _PACED
        self._level = max(MIN_RATE, level)
        self._refused_rate = self._level
        self._failures = 0
        self._step = STEP
        if self.peak_rate is None or self._level > self.peak_rate:
            self.peak_rate = self._level
        self._schedule_probe(now)

    def _schedule_probe(self, now: float, hold: float | None = None) -> None:
        """Set the next probe: ``STEP`` above the level, or back to the best rate taken."""
        best = self._best()
        jump = NEAR * best > 2.0 * self._level
        if jump:
            self._probe = NEAR * best
            self._step = STEP
        else:
            self._probe = self._level * (1.0 + self._step)
        if hold is None:
            base = self._jump_hold if jump else self._hold_base
            hold = min(HOLD_MAX, base * 2.0**self._failures)
            hold *= 1.0 + HOLD_JITTER * (2.0 * self._rand() - 1.0)
        self._hold_until = now + hold
        self._probe_accepts = 0

    def _release(self, now: float, before: float | None, why: str) -> None:
        self._mode = _UNPACED
        self._hold_until = math.inf
        self._tokens = 0.0
        self._wake()
        self._log_step(before, why)

    def _rate_raised(self, now: float, before: float | None, *, log: bool = True) -> None:
        rate = self.rate
        if before is not None and rate is not None and rate > before:
            # What the writes borrowed at the old rate is paid back faster from now on.
            self._refill(now, before)
            self._wake()
        if log:
            self._log_step(before, "grown back")

    def _share(self) -> float:
        """The share of this client's recent writes the server accepted."""
        outcomes = self._outcomes
        return sum(outcomes) / len(outcomes) if outcomes else 1.0

    def _best(self) -> float:
        """The most IDs per second accepted over any ``SUSTAIN`` seconds of the memory (over
        the time there was, when that is shorter, but never less than ``BURST_SPAN``)."""
        entries = self._accepted
        if not entries:
            return 0.0
        best = total = 0
        low = 0
        for at, ids in entries:
            total += ids
            while entries[low][0] <= at - SUSTAIN:
                total -= entries[low][1]
                low += 1
            best = max(best, total)
        covered = entries[-1][0] - entries[0][0]
        return best / min(SUSTAIN, max(covered, BURST_SPAN))

    def _grant(self, sent_at: float) -> tuple[float | None, bool]:
        """The learned rate a write that went out at ``sent_at`` took its IDs at, and whether
        it waited for its turn (None: it went out unpaced)."""
        for at, rate, waited in reversed(self._grants):
            if at <= sent_at:
                return (rate, waited) if at == sent_at else (None, False)
        return None, False

    def _refill(self, now: float, rate: float) -> None:
        if now > self._stamp:
            if self._tokens < 0:
                self._tokens = min(0.0, self._tokens + (now - self._stamp) * rate)
            self._stamp = now

    def _forget(self, now: float) -> None:
        horizon = now - MEMORY
        accepted = self._accepted
        while accepted and accepted[0][0] < horizon:
            accepted.popleft()

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the rate goes up meanwhile."""
        raised = self._raised
        if raised is None or raised.done():
            raised = self._raised = asyncio.get_running_loop().create_future()
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait((sleeper, raised), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sleeper.done():
                sleeper.cancel()
                # Let it unwind now: a cancelled waiter leaves no task behind.
                await asyncio.gather(sleeper, return_exceptions=True)

    def _wake(self) -> None:
        raised = self._raised
        if raised is not None and not raised.done():
            raised.set_result(None)
        self._raised = None

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
