"""Streaming CSV, NDJSON and Parquet readers: a file or stdin becomes records for uploads, lazily.

Memory stays constant whatever the input's size: bytes are read one line at a time, each
record is built from its own line(s), handed on and forgotten. Errors name the input, the
line and the rule, e.g. ``data.csv:5: record 4: ...``; records are numbered from 1, like lines.

CSV (``.csv``): UTF-8 (a BOM at the start is skipped), LF or CRLF line ends, RFC 4180 quoting
(a quoted cell may span lines). The first row is the header; each column is named by it:

======================  =================================================================
header                  the cell becomes
======================  =================================================================
``id``                  the record's ID (required, exactly one such column)
``tags``                the tags, split on ``|`` (``vip|beta``); tags are a 1.1 feature
``plan``                a string attribute ``plan``; ``str:plan`` says the same (and lets
                        an attribute be called ``id`` or ``tags``: ``str:id``)
``int:score``           a number attribute ``score``, read with Python's ``int()``
``float:ratio``         a number attribute ``ratio``, read with ``float()``
``date:joined``         a date attribute ``joined`` (sent as ``date(joined)``), an ISO-8601
                        date-time with a zone: ``2024-01-02T10:00:00Z`` or ``...+02:00``;
                        a value without a zone is an error, not a guess
``url:avatar``          a URL attribute ``avatar`` (sent as ``url(avatar)``)
``list:interests``      an array attribute ``interests``, split on ``|``
``date(joined)``        the wire form: sent as given, as a string (``url(x)`` likewise)
======================  =================================================================

An empty cell means the attribute (or the tags) is absent for that record. Header names are
trimmed of surrounding spaces (cells are not: they are sent as given). Attribute names follow
Batch's key rule (``[a-z0-9_]{1,30}``); a header breaking it, an unknown type prefix,
a repeated column or a missing ``id`` column is an error on line 1. A row with more or fewer
cells than the header is an error; blank lines are skipped.

NDJSON (``.ndjson``, ``.jsonl``): one JSON value per line, blank lines skipped. A line is an
object in the mapping shape of the Python API, ``{"id": "u-1", "attributes": {"plan": "pro",
"date(joined)": "2024-01-02T10:00:00Z"}, "tags": ["vip"]}`` (wire-form keys pass through as
given), or a bare JSON string, which is an ID.

With ``ids_only=True`` (what ``--mode remove`` uses) only the ID of each record is read; the
other columns or keys are ignored, so the same file serves for adding and for removing.

The readers parse; the upload's validator then checks each record (15 attributes, key rule,
value types...), and ``SourceError.wrap`` turns its error into one that names the line.
A reader is a plain iterable: uploads pull it on the event loop's thread, which for a local
file costs a few microseconds per 8 KiB read from the page cache. Skipping the records an
earlier run sent (``skip=``) is another matter: millions of lines in one go, so a resumed
upload first runs ``await reader.skip_in_thread()``. For an input whose reads can wait (stdin,
a pipe), ``reader.threaded()`` reads and parses in a daemon thread instead and hands over what
has arrived, so the event loop stays free and a record written by a slow producer reaches
the upload at once (the CLI does this for stdin).

Parquet (``.parquet``): ``ParquetRecords`` is a columnar source (``_columnar``), read batch by
batch through its Arrow C stream; it needs the data extra.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import re
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime
from typing import IO, Any, Final, Literal, TypeAlias

import orjson

from ._columnar import iter_columnar
from ._columnar.extra import import_extra
from ._exceptions import ValidationError
from ._intake import Intake
from ._models import Url
from ._validate import MAX_ENTRIES, EntryEncoder

__all__ = [
    "FORMATS",
    "CsvReader",
    "Format",
    "Interrupted",
    "NdjsonReader",
    "ParquetRecords",
    "RecordReader",
    "SourceError",
    "check_parquet",
    "guess_format",
    "open_records",
]

Format = Literal["csv", "ndjson", "parquet"]
FORMATS: Final[tuple[Format, ...]] = ("csv", "ndjson", "parquet")
_EXTENSIONS: Final[dict[str, Format]] = {
    ".csv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".parquet": "parquet",
}
STDIN: Final = "-"
# Records parsed, at most, per hand-over from the reading thread when read with ``async for``:
# ~1-5 ms of work, enough to make the hop's cost (~50 us) negligible, short enough to keep
# memory flat. Fewer go whenever the input has nothing more to read yet.
DEFAULT_BATCH: Final = 1_000
_AHEAD: Final = 4  # batches the reading thread may parse ahead of the upload
_READ_SIZE: Final = 1 << 16  # bytes asked for per read of a stream (stdin, a pipe)
_STOP_EVERY: Final = 4_096  # records skipped between two looks at the stop flag
_BOM: Final = b"\xef\xbb\xbf"
_KEY: Final = re.compile(r"[a-z0-9_]{1,30}")
_WIRE_KEY: Final = re.compile(r"(date|url)\(([a-z0-9_]{1,30})\)")
_TYPES: Final = ("str", "int", "float", "date", "url", "list")
_SHOW: Final = 40  # characters of a cell shown in an error message
# A JSON number of 19 or more digits, after what can come before a number. orjson reads an
# integer beyond 64 bits as a float, silently rounded (2**70 would be sent as 1.1805916e21):
# a line that may hold one is read again with the standard library, which keeps it exact, so
# the validator refuses it by name. A false match (digits in a string) only costs time.
_LONG_NUMBER: Final = re.compile(rb"[-:,\[\s][0-9]{19}")


def guess_format(path: str) -> Format | None:
    """The format a file name's extension stands for (``.csv``, ``.ndjson``, ``.jsonl``)."""
    lowered = path.lower()
    for extension, fmt in _EXTENSIONS.items():
        if lowered.endswith(extension):
            return fmt
    return None


