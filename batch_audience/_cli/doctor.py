"""``batch-audience doctor``: check the base URL, the keys and the API version before a first sync.

With the keys and base URL a real run would use, it lists one audience (connection, TLS,
authentication, the version in the path), and with ``--write`` creates a temporary audience,
adds two IDs, waits until Batch applied them, views it and deletes it. Each request it makes
is printed as the library logs it (method, redacted path, status, time: never a key). A
failed check says what to look at; later checks that depend on it are not run.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

from .._client import AudienceClient
from .._config import DEFAULT_API_VERSION, RetryPolicy, Timeouts
from .._exceptions import (
    AuthenticationError,
    BatchAudienceError,
    ForbiddenError,
    NotFoundError,
    TransportError,
)
from .._models import Record
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    PROG,
    AddCommand,
    Client,
    _base_url,
    _generation,
    _non_negative_float,
    _opt,
    make_client,
)
from .output import Console, _json, error_dict

T = TypeVar("T")

# Fail fast on a wrong host: two attempts, short timeouts (seconds).
DOCTOR_RETRY: Final = RetryPolicy(max_attempts=2, deadline=60.0)
DOCTOR_TIMEOUTS: Final = Timeouts(connect=10.0, total=30.0)
DEFAULT_WAIT: Final = 300.0  # seconds --write waits for Batch to apply its two IDs
PROBE_IDS: Final = ("doctor-probe-1", "doctor-probe-2")


def add_parser(command: AddCommand) -> None:
    doctor = command(
        "doctor",
        "check the base URL, the keys and the API version (and, with --write, a full "
        "create-add-view-delete) before a first production sync",
        epilog="Reads the same keys and options as every command. Prints each request it "
        "makes (never a key). Exit status 0 when every check passed, 1 otherwise.",
    )
    doctor.add_argument(
        "--write",
        action="store_true",
        help="also create a temporary audience, add two IDs, wait until they are applied, "
        "view it and delete it",
    )
    doctor.add_argument(
        "--wait",
        type=_non_negative_float,
        default=DEFAULT_WAIT,
        metavar="S",
        help=f"with --write, seconds to wait for indexing (default: {DEFAULT_WAIT:g})",
    )


class _Doctor:
    """The checks run so far, each printed as it ends, and the requests they made."""

    def __init__(self, console: Console, as_json: bool) -> None:
        self.console = console
        self.as_json = as_json
        self.checks: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.failure: BaseException | None = None

    def say(self, text: str) -> None:
        if not self.as_json:
            self.console.out(text)

    def request(self, line: str) -> None:
        self.requests.append(line)
        self.say(f"      {line}")

    def passed(self, check: str, detail: str) -> None:
        self.checks.append({"check": check, "ok": True, "detail": detail})
        self.say(f"ok    {check}: {detail}")

    def failed(self, check: str, detail: str, exc: BaseException | None = None) -> None:
        self.checks.append({"check": check, "ok": False, "detail": detail})
        self.say(f"FAIL  {check}: {detail}")
        if exc is not None and self.failure is None:
            self.failure = exc

    @property
    def ok(self) -> bool:
        return all(check["ok"] for check in self.checks)


class _RequestLog(logging.Handler):
    """Hands each request the library logs (``batch_audience.request``) to the doctor."""

    def __init__(self, doctor: _Doctor) -> None:
        super().__init__(logging.INFO)
        self.doctor = doctor

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) in ("batch_audience.request", "batch_audience.retry"):
            self.doctor.request(record.getMessage())


@contextmanager
def _logging_requests(doctor: _Doctor) -> Iterator[None]:
    logger = logging.getLogger("batch_audience")
    handler = _RequestLog(doctor)
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    """``doctor [--write]``: read-only checks, then optionally a write round trip."""
    as_json = bool(_opt(args, "json", False))
    doctor = _Doctor(console, as_json)
    base_url = _base_url(args)
    generation = _generation(args)
    version = _opt(args, "api_version", DEFAULT_API_VERSION) if generation == "2" else generation
    api = "Audience API 2.x" if generation == "2" else "Custom Audience API"
    doctor.say(f"{PROG} doctor: {base_url}, {api} version {version}")
    client = make_client(args, retry=DOCTOR_RETRY, timeouts=DOCTOR_TIMEOUTS)
    with _logging_requests(doctor):
        async with client:
            if await _read_checks(doctor, client, base_url, version) and args.write:
                await _write_checks(doctor, client, args.wait)
    if as_json:
        report: dict[str, Any] = {
            "base_url": base_url,
            "api": generation,
            "api_version": version,
            "ok": doctor.ok,
            "checks": doctor.checks,
            "requests": doctor.requests,
        }
        if not doctor.ok:
            failure = doctor.failure or "a check failed"
            report["error"] = error_dict(failure, kind="DoctorError")
        console.out(_json(report))
    else:
        doctor.say(
            "every check passed" if doctor.ok else "some checks failed: see FAIL lines above"
        )
    return EXIT_OK if doctor.ok else EXIT_FAILED


async def _read_checks(doctor: _Doctor, client: Client, base_url: str, version: str) -> bool:
    """Connection, keys and version, from one list request; whether they all passed."""
    scheme = base_url.split("://", 1)[0]
    try:
        page = [info async for info in _first(client)]
    except TransportError as exc:
        doctor.failed(
            "connection",
            f"no answer from {base_url}: {exc} (check BATCH_BASE_URL or --base-url: "
            "https://api.batch.com unless Batch gave you another; a proxy or firewall?)",
            exc,
        )
        return False
    except AuthenticationError as exc:
        doctor.passed("connection", f"{base_url} answers over {scheme}")
        keys = "the REST key or the project key" if _is_v2(client) else "the REST key or app key"
        doctor.failed(
            "keys", f"{keys} is refused: {exc} (check BATCH_REST_KEY and the other key)", exc
        )
        return False
    except ForbiddenError as exc:
        doctor.passed("connection", f"{base_url} answers over {scheme}")
        doctor.failed("keys", f"accepted, but not allowed to list audiences: {exc}", exc)
        return False
    except NotFoundError as exc:
        doctor.passed("connection", f"{base_url} answers over {scheme}")
        doctor.failed(
            "API version",
            f"the list route of version {version} is not served: {exc} (is {base_url} "
            "Batch's API, and is the version one it serves?)",
            exc,
        )
        return False
    except BatchAudienceError as exc:
        doctor.passed("connection", f"{base_url} answers over {scheme}")
        doctor.failed("list", f"the list request failed: {exc}", exc)
        return False
    doctor.passed("connection", f"{base_url} answers over {scheme}")
    doctor.passed("keys", "accepted")
    shown = f"{len(page)} audience on the first page" if page else "no audience yet"
    doctor.passed("API version", f"{version} serves the audience routes ({shown})")
    return True


async def _first(client: Client) -> Any:
    async for info in client.list(page_size=1):
        yield info
        return


async def _write_checks(doctor: _Doctor, client: Client, wait: float) -> None:
    """Create, fill, wait, view, delete a temporary audience; delete it whatever failed."""
    name = f"batch-audience-doctor-{secrets.token_hex(4)}"
    doctor.say(f"write checks on a temporary audience {name!r}")
    label = "batch-audience doctor (temporary, deleted at once)"
    labels: dict[str, str] = {"display_name": label} if _is_v2(client) else {"description": label}
    created, _ = await _step(doctor, "create", lambda: client.create(name, **labels), "created")
    if not created:
        return
    try:
        records = [Record(PROBE_IDS[0], attributes={"doctor": "ok"}), PROBE_IDS[1]]
        added, report = await _step(doctor, "add", lambda: client.add(name, records), "2 IDs sent")
        if not added or report is None:
            return
        started = time.monotonic()
        tokens = report.tokens
        applied, states = await _step(
            doctor, "indexing", lambda: client.wait_applied(name, tokens, timeout=wait), None
        )
        if not applied or states is None:
            return
        shown = ", ".join(sorted({str(s) for s in states.values()}))
        doctor.passed("indexing", f"{shown} after {time.monotonic() - started:.1f} s")
        viewed, info = await _step(doctor, "view", lambda: client.view(name), None)
        if not viewed or info is None:
            return
        if info.nb_ids == len(PROBE_IDS):
            doctor.passed("view", f"{info.nb_ids} IDs, state {info.indexing_state}")
        else:
            doctor.failed("view", f"{info.nb_ids} IDs where {len(PROBE_IDS)} were applied")
    finally:
        await _step(doctor, "delete", lambda: client.delete(name), f"{name!r} deleted")


async def _step(
    doctor: _Doctor, check: str, call: Callable[[], Awaitable[T]], done: str | None
) -> tuple[bool, T | None]:
    """Run one call; print it passed (with ``done``) or failed; (whether it passed, result)."""
    try:
        result = await call()
    except BatchAudienceError as exc:
        doctor.failed(check, str(exc), exc)
        return False, None
    if done is not None:
        doctor.passed(check, done)
    return True, result


def _is_v2(client: Client) -> bool:
    return isinstance(client, AudienceClient)
