"""Watches indexing tokens until Batch reports them APPLIED or REPLACED (spec §2.4).

Polling is kept apart from request retries (STYLE §11): each view call retries through the
session under the RetryPolicy; the intervals between rounds follow the PollPolicy; one
deadline bounds the whole wait.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final

import attrs

from ._config import PollPolicy
from ._endpoints import Endpoints
from ._exceptions import IndexingTimeout, ValidationError
from ._models import DONE_STATES, IndexingState
from ._session import Session
from ._tracing import span

__all__ = ["wait_applied"]

StateMap = dict[str, IndexingState | str]

# Seconds a poll sent at (or just before) the deadline has to answer, at most: without it the
# last poll, the one at the deadline, would have no time at all.
LAST_POLL_TIME: Final = 5.0


def _state_of(data: object) -> IndexingState | str:
    raw = data.get("indexing_state") if isinstance(data, Mapping) else None
    if not isinstance(raw, str):
        return "UNKNOWN"
    try:
        return IndexingState(raw)
    except ValueError:
        return raw


def _tokens(tokens: str | Iterable[str]) -> list[str]:
    items = [tokens] if isinstance(tokens, str) else list(tokens)
    for token in items:
        if not isinstance(token, str) or not token:
            raise ValidationError(f"indexing tokens must be non-empty strings, got {token!r}")
    return list(dict.fromkeys(items))


async def wait_applied(
    *,
    session: Session,
    endpoints: Endpoints,
    name: str,
    tokens: str | Iterable[str],
    policy: PollPolicy,
    rand: Callable[[], float],
    timeout: float | None = None,
    interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> StateMap:
    """Poll view for each token until all are APPLIED or REPLACED; return the final states.

    The last poll is sent at the deadline: a wait shorter than the next interval is cut to end
    there. Any state other than APPLIED and REPLACED (IN_PROGRESS, IN_PROCESS, unknown ones)
    counts as not finished. Raises IndexingTimeout, carrying the last known state of every
    token, when that poll still finds some unfinished (or when a poll cannot answer in time).
    """
    pending = _tokens(tokens)
    if timeout is not None:
        policy = attrs.evolve(policy, timeout=timeout)
    if interval is not None:
        # A fixed interval: no growth.
        policy = attrs.evolve(policy, initial=interval, factor=1.0, max_interval=interval)
    routes = {token: endpoints.view(name, token) for token in pending}
    states: StateMap = {token: IndexingState.IN_PROGRESS for token in pending}
    deadline = clock() + policy.timeout
    # A poll near the deadline still gets this long to answer.
    floor = min(LAST_POLL_TIME, policy.timeout)
    poll = 0
    last = False

    async def check(token: str, budget: float) -> None:
        retry = attrs.evolve(session.retry, deadline=budget)
        response = await session.send(routes[token], retry=retry)
        states[token] = _state_of(response.data)

    def timed_out() -> IndexingTimeout:
        return IndexingTimeout(
            f"indexing of audience {name!r} did not finish within {policy.timeout:g} s", states
        )

    while pending:
        poll += 1
        budget = max(floor, deadline - clock())
        round_timeout = asyncio.timeout(budget)
        try:
            with span("batch_audience.poll", {"batch_audience.tokens": len(pending)}):
                async with round_timeout:
                    await _all(functools.partial(check, budget=budget), pending)
        except TimeoutError:
            if round_timeout.expired():
                raise timed_out() from None
            raise
        pending = [t for t in pending if states[t] not in DONE_STATES]
        if not pending:
            break
        remaining = deadline - clock()
        if last or remaining <= 0:
            raise timed_out()
        delay = policy.interval(poll)
        if policy.jitter:
            delay *= 0.5 + rand() / 2
        if delay >= remaining:
            # One more poll, at the deadline itself, rather than giving up before it.
            delay = remaining
            last = True
        await session.wait(delay)
    return states


async def _all(check: Callable[[str], Coroutine[Any, Any, None]], tokens: list[str]) -> None:
    """Run check for every token at once (the session bounds what is in flight)."""
    try:
        async with asyncio.TaskGroup() as group:
            for token in tokens:
                group.create_task(check(token))
    except BaseExceptionGroup as failures:
        # Surface the first failure of a view call as itself, not as an ExceptionGroup.
        raise failures.exceptions[0] from None
