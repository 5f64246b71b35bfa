"""The facades users hold: AudienceClient (2.x) and CustomAudienceClient (1.0 / 1.1)."""

from __future__ import annotations

import enum
import logging
import os
import random
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Self, final

import aiohttp
import attrs

from ._config import (
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    Limits,
    PollPolicy,
    RetryPolicy,
    Timeouts,
)
from ._endpoints import Endpoints, V1Endpoints, V2Endpoints, check_page_size
from ._exceptions import (
    BadRequestError,
    BatchAudienceError,
    ClientClosedError,
    NotFoundError,
    TransportError,
    UnsupportedOperation,
    ValidationError,
)
from ._models import (
    AudienceInfo,
    IndexingState,
    ProgressCallback,
    Records,
    SyncReport,
    UploadReport,
    converter,
    token_of,
)
from ._poller import wait_applied
from ._ratebudget import RateBudget, SkippedTime
from ._redact import mask, redact_url
from ._session import DEFAULT_MAX_RESPONSE_BYTES, Session, SleepFn, is_loopback
from ._upload import DEFAULT_CONCURRENCY, AckHook, Operation, run_upload
from ._validate import MAX_ENTRIES, check_audience_name
from ._writer import AudienceWriter, ErrorHandler

__all__ = ["AudienceClient", "CustomAudienceClient"]

logger = logging.getLogger("batch_audience")

DEFAULT_PAGE_SIZE: Final = 100  # audiences per list request


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


