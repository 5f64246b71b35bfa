"""What commands print: the scrubbing console, the progress bar, reports as JSON and as text."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from .._models import AudienceInfo, Progress, UploadReport
from .._redact import MASK
from .common import PROG, TQDM_INSTALL, _opt

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
