"""The ``batch-audience`` command: upload files, inspect audiences, run the fake server or a demo.

Synopsis (global options may come before or after the command)::

    batch-audience [--api 2|1.0|1.1] [--base-url URL] [--rest-key K] [--project-key K]
                   [--api-key K] [--api-version V] [--json] [-v] [--no-progress] COMMAND
    batch-audience upload NAME FILE|- [--format csv|ndjson] [--mode add|remove|replace]
                   [--wait] [--concurrency N] [--chunk-size N] [--dry-run] [--checkpoint F]
    batch-audience create NAME [--display-name D] [--description D] [--type T]
    batch-audience view NAME [--token T]
    batch-audience list
    batch-audience delete NAME
    batch-audience fake-server [--host H] [--port N] [--indexing-delay S]
    batch-audience demo [--records N] [--concurrency N]
    batch-audience sync NAME FILE|- --state PATH [--format csv|ndjson] [--dry-run] [--full]
                   [--wait] [--concurrency N] [--chunk-size N]

The input formats are described in ``_sources`` and in ``batch-audience upload --help``.
Exit status: 0 on success, 1 when the API or the network failed, 2 on bad input or usage
(a bad file, a refused checkpoint, a missing key), 130 when interrupted. Keys come from the
environment (``BATCH_REST_KEY``, ``BATCH_PROJECT_KEY``, ``BATCH_API_KEY``) or from flags, and
are never printed: every line this command writes is scrubbed of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import orjson

from ._checkpoint import ResumableUpload, fingerprint, resumable
from ._client import AudienceClient, CustomAudienceClient
from ._config import DEFAULT_API_VERSION, DEFAULT_BASE_URL
from ._exceptions import BatchAudienceError, UnsupportedOperation, ValidationError
from ._models import AudienceInfo, Progress, SyncReport, UploadReport
from ._redact import MASK
from ._sources import (
    FORMATS,
    STDIN,
    Format,
    Interrupted,
    RecordReader,
    SourceError,
    check_parquet,
    guess_format,
    open_records,
)
from ._upload import DEFAULT_CONCURRENCY, Operation
from ._validate import MAX_ENTRIES, EntryEncoder, Generation, check_audience_name

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["main"]

PROG: Final = "batch-audience"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the API or the network failed
EXIT_USAGE: Final = 2  # bad input or usage (argparse exits 2 on its own errors too)
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as shells report it
DEMO_RECORDS: Final = 1_000_000
CHECK_TICK: Final = 10_000  # records between two updates of the pre-check's counter
STOP_TICK: Final = 1_000  # records the pre-check reads between two looks at its stop flag
TQDM_INSTALL: Final = "pip install 'tqdm>=4.66'"

ENV_REST_KEY: Final = "BATCH_REST_KEY"
ENV_PROJECT_KEY: Final = "BATCH_PROJECT_KEY"
ENV_API_KEY: Final = "BATCH_API_KEY"
ENV_BASE_URL: Final = "BATCH_BASE_URL"

Client = AudienceClient | CustomAudienceClient
T = TypeVar("T")

_DESCRIPTION: Final = """\
Upload CSV, NDJSON or Parquet files to Batch.com audiences, inspect and delete audiences, run
the bundled fake Batch server, or see a demo. Keys come from BATCH_REST_KEY, BATCH_PROJECT_KEY
(Audience API 2.x) and BATCH_API_KEY (Custom Audience API 1.x, the app key), or from flags
(flags show up in process lists: prefer the environment). Keys are never printed.

