"""Fuzzing the CSV and NDJSON readers: any bytes give records or a typed error with a line."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import time
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import batch_audience as ba
from batch_audience._sources import CsvReader, NdjsonReader, RecordReader
from batch_audience._validate import EntryEncoder, Generation

EXAMPLES = 300  # per property

csv_headers = st.sampled_from(
    [b"id\n", b"\xef\xbb\xbfid,plan\r\n", b"id,int:score,date:joined,tags\n", b"plan\n", b"id,id\n"]
)
csv_cells = st.sampled_from(
    [
        b"u-1",
        b"",
        b'"q,uoted"',
        b'"unterminated',
        b"12",
        b"x" * 400,
        b"\xff\xfe",
        b"\x00",
        b"2024-01-02T10:00:00Z",
        b"2024-01-02",
        b"a|b",
        b"\xe9",
        "é".encode(),
        b"\r",
    ]
)
csv_rows = st.lists(
    st.lists(csv_cells, min_size=0, max_size=5)
    .map(lambda cells: b",".join(cells))
    .flatmap(lambda row: st.sampled_from([row + b"\n", row + b"\r\n", row])),
    max_size=8,
)
ndjson_lines = st.lists(
    st.sampled_from(
        [
            b'{"id": "u-1"}',
            b'"u-2"',
            b'{"id": "u-3", "attributes": {"score": 3}}',
            b"{not json",
            b"[1, 2]",
            b"null",
            b'{"id": 5}',
            b'{"id": "u", "extra": 1}',
            b"",
            b"\xef\xbb\xbf{}",
            b'{"id": "' + b"x" * 100_000 + b'"}',
            b'{"id": "\\ud800"}',
            b"\xff",
            b'{"id": "a"',
        ]
    ).flatmap(lambda line: st.sampled_from([line + b"\n", line + b"\r\n", line])),
    max_size=8,
)
raw_bytes = st.binary(max_size=300)


def consume(reader: CsvReader | NdjsonReader, generation: str) -> None:
    """Read every record and encode it as an upload would; only typed errors may escape."""
    encoder = EntryEncoder(generation, "add")  # type: ignore[arg-type]
    for position, record in enumerate(reader):
        try:
            encoder.encode(record, position)
        except ba.ValidationError as err:
            raise ba.SourceError.wrap(err, source=reader.name, line=reader.line) from None


def check(reader: CsvReader | NdjsonReader, generation: str) -> None:
    """The whole input either reads cleanly or raises a SourceError naming a line."""
    error: ba.SourceError | None = None
    try:
        consume(reader, generation)
    except ba.SourceError as err:
        error = err
    event("read" if error is None else "refused")
    if error is not None:
        assert error.line >= 1
        assert error.source == reader.name
        assert str(error)


@settings(max_examples=EXAMPLES)
@given(header=csv_headers, rows=csv_rows, generation=st.sampled_from(["1.1", "2"]))
def test_csv_reader_reads_or_names_the_line(
    header: bytes, rows: list[bytes], generation: str
) -> None:
    """Any CSV-like bytes give records or a SourceError with the file and the line."""
    data = header + b"".join(rows)
    check(CsvReader(io.BytesIO(data), name="fuzz.csv"), generation)


@settings(max_examples=EXAMPLES)
@given(lines=ndjson_lines, generation=st.sampled_from(["1.1", "2"]))
def test_ndjson_reader_reads_or_names_the_line(lines: list[bytes], generation: str) -> None:
    """Any NDJSON-like bytes give records or a SourceError with the file and the line."""
    check(NdjsonReader(io.BytesIO(b"".join(lines)), name="fuzz.ndjson"), generation)


@settings(max_examples=EXAMPLES)
@given(data=raw_bytes, kind=st.sampled_from(["csv", "ndjson"]))
def test_random_bytes_never_escape_as_another_error(data: bytes, kind: str) -> None:
    """Random bytes, wrong encodings included, are read or refused with a SourceError."""
    reader = (
        CsvReader(io.BytesIO(data), name="x")
        if kind == "csv"
        else NdjsonReader(io.BytesIO(data), name="x")
    )
    check(reader, "2")


def test_wrong_encodings_are_refused_with_a_line() -> None:
    """UTF-16 and latin-1 files are refused as not UTF-8, naming a line."""
    for data in ("id\nzoë\n".encode("utf-16"), "id\nzoë\n".encode("latin-1")):
        reader = CsvReader(io.BytesIO(data), name="enc.csv")
        with pytest.raises(ba.SourceError) as caught:
            consume(reader, "2")
        assert caught.value.line >= 1


# -- exact line numbers, files, encodings, huge lines, corruption, bounded time --------------
#
# The properties below read through the public entry points (open_records on real files, or
# CsvReader/NdjsonReader on streams, and RecordReader.threaded()), validate each record with
# the upload's encoder, and wrap its errors as the CLI does. Each read runs in a worker thread
# with a time limit, so a hang fails the test instead of stalling the suite.

LINE_EXAMPLES = 300  # per format: one bad line among good ones
MUTATION_EXAMPLES = 300  # per format: valid files with random corruption
TIME_LIMIT = 20.0  # seconds for any one read, far above what it takes (milliseconds)

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuzz-read")


def read_all(reader: RecordReader, generation: Generation = "2") -> list[object]:
    """Every record, validated as an upload would; a validator error becomes a SourceError."""
    encoder = EntryEncoder(generation, "remove" if reader.ids_only else "add")
    out: list[object] = []
    with reader:
        for position, record in enumerate(reader):
            try:
                encoder.encode(record, position)
            except ba.ValidationError as err:
                raise ba.SourceError.wrap(err, source=reader.name, line=reader.line) from None
            out.append(record)
    return out


def bounded(reader: RecordReader, generation: Generation = "2") -> list[object] | ba.SourceError:
    """The records, or the SourceError that stopped them; any other outcome fails the test."""
    future = _pool.submit(read_all, reader, generation)
    try:
        return future.result(timeout=TIME_LIMIT)
    except ba.SourceError as err:
        error = err
    except concurrent.futures.TimeoutError:
        pytest.fail(f"reading {reader.name} took more than {TIME_LIMIT} s")
    assert str(error).startswith(f"{reader.name}:{error.line}: "), str(error)
    assert error.source == reader.name and error.rule
    return error


def physical_lines(data: bytes) -> int:
    """Lines as the readers count them: split on LF, a last unterminated line included."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