class Interrupted(Exception):
    """Work in a thread saw its stop flag: whoever waited for it was cancelled (Ctrl-C)."""


class SourceError(ValidationError):
    """A record of an input file is unreadable or breaks a rule; names the input and the line."""

    def __init__(
        self,
        rule: str,
        *,
        source: str,
        line: int,
        position: int | None = None,
        record_id: str | None = None,
        acknowledged: int | None = None,
    ) -> None:
        super().__init__(rule, position=position, record_id=record_id, acknowledged=acknowledged)
        self.source = source
        self.line = line

    @classmethod
    def wrap(cls, error: ValidationError, *, source: str, line: int) -> SourceError:
        """The validator's ``error`` about the record read from ``line`` of ``source``."""
        if isinstance(error, SourceError):
            return error
        wrapped = cls(
            error.rule,
            source=source,
            line=line,
            position=error.position,
            record_id=error.record_id,
            acknowledged=error.acknowledged,
        )
        wrapped.report = error.report
        # Chunks that failed in flight stay as visible as in the validator's error.
        wrapped.errors = error.errors
        if error.errors:
            wrapped.__cause__ = error.errors[0]
        return wrapped

    def __str__(self) -> str:
        parts = []
        if self.position is not None:
            parts.append(f"record {self.position + 1}")
        if self.record_id is not None:
            parts.append(f"id {_show(self.record_id)}")
        where = f"{', '.join(parts)}: " if parts else ""
        # Line 0: about no line (a Parquet file's schema): the file alone, not "file:0:".
        at = f"{self.source}:{self.line}" if self.line else self.source
        return f"{at}: {where}{self.rule}{self._tail()}"

    def __reduce__(self) -> Any:
        return (
            _rebuild,
            (
                self.rule,
                self.source,
                self.line,
                self.position,
                self.record_id,
                self.acknowledged,
                self.errors,
            ),
        )