exit status: 0 success, 1 API or network failure, 2 bad input or usage, 130 interrupted.
"""

_UPLOAD_EPILOG: Final = """\
input formats (by extension, or --format; '-' reads stdin and needs --format):
  CSV (.csv): UTF-8 (a leading BOM is fine), LF or CRLF, a header row naming the columns:
    id               the record's ID (required)
    tags             tags, split on '|' (Custom Audience API 1.1 only)
    plan, str:plan   a string attribute 'plan' (str:id, str:tags name attributes 'id', 'tags')
    int:score        a number attribute 'score' (an integer)
    float:ratio      a number attribute 'ratio'
    date:joined      a date attribute 'joined', ISO-8601 with a zone (2024-01-02T10:00:00Z,
                     2024-01-02T12:00:00+02:00); a value without a zone is an error
    url:avatar       a URL attribute 'avatar'
    list:interests   an array attribute 'interests', split on '|'
    date(joined)     the wire form: the cell is sent as given (url(x) likewise)
  Header names are trimmed; attribute names are lowercase a-z, 0-9 and _ (at most 30).
  An empty cell leaves that attribute (or the tags) out for the record.
  NDJSON (.ndjson, .jsonl): one JSON object per line, as in the Python API:
    {"id": "u-1", "attributes": {"plan": "pro", "date(joined)": "2024-01-02T10:00:00Z"},
     "tags": ["vip"]}   (a bare JSON string is an ID; blank lines are skipped)
  Parquet (.parquet, not stdin; needs pip install 'batch-audience[data]'): column id is the
    ID, tags (list of strings) the tags, every other column an attribute typed by its column:
    string, integer, float, timestamp with a zone (sent as date(name)), list of strings; a
    column named date(x) or url(x) holds text sent as given. A null cell leaves it out.
  With --mode remove only the IDs are read; other columns and keys are ignored.

checks: a file (not stdin) is checked whole before the first request, with the upload's own
validator: an error anywhere (e.g. data.csv:5: record 4, id 'u-4': 16 attributes ...) sends
nothing. Records and lines are numbered from 1.

progress: a bar on stderr when it is a terminal (records, records/s, ETA); --no-progress
turns it off. -v logs each request and retry.

resuming: with --checkpoint FILE each acknowledged chunk is recorded in FILE; after an
interruption (Ctrl-C, a crash, a network failure) the same command resumes after the last
contiguously acknowledged record and ends with the same membership as an uninterrupted run.
A checkpoint made for another file, audience, mode, chunk size or project is refused. It is
deleted when the upload is complete (and indexed, with --wait).
"""


class UsageError(Exception):
    """Bad usage found after argument parsing (exit status 2)."""


# -- output ----------------------------------------------------------------------------------


class Console:
    """Writes to stdout and stderr, scrubbing every known key; knows the active progress bar."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        self.secrets = [s for s in secrets if s]
        self.bar: Any = None  # the tqdm bar being drawn on stderr, if any

    def _clean(self, text: str) -> str:
        # Only the keys themselves: the library already redacts URLs, and redacting again
        # would mangle a file path such as /data/1.0/users.csv.
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def out(self, text: str) -> None:
        """A line of the command's result on stdout."""
        sys.stdout.write(self._clean(text) + "\n")
        sys.stdout.flush()

    def err(self, text: str) -> None:
        """A line of diagnostics on stderr, above the progress bar if one is drawn."""
        text = self._clean(text)
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def error(self, exc: BaseException | str) -> None:
        """An error message, then its notes, on stderr."""
        self.err(f"{PROG}: error: {exc}")
        for note in getattr(exc, "__notes__", ()):
            self.err(f"  {note}")


class _LogHandler(logging.Handler):
    """Sends the library's log lines (-v) through the console: scrubbed, above the bar."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.err(self.format(record))
        except Exception:  # pragma: no cover - logging must never break the upload
            self.handleError(record)


def _tqdm_class(console: Console) -> Any:
    """tqdm's bar class, or None with a note saying how to get it."""
    try:
        module = importlib.import_module("tqdm")
    except ImportError:
        console.err(f"{PROG}: no progress bar: tqdm is not installed ({TQDM_INSTALL})")
        return None
    return module.tqdm


