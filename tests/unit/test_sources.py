"""The CSV and NDJSON readers: typed columns, tags, encodings, line numbers, laziness."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from batch_audience import Url, ValidationError
from batch_audience._sources import (
    CsvReader,
    Interrupted,
    NdjsonReader,
    RecordReader,
    SourceError,
    guess_format,
    open_records,
)
from batch_audience._validate import EntryEncoder


def csv_records(text: str | bytes, **kwargs: object) -> list[object]:
    """Every record of a CSV given as text or bytes."""
    data = text.encode() if isinstance(text, str) else text
    return list(CsvReader(io.BytesIO(data), name="data.csv", **kwargs))  # type: ignore[arg-type]


def ndjson_records(text: str | bytes, **kwargs: object) -> list[object]:
    """Every record of an NDJSON input given as text or bytes."""
    data = text.encode() if isinstance(text, str) else text
    return list(NdjsonReader(io.BytesIO(data), name="data.ndjson", **kwargs))  # type: ignore[arg-type]


def error_of(records: Iterator[object] | RecordReader) -> SourceError:
    """The SourceError that iterating raises."""
    with pytest.raises(SourceError) as info:
        list(records)
    return info.value


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_typed_columns_become_typed_attributes() -> None:
    """Each header prefix gives its documented type; a plain header is a string attribute."""
    text = (
        "id,plan,int:score,float:ratio,date:joined,url:avatar,list:interests,str:id,date(seen)\n"
        "u-1,pro,42,0.5,2024-01-02T10:00:00Z,https://x.example/a.png,bikes|books,ext-1,"
        "2023-08-12T22:30:05\n"
    )
    [record] = csv_records(text)
    assert record == {
        "id": "u-1",
        "attributes": {
            "plan": "pro",
            "score": 42,
            "ratio": 0.5,
            "joined": datetime(2024, 1, 2, 10, tzinfo=UTC),
            "avatar": Url("https://x.example/a.png"),
            "interests": ["bikes", "books"],
            "id": "ext-1",
            "date(seen)": "2023-08-12T22:30:05",
        },
    }
    assert type(record["attributes"]["avatar"]) is Url


def test_csv_dates_keep_their_offset_and_encode_to_utc() -> None:
    """A date with an offset is read as that instant and sent as UTC with Z."""
    [record] = csv_records("id,date:joined\nu-1,2024-01-02T12:00:00+02:00\n")
    joined = record["attributes"]["joined"]  # type: ignore[index]
    assert joined == datetime(2024, 1, 2, 12, tzinfo=timezone(timedelta(hours=2)))
    _, entry = EntryEncoder("2", "add").encode(record, 0)
    assert entry["attributes"] == {"date(joined)": "2024-01-02T10:00:00Z"}


def test_csv_empty_cells_leave_attributes_and_tags_out() -> None:
    """An empty cell is an absent attribute; a record with none has no attributes key."""
    records = csv_records("id,plan,int:score,tags\nu-1,,7,\nu-2,,,vip|beta\nu-3,,,\n")
    assert records == [
        {"id": "u-1", "attributes": {"score": 7}},
        {"id": "u-2", "tags": ["vip", "beta"]},
        {"id": "u-3"},
    ]


def test_csv_bom_crlf_quotes_and_blank_lines() -> None:
    """A UTF-8 BOM, CRLF line ends, a quoted cell spanning lines and blank lines are handled."""
    data = b'\xef\xbb\xbfid,plan\r\nu-1,"pro,\r\nplus"\r\n\r\nu-2,caf\xc3\xa9\r\n'
    reader = CsvReader(io.BytesIO(data), name="data.csv")
    seen = [(record, reader.line) for record in reader]
    assert seen == [
        ({"id": "u-1", "attributes": {"plan": "pro,\r\nplus"}}, 2),
        ({"id": "u-2", "attributes": {"plan": "café"}}, 5),
    ]


def test_csv_ids_only_reads_just_the_ids() -> None:
    """With ids_only, records are plain ID strings and other columns are not converted."""
    assert csv_records("id,int:score\nu-1,not-a-number\nu-2,3\n", ids_only=True) == ["u-1", "u-2"]


def test_csv_skip_resumes_after_the_first_records() -> None:
    """skip=n drops the first n records (not lines) without converting them."""
    text = 'id,int:score\nu-1,bad\n\nu-2,"also\nbad"\nu-3,3\n'
    reader = CsvReader(io.BytesIO(text.encode()), name="data.csv", skip=2)
    assert list(reader) == [{"id": "u-3", "attributes": {"score": 3}}]
    assert (reader.line, reader.count) == (6, 3)


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        pytest.param("plan,score\nu-1,3\n", 1, "no 'id' column", id="no-id-column"),
        pytest.param("", 1, "empty", id="empty-file"),
        pytest.param("id,id\n", 1, "second 'id'", id="two-id-columns"),
        pytest.param("id,Plan\n", 1, "key rule", id="uppercase-header"),
        pytest.param("id,bool:x\n", 1, "unknown type 'bool'", id="unknown-prefix"),
        pytest.param("id,plan,str:plan\n", 1, "already given", id="repeated-attribute"),
        pytest.param("id,\n", 1, "no name", id="unnamed-column"),
        pytest.param("id,plan\nu-1,a\nu-2\n", 3, "1 cells", id="short-row"),
        pytest.param("id\nu-1\nu-2,x\n", 3, "2 cells", id="long-row"),
        pytest.param("id,int:n\nu-1,1\nu-2,x\n", 3, "not an integer", id="bad-int"),
        pytest.param("id,float:n\nu-1,nan\n", 2, "finite number", id="nan"),
        pytest.param("id,date:d\nu-1,2024-01-02T10:00:00\n", 2, "no time zone", id="naive-date"),
        pytest.param("id,date:d\nu-1,2024-01-02\n", 2, "no time zone", id="date-only"),
        pytest.param("id,date:d\nu-1,yesterday\n", 2, "ISO-8601", id="not-a-date"),
        pytest.param(
            'id\n"u-1\n', 2, "quote opened in the row that starts here", id="unclosed-quote"
        ),
    ],
)
def test_csv_errors_name_the_line(text: str, line: int, needle: str) -> None:
    """A bad header or row raises SourceError naming the file, the line and the rule."""
    error = error_of(iter(CsvReader(io.BytesIO(text.encode()), name="data.csv")))
    assert (error.source, error.line) == ("data.csv", line)
    assert needle in error.rule
    assert str(error).startswith(f"data.csv:{line}: ")
    assert isinstance(error, ValidationError)


@pytest.mark.parametrize("after", [3_000, 20_000], ids=["file-ends-inside", "past-field-limit"])
def test_csv_unclosed_quote_is_reported_where_its_row_starts(after: int) -> None:
    """An unclosed quote is named at the line of its row, not where the csv module gave up."""
    rows = [f"u-{i},pro" for i in range(5)] + ['u-5,"pro'] + [f"u-{i},x" for i in range(after)]
    text = "id,plan\n" + "\n".join(rows) + "\n"
    error = error_of(iter(CsvReader(io.BytesIO(text.encode()), name="data.csv")))
    assert str(error).startswith(
        "data.csv:7: record 6: a quote opened in the row that starts here is never closed"
    )
    assert 'write a quote inside a quoted field as ""' in error.rule
    assert "field larger than field limit" not in str(error)


def test_csv_undecodable_byte_names_line_and_column() -> None:
    """A byte that is not UTF-8 is an error naming its line, column and value."""
    error = error_of(iter(CsvReader(io.BytesIO(b"id\nu-1\nu-\xff2\n"), name="d.csv")))
    assert error.line == 3
    assert "0xff at column 3" in error.rule
    assert str(error) == (
        "d.csv:3: record 2: byte 0xff at column 3 is not valid UTF-8 (save the file as UTF-8)"
    )


def test_csv_row_error_message_counts_records_from_one() -> None:
    """The message reads like data.csv:5: record 4, id 'u-4': ... (lines and records from 1)."""
    text = "id,date:d\nu-1,\nu-2,\nu-3,\nu-4,2024-01-01T00:00:00\n"
    error = error_of(iter(CsvReader(io.BytesIO(text.encode()), name="data.csv")))
    assert str(error).startswith("data.csv:5: record 4, id 'u-4': attribute 'd' value")


# -- NDJSON ------------------------------------------------------------------------------------


def test_ndjson_objects_pass_through_with_wire_keys() -> None:
    """Objects come out as parsed; wire-form keys and tags are kept as given; strings are IDs."""
    text = (
        '{"id": "u-1", "attributes": {"plan": "pro", "date(joined)": "2024-01-02T10:00:00Z"},'
        ' "tags": ["vip"]}\n'
        '"u-2"\n'
    )
    assert ndjson_records(text) == [
        {
            "id": "u-1",
            "attributes": {"plan": "pro", "date(joined)": "2024-01-02T10:00:00Z"},
            "tags": ["vip"],
        },
        "u-2",
    ]


def test_ndjson_bom_crlf_and_blank_lines() -> None:
    """A BOM, CRLF line ends and blank lines are fine; line numbers count every line."""
    data = b'\xef\xbb\xbf{"id": "a"}\r\n\r\n   \n{"id": "b"}\r\n'
    reader = NdjsonReader(io.BytesIO(data), name="x.ndjson")
    assert [(record, reader.line) for record in reader] == [({"id": "a"}, 1), ({"id": "b"}, 4)]


def test_ndjson_ids_only_and_skip() -> None:
    """ids_only yields the IDs; skip drops records without parsing them."""
    text = 'not json at all\n\n{"id": "b", "attributes": {"x": 1}}\n"c"\n'
    assert ndjson_records(text, skip=1, ids_only=True) == ["b", "c"]


@pytest.mark.parametrize(
    ("data", "line", "needle"),
    [
        pytest.param(b'{"id": "a"}\n{"id": "b"}\n{"id": \n', 3, "malformed JSON", id="bad-json"),
        pytest.param(b'{"id": "a"}\n[1, 2]\n', 2, "JSON array", id="array"),
        pytest.param(b"42\n", 1, "JSON number", id="number"),
        pytest.param(b'{"id": "a\xff"}\n', 1, "0xff", id="undecodable"),
    ],
)
def test_ndjson_errors_name_the_line(data: bytes, line: int, needle: str) -> None:
    """A bad line raises SourceError naming the file, the line and what is wrong."""
    error = error_of(iter(NdjsonReader(io.BytesIO(data), name="x.ndjson")))
    assert (error.source, error.line) == ("x.ndjson", line)
    assert needle in error.rule


def test_ndjson_ids_only_needs_an_id() -> None:
    """With ids_only, an object without an id is an error on its line."""
    error = error_of(iter(NdjsonReader(io.BytesIO(b'{"name": "a"}\n'), name="x", ids_only=True)))
    assert "needs an 'id'" in error.rule


# -- streaming, opening and async -----------------------------------------------------------


class Lines:
    """An endless source of NDJSON lines that counts how many were read."""

    def __init__(self) -> None:
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.read += 1
            yield b'{"id": "u-%d"}\n' % self.read


def test_readers_are_lazy_and_never_read_ahead() -> None:
    """Pulling n records from an endless input reads exactly n lines: constant memory."""
    lines = Lines()
    reader = iter(NdjsonReader(lines, name="endless"))
    for _ in range(1000):
        next(reader)
    assert lines.read == 1000


def test_csv_reader_is_lazy() -> None:
    """The CSV reader pulls one line per record from an endless input."""

    def endless() -> Iterator[bytes]:
        yield b"id,int:n\n"
        n = 0
        while True:
            n += 1
            yield b"u-%d,%d\n" % (n, n)

    reader = iter(CsvReader(endless(), name="endless"))
    assert [next(reader) for _ in range(3)][-1] == {"id": "u-3", "attributes": {"n": 3}}


def test_a_reader_is_iterated_once() -> None:
    """A second iteration is refused: the stream was consumed."""
    reader = NdjsonReader(io.BytesIO(b'"a"\n'), name="x")
    list(reader)
    with pytest.raises(RuntimeError):
        list(reader)


def test_open_records_by_extension_and_from_stdin(tmp_path: Path) -> None:
    """Extensions pick the format; '-' reads the given stdin and needs a format."""
    path = tmp_path / "in.JSONL"
    path.write_bytes(b'"a"\n"b"\n')
    with open_records(str(path)) as reader:
        assert list(reader) == ["a", "b"]
    stdin = io.BytesIO(b"id\r\nx\r\n")
    with open_records("-", "csv", stdin=stdin) as reader:
        assert reader.name == "<stdin>"
        assert list(reader) == [{"id": "x"}]
    assert not stdin.closed
    with pytest.raises(ValidationError, match="cannot tell the format"):
        open_records("-")
    with pytest.raises(ValidationError, match="cannot tell the format"):
        open_records(str(tmp_path / "in.txt"))
    assert (guess_format("a.csv"), guess_format("a.ndjson"), guess_format("a.json")) == (
        "csv",
        "ndjson",
        None,
    )


async def test_async_iteration_reads_in_a_thread_and_keeps_lines(tmp_path: Path) -> None:
    """threaded() parses off the loop (blockbuster stays quiet) and tracks each record's line."""
    path = tmp_path / "big.csv"
    path.write_text("id,int:n\n" + "".join(f"u-{i},{i}\n\n" for i in range(2500)))
    reader = await _open(path)
    lines = []
    async for record in reader.threaded():
        lines.append((record["id"], reader.line))  # type: ignore[index]
    reader.close()
    assert len(lines) == 2500
    assert lines[0] == ("u-0", 2) and lines[-1] == ("u-2499", 2 + 2 * 2499)


