"""Rate-limited uploads in virtual time: clients with their own ``RateBudget`` against one server.

The server is a token bucket as the fake meters (and Batch documents for mass updates): ``rate``
IDs per second, ``burst`` IDs, a write costing more than the burst going when the bucket is
full. It can change its rate on a schedule, answer a share of writes 429 at random, or answer
the Nth write 429; it serves one request at a time (``service`` seconds each), as the fake's
single event loop does. Each client writes its IDs in 10,000-ID requests, ``concurrency`` at
once, retrying as ``Session.send`` does with a budget: a 429 waits its Retry-After (given up
past ``max_retry_after``, which then teaches the budget nothing) or, without one, what the
budget says; a 429 uses up an attempt only when ``RateBudget.making_progress`` says so.

The event loop's clock jumps from timer to timer: seconds of traffic take milliseconds, and a
run is deterministic for its seed.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from batch_audience._ratebudget import RateBudget


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


def run_virtual(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@dataclass
class Server:
    """A token bucket in IDs per second (``rate`` None: no limit) with injected 429s."""

    rate: float | None
    burst: int = 10_000
    retry_after: bool = True
    # (seconds from the first request, new rate) steps, in order.
    schedule: Sequence[tuple[float, float]] = ()
    random_429: float = 0.0  # share of writes answered 429 at random (no Retry-After)
    nth_429: int | None = None  # this write (1-based) is answered 429 (no Retry-After)
    service: float = 0.008  # seconds of server time per request
    network: float = 0.001  # seconds each way
    jitter: float = 0.002  # up to this many seconds more each way, at random
    seed: int = 0
    writes: int = 0
    throttled: int = 0
    accepted: int = 0  # IDs
    _tokens: float = 0.0
    _stamp: float | None = None
    _start: float | None = None
    _free: float = 0.0
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._tokens = float(self.burst)

    def rate_at(self, when: float) -> float | None:
        """The limit in force at clock time ``when``."""
        rate = self.rate
        start = self._start if self._start is not None else when
        for at, changed in self.schedule:
            if when >= start + at:
                rate = changed
        return rate

    def _refill(self, now: float) -> None:
        if self._stamp is None:
            self._stamp = now
            return
        # Integrate the rate over (stamp, now], across the schedule's steps.
        assert self._start is not None
        edges = sorted(
            {self._stamp, now}
            | {self._start + at for at, _ in self.schedule if self._stamp < self._start + at < now}
        )
        for low, high in itertools.pairwise(edges):
            rate = self.rate_at(low)
            if rate is not None:
                self._tokens = min(float(self.burst), self._tokens + (high - low) * rate)
        self._stamp = now

    def decide(self, cost: int, now: float) -> tuple[bool, float | None]:
        """Whether a write of ``cost`` IDs processed at ``now`` is accepted, and its Retry-After."""
        if self._start is None:
            self._start = now
        self.writes += 1
        if self.nth_429 is not None and self.writes == self.nth_429:
            self.throttled += 1
            return False, None
        if self.random_429 and self._rng.random() < self.random_429:
            self.throttled += 1
            return False, None
        rate = self.rate_at(now)
        if rate is None:
            self.accepted += cost
            return True, None
        self._refill(now)
        needed = min(cost, self.burst)
        if self._tokens >= needed:
            self._tokens -= cost
            self.accepted += cost
            return True, None
        self.throttled += 1
        if not self.retry_after:
            return False, None
        return False, float(max(1, math.ceil((needed - self._tokens) / rate)))

    async def request(self, cost: int) -> tuple[bool, float | None]:
        """One write over the network: processed in arrival order, one at a time."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.network + self.jitter * self._rng.random())
        start = max(loop.time(), self._free)
        self._free = start + self.service
        answer = self.decide(cost, start)
        await asyncio.sleep(
            self._free - loop.time() + self.network + self.jitter * self._rng.random()
        )
        return answer


class GaveUp(Exception):
    """A write ran out of attempts (429s while nothing of the client was accepted)."""