def _check_key(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{field} must be a non-empty string")
    # isprintable() refuses every control character, not only line breaks: aiohttp would
    # otherwise refuse the header at the first request with a plain ValueError.
    if not value.isprintable() or value != value.strip():
        raise ValidationError(
            f"{field} must not contain whitespace at its ends, line breaks or control characters"
        )
    return value


class _BaseClient:
    """What both clients share: lifecycle, reads, uploads, polling and the writer."""

    _endpoints: Endpoints

    def __init__(
        self,
        *,
        endpoints: Endpoints,
        rest_key: str,
        secrets: tuple[str, ...],
        base_url: str,
        retry: RetryPolicy | None,
        poll: PollPolicy | None,
        limits: Limits | None,
        timeouts: Timeouts | None,
        session: aiohttp.ClientSession | None,
        sleep: SleepFn | None,
        rand: Callable[[], float] | None,
        ssl: Any,
        allow_insecure_http: bool,
        max_response_bytes: int,
        max_ids_per_second: float | None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValidationError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if "@" in base_url.split("://", 1)[1].split("/", 1)[0]:
            # user:password@ would be sent as a second credential next to the keys (aiohttp
            # refuses it beside an Authorization header with a plain ValueError), and shown in
            # reprs and messages; it also makes the host hard to read at a glance.
            raise ValidationError(
                "base_url must not hold credentials (user@host): keys travel in headers"
            )
        if base_url.startswith("http://") and not allow_insecure_http and not is_loopback(base_url):
            raise ValidationError(
                "refusing to send keys over plain http to a host other than loopback; "
                "use https:// or pass allow_insecure_http=True"
            )
        self._endpoints = endpoints
        self._rand = rand if rand is not None else random.random
        self._poll = poll or PollPolicy()
        self._state = _State.UNOPENED
        # One rate budget for every write of this client (spec §7): uploads and writers.
        if sleep is None:
            self._budget = RateBudget(max_ids_per_second=max_ids_per_second)
        else:
            # A test's zero-wait sleep: the budget's waits are skipped too, and its clock
            # counts every skipped wait as passed.
            skipped = SkippedTime(sleep)
            sleep = skipped.sleep
            self._budget = RateBudget(
                max_ids_per_second=max_ids_per_second, clock=skipped.clock, sleep=skipped.skip
            )
        self._session = Session(
            base_url=base_url,
            headers=endpoints.auth_headers(rest_key),
            secrets=secrets,
            retry=retry or RetryPolicy(),
            timeouts=timeouts or Timeouts(),
            limits=limits or Limits(),
            session=session,
            sleep=sleep,
            rand=self._rand,
            max_response_bytes=max_response_bytes,
            ssl=ssl,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is _State.CLOSED:
            raise ClientClosedError("a closed client cannot be reopened; make a new one")
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client and the aiohttp session it made (a caller's session stays open)."""
        self._state = _State.CLOSED
        await self._session.aclose()

    def _open(self) -> Session:
        if self._state is _State.CLOSED:
            raise ClientClosedError("the client is closed")
        self._state = _State.OPENED
        return self._session

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        session = getattr(self, "_session", None)
        if (
            getattr(self, "_state", None) is _State.OPENED
            and session is not None
            and session._session is not None
            and session._owns_session
            and not session.closed
        ):
            _warn(
                f"unclosed {type(self).__name__}: use 'async with' or await aclose()",
                ResourceWarning,
                stacklevel=2,
            )

    @property
    def base_url(self) -> str:
        """The API base URL requests go to."""
        return self._session.base_url

    @property
    def closed(self) -> bool:
        """True once the client was closed."""
        return self._state is _State.CLOSED

    # -- audience routes -------------------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        display_name: str | None = None,
        description: str | None = None,
        audience_type: str | None = None,
    ) -> str | None:
        """Create an audience; return its indexing token (2.x) or None (1.x).

        Args:
            name: ``[A-Za-z0-9_-]{1,255}``, unique.
            display_name: 2.x label. description: 1.x label.
            audience_type: 1.0 ``custom_ids`` (default) or ``advertising_ids``; 1.1
                ``install_ids``; 2.x ``custom_ids``.

        Returns None also when a retry met "already exists" after an attempt whose answer was
        lost, and a view confirmed the audience exists: that attempt created it (spec §7).

        Raises:
            ValidationError: a bad name or an argument of the other generation.
            ApiError: the server refused (BadRequestError for a duplicate name).
        """
        route = self._endpoints.create(
            name, display_name=display_name, description=description, audience_type=audience_type
        )
        try:
            response = await self._open().send(route)
        except BadRequestError as exc:
            # Spec §7: after an attempt whose outcome is unknown, a refusal may only mean that
            # the earlier attempt created the audience. Batch documents no "already exists"
            # answer (the fake says MALFORMED_PARAMETER, like for any bad value), so the error
            # code proves nothing: the audience itself is looked at.
            if not exc.after_unknown_outcome:
                raise
            await self._confirm_created(name, exc, display_name or description)
            return None
        return token_of(response.data)

    async def _confirm_created(
        self, name: str, refusal: BadRequestError, label: str | None
    ) -> None:
        """Return if ``name`` exists (an earlier attempt created it); else raise ``refusal``."""
        try:
            info = await self.view(name)
        except NotFoundError:
            raise refusal from None
        except BatchAudienceError as exc:
            refusal.add_note(
                f"an earlier attempt's outcome is unknown, and checking whether it created "
                f"the audience failed too ({type(exc).__name__})"
            )
            raise refusal from exc
        shown = info.display_name if info.display_name is not None else info.description
        if label is not None and shown and shown != label:
            refusal.add_note(
                "an audience of that name exists, but with another label: "
                "not the one this call created"
            )
            raise refusal
        logger.info(
            "create %s: the retry was refused, but the audience exists: the earlier attempt, "
            "whose answer was lost, created it",
            name,
            extra={"event": "batch_audience.create_confirmed", "operation": "create"},
        )

    async def view(self, name: str, *, token: str | None = None) -> AudienceInfo:
        """Describe an audience, with the indexing state of ``token`` or of its latest write.

        Raises:
            NotFoundError: no such audience.
            BadRequestError: the token is unknown for this audience.
        """
        response = await self._open().send(self._endpoints.view(name, token))
        return _info(response.data)

    async def delete(self, name: str) -> str | None:
        """Delete the whole audience; return the indexing token when the API gives one (2.x).

        Raises:
            NotFoundError: no such audience. A 404 after an attempt whose outcome is unknown
                means that attempt deleted it: the call then succeeds and returns None.
        """
        try:
            response = await self._open().send(self._endpoints.delete(name))
        except NotFoundError as exc:
            if not exc.after_unknown_outcome:
                raise
            logger.info(
                "delete %s: the retry found no such audience: the earlier attempt, whose answer "
                "was lost, deleted it",
                name,
                extra={"event": "batch_audience.delete_confirmed", "operation": "delete"},
            )
            return None
        return token_of(response.data)

    def list(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[AudienceInfo]:
        """Iterate over every audience, newest first, fetching ``page_size`` per request."""
        check_page_size(page_size)
        return self._list(page_size)

    async def _list(self, page_size: int) -> AsyncIterator[AudienceInfo]:
        raise NotImplementedError
        yield  # pragma: no cover

    # -- uploads ---------------------------------------------------------------------------

    async def add(
        self,
        name: str,
        records: Records,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: ProgressCallback | None = None,
        chunk_size: int = MAX_ENTRIES,
        wait: bool = False,
        audience_type: str | None = None,
    ) -> UploadReport:
        """Add (or update) any number of records, chunked to at most 10,000 per request.

        Args:
            records: an iterable or async iterable of Record, mappings or ID strings.
            concurrency: requests in flight for this upload (halved on 429).
            progress: called with a Progress after each acknowledged request.
            chunk_size: entries per request, at most 10,000.
            wait: also wait until every token is indexed; states go in the report.
            audience_type: 1.0 only, the audience's type (looked up when not given).

        Raises:
            ValidationError: a record broke a rule; nothing from it on was sent.
            ApiError, TransportError: a request failed for good; the error's ``.report``
                holds what was acknowledged before it.
        """
        return await self._upload(
            "add", name, records, concurrency, progress, chunk_size, wait, audience_type
        )

    async def remove(
        self,
        name: str,
        records: Records,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: ProgressCallback | None = None,
        chunk_size: int = MAX_ENTRIES,
        wait: bool = False,
        audience_type: str | None = None,
    ) -> UploadReport:
        """Remove any number of IDs (strings, or records without attributes); see ``add``."""
        return await self._upload(
            "remove", name, records, concurrency, progress, chunk_size, wait, audience_type
        )

    async def replace(
        self,
        name: str,
        records: Records,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: ProgressCallback | None = None,
        chunk_size: int = MAX_ENTRIES,
        wait: bool = False,
    ) -> UploadReport:
        """Replace the members with ``records``; beyond one chunk this is not atomic.

        The first chunk goes as a replace call; only after it succeeded, the rest go as adds,
        so the audience is partial until the last chunk lands (``report.atomic`` is False).

        Raises:
            UnsupportedOperation: Custom Audience API 1.0 has no replace.
        """
        return await self._upload(
            "replace", name, records, concurrency, progress, chunk_size, wait, None
        )

    async def _upload(
        self,
        operation: Operation,
        name: str,
        records: Records,
        concurrency: int,
        progress: ProgressCallback | None,
        chunk_size: int,
        wait: bool,
        audience_type: str | None,
        *,
        start: int = 0,
        skip_replace: bool = False,
        on_ack: AckHook | None = None,
    ) -> UploadReport:
        check_audience_name(name)
        if operation == "replace" and not self._endpoints.supports_replace:
            hint = "use Custom Audience API 1.1 or Audience API 2.x"
            raise UnsupportedOperation("replace", self._endpoints.version, hint)
        session = self._open()
        audience_type = await self._upload_type(name, audience_type)
        report = await run_upload(
            session=session,
            endpoints=self._endpoints,
            name=name,
            operation=operation,
            source=records,
            concurrency=concurrency,
            chunk_size=chunk_size,
            progress=progress,
            audience_type=audience_type,
            start=start,
            skip_replace=skip_replace,
            on_ack=on_ack,
            budget=self._budget,
        )
        if wait and report.tokens:
            states = await self.wait_applied(name, report.tokens)
            report = attrs.evolve(report, states=states)
        return report

    async def _upload_type(self, name: str, audience_type: str | None) -> str | None:
        return audience_type

    # -- mirror sync (batch_audience/_sync.py) ---------------------------------------------

    async def sync(
        self,
        name: str,
        source: Records,
        *,
        state: str | os.PathLike[str],
        dry_run: bool = False,
        full: bool = False,
        wait: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        chunk_size: int = MAX_ENTRIES,
        progress: ProgressCallback | None = None,
    ) -> SyncReport:
        """Make the audience hold exactly ``source``, sending only the changes since the last sync.

        Args:
            source: what the uploads take (records, ``open_records(path)``); read to the end
                and validated before anything is sent.
            state: the sync's state file (DuckDB), one per audience; created if missing.
            dry_run: compute the plan (counts, ``examples``), send nothing, change nothing.
            full: replace the members with the whole source (as a first sync does).
            wait: also wait until every token is indexed; states go in the report.
            progress: called with a Progress per phase: ``read`` (records read), then the
                uploads' own (``remove``, ``add`` or ``replace``, with the planned total).

        Raises:
            SyncStateError: the state belongs to another audience or project, is damaged,
                or another sync of it is running.
            SyncDriftError: the audience's size no longer matches the last sync: it was
                changed elsewhere; ``full=True`` replaces its members.
            ValidationError: a record broke a rule; nothing was sent.
            ApiError, TransportError: a request failed; the state keeps the last finished
                sync and running the same sync again converges.
            ImportError: DuckDB or pyarrow is missing (``pip install 'batch-audience[data]'``).
        """
        from ._sync import run_sync

        self._open()
        return await run_sync(
            self,
            name,
            source,
            state=state,
            dry_run=dry_run,
            full=full,
            wait=wait,
            concurrency=concurrency,
            chunk_size=chunk_size,
            progress=progress,
        )

    # -- end of mirror sync ----------------------------------------------------------------

    # -- indexing --------------------------------------------------------------------------

    async def wait_applied(
        self,
        name: str,
        tokens: str | Iterable[str],
        *,
        timeout: float | None = None,
        interval: float | None = None,
    ) -> dict[str, IndexingState | str]:
        """Wait until every token is APPLIED or REPLACED; return each token's final state.

        Args:
            tokens: one token or many, e.g. ``report.tokens``; plain strings that can be
                stored and waited on later, from another process.
            timeout: seconds for the whole wait (default: the PollPolicy's). The last poll
                is sent at the deadline, and has up to 5 s (at most ``timeout``) to answer.
            interval: a fixed wait between polls (default: the PollPolicy's growing one).

        Raises:
            IndexingTimeout: the deadline passed; ``.states`` holds each token's last state.
        """
        return await wait_applied(
            session=self._open(),
            endpoints=self._endpoints,
            name=check_audience_name(name),
            tokens=tokens,
            policy=self._poll,
            rand=self._rand,
            timeout=timeout,
            interval=interval,
        )

    # -- writer ----------------------------------------------------------------------------

    def writer(
        self,
        name: str,
        *,
        max_records: int = MAX_ENTRIES,
        max_delay: float = 5.0,
        max_pending: int | None = None,
        on_error: ErrorHandler | None = None,
        drain_timeout: float = 30.0,
    ) -> AudienceWriter:
        """A buffered writer for event consumers: size/age flushes, backpressure, nothing lost."""
        self._open()
        return AudienceWriter(
            self,
            name,
            max_records=max_records,
            max_delay=max_delay,
            max_pending=max_pending,
            on_error=on_error,
            drain_timeout=drain_timeout,
        )


def _info(data: Any) -> AudienceInfo:
    try:
        return converter.structure(data, AudienceInfo)
    except Exception as exc:
        raise TransportError(
            "the server's audience description could not be read", cause=type(exc).__name__
        ) from None


def _list_page(data: Any, key: str) -> tuple[Mapping[str, Any], list[Any]]:
    """One list answer and its audiences; TransportError unless ``key`` holds a list."""
    # Anything else (an empty body included) would pass off a broken answer as "no audiences".
    if not isinstance(data, Mapping) or not isinstance(data.get(key), list):
        raise TransportError(f"the server's list page is not an object with a {key!r} array")
    return data, data[key]


@final
class AudienceClient(_BaseClient):
    """Client of Batch's project-scoped Audience API 2.x.

    All writes of one client share a rate budget in IDs per second, learned from the server's
    429s; ``max_ids_per_second`` caps it (below the server's own limit, no 429 at all).
    """

    def __init__(
        self,
        rest_key: str,
        project_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_version: str = DEFAULT_API_VERSION,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn | None = None,
        rand: Callable[[], float] | None = None,
        ssl: Any = True,
        allow_insecure_http: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_ids_per_second: float | None = None,
    ) -> None:
        rest_key = _check_key("rest_key", rest_key)
        project_key = _check_key("project_key", project_key)
        super().__init__(
            endpoints=V2Endpoints(api_version, project_key),
            rest_key=rest_key,
            secrets=(rest_key, project_key),
            base_url=base_url,
            retry=retry,
            poll=poll,
            limits=limits,
            timeouts=timeouts,
            session=session,
            sleep=sleep,
            rand=rand,
            ssl=ssl,
            allow_insecure_http=allow_insecure_http,
            max_response_bytes=max_response_bytes,
            max_ids_per_second=max_ids_per_second,
        )

    @property
    def api_version(self) -> str:
        """The 2.x version in the path, e.g. ``2.8``."""
        return self._endpoints.version

    def __repr__(self) -> str:
        return (
            f"AudienceClient(base_url={redact_url(self.base_url)!r}, "
            f"api_version={self.api_version!r}, "
            f"rest_key={mask(True)}, project_key={mask(True)}, state={self._state.value!r})"
        )

    async def _list(self, page_size: int) -> AsyncIterator[AudienceInfo]:
        assert isinstance(self._endpoints, V2Endpoints)
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            response = await self._open().send(self._endpoints.list_page(cursor, page_size))
            data, page = _list_page(response.data, "audiences")
            for item in page:
                yield _info(item)
            has_more = data.get("has_more")
            if has_more is None or has_more is False:
                return
            next_from = data.get("next_from")
            # A page that says "more" must say where: stopping would pass off part of the list
            # as all of it, and a cursor seen before would repeat the same pages forever.
            if has_more is not True or not isinstance(next_from, str) or not next_from:
                raise TransportError(
                    "the server's list page says there is more but gives no cursor"
                )
            if next_from in seen:
                raise TransportError("the server's list cursor repeats an earlier one")
            seen.add(next_from)
            cursor = next_from


@final
class CustomAudienceClient(_BaseClient):
    """Client of Batch's app-scoped Custom Audience API 1.0 (custom IDs) or 1.1 (install IDs).

    All writes of one client share a rate budget in IDs per second, learned from the server's
    429s; ``max_ids_per_second`` caps it (below the server's own limit, no 429 at all).
    """

    def __init__(
        self,
        api_key: str,
        rest_key: str,
        *,
        version: str = "1.0",
        base_url: str = DEFAULT_BASE_URL,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn | None = None,
        rand: Callable[[], float] | None = None,
        ssl: Any = True,
        allow_insecure_http: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_ids_per_second: float | None = None,
    ) -> None:
        api_key = _check_key("api_key", api_key)
        rest_key = _check_key("rest_key", rest_key)
        super().__init__(
            endpoints=V1Endpoints(version, api_key),
            rest_key=rest_key,
            secrets=(rest_key, api_key),
            base_url=base_url,
            retry=retry,
            poll=poll,
            limits=limits,
            timeouts=timeouts,
            session=session,
            sleep=sleep,
            rand=rand,
            ssl=ssl,
            allow_insecure_http=allow_insecure_http,
            max_response_bytes=max_response_bytes,
            max_ids_per_second=max_ids_per_second,
        )

    @property
    def version(self) -> str:
        """``1.0`` or ``1.1``."""
        return self._endpoints.version

    def __repr__(self) -> str:
        return (
            f"CustomAudienceClient(base_url={redact_url(self.base_url)!r}, "
            f"version={self.version!r}, "
            f"api_key={mask(True)}, rest_key={mask(True)}, state={self._state.value!r})"
        )

    async def _list(self, page_size: int) -> AsyncIterator[AudienceInfo]:
        assert isinstance(self._endpoints, V1Endpoints)
        offset = 0
        while True:
            response = await self._open().send(self._endpoints.list_page(offset, page_size))
            _, page = _list_page(response.data, "custom_audiences")
            for item in page:
                yield _info(item)
            if len(page) < page_size:
                return
            offset += len(page)

    async def _upload_type(self, name: str, audience_type: str | None) -> str | None:
        assert isinstance(self._endpoints, V1Endpoints)
        if self._endpoints.version != "1.0":
            if audience_type is not None:
                raise ValidationError(
                    "audience_type is only needed by Custom Audience API 1.0 uploads"
                )
            return None
        if audience_type is None:
            # 1.0 PATCH bodies must name the audience's type: ask the server once.
            audience_type = (await self.view(name)).type
        return self._endpoints.check_type(audience_type)