GOOD_NDJSON = [
    b'{"id": "u-%d"}',
    b'"u-%d"',
    b'{"id": "u-%d", "attributes": {"score": %d, "plan": "pro"}}',
    b'{"id": "u-%d", "attributes": {"date(joined)": "2024-01-02T10:00:00Z"}, "tags": []}',
    b'{"id": "1234567890123456789%d", "attributes": {"n": -922337203685477580%d}}',
    b'  {"id":"\\u00e9-%d"}  ',
    b'{"id": "\xe2\x80\xae%d", "attributes": {"s": "a\\u0000b"}}',
]
BAD_NDJSON = [
    b"{not json",
    b'{"id": "a"',
    b"\xff\xfe{}",
    b'{"id": "zo\xeb"}',
    b'{"id": "a", "attributes": {"Bad": 1}}',
    b'{"id": ""}',
    b'{"id": 5}',
    b"[1]",
    b"null",
    b"12",
    b'{"id": "a"}\x00',
    b'{"id": "a"}\r{"id": "b"}',
    b'"\\ud800"',
    b'{"id": "a", "attributes": {"d": NaN}}',
    b'{"id": "a", "attributes": {"n": 1e400}}',
    b'{"id": "a", "attributes": {"n": 123456789012345678901234567890}}',
    b'{"id": "a", "attributes": {"n": -9223372036854775809}}',
    b'{"id": "a", "attributes": {"n": 1' + b"0" * 5000 + b"}}",
    b"\xef\xbb\xbf" + b'{"id": "a"}',
    '{"id": "a"}'.encode("utf-16"),
    b'{"id": "' + b"x" * 3_000_000,
    b'{"id": "a", "attributes": {"s": "' + b"x" * 3_000_000 + b'"}}',
]
GOOD_CSV = [
    b"u-%d,%d,2024-01-02T10:00:00Z,pro",
    b"u-%d,,,",
    b'"u,%d",%d,,"a ""q"""',
    b"\xc3\xa9-%d,-%d,2024-01-02T10:00:00+05:30,",
]
BAD_CSV = [
    b"u,1",
    b"u,1,2,3,4",
    b"u,many,2024-01-02T10:00:00Z,p",
    b"u,1" + b"0" * 5000 + b",,",
    b"u,99999999999999999999,,",
    b"u,1,2024-01-02,p",
    b"u,1,yesterday,p",
    b"u,1,2024-01-02T10:00:00Z,zo\xeb",
    b",1,,",
    b"u,1,," + b"x" * 301,
    b"u,1,," + b"x" * 200_000,
    b"u,1,,a\rb",
]
endings = st.sampled_from([b"\n", b"\r\n"])