async def test_async_iteration_yields_records_before_the_bad_one(tmp_path: Path) -> None:
    """Records before a bad line still come out before its error is raised."""
    path = tmp_path / "bad.ndjson"
    path.write_bytes(b'"a"\n"b"\n{oops\n"d"\n')
    reader = await _open(path)
    seen: list[object] = []
    with pytest.raises(SourceError) as info:
        await collect(reader, seen)
    reader.close()
    assert seen == ["a", "b"]
    assert (info.value.line, info.value.position) == (3, 2)


async def collect(reader: RecordReader, into: list[object]) -> None:
    """Append every record of the reader to ``into``, reading it with ``async for``."""
    async for record in reader.threaded():
        into.append(record)


async def _open(path: Path, skip: int = 0) -> RecordReader:
    return await asyncio.to_thread(open_records, str(path), skip=skip)


def test_header_errors_name_no_record() -> None:
    """An error in the header row names the line but no record."""
    error = error_of(iter(CsvReader(io.BytesIO(b"id,pl\xe9n\nu-1,x\n"), name="h.csv")))
    assert str(error) == (
        "h.csv:1: byte 0xe9 at column 6 is not valid UTF-8 (save the file as UTF-8)"
    )
    assert error.position is None


# -- skipping off the loop, stopping, slow producers -------------------------------------------