def _rebuild(
    rule: str,
    source: str,
    line: int,
    position: int | None,
    record_id: str | None,
    acknowledged: int | None,
    errors: tuple[Exception, ...] = (),
) -> SourceError:
    error = SourceError(
        rule,
        source=source,
        line=line,
        position=position,
        record_id=record_id,
        acknowledged=acknowledged,
    )
    error.errors = errors
    return error


# One parsed record and the line it starts on.
_Item: TypeAlias = tuple[object, int]
# What _items yields once the header is read and the skipped records are passed.
_SKIPPED: Final[_Item] = (object(), 0)


class RecordReader:
    """Records of a CSV or NDJSON byte stream, read lazily; iterate it once.

    ``line`` is the line the last record handed out starts on, and ``count`` how many records
    were handed out (skipped ones included), so an error raised while the record is being
    validated can name its line: ``SourceError.wrap(err, source=r.name, line=r.line)``.
    """

    def __init__(
        self,
        lines: Iterable[bytes],
        *,
        name: str,
        skip: int = 0,
        ids_only: bool = False,
        closer: Callable[[], None] | None = None,
    ) -> None:
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
        self.name = name
        self.skip = skip
        self.ids_only = ids_only
        self.line = 0
        self.count = 0
        self._lines = lines
        self._physical = 0  # lines read so far
        # Position of the record being parsed; ahead of ``count`` when a worker thread parses.
        self._parsed = 0
        # False while reading a CSV header: its errors are about no record.
        self._in_records = True
        self._closer = closer
        self._started = False
        self._source: Iterator[_Item] | None = None  # set once skip_now has run

    # -- the line source -------------------------------------------------------------------

    def _numbered(self) -> Iterator[bytes]:
        """The input's lines as bytes, counted; a UTF-8 BOM at the very start is dropped."""
        first = True
        for raw in self._lines:
            self._physical += 1
            if first:
                first = False
                if raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
            yield raw

    def _error(
        self, rule: str, *, line: int | None = None, record_id: str | None = None
    ) -> SourceError:
        return SourceError(
            rule,
            source=self.name,
            line=self._physical if line is None else line,
            position=self._parsed if self._in_records else None,
            record_id=record_id,
        )

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1]
            raise self._error(
                f"byte 0x{bad.hex()} at column {exc.start + 1} is not valid UTF-8 "
                "(save the file as UTF-8)"
            ) from None

    # -- iteration -------------------------------------------------------------------------

    def _items(self, stop: threading.Event | None) -> Iterator[_Item]:
        """_SKIPPED once past the header and the skipped records, then (record, first line)
        pairs; subclasses parse. The skip looks at ``stop`` now and then (Interrupted)."""
        raise NotImplementedError

    def skip_now(self, stop: threading.Event | None = None) -> None:
        """Read the header and pass the first ``skip`` records now; blocking, for a thread.

        Resuming after millions of records takes a second or more: ``skip_in_thread`` runs
        this off the event loop. Iteration then starts with the first record not skipped.

        Raises:
            SourceError: the header is bad.
            Interrupted: ``stop`` was set before the skip ended.
        """
        if not self._started:
            self._skip(stop)

    def _skip(self, stop: threading.Event | None) -> None:
        if self._source is not None:
            return
        self._parsed = self.skip
        items = self._items(stop)
        # None: the input ended within the skipped records.
        self._source = items if next(items, None) is not None else iter(())

    async def skip_in_thread(self) -> None:
        """``skip_now`` in a worker thread; a cancellation stops it soon."""
        if self._started or self._source is not None:
            return
        stop = threading.Event()
        # The garbage collector is left as the process's owner set it (a library never changes
        # interpreter-wide state): the skipped rows are garbage at once, so collections of
        # them stay young and short.
        try:
            await asyncio.to_thread(self.skip_now, stop)
        finally:
            stop.set()

    def _claim(self) -> Iterator[_Item]:
        if self._started:
            raise RuntimeError(f"{self.name}: a RecordReader can be iterated only once")
        self._started = True
        self.count = self.skip
        return self._counted()

    def _counted(self) -> Iterator[_Item]:
        self._skip(None)
        assert self._source is not None
        self._parsed = self.skip
        for item in self._source:
            yield item
            self._parsed += 1

    def __iter__(self) -> Iterator[object]:
        for record, line in self._claim():
            self.line = line
            self.count += 1
            yield record

    def threaded(self) -> AsyncIterable[object]:
        """The records as an async iterable that reads and parses in a daemon thread.

        For inputs whose reads can wait (stdin, a pipe, a network file system): the event loop
        stays free meanwhile, each record is handed over as soon as the input had its line
        (up to DEFAULT_BATCH at a time), and a read blocked on an idle pipe never holds up a
        cancellation or the interpreter's exit. A local file is faster read directly: a thread
        hop costs ~1 us per record, a page-cache read a few microseconds per 8 KiB.
        """
        return _Threaded(self)

    async def _aiter(self) -> AsyncIterator[object]:
        feed = _Feed(asyncio.get_running_loop(), self._claim(), self._lines)
        try:
            while True:
                batch, error, last = await feed.get()
                for record, line in batch:
                    self.line = line
                    self.count += 1
                    yield record
                if error is not None:
                    raise error
                if last:
                    return
        finally:
            feed.stop()

    def close(self) -> None:
        """Close the file this reader opened (stdin is never closed)."""
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Threaded(AsyncIterable[object]):
    """A reader's records, read and parsed a batch at a time in a worker thread."""

    def __init__(self, reader: RecordReader) -> None:
        self.reader = reader

    def __aiter__(self) -> AsyncIterator[object]:
        return self.reader._aiter()