@st.composite
def one_bad_line(draw: st.DrawFn, good: list[bytes], bad: list[bytes]) -> tuple[bytes, int]:
    """Good lines (and blank ones) with any line ends, one bad line; the bad line's number."""
    before = draw(st.lists(st.sampled_from(good) | st.just(b""), max_size=6))
    after = draw(st.lists(st.sampled_from(good) | st.just(b""), max_size=3))
    lines = [line.replace(b"%d", str(i).encode()) for i, line in enumerate(before)]
    bad_line = draw(st.sampled_from(bad))
    if bad_line.startswith(b"\xef\xbb\xbf") and not before:
        lines = [good[0].replace(b"%d", b"0")]  # a BOM is skipped on the first line only
    tail = [line.replace(b"%d", b"9") for line in after]
    parts = [*lines, bad_line, *tail]
    data = b"".join(line + draw(endings) for line in parts[:-1]) + parts[-1]
    if draw(st.booleans()):
        data += draw(endings)
    return data, len(lines) + 1


@settings(max_examples=LINE_EXAMPLES)
@given(case=one_bad_line(GOOD_NDJSON, BAD_NDJSON), bom=st.booleans())
def test_one_bad_ndjson_line_is_refused_naming_that_line(
    case: tuple[bytes, int], bom: bool
) -> None:
    """Among good lines with LF or CRLF ends, a BOM and blank lines, the bad one is named."""
    data, line = case
    outcome = bounded(NdjsonReader(io.BytesIO(b"\xef\xbb\xbf" * bom + data), name="one.ndjson"))
    assert isinstance(outcome, ba.SourceError), "the bad line was accepted"
    assert outcome.line == line


@settings(max_examples=LINE_EXAMPLES)
@given(case=one_bad_line(GOOD_CSV, BAD_CSV), bom=st.booleans(), end=endings)
def test_one_bad_csv_row_is_refused_naming_that_line(
    case: tuple[bytes, int], bom: bool, end: bytes
) -> None:
    """Among good rows with LF or CRLF ends, a BOM and blank lines, the bad row is named."""
    data, line = case
    header = b"\xef\xbb\xbf" * bom + b"id,int:score,date:joined,plan" + end
    outcome = bounded(CsvReader(io.BytesIO(header + data), name="one.csv"))
    assert isinstance(outcome, ba.SourceError), "the bad row was accepted"
    assert outcome.line == line + 1  # the header is line 1


def test_long_integers_in_ndjson_are_exact_or_refused() -> None:
    """Integers past 64 bits are refused by name, never rounded to a float (orjson would)."""
    good = b'{"id": "u", "attributes": {"a": 9223372036854775807, "b": -9223372036854775808}}\n'
    records = bounded(NdjsonReader(io.BytesIO(good), name="ok.ndjson"))
    assert records == [{"id": "u", "attributes": {"a": 2**63 - 1, "b": -(2**63)}}]
    for number in (b"9223372036854775808", b"-9223372036854775809", b"1" + b"0" * 30):
        line = b'{"id": "u", "attributes": {"n": ' + number + b"}}\n"
        outcome = bounded(NdjsonReader(io.BytesIO(b'"a"\n' + line), name="big.ndjson"))
        assert isinstance(outcome, ba.SourceError) and outcome.line == 2
        assert "64 bits" in outcome.rule


CONTENT = {
    "csv": "id,plan,int:score\nzoë,pro,1\n\nélan,,2\n",
    "ndjson": '{"id": "zoë", "attributes": {"plan": "pro"}}\n\n"élan"\n',
}
EXPECTED = {
    "csv": [
        {"id": "zoë", "attributes": {"plan": "pro", "score": 1}},
        {"id": "élan", "attributes": {"score": 2}},
    ],
    "ndjson": [{"id": "zoë", "attributes": {"plan": "pro"}}, "élan"],
}


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
@pytest.mark.parametrize(
    "encoding",
    ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252"],
)
@pytest.mark.parametrize("ends", ["\n", "\r\n"])
def test_files_in_any_encoding_are_read_or_refused_with_a_line(
    tmp_path: Path, fmt: str, encoding: str, ends: str
) -> None:
    """UTF-8 (with or without BOM) is read exactly; UTF-16/32 and latin-1 are refused by line."""
    path = tmp_path / f"input.{fmt}"
    path.write_bytes(CONTENT[fmt].replace("\n", ends).encode(encoding))
    outcome = bounded(ba.open_records(str(path)))
    if encoding in ("utf-8", "utf-8-sig"):
        assert outcome == EXPECTED[fmt]
        return
    assert isinstance(outcome, ba.SourceError)
    assert 1 <= outcome.line <= physical_lines(path.read_bytes())


