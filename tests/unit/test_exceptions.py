"""The error tree, the status registry and lenient error-body parsing."""

from __future__ import annotations

import pickle

import pytest

import batch_audience as ba
from batch_audience._exceptions import parse_error_body


@pytest.mark.parametrize(
    ("status", "klass"),
    [
        pytest.param(400, ba.BadRequestError, id="400"),
        pytest.param(401, ba.AuthenticationError, id="401"),
        pytest.param(403, ba.ForbiddenError, id="403"),
        pytest.param(404, ba.NotFoundError, id="404"),
        pytest.param(429, ba.RateLimitError, id="429"),
        pytest.param(500, ba.ServerError, id="500"),
        pytest.param(502, ba.ServerError, id="502"),
        pytest.param(504, ba.ServerError, id="504"),
        pytest.param(503, ba.MaintenanceError, id="503"),
        pytest.param(418, ba.ApiError, id="418-fallback"),
    ],
)
def test_from_response_picks_the_class_for_the_status(
    status: int, klass: type[ba.ApiError]
) -> None:
    """ApiError.from_response looks the class up by HTTP status and falls back to ApiError."""
    err = ba.ApiError.from_response(status, b'{"error_code": "X", "error_message": "m"}')
    assert type(err) is klass
    assert err.status == status
    assert isinstance(err, ba.BatchAudienceError)


@pytest.mark.parametrize(
    ("klass", "retriable"),
    [
        (ba.BadRequestError, False),
        (ba.AuthenticationError, False),
        (ba.ForbiddenError, False),
        (ba.NotFoundError, False),
        (ba.RateLimitError, True),
        (ba.ServerError, True),
        (ba.MaintenanceError, True),
        (ba.ConnectError, True),
        (ba.RequestTimeout, True),
        (ba.ValidationError, False),
    ],
)
def test_retriable_by_class(klass: type[ba.BatchAudienceError], retriable: bool) -> None:
    """The class default: 429, the common 5xx and transport failures are retriable."""
    assert klass.retriable is retriable


@pytest.mark.parametrize(
    ("status", "retriable"),
    [
        *[pytest.param(s, True, id=str(s)) for s in (429, 500, 502, 503, 504)],
        *[
            pytest.param(s, False, id=str(s))
            for s in (400, 401, 403, 404, 409, 418, 501, 505, 506, 507, 508, 511, 599)
        ],
    ],
)
def test_retriable_follows_the_status(status: int, retriable: bool) -> None:
    """Spec §7: only 429, 500, 502, 503 and 504 are retried; 501, 505, 507 ... are not."""
    err = ba.ApiError.from_response(status, b"{}")
    assert err.retriable is retriable
    assert pickle.loads(pickle.dumps(err)).retriable is retriable
    assert type(err)(status).retriable is retriable


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b'{"error_code": "MALFORMED_PARAMETER", "error_message": "bad"}',
            ("MALFORMED_PARAMETER", 31, "bad"),
            id="spec-shape",
        ),
        pytest.param(
            b'{"code": "AUTHENTICATION_INVALID", "message": "no"}',
            ("AUTHENTICATION_INVALID", 10, "no"),
            id="code-message-keys",
        ),
        pytest.param(
            b'{"code": 31, "message": "num"}', ("MALFORMED_PARAMETER", 31, "num"), id="numeric-code"
        ),
        pytest.param(b'{"error_code": "32"}', ("MALFORMED_JSON_BODY", 32, ""), id="numeric-string"),
        pytest.param(b'{"error_code": 999}', ("999", 999, ""), id="unknown-number"),
        pytest.param(b'{"error_code": "NOT_FOUND"}', ("NOT_FOUND", None, ""), id="no-numeric"),
        pytest.param(
            b"<html>Bad Gateway</html>", (None, None, "<html>Bad Gateway</html>"), id="html"
        ),
        pytest.param(b"", (None, None, ""), id="empty"),
        pytest.param(b"[1, 2]", (None, None, "[1, 2]"), id="json-not-object"),
        pytest.param(
            b'{"error_code": true, "error_message": 5}', (None, None, "5"), id="wrong-types"
        ),
        pytest.param(b"\xff\xfe garbage", (None, None, "\ufffd\ufffd garbage"), id="undecodable"),
    ],
)
def test_error_bodies_parse_leniently(
    body: bytes, expected: tuple[str | None, int | None, str]
) -> None:
    """Error bodies of any shape give a code, a numeric code and a message, never an exception."""
    code, numeric, message, _text = parse_error_body(body)
    assert (code, numeric, message) == expected