_Batch: TypeAlias = tuple[list[_Item], BaseException | None, bool]  # items, error, last


class _Feed:
    """Parses a reader's items in a daemon thread and hands them to the loop in batches.

    A batch goes when it holds DEFAULT_BATCH items, or before a read that may wait (the input
    has nothing more yet), so a slow producer's records are not held back. At most _AHEAD
    batches wait for the loop (memory stays flat). The thread is a daemon and never joined:
    a read blocked on an idle pipe cannot delay a cancellation or the exit. ``stop`` makes it
    end at its next hand-over.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, items: Iterator[_Item], lines: Iterable[bytes]
    ) -> None:
        self._loop = loop
        self._items = items
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue()
        self._room = threading.Semaphore(_AHEAD)
        self._stopped = False
        self._batch: list[_Item] = []
        if isinstance(lines, _StreamLines):
            lines.before_wait = self._flush
        threading.Thread(target=self._run, name="batch_audience reader", daemon=True).start()

    async def get(self) -> _Batch:
        """The next batch; ``last`` is true for the final one."""
        batch = await self._queue.get()
        self._room.release()
        return batch

    def stop(self) -> None:
        """Let the thread end at its next hand-over, even if it waits for room."""
        self._stopped = True
        self._room.release()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            for item in self._items:
                self._batch.append(item)
                if len(self._batch) >= DEFAULT_BATCH:
                    self._flush()
        except Interrupted:
            return
        except Exception as exc:
            # The records before the bad one still go out first, as with a plain iteration.
            error = exc
        self._send(error, last=True)

    def _flush(self) -> None:
        if self._batch:
            self._send(None, last=False)
        if self._stopped:
            raise Interrupted

    def _send(self, error: BaseException | None, *, last: bool) -> None:
        batch, self._batch = self._batch, []
        self._room.acquire()
        if self._stopped:
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (batch, error, last))
        except RuntimeError:  # the loop is closed: nobody is reading any more
            self._stopped = True


class _StreamLines:
    """The lines of a byte stream, read with reads that return what has arrived.

    ``before_wait``, when set, is called before each read that may block: the reading thread
    hands over what it has parsed so far (see _Feed).
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.before_wait: Callable[[], None] | None = None

    def __iter__(self) -> Iterator[bytes]:
        # read1 (buffered) and a raw read both return what is there rather than wait for more.
        read: Callable[[int], bytes | None] = getattr(self.stream, "read1", self.stream.read)
        rest = b""
        while True:
            if self.before_wait is not None:
                self.before_wait()
            data = read(_READ_SIZE)
            if not data:
                if rest:
                    yield rest
                return
            start = 0
            while end := data.find(b"\n", start) + 1:
                if rest:
                    yield rest + data[start:end]
                    rest = b""
                else:
                    yield data[start:end]
                start = end
            rest += data[start:]


