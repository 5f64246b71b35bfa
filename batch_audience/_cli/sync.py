"""``batch-audience sync NAME FILE --state PATH``: mirror sync (batch_audience/_sync.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterable, Iterable
from typing import Any, Final

from .._exceptions import ValidationError
from .._models import Progress, SyncReport
from .._sources import FORMATS, STDIN, Format, guess_format, open_records
from .._upload import DEFAULT_CONCURRENCY
from .._validate import MAX_ENTRIES, check_audience_name
from .common import (
    EXIT_OK,
    AddCommand,
    UsageError,
    _chunk_size,
    _located,
    _opt,
    _positive_int,
    make_client,
)
from .output import Console, ProgressBar, _bar_enabled, _count, _heartbeat, _json

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


def add_parser(command: AddCommand) -> None:
    sync = command(
        "sync",
        "make an audience hold exactly a file's records, sending only what changed",
        epilog=_SYNC_EPILOG,
    )
    sync.add_argument("name", metavar="NAME", help="the audience (it must exist)")
    sync.add_argument(
        "file", metavar="FILE", help="a .csv, .ndjson, .jsonl or .parquet file, or - for stdin"
    )
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

    NAMES: Final = {
        "read": "reading",
        "diff": "diffing",
        "remove": "removing",
        "add": "adding",
        "replace": "replacing",
    }

    def __init__(self, console: Console, enabled: bool, heartbeat: float | None = None) -> None:
        self.console = console
        self.enabled = enabled
        self.heartbeat = heartbeat
        self.phase: str | None = None
        self.bar: ProgressBar | None = None

    def progress(self, update: Progress) -> None:
        """The ``progress=`` callback of a sync."""
        if update.operation != self.phase:
            self.close()
            self.phase = update.operation
            desc = self.NAMES.get(update.operation, update.operation.removesuffix("e") + "ing")
            self.bar = ProgressBar(
                self.console,
                enabled=self.enabled,
                heartbeat=self.heartbeat,
                desc=desc,
                total=update.total,
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
            f"cannot tell the format of {path!r}: name it .csv, .ndjson, .jsonl or .parquet, "
            "or pass --format csv|ndjson|parquet"
        )
    try:
        from .._syncstate import import_data

        import_data()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    as_json = bool(_opt(args, "json", False))
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(make_client(args))
        bars = _PhaseBars(console, _bar_enabled(args), _heartbeat(args))
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
    # A dry run tells what would happen: "to add", not "added".
    future = {"added": "to add", "changed": "to change", "removed": "to remove"}
    for kind, count in rows:
        examples = report.examples.get(kind, ())
        more = f"   e.g. {', '.join(examples)}" if examples else ""
        label = future.get(kind, kind) if report.dry_run else kind
        lines.append(f"  {label:<10} {count:>12,}{more}")
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
            "  not atomic: the first request would replace the members, the others add to them"
            if report.dry_run
            else "  not atomic: the first request replaced the members, the others added to them"
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