def test_api_error_str_names_status_code_and_message() -> None:
    """str() of an ApiError gives status, symbolic and numeric code, route and message."""
    err = ba.ApiError.from_response(
        400,
        b'{"error_code": "MALFORMED_PARAMETER", "error_message": "ids[3]: too many attributes"}',
        method="POST",
        url="/2.8/audiences/update",
    )
    assert str(err) == (
        "HTTP 400 MALFORMED_PARAMETER/31 on POST /2.8/audiences/update: ids[3]: too many attributes"
    )
    assert err.error_code == "MALFORMED_PARAMETER"
    assert err.numeric_code == 31
    assert err.message == "ids[3]: too many attributes"


def test_rate_limit_error_carries_retry_after() -> None:
    """A 429 keeps the server's Retry-After in seconds."""
    err = ba.ApiError.from_response(429, b"{}", retry_after=2.5)
    assert isinstance(err, ba.RateLimitError)
    assert err.retry_after == 2.5


def test_builtin_mixins() -> None:
    """Generic handlers still work: ValidationError is a ValueError, timeouts are TimeoutErrors."""
    assert issubclass(ba.ValidationError, ValueError)
    assert issubclass(ba.RequestTimeout, TimeoutError)
    assert issubclass(ba.IndexingTimeout, TimeoutError)
    assert issubclass(ba.ClientClosedError, RuntimeError)
    assert issubclass(ba.ConnectError, ba.TransportError)


def test_validation_error_names_position_id_rule_and_acknowledged() -> None:
    """ValidationError's text names the position, the ID, the rule and what was acknowledged."""
    err = ba.ValidationError(
        "too many attributes", position=25_000, record_id="u-1", acknowledged=20_000
    )
    assert str(err) == (
        "record 25000, id 'u-1': too many attributes "
        "(20000 earlier records were acknowledged by the server)"
    )


@pytest.mark.parametrize(
    "err",
    [
        ba.ValidationError("r", position=1, record_id="x", acknowledged=0),
        ba.ApiError.from_response(
            503, b'{"error_code": "MAINTENANCE_ERROR"}', method="GET", url="/x"
        ),
        ba.ApiError.from_response(429, b"{}", retry_after=3),
    ],
)
def test_errors_pickle(err: ba.BatchAudienceError) -> None:
    """Errors survive pickling (multiprocessing, task queues) with their fields."""
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)


def test_indexing_timeout_counts_pending_tokens() -> None:
    """IndexingTimeout keeps every token's last state and says how many are not applied."""
    err = ba.IndexingTimeout("too slow", {"a": "APPLIED", "b": "IN_PROGRESS"})
    assert err.states == {"a": "APPLIED", "b": "IN_PROGRESS"}
    assert "1 of 2 tokens not applied" in str(err)


def test_chunks_failed_in_flight_survive_file_location_and_pickling() -> None:
    """A ValidationError's API errors stay in str(), .errors and __cause__: wrapped, pickled."""
    failed = ba.ApiError.from_response(400, b'{"error_code": "MALFORMED_PARAMETER"}')
    err = ba.ValidationError("tag 'X' breaks the tag rule", position=7, record_id="u-7")
    err.acknowledged = 0
    err.errors = (failed,)
    located = ba.SourceError.wrap(err, source="users.csv", line=9)
    assert located.errors == (failed,) and located.__cause__ is failed
    assert str(located).startswith("users.csv:9: record 8, id 'u-7': tag 'X'")
    assert "1 chunk sent before it failed in flight" in str(located)
    assert "MALFORMED_PARAMETER" in str(located)
    for error in (err, located):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert [type(e) for e in copy.errors] == [ba.BadRequestError]
