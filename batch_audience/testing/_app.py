"""The fake Batch server over HTTP: routing, auth, error bodies, faults, rate limits, request log.

One catch-all aiohttp.web handler does the whole exchange in a fixed order, so tests can
reason about it:

1. count the request in flight and take the first queued ``Fault`` that matches it, or,
   with chaos mode on (``chaos``) and no queued fault, draw one at random;
2. read the body and decode it once (the request log counts its ``ids`` entries);
3. with a fault: apply the write first if ``apply=True``, sleep ``delay``, then drop the
   connection, answer the injected status/body, or process the request normally;
4. processing: rate limiter, route, auth, validation, state change (``_state``);
5. log the exchange and leave "in flight", then write the response: whoever receives it
   already finds it in ``requests``. A ``slow_body`` fault writes it in pieces, spread over
   that many seconds.

Faults and the rate limiter come before auth and validation, so a 429 or 5xx from either
means nothing was applied (unless the fault says ``apply=True``).

Order of writes. A write takes effect when step 4 runs, so writes are applied in the order
their processing starts (one event loop: no two at once). A ``delay`` *without* ``apply``
holds a request *before* that point, like a busy worker or a proxy queue in front of the
real API: it lands when the delay ends, after any write that arrived meanwhile, even when
the client gave up on it long before. This is kept on purpose, not forced into arrival
order: Batch documents no ordering across requests (spec §8), a real front end does not
stop other workers while one request is stuck, and it is exactly the hazard "outcome
unknown" means. No client can order such a late landing without help from the server (a
sequence number or an idempotency key, neither documented). ``apply=True`` models the other
outcome-unknown case, a write that landed whose answer is late or lost; chaos mode uses only
that one, since its runs check exact final states.

By default the server runs on its own thread and event loop, so its CPU time and tasks stay
out of the caller's loop. State shared with the caller's thread is only touched in steps
that are atomic under the GIL (single C calls, attribute rebinding), never with a lock the
caller's loop could block on.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import math
import random
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Final, NamedTuple, Self

import attrs
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ._state import FakeApiError, FakeAudience, FakeMember, FakeState, parse_body

__all__ = [
    "CLIENT_MAX_SIZE",
    "Chaos",
    "FakeBatchServer",
    "Fault",
    "RateLimit",
    "RecordedRequest",
]

# Bytes: a 10,000-entry body with 15 attributes each is ~10-20 MB; aiohttp's default is 1 MiB.
CLIENT_MAX_SIZE: Final = 64 * 1024 * 1024
# Seconds aiohttp waits for handlers at close; delayed handlers are woken first anyway.
_SHUTDOWN_TIMEOUT: Final = 2.0
# A slow_body answer is written in at most this many pieces.
_SLOW_PIECES: Final = 8
_JSON: Final = "application/json"
_MASK: Final = "***"
_SECRET_HEADERS: Final = frozenset({"authorization", "x-authorization", "x-batch-project"})
_V1_VERSIONS: Final = frozenset({"1.0", "1.1"})
# Routes of the fake alone (no Batch API has them), for inspection from another process:
# `batch-audience members NAME`. Served outside faults, chaos, rate limits and the request log.
FAKE_MEMBERS_PATH: Final = "/_fake/members"
NDJSON: Final = "application/x-ndjson"
_V2_VERSION: Final = re.compile(r"2\.[1-9][0-9]*")
_V1_OPERATIONS: Final = {
    "POST": "create",
    "PATCH": "update",
    "PUT": "replace",
    "DELETE": "delete",
    "GET": "view",
}
_V2_OPERATIONS: Final = {
    ("POST", "create"),
    ("POST", "update"),
    ("POST", "replace"),
    ("POST", "remove"),
    ("GET", "list"),
    ("GET", "view"),
}
_BODY_METHODS: Final = frozenset({"POST", "PATCH", "PUT"})
# The symbolic code an injected status answers with (spec §6.2).
_FAULT_CODES: Final = {
    400: "MALFORMED_PARAMETER",
    401: "AUTHENTICATION_INVALID",
    403: "API_MISUSE",
    404: "ROUTE_NOT_FOUND",
    429: "TOO_MANY_REQUESTS",
    500: "SERVER_ERROR",
    503: "MAINTENANCE_ERROR",
}


def _check_status(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (type(value) is not int or not 100 <= value <= 599):
        raise ValueError(f"{attribute.name} must be an HTTP status from 100 to 599, got {value!r}")


def _check_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{attribute.name} must be a finite number of seconds >= 0, got {value!r}")


def _check_retry_after(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or isinstance(value, str):
        return
    _check_seconds(instance, attribute, value)


def _upper(value: str | None) -> str | None:
    return None if value is None else value.upper()


@attrs.frozen(kw_only=True)
class Fault:
    """A failure to inject into the next matching request; see ``FakeBatchServer.fail_next``.

    - ``status``: answer this status with the spec error body (or ``body``); nothing is
      applied unless ``apply=True``.
    - ``retry_after``: sent as ``Retry-After``; a number as seconds, a str verbatim.
    - ``body``: a raw body instead of the JSON error body (``status`` defaults to 200).
    - ``drop``: cut the connection mid-answer: a status line and headers promising a body,
      then the close (recorded with status 0). The client sees a broken response
      (aiohttp: ``ClientPayloadError``); a close before any byte would be resent silently
      by aiohttp for GET/PUT/DELETE, hiding the fault.
    - ``apply``: process the request first (the write lands), then fail as asked.
    - ``delay``: wait this long before answering; without ``status``/``body``/``drop`` the
      request is then processed normally, so a delay past the client's timeout still
      applies the write, as a real server would (see "Order of writes" in the module doc).
    - ``slow_body``: send the status line and headers at once, then the body in up to 8
      pieces spread over this many seconds. Shorter than the client's timeout it exercises
      the client's read path; longer, the client times out mid-body (the write, processed
      as usual, has landed: outcome unknown).
    - ``path``/``method``: only match requests whose path contains ``path`` / this method.
    """

    status: int | None = attrs.field(default=None, validator=_check_status)
    retry_after: float | str | None = attrs.field(default=None, validator=_check_retry_after)
    body: bytes | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(bytes))
    )
    # Content-Type of the injected answer; by default application/json for error bodies,
    # and for raw bodies text/html if they start with "<", else text/plain.
    content_type: str | None = None
    # Overrides the symbolic error_code of the JSON error body.
    error_code: str | None = None
    drop: bool = False
    apply: bool = False
    delay: float = attrs.field(default=0.0, validator=_check_seconds)  # seconds
    slow_body: float = attrs.field(default=0.0, validator=_check_seconds)  # seconds
    path: str | None = None
    method: str | None = attrs.field(default=None, converter=_upper)

    def __attrs_post_init__(self) -> None:
        if self.drop and (self.status is not None or self.body is not None or self.slow_body):
            raise ValueError("a dropped connection sends no status or body; pass drop alone")
        if self.apply and not (
            self.drop or self.delay or self.status is not None or self.body is not None
        ):
            raise ValueError("apply=True needs drop, delay, status or body to mean anything")

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request with this method and path."""
        return (self.method is None or self.method == method) and (
            self.path is None or self.path in path
        )


