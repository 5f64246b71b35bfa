"""Fuzzing the CSV and NDJSON readers: any bytes give records or a typed error with a line."""

from __future__ import annotations

import io

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import batch_audience as ba
from batch_audience._sources import CsvReader, NdjsonReader
from batch_audience._validate import EntryEncoder

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
