"""Frozen policies: defaults, validation and the backoff schedule."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import pytest

import batch_audience as ba
from batch_audience._session import parse_retry_after


def test_retry_defaults_follow_the_spec() -> None:
    """Base 0.5 s, factor 2, cap 30 s, at most 6 attempts (spec §7)."""
    policy = ba.RetryPolicy()
    assert (policy.base, policy.factor, policy.cap, policy.max_attempts) == (0.5, 2.0, 30.0, 6)
    assert [policy.backoff(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_poll_intervals_grow_to_their_cap() -> None:
    """Poll intervals grow x1.5 from 0.5 s up to 10 s."""
    policy = ba.PollPolicy()
    assert [round(policy.interval(n), 4) for n in (1, 2, 3, 4)] == [0.5, 0.75, 1.125, 1.6875]
    assert policy.interval(50) == 10.0


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: ba.RetryPolicy(max_attempts=0), id="attempts-0"),
        pytest.param(lambda: ba.RetryPolicy(base=-1), id="negative-base"),
        pytest.param(lambda: ba.RetryPolicy(deadline=0), id="zero-deadline"),
        pytest.param(lambda: ba.RetryPolicy(cap=float("nan")), id="nan-cap"),
        pytest.param(lambda: ba.PollPolicy(timeout=0), id="poll-timeout-0"),
        pytest.param(lambda: ba.Limits(max_in_flight=0), id="in-flight-0"),
        pytest.param(lambda: ba.Timeouts(total=-1), id="negative-timeout"),
    ],
)
def test_meaningless_values_are_rejected(make: object) -> None:
    """Policies refuse values that cannot work, naming the field."""
    with pytest.raises(ValueError, match=r"must be"):
        make()  # type: ignore[operator]


def test_policies_are_frozen_and_evolvable() -> None:
    """Policies are immutable; attrs.evolve gives a changed copy."""
    policy = ba.RetryPolicy()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.base = 1  # type: ignore[misc]
    assert attrs.evolve(policy, max_attempts=2).max_attempts == 2


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("3", 3.0, id="seconds"),
        pytest.param(" 1.5 ", 1.5, id="fractional"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("-4", None, id="negative-is-absent"),
        pytest.param("Wed, 21 Oct 2026 07:28:10 GMT", 10.0, id="http-date"),
        pytest.param("Wed, 21 Oct 2026 07:28:00 GMT", 0.0, id="http-date-now"),
        pytest.param("Wed, 21 Oct 2026 07:27:00 GMT", None, id="http-date-past-is-absent"),
        pytest.param("inf", None, id="infinite"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
        pytest.param("nan", None, id="nan"),
    ],
)
def test_retry_after_in_seconds_and_http_date(header: str | None, expected: float | None) -> None:
    """Retry-After is read in delta-seconds and HTTP-date forms; garbage and the past are none."""
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=lambda: now) == expected