def big_csv(rows: int) -> bytes:
    """A CSV of ``rows`` records with a typed attribute each."""
    return b"id,int:n\n" + b"".join(b"u-%d,%d\n" % (i, i) for i in range(rows))


@pytest.mark.parametrize("kind", ["csv", "ndjson"])
def test_skip_now_passes_the_skipped_records_before_iterating(kind: str) -> None:
    """skip_now reads the header and the skipped records; iterating starts after them."""
    if kind == "csv":
        reader: RecordReader = CsvReader(io.BytesIO(big_csv(10)), name="x", skip=7)
    else:
        data = b"".join(b'"u-%d"\n\n' % i for i in range(10))
        reader = NdjsonReader(io.BytesIO(data), name="x", skip=7)
    reader.skip_now()
    reader.skip_now()  # once only
    records = list(reader)
    assert [r if isinstance(r, str) else r["id"] for r in records] == ["u-7", "u-8", "u-9"]  # type: ignore[index]
    assert reader.count == 10


@pytest.mark.parametrize("skip", [3, 20])
def test_skip_now_past_the_end_leaves_nothing(skip: int) -> None:
    """A skip of every record (or more) leaves an empty iteration, for both formats."""
    csv_reader = CsvReader(io.BytesIO(big_csv(3)), name="x", skip=skip)
    csv_reader.skip_now()
    assert list(csv_reader) == []
    ndjson_reader = NdjsonReader(io.BytesIO(b'"a"\n"b"\n"c"\n'), name="x", skip=skip)
    ndjson_reader.skip_now()
    assert list(ndjson_reader) == []


