"""``batch-audience upload NAME FILE``: check a file whole, stream it, resume from a checkpoint."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any, Final

from .._checkpoint import ResumableUpload, fingerprint, resumable
from .._exceptions import ValidationError
from .._sources import (
    FORMATS,
    STDIN,
    Format,
    Interrupted,
    SourceError,
    check_parquet,
    guess_format,
    open_records,
)
from .._upload import DEFAULT_CONCURRENCY, Operation
from .._validate import MAX_ENTRIES, EntryEncoder, check_audience_name
from .common import (
    EXIT_OK,
    PROG,
    AddCommand,
    UsageError,
    _chunk_size,
    _generation,
    _located,
    _opt,
    _positive_int,
    make_client,
    off_loop,
)
from .output import (
    Console,
    ProgressBar,
    _bar_enabled,
    _count,
    _heartbeat,
    _json,
    report_dict,
    report_text,
)

CHECK_TICK: Final = 10_000  # records between two updates of the pre-check's counter
STOP_TICK: Final = 1_000  # records the pre-check reads between two looks at its stop flag


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


def add_parser(command: AddCommand) -> None:
    upload = command(
        "upload",
        "upload the records of a CSV, NDJSON or Parquet file to an audience",
        epilog=_UPLOAD_EPILOG,
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
        # What earlier runs sent: the report counts the whole upload, we say what this run did.
        earlier = (skip, upload.earlier_requests) if upload is not None else (0, 0)
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
        bar = ProgressBar(
            console,
            enabled=_bar_enabled(args),
            heartbeat=_heartbeat(args),
            desc=name,
            total=total,
            initial=skip,
        )
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
        console.out(_json({**report_dict(report, earlier), **extra}))
    else:
        for line in report_text(report, earlier):
            console.out(line)
    return EXIT_OK


def _file_identity(path: str, fmt: Format, *, stop: threading.Event) -> dict[str, Any]:
    try:
        return {**fingerprint(path, stop), "format": fmt}
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror or exc}") from None


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
    bar = ProgressBar(
        console,
        enabled=_bar_enabled(args),
        heartbeat=_heartbeat(args),
        desc="checking",
        initial=skip,
    )
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
