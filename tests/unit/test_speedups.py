"""The C accelerator: its guards against a caller's mistake, and what it spares an upload.

Its output is tested through the columnar path (tests/unit/test_columnar_unit.py runs every
test with it and with DuckDB).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import accelerator

STR, INT = 0, 3  # the accelerator's column kinds (_speedups.c)


@pytest.fixture(scope="module")
def speedups() -> Any:
    """The accelerator (see ``accelerator``)."""
    return accelerator()


def text(values: list[str]) -> tuple[object, ...]:
    array = pa.array(values)
    _, offsets, data = array.buffers()
    return (STR, array.offset, False, None, offsets, data)


def test_rows_past_a_column_raise(speedups: Any) -> None:
    """Bounds beyond a column's rows, or a row count beyond them, raise ValueError."""
    ids = text(["a", "b", "c"])
    hashes = np.empty(8, dtype=np.uint64)
    heads = (b'{"id":', b'{"id":')
    arena = speedups.Arena()
    with pytest.raises(ValueError, match="past a column"):
        speedups.write_chunks(heads, ids, None, [], None, None, [(0, 4)], hashes, arena)
    numbers = (INT, 0, False, None, None, pa.array([1, 2], pa.int64()).buffers()[1])
    with pytest.raises(ValueError, match="past a column"):
        speedups.write_chunks(
            heads,
            ids,
            b',"attributes":{',
            [(b'"n":', numbers)],
            None,
            None,
            [(0, 3)],
            hashes,
            arena,
        )
    with pytest.raises(ValueError, match="4 rows"):
        speedups.first_not_utf8(ids, 4)
    with pytest.raises(ValueError, match="lists of text"):
        speedups.suspect_tag_rows(ids, 3, 64)
    with pytest.raises(ValueError, match="4 rows"):
        speedups.suspect_rows(ids, 4, False, -1, -1, 0, 0)
    slab, spans = speedups.write_chunks(heads, ids, None, [], None, None, [(0, 3)], hashes, arena)
    assert [bytes(memoryview(slab)[a:b]) for a, b in spans] == [
        b'[{"id":"a"},{"id":"b"},{"id":"c"}]'
    ]
    arena.close()


def test_bounds_must_follow_each_other(speedups: Any) -> None:
    """Chunks are consecutive, non-empty row ranges; hashes hold one per row."""
    ids = text(["a", "b", "c"])
    heads = (b'{"id":', b'{"id":')
    arena = speedups.Arena()
    for bounds in ([(1, 1)], [(0, 2), (1, 3)]):
        with pytest.raises(ValueError, match="consecutive"):
            speedups.write_chunks(
                heads, ids, None, [], None, None, bounds, np.empty(3, np.uint64), arena
            )
    with pytest.raises(ValueError, match="one uint64 per row"):
        speedups.write_chunks(
            heads, ids, None, [], None, None, [(0, 3)], np.empty(2, np.uint64), arena
        )