# -- CSV -------------------------------------------------------------------------------------

_STR: Final = 0
_INT: Final = 1
_FLOAT: Final = 2
_DATE: Final = 3
_URL: Final = 4
_LIST: Final = 5
_KINDS: Final = {
    "str": _STR,
    "int": _INT,
    "float": _FLOAT,
    "date": _DATE,
    "url": _URL,
    "list": _LIST,
}


class CsvReader(RecordReader):
    """Records of a CSV stream with a header row (see the module docstring for the columns)."""

    def _items(self, stop: threading.Event | None) -> Iterator[_Item]:
        text_lines = (self._decode(raw) for raw in self._numbered())
        rows = csv.reader(text_lines, strict=True)
        self._in_records = False
        header = self._next_row(rows)
        if header is None:
            raise self._error("the file is empty: a CSV input needs a header row", line=1)
        header_line = self._physical
        id_index, tags_index, columns = self._parse_header(header, header_line)
        self._in_records = True
        width = len(header)
        skipped = 0
        while skipped < self.skip:
            # Skipped records were validated by an earlier run: split them, build nothing.
            row = self._next_row(rows)
            if row is None:
                return
            if row:
                skipped += 1
                if stop is not None and not skipped % _STOP_EVERY and stop.is_set():
                    raise Interrupted
        yield _SKIPPED
        ids_only = self.ids_only
        while True:
            start = self._physical + 1
            row = self._next_row(rows)
            if row is None:
                return
            if not row:
                continue  # a blank line
            if len(row) != width:
                raise self._error(
                    f"{len(row)} cells, but the header (line {header_line}) has {width} columns",
                    line=start,
                )
            rid = row[id_index]
            if ids_only:
                yield rid, start
                continue
            attributes: dict[str, object] = {}
            for index, key, kind in columns:
                cell = row[index]
                if cell:
                    attributes[key] = (
                        cell if kind == _STR else self._convert(cell, kind, key, start, rid)
                    )
            record: dict[str, object] = {"id": rid}
            if attributes:
                record["attributes"] = attributes
            if tags_index is not None and row[tags_index]:
                record["tags"] = row[tags_index].split("|")
            yield record, start

    def _next_row(self, rows: Iterator[list[str]]) -> list[str] | None:
        start = self._physical + 1  # the csv module reads a row's lines only as it needs them
        try:
            return next(rows)
        except StopIteration:
            return None
        except csv.Error as exc:
            raise self._csv_error(str(exc), start) from None

    def _csv_error(self, message: str, start: int) -> SourceError:
        """The csv module's error, at the line where the row began when a quote ran on.

        An unclosed quote swallows every line after it: the csv module then fails at the end
        of the file, or thousands of lines later once the field passes its size limit. Either
        way the mistake is in the row that started at ``start``.
        """
        fix = 'close the quote, or write a quote inside a quoted field as ""'
        if "unexpected end of data" in message:
            return self._error(
                f"a quote opened in the row that starts here is never closed (the file ends "
                f"inside it, on line {self._physical}): {fix}",
                line=start,
            )
        if "field larger than field limit" in message and self._physical > start:
            return self._error(
                f"a quote opened in the row that starts here is never closed: the quoted "
                f"field runs on to line {self._physical} and past "
                f"{csv.field_size_limit():,} characters: {fix}",
                line=start,
            )
        return self._error(f"malformed CSV: {message}")

    def _parse_header(
        self, header: list[str], line: int
    ) -> tuple[int, int | None, list[tuple[int, str, int]]]:
        id_index: int | None = None
        tags_index: int | None = None
        columns: list[tuple[int, str, int]] = []
        seen: dict[str, str] = {}
        for index, raw_name in enumerate(header):
            name = raw_name.strip()

            def bad(why: str, name: str = name, index: int = index) -> SourceError:
                return SourceError(
                    f"column {index + 1} {_show(name)}: {why}", source=self.name, line=line
                )

            if not name:
                raise bad("a column has no name")
            if name == "id":
                if id_index is not None:
                    raise bad("a second 'id' column")
                id_index = index
                continue
            if name == "tags":
                if tags_index is not None:
                    raise bad("a second 'tags' column")
                tags_index = index
                continue
            prefix, colon, key = name.partition(":")
            if colon:
                if prefix not in _KINDS:
                    raise bad(f"unknown type {prefix!r}: use one of {', '.join(_TYPES)}")
                kind = _KINDS[prefix]
                wire = key
                if not _KEY.fullmatch(key):
                    raise bad(f"attribute name {_show(key)} breaks the key rule: {_KEY_RULE}")
                if kind == _DATE:
                    wire = f"date({key})"
                elif kind == _URL:
                    wire = f"url({key})"
            else:
                kind, key, wire = _STR, name, name
                wire_form = _WIRE_KEY.fullmatch(name)
                if wire_form is not None:
                    key = wire_form.group(2)
                elif not _KEY.fullmatch(name):
                    raise bad(
                        f"attribute name breaks the key rule: {_KEY_RULE} "
                        "(typed columns are written like int:score)"
                    )
            # date:x and date(x) and x all name one attribute on the wire: refuse repeats.
            if key in seen:
                raise bad(f"attribute {key!r} is already given by column {seen[key]!r}")
            seen[key] = name
            # The record carries typed values under the plain key; the validator writes
            # date(...)/url(...) itself. Wire-form headers keep their key, sent as given.
            columns.append((index, wire if kind == _STR else key, kind))
        if id_index is None:
            shown = ", ".join(_show(h) for h in header[:8])
            raise SourceError(
                f"no 'id' column in the header (columns: {shown})", source=self.name, line=line
            )
        return id_index, tags_index, columns

    def _convert(self, cell: str, kind: int, key: str, line: int, rid: str) -> object:
        try:
            if kind == _INT:
                return int(cell)
            if kind == _FLOAT:
                number = float(cell)
                if not math.isfinite(number):
                    raise ValueError
                return number
            if kind == _LIST:
                return cell.split("|")
            if kind == _URL:
                return Url(cell)
            value = datetime.fromisoformat(cell)
        except ValueError:
            wanted = {
                _INT: "an integer",
                _FLOAT: "a finite number",
                _DATE: "an ISO-8601 date-time with a zone, like 2024-01-02T10:00:00Z",
            }[kind]
            raise self._error(
                f"attribute {key!r} value {_show(cell)} is not {wanted}", line=line, record_id=rid
            ) from None
        if value.utcoffset() is None:
            raise self._error(
                f"attribute {key!r} value {_show(cell)} has no time zone: add Z for UTC "
                "or an offset like +02:00",
                line=line,
                record_id=rid,
            )
        return value


