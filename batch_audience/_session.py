"""The I/O owner: one aiohttp session, auth, timeouts, the in-flight bound, retries, error mapping.

Every aiohttp exception is translated here, at one boundary, into the library's own
errors; none escapes with a URL or header inside (aiohttp's own messages can carry both).
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import attrs
import orjson

from ._config import Limits, RetryPolicy, Timeouts
from ._endpoints import ApiRoute, Body
from ._exceptions import (
    ApiError,
    BatchAudienceError,
    ClientClosedError,
    ConnectError,
    RateLimitError,
    RequestTimeout,
    TransportError,
    ValidationError,
)
from ._ratebudget import RateBudget
from ._redact import redact_url, scrub

__all__ = ["Response", "Session", "SleepFn", "outcome_unknown", "parse_retry_after"]

logger = logging.getLogger("batch_audience")

SleepFn = Callable[[float], Awaitable[None]]
RetryHook = Callable[[BatchAudienceError, float], None]

# Responses above this are refused rather than buffered without limit.
DEFAULT_MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
_READ_CHUNK: Final = 64 * 1024


@attrs.frozen(slots=True)
class Response:
    """A decoded 2xx answer and how many attempts it took."""

    status: int
    data: Any
    attempts: int


def parse_retry_after(
    value: str | None, *, now: Callable[[], datetime] | None = None
) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if unusable.

    A negative number, an HTTP-date in the past, NaN, infinity or anything unparsable is no
    wait at all: None, as if the header were absent. 0 stays 0 ("retry now").
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if 0 <= seconds < math.inf else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        # OverflowError: a zone offset such as +99999999999999 overflows timedelta.
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now() if now is not None else datetime.now(UTC)
    try:
        seconds = (when - current).total_seconds()
    except OverflowError:
        return None
    return seconds if seconds >= 0 else None


def outcome_unknown(error: BatchAudienceError) -> bool:
    """Whether a failed attempt may still have been applied (spec §7): a 5xx, or no answer
    to a request that was sent (a timeout, a connection dropped mid-exchange, a broken body)."""
    if isinstance(error, TransportError):
        return error.request_sent
    if isinstance(error, ApiError):
        return 500 <= error.status < 600
    return False


# Credential headers a caller's session could add beside the library's own.
_CREDENTIAL_HEADERS: Final = ("Authorization", "X-Authorization", "X-Batch-Project")


def _check_callers_session(session: aiohttp.ClientSession, headers: Mapping[str, str]) -> None:
    """Refuse session defaults that would send another credential with every request."""
    # aiohttp adds a session's default auth to each request that brings none; beside the 2.x
    # Authorization header it raises a plain ValueError, and for 1.x it would send the
    # caller's credentials to Batch. A per-request override does not exist (auth= is
    # deprecated), so such a session is refused up front.
    if session.auth is not None:
        raise ValidationError(
            "the aiohttp session passed in has a default auth; pass a session without one "
            "(the client sends its own keys)"
        )
    ours = {name.lower() for name in headers}
    extra = [
        name for name in _CREDENTIAL_HEADERS if name in session.headers and name.lower() not in ours
    ]
    if extra:
        raise ValidationError(
            f"the aiohttp session passed in sends {', '.join(extra)} by default, which would "
            "go to Batch beside the client's own keys; pass a session without it"
        )


def _deadline_note(attempts: int, policy: RetryPolicy) -> str:
    return f"gave up after {attempts} attempts: the call's deadline of {policy.deadline:g} s passed"


# aiohttp warns (ResourceWarning) when a bytes body is over 1 MiB, and writes it in one go.
# A full chunk is 1-4 MB: it goes in slices instead, each written as the socket takes it (the
# writer waits for the transport to drain between them, as aiohttp's own streams do).
# aiohttp's BytesIO payload would do that too, but it copies the body twice on the way
# (getbuffer, then each read): a large upload spends ~0.05 s per million records on it.
_SLICE_ABOVE: Final = 1 << 20
_SLICE: Final = 1 << 18


class _Slices(aiohttp.payload.Payload):
    """A large body written as slices of its parts (memoryviews), never copied by this library."""

    _value: tuple[bytes | memoryview, ...]

    def __init__(self, parts: tuple[bytes | memoryview, ...]) -> None:
        super().__init__(parts, content_type="application/json")
        self._size = sum(map(len, parts))

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        left = sum(map(len, self._value)) if content_length is None else content_length
        for part in self._value:
            view = memoryview(part)[:left]
            left -= len(view)
            for begin in range(0, len(view), _SLICE):
                await writer.write(view[begin : begin + _SLICE])


def _payload(body: bytes | Body | None) -> bytes | _Slices | None:
    """The request body as aiohttp should take it: small bodies as bytes, large ones sliced."""
    if body is None:
        return None
    if len(body) <= _SLICE_ABOVE:
        return bytes(body)
    return _Slices(body.parts if isinstance(body, Body) else (body,))


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (127.0.0.0/8, ::1 or localhost)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:  # e.g. "http://[::1": not a URL of any host, so not of this machine
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Session:
    """Sends ApiRoutes: auth headers, one bound on requests in flight, retries, typed errors."""

    def __init__(
        self,
        *,
        base_url: str,
        headers: Mapping[str, str],
        secrets: tuple[str, ...],
        retry: RetryPolicy,
        timeouts: Timeouts,
        limits: Limits,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn | None = None,
        rand: Callable[[], float] | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ssl: Any = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if session is not None:
            _check_callers_session(session, headers)
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._secrets = secrets
        self.retry = retry
        self.limits = limits
        self._timeout = aiohttp.ClientTimeout(total=timeouts.total, connect=timeouts.connect)
        self._session = session
        self._owns_session = session is None
        self._sleep: SleepFn = sleep if sleep is not None else asyncio.sleep
        self._rand = rand if rand is not None else random.random
        self._clock = clock
        self._max_response_bytes = max_response_bytes
        self._ssl = ssl
        self._semaphore = asyncio.Semaphore(limits.max_in_flight)
        self._closed = False
        self._closed_reason = "the client is closed"
        # The loop of the first request: the session, its connections and the semaphore
        # belong to it. None until then, so a client can be made outside any loop.
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def closed(self) -> bool:
        """True once aclose() was called."""
        return self._closed

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError(self._closed_reason)
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.limits.max_in_flight, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
            )
        return self._session

    async def aclose(self) -> None:
        """Close the aiohttp session if we made it; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()

    async def _check_loop(self) -> None:
        """Bind to the loop of the first request; refuse any other with ClientClosedError.

        A client used under a second ``asyncio.run()`` would otherwise fail deep in aiohttp
        with "Event loop is closed", and its session would be reported unclosed at exit.
        """
        loop = asyncio.get_running_loop()
        first = self._loop
        if first is loop:
            return
        if first is None:
            self._loop = loop
            return
        message = (
            "this client was first used in another event loop (an earlier asyncio.run()?): "
            "a client, its connections and its limits belong to one loop; make the client "
            "inside the coroutine that asyncio.run() runs: async with ba.AudienceClient(...)"
        )
        if first.is_closed():
            # That loop is gone, and with it every use of this client: close the client.
            # aiohttp closes nothing on a closed loop, so closing the session here only
            # marks it closed, and nothing reports it unclosed at exit.
            self._closed = True
            self._closed_reason = message
            if self._owns_session and self._session is not None:
                await self._session.close()
        raise ClientClosedError(message)

    async def wait(self, seconds: float) -> None:
        """Sleep through the injectable sleep (tests run with zero waits)."""
        await self._sleep(seconds)

    def retry_delay(self, retry: int, error: BatchAudienceError, policy: RetryPolicy) -> float:
        """The wait before retry ``retry``: the server's Retry-After, else full-jitter backoff."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        computed = policy.backoff(retry)
        if not policy.jitter:
            return computed
        # Full jitter (uniform in [0, computed]) spreads clients that failed together.
        return computed * self._rand()

    async def send(
        self,
        route: ApiRoute,
        *,
        retry: RetryPolicy | None = None,
        on_retry: RetryHook | None = None,
        budget: RateBudget | None = None,
        cost: int = 1,
    ) -> Response:
        """Send a route, retrying retriable failures per the policy; return the 2xx answer.

        The policy's deadline bounds the whole call: each attempt's timeout is cut to the
        time left, and no attempt starts without time left. An error raised after an attempt
        whose outcome is unknown carries ``after_unknown_outcome=True``.

        With a ``budget`` (a write of ``cost`` IDs), every attempt first waits for its IDs
        (within the deadline) and the budget hears of each 429 and 2xx. A 429 then waits what
        the budget says (Retry-After, or the refused IDs at the new rate), and it does not use
        up an attempt while the server keeps accepting this client's writes or its 429s are
        recent (spec §7). A Retry-After the call refuses to wait (over ``max_retry_after``)
        ends the call and teaches the budget nothing: it holds back no other write.
        """
        if self._loop is not asyncio.get_running_loop():
            await self._check_loop()
        policy = retry or self.retry
        clock = self._clock
        deadline = None if policy.deadline is None else clock() + policy.deadline
        attempt = 0
        counted = 0  # attempts that count against max_attempts
        began = clock()
        began_budget = None if budget is None else budget.now()
        # Whether an earlier attempt may have been applied although it failed.
        unknown = False
        last: BatchAudienceError | None = None
        while True:
            attempt += 1
            answer: tuple[int, Any] | None = None
            sent_at: float | None = None
            try:
                if budget is not None:
                    sent_at = await self._take_budget(budget, cost, deadline)
                if (budget is None or sent_at is not None) and await self._acquire(deadline):
                    try:
                        timeout = self._attempt_timeout(deadline, policy)
                        if timeout is not None:
                            answer = await self._send_once(route, *timeout)
                    finally:
                        self._semaphore.release()
            except BatchAudienceError as exc:
                exc.after_unknown_outcome = unknown
                unknown = unknown or outcome_unknown(exc)
                last = exc
                counted += 1
                throttled = exc if isinstance(exc, RateLimitError) else None
                # A Retry-After this call will not wait for ends it; it is no reason to hold
                # back any other write of the client either.
                refused = throttled is not None and (
                    throttled.retry_after is not None
                    and throttled.retry_after > policy.max_retry_after
                )
                if budget is not None and throttled is not None:
                    assert began_budget is not None
                    if sent_at is not None:
                        retry_after = None if refused else throttled.retry_after
                        budget.throttled(cost, retry_after, sent_at, learn=not refused)
                    if budget.making_progress(began_budget):
                        counted -= 1  # the server takes writes: slowed down, not failing
                    exc.add_note(
                        f"the call waited {clock() - began:.1f} s in all; the rate budget: "
                        f"{budget.describe()}"
                    )
                if not exc.retriable:
                    raise
                if counted >= policy.max_attempts:
                    exc.add_note(f"gave up after {attempt} attempts")
                    raise
                delay = self.retry_delay(attempt, exc, policy)
                if budget is not None and throttled is not None and throttled.retry_after is None:
                    # No word from the server: the budget holds the retry until the new
                    # rate has paid for the refused IDs; a backoff on top would only idle.
                    delay = 0.0
                if delay > policy.max_retry_after:
                    exc.add_note(
                        f"gave up after {attempt} attempts: the server asked to wait "
                        f"{delay:.1f} s, "
                        f"more than max_retry_after={policy.max_retry_after:g} s"
                    )
                    raise
                # ">=": a retry that would start with no time left could do nothing.
                if deadline is not None and clock() + delay >= deadline:
                    if clock() >= deadline:
                        exc.add_note(_deadline_note(attempt, policy))
                    else:
                        exc.add_note(
                            f"gave up after {attempt} attempts: waiting {delay:.2f} s more "
                            f"would pass the call's deadline of {policy.deadline:g} s"
                        )
                    raise
                logger.info(
                    "retry %s %s in %.3f s after attempt %d: %s",
                    route.method,
                    redact_url(route.path),
                    delay,
                    attempt,
                    type(exc).__name__,
                    extra={
                        "event": "batch_audience.retry",
                        "operation": route.operation,
                        "attempt": attempt,
                        "delay": delay,
                        "reason": type(exc).__name__,
                        "status": getattr(exc, "status", None),
                    },
                )
                if on_retry is not None:
                    on_retry(exc, delay)
                await self._sleep(delay)
                continue
            if answer is not None:
                if budget is not None and sent_at is not None:
                    budget.succeeded(cost, sent_at)
                return Response(answer[0], answer[1], attempt)
            # No time was left when this attempt's turn came (a wait for a slot, or a sleep
            # that overran): the last real failure is what the caller sees, when there is one.
            if last is not None:
                last.add_note(_deadline_note(attempt - 1, policy))
                raise last
            never_sent = RequestTimeout(
                f"the call's deadline of {policy.deadline:g} s passed before the request "
                "could be sent",
                method=route.method,
                url=redact_url(route.path),
                request_sent=False,
            )
            if budget is not None:
                never_sent.add_note(f"the rate budget: {budget.describe()}")
            raise never_sent

    async def _take_budget(
        self, budget: RateBudget, cost: int, deadline: float | None
    ) -> float | None:
        """Wait for ``cost`` IDs of the budget; when they went out, or None past the deadline."""
        if deadline is None:
            return await budget.acquire(cost)
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                return await budget.acquire(cost)
        except TimeoutError:
            return None

    async def _acquire(self, deadline: float | None) -> bool:
        """Take a slot among the requests in flight; False if the deadline passed first."""
        if deadline is None:
            await self._semaphore.acquire()
            return True
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                await self._semaphore.acquire()
        except TimeoutError:
            return False
        return True

    def _attempt_timeout(
        self, deadline: float | None, policy: RetryPolicy
    ) -> tuple[aiohttp.ClientTimeout, float | None] | None:
        """This attempt's timeout, cut to the time left before ``deadline``; None if none is.

        The second item is the call's deadline in seconds when it cut the timeout (for the
        error message), else None.
        """
        base = self._timeout
        if deadline is None:
            return base, None
        left = deadline - self._clock()
        if left <= 0:
            return None
        if base.total is not None and base.total <= left:
            return base, None
        connect = base.connect if base.connect is None else min(base.connect, left)
        return aiohttp.ClientTimeout(total=left, connect=connect), policy.deadline

    async def _send_once(
        self, route: ApiRoute, timeout: aiohttp.ClientTimeout, deadline: float | None
    ) -> tuple[int, Any]:
        """One attempt; ``deadline`` (seconds) is set when the call's deadline cut its timeout."""
        http = self._http()
        url = self.base_url + route.path
        shown = redact_url(route.path)
        started = time.monotonic()
        # aiohttp's exceptions can hold the full URL, so a 1.x app key: the translated error is
        # raised after the except clause, so that it does not keep one as its __context__
        # either ("raise ... from None" only hides the context from tracebacks).
        failure: TransportError | None = None
        try:
            async with http.request(
                route.method,
                url,
                params=route.query,
                data=_payload(route.body),
                headers=self._headers,
                timeout=timeout,
                ssl=self._ssl,
                allow_redirects=False,
                # A caller's session may default to raising on 4xx/5xx or to leaving bodies
                # compressed: this library reads every status and body itself. (Bodies are
                # bytes already, so a session's json_serialize never applies.)
                raise_for_status=False,
                auto_decompress=True,
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                raw = await self._read_body(resp, route, shown)
        except BatchAudienceError:
            raise
        except TimeoutError as exc:
            message = "the request timed out"
            if deadline is not None:
                message = f"the call's deadline of {deadline:g} s passed during the request"
            failure = RequestTimeout(
                message,
                method=route.method,
                url=shown,
                cause=type(exc).__name__,
                # A timeout while connecting: nothing was sent, so nothing can have landed.
                request_sent=not isinstance(exc, aiohttp.ConnectionTimeoutError),
            )
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            failure = ConnectError(
                self._describe(exc, "the connection failed"),
                method=route.method,
                url=shown,
                cause=type(exc).__name__,
                # ClientConnectorError: no connection, so the request never left.
                request_sent=not isinstance(exc, aiohttp.ClientConnectorError),
            )
        except aiohttp.ClientError as exc:
            failure = TransportError(
                self._describe(exc, "the request failed"),
                method=route.method,
                url=shown,
                cause=type(exc).__name__,
            )
        if failure is not None:
            raise failure
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.info(
            "%s %s -> %d in %.1f ms",
            route.method,
            shown,
            status,
            elapsed_ms,
            extra={
                "event": "batch_audience.request",
                "operation": route.operation,
                "status": status,
                "elapsed_ms": elapsed_ms,
            },
        )
        if 200 <= status < 300:
            return status, self._decode(raw, route, shown)
        raise ApiError.from_response(
            status,
            scrub(raw.decode("utf-8", "replace"), self._secrets) if raw else "",
            method=route.method,
            url=shown,
            retry_after=parse_retry_after(retry_after),
        )

    def _describe(self, exc: BaseException, fallback: str) -> str:
        # aiohttp messages may hold the URL (and so a 1.x app key): scrub before keeping them.
        text = scrub(str(exc), self._secrets) if str(exc) else ""
        return f"{fallback}: {text}" if text else fallback

    async def _read_body(self, resp: aiohttp.ClientResponse, route: ApiRoute, shown: str) -> bytes:
        limit = self._max_response_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise TransportError(
                f"response of {resp.content_length} bytes refused (limit {limit})",
                method=route.method,
                url=shown,
            )
        parts: list[bytes] = []
        size = 0
        async for part in resp.content.iter_chunked(_READ_CHUNK):
            size += len(part)
            if size > limit:
                raise TransportError(
                    f"response larger than {limit} bytes refused", method=route.method, url=shown
                )
            parts.append(part)
        return b"".join(parts)

    @staticmethod
    def _decode(raw: bytes, route: ApiRoute, shown: str) -> Any:
        if not raw.strip():
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TransportError(
                "the server answered 2xx with a body that is not JSON",
                method=route.method,
                url=shown,
                cause="JSONDecodeError",
            ) from None
