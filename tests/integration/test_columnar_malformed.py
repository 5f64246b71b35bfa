"""Malformed Arrow data (offsets that go down or past their buffers, indices past a dictionary)
is refused at the boundary by name, over real HTTP, with nothing of it sent and no crash.

Arrow trusts what a C stream or ``Array.from_buffers`` hands it; before the boundary checks such
columns made the C writer write past its memory and DuckDB abort the process. So the uploads run
in a child interpreter: a crash fails the test instead of killing the run.
"""

from __future__ import annotations

import subprocess
import sys

# The child: one upload per case to a fake server of its own; prints one line per case.
_CHILD = r'''
import asyncio, struct, sys
import pyarrow as pa
import batch_audience as ba
from batch_audience.testing import FakeBatchServer


def strings(ends, data=b"abcdefgh", type_=pa.string()):
    """A text array over raw offsets (Array.from_buffers checks only the first and last)."""
    width = "q" if type_ == pa.large_string() else "i"
    offsets = pa.py_buffer(struct.pack(f"<{len(ends)}{width}", *ends))
    return pa.Array.from_buffers(type_, len(ends) - 1, [None, offsets, pa.py_buffer(data)])


def lists(ends, items):
    offsets = pa.py_buffer(struct.pack(f"<{len(ends)}i", *ends))
    type_ = pa.list_(items.type)
    return pa.Array.from_buffers(type_, len(ends) - 1, [None, offsets], children=[items])


IDS = pa.array(["a", "b", "c"])
GOOD_TEXT = pa.array(["x", "y", "z"])
CASES = {
    "id offsets go down": ("2", {"id": strings([0, 5, 2, 8])}, "id"),
    "id offset past its data": ("2", {"id": strings([0, 50, 6, 8])}, "id"),
    "text offsets go down": ("2", {"id": IDS, "plan": strings([0, 5, 2, 8])}, "plan"),
    "large text offsets go down": (
        "2", {"id": IDS, "plan": strings([0, 5, 2, 8], type_=pa.large_string())}, "plan"
    ),
    "list offsets go down": ("2", {"id": IDS, "l": lists([0, 2, 1, 3], GOOD_TEXT)}, "l"),
    "list item offsets go down": (
        "2", {"id": IDS, "l": lists([0, 1, 2, 3], strings([0, 5, 2, 8]))}, "l"
    ),
    "tag item offsets go down": (
        "1.1", {"id": IDS, "tags": lists([0, 1, 2, 3], strings([0, 5, 2, 8]))}, "tags"
    ),
    "dictionary index past its values": (
        "2",
        {
            "id": IDS,
            "plan": pa.DictionaryArray.from_arrays(
                pa.array([0, 7, 1], pa.int8()), pa.array(["p", "q"]), safe=False
            ),
        },
        "plan",
    ),
}


async def upload(server, generation, source, expected_column, expect_members):
    if generation == "2":
        client = ba.AudienceClient(server.rest_key, server.project_key, base_url=server.url)
    else:
        client = ba.CustomAudienceClient(
            server.api_key, server.rest_key, version="1.1", base_url=server.url
        )
    async with client:
        name = f"a{len(server.requests)}"
        if generation == "2":
            await client.create(name)
        before = len(server.requests)
        try:
            await client.add(name, source, chunk_size=10)
        except ba.ValidationError as err:
            assert f"column {expected_column!r} is not valid Arrow data" in str(err), err
            writes = [r for r in server.requests[before:] if r.entries]
            keys = {} if generation == "2" else {"api_key": server.api_key}
            try:
                members = server.members(name, **keys)
            except KeyError:  # a custom audience exists from its first write on
                members = {}
            assert sorted(members) == expect_members, sorted(members)
            assert sum(r.entries for r in writes) == len(expect_members), writes
            return str(err)
        raise AssertionError("no error")


async def main():
    async with FakeBatchServer() as server:
        for case, (generation, columns, column) in CASES.items():
            print("CASE", case, flush=True)
            error = await upload(server, generation, pa.table(columns), column, [])
            print("REFUSED", error, flush=True)
        # A broken second batch: the first batch's chunk is sent, nothing of the second.
        print("CASE second batch broken", flush=True)
        good = pa.record_batch({"id": [f"u-{i}" for i in range(10)]})
        bad = pa.record_batch({"id": strings([0, 5, 2, 8])})
        reader = pa.RecordBatchReader.from_batches(good.schema, [good, bad])
        error = await upload(server, "2", reader, "id", [f"u-{i}" for i in range(10)])
        assert error.startswith("record 10: "), error
        print("REFUSED", error, flush=True)


asyncio.run(main())
'''


def test_malformed_columns_are_refused_by_name_and_nothing_of_them_is_sent() -> None:
    """IDs, text, lists, list items, tags and dictionaries whose layout is broken: each upload
    raises ValidationError naming the column, the fake receives none of its rows, no crash."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert sum(line.startswith("REFUSED") for line in lines) == 9, result.stdout
    assert "REFUSED record 0: column 'id' is not valid Arrow data" in result.stdout
