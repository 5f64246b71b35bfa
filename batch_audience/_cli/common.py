"""What every command shares: exit statuses, usage errors, options, keys, the client, a thread."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import orjson

from .._client import AudienceClient, CustomAudienceClient
from .._config import DEFAULT_API_VERSION, DEFAULT_BASE_URL
from .._exceptions import ValidationError
from .._redact import MASK
from .._sources import ParquetRecords, RecordReader, SourceError
from .._validate import MAX_ENTRIES, Generation

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

PROG: Final = "batch-audience"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the API or the network failed
EXIT_USAGE: Final = 2  # bad input or usage (argparse exits 2 on its own errors too)
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as shells report it
TQDM_INSTALL: Final = "pip install 'tqdm>=4.66'"
DEFAULT_PROGRESS_EVERY: Final = 10.0  # seconds between progress lines in a log

ENV_REST_KEY: Final = "BATCH_REST_KEY"
ENV_PROJECT_KEY: Final = "BATCH_PROJECT_KEY"
ENV_API_KEY: Final = "BATCH_API_KEY"
ENV_BASE_URL: Final = "BATCH_BASE_URL"

Client = AudienceClient | CustomAudienceClient
T = TypeVar("T")
AddCommand = Callable[..., argparse.ArgumentParser]  # adds a command to the parser


class UsageError(Exception):
    """Bad usage found after argument parsing (exit status 2)."""


# -- argument parsing ------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _chunk_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_ENTRIES:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_ENTRIES}, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are scrubbed of the keys it was given.

    With ``--json`` anywhere on the command line (``json_errors``), a usage error is also one
    JSON object on stdout, as every other failure is.
    """

    secrets: Sequence[str] = ()
    json_errors: bool = False

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        super()._print_message(_scrub(message, _Parser.secrets), file)

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            error = {"type": "UsageError", "status": None, "message": message}
            sys.stdout.write(_scrub(orjson.dumps({"error": error}).decode(), _Parser.secrets))
            sys.stdout.write("\n")
            sys.stdout.flush()
        super().error(message)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK) if text else text
    return text


_KEY_FLAGS: Final = ("--rest-key", "--project-key", "--api-key")


def _argv_secrets(argv: Sequence[str]) -> list[str]:
    """Keys given on the command line or in the environment, found before parsing."""
    found = [os.environ.get(env, "") for env in (ENV_REST_KEY, ENV_PROJECT_KEY, ENV_API_KEY)]
    for index, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag in _KEY_FLAGS:
            found.append(value if equals else (argv[index + 1] if index + 1 < len(argv) else ""))
    return [key for key in found if key]


def _common_options() -> _Parser:
    """Options accepted before or after the command (SUPPRESS keeps a value given earlier)."""
    common = _Parser(add_help=False)
    group = common.add_argument_group("connection (also before the command)")
    s = argparse.SUPPRESS
    group.add_argument(
        "--api",
        choices=("2", "1.0", "1.1"),
        default=s,
        help="Audience API 2.x (project scoped, the default) or Custom Audience API 1.0/1.1",
    )
    group.add_argument(
        "--base-url",
        metavar="URL",
        default=s,
        help=f"the API's base URL (default: ${ENV_BASE_URL} or {DEFAULT_BASE_URL})",
    )
    group.add_argument(
        "--rest-key", metavar="KEY", default=s, help=f"the REST key (default: ${ENV_REST_KEY})"
    )
    group.add_argument(
        "--project-key",
        metavar="KEY",
        default=s,
        help=f"2.x: the project key (default: ${ENV_PROJECT_KEY})",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=s,
        help=f"1.x: the app API key (default: ${ENV_API_KEY})",
    )
    group.add_argument(
        "--api-version",
        metavar="V",
        default=s,
        help=f"2.x: the version in the path (default: {DEFAULT_API_VERSION})",
    )
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        default=s,
        help="allow a plain http:// base URL to a host other than loopback",
    )
    out = common.add_argument_group("output (also before the command)")
    out.add_argument(
        "--json", action="store_true", default=s, help="print the result as one JSON object"
    )
    out.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=s,
        help="log each request and retry on stderr",
    )
    out.add_argument(
        "--no-progress",
        action="store_true",
        default=s,
        help="no progress bar on a terminal, no progress lines elsewhere",
    )
    out.add_argument(
        "--progress-every",
        type=_non_negative_float,
        metavar="S",
        default=s,
        help="when stderr is not a terminal (cron, Airflow), a progress line every S seconds "
        f"(default: {DEFAULT_PROGRESS_EVERY:g}; 0: none)",
    )
    return common