_KEY_RULE: Final = "lowercase a-z, 0-9 and _, at most 30 characters"


# -- NDJSON ----------------------------------------------------------------------------------


class NdjsonReader(RecordReader):
    """Records of an NDJSON stream: one JSON object (or bare ID string) per line."""

    def _items(self, stop: threading.Event | None) -> Iterator[_Item]:
        lines = self._numbered()
        skipped = 0
        if self.skip:
            for raw in lines:
                # Skipped records were validated by an earlier run: count them, parse nothing.
                if raw.strip():
                    skipped += 1
                    if skipped == self.skip:
                        break
                    if stop is not None and not skipped % _STOP_EVERY and stop.is_set():
                        raise Interrupted
            else:
                return  # the input ended within the skipped records
        yield _SKIPPED
        loads = orjson.loads
        ids_only = self.ids_only
        for raw in lines:
            try:
                value = loads(raw)
            except orjson.JSONDecodeError as exc:
                if not raw.strip():
                    continue  # a blank line
                self._decode(raw)  # names an undecodable byte precisely
                column = min(exc.pos, len(raw.rstrip(b"\r\n"))) + 1
                raise self._error(f"malformed JSON at column {column}: {exc.msg}") from None
            if _LONG_NUMBER.search(raw) is not None:
                value = self._exact(raw)
            if type(value) is dict:
                if ids_only:
                    if "id" not in value:
                        raise self._error(_needs_id(value))
                    yield value["id"], self._physical
                else:
                    yield value, self._physical
            elif type(value) is str:
                yield value, self._physical
            else:
                raise self._error(
                    "each line must hold a JSON object like "
                    '{"id": "u-1", "attributes": {...}} or an ID string, '
                    f"got a JSON {_json_type(value)}"
                )

    def _exact(self, raw: bytes) -> Any:
        """A line orjson accepted, read again keeping integers exact whatever their size."""
        try:
            return json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            # Past 4,300 digits int() refuses (sys.get_int_max_str_digits); deep nesting recurses.
            raise self._error(f"a number or the nesting of this line is too large: {exc}") from None


