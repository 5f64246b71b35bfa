"""Checkpoints: contiguous resume positions, identity matching, refusals, crash-cut lines."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import batch_audience as ba
from batch_audience._checkpoint import (
    CheckpointError,
    ResumableUpload,
    _File,
    contiguous,
    file_fingerprint,
    resumable,
    upload_with_checkpoint,
)
from batch_audience._sources import CsvReader, RecordReader, open_records

INPUT = {"size": 123, "sha256": "ab" * 32}


@pytest.fixture
async def client() -> AsyncIterator[ba.AudienceClient]:
    """A 2.x client that is never connected (these tests stub its upload)."""
    async with ba.AudienceClient("rest", "project_p", base_url="http://127.0.0.1:9") as c:
        yield c


class StubUpload:
    """Stands in for client._upload: acknowledges the given chunks, then raises or reports."""

    def __init__(self, acks: list[tuple[int, int]], fail: BaseException | None = None) -> None:
        self.acks = acks
        self.fail = fail
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, operation: str, name: str, records: Any, *args: Any, **kw: Any) -> Any:
        self.calls.append({"operation": operation, "records": list(records), **kw})
        for first, end in self.acks:
            kw["on_ack"](first, end, f"t{first}")
            await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return ba.UploadReport(
            audience=name,
            operation=operation,
            records=sum(e - f for f, e in self.acks),
            requests=len(self.acks),
            tokens=tuple(f"t{f}" for f, _ in sorted(self.acks)),
        )


def lines(path: Path) -> list[dict[str, Any]]:
    """The checkpoint's lines, parsed."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def open_upload(client: ba.AudienceClient, path: Path, **kw: Any) -> ResumableUpload:
    """A ResumableUpload of audience 'aud' with the test input's identity."""
    options: dict[str, Any] = {"input": INPUT, "mode": "add", "chunk_size": 10}
    options.update(kw)
    return resumable(client, "aud", path=path, **options)


async def run_once(upload: ResumableUpload) -> ba.UploadReport:
    """Open the checkpoint, check it is fresh, and run the upload with no records."""
    async with upload:
        assert (upload.position, upload.resumed) == (0, False)
        return await upload.run([])


def test_contiguous_position_waits_for_the_gap() -> None:
    """The resume position is the end of the gap-free prefix, whatever the ack order."""
    assert contiguous([]) == 0
    assert contiguous([(10, 20), (0, 10), (30, 40)]) == 20
    assert contiguous([(10, 20)]) == 0
    assert contiguous([(0, 10), (0, 10), (10, 20)]) == 20
    assert contiguous([(5, 9)], start=5) == 9


async def test_a_run_cut_short_resumes_after_the_contiguous_prefix(
    client: ba.AudienceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks of chunks 0, 2 and 3 (not 1) resume at 10; the rerun starts there, as an add."""
    path = tmp_path / "ck"
    stub = StubUpload([(0, 10), (20, 30), (30, 40)], fail=ba.ServerError(500))
    monkeypatch.setattr(client, "_upload", stub)
    with pytest.raises(ba.ServerError) as info:
        await run_once(open_upload(client, path, mode="replace"))
    assert "run the same upload again to resume" in "".join(info.value.__notes__)
    assert [line.get("end") for line in lines(path)[1:]] == [10, 30, 40]

    stub = StubUpload([(10, 20), (20, 30), (30, 40), (40, 45)])
    monkeypatch.setattr(client, "_upload", stub)
    async with open_upload(client, path, mode="replace") as upload:
        assert (upload.position, upload.resumed, upload.done) == (10, True, False)
        report = await upload.run(["r"] * 35)
    [call] = stub.calls
    assert (call["start"], call["skip_replace"]) == (10, True)
    assert (report.records, report.requests) == (45, 5)
    assert report.tokens == ("t0", "t10", "t20", "t30", "t40")
    assert not report.atomic
    assert not path.exists()  # a finished upload leaves no checkpoint behind


async def test_a_finished_upload_is_not_sent_again(
    client: ba.AudienceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint that says done (the wait was cut short) sends nothing, reports the tokens."""
    path = tmp_path / "ck"
    monkeypatch.setattr(client, "_upload", StubUpload([(0, 10), (10, 15)]))
    async with open_upload(client, path) as upload:
        await upload.run([], keep=True)
    assert lines(path)[-1] == {"done": True, "records": 15}
    stub = StubUpload([])
    monkeypatch.setattr(client, "_upload", stub)
    async with open_upload(client, path) as upload:
        assert upload.done
        report = await upload.run([])
    assert stub.calls == []
    assert (report.records, report.requests, report.tokens) == (15, 2, ("t0", "t10"))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        pytest.param({"input": {**INPUT, "size": 124}}, "input size differ", id="input"),
        pytest.param({"mode": "remove"}, "mode 'add', not 'remove'", id="mode"),
        pytest.param({"chunk_size": 20}, "chunk_size 10, not 20", id="chunk-size"),
        pytest.param({"name": "other"}, "audience 'aud', not 'other'", id="audience"),
        pytest.param({"project": "project_q"}, "another server, project or app", id="project"),
    ],
)
async def test_a_checkpoint_of_another_upload_is_refused(
    client: ba.AudienceClient, tmp_path: Path, change: dict[str, Any], needle: str
) -> None:
    """Another input, mode, chunk size, audience or project is refused, naming the difference."""
    path = tmp_path / "ck"
    async with open_upload(client, path):
        pass
    before = path.read_bytes()
    project = change.pop("project", "project_p")
    name = change.pop("name", "aud")
    options: dict[str, Any] = {"input": INPUT, "mode": "add", "chunk_size": 10, **change}
    async with ba.AudienceClient("rest", project, base_url="http://127.0.0.1:9") as other:
        with pytest.raises(CheckpointError, match="belongs to another upload") as info:
            async with resumable(other, name, path=path, **options):
                pass
    assert needle in str(info.value)
    assert "project_q" not in str(info.value) and "rest" not in str(info.value)
    assert path.read_bytes() == before