@pytest.mark.parametrize("kind", ["csv", "ndjson"])
def test_a_skip_stops_when_its_stop_flag_is_set(kind: str) -> None:
    """A set stop flag ends a long skip with Interrupted, after a few thousand records."""
    stop = threading.Event()
    stop.set()
    if kind == "csv":
        lines: Iterator[bytes] = iter(big_csv(1_000_000).splitlines(keepends=True))
        reader: RecordReader = CsvReader(lines, name="x", skip=999_000)
    else:
        lines = iter(b'"u-%d"\n' % i for i in range(1_000_000))
        reader = NdjsonReader(lines, name="x", skip=999_000)
    with pytest.raises(Interrupted):
        reader.skip_now(stop)
    assert len(list(lines)) > 900_000  # it stopped early, not at the end


class CountedLines:
    """Lines of a byte string, counting those read on the given thread and on others."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.loop_thread = threading.get_ident()
        self.on_loop = 0
        self.off_loop = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in io.BytesIO(self.data):
            if threading.get_ident() == self.loop_thread:
                self.on_loop += 1
            else:
                self.off_loop += 1
            yield line


class Ticker:
    """A task that counts its turns on the loop while work happens elsewhere."""

    def __init__(self) -> None:
        self.turns = 0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.turns += 1

    async def stop(self) -> int:
        """Stop ticking; return the number of turns the loop gave it."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.turns


