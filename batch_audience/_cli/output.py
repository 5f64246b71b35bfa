"""What commands print: the scrubbing console, the progress bar, reports as JSON and as text."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from .._exceptions import ApiError
from .._models import AudienceInfo, Progress, UploadReport
from .._redact import MASK
from .common import DEFAULT_PROGRESS_EVERY, PROG, TQDM_INSTALL, _opt

# -- output ----------------------------------------------------------------------------------


class Console:
    """Writes to stdout and stderr, scrubbing every known key; knows the active progress bar."""

    def __init__(self, secrets: Sequence[str] = (), *, json_errors: bool = False) -> None:
        self.secrets = [s for s in secrets if s]
        self.bar: Any = None  # the tqdm bar being drawn on stderr, if any
        # --json: a failure is also one JSON object on stdout, for whoever parses it.
        self.json_errors = json_errors

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

    def err(self, text: str, *, end: str = "\n") -> None:
        """A line of diagnostics on stderr, above the progress bar if one is drawn."""
        text = self._clean(text)
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr, end=end)
        else:
            sys.stderr.write(text + end)
            sys.stderr.flush()

    def error(
        self, exc: BaseException | str, *, kind: str = "Error", prefix: str = f"{PROG}: error: "
    ) -> None:
        """An error message, then its notes, on stderr; with --json, the object on stdout."""
        self.err(f"{prefix}{exc}")
        for note in getattr(exc, "__notes__", ()):
            self.err(f"  {note}")
        self.json_error(exc, kind=kind)

    def json_error(self, exc: BaseException | str, *, kind: str = "Error") -> None:
        """With --json: ``{"error": {"type", "status", "message"}}`` on stdout (and notes)."""
        if self.json_errors:
            self.out(_json({"error": error_dict(exc, kind=kind)}))


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
    """Progress on stderr: a bar on a terminal, a plain line now and then in a log, or nothing.

    On a terminal (``enabled``) tqdm draws records done, records/s and the ETA. Elsewhere
    (cron, Airflow, CI logs), with ``heartbeat`` seconds, a line such as ``batch-audience:
    demo: 450,000/1,000,000 records (45%), 52,310 records/s, about 11 s left`` is printed at
    most that often, when progress was made: a log grows by a line per interval, not per chunk.
    """

    def __init__(
        self,
        console: Console,
        *,
        enabled: bool,
        desc: str,
        total: int | None = None,
        initial: int = 0,
        unit: str = "rec",
        heartbeat: float | None = None,  # seconds between two lines when there is no bar
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.initial = initial
        self.desc = desc
        self.total = total
        self._bar: Any = None
        self._clock = clock
        self._heartbeat = heartbeat if heartbeat and not enabled else None
        self._started = clock()
        self._last_line = self._started
        self._done = initial
        self._lines = 0
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
        elif self._heartbeat is not None and done != self._done:
            self._done = done
            now = self._clock()
            if now - self._last_line >= self._heartbeat:
                self._last_line = now
                self._lines += 1
                self.console.err(self._line(now))

    def _line(self, now: float) -> str:
        done, total = self._done, self.total
        shown = f"{done:,}/{total:,} records" if total else f"{done:,} records"
        if total:
            shown += f" ({100 * done // total}%)"
        elapsed = now - self._started
        rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
        shown += f", {rate:,.0f} records/s"
        if total and rate > 0 and done < total:
            shown += f", about {(total - done) / rate:,.0f} s left"
        return f"{PROG}: {self.desc}: {shown}"

    def close(self) -> None:
        """Remove the bar from the console; after heartbeat lines, a last one."""
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.close()
            self.console.bar = None
        elif self._heartbeat is not None:
            self._heartbeat = None
            if self._lines:
                # A log that showed progress shows where it ended.
                elapsed = self._clock() - self._started
                self.console.err(f"{PROG}: {self.desc}: {self._done:,} records in {elapsed:,.1f} s")


def _bar_enabled(args: argparse.Namespace) -> bool:
    # The bar is drawn on stderr: only for a person watching a terminal.
    return not _opt(args, "no_progress", False) and sys.stderr.isatty()


def _heartbeat(args: argparse.Namespace) -> float | None:
    """Seconds between two progress lines when stderr is not a terminal; None: no lines."""
    if _opt(args, "no_progress", False) or sys.stderr.isatty():
        return None
    every: float = _opt(args, "progress_every", DEFAULT_PROGRESS_EVERY)
    return every or None


# -- rendering ---------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def error_dict(exc: BaseException | str, *, kind: str = "Error") -> dict[str, Any]:
    """A failure as plain JSON values: its class, the HTTP status (API errors), the message."""
    found: dict[str, Any] = {
        "type": kind if isinstance(exc, str) else type(exc).__name__,
        "status": exc.status if isinstance(exc, ApiError) else None,
        "message": str(exc),
    }
    notes = list(getattr(exc, "__notes__", ()))
    if notes:
        found["notes"] = notes
    return found


def report_dict(report: UploadReport, earlier: Earlier = (0, 0)) -> dict[str, Any]:
    """An UploadReport as plain JSON values.

    ``records`` and ``requests`` count the whole upload; for a resumed one, ``this_run``
    counts what this run sent, and ``records_per_second`` is this run's rate.
    """
    records, requests = _this_run(report, earlier)
    found = {
        "audience": report.audience,
        "operation": report.operation,
        "records": report.records,
        "requests": report.requests,
        "tokens": list(report.tokens),
        "retries": report.retries,
        "elapsed": round(report.elapsed, 3),
        "records_per_second": round(_rate(records, report.elapsed), 1),
        "atomic": report.atomic,
        "states": (
            {token: str(state) for token, state in report.states.items()}
            if report.states is not None
            else None
        ),
    }
    if earlier != (0, 0):
        found["this_run"] = {"records": records, "requests": requests}
    return found


# Records and requests that earlier runs of a resumed upload had acknowledged.
Earlier = tuple[int, int]


def _this_run(report: UploadReport, earlier: Earlier) -> tuple[int, int]:
    return report.records - earlier[0], report.requests - earlier[1]


def _rate(records: int, elapsed: float) -> float:
    return records / elapsed if elapsed > 0 else 0.0


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


def report_text(report: UploadReport, earlier: Earlier = (0, 0)) -> list[str]:
    """An UploadReport in a few lines for people; a resumed one says what this run sent."""
    verb = {"add": "added", "remove": "removed", "replace": "replaced"}.get(
        report.operation, report.operation
    )
    prep = {"add": "to", "remove": "from", "replace": "in"}.get(report.operation, "in")
    records, requests = _this_run(report, earlier)
    resumed = earlier != (0, 0)
    if resumed and not records and not requests:
        # Earlier runs sent everything; this one at most waited for indexing.
        lines = [
            f"nothing left to send: earlier runs had {_count(report.records, 'record')} "
            f"{verb} {prep} {report.audience!r} in {_count(report.requests, 'request')}"
        ]
    else:
        lines = [
            f"{verb} {_count(records, 'record')} {prep} {report.audience!r} in "
            f"{_count(requests, 'request')}{' this run' if resumed else ''}: "
            f"{report.elapsed:.2f} s, {_rate(records, report.elapsed):,.0f} records/s, "
            f"{_count(report.retries, 'retry', 'retries')}"
        ]
        if resumed:
            lines.append(
                f"  with the earlier runs: {_count(report.records, 'record')} in "
                f"{_count(report.requests, 'request')}"
            )
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