def test_suspect_rows_flag_what_the_rules_may_refuse(speedups: Any) -> None:
    """Each kind's pass flags the rows the record rules must judge, and only those.

    Lengths are counted in characters (a 2-byte character counts once), as the rules count.
    """
    from batch_audience import _columnar

    def suspects(kind: str, array: pa.Array, **kwargs: Any) -> list[int]:
        return _columnar._suspects(pa, None, kind, array, **kwargs)

    ids = pa.array(["a", "", None, "b", "\u00e9" * 400])
    assert suspects(_columnar._STR, ids, required=True) == [1, 2]
    text = pa.array(["ok", None, "x" * 300, "x" * 301, "\u00e9" * 300, "\u00e9" * 301, ""])
    assert suspects(_columnar._STR, text) == [3, 5]
    # All ASCII (one pass over the bytes, then lengths only), and past the end of the text.
    assert suspects(_columnar._STR, text.slice(0, 4)) == [3]
    assert suspects(_columnar._STR, text.slice(2, 2)) == [1]
    not_utf8 = pa.Array.from_buffers(
        pa.string(), 2, [None, pa.py_buffer(np.array([0, 1, 2], np.int32)), pa.py_buffer(b"a\xff")]
    )
    assert suspects(_columnar._STR, not_utf8) == [1]
    floats = pa.array([1.5, float("nan"), None, float("inf"), -float("inf"), 1e308])
    assert suspects(_columnar._FLOAT, floats) == [1, 3, 4]
    big = pa.array([0, 2**63 - 1, 2**63, None, 2**64 - 1], pa.uint64())
    assert suspects(_columnar._UINT64, big) == [2, 4]
    low, high = _columnar._TS_MIN_S, _columnar._TS_MAX_S
    seconds = pa.array([0, low, low - 1, high - 1, high, None], pa.int64())
    assert suspects(_columnar._TS, seconds.cast(pa.timestamp("s", "UTC")), unit="s") == [2, 4]
    millis = pa.array([low * 1000, low * 1000 - 1], pa.int64()).cast(pa.timestamp("ms", "UTC"))
    assert suspects(_columnar._TS, millis, unit="ms") == [1]
    lists = pa.array(
        [["a"], ["b"] * 25, ["b"] * 26, ["x" * 301], [None], None, [], ["\u00e9" * 300]],
        pa.list_(pa.string()),
    )
    assert suspects(_columnar._ARRAY, lists) == [2, 3, 4]
    assert suspects(_columnar._ARRAY, lists.slice(2, 3)) == [0, 1, 2]
    assert suspects(_columnar._ARRAY, lists.slice(0, 7)) == [2, 3, 4]  # all ASCII


def test_sorted_share_finds_a_common_value(speedups: Any) -> None:
    """Two ascending runs of hashes share a value, or not, wherever it sits in either."""
    a = np.array([1, 5, 9, 2**64 - 1], np.uint64)
    assert not speedups.sorted_share(a, np.array([0, 2, 6, 10], np.uint64))
    assert speedups.sorted_share(a, np.array([0, 2, 9], np.uint64))
    assert speedups.sorted_share(np.array([2**64 - 1], np.uint64), a)
    assert speedups.sorted_share(a, np.array([1], np.uint64))
    assert not speedups.sorted_share(a, np.array([], np.uint64))


def test_common_columns_do_not_import_pyarrow_compute(speedups: Any, tmp_path: Path) -> None:
    """Text, numbers, timestamps and tags are checked without importing pyarrow.compute.

    Its import holds the GIL ~25 ms, beside the reading of the first batch: the first request
    left ~30 ms later. Even its kernels' module (~5 ms) is not imported: the accelerator
    checks these columns itself.
    """
    n = 30
    when = datetime(2024, 1, 2, tzinfo=UTC)
    table = pa.table(
        {
            "id": [f"u-{i}" for i in range(n)],
            "city": ["x"] * n,
            "n": list(range(n)),
            "f": [i / 4 for i in range(n)],
            "t": pa.array([when] * n, pa.timestamp("s", "UTC")),
            "tags": [["a"]] * n,
        }
    )
    pq.write_table(table, tmp_path / "common.parquet")
    code = (
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n"
        "from batch_audience._columnar import iter_columnar\n"
        "from batch_audience._intake import Intake\n"
        f"file = pq.ParquetFile({str(tmp_path / 'common.parquet')!r})\n"
        "reader = pa.RecordBatchReader.from_batches(file.schema_arrow, file.iter_batches())\n"
        "assert 'pyarrow.compute' not in sys.modules, 'by the test itself'\n"
        "got = [c.count for c in iter_columnar(reader, Intake('1.1', 'add'), size=7)]\n"
        "assert got == [7, 7, 7, 7, 2], got\n"
        "assert 'pyarrow.compute' not in sys.modules, 'imported'\n"
        # Nor even its kernels: the accelerator checks these columns in one pass each.
        "assert 'pyarrow._compute' not in sys.modules, 'kernels imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BATCH_AUDIENCE_NO_EXTENSIONS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