async def test_skip_in_thread_keeps_the_loop_free() -> None:
    """Skipping 200,000 records happens in a thread while the loop keeps turning."""
    lines = CountedLines(big_csv(200_003))
    reader = CsvReader(lines, name="big.csv", skip=200_000)
    ticker = Ticker()
    await reader.skip_in_thread()
    turns = await ticker.stop()
    records = list(reader)
    assert [r["id"] for r in records] == ["u-200000", "u-200001", "u-200002"]  # type: ignore[index]
    assert lines.off_loop >= 200_001  # the header and every skipped row
    assert lines.on_loop <= 3  # the records sent: none of the skip
    assert turns >= 10  # a skip on the loop would have given it none


def pipe_stdin(buffered: bool) -> tuple[io.RawIOBase | io.BufferedReader, int]:
    """A pipe standing for stdin: (the read end as a stream, the write end's descriptor)."""
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(read_fd, "rb", buffering=-1 if buffered else 0)
    return stream, write_fd  # type: ignore[return-value]


@pytest.mark.parametrize(
    "buffered", [pytest.param(False, id="raw"), pytest.param(True, id="buffered")]
)
async def test_a_slow_producers_records_come_through_one_by_one(buffered: bool) -> None:
    """A record written to an idle stdin reaches the upload at once, not after 1,000 more."""
    stream, write_fd = pipe_stdin(buffered)
    reader = open_records("-", "csv", stdin=stream)  # type: ignore[arg-type]
    records = aiter(reader.threaded())
    try:
        await asyncio.to_thread(os.write, write_fd, b"id,int:n\nu-1,1\n")
        first = await asyncio.wait_for(anext(records), timeout=10)
        assert (first, reader.line) == ({"id": "u-1", "attributes": {"n": 1}}, 2)
        await asyncio.to_thread(os.write, write_fd, b"u-2,")  # half a line: nothing yet
        await asyncio.to_thread(os.write, write_fd, b"2\r\nu-3,3")
        second = await asyncio.wait_for(anext(records), timeout=10)
        assert second == {"id": "u-2", "attributes": {"n": 2}}
    finally:
        os.close(write_fd)
    rest = [record async for record in records]  # the last line has no newline
    assert rest == [{"id": "u-3", "attributes": {"n": 3}}]
    stream.close()


async def test_a_closed_threaded_read_ends_its_daemon_thread() -> None:
    """Closing a threaded read early (a cancelled upload) ends its thread at its next read."""
    stream, write_fd = pipe_stdin(False)
    before = set(threading.enumerate())
    reader = open_records("-", "ndjson", stdin=stream)  # type: ignore[arg-type]
    records = reader._aiter()
    try:
        await asyncio.to_thread(os.write, write_fd, b'"a"\n')
        assert await asyncio.wait_for(anext(records), timeout=10) == "a"
        [thread] = [
            t for t in set(threading.enumerate()) - before if t.name == "batch_audience reader"
        ]
        assert thread.daemon  # never holds up the exit, even blocked on an idle pipe
        await records.aclose()
        await asyncio.to_thread(os.write, write_fd, b'"b"\n' * 10)
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()
    finally:
        os.close(write_fd)
        stream.close()