def _needs_id(value: dict[str, Any]) -> str:
    keys = ", ".join(_show(k) for k in list(value)[:5])
    return f"a record needs an 'id' key, got keys [{keys}]"


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW else f"{text[: _SHOW - 3]}..."


# -- opening ---------------------------------------------------------------------------------


def open_records(
    path: str,
    format: Format | None = None,
    *,
    skip: int = 0,
    ids_only: bool = False,
    stdin: IO[bytes] | None = None,
) -> RecordReader:
    """A reader of the records in file ``path`` (``-`` for stdin), by extension or ``format``.

    Use it as a context manager, or call ``close()``: it owns the file it opened.

    Raises:
        ValidationError: the format cannot be told from the name and was not given.
        OSError: the file cannot be opened.
    """
    if format is None:
        format = guess_format(path) if path != STDIN else None
        if format is None:
            what = "stdin" if path == STDIN else repr(path)
            raise ValidationError(
                f"cannot tell the format of {what}: name it .csv, .ndjson or .jsonl, "
                "or give the format (csv or ndjson)"
            )
    if format not in FORMATS:
        raise ValidationError(f"format must be 'csv', 'ndjson' or 'parquet', got {format!r}")
    if format == "parquet":
        if path == STDIN:
            raise ValidationError("Parquet cannot be read from stdin: give the file's path")
        return ParquetRecords(path, skip=skip, ids_only=ids_only)
    reader_class = CsvReader if format == "csv" else NdjsonReader
    if path == STDIN:
        # The process's stdin is read unbuffered, from its file descriptor: a daemon thread
        # blocked in a buffered read holds the buffer's lock, and the interpreter aborts when
        # it finds that lock taken at exit.
        stream = stdin if stdin is not None else getattr(sys.stdin.buffer, "raw", sys.stdin.buffer)
        lines = _StreamLines(stream)
        return reader_class(lines, name="<stdin>", skip=skip, ids_only=ids_only)
    file = open(path, "rb")  # noqa: SIM115 -- the reader owns it and closes it
    return reader_class(file, name=path, skip=skip, ids_only=ids_only, closer=file.close)


# -- Parquet files, for the command line -------------------------------------------------------

PARQUET_BATCH_ROWS: Final = 65_536  # rows per batch read from a Parquet file


