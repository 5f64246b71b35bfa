"""The error tree of batch_audience.

Every exception the library raises on purpose derives from ``BatchAudienceError``::

    BatchAudienceError
    ├── ValidationError(…, ValueError)      .position .record_id .rule; raised before sending
    │   ├── SourceError                     a file's line or row (_sources)
    │   ├── CheckpointError                 a checkpoint refused or unwritable (_checkpoint)
    │   └── SyncStateError                  a sync state refused or locked (_syncstate)
    │       └── SyncDriftError              the audience changed since the last sync
    ├── UnsupportedOperation                the API version lacks the operation
    ├── TransportError                      no usable response (.retriable = True, .request_sent)
    │   ├── ConnectError                    connecting, or the connection dropped
    │   └── RequestTimeout(…, TimeoutError) the request took longer than its timeout
    ├── ApiError                            .status .error_code .numeric_code .message .retriable
    │   ├── BadRequestError 400
    │   ├── AuthenticationError 401
    │   ├── ForbiddenError 403
    │   ├── NotFoundError 404
    │   ├── RateLimitError 429 (.retry_after)
    │   ├── ServerError 5xx (500, 502, 504, …; only those three are retriable)
    │   └── MaintenanceError 503
    ├── IndexingTimeout(…, TimeoutError)    .states: the last known state of each token
    ├── WriterError                         .entries a writer could not deliver (_writer)
    ├── DrainTimeout(…, TimeoutError)       a writer's drain ran out of time (_writer)
    └── ClientClosedError(…, RuntimeError)  the client or writer was used after aclose()

An error that ends an upload part-way carries ``.report``: the partial UploadReport (records
acknowledged, tokens so far), so the caller can see what landed and resume.

``after_unknown_outcome`` is True on an error raised after retries when an earlier attempt of
the same call ended without telling whether the server acted on it (a timeout, a connection
dropped after the request was sent, a 5xx): the server may then have done the work already.

No message built here contains a REST key: URLs reach these classes already redacted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

if TYPE_CHECKING:
    from ._models import UploadReport

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "BatchAudienceError",
    "ClientClosedError",
    "ConnectError",
    "ForbiddenError",
    "IndexingTimeout",
    "MaintenanceError",
    "NotFoundError",
    "RateLimitError",
    "RequestTimeout",
    "ServerError",
    "TransportError",
    "UnsupportedOperation",
    "ValidationError",
]

# Batch's documented numeric codes, keyed by symbolic name (spec §6.2).
NUMERIC_CODES: Mapping[str, int] = {
    "SERVER_ERROR": 1,
    "MAINTENANCE_ERROR": 2,
    "AUTHENTICATION_INVALID": 10,
    "API_MISUSE": 12,
    "ROUTE_NOT_FOUND": 20,
    "MISSING_PARAMETER": 30,
    "MALFORMED_PARAMETER": 31,
    "MALFORMED_JSON_BODY": 32,
}
_SYMBOLIC_NAMES: Mapping[int, str] = {v: k for k, v in NUMERIC_CODES.items()}

# Spec §7: the statuses worth retrying. Other 5xx (501, 505, 507, ...) are not transient.
RETRIABLE_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})

# Enough of a non-JSON body to tell what it was, never enough to flood a log.
_RAW_TEXT_LIMIT = 500


class BatchAudienceError(Exception):
    """Root of every error raised by batch_audience."""

    # Whether retrying the same request can succeed; per instance for ApiError (by status).
    retriable: bool = False
    # Set by the retry loop: an earlier attempt of this call may have been applied.
    after_unknown_outcome: bool = False
    # Set on errors that end an upload: what was acknowledged before the failure.
    report: UploadReport | None = None


class ValidationError(BatchAudienceError, ValueError):
    """A record or argument broke a rule; raised before anything is sent.

    Raised by an upload part-way, it carries ``.acknowledged`` (every record before that
    stream position was acknowledged: resume there) and ``.report``; chunks that were in
    flight and failed meanwhile are in ``.errors`` (the first is also ``__cause__``, and the
    message names it), so an API failure is never hidden behind a bad record.
    """

    # API errors of chunks that failed in flight before this was raised, in stream order.
    errors: tuple[Exception, ...] = ()

    def __init__(
        self,
        rule: str,
        *,
        position: int | None = None,
        record_id: str | None = None,
        acknowledged: int | None = None,
    ) -> None:
        self.rule = rule
        self.position = position
        self.record_id = record_id
        # Records before this one that the server acknowledged: where to resume.
        self.acknowledged = acknowledged
        super().__init__(rule)

    def __str__(self) -> str:
        parts = []
        if self.position is not None:
            parts.append(f"record {self.position}")
        if self.record_id is not None:
            parts.append(f"id {self.record_id!r}")
        where = f"{', '.join(parts)}: " if parts else ""
        return f"{where}{self.rule}{self._tail()}"

    def _tail(self) -> str:
        """What follows the rule: the resume point and the chunks that failed in flight."""
        tail = ""
        if self.acknowledged is not None:
            tail = f" ({self.acknowledged} earlier records were acknowledged by the server)"
        if self.errors:
            n = len(self.errors)
            tail += (
                f"; {n} chunk{'' if n == 1 else 's'} sent before it failed in flight, "
                f"the first with {self.errors[0]} (see .errors)"
            )
        return tail

    def __reduce__(self) -> Any:
        return (
            _rebuild_validation_error,
            (self.rule, self.position, self.record_id, self.acknowledged, self.errors),
        )


def _rebuild_validation_error(
    rule: str,
    position: int | None,
    record_id: str | None,
    acknowledged: int | None,
    errors: tuple[Exception, ...] = (),
) -> ValidationError:
    error = ValidationError(rule, position=position, record_id=record_id, acknowledged=acknowledged)
    error.errors = errors
    return error


class UnsupportedOperation(BatchAudienceError):
    """The API version in use does not have this operation."""

    def __init__(self, operation: str, version: str, hint: str = "") -> None:
        self.operation = operation
        self.version = version
        msg = f"{operation} is not supported by API version {version}"
        super().__init__(f"{msg}; {hint}" if hint else msg)


class ClientClosedError(BatchAudienceError, RuntimeError):
    """The client or writer was used after it was closed."""


class TransportError(BatchAudienceError):
    """No usable response was received (connection failure, timeout, broken body)."""

    retriable: bool = True

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        cause: str = "",
        request_sent: bool = True,
    ) -> None:
        self.method = method
        # False only when the request provably never reached the server (connecting failed),
        # so it cannot have been applied; otherwise the outcome is unknown.
        self.request_sent = request_sent
        # Always the redacted URL: this text is meant for people and logs.
        self.url = url
        # The type name of the underlying exception, kept without its text (which may hold a key).
        self.cause = cause
        super().__init__(message)

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method else ""
        why = f" [{self.cause}]" if self.cause else ""
        return f"{self.args[0]}{where}{why}"


class ConnectError(TransportError):
    """Connecting failed or the connection dropped before a full response arrived."""


class RequestTimeout(TransportError, TimeoutError):
    """The request did not complete within its timeout."""


class ApiError(BatchAudienceError):
    """The server answered with an error status."""

    status: int = 0
    _registry: ClassVar[dict[int, type[ApiError]]] = {}
    _default_status: ClassVar[int | None] = None

    def __init_subclass__(cls, status: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls._default_status = status
            ApiError._registry[status] = cls

    def __init__(
        self,
        status: int,
        *,
        error_code: str | None = None,
        numeric_code: int | None = None,
        message: str = "",
        body: str = "",
        method: str = "",
        url: str = "",
    ) -> None:
        self.status = status
        self.error_code = error_code
        self.numeric_code = numeric_code
        self.message = message
        self.body = body
        self.method = method
        self.url = url
        self.retriable = status in RETRIABLE_STATUSES
        super().__init__(status, error_code, message)

    def __str__(self) -> str:
        code = self.error_code or "?"
        if self.numeric_code is not None:
            code = f"{code}/{self.numeric_code}"
        where = f" on {self.method} {self.url}" if self.method else ""
        msg = f": {self.message}" if self.message else ""
        return f"HTTP {self.status} {code}{where}{msg}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, error_code={self.error_code!r}, "
            f"numeric_code={self.numeric_code!r}, message={self.message!r})"
        )

    def __reduce__(self) -> Any:
        return (
            _rebuild_api_error,
            (
                type(self),
                self.status,
                self.error_code,
                self.numeric_code,
                self.message,
                self.body,
                self.method,
                self.url,
            ),
        )

    @classmethod
    def class_for_status(cls, status: int) -> type[ApiError]:
        """The most specific ApiError subclass for an HTTP status."""
        found = cls._registry.get(status)
        if found is not None:
            return found
        if 500 <= status < 600:
            return ServerError
        return ApiError

    @classmethod
    def from_response(
        cls,
        status: int,
        body: bytes | str,
        *,
        method: str = "",
        url: str = "",
        retry_after: float | None = None,
    ) -> ApiError:
        """Build the right ApiError subclass from an HTTP status and a raw body, leniently."""
        error_code, numeric_code, message, text = parse_error_body(body)
        klass = cls.class_for_status(status)
        kwargs: dict[str, Any] = dict(
            error_code=error_code,
            numeric_code=numeric_code,
            message=message,
            body=text,
            method=method,
            url=url,
        )
        if klass is RateLimitError:
            return RateLimitError(status, retry_after=retry_after, **kwargs)
        err = klass(status, **kwargs)
        if retry_after is not None:
            err.retry_after = retry_after
        return err

    retry_after: float | None = None


def _rebuild_api_error(
    klass: type[ApiError],
    status: int,
    error_code: str | None,
    numeric_code: int | None,
    message: str,
    body: str,
    method: str,
    url: str,
) -> ApiError:
    return klass(
        status,
        error_code=error_code,
        numeric_code=numeric_code,
        message=message,
        body=body,
        method=method,
        url=url,
    )


def parse_error_body(body: bytes | str) -> tuple[str | None, int | None, str, str]:
    """Read (error_code, numeric_code, message, text) from an error body of any shape."""
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else body
    text = raw[:_RAW_TEXT_LIMIT].decode("utf-8", "replace")
    try:
        data = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return None, None, text.strip(), text
    raw_code = data.get("error_code", data.get("code"))
    raw_message = data.get("error_message", data.get("message"))
    error_code: str | None = None
    numeric_code: int | None = None
    if isinstance(raw_code, bool):
        raw_code = None
    if isinstance(raw_code, int):
        numeric_code = raw_code
        error_code = _SYMBOLIC_NAMES.get(raw_code, str(raw_code))
    elif isinstance(raw_code, str) and raw_code:
        # isdigit() alone lets "²" and 5,000-digit strings through, on which int() raises.
        if raw_code.isascii() and raw_code.isdigit() and len(raw_code) <= 18:
            numeric_code = int(raw_code)
            error_code = _SYMBOLIC_NAMES.get(numeric_code, raw_code)
        else:
            error_code = raw_code
            numeric_code = NUMERIC_CODES.get(raw_code)
    message = raw_message if isinstance(raw_message, str) else ""
    if raw_message is not None and not isinstance(raw_message, str):
        message = str(raw_message)
    return error_code, numeric_code, message, text


class BadRequestError(ApiError, status=400):
    """HTTP 400: a missing or malformed parameter or body."""


class AuthenticationError(ApiError, status=401):
    """HTTP 401: the REST key (or 2.x project key) is missing or wrong."""


class ForbiddenError(ApiError, status=403):
    """HTTP 403: the key may not do this (1.x API_MISUSE)."""


class NotFoundError(ApiError, status=404):
    """HTTP 404: no such audience or route."""


class RateLimitError(ApiError, status=429):
    """HTTP 429: too many requests; ``retry_after`` holds the server's wait, if it gave one."""

    retriable: bool = True

    def __init__(
        self, status: int = 429, *, retry_after: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(status, **kwargs)
        self.retry_after = retry_after


class ServerError(ApiError, status=500):
    """HTTP 5xx other than 503: the server failed; only 500, 502 and 504 are retried."""

    retriable: bool = True  # for 500, 502 and 504; False on instances of other statuses


class MaintenanceError(ApiError, status=503):
    """HTTP 503: Batch is under maintenance; try later."""

    retriable: bool = True


class IndexingTimeout(BatchAudienceError, TimeoutError):
    """Indexing did not finish before the deadline; ``states`` holds each token's last state."""

    def __init__(self, message: str, states: Mapping[str, str]) -> None:
        self.states = dict(states)
        super().__init__(message)

    def __str__(self) -> str:
        pending = sum(1 for s in self.states.values() if s not in ("APPLIED", "REPLACED"))
        return f"{self.args[0]} ({pending} of {len(self.states)} tokens not applied)"