class ProgressBar:
    """Records done, records/s and ETA on stderr when it is a terminal; nothing otherwise."""

    def __init__(
        self,
        console: Console,
        *,
        enabled: bool,
        desc: str,
        total: int | None = None,
        initial: int = 0,
        unit: str = "rec",
    ) -> None:
        self.console = console
        self.initial = initial
        self._bar: Any = None
        if enabled:
            tqdm = _tqdm_class(console)
            if tqdm is not None:
                self._bar = tqdm(
                    total=total,
                    initial=initial,
                    desc=desc,
                    unit=unit,
                    unit_scale=True,
                    file=sys.stderr,
                    dynamic_ncols=True,
                    smoothing=0.1,
                )
                console.bar = self._bar

    def progress(self, update: Progress) -> None:
        """The ``progress=`` callback of an upload."""
        self.set(self.initial + update.records)

    def set(self, done: int) -> None:
        """Show ``done`` records."""
        if self._bar is not None and done != self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Remove the bar from the console."""
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.close()
            self.console.bar = None


def _bar_enabled(args: argparse.Namespace) -> bool:
    # The bar is drawn on stderr: only for a person watching a terminal.
    return not _opt(args, "no_progress", False) and sys.stderr.isatty()


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
    """An ArgumentParser whose usage errors are scrubbed of the keys it was given."""

    secrets: Sequence[str] = ()

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        for secret in _Parser.secrets:
            message = message.replace(secret, MASK) if message else message
        super()._print_message(message, file)


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
        "--no-progress", action="store_true", default=s, help="never draw a progress bar"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``batch-audience``."""
    common = _common_options()
    parser = _Parser(
        prog=PROG,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=help,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )

    upload = command(
        "upload", "upload the records of a CSV or NDJSON file to an audience", epilog=_UPLOAD_EPILOG
    )
    upload.add_argument("name", metavar="NAME", help="the audience (it must exist)")
    upload.add_argument(
        "file", metavar="FILE", help="a .csv, .ndjson, .jsonl or .parquet file, or - for stdin"
    )
    upload.add_argument(
        "--format", choices=FORMATS, help="the input format (default: by extension)"
    )
    upload.add_argument(
        "--mode",
        choices=("add", "remove", "replace"),
        default="add",
        help="add or update (default), remove the IDs, or replace all members",
    )
    upload.add_argument("--wait", action="store_true", help="wait until Batch indexed the upload")
    upload.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight (default: {DEFAULT_CONCURRENCY})",
    )
    upload.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=MAX_ENTRIES,
        metavar="N",
        help=f"records per request (default and maximum: {MAX_ENTRIES})",
    )
    upload.add_argument(
        "--dry-run",
        action="store_true",
        help="check the whole input and print what would be sent; send nothing, "
        "need no key, leave any checkpoint alone",
    )
    upload.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="record progress in FILE; rerun the same command to resume after an interruption",
    )

    create = command("create", "create an audience")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--display-name", help="2.x: a human-readable label")
    create.add_argument("--description", help="1.x: a human-readable label")
    create.add_argument(
        "--type",
        dest="audience_type",
        metavar="TYPE",
        help="1.0: custom_ids (default) or advertising_ids",
    )

    view = command("view", "describe an audience and its indexing state")
    view.add_argument("name", metavar="NAME")
    view.add_argument("--token", help="the indexing state of this write, not the latest")

    command("list", "list every audience, newest first")

    delete = command("delete", "delete an audience")
    delete.add_argument("name", metavar="NAME")

    fake = command("fake-server", "run the bundled fake Batch server until interrupted")
    fake.add_argument(
        "--host", default="127.0.0.1", help="the address to bind (default: 127.0.0.1)"
    )
    fake.add_argument(
        "--port", type=int, default=8080, help="the port (default: 8080; 0 picks a free one)"
    )
    fake.add_argument(
        "--indexing-delay",
        type=_non_negative_float,
        default=0.0,
        metavar="S",
        help="seconds a write stays IN_PROGRESS (default: 0)",
    )

    _add_sync_parser(command)

    demo = command(
        "demo",
        "start a fake Batch server in this process, upload generated records, wait, report",
    )
    demo.add_argument(
        "--records",
        type=_positive_int,
        default=DEMO_RECORDS,
        metavar="N",
        help=f"records to upload (default: {DEMO_RECORDS:,})",
    )
    demo.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight (default: {DEFAULT_CONCURRENCY})",
    )
    return parser


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


def make_client(args: argparse.Namespace) -> Client:
    """The client the global options describe; UsageError when a key is missing."""
    base_url = _opt(args, "base_url", None) or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
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
        )
    return CustomAudienceClient(
        _key(args, "api_key", ENV_API_KEY, "app API key (Custom Audience API 1.x)"),
        rest_key,
        version=generation,
        base_url=base_url,
        allow_insecure_http=insecure,
    )


# -- rendering ---------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def report_dict(report: UploadReport) -> dict[str, Any]:
    """An UploadReport as plain JSON values."""
    return {
        "audience": report.audience,
        "operation": report.operation,
        "records": report.records,
        "requests": report.requests,
        "tokens": list(report.tokens),
        "retries": report.retries,
        "elapsed": round(report.elapsed, 3),
        "records_per_second": round(report.records_per_second, 1),
        "atomic": report.atomic,
        "states": (
            {token: str(state) for token, state in report.states.items()}
            if report.states is not None
            else None
        ),
    }