def _check_rate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"rate must be a finite number of tokens per second > 0, got {value!r}")


def _check_burst(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"burst must be an int >= 1, got {value!r}")


def _check_per(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ("request", "id"):
        raise ValueError(f"per must be 'request' or 'id', got {value!r}")


def _steps(value: Iterable[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    steps = tuple((at, rate) for at, rate in value)
    previous = -1.0
    for at, rate in steps:
        if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at < math.inf:
            raise ValueError(f"schedule times must be finite seconds >= 0, got {at!r}")
        if at <= previous:
            raise ValueError(f"schedule times must increase, got {at!r} after {previous!r}")
        _check_rate(None, None, rate)  # type: ignore[arg-type]
        previous = float(at)
    return tuple((float(at), float(rate)) for at, rate in steps)


@attrs.frozen
class RateLimit:
    """A token bucket per (REST key, project or app key): ``rate`` tokens/s, ``burst`` at once.

    ``per="request"`` charges one token per request; ``per="id"`` charges a write one token per
    ID it carries (at least one), as Batch meters mass updates, and any other request one. A
    request costing more than ``burst`` goes when the bucket is full and leaves it in debt, so
    a 10,000-ID write is never refused for good. A refused request gets 429
    ``TOO_MANY_REQUESTS`` with ``Retry-After`` in whole seconds, or none with
    ``retry_after=False`` (Batch documents none).

    ``schedule`` changes the rate over time: ``((5.0, 2_000), (15.0, 20_000))`` refills at
    ``rate`` for the first 5 seconds, at 2,000 tokens/s from then on, and at 20,000 from 15 s
    on, the seconds counted from the first request the limiter meters (after it was set). The
    bucket keeps what it holds across a change; ``Retry-After`` is computed at the rate in
    force when the request is refused.
    """

    rate: float = attrs.field(validator=_check_rate)  # tokens per second
    burst: int = attrs.field(default=1, validator=_check_burst)  # tokens
    per: str = attrs.field(default="request", validator=_check_per)  # "request" or "id"
    retry_after: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    # (seconds from the first metered request, tokens per second) pairs, in time order.
    schedule: tuple[tuple[float, float], ...] = attrs.field(default=(), converter=_steps)

    def rate_at(self, elapsed: float) -> float:
        """The refill rate in force ``elapsed`` seconds after the first metered request."""
        rate = self.rate
        for at, changed in self.schedule:
            if elapsed < at:
                break
            rate = changed
        return rate

    def refill(self, since: float, until: float) -> float:
        """Tokens refilled from ``since`` to ``until`` (seconds after the first request)."""
        total = 0.0
        low = since
        for at, _ in self.schedule:
            if at >= until:
                break
            if at > low:
                total += (at - low) * self.rate_at(low)
                low = at
        return total + max(0.0, until - low) * self.rate_at(low)


def _check_rate_of_faults(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"rate must be a probability from 0 to 1, got {value!r}")


def _check_seed(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int:
        raise ValueError(f"seed must be an int, got {value!r}")


def _weighted_kinds(
    kinds: Iterable[str] | Mapping[str, float],
) -> tuple[tuple[str, float], ...]:
    if isinstance(kinds, str):
        raise ValueError(f"kinds must be a sequence or mapping of kinds, not the str {kinds!r}")
    pairs = list(kinds.items()) if isinstance(kinds, Mapping) else [(k, 1.0) for k in kinds]
    if not pairs:
        raise ValueError(f"kinds must name at least one of {', '.join(Chaos.KINDS)}")
    for kind, weight in pairs:
        if kind not in Chaos.KINDS:
            raise ValueError(f"unknown chaos kind {kind!r}; choose from {', '.join(Chaos.KINDS)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise ValueError(f"the weight of {kind!r} must be a number > 0, got {weight!r}")
    if len({kind for kind, _ in pairs}) != len(pairs):
        raise ValueError("kinds must not repeat a kind")
    return tuple((kind, float(weight)) for kind, weight in pairs)


def _seconds_range(value: Iterable[float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = value
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, int | float) or not 0 <= bound < 3600:
            raise ValueError(f"retry_after bounds must be seconds from 0 to 3600, got {bound!r}")
    if low > high:
        raise ValueError(f"retry_after must be (low, high) with low <= high, got {(low, high)!r}")
    return (float(low), float(high))


@attrs.frozen(kw_only=True)
class Chaos:
    """Seeded random faults: each matching request fails with probability ``rate``.

    Start it with ``FakeBatchServer.chaos(rate, seed=…)``. Each matching request that no
    queued ``fail_next`` fault took draws from one ``random.Random(seed)``, in the order
    requests reach the server: with probability ``rate`` it gets a fault of one of
    ``kinds`` (equal odds, or the weights of a mapping). With several requests in flight
    the arrival order, and so which request gets which fault, depends on timing; the mix
    and the count per number of requests do not. ``RecordedRequest.chaos`` names the kind
    drawn and ``RecordedRequest.fault`` holds the Fault applied.

    Kinds. Whenever the client times out, the write has landed first: a request held
    unapplied past the client's timeout could land after a later write ("Order of writes"
    in this module's docstring), and chaos runs must end in one exact, known state.

    - ``"429"``: refused with ``Retry-After`` drawn uniformly from ``retry_after`` seconds
      (two decimals), or without one when ``retry_after`` is None; nothing applied. With
      ``kinds=("429",)`` and ``path="/audiences/update"`` this is a server that refuses a
      share of writes at random, with no limit behind it.
    - ``"500"``, ``"502"``, ``"503"``, ``"504"``: that status; nothing applied.
    - ``"drop"``: the connection is cut mid-answer; nothing applied.
    - ``"drop_applied"``: applied, then cut (outcome unknown to the client).
    - ``"stall"``: applied, then answered after ``stall`` seconds: set it past the client's
      timeout, so the client gives up on a write that landed.
    - ``"stall_body"``: applied, headers at once, the body spread over ``stall`` seconds:
      the client times out mid-body.
    - ``"slow_body"``: applied, the body spread over ``slow_body`` seconds: set it under the
      client's timeout, so the client reads a body that arrives in pieces, and succeeds.
    """

    KINDS: ClassVar[tuple[str, ...]] = (
        "429",
        "500",
        "502",
        "503",
        "504",
        "drop",
        "drop_applied",
        "stall",
        "stall_body",
        "slow_body",
    )

    rate: float = attrs.field(validator=_check_rate_of_faults)  # probability per request
    seed: int = attrs.field(default=0, validator=_check_seed)
    kinds: tuple[tuple[str, float], ...] = attrs.field(
        default=KINDS, converter=_weighted_kinds
    )  # (kind, weight) pairs
    path: str | None = None  # only requests whose path contains this
    method: str | None = attrs.field(default=None, converter=_upper)
    retry_after: tuple[float, float] | None = attrs.field(
        default=(0.0, 1.0), converter=_seconds_range
    )  # seconds, (low, high); None: no Retry-After
    stall: float = attrs.field(default=2.0, validator=_check_seconds)  # seconds
    slow_body: float = attrs.field(default=0.2, validator=_check_seconds)  # seconds

    def matches(self, method: str, path: str) -> bool:
        """Whether chaos draws for a request with this method and path."""
        return (self.method is None or self.method == method) and (
            self.path is None or self.path in path
        )

    def draw(self, rng: random.Random) -> tuple[str, Fault] | None:
        """Draw for one request: None (no fault), or the kind and the Fault to apply."""
        if rng.random() >= self.rate:
            return None
        names = [kind for kind, _ in self.kinds]
        kind = rng.choices(names, weights=[weight for _, weight in self.kinds])[0]
        return kind, self.fault(kind, rng)

    def fault(self, kind: str, rng: random.Random) -> Fault:
        """The Fault of one kind (a 429 draws its Retry-After from ``rng``)."""
        if kind == "429":
            if self.retry_after is None:
                return Fault(status=429)
            return Fault(status=429, retry_after=round(rng.uniform(*self.retry_after), 2))
        if kind in ("500", "502", "503", "504"):
            return Fault(status=int(kind))
        if kind == "drop":
            return Fault(drop=True)
        if kind == "drop_applied":
            return Fault(drop=True, apply=True)
        if kind == "stall":
            return Fault(delay=self.stall, apply=True)
        if kind == "stall_body":
            return Fault(slow_body=self.stall)
        if kind == "slow_body":
            return Fault(slow_body=self.slow_body)
        raise ValueError(f"unknown chaos kind {kind!r}")  # pragma: no cover - validated


def _body_repr(body: bytes | None) -> str:
    # Bodies can hold 10,000 entries: show their size, never their content.
    return "None" if body is None else f"<{len(body)} bytes>"


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request the fake answered: what was asked, what was answered, and when."""

    method: str
    path: str
    query: Mapping[str, str]
    status: int  # 0 when the connection was dropped
    entries: int  # ids[] entries in the body; 0 for other bodies
    received: float  # time.monotonic() at arrival
    answered: float  # time.monotonic() when the response was written (or the drop)
    retry_after: str | None = None
    fault: Fault | None = None
    # The chaos kind drawn for this request (see Chaos); None for a queued fault or none.
    chaos: str | None = None
    # blake2b (8 bytes, hex) of the request body, None without one: tells a retry of one
    # body (the client resends the same bytes) from another body, without keeping bodies.
    digest: str | None = None
    body: bytes | None = attrs.field(default=None, repr=_body_repr)  # with record_bodies only
    # Authorization, X-Authorization and X-Batch-Project values are replaced by "***".
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)

    @property
    def elapsed(self) -> float:
        """Seconds from arrival to answer."""
        return self.answered - self.received


class _Answer(NamedTuple):
    status: int
    body: bytes
    content_type: str = _JSON
    retry_after: str | None = None


def _retry_after_text(value: float | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _count_entries(body: Any) -> int:
    if type(body) is dict:
        ids = body.get("ids")
        if type(ids) is list:
            return len(ids)
    return 0


def _masked_headers(headers: Mapping[str, str]) -> CIMultiDictProxy[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        out.add(key, _MASK if key.lower() in _SECRET_HEADERS else value)
    return CIMultiDictProxy(out)


def _redacted(path: str) -> str:
    # A 1.x app API key sits in the second segment; error messages must not echo it, even
    # for a mistyped version. Only 2.x-shaped paths (/2.N/audiences/...) are shown whole.
    parts = path.split("/", 3)
    if len(parts) > 2 and parts[2] != "audiences":
        parts[2] = _MASK
    return "/".join(parts)


def _route_not_found(method: str, path: str) -> FakeApiError:
    return FakeApiError(404, "ROUTE_NOT_FOUND", f"no route for {method} {_redacted(path)}")


# What a dropped exchange sends before the connection closes: a status line and headers
# promising a body that never comes. With nothing at all, aiohttp's client would silently
# resend an idempotent request (GET, PUT, DELETE) once on a new connection, so a queued
# drop would be invisible to it; cut mid-response, every client sees the failure. The
# status is a 502 so that a client which skips the body cannot mistake it for a success.
_CUT_OFF: Final = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
)


def _drop(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.write(_CUT_OFF)
        transport.close()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _settle_threadsafe(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], error: BaseException | None
) -> None:
    # The caller's loop may be gone if it ended without closing the server.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, future, error)


class _Queued:
    """A queued fault and how many matching requests it still lets through first."""

    __slots__ = ("after", "fault")

    def __init__(self, fault: Fault, after: int) -> None:
        self.fault = fault
        self.after = after


class FakeBatchServer:
    """An in-process fake of Batch's audience APIs 1.0, 1.1 and 2.x, on 127.0.0.1.

    Use it as ``async with FakeBatchServer() as server:``; point clients at ``server.url``
    with ``server.rest_key`` and ``server.project_key`` (2.x) or ``server.api_key`` (1.x).
    Inspect with ``audience``/``members``/``requests``, inject failures with ``fail_next``
    or at random with ``chaos``, limit with ``rate_limit``, slow indexing down with
    ``indexing_delay``. ``threaded=False`` serves from the caller's own event loop instead
    of a thread of its own. Another process sees an audience's members with
    ``GET /_fake/members?audience=NAME`` and the API's keys (``batch-audience members``).
    """

    # Not a test class, whatever pytest thinks of the name.
    __test__ = False

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rest_key: str | None = None,
        project_key: str | None = None,
        api_key: str | None = None,
        indexing_delay: float = 0.0,  # seconds
        rate_limit: RateLimit | None = None,
        record_bodies: bool = False,
        threaded: bool = True,
        in_progress_state: str = "IN_PROGRESS",
    ) -> None:
        for field, value in (
            ("rest_key", rest_key),
            ("project_key", project_key),
            ("api_key", api_key),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{field} must be a non-empty str or None (random)")
        self.host = host
        self._port = port
        self.rest_key: str = rest_key or secrets.token_hex(20)
        self.project_key: str = project_key or "project_" + secrets.token_hex(12)
        self.api_key: str = api_key or secrets.token_hex(16)
        # Keeping every body costs memory a million-entry upload cannot afford: opt in.
        self.record_bodies = record_bodies
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._state = FakeState()
        self.indexing_delay = indexing_delay
        self.in_progress_state = in_progress_state
        self._rate_limit: RateLimit | None = None
        self.rate_limit = rate_limit
        # (credential, project/app key) -> (tokens left, monotonic time of that count)
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        # When the limiter metered its first request: RateLimit.schedule counts from there.
        self._limit_started: float | None = None
        # Queued faults, each with how many matching requests it still lets through.
        self._faults: deque[_Queued] = deque()
        # Chaos mode: the settings and their generator, rebound together (one store).
        self._chaos: tuple[Chaos, random.Random] | None = None
        # Serve from a thread with its own event loop, so that the fake's CPU work and tasks
        # never show up in the caller's loop (loop-lag and leaked-task checks measure the
        # client alone); False serves from the caller's loop, like aiohttp's TestServer.
        self.threaded = threaded
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._bound_port: int | None = None
        self._closing = False
        self._sleepers: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        where = self._url or "not started"
        return f"<FakeBatchServer {where} requests={len(self.requests)}>"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving (port 0 picks a free port; see ``url``)."""
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("FakeBatchServer is already started")
        self._closing = False
        if not self.threaded:
            await self._bind()
            return
        caller = asyncio.get_running_loop()
        ready: asyncio.Future[None] = caller.create_future()
        thread = threading.Thread(
            target=self._serve_in_thread,
            args=(caller, ready),
            name=f"batch_audience.testing.FakeBatchServer-{id(self):x}",
            # Never keep the interpreter alive for a server someone forgot to close.
            daemon=True,
        )
        self._thread = thread
        thread.start()
        try:
            await ready
        except BaseException:
            if ready.done() and not ready.cancelled() and ready.exception() is not None:
                # Binding failed: the thread has already ended.
                self._thread = None
                raise
            # Cancelled while the thread was starting: do not leave it serving.
            await asyncio.shield(self.close())
            raise

    async def close(self) -> None:
        """Stop serving: wake delayed requests (their connections are dropped), then close."""
        thread = self._thread
        if thread is None:
            if self._runner is not None:
                await self._unbind()
            return
        server_loop = self._loop
        caller = asyncio.get_running_loop()
        done: asyncio.Future[None] = caller.create_future()
        self._closing = True
        if server_loop is not None and not server_loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed on its own meanwhile
                server_loop.call_soon_threadsafe(self._begin_shutdown, caller, done)
        # Settled by the server thread once closed; also stop waiting if that thread died.
        while not done.done() and thread.is_alive():
            await asyncio.wait({done}, timeout=0.05)
        if done.done():
            done.result()
        # The thread only has to close its loop now. Its end cannot be awaited, and join()
        # would block this loop, so poll it: a millisecond or two at most.
        while thread.is_alive():  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        self._thread = None
        self._loop = None

    def _serve_in_thread(
        self, caller: asyncio.AbstractEventLoop, ready: asyncio.Future[None]
    ) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self._bind())
            except BaseException as exc:
                _settle_threadsafe(caller, ready, exc)
                return
            _settle_threadsafe(caller, ready, None)
            loop.run_forever()  # until _begin_shutdown stops it
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _begin_shutdown(
        self, caller: asyncio.AbstractEventLoop, done: asyncio.Future[None]
    ) -> None:
        """On the server's own loop: close the server, stop the loop, tell the caller."""
        loop = asyncio.get_running_loop()

        def finished(task: asyncio.Task[None]) -> None:
            error = None if task.cancelled() else task.exception()
            loop.stop()
            _settle_threadsafe(caller, done, error)

        loop.create_task(self._unbind()).add_done_callback(finished)

    async def _bind(self) -> None:
        app = web.Application(client_max_size=CLIENT_MAX_SIZE)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # No access log: its request line would carry the 1.x app key of every request.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._port)
            await site.start()
            address = runner.addresses[0]
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(address[1])
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        self._url = f"http://{host}:{self._bound_port}"

    async def _unbind(self) -> None:
        runner = self._runner
        if runner is None:
            return
        self._runner = None
        self._closing = True
        for waiter in list(self._sleepers):
            _wake(waiter)
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``; RuntimeError before ``start``."""
        if self._url is None:
            raise RuntimeError("FakeBatchServer is not started: use `async with` or start()")
        return self._url

    @property
    def port(self) -> int:
        """The bound TCP port; RuntimeError before ``start``."""
        if self._bound_port is None:
            raise RuntimeError("FakeBatchServer is not started: use `async with` or start()")
        return self._bound_port

    # -- settings ---------------------------------------------------------------------------

    @property
    def indexing_delay(self) -> float:
        """Seconds a new token stays IN_PROGRESS; read when each token is issued."""
        return self._state.indexing_delay

    @indexing_delay.setter
    def indexing_delay(self, seconds: float) -> None:
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not (0 <= seconds < math.inf)
        ):
            raise ValueError(f"indexing_delay must be a finite number >= 0, got {seconds!r}")
        self._state.indexing_delay = float(seconds)

    @property
    def in_progress_state(self) -> str:
        """How view and list answers spell a write not yet indexed: IN_PROGRESS by default.

        One Batch page writes ``IN_PROCESS``; set that (or any other string) to check that a
        client treats every state but APPLIED and REPLACED as not finished.
        """
        return self._state.in_progress_state

    @in_progress_state.setter
    def in_progress_state(self, spelling: str) -> None:
        if not isinstance(spelling, str) or not spelling:
            raise ValueError(f"in_progress_state must be a non-empty str, got {spelling!r}")
        self._state.in_progress_state = spelling

    @property
    def rate_limit(self) -> RateLimit | None:
        """The token-bucket limiter, or None (no limit); setting it refills every bucket."""
        return self._rate_limit

    @rate_limit.setter
    def rate_limit(self, limit: RateLimit | None) -> None:
        if limit is not None and not isinstance(limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit or None, got {limit!r}")
        self._rate_limit = limit
        self._buckets = {}
        self._limit_started = None

    # -- inspection -------------------------------------------------------------------------

    def audience(
        self, name: str, *, api_key: str | None = None, project_key: str | None = None
    ) -> FakeAudience:
        """One audience (KeyError if absent): 1.x with ``api_key``, else 2.x of a project.

        With neither key, the server's own 2.x project is searched, then its own 1.x app.
        """
        state = self._state
        if api_key is not None:
            found = state.find(name, api_key=api_key)
        elif project_key is not None:
            found = state.find(name, project_key=project_key)
        else:
            found = state.find(name, project_key=self.project_key) or state.find(
                name, api_key=self.api_key
            )
        if found is None:
            raise KeyError(f"no audience named {name!r} on this fake server")
        return found

    def audiences(
        self, *, api_key: str | None = None, project_key: str | None = None
    ) -> list[FakeAudience]:
        """Audiences, oldest first: of an app key (1.x), a project (2.x), or both of ours."""
        state = self._state
        if api_key is not None:
            return state.all(api_key=api_key)
        if project_key is not None:
            return state.all(project_key=project_key)
        return state.all(project_key=self.project_key) + state.all(api_key=self.api_key)

    def members(
        self, name: str, *, api_key: str | None = None, project_key: str | None = None
    ) -> dict[str, FakeMember]:
        """A snapshot of an audience's members: ``audience(...).members``."""
        return self.audience(name, api_key=api_key, project_key=project_key).members

    def seed(
        self,
        name: str,
        members: Iterable[str] | Mapping[str, FakeMember] = (),
        *,
        version: str = "2",
        audience_type: str | None = None,
        description: str | None = None,
        display_name: str | None = None,
        api_key: str | None = None,
        project_key: str | None = None,
    ) -> FakeAudience:
        """Create an audience if needed and add members directly, without HTTP or a token.

        ``version`` is "2" (the server's project, or ``project_key``) or "1.0"/"1.1" (the
        server's app, or ``api_key``); ``audience_type`` picks the 1.0 type.
        """
        key = (project_key or self.project_key) if version == "2" else (api_key or self.api_key)
        return self._state.seed(
            name,
            members,
            version=version,
            key=key,
            audience_type=audience_type,
            description=description,
            display_name=display_name,
        )

    @property
    def request_count(self) -> int:
        """How many requests were answered (or dropped) since the last ``reset_stats``."""
        return len(self.requests)

    def reset_stats(self) -> None:
        """Clear the request log and restart ``max_in_flight`` from the current in-flight count."""
        self.requests = []
        self.max_in_flight = self.in_flight

    # -- fault injection --------------------------------------------------------------------

    def fail_next(
        self, fault: Fault | None = None, *, times: int = 1, after: int = 0, **fault_kwargs: Any
    ) -> None:
        """Queue ``times`` copies of a fault; each hits the next matching request, FIFO.

        Pass a ``Fault`` or its fields: ``fail_next(status=503)``,
        ``fail_next(status=429, retry_after=2, times=3)``, ``fail_next(drop=True)``,
        ``fail_next(delay=1.5, path="/audiences/update")``. ``after`` lets that many matching
        requests through first: ``fail_next(status=429, path="/audiences/update", after=4)``
        refuses the fifth write from now (faults queued behind it wait their turn).
        """
        if fault is None:
            fault = Fault(**fault_kwargs)
        elif fault_kwargs:
            raise TypeError("pass a Fault or its fields as keywords, not both")
        if type(times) is not int or times < 1:
            raise ValueError(f"times must be an int >= 1, got {times!r}")
        if type(after) is not int or after < 0:
            raise ValueError(f"after must be an int >= 0, got {after!r}")
        self._faults.append(_Queued(fault, after))
        self._faults.extend(_Queued(fault, 0) for _ in range(times - 1))

    @property
    def pending_faults(self) -> int:
        """Queued faults not yet used by a request."""
        return len(self._faults)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._faults.clear()

    def chaos(
        self,
        rate: float | Chaos | None,
        *,
        seed: int = 0,
        kinds: Iterable[str] | Mapping[str, float] = Chaos.KINDS,
        path: str | None = None,
        method: str | None = None,
        retry_after: tuple[float, float] | None = (0.0, 1.0),  # seconds; None: no header
        stall: float = 2.0,  # seconds
        slow_body: float = 0.2,  # seconds
    ) -> Chaos | None:
        """Fail a random share of requests from now on, seeded; ``chaos(None)`` stops it.

        ``server.chaos(0.1, seed=1234, stall=1.5, path="/audiences/")`` gives each matching
        request a 10% chance of a fault from the mix described in ``Chaos``; pass a
        ``Chaos`` instead to reuse one. Each call starts a fresh generator from ``seed``.
        Queued ``fail_next`` faults still come first. Returns the settings in force.
        """
        if rate is None:
            self._chaos = None
            return None
        if isinstance(rate, Chaos):
            config = rate
        else:
            config = Chaos(
                rate=rate,
                seed=seed,
                kinds=kinds,
                path=path,
                method=method,
                retry_after=retry_after,
                stall=stall,
                slow_body=slow_body,
            )
        self._chaos = (config, random.Random(config.seed))
        return config

    @property
    def chaos_settings(self) -> Chaos | None:
        """The chaos mode in force, or None."""
        current = self._chaos
        return None if current is None else current[0]

    def _draw_chaos(self, method: str, path: str) -> tuple[str, Fault] | None:
        current = self._chaos
        if current is None:
            return None
        config, rng = current
        if not config.matches(method, path):
            return None
        return config.draw(rng)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        faults = self._faults
        # A snapshot (one C call): another thread may be queueing faults meanwhile. Only this
        # method removes any, and others only append, so the index stays right.
        for index, queued in enumerate(tuple(faults)):
            if queued.fault.matches(method, path):
                if queued.after:
                    queued.after -= 1  # this request goes through; the fault waits
                    return None
                try:
                    del faults[index]
                except IndexError:  # clear_faults() ran meanwhile
                    return None
                return queued.fault
        return None

    # -- the exchange -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == FAKE_MEMBERS_PATH:
            return self._members_answer(request)
        received = time.monotonic()
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        method = request.method
        path = request.path
        # Faults are matched at arrival, so FIFO order follows arrival order.
        fault = self._take_fault(method, path) if self._faults else None
        chaos: str | None = None
        if fault is None and self._chaos is not None:
            drawn = self._draw_chaos(method, path)
            if drawn is not None:
                chaos, fault = drawn
        raw: bytes | None = None
        entries = 0
        answer: _Answer | None = None
        try:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                answer = _Answer(
                    400,
                    orjson.dumps(
                        {
                            "error_code": "MALFORMED_PARAMETER",
                            "error_message": f"the body is over {CLIENT_MAX_SIZE} bytes",
                        }
                    ),
                )
            except ConnectionError:
                pass  # the client went away while sending; there is no one to answer
            else:
                body: Any = None
                body_error: FakeApiError | None = None
                if method in _BODY_METHODS:
                    try:
                        body = parse_body(raw)
                    except FakeApiError as exc:
                        body_error = exc
                    else:
                        entries = _count_entries(body)
                if fault is None:
                    answer = self._process(request, body, body_error)
                else:
                    answer = await self._with_fault(request, fault, body, body_error)
        finally:
            # Logged and no longer in flight *before* the answer is written: once the client
            # has it, it may check the log or send its next request at once.
            self.in_flight -= 1
            self._record(
                RecordedRequest(
                    method=method,
                    path=path,
                    query=dict(request.query),
                    status=0 if answer is None else answer.status,
                    entries=entries,
                    received=received,
                    answered=time.monotonic(),
                    retry_after=None if answer is None else answer.retry_after,
                    fault=fault,
                    chaos=chaos,
                    digest=hashlib.blake2b(raw, digest_size=8).hexdigest() if raw else None,
                    body=raw if self.record_bodies else None,
                    headers=_masked_headers(request.headers),
                )
            )
        if answer is None:
            _drop(request)
            # Never written: the transport is closed, so aiohttp gives up quietly.
            return web.Response()
        if fault is not None and fault.slow_body:
            return await self._answer_slowly(request, answer, fault.slow_body)
        response = web.Response(
            body=answer.body, status=answer.status, content_type=answer.content_type
        )
        if answer.retry_after is not None:
            response.headers["Retry-After"] = answer.retry_after
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up first (its timeout); a real server shrugs too
        return response

    def _members_answer(self, request: web.Request) -> web.Response:
        """``GET /_fake/members?audience=NAME``: the members as NDJSON, sorted by ID.

        Authenticated as the API is: ``Authorization: Bearer REST`` with ``X-Batch-Project``
        (an audience of the 2.x project), or ``X-Authorization: REST`` with ``X-Batch-App``
        (an audience of the 1.x app). Each line is an upload's NDJSON input line:
        ``{"id": ..., "attributes": {...}, "tags": [...]}``, wire keys such as ``date(x)``.
        """
        headers = request.headers
        scheme, _, credential = headers.get("Authorization", "").partition(" ")
        try:
            if request.method != "GET":
                raise _route_not_found(request.method, request.path)
            if scheme.lower() == "bearer":
                if credential.strip() != self.rest_key:
                    raise FakeApiError(401, "AUTHENTICATION_INVALID", "not a valid REST key")
                if headers.get("X-Batch-Project") != self.project_key:
                    raise FakeApiError(401, "AUTHENTICATION_INVALID", "not a valid project key")
                found = self._state.find(
                    request.query.get("audience", ""), project_key=self.project_key
                )
            else:
                if headers.get("X-Authorization") != self.rest_key:
                    raise FakeApiError(401, "AUTHENTICATION_INVALID", "not a valid REST key")
                if headers.get("X-Batch-App") != self.api_key:
                    raise FakeApiError(401, "AUTHENTICATION_INVALID", "not a valid app API key")
                found = self._state.find(request.query.get("audience", ""), api_key=self.api_key)
            if found is None:
                name = request.query.get("audience", "")
                raise FakeApiError(404, "NOT_FOUND", f"no audience named {name!r}")
        except FakeApiError as exc:
            return web.Response(
                body=orjson.dumps(exc.payload()), status=exc.status, content_type=_JSON
            )
        lines = []
        for uid, member in sorted(found.members.items()):
            line: dict[str, Any] = {"id": uid}
            if member.attributes:
                line["attributes"] = member.attributes
            if member.tags:
                line["tags"] = member.tags
            lines.append(orjson.dumps(line))
        body = b"\n".join(lines) + b"\n" if lines else b""
        return web.Response(body=body, status=200, content_type=NDJSON)

    async def _answer_slowly(
        self, request: web.Request, answer: _Answer, seconds: float
    ) -> web.StreamResponse:
        """Send the headers now and the body in pieces, the last one ``seconds`` later."""
        body = answer.body
        size = max(1, -(-len(body) // _SLOW_PIECES))
        pieces = [body[at : at + size] for at in range(0, len(body), size)] or [b""]
        pause = seconds / max(1, len(pieces) - 1)
        response = web.StreamResponse(status=answer.status)
        response.content_type = answer.content_type
        response.content_length = len(body)
        if answer.retry_after is not None:
            response.headers["Retry-After"] = answer.retry_after
        try:
            await response.prepare(request)  # the status line and headers go out at once
            for index, piece in enumerate(pieces):
                if (index or len(pieces) == 1) and not await self._sleep(pause):
                    # The server is closing: cut the body short, as a dying server would.
                    if request.transport is not None:
                        request.transport.close()
                    return response
                await response.write(piece)
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up mid-body (its timeout): nothing more to send
        return response

    def _record(self, recorded: RecordedRequest) -> None:
        log = self.requests
        if not log or log[-1].received <= recorded.received:
            log.append(recorded)
        else:
            # A slower request that arrived earlier: keep the log in arrival order.
            bisect.insort(log, recorded, key=lambda r: r.received)

    async def _with_fault(
        self, request: web.Request, fault: Fault, body: Any, body_error: FakeApiError | None
    ) -> _Answer | None:
        processed = self._process(request, body, body_error) if fault.apply else None
        if fault.delay and not await self._sleep(fault.delay):
            return None  # the server is closing: drop, as a dying server would
        if fault.drop:
            return None
        if fault.status is not None or fault.body is not None:
            return self._fault_answer(fault, request.path)
        answer = processed or self._process(request, body, body_error)
        if fault.retry_after is not None:
            answer = answer._replace(retry_after=_retry_after_text(fault.retry_after))
        return answer

    def _fault_answer(self, fault: Fault, path: str) -> _Answer:
        status = 200 if fault.status is None else fault.status
        retry_after = _retry_after_text(fault.retry_after)
        if fault.body is not None:
            looks_html = fault.body.lstrip()[:1] == b"<"
            content_type = fault.content_type or ("text/html" if looks_html else "text/plain")
            return _Answer(status, fault.body, content_type, retry_after)
        if status < 400:
            return _Answer(status, b"{}", fault.content_type or _JSON, retry_after)
        code = fault.error_code or _FAULT_CODES.get(status)
        if code is None:
            code = "SERVER_ERROR" if status >= 500 else "MALFORMED_PARAMETER"
        elif code == "ROUTE_NOT_FOUND" and not path.startswith(("/1.0/", "/1.1/")):
            code = "NOT_FOUND"  # 2.x says NOT_FOUND for a missing audience (spec §6.2)
        payload = {"error_code": code, "error_message": f"injected fault: HTTP {status}"}
        return _Answer(status, orjson.dumps(payload), fault.content_type or _JSON, retry_after)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server closes first; False when it did."""
        if self._closing:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(seconds, _wake, waiter)
        self._sleepers.add(waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._sleepers.discard(waiter)
        return not self._closing

    def _process(self, request: web.Request, body: Any, body_error: FakeApiError | None) -> _Answer:
        limited = self._rate_limited(request, _count_entries(body) if body is not None else 0)
        if limited is not None:
            return limited
        try:
            status, payload = self._dispatch(request, body, body_error)
        except FakeApiError as exc:
            return _Answer(exc.status, orjson.dumps(exc.payload()))
        return _Answer(status, orjson.dumps(payload))

    def _rate_limited(self, request: web.Request, entries: int = 0) -> _Answer | None:
        limit = self._rate_limit
        if limit is None:
            return None
        headers = request.headers
        parts = request.path.split("/", 3)
        if len(parts) > 2 and parts[1] in _V1_VERSIONS:
            key = (headers.get("X-Authorization", ""), parts[2])
        else:
            key = (headers.get("Authorization", ""), headers.get("X-Batch-Project", ""))
        cost = 1.0
        if limit.per == "id" and request.method in _BODY_METHODS:
            cost = float(max(1, entries))
        # A request dearer than the whole bucket waits for a full one, then borrows the rest.
        needed = min(cost, float(limit.burst))
        now = time.monotonic()
        started = self._limit_started
        if started is None:
            started = self._limit_started = now
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = float(limit.burst)
        else:
            refill = limit.refill(bucket[1] - started, now - started)
            tokens = min(float(limit.burst), bucket[0] + refill)
        if tokens >= needed:
            self._buckets[key] = (tokens - cost, now)
            return None
        self._buckets[key] = (tokens, now)
        unit = "IDs" if limit.per == "id" else "requests"
        payload = {
            "error_code": "TOO_MANY_REQUESTS",
            "error_message": f"rate limit of {limit.rate:g} {unit}/s exceeded; retry later",
        }
        if not limit.retry_after:
            return _Answer(429, orjson.dumps(payload), _JSON, None)
        wait = max(1, math.ceil((needed - tokens) / limit.rate_at(now - started)))
        return _Answer(429, orjson.dumps(payload), _JSON, str(wait))

    def _dispatch(
        self, request: web.Request, body: Any, body_error: FakeApiError | None
    ) -> tuple[int, Any]:
        method = request.method
        path = request.path
        parts = path.split("/")
        if len(parts) >= 4 and parts[0] == "":
            version = parts[1]
            if version in _V1_VERSIONS and parts[3] == "custom-audience":
                return self._v1(request, version, parts, body, body_error)
            if len(parts) == 4 and parts[2] == "audiences" and _V2_VERSION.fullmatch(version):
                return self._v2(request, parts[3], body, body_error)
        raise _route_not_found(method, path)

    def _v1(
        self,
        request: web.Request,
        version: str,
        parts: list[str],
        body: Any,
        body_error: FakeApiError | None,
    ) -> tuple[int, Any]:
        method = request.method
        operation: str | None = None
        name = ""
        if len(parts) == 4:
            operation = "list" if method == "GET" else None
        elif len(parts) == 5 and parts[4]:
            name = parts[4]
            operation = _V1_OPERATIONS.get(method)
            if operation == "replace" and version == "1.0":
                operation = None  # replace only exists from 1.1 on (spec §3)
        if operation is None:
            raise _route_not_found(method, request.path)
        app_key = parts[2]
        if request.headers.get("X-Authorization") != self.rest_key:
            raise FakeApiError(
                401, "AUTHENTICATION_INVALID", "X-Authorization is missing or not a valid REST key"
            )
        if app_key != self.api_key:
            raise FakeApiError(
                401, "AUTHENTICATION_INVALID", "the app API key in the path is not valid"
            )
        state = self._state
        if operation == "list":
            return state.v1_list(app_key, version, request.query)
        if operation == "view":
            return state.v1_view(app_key, version, name, request.query)
        if operation == "delete":
            return state.v1_delete(app_key, version, name)
        if body_error is not None:
            raise body_error
        if operation == "create":
            return state.v1_create(app_key, version, name, body)
        if operation == "update":
            return state.v1_update(app_key, version, name, body)
        return state.v1_replace(app_key, version, name, body)

    def _v2(
        self, request: web.Request, action: str, body: Any, body_error: FakeApiError | None
    ) -> tuple[int, Any]:
        method = request.method
        if (method, action) not in _V2_OPERATIONS:
            raise _route_not_found(method, request.path)
        headers = request.headers
        scheme, _, credential = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or credential.strip() != self.rest_key:
            raise FakeApiError(
                401,
                "AUTHENTICATION_INVALID",
                "Authorization must be 'Bearer <REST API key>' with a valid key",
            )
        if headers.get("X-Batch-Project") != self.project_key:
            raise FakeApiError(
                401,
                "AUTHENTICATION_INVALID",
                "X-Batch-Project is missing or not a project of this REST key",
            )
        state = self._state
        project = self.project_key
        if action == "view":
            return state.v2_view(project, request.query)
        if action == "list":
            return state.v2_list(project, request.query)
        if body_error is not None:
            raise body_error
        if action == "create":
            return state.v2_create(project, body)
        if action == "update":
            return state.v2_update(project, body)
        if action == "replace":
            return state.v2_replace(project, body)
        return state.v2_remove(project, body)