@pytest.mark.parametrize(
    ("fmt", "line", "accepted"),
    [
        pytest.param("ndjson", b'{"id": "' + b"x" * 8_000_000 + b'"}', True, id="ndjson-8MB-id"),
        pytest.param(
            "ndjson",
            b'{"id": "u", "attributes": {"s": "' + b"x" * 8_000_000 + b'"}}',
            False,
            id="ndjson-8MB-value",
        ),
        pytest.param("ndjson", b'{"id": "' + b"x" * 8_000_000, False, id="ndjson-8MB-truncated"),
        pytest.param("ndjson", b"\x00" * 8_000_000, False, id="ndjson-8MB-nul"),
        pytest.param("csv", b"u," + b"x" * 8_000_000, False, id="csv-8MB-cell"),
        pytest.param("csv", b'"' + b"x" * 8_000_000, False, id="csv-8MB-open-quote"),
    ],
)
def test_huge_lines_are_read_or_refused_in_bounded_time(
    tmp_path: Path, fmt: str, line: bytes, accepted: bool
) -> None:
    """Lines of several MB, without an end or with NULs, are read or refused in seconds."""
    path = tmp_path / f"huge.{fmt}"
    header = b"id,plan\n" if fmt == "csv" else b""
    path.write_bytes(header + b'"ok"\n' * (fmt == "ndjson") + line)
    started = time.monotonic()
    outcome = bounded(ba.open_records(str(path)))
    assert time.monotonic() - started < 10
    if accepted:
        assert isinstance(outcome, list) and len(outcome) == 2
    else:
        assert isinstance(outcome, ba.SourceError)
        assert outcome.line == 2


VALID_FILES = {
    "csv": b"\xef\xbb\xbfid,int:score,date:joined,list:likes\r\n"
    + b"".join(b'u-%d,%d,2024-01-02T10:00:00Z,"a|b"\r\n' % (i, i) for i in range(6)),
    "ndjson": b"".join(
        b'{"id": "u-%d", "attributes": {"score": %d, "likes": ["a", "b"]}}\n' % (i, i)
        for i in range(6)
    ),
}
NOISE = [b"\n", b"\r", b"\r\n", b"\x00", b"\xff", b"\xc3", b'"', b",", b"{", b"}", b"|", b"\\"]


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> bytes:
    """A valid file after 1 to 4 random corruptions: flips, inserts, cuts, truncation."""
    data = bytearray(VALID_FILES[fmt])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(NOISE) | st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


@settings(max_examples=MUTATION_EXAMPLES)
@given(data=mutated("csv"), ids_only=st.booleans(), generation=st.sampled_from(["1.1", "2"]))
def test_corrupted_csv_files_give_records_or_a_line(
    data: bytes, ids_only: bool, generation: Generation
) -> None:
    """A CSV file with random corruption gives records or a SourceError on an existing line."""
    outcome = bounded(CsvReader(io.BytesIO(data), name="bad.csv", ids_only=ids_only), generation)
    event("read" if isinstance(outcome, list) else "refused")
    if isinstance(outcome, ba.SourceError):
        assert 1 <= outcome.line <= max(1, physical_lines(data))


@settings(max_examples=MUTATION_EXAMPLES)
@given(data=mutated("ndjson"), ids_only=st.booleans(), generation=st.sampled_from(["1.1", "2"]))
def test_corrupted_ndjson_files_give_records_or_a_line(
    data: bytes, ids_only: bool, generation: Generation
) -> None:
    """An NDJSON file with random corruption gives records or a SourceError on an existing line."""
    reader = NdjsonReader(io.BytesIO(data), name="bad.ndjson", ids_only=ids_only)
    outcome = bounded(reader, generation)
    event("read" if isinstance(outcome, list) else "refused")
    if isinstance(outcome, ba.SourceError):
        assert 1 <= outcome.line <= max(1, physical_lines(data))


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_threaded_reading_names_the_same_line(tmp_path: Path, fmt: str) -> None:
    """Reading in a worker thread (as the CLI does for stdin) refuses the same line, typed."""
    bad = b"u,1,,a\rb" if fmt == "csv" else b"{not json"
    data = VALID_FILES[fmt] + bad + b"\n" + VALID_FILES[fmt].splitlines(keepends=True)[-1]
    path = tmp_path / f"threaded.{fmt}"
    await asyncio.to_thread(path.write_bytes, data)
    reader = await asyncio.to_thread(ba.open_records, str(path))
    encoder = EntryEncoder("2", "add")
    seen = 0

    async def consume() -> None:
        nonlocal seen
        async with asyncio.timeout(TIME_LIMIT):
            async for record in reader.threaded():
                encoder.encode(record, seen)
                seen += 1

    with reader, pytest.raises(ba.SourceError) as caught:
        await consume()
    assert caught.value.line == physical_lines(VALID_FILES[fmt]) + 1
    assert seen == 6
