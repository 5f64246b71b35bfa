"""Frozen configuration: request retries, indexing polls, limits and timeouts."""

from __future__ import annotations

import math
from typing import Any, Final

import attrs

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "Limits",
    "PollPolicy",
    "RetryPolicy",
    "Timeouts",
]

DEFAULT_BASE_URL: Final = "https://api.batch.com"
DEFAULT_API_VERSION: Final = "2.8"

# spec §7: base 0.5 s, factor 2, cap 30 s, at most 6 attempts.
DEFAULT_RETRY_BASE: Final = 0.5  # seconds
DEFAULT_RETRY_FACTOR: Final = 2.0
DEFAULT_RETRY_CAP: Final = 30.0  # seconds
DEFAULT_MAX_ATTEMPTS: Final = 6
DEFAULT_CALL_DEADLINE: Final = 300.0  # seconds, all attempts and waits of one call

DEFAULT_POLL_INITIAL: Final = 0.5  # seconds
DEFAULT_POLL_FACTOR: Final = 1.5
DEFAULT_POLL_MAX: Final = 10.0  # seconds
DEFAULT_POLL_TIMEOUT: Final = 600.0  # seconds

DEFAULT_MAX_IN_FLIGHT: Final = 8  # requests
DEFAULT_CONNECT_TIMEOUT: Final = 10.0  # seconds
DEFAULT_TOTAL_TIMEOUT: Final = 60.0  # seconds, one attempt of one request


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _optional_positive(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _positive(_, attribute, value)


def _at_least_one(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and value >= 1):
        raise ValueError(f"{attribute.name} must be >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How one request is retried: full-jitter exponential backoff, bounded in attempts and time.

    Retried: 429, 500, 502, 503, 504, connection failures and timeouts (spec §7); other 5xx
    are not. A Retry-After header replaces the computed wait of that attempt. ``deadline``
    bounds the whole call, attempts and waits included: each attempt's timeout is cut to the
    time left, and a wait that would reach the deadline is not started.
    """

    max_attempts: int = attrs.field(default=DEFAULT_MAX_ATTEMPTS, validator=_at_least_one)
    base: float = attrs.field(default=DEFAULT_RETRY_BASE, validator=_non_negative)  # seconds
    factor: float = attrs.field(default=DEFAULT_RETRY_FACTOR, validator=_at_least_one)
    cap: float = attrs.field(default=DEFAULT_RETRY_CAP, validator=_non_negative)  # seconds
    jitter: bool = True  # full jitter: each wait drawn uniformly from [0, computed]
    deadline: float | None = attrs.field(
        default=DEFAULT_CALL_DEADLINE, validator=_optional_positive
    )  # seconds
    # The longest Retry-After honoured; a server asking for more ends the retries.
    max_retry_after: float = attrs.field(default=120.0, validator=_non_negative)  # seconds

    def backoff(self, retry: int) -> float:
        """The un-jittered wait before retry number ``retry`` (1-based), in seconds."""
        return float(min(self.cap, self.base * self.factor ** (retry - 1)))


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How indexing is watched: growing, jittered intervals and one deadline for the whole wait."""

    initial: float = attrs.field(default=DEFAULT_POLL_INITIAL, validator=_non_negative)  # seconds
    factor: float = attrs.field(default=DEFAULT_POLL_FACTOR, validator=_at_least_one)
    max_interval: float = attrs.field(default=DEFAULT_POLL_MAX, validator=_non_negative)  # seconds
    jitter: bool = True  # each interval drawn from [interval / 2, interval]
    timeout: float = attrs.field(default=DEFAULT_POLL_TIMEOUT, validator=_positive)  # seconds

    def interval(self, poll: int) -> float:
        """The un-jittered wait after poll number ``poll`` (1-based), in seconds."""
        return float(min(self.max_interval, self.initial * self.factor ** (poll - 1)))


@attrs.frozen(kw_only=True)
class Limits:
    """How many requests one client has in flight at once; the connector pool is sized to match."""

    max_in_flight: int = attrs.field(default=DEFAULT_MAX_IN_FLIGHT, validator=_at_least_one)


@attrs.frozen(kw_only=True)
class Timeouts:
    """Per-attempt timeouts in seconds: ``connect`` for a connection, ``total`` for one request."""

    connect: float | None = attrs.field(
        default=DEFAULT_CONNECT_TIMEOUT, validator=_optional_positive
    )  # seconds
    total: float | None = attrs.field(
        default=DEFAULT_TOTAL_TIMEOUT, validator=_optional_positive
    )  # seconds