async def test_a_file_that_is_not_a_checkpoint_is_left_alone(
    client: ba.AudienceClient, tmp_path: Path
) -> None:
    """Pointing --checkpoint at the data file is refused, and the file is not touched."""
    path = tmp_path / "data.csv"
    path.write_bytes(b"id\nu-1\nu-2")  # no final newline: must not be "repaired"
    with pytest.raises(CheckpointError, match="not a batch_audience checkpoint"):
        async with open_upload(client, path):
            pass
    assert path.read_bytes() == b"id\nu-1\nu-2"


async def test_a_line_cut_by_a_crash_is_dropped(
    client: ba.AudienceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A half-written last line (kill -9 during a write) is dropped; a damaged one is refused."""
    path = tmp_path / "ck"
    monkeypatch.setattr(client, "_upload", StubUpload([(0, 10)], fail=ba.ServerError(500)))
    with pytest.raises(ba.ServerError):
        await run_once(open_upload(client, path))
    with path.open("ab") as file:
        file.write(b'{"start": 10, "end"')
    async with open_upload(client, path) as upload:
        assert upload.position == 10
    assert path.read_bytes().endswith(b"}\n")
    with path.open("ab") as file:
        file.write(b"garbage\n")
    with pytest.raises(CheckpointError, match="line 3 is damaged"):
        async with open_upload(client, path):
            pass


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
async def test_a_checkpoint_that_is_not_a_regular_file_is_refused(
    client: ba.AudienceClient, device: str
) -> None:
    """A device is refused at once: /dev/zero would be read forever, /dev/null keeps nothing."""
    with pytest.raises(CheckpointError, match="not a regular file"):
        async with resumable(client, "aud", path=device, input=INPUT):
            pass


async def test_a_checkpoint_in_use_is_refused(client: ba.AudienceClient, tmp_path: Path) -> None:
    """Two uploads cannot share one checkpoint at the same time."""
    path = tmp_path / "ck"
    async with open_upload(client, path):
        with pytest.raises(CheckpointError, match="in use"):
            async with open_upload(client, path):
                pass
    async with open_upload(client, path):
        pass  # released on exit


async def test_upload_with_checkpoint_hands_the_position_to_the_source(
    client: ba.AudienceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records callable gets the number of records to skip."""
    path = tmp_path / "ck"
    data = tmp_path / "in.ndjson"
    data.write_bytes(b"".join(b'"u-%d"\n' % i for i in range(12)))
    fingerprint = file_fingerprint(data)
    assert fingerprint["size"] == 74 and len(fingerprint["sha256"]) == 64
    monkeypatch.setattr(client, "_upload", StubUpload([(0, 10)], fail=ba.ServerError(500)))
    with pytest.raises(ba.ServerError):
        await upload_with_checkpoint(client, "aud", lambda n: [], path=path, input=fingerprint)
    readers: list[RecordReader] = []

    def rest(n: int) -> RecordReader:
        readers.append(open_records(str(data), skip=n))
        return readers[-1]

    stub = StubUpload([(10, 12)])
    monkeypatch.setattr(client, "_upload", stub)
    report = await upload_with_checkpoint(client, "aud", rest, path=path, input=fingerprint)
    [reader] = readers
    assert (reader.skip, stub.calls[0]["start"]) == (10, 10)
    assert reader._closer is None  # closed once the upload ended
    assert report.records == 12


# -- write failures, torn lines, cancellation -------------------------------------------------


def acks_on_disk(path: Path) -> int:
    """Acknowledged chunks the checkpoint file holds right now."""
    return path.read_bytes().count(b'"start"')


class SteppedUpload:
    """client._upload stand-in: acknowledges chunks one by one, each once written, then waits.

    ``settle=False`` acknowledges without waiting for the writes; ``cancelled`` tells whether
    the upload was stopped from outside.
    """

    def __init__(self, acks: list[tuple[int, int]], path: Path, *, settle: bool = True) -> None:
        self.acks = acks
        self.path = path
        self.settle = settle
        self.cancelled = False

    async def __call__(self, operation: str, name: str, records: Any, *args: Any, **kw: Any) -> Any:
        try:
            for number, (first, end) in enumerate(self.acks, start=1):
                kw["on_ack"](first, end, f"t{first}")
                while self.settle and await asyncio.to_thread(acks_on_disk, self.path) < number:
                    await asyncio.sleep(0.005)
            await asyncio.Event().wait()  # a long upload: only a cancellation ends it
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def full_disk_at(needle: bytes, writes: list[bytes]) -> Callable[[int, memoryview], int]:
    """An os.write whose first write holding ``needle`` stops halfway, then fails with ENOSPC."""
    state = {"full": False}

    def write(fd: int, data: memoryview) -> int:
        chunk = bytes(data)
        if state["full"]:
            writes.append(chunk)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if needle in chunk:
            state["full"] = True
            return os.write(fd, data[: chunk.index(needle) + len(needle) // 2])
        return os.write(fd, data)

    return write


async def test_a_failed_write_stops_the_upload_with_a_checkpoint_error(
    client: ba.AudienceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk stops the upload: CheckpointError names file and OS error; written lines stay."""
    path = tmp_path / "ck"
    writes: list[bytes] = []
    monkeypatch.setattr(_File, "_os_write", staticmethod(full_disk_at(b'{"start":10,', writes)))
    stub = SteppedUpload([(0, 10), (10, 20), (20, 30)], path)
    monkeypatch.setattr(client, "_upload", stub)
    with pytest.raises(CheckpointError) as info:
        await asyncio.wait_for(run_once(open_upload(client, path)), timeout=10)
    assert stub.cancelled  # stopped, not left running with nothing recorded
    assert str(path) in str(info.value) and "No space left on device" in str(info.value)
    assert "run the same upload again" in "".join(info.value.__notes__)
    assert isinstance(info.value.__cause__, OSError)
    assert len(writes) == 1  # the failed write is never retried after the half line
    content = path.read_bytes()
    assert content.endswith(b"}\n")  # the half-written line was cut off again
    assert [line.get("end") for line in lines(path)[1:]] == [10]

    monkeypatch.undo()
    async with open_upload(client, path) as upload:
        assert (upload.position, upload.resumed) == (10, True)


async def test_a_torn_line_left_by_a_failed_write_is_never_appended_to(
    client: ba.AudienceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When even the cut fails, later acknowledgements are not written after the torn line."""
    path = tmp_path / "ck"
    writes: list[bytes] = []
    monkeypatch.setattr(_File, "_os_write", staticmethod(full_disk_at(b'{"start":10,', writes)))

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(_File, "_os_ftruncate", staticmethod(no_truncate))
    stub = SteppedUpload([(0, 10), (10, 20), (20, 30), (30, 40)], path, settle=False)
    monkeypatch.setattr(client, "_upload", stub)
    with pytest.raises(CheckpointError, match="No space left on device"):
        await asyncio.wait_for(run_once(open_upload(client, path)), timeout=10)
    content = path.read_bytes()
    assert content.endswith(b'}\n{"star')  # torn, and nothing after it
    assert b'"start":20' not in content and b'"start":30' not in content

    monkeypatch.undo()
    async with open_upload(client, path) as upload:
        assert upload.position == 10  # the torn last line is dropped on resume
    assert path.read_bytes().endswith(b"}\n")


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b'{"start":10,"end"', id="torn-ack"),
        pytest.param(b"\0\0\0\0", id="zeros-after-a-crash"),
    ],
)
async def test_a_torn_last_line_is_ignored_but_damage_before_it_is_refused(
    client: ba.AudienceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: bytes
) -> None:
    """A torn last line is dropped on resume; the same bytes followed by a line are refused."""
    path = tmp_path / "ck"
    monkeypatch.setattr(client, "_upload", StubUpload([(0, 10)], fail=ba.ServerError(500)))
    with pytest.raises(ba.ServerError):
        await run_once(open_upload(client, path))
    good = path.read_bytes()
    path.write_bytes(good + tail)
    async with open_upload(client, path) as upload:
        assert upload.position == 10
    assert path.read_bytes() == good
    path.write_bytes(good + tail + b'{"start":10,"end":20,"token":"t10"}\n')
    with pytest.raises(CheckpointError, match="line 3 is damaged"):
        async with open_upload(client, path):
            pass


async def test_a_header_cut_short_is_written_again(
    client: ba.AudienceClient, tmp_path: Path
) -> None:
    """A kill during the very first write leaves part of a header: the file starts afresh."""
    path = tmp_path / "ck"
    for cut in (b'{"check', b'{"checkpoint":"batch_audience","vers'):
        path.write_bytes(cut)
        async with open_upload(client, path) as upload:
            assert (upload.position, upload.resumed) == (0, False)
        assert lines(path)[0]["checkpoint"] == "batch_audience"


async def test_closing_during_a_write_leaves_the_file_to_the_writer(
    client: ba.AudienceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C during the exit's flush closes nothing under the writer thread."""
    path = tmp_path / "ck"
    entered, release = threading.Event(), threading.Event()
    upload = open_upload(client, path)
    await upload.__aenter__()
    assert upload._file is not None
    fd = upload._file._fd

    def slow_write(fd: int, data: memoryview) -> int:
        entered.set()
        release.wait(10)
        return os.write(fd, data)

    monkeypatch.setattr(upload._file, "_os_write", slow_write)
    upload._acknowledge(0, 10, "t0")
    await asyncio.to_thread(entered.wait, 10)
    exiting = asyncio.create_task(upload.__aexit__(None, None, None))
    for _ in range(3):
        await asyncio.sleep(0)  # the exit now waits for the write, in its last flush
    exiting.cancel()  # the second Ctrl-C
    with pytest.raises(asyncio.CancelledError):
        await exiting
    os.fstat(fd)  # still open: the writer thread is using it
    # Were the descriptor closed, this file could take its number and get the checkpoint line.
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)
    try:
        release.set()
        assert upload._writer is not None
        await asyncio.wait_for(asyncio.shield(upload._writer), timeout=10)
    finally:
        os.close(other)
    assert (tmp_path / "other").read_bytes() == b""
    assert [line.get("end") for line in lines(path)[1:]] == [10]
    async with open_upload(client, path) as again:  # closed and unlocked by the writer
        assert again.position == 10


async def test_a_cancelled_open_does_not_leak_the_file_or_its_lock(
    client: ba.AudienceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while the file is being opened and locked, the open file is closed later."""
    path = tmp_path / "ck"
    entered, release = threading.Event(), threading.Event()
    load = _File._load

    def slow_load(self: _File, identity: dict[str, Any]) -> None:
        entered.set()
        release.wait(10)
        load(self, identity)

    monkeypatch.setattr(_File, "_load", slow_load)

    async def enter() -> None:
        async with open_upload(client, path):
            raise AssertionError("the open was cancelled: the block must not run")

    opening = asyncio.create_task(enter())
    await asyncio.to_thread(entered.wait, 10)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    monkeypatch.undo()
    release.set()
    for _ in range(200):
        try:
            async with open_upload(client, path):
                return  # the lock was released: nothing leaked
        except CheckpointError as exc:
            if "in use" not in str(exc):
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("the checkpoint stayed locked by the cancelled open")


class LinesByThread:
    """Lines of a CSV of ``rows`` records, counting those read on this thread and on others."""

    def __init__(self, rows: int) -> None:
        self.data = b"id\n" + b"".join(b"u-%d\n" % i for i in range(rows))
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


async def test_a_resume_passes_the_acknowledged_records_off_the_loop(
    client: ba.AudienceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming after 200,000 acknowledged records skips them in a thread, not on the loop."""
    path = tmp_path / "ck"
    monkeypatch.setattr(client, "_upload", StubUpload([(0, 200_000)], fail=ba.ServerError(500)))
    with pytest.raises(ba.ServerError):
        await run_once(open_upload(client, path))
    stub = StubUpload([(200_000, 200_002)])
    monkeypatch.setattr(client, "_upload", stub)
    lines = LinesByThread(200_002)
    async with open_upload(client, path) as upload:
        assert upload.position == 200_000
        reader = CsvReader(lines, name="big.csv", skip=upload.position)
        report = await upload.run(reader)
    assert stub.calls[0]["records"] == [{"id": "u-200000"}, {"id": "u-200001"}]
    assert lines.off_loop >= 200_001  # the header and every acknowledged row
    assert lines.on_loop <= 2  # only the records sent
    assert report.records == 200_002
