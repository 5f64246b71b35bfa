"""Fuzz the columnar path for a set time: ``python -m tests.fuzz_columnar [--seconds 60]``.

Two fuzzers, each run in a child interpreter of its own, so that a crash fails the run and names
the case it happened in instead of killing the runner:

- **differential**: random tables (every accepted type and layout, nulls, extremes, invalid
  values) in random shapes (sliced arrays, several batches, a reader) through the record path
  and the columnar path: the same chunks and the same first error, every time
  (``tests/columnar_paths.py`` says how they are compared).
- **malformed**: the same tables with one column's buffers damaged (offsets, item offsets,
  dictionary indices, views, text bytes, validity). The columnar path must end in chunks or one
  ValidationError, never another exception nor a crash; a column it calls broken must be one
  Arrow's full validation rejects; a table Arrow finds valid must give the record path's
  outcome.

Each case is one seed: on a failure the seed is printed with the command that replays it
(``--mode malformed --seed N --count 1``). Without ``--seed`` the first seed is drawn at random
(printed), so each run explores new cases.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import struct
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

_MODES = ("differential", "malformed")
_CASES = [("2", "add"), ("2", "replace"), ("1.1", "add"), ("1.1", "replace"), ("2", "remove")]
_CASES += [("1.0", "add")]


# -- random tables ------------------------------------------------------------------------------


def _text(rng: random.Random) -> str | None:
    """Mostly short text, with escapes, controls, non-ASCII, empty, long and null values."""
    roll = rng.random()
    if roll < 0.08:
        return None
    if roll < 0.1:
        return ""
    if roll < 0.12:
        return "x" * 301  # over the limit
    alphabet = string.ascii_letters + string.digits + '"\\/\n\t\x01 é😀\u2028'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))


def _text_type(rng: random.Random, pa: Any) -> Any:
    value = rng.choice([pa.string(), pa.large_string(), pa.string_view()])
    if rng.random() < 0.3:
        return pa.dictionary(rng.choice([pa.int8(), pa.int32(), pa.uint16()]), value)
    return value


def _text_array(pa: Any, values: list[Any], type_: Any) -> Any:
    if pa.types.is_dictionary(type_):
        plain = pa.array(values, type_.value_type)
        if len(set(values)) > 100:  # more values than an int8 index holds
            type_ = pa.dictionary(pa.int32(), type_.value_type)
        return plain.dictionary_encode().cast(type_)
    return pa.array(values, type_)


def _list_array(rng: random.Random, pa: Any, values: list[Any]) -> Any:
    """Lists of text in a random layout and item type (views, fixed-size when they allow it)."""
    item = _text_type(rng, pa)
    layouts = ["list", "large_list", "list_view", "large_list_view"]
    sizes = {len(v) for v in values if v is not None}
    if len(sizes) == 1 and sizes != {0}:
        layouts.append("fixed_size_list")
    layout = rng.choice(layouts)
    flat = [x for v in values if v is not None for x in v]
    items = _text_array(pa, flat, item) if not pa.types.is_dictionary(item) else None
    if items is None:
        items = _text_array(pa, flat, item)
    offsets, ends = [], 0
    for v in values:
        offsets.append(ends)
        ends += len(v) if v is not None else 0
    mask = pa.array([v is None for v in values], pa.bool_())
    if layout == "fixed_size_list":
        (size,) = sizes
        filled: list[Any] = []
        for v in values:
            filled.extend(v if v is not None else [None] * size)
        return pa.FixedSizeListArray.from_arrays(_text_array(pa, filled, item), size, mask=mask)
    lengths = [len(v) if v is not None else 0 for v in values]
    wide = layout.startswith("large")
    index = pa.int64() if wide else pa.int32()
    if layout.endswith("view"):
        view = pa.LargeListViewArray if wide else pa.ListViewArray
        return view.from_arrays(
            pa.array(offsets, index), pa.array(lengths, index), items, mask=mask
        )
    lists = pa.LargeListArray if wide else pa.ListArray
    return lists.from_arrays(pa.array([*offsets, ends], index), items, mask=mask)


def _timestamps(rng: random.Random, pa: Any, rows: int) -> tuple[Any, Any]:
    unit = rng.choice(["s", "ms", "us", "ns"])
    zone = rng.choice(["UTC", "+05:30", "-08:00", "Europe/Paris"])
    if unit == "ns":
        low, high = datetime(1678, 1, 1, tzinfo=UTC), datetime(2261, 12, 31, tzinfo=UTC)
    else:  # a day inside years 1 to 9999: Python's datetime holds them in every zone
        low, high = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, 23, 59, 59, tzinfo=UTC)
    span = int((high - low).total_seconds())
    values: list[Any] = []
    for _ in range(rows):
        roll = rng.random()
        if roll < 0.1:
            values.append(None)
        elif roll < 0.15:
            values.append(low if rng.random() < 0.5 else high)
        else:
            micros = rng.randrange(1_000_000) if unit in ("us", "ns") else 0
            if unit == "ms":
                micros = rng.randrange(1000) * 1000
            values.append(low + timedelta(seconds=rng.randrange(span), microseconds=micros))
    return pa.array(values, pa.timestamp(unit, zone)), None


def _attribute(rng: random.Random, pa: Any, number: int, rows: int) -> tuple[str, Any]:
    """A random attribute column: its name and values (some of them breaking a rule)."""
    kind = rng.choice(["int", "uint64", "float", "text", "date", "url", "ts", "list", "null"])
    if kind == "int":
        type_ = rng.choice([pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32()])
        info = {8: 2**7, 16: 2**15, 32: 2**31, 64: 2**63}[type_.bit_width]
        low, high = (0, 2 * info - 1) if pa.types.is_unsigned_integer(type_) else (-info, info - 1)
        values = [rng.choice([low, high, 0, rng.randint(low, high), None]) for _ in range(rows)]
        return f"n{number}", pa.array(values, type_)
    if kind == "uint64":
        values = [rng.choice([0, 2**63 - 1, 2**63, 2**64 - 1, None]) for _ in range(rows)]
        return f"n{number}", pa.array(values, pa.uint64())
    if kind == "float":
        specials = [0.0, -0.0, 5e-324, 1e300, 1e16, 0.1, 3.0, float("nan"), float("inf"), None]
        values = [rng.choice([*specials, rng.uniform(-1e6, 1e6)]) for _ in range(rows)]
        return f"f{number}", pa.array(values, rng.choice([pa.float32(), pa.float64()]))
    if kind == "text":
        return f"s{number}", _text_array(pa, [_text(rng) for _ in range(rows)], _text_type(rng, pa))
    if kind == "date":
        forms = ["2023-08-12T22:30:05Z", "2023-08-12T22:30:05.123+02:00", "2023-02-30T00:00:00"]
        forms += ["2023-08-12", "0000-01-01T00:00:00", "garbage", None]
        values = [rng.choice(forms) for _ in range(rows)]
        return f"date(d{number})", _text_array(pa, values, _text_type(rng, pa))
    if kind == "url":
        forms = ["https://example.com/a?b=c", "HTTP://x.example:8080/", "ftp://x", "https://a b"]
        values = [rng.choice([*forms, None]) for _ in range(rows)]
        return f"url(u{number})", _text_array(pa, values, _text_type(rng, pa))
    if kind == "ts":
        return f"t{number}", _timestamps(rng, pa, rows)[0]
    if kind == "list":
        lists: list[Any] = []
        for _ in range(rows):
            roll = rng.random()
            if roll < 0.1:
                lists.append(None)
            elif roll < 0.13:
                lists.append(["a"] * 26)  # over the limit
            else:
                lists.append([_text(rng) for _ in range(rng.randint(0, 3))])
        return f"l{number}", _list_array(rng, pa, lists)
    return f"z{number}", pa.nulls(rows)


def random_table(rng: random.Random, pa: Any, generation: str, operation: str) -> Any:
    """A random table of columns the operation accepts, with nulls, extremes and bad values."""
    rows = rng.choice([0, 1, 2, 5, rng.randint(0, 40), rng.randint(0, 300)])
    pool = [f"u-{i}" for i in range(max(1, rows // 2))] + ["é-1", 'q"1', "", None]
    ids = [rng.choice(pool) if rng.random() < 0.05 else f"id-{i}" for i in range(rows)]
    columns: dict[str, Any] = {"id": _text_array(pa, ids, _text_type(rng, pa))}
    if generation != "1.0" and operation != "remove":
        for number in range(rng.randint(0, 6)):
            name, column = _attribute(rng, pa, number, rows)
            columns[name] = column
    if generation == "1.1" and operation != "remove" and rng.random() < 0.6:
        tags = ["vip", "gold", "Gold", "", "été", "ÉTÉ", "x" * 65, None]
        values = [
            None if rng.random() < 0.1 else [rng.choice(tags) for _ in range(rng.randint(0, 3))]
            for _ in range(rows)
        ]
        columns["tags"] = _list_array(rng, pa, values)
    return pa.table(columns)


def reshaped(rng: random.Random, pa: Any, table: Any) -> Any:
    """The same rows as a columnar source of another shape: sliced arrays, several batches."""
    roll = rng.random()
    if roll < 0.25 or not table.num_rows:
        return table
    if roll < 0.5:  # arrays with an offset: the rows of a longer table
        padded = pa.concat_tables([table.slice(0, 3), table]).combine_chunks()
        return padded.slice(min(3, table.num_rows), table.num_rows)
    cuts = sorted(rng.randint(0, table.num_rows) for _ in range(rng.randint(1, 4)))
    ends = [*cuts, table.num_rows]
    parts = [table.slice(a, b - a) for a, b in zip([0, *cuts], ends, strict=True)]
    if roll < 0.75:
        return pa.concat_tables(parts)  # a table of several chunks
    batches = [b for part in parts for b in part.combine_chunks().to_batches()]
    return pa.RecordBatchReader.from_batches(table.schema, batches)


# -- the two fuzzers ----------------------------------------------------------------------------


def differential(seed: int) -> str | None:
    """One case: the record path and the columnar path on a random table; a mismatch, or None."""
    import pyarrow as pa

    from tests.columnar_paths import both

    rng = random.Random(seed)
    generation, operation = rng.choice(_CASES)
    table = random_table(rng, pa, generation, operation)
    size, start = rng.randint(1, 12), rng.choice([0, 7, 10**9])
    expected, got = both(
        table, generation, operation, size=size, start=start, source=reshaped(rng, pa, table)
    )  # type: ignore[arg-type]
    if got != expected:
        return f"record path {expected}\ncolumnar path {got}\ntable {table}"
    return None


def malformed(seed: int) -> str | None:
    """One case: a table with one damaged column; anything but chunks or one ValidationError."""
    import pyarrow as pa

    import batch_audience as ba
    from batch_audience._columnar import iter_columnar
    from tests.columnar_paths import both, intakes

    rng = random.Random(seed)
    generation, operation = rng.choice(_CASES)
    table = random_table(rng, pa, generation, operation)
    if not table.num_rows:
        return None
    index = rng.randrange(table.num_columns)
    try:
        column = _damaged(rng, pa, table.column(index).combine_chunks())
    except (pa.ArrowException, ValueError, TypeError, IndexError):
        return None  # pyarrow refused to build it: nothing reaches the library
    table = table.set_column(index, table.field(index).name, column)
    try:
        table.validate(full=True)
        arrow_says = ""
    except pa.ArrowInvalid as exc:
        arrow_says = str(exc) or "invalid"
    intake, first = intakes(generation, operation)  # type: ignore[arg-type]
    try:
        for _ in iter_columnar(table, intake, size=rng.randint(1, 12), first=first):
            pass
    except ba.ValidationError as err:
        if "is not valid Arrow data" in str(err) and not arrow_says:
            return f"refused a column Arrow finds valid: {err}\ntable {table}"
    except Exception:
        return f"not a ValidationError:\n{traceback.format_exc()}\ntable {table}"
    if not arrow_says:
        try:
            table.to_pylist()
        except (OverflowError, ValueError):
            return None  # values Python cannot hold (a date past 9999): no record to compare
        expected, got = both(table, generation, operation)  # type: ignore[arg-type]
        if got != expected:
            return f"record path {expected}\ncolumnar path {got}\ntable {table}"
    return None


def _damaged(rng: random.Random, pa: Any, array: Any) -> Any:
    """``array`` with one of its buffers (or its items' buffers) damaged at random."""
    children = [_child(array, i) for i in range(array.type.num_fields)]
    if children and rng.random() < 0.5:
        children[0] = _damaged(rng, pa, children[0])
    buffers = [None if b is None else bytearray(b.to_pybytes()) for b in array.buffers()]
    own = len(buffers) - sum(len(c.buffers()) for c in children)
    if pa.types.is_dictionary(array.type):
        indices = array.indices
        damaged = _damaged(rng, pa, indices)
        return pa.DictionaryArray.from_arrays(damaged, array.dictionary, safe=False)
    candidates = [i for i in range(own) if buffers[i]]
    if candidates:
        which = rng.choice(candidates)
        raw = buffers[which]
        assert raw is not None
        width = 8 if rng.random() < 0.5 else 4
        at = rng.randrange(max(1, len(raw) - width + 1)) // width * width
        if rng.random() < 0.5 and at + width <= len(raw):
            fmt = "<q" if width == 8 else "<i"
            value = rng.choice([-1, 0, 1, 2**31 - 1, rng.randint(-100, 100), len(raw) * 2])
            try:
                raw[at : at + width] = struct.pack(fmt, value)
            except struct.error:
                raw[at] ^= 0xFF
        elif raw:
            raw[rng.randrange(len(raw))] = rng.choice([0xFF, 0x80, 0xC3, ord('"'), 0x00])
    new = [None if b is None else pa.py_buffer(bytes(b)) for b in buffers[:own]]
    return pa.Array.from_buffers(
        array.type, len(array), new, offset=array.offset, children=children or None
    )


def _child(array: Any, index: int) -> Any:
    if hasattr(array, "values") and index == 0:
        return array.values
    return array.field(index)


# -- running: the parent starts one child per fuzzer and watches it ------------------------------


def _child_main(mode: str, seed: int, seconds: float, count: int | None) -> int:
    case = differential if mode == "differential" else malformed
    deadline = time.monotonic() + seconds
    done = 0
    while (count is None and time.monotonic() < deadline) or (count is not None and done < count):
        print(f"SEED {seed + done}", flush=True)
        failure = case(seed + done)
        if failure is not None:
            print(f"FAIL {seed + done}\n{failure}", flush=True)
            return 1
        done += 1
    print(f"DONE {done}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="time for both fuzzers together")
    p.add_argument("--seed", type=int, help="the first seed (default: drawn at random)")
    p.add_argument("--mode", choices=[*_MODES, "both"], default="both")
    p.add_argument("--count", type=int, help="run this many cases instead of for a time")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(10**9)
    modes = _MODES if a.mode == "both" else (a.mode,)
    if a.child:
        return _child_main(a.mode, seed, a.seconds, a.count)
    failed = False
    for mode in modes:
        command = [sys.executable, "-m", "tests.fuzz_columnar", "--child", "--mode", mode]
        command += ["--seed", str(seed), "--seconds", str(a.seconds / len(modes))]
        if a.count is not None:
            command += ["--count", str(a.count)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = result.stdout.splitlines()
        seeds = [int(line.split()[1]) for line in lines if line.startswith("SEED ")]
        if result.returncode == 0 and lines and lines[-1].startswith("DONE"):
            print(f"{mode}: {lines[-1].split()[1]} cases, seeds {seed} to {seeds[-1]}, no failure")
            continue
        failed = True
        last = seeds[-1] if seeds else seed
        how = "failed" if result.returncode == 1 else f"crashed (exit {result.returncode})"
        print(f"{mode}: {how} at seed {last}")
        print("\n".join(lines[lines.index(f"SEED {last}") + 1 :] if seeds else lines))
        print(result.stderr[-5000:])
        print(f"replay: python -m tests.fuzz_columnar --mode {mode} --seed {last} --count 1")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