def _opt(args: argparse.Namespace, name: str, default: Any) -> Any:
    return getattr(args, name, default)


# -- connection --------------------------------------------------------------------------------


def _secrets(args: argparse.Namespace) -> list[str]:
    """Every key this run could know of: scrubbed from all output."""
    found = []
    for flag, env in (
        ("rest_key", ENV_REST_KEY),
        ("project_key", ENV_PROJECT_KEY),
        ("api_key", ENV_API_KEY),
    ):
        for value in (_opt(args, flag, None), os.environ.get(env)):
            if value:
                found.append(value)
                # The key as the client would send it: trimmed of whitespace at its ends.
                if value.strip() and value.strip() != value:
                    found.append(value.strip())
    return found


def _key(args: argparse.Namespace, flag: str, env: str, what: str) -> str:
    value = _opt(args, flag, None) or os.environ.get(env)
    if not value:
        option = "--" + flag.replace("_", "-")
        raise UsageError(f"no {what}: set {env} or pass {option}")
    return str(value)


def _generation(args: argparse.Namespace) -> Generation:
    api = _opt(args, "api", "2")
    return "2" if api == "2" else ("1.0" if api == "1.0" else "1.1")


def make_client(args: argparse.Namespace, **settings: Any) -> Client:
    """The client the global options describe; UsageError when a key is missing.

    ``settings`` go to the client as they are (``retry=``, ``timeouts=``...).
    """
    base_url = _base_url(args)
    insecure = bool(_opt(args, "allow_insecure_http", False))
    rest_key = _key(args, "rest_key", ENV_REST_KEY, "REST key")
    generation = _generation(args)
    if generation == "2":
        return AudienceClient(
            rest_key,
            _key(args, "project_key", ENV_PROJECT_KEY, "project key (Audience API 2.x)"),
            base_url=base_url,
            api_version=_opt(args, "api_version", DEFAULT_API_VERSION),
            allow_insecure_http=insecure,
            **settings,
        )
    return CustomAudienceClient(
        _key(args, "api_key", ENV_API_KEY, "app API key (Custom Audience API 1.x)"),
        rest_key,
        version=generation,
        base_url=base_url,
        allow_insecure_http=insecure,
        **settings,
    )


def _base_url(args: argparse.Namespace) -> str:
    return str(_opt(args, "base_url", None) or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL)


async def off_loop(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, stop=flag, **kwargs)`` in a daemon thread, its result or error awaited.

    A thread cannot be cancelled: on cancellation (Ctrl-C) the flag is set, which a long job
    (a check, a hash, a skip) looks at every few milliseconds, and the thread is not waited
    for. It is a daemon, unlike asyncio.to_thread's, so neither the loop's shutdown nor the
    interpreter's exit waits for it, even when it is blocked reading an idle stdin.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    stop = threading.Event()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = func(*args, stop=stop, **kwargs), None
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(
        target=run, name=f"{PROG} {getattr(func, '__name__', 'job')}", daemon=True
    ).start()
    try:
        return await future
    finally:
        stop.set()


def _located(exc: ValidationError, reader: RecordReader) -> ValidationError:
    """A record's validation error, naming the input line it came from.

    An error about no record (a Parquet file's schema) names the file alone.
    """
    if isinstance(exc, SourceError):
        return exc
    if exc.position is None:
        if not isinstance(reader, ParquetRecords):
            return exc  # not about the input: a line-based reader names its own errors
        located = SourceError.wrap(exc, source=reader.name, line=0)
        for note in getattr(exc, "__notes__", ()):
            located.add_note(note)
        return located
    # A Parquet file has rows, not lines (its reader's line stays 0): name the row.
    line = reader.line or exc.position + 1
    located = SourceError.wrap(exc, source=reader.name, line=line)
    for note in getattr(exc, "__notes__", ()):
        located.add_note(note)
    return located