@dataclass
class Client:
    """One client: its own budget, its uploads' writes retried as ``Session.send`` does."""

    server: Server
    budget: RateBudget
    max_attempts: int = 6
    max_retry_after: float = 120.0
    deadline: float = 300.0
    produce: float = 0.004  # seconds of client CPU to encode one chunk
    throttled: int = 0
    writes: int = 0
    finished: float | None = None
    failed: BaseException | None = None

    async def write(self, cost: int) -> None:
        """One write, retried until accepted or out of attempts."""
        budget = self.budget
        loop = asyncio.get_running_loop()
        began = loop.time()
        counted = 0
        while True:
            try:
                async with asyncio.timeout(max(0.0, began + self.deadline - loop.time())):
                    sent = await budget.acquire(cost)
            except TimeoutError:
                raise GaveUp("deadline") from None
            self.writes += 1
            accepted, retry_after = await self.server.request(cost)
            if accepted:
                budget.succeeded(cost, sent)
                return
            self.throttled += 1
            counted += 1
            refused = retry_after is not None and retry_after > self.max_retry_after
            budget.throttled(cost, None if refused else retry_after, sent, learn=not refused)
            if budget.making_progress(began):
                counted -= 1
            if counted >= self.max_attempts:
                raise GaveUp(f"{counted} attempts")
            if refused:
                raise GaveUp(f"Retry-After {retry_after}")
            if retry_after is not None:
                await asyncio.sleep(retry_after)

    async def upload(self, ids: int, *, chunk: int = 10_000, concurrency: int = 4) -> None:
        """``ids`` IDs in ``chunk``-ID writes, ``concurrency`` at once; records when it ended."""
        slots = asyncio.Semaphore(concurrency)
        sizes = [chunk] * (ids // chunk) + ([ids % chunk] if ids % chunk else [])
        produced = asyncio.Lock()

        async def one(cost: int) -> None:
            async with slots:
                # The encoder makes one chunk at a time: chunks reach the sender one by one.
                async with produced:
                    await asyncio.sleep(self.produce)
                await self.write(cost)

        try:
            await asyncio.gather(*(one(size) for size in sizes))
        except GaveUp as exc:
            self.failed = exc
        self.finished = asyncio.get_running_loop().time()


def budget_on_loop(seed: int = 0, **kwargs: Any) -> RateBudget:
    """A budget on the running loop's (virtual) clock, its random draws seeded."""
    return RateBudget(
        clock=asyncio.get_running_loop().time, rand=random.Random(seed).random, **kwargs
    )


@dataclass
class Outcome:
    """One simulated run: when each client finished, and the server's counts."""

    elapsed: float
    finished: list[float]
    failed: list[BaseException | None]
    writes: int
    throttled: int
    accepted: int


async def run(
    server: Server,
    uploads: Sequence[Sequence[int]],
    *,
    starts: Sequence[float] | None = None,
    budget_kwargs: dict[str, Any] | None = None,
) -> Outcome:
    """Clients (one per item of ``uploads``, each running its uploads at once) on one server."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    clients = [
        Client(server, budget_on_loop(seed=1_000 * server.seed + k, **(budget_kwargs or {})))
        for k in range(len(uploads))
    ]

    async def drive(client: Client, sizes: Sequence[int], delay: float) -> None:
        await asyncio.sleep(delay)
        await asyncio.gather(*(client.upload(n) for n in sizes))

    await asyncio.gather(
        *(
            drive(client, sizes, 0.0 if starts is None else starts[k])
            for k, (client, sizes) in enumerate(zip(clients, uploads, strict=True))
        )
    )
    return Outcome(
        elapsed=loop.time() - began,
        finished=[(c.finished or 0.0) - began for c in clients],
        failed=[c.failed for c in clients],
        writes=server.writes,
        throttled=server.throttled,
        accepted=server.accepted,
    )


def simulate(server: Server, uploads: Sequence[Sequence[int]], **kwargs: Any) -> Outcome:
    """``run`` on a fresh virtual-time loop."""
    return run_virtual(run(server, uploads, **kwargs))  # type: ignore[no-any-return]


def allowed_time(server: Server, ids: int) -> float:
    """The least time the limit allows for ``ids`` IDs: when burst plus refill reaches them."""
    assert server.rate is not None
    left = ids - server.burst
    t = 0.0
    steps = [(0.0, server.rate), *server.schedule]
    for k, (at, rate) in enumerate(steps):
        end = steps[k + 1][0] if k + 1 < len(steps) else math.inf
        span = end - at
        if left <= rate * span:
            return t + left / rate
        left -= rate * span
        t += span
    return t