class ParquetRecords(RecordReader):
    """The rows of a Parquet file as a columnar source (``upload FILE.parquet``).

    Uploads read it through ``__arrow_c_stream__``, batch by batch, after the first ``skip``
    rows (a resumed upload). With ``ids_only`` (``--mode remove``) only the ``id`` column is
    read, so the file that filled an audience also empties it. ``line`` stays 0: a Parquet
    file has rows, not lines, and errors name the row (``users.parquet:25001: record 25001``).
    Iterating it gives the rows as record mappings, for callers that want records.
    """

    def __init__(self, path: str, *, skip: int = 0, ids_only: bool = False) -> None:
        if path == STDIN:
            # Parquet keeps its schema and row groups' places at the end of the file.
            raise ValidationError("Parquet cannot be read from stdin: give the file's path")
        pa, parquet = import_extra("pyarrow"), import_extra("pyarrow.parquet")
        super().__init__((), name=path, skip=skip, ids_only=ids_only)
        try:
            self._file: Any = parquet.ParquetFile(path)
        except pa.ArrowException as exc:
            raise SourceError(f"cannot read it as Parquet: {exc}", source=path, line=0) from None
        self._closer = self._file.close
        self.rows: int = self._file.metadata.num_rows

    def _batches(self) -> Iterator[Any]:
        if self._started:
            raise RuntimeError(f"{self.name}: a Parquet source can be read only once")
        self._started = True
        columns = ["id"] if self.ids_only and "id" in self._file.schema_arrow.names else None
        left = self.skip
        for batch in self._file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            if left >= batch.num_rows:
                left -= batch.num_rows
                continue
            yield batch.slice(left) if left else batch
            left = 0

    def _schema(self) -> Any:
        schema = self._file.schema_arrow
        if self.ids_only and "id" in schema.names:
            return self._pa().schema([schema.field("id")])
        return schema

    @staticmethod
    def _pa() -> Any:
        return import_extra("pyarrow")

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        """The rows after ``skip`` as an Arrow C stream (read lazily, batch by batch)."""
        reader = self._pa().RecordBatchReader.from_batches(self._schema(), self._batches())
        return reader.__arrow_c_stream__(requested_schema)

    def skip_now(self, stop: threading.Event | None = None) -> None:
        """Nothing to do now: the stream passes the skipped rows by whole batches as it reads."""

    def __iter__(self) -> Iterator[object]:
        names = [n for n in self._schema().names if n not in ("id", "tags")]
        self.count = self.skip
        for batch in self._batches():
            for row in batch.to_pylist():
                record: dict[str, Any] = {"id": row["id"]}
                if names:
                    record["attributes"] = {n: row[n] for n in names if row[n] is not None}
                if "tags" in row:
                    record["tags"] = row["tags"]
                self.count += 1
                yield record


def check_parquet(
    path: str,
    encoder: EntryEncoder,
    *,
    skip: int = 0,
    ids_only: bool = False,
    tick: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Check a Parquet file as its upload will read it; return its row count (``skip`` included).

    The very chunks the upload sends are built and dropped, so a file that passes is one the
    upload sends whole.

    Raises:
        SourceError: the schema, or the first bad row (named by its row number).
        OSError: the file cannot be opened.
        Interrupted: ``stop`` was set.
    """
    operation = encoder.operation
    intake = Intake(encoder.generation, "add" if operation == "replace" else operation)
    first = Intake(encoder.generation, "replace") if operation == "replace" else None
    with ParquetRecords(path, skip=skip, ids_only=ids_only) as records:
        position = skip
        try:
            for chunk in iter_columnar(records, intake, size=MAX_ENTRIES, start=skip, first=first):
                position = chunk.end
                if stop is not None and stop.is_set():
                    raise Interrupted
                if tick is not None:
                    tick(position)
        except ValidationError as exc:
            if isinstance(exc, SourceError):
                raise
            line = 0 if exc.position is None else exc.position + 1
            raise SourceError.wrap(exc, source=path, line=line) from None
        return position