def info_dict(info: AudienceInfo) -> dict[str, Any]:
    """An AudienceInfo as plain JSON values."""
    return {
        "name": info.name,
        "type": info.type,
        "nb_ids": info.nb_ids,
        "indexing_state": None if info.indexing_state is None else str(info.indexing_state),
        "created": _when(info.created),
        "updated": _when(info.updated),
        "display_name": info.display_name,
        "description": info.description,
    }


def _when(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def report_text(report: UploadReport) -> list[str]:
    """An UploadReport in a few lines for people."""
    verb = {"add": "added", "remove": "removed", "replace": "replaced"}.get(
        report.operation, report.operation
    )
    prep = {"add": "to", "remove": "from", "replace": "in"}.get(report.operation, "in")
    lines = [
        f"{verb} {_count(report.records, 'record')} {prep} {report.audience!r} in "
        f"{_count(report.requests, 'request')}: {report.elapsed:.2f} s, "
        f"{report.records_per_second:,.0f} records/s, {_count(report.retries, 'retry', 'retries')}"
    ]
    if report.operation == "replace" and not report.atomic:
        lines.append(
            "  not atomic: the first request replaced the members, the others added to them"
        )
    if report.states is not None:
        counts: dict[str, int] = {}
        for state in report.states.values():
            counts[str(state)] = counts.get(str(state), 0) + 1
        shown = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        lines.append(f"  indexing: {len(report.states)} tokens, {shown}")
    return lines


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def info_text(info: AudienceInfo) -> list[str]:
    """An AudienceInfo as aligned ``field value`` lines."""
    rows = [(k, v) for k, v in info_dict(info).items() if v is not None]
    width = max(len(k) for k, _ in rows)
    return [
        f"{k.ljust(width)}  {v:,}" if isinstance(v, int) else f"{k.ljust(width)}  {v}"
        for k, v in rows
    ]


# -- commands ----------------------------------------------------------------------------------


async def cmd_upload(args: argparse.Namespace, console: Console) -> int:
    """``upload NAME FILE``: check the file, then stream it, resuming from a checkpoint."""
    name = check_audience_name(args.name)
    path: str = args.file
    fmt: Format | None = args.format or (guess_format(path) if path != STDIN else None)
    if fmt is None:
        if path == STDIN:
            raise UsageError("reading stdin needs --format csv or --format ndjson")
        raise UsageError(
            f"cannot tell the format of {path!r}: name it .csv, .ndjson, .jsonl or .parquet, "
            "or pass --format csv|ndjson|parquet"
        )
    mode: Operation = args.mode
    checkpoint: str | None = args.checkpoint
    if checkpoint is not None and path == STDIN:
        raise UsageError("--checkpoint needs a file to resume from, not stdin")
    # Raises UnsupportedOperation at once for a replace on 1.0, before reading anything.
    encoder = EntryEncoder(_generation(args), mode)
    ids_only = mode == "remove"
    as_json = bool(_opt(args, "json", False))
    client = None if args.dry_run else make_client(args)

    async with contextlib.AsyncExitStack() as stack:
        upload: ResumableUpload | None = None
        if client is not None:
            await stack.enter_async_context(client)
            if checkpoint is not None:
                identity = await off_loop(_file_identity, path, fmt)
                upload = await stack.enter_async_context(
                    resumable(
                        client,
                        name,
                        path=checkpoint,
                        input=identity,
                        mode=mode,
                        chunk_size=args.chunk_size,
                    )
                )
        skip = upload.position if upload is not None else 0
        if upload is not None and upload.resumed:
            console.err(
                f"{PROG}: resuming from checkpoint {checkpoint!r}: "
                f"{skip:,} records were acknowledged by an earlier run"
            )
        total: int | None = None
        # A file is checked whole before the first request; stdin can be read only once, so
        # it is checked as it streams, except in a dry run, which reads it to the end.
        if args.dry_run or (path != STDIN and not (upload is not None and upload.done)):
            total = await _check_file(args, console, path, fmt, encoder, skip, ids_only)
        if args.dry_run:
            assert total is not None
            return _print_plan(console, as_json, name, mode, path, total, args.chunk_size)

        assert client is not None
        bar = ProgressBar(console, enabled=_bar_enabled(args), desc=name, total=total, initial=skip)
        stack.callback(bar.close)
        reader = await asyncio.to_thread(open_records, path, fmt, skip=skip, ids_only=ids_only)
        stack.callback(reader.close)
        if path != STDIN:
            # Passing millions of acknowledged records takes seconds: not on the loop.
            await off_loop(reader.skip_now)
        # stdin may wait on its producer: read it in a thread. A file is read on the loop's
        # thread, which costs half as much CPU as the hops to a thread and blocks microseconds.
        source: Iterable[object] | AsyncIterable[object] = (
            reader.threaded() if path == STDIN else reader
        )
        try:
            if upload is not None:
                report = await upload.run(
                    source, concurrency=args.concurrency, progress=bar.progress, wait=args.wait
                )
            else:
                method = {"add": client.add, "remove": client.remove, "replace": client.replace}
                report = await method[mode](
                    name,
                    source,
                    concurrency=args.concurrency,
                    progress=bar.progress,
                    chunk_size=args.chunk_size,
                    wait=args.wait,
                )
        except ValidationError as exc:
            raise _located(exc, reader) from None
        bar.close()

    if as_json:
        extra: dict[str, Any] = {"file": path, "format": fmt}
        if upload is not None:
            extra["resumed_from"] = skip
        console.out(_json({**report_dict(report), **extra}))
    else:
        for line in report_text(report):
            console.out(line)
    return EXIT_OK


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


def _file_identity(path: str, fmt: Format, *, stop: threading.Event) -> dict[str, Any]:
    try:
        return {**fingerprint(path, stop), "format": fmt}
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror or exc}") from None


