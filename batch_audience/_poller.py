"""Watches indexing tokens until Batch reports them APPLIED or REPLACED (spec §2.4).

Polling is kept apart from request retries (STYLE §11): each view call retries through the
session under the RetryPolicy; the intervals between rounds follow the PollPolicy; one
deadline bounds the whole wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import attrs

from ._config import PollPolicy
from ._endpoints import Endpoints
from ._exceptions import IndexingTimeout, ValidationError
from ._models import DONE_STATES, IndexingState
from ._session import Session
from ._tracing import span

__all__ = ["wait_applied"]

StateMap = dict[str, IndexingState | str]


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
) -> StateMap:
    """Poll view for each token until all are APPLIED or REPLACED; return the final states.

    Raises IndexingTimeout, carrying the last known state of every token, at the deadline.
    """
    pending = _tokens(tokens)
    if timeout is not None:
        policy = attrs.evolve(policy, timeout=timeout)
    if interval is not None:
        # A fixed interval: no growth.
        policy = attrs.evolve(policy, initial=interval, factor=1.0, max_interval=interval)
    routes = {token: endpoints.view(name, token) for token in pending}
    states: StateMap = {token: IndexingState.IN_PROGRESS for token in pending}
    deadline = time.monotonic() + policy.timeout
    poll = 0

    async def check(token: str) -> None:
        remaining = max(0.001, deadline - time.monotonic())
        retry = attrs.evolve(session.retry, deadline=remaining)
        response = await session.send(routes[token], retry=retry)
        states[token] = _state_of(response.data)

    def timed_out() -> IndexingTimeout:
        return IndexingTimeout(
            f"indexing of audience {name!r} did not finish within {policy.timeout:g} s", states
        )

    while pending:
        poll += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timed_out()
        round_timeout = asyncio.timeout(remaining)
        try:
            with span("batch_audience.poll", {"batch_audience.tokens": len(pending)}):
                async with round_timeout:
                    await _all(check, pending)
        except TimeoutError:
            if round_timeout.expired():
                raise timed_out() from None
            raise
        pending = [t for t in pending if states[t] not in DONE_STATES]
        if not pending:
            break
        delay = policy.interval(poll)
        if policy.jitter:
            delay *= 0.5 + rand() / 2
        if time.monotonic() + delay > deadline:
            raise timed_out()
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
