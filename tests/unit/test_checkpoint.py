"""Checkpoints: contiguous resume positions, identity matching, refusals, crash-cut lines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import batch_audience as ba
from batch_audience._checkpoint import (
    CheckpointError,
    ResumableUpload,
    contiguous,
    file_fingerprint,
    resumable,
    upload_with_checkpoint,
)
from batch_audience._sources import RecordReader, open_records

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