def _located(exc: ValidationError, reader: RecordReader) -> ValidationError:
    """A record's validation error, naming the input line it came from."""
    if isinstance(exc, SourceError) or exc.position is None:
        return exc
    # A Parquet file has rows, not lines (its reader's line stays 0): name the row.
    line = reader.line or exc.position + 1
    located = SourceError.wrap(exc, source=reader.name, line=line)
    for note in getattr(exc, "__notes__", ()):
        located.add_note(note)
    return located


async def _check_file(
    args: argparse.Namespace,
    console: Console,
    path: str,
    fmt: Format,
    encoder: EntryEncoder,
    skip: int,
    ids_only: bool,
) -> int:
    """Validate every record of the file after ``skip``; return how many records it holds."""
    bar = ProgressBar(console, enabled=_bar_enabled(args), desc="checking", initial=skip)
    try:
        return await off_loop(
            check_file, path, fmt, encoder, skip=skip, ids_only=ids_only, tick=bar.set
        )
    finally:
        bar.close()


def check_file(
    path: str,
    fmt: Format,
    encoder: EntryEncoder,
    *,
    skip: int = 0,
    ids_only: bool = False,
    tick: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Read and validate every record after the first ``skip``; return the file's record count.

    The same EntryEncoder as the upload's, so a file that passes is one the upload will send.

    Raises:
        SourceError: the first record that cannot be read or breaks a rule, with its line.
        UsageError: the file cannot be opened.
        Interrupted: ``stop`` was set (the command was interrupted).
    """
    if fmt == "parquet":
        try:
            return check_parquet(path, encoder, skip=skip, ids_only=ids_only, tick=tick, stop=stop)
        except ModuleNotFoundError as exc:
            raise UsageError(f"reading Parquet: {exc}") from None
        except OSError as exc:
            raise UsageError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    try:
        reader = open_records(path, fmt, skip=skip, ids_only=ids_only)
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    with reader:
        reader.skip_now(stop)
        encode = encoder.encode
        position = skip
        for record in reader:
            try:
                encode(record, position)
            except ValidationError as exc:
                raise SourceError.wrap(exc, source=reader.name, line=reader.line) from None
            position += 1
            if not position % STOP_TICK:
                if stop is not None and stop.is_set():
                    raise Interrupted
                if tick is not None and not position % CHECK_TICK:
                    tick(position)
        return position


def _print_plan(
    console: Console,
    as_json: bool,
    name: str,
    mode: Operation,
    path: str,
    records: int,
    chunk_size: int,
) -> int:
    requests = -(-records // chunk_size)
    if mode == "replace" and records == 0:
        requests = 1  # an empty replace still empties the audience: one call
    if as_json:
        console.out(
            _json(
                {
                    "dry_run": True,
                    "audience": name,
                    "operation": mode,
                    "file": path,
                    "records": records,
                    "requests": requests,
                }
            )
        )
    else:
        shown = "<stdin>" if path == STDIN else path
        console.out(
            f"dry run: {shown} holds {_count(records, 'valid record')}; {mode} to {name!r} "
            f"would send {_count(requests, 'request')} of at most {chunk_size:,} records. "
            "Nothing was sent."
        )
    return EXIT_OK


async def cmd_create(args: argparse.Namespace, console: Console) -> int:
    """``create NAME``."""
    async with make_client(args) as client:
        token = await client.create(
            args.name,
            display_name=args.display_name,
            description=args.description,
            audience_type=args.audience_type,
        )
    if _opt(args, "json", False):
        console.out(_json({"audience": args.name, "created": True, "token": token}))
    else:
        console.out(f"created {args.name!r}")
    return EXIT_OK


async def cmd_view(args: argparse.Namespace, console: Console) -> int:
    """``view NAME``."""
    async with make_client(args) as client:
        info = await client.view(args.name, token=args.token)
    if _opt(args, "json", False):
        console.out(_json(info_dict(info)))
    else:
        for line in info_text(info):
            console.out(line)
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, console: Console) -> int:
    """``list``: every audience, newest first."""
    async with make_client(args) as client:
        audiences = [info async for info in client.list()]
    if _opt(args, "json", False):
        console.out(_json({"audiences": [info_dict(i) for i in audiences]}))
        return EXIT_OK
    rows = [("NAME", "IDS", "STATE", "TYPE", "UPDATED")]
    rows += [
        (
            i.name,
            f"{i.nb_ids:,}",
            str(i.indexing_state or "-"),
            i.type,
            _when(i.updated) or "-",
        )
        for i in audiences
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        console.out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


async def cmd_delete(args: argparse.Namespace, console: Console) -> int:
    """``delete NAME``."""
    async with make_client(args) as client:
        token = await client.delete(args.name)
    if _opt(args, "json", False):
        console.out(_json({"audience": args.name, "deleted": True, "token": token}))
    else:
        console.out(f"deleted {args.name!r}")
    return EXIT_OK


def cmd_fake_server(args: argparse.Namespace, console: Console) -> int:
    """``fake-server``: blocks until interrupted, printing its URL and keys first."""
    from .testing._serve import run_fake_server

    with contextlib.suppress(KeyboardInterrupt):
        run_fake_server(host=args.host, port=args.port, indexing_delay=args.indexing_delay)
    return EXIT_OK


class DemoRecords:
    """``count`` generated records with a few attributes; sized, so the bar shows an ETA."""

    PLANS: Final = ("free", "pro", "team")

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # A thousand attribute mappings, shared: the validator builds each entry's own copy,
        # so sharing is safe, and the generator stays cheap next to the upload it feeds.
        days = [datetime(2024, 1, 1 + d, 9, 30, tzinfo=UTC) for d in range(28)]
        variants = [
            {"plan": self.PLANS[k % 3], "score": k, "joined": days[k % 28]} for k in range(1000)
        ]
        for i in range(self.count):
            yield {"id": f"user-{i:07d}", "attributes": variants[i % 1000]}


async def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """``demo``: a fake server in this process, N generated records, indexing, a report."""
    from .testing import FakeBatchServer

    as_json = bool(_opt(args, "json", False))
    started = time.monotonic()
    async with (
        FakeBatchServer() as server,
        AudienceClient(server.rest_key, server.project_key, base_url=server.url) as client,
    ):
        if not as_json:
            console.out(f"fake Batch server (in this process) on {server.url}")
        await client.create("demo", display_name="batch-audience demo")
        bar = ProgressBar(console, enabled=_bar_enabled(args), desc="demo", total=args.records)
        try:
            report = await client.add(
                "demo",
                DemoRecords(args.records),
                concurrency=args.concurrency,
                progress=bar.progress,
            )
        finally:
            bar.close()
        waited = time.monotonic()
        states = await client.wait_applied("demo", report.tokens)
        report = _with_states(report, states)
        waited = time.monotonic() - waited
        info = await client.view("demo")
    total = time.monotonic() - started
    if as_json:
        console.out(
            _json(
                {
                    "report": report_dict(report),
                    "audience": info_dict(info),
                    "indexing_wait": round(waited, 3),
                    "wall_time": round(total, 3),
                }
            )
        )
        return EXIT_OK
    for line in report_text(report):
        console.out(line)
    console.out(f"  waited {waited:.2f} s for indexing")
    console.out("audience:")
    for line in info_text(info):
        console.out(f"  {line}")
    console.out(f"demo finished in {total:.1f} s")
    return EXIT_OK


def _with_states(report: UploadReport, states: Any) -> UploadReport:
    return attrs.evolve(report, states=states)


# -- sync (mirror sync: batch_audience/_sync.py) -------------------------------------------------

_SYNC_EPILOG: Final = """\
Makes the audience hold exactly the file's records, sending only what changed since the last
sync recorded in the state file (--state, a DuckDB database; one per audience): removes for
IDs that are gone, adds for new IDs and for IDs whose attributes or tags changed. The first
sync with a new state, or --full, replaces the members (not atomic beyond 10,000 records).
The whole file is read and checked before anything is sent. A sync that fails or is
interrupted leaves the last finished sync in the state: run the same command again.
If the audience was changed by something else since the last sync (its size differs), the
sync stops: --full rebuilds it. Input formats as for upload (see upload --help).
"""


def _add_sync_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    sync = command(
        "sync",
        "make an audience hold exactly a file's records, sending only what changed",
        epilog=_SYNC_EPILOG,
    )
    sync.add_argument("name", metavar="NAME", help="the audience (it must exist)")
    sync.add_argument("file", metavar="FILE", help="a .csv, .ndjson or .jsonl file, or - for stdin")
    sync.add_argument(
        "--state", required=True, metavar="PATH", help="the sync's state file (created if missing)"
    )
    sync.add_argument("--format", choices=FORMATS, help="the input format (default: by extension)")
    sync.add_argument(
        "--dry-run",
        action="store_true",
        help="read the input and print the plan, with example IDs; send nothing, change nothing",
    )
    sync.add_argument(
        "--full", action="store_true", help="replace the members with the whole input"
    )
    sync.add_argument("--wait", action="store_true", help="wait until Batch indexed the sync")
    sync.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight (default: {DEFAULT_CONCURRENCY})",
    )
    sync.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=MAX_ENTRIES,
        metavar="N",
        help=f"records per request (default and maximum: {MAX_ENTRIES})",
    )


class _PhaseBars:
    """One progress bar per sync phase (reading, diffing, sending), each replacing the last."""

    NAMES: Final = {"read": "reading", "diff": "diffing", "remove": "removing", "add": "adding"}

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.phase: str | None = None
        self.bar: ProgressBar | None = None

    def progress(self, update: Progress) -> None:
        """The ``progress=`` callback of a sync."""
        if update.operation != self.phase:
            self.close()
            self.phase = update.operation
            desc = self.NAMES.get(update.operation, update.operation + "ing")
            self.bar = ProgressBar(
                self.console, enabled=self.enabled, desc=desc, total=update.total
            )
        assert self.bar is not None
        self.bar.set(update.records)

    def close(self) -> None:
        """Remove the current bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


async def cmd_sync(args: argparse.Namespace, console: Console) -> int:
    """``sync NAME FILE --state PATH``: read the file, diff it with the state, send the changes."""
    name = check_audience_name(args.name)
    path: str = args.file
    fmt: Format | None = args.format or (guess_format(path) if path != STDIN else None)
    if fmt is None:
        if path == STDIN:
            raise UsageError("reading stdin needs --format csv or --format ndjson")
        raise UsageError(
            f"cannot tell the format of {path!r}: name it .csv, .ndjson or .jsonl, "
            "or pass --format csv|ndjson"
        )
    try:
        from ._syncstate import import_data

        import_data()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    as_json = bool(_opt(args, "json", False))
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(make_client(args))
        bars = _PhaseBars(console, _bar_enabled(args))
        stack.callback(bars.close)
        try:
            reader = await asyncio.to_thread(open_records, path, fmt)
        except OSError as exc:
            raise UsageError(f"cannot read {path!r}: {exc.strerror or exc}") from None
        stack.callback(reader.close)
        source: Iterable[object] | AsyncIterable[object] = (
            reader.threaded() if path == STDIN else reader
        )
        try:
            report = await client.sync(
                name,
                source,
                state=args.state,
                dry_run=args.dry_run,
                full=args.full,
                wait=args.wait,
                concurrency=args.concurrency,
                chunk_size=args.chunk_size,
                progress=bars.progress,
            )
        except ValidationError as exc:
            raise _located(exc, reader) from None
        bars.close()
    if as_json:
        console.out(_json({**sync_dict(report), "file": path, "format": fmt}))
    else:
        for line in sync_text(report, "<stdin>" if path == STDIN else path):
            console.out(line)
    return EXIT_OK


def sync_dict(report: SyncReport) -> dict[str, Any]:
    """A SyncReport as plain JSON values."""
    return {
        "audience": report.audience,
        "dry_run": report.dry_run,
        "full": report.full,
        "records": report.records,
        "added": report.added,
        "changed": report.changed,
        "removed": report.removed,
        "unchanged": report.unchanged,
        "duplicates": report.duplicates,
        "sent": report.sent,
        "requests": report.requests,
        "tokens": list(report.tokens),
        "retries": report.retries,
        "elapsed": round(report.elapsed, 3),
        "atomic": report.atomic,
        "resumed": report.resumed,
        "examples": {kind: list(ids) for kind, ids in report.examples.items()},
        "states": (
            {token: str(state) for token, state in report.states.items()}
            if report.states is not None
            else None
        ),
    }


def sync_text(report: SyncReport, shown: str) -> list[str]:
    """A SyncReport as a short table for people."""
    head = "dry run: " if report.dry_run else ""
    lines = [f"{head}sync {report.audience!r} from {shown}: {_count(report.records, 'record')}"]
    if report.duplicates:
        lines[0] += f" ({_count(report.duplicates, 'duplicate ID')}: the last occurrence kept)"
    if report.resumed:
        lines.append("  the previous sync had not finished: every ID it touched is sent again")
    rows = [
        ("added", report.added),
        ("changed", report.changed),
        ("removed", report.removed),
        ("unchanged", report.unchanged),
    ]
    for kind, count in rows:
        examples = report.examples.get(kind, ())
        more = f"   e.g. {', '.join(examples)}" if examples else ""
        lines.append(f"  {kind:<10} {count:>12,}{more}")
    verb = "would send" if report.dry_run else "sent"
    what = "the whole input as a replace" if report.full else "the changes"
    lines.append(
        f"  {verb} {what}: {_count(report.sent, 'ID')} in "
        f"{_count(report.requests, 'request')}"
        + (
            ""
            if report.dry_run
            else f", {report.elapsed:.2f} s, {_count(report.retries, 'retry', 'retries')}"
        )
    )
    if report.full and not report.atomic:
        lines.append(
            "  not atomic: the first request replaced the members, the others added to them"
        )
    if report.dry_run:
        lines.append("  Nothing was sent; the state is unchanged.")
    if report.states is not None:
        counts: dict[str, int] = {}
        for state in report.states.values():
            counts[str(state)] = counts.get(str(state), 0) + 1
        shown_states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        lines.append(f"  indexing: {len(report.states)} tokens, {shown_states}")
    return lines


_ASYNC_COMMANDS: Final[
    dict[str, Callable[[argparse.Namespace, Console], Coroutine[Any, Any, int]]]
] = {
    "upload": cmd_upload,
    "create": cmd_create,
    "view": cmd_view,
    "list": cmd_list,
    "delete": cmd_delete,
    "demo": cmd_demo,
    "sync": cmd_sync,
}


# -- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``batch-audience``; return its exit status."""
    parser = build_parser()
    # Even a usage error (a bad value next to a key) must not echo the key.
    _Parser.secrets = _argv_secrets(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    console = Console(_secrets(args))
    logger = logging.getLogger("batch_audience")
    handler: logging.Handler | None = None
    if _opt(args, "verbose", False):
        handler = _LogHandler(console)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        return _run(args, console)
    finally:
        if handler is not None:
            logger.removeHandler(handler)


def _run(args: argparse.Namespace, console: Console) -> int:
    try:
        if args.command == "fake-server":
            return cmd_fake_server(args, console)
        return asyncio.run(_ASYNC_COMMANDS[args.command](args, console))
    except KeyboardInterrupt:
        checkpoint = _opt(args, "checkpoint", None)
        hint = f": run the same command again to resume from {checkpoint!r}" if checkpoint else ""
        if _opt(args, "state", None):
            hint = ": the state keeps the last finished sync; run the same command again"
        console.err(f"{PROG}: interrupted{hint}")
        return EXIT_INTERRUPTED
    except (UsageError, ValidationError, UnsupportedOperation) as exc:
        console.error(exc)
        return EXIT_USAGE
    except BatchAudienceError as exc:
        console.error(exc)
        return EXIT_FAILED
    except OSError as exc:
        console.error(exc)
        return EXIT_USAGE
    except Exception:
        console.err(f"{PROG}: internal error, please report it:")
        console.err(traceback.format_exc().rstrip())
        return EXIT_FAILED
