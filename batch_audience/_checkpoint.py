"""Resumable uploads: a checkpoint file records each acknowledged chunk, and a rerun resumes.

The checkpoint is a JSON-lines file, only ever appended to, synced to disk after each write::

    {"checkpoint": "batch_audience", "version": 1, "identity": {...}}
    {"start": 0, "end": 10000, "token": "9f2c..."}     one line per acknowledged chunk
    {"start": 20000, "end": 30000, "token": "..."}     chunks may land out of order
    {"done": true, "records": 1000000}                 everything was acknowledged

``identity`` says which upload the file belongs to: the audience, the operation, the chunk
size, the API generation, a fingerprint of the server and project (or app) key, and the
input (e.g. ``file_fingerprint(path)``: size and SHA-256). A checkpoint whose identity
differs is refused with CheckpointError, so a checkpoint can never skip records of another
input, audience or project. Keys are never written: the target is a one-way hash.

A rerun resumes at the *contiguous* position: the largest ``p`` such that every record
before ``p`` was in an acknowledged chunk (with several requests in flight, chunk 3 may be
acknowledged while chunk 2 was not; chunk 2 and 3 are then both sent again, in order, which
ends in the same membership since adds and removes are idempotent). A replace whose replace
call was acknowledged is never replaced again: its remaining chunks go as adds. A last line
cut short by a crash is dropped; the checkpoint is deleted once the upload (and the wait for
indexing, if asked) is over, so the next run of the same command starts afresh.

Writes run in a worker thread, so an fsync never stalls the event loop; an acknowledgement
lost to a crash before its fsync only means that chunk is sent again. A write that fails (a
full disk) stops the upload with CheckpointError naming the file and the OS error: the lines
written whole stay, a torn one is cut off (or dropped by the next load), and nothing is ever
appended after it. Only a torn *last* line is forgiven; damage anywhere else is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import threading
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import attrs
import orjson

from ._exceptions import ValidationError
from ._models import ProgressCallback, UploadReport
from ._sources import Interrupted, RecordReader
from ._upload import DEFAULT_CONCURRENCY, Operation
from ._validate import MAX_ENTRIES

if TYPE_CHECKING:
    from ._client import AudienceClient, CustomAudienceClient

    Client = AudienceClient | CustomAudienceClient

try:  # POSIX: one process at a time per checkpoint.
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; the lock is then skipped
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CheckpointError",
    "ResumableUpload",
    "file_fingerprint",
    "resumable",
    "upload_with_checkpoint",
]

_MAGIC: Final = "batch_audience"
_VERSION: Final = 1
# How a header line starts (orjson writes no spaces): a file cut inside it is ours.
_HEADER_START: Final = b'{"checkpoint":"batch_audience"'
FINGERPRINT_BLOCK: Final = 1 << 20  # bytes read per step when hashing an input file

Records = Iterable[object] | AsyncIterable[object]


class CheckpointError(ValidationError):
    """The checkpoint cannot be used: it belongs to another upload, is damaged, or is in use."""

    def __reduce__(self) -> Any:
        return (CheckpointError, (self.rule,))


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a file's content for a checkpoint: its size and SHA-256 (reads it all)."""
    return fingerprint(path)


def fingerprint(
    path: str | os.PathLike[str], stop: threading.Event | None = None
) -> dict[str, Any]:
    """``file_fingerprint``, looking at ``stop`` after each block (Interrupted when set)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(FINGERPRINT_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while read := file.readinto(buffer):
            digest.update(view[:read])
            size += read
            if stop is not None and stop.is_set():
                raise Interrupted
    return {"size": size, "sha256": digest.hexdigest()}


def target_fingerprint(client: Client) -> str:
    """A one-way fingerprint of where a client writes: server, API generation and key."""
    endpoints = client._endpoints
    key = str(getattr(endpoints, "project_key", None) or getattr(endpoints, "api_key", ""))
    text = "\0".join(("batch_audience.target", endpoints.generation, client.base_url, key))
    # 16 hex characters tell targets apart; they say nothing usable about the key.
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@attrs.frozen
class _Ack:
    start: int
    end: int
    token: str | None


class _File:
    """The checkpoint file: read once, then appended to; holds an exclusive lock while open.

    ``write`` runs in a worker thread and ``close`` on the event loop's: a close that comes
    while a write is under way (a second Ctrl-C during the last flush) is left to the writer,
    so the descriptor is never closed, or reused for another file, under a write.
    """

    # The system calls that write, as seams: tests replace them to simulate a full disk.
    _os_write: Callable[[int, memoryview], int] = staticmethod(os.write)
    _os_fsync: Callable[[int], None] = staticmethod(os.fsync)
    _os_ftruncate: Callable[[int, int], None] = staticmethod(os.ftruncate)

    def __init__(self, path: str, identity: dict[str, Any]) -> None:
        self.path = path
        self.acks: list[_Ack] = []
        self.done = False
        self._mutex = threading.Lock()
        self._writing = False
        self._closing = False
        self._failure: CheckpointError | None = None
        self._size = 0  # bytes of whole lines in the file
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(self._fd).st_mode):
                # /dev/zero would be read forever, /dev/null would keep nothing.
                raise CheckpointError(f"checkpoint {path!r} is not a regular file")
            self._lock()
            self._load(identity)
        except BaseException:
            os.close(self._fd)
            raise

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(
                f"checkpoint {self.path!r} is in use by another upload right now"
            ) from None

    def _load(self, identity: dict[str, Any]) -> None:
        data = b""
        while chunk := os.pread(self._fd, 1 << 20, len(data)):
            data += chunk
        newline = data.find(b"\n")
        # A file cut inside its header (a kill during the first write) is ours, however short.
        cut_header = newline < 0 and (
            data.startswith(_HEADER_START) or _HEADER_START.startswith(data.strip())
        )
        if data.strip() and not cut_header:
            # Check the header before changing anything: the path may name some other file.
            try:
                header = self._parse(data[: newline if newline >= 0 else len(data)], 1)
            except CheckpointError:
                header = {}
            if header.get("checkpoint") != _MAGIC or header.get("version") != _VERSION:
                raise CheckpointError(
                    f"{self.path!r} is not a batch_audience checkpoint (version {_VERSION})"
                )
        if not data.endswith(b"\n"):
            # The last write was cut short (a kill, a full disk): drop its torn line, so
            # appends start a fresh line and the torn one never ends up inside the file.
            data = data[: data.rfind(b"\n") + 1]
            os.ftruncate(self._fd, len(data))
        self._size = len(data)
        if not data.strip():
            header = {"checkpoint": _MAGIC, "version": _VERSION, "identity": identity}
            os.ftruncate(self._fd, 0)
            self._size = 0
            self.write(orjson.dumps(header) + b"\n")
            return
        lines = data.split(b"\n")
        header = self._parse(lines[0], 1)
        stored = header.get("identity")
        if stored != identity:
            raise CheckpointError(
                f"checkpoint {self.path!r} belongs to another upload "
                f"({_differences(stored, identity)}); delete it to start over, "
                "or use another checkpoint file"
            )
        for number, line in enumerate(lines[1:-1], start=2):
            entry = self._parse(line, number)
            if entry.get("done") is True:
                self.done = True
                continue
            start, end, token = entry.get("start"), entry.get("end"), entry.get("token")
            if not (
                type(start) is int
                and type(end) is int
                and 0 <= start <= end
                and (token is None or isinstance(token, str))
            ):
                raise CheckpointError(f"checkpoint {self.path!r} line {number} is damaged")
            self.acks.append(_Ack(start, end, token))

    def _parse(self, line: bytes, number: int) -> dict[str, Any]:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise CheckpointError(f"checkpoint {self.path!r} line {number} is damaged")
        return value

    def write(self, data: bytes) -> None:
        """Append whole lines and sync them (in a worker thread).

        Raises:
            CheckpointError: naming the file and the OS error (a full disk...). The lines
                written whole are kept, a torn one is cut off again, and every later write
                is refused: nothing is ever appended after a torn line.
        """
        with self._mutex:
            if self._failure is not None:
                raise self._failure
            if self._fd < 0 or self._closing:
                raise CheckpointError(f"checkpoint {self.path!r} is closed")
            self._writing = True
        try:
            self._write(data)
        finally:
            with self._mutex:
                self._writing = False
                if self._closing:
                    self._close_fd()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[self._os_write(self._fd, view) :]
            self._os_fsync(self._fd)
        except OSError as exc:
            written = len(data) - len(view)
            whole = data.rfind(b"\n", 0, written) + 1
            # Best effort: if this fails too, the next load drops the torn line.
            with contextlib.suppress(OSError):
                self._os_ftruncate(self._fd, self._size + whole)
            self._failure = CheckpointError(f"cannot write checkpoint {self.path!r}: {exc}")
            raise self._failure from exc
        self._size += len(data)

    def close(self) -> None:
        """Close the file and release its lock, at once or when the write under way ends."""
        with self._mutex:
            self._closing = True
            if not self._writing:
                self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # also releases the lock


def _differences(stored: object, wanted: Mapping[str, Any]) -> str:
    """Which identity fields differ, for the refusal message (values hold no secret)."""
    if not isinstance(stored, dict):
        return "it has no identity"
    out = []
    for field in sorted(set(stored) | set(wanted)):
        old, new = stored.get(field), wanted.get(field)
        if old == new:
            continue
        if field == "target":
            out.append("it was written for another server, project or app")
        elif isinstance(old, dict) and isinstance(new, dict):
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            out.append(f"{field} {', '.join(keys)} differ")
        else:
            out.append(f"{field} {old!r}, not {new!r}")
    return "; ".join(out)


def contiguous(acks: Iterable[tuple[int, int]], start: int = 0) -> int:
    """The largest p such that every position in [start, p) lies in one of the intervals."""
    position = start
    for first, end in sorted(acks):
        if first > position:
            break
        position = max(position, end)
    return position


class ResumableUpload:
    """One upload bound to a checkpoint file; ``run`` it, then it resumes where it stopped.

    Use ``async with resumable(...) as upload`` (which opens, checks and locks the file), read
    ``upload.position`` to know how many leading records to skip, then ``await
    upload.run(records_after_position)``.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        path: str | os.PathLike[str],
        input: Mapping[str, Any],
        mode: Operation = "add",
        chunk_size: int = MAX_ENTRIES,
    ) -> None:
        if mode not in ("add", "remove", "replace"):
            raise ValidationError(f"mode must be 'add', 'remove' or 'replace', got {mode!r}")
        self.client = client
        self.name = name
        self.path = os.fspath(path)
        self.mode: Operation = mode
        self.chunk_size = chunk_size
        # A JSON round trip, so the comparison with what the file holds is exact.
        self.identity: dict[str, Any] = orjson.loads(
            orjson.dumps(
                {
                    "audience": name,
                    "mode": mode,
                    "chunk_size": chunk_size,
                    "api": client._endpoints.generation,
                    "target": target_fingerprint(client),
                    "input": dict(input),
                }
            )
        )
        self._file: _File | None = None
        self._earlier: list[_Ack] = []
        self._position = 0
        self._started = False
        self._done = False
        self._pending: list[bytes] = []
        self._writer: asyncio.Task[None] | None = None
        # Set when a write failed: nothing more is written, and the upload is stopped.
        self._failure: CheckpointError | None = None
        self._upload: asyncio.Task[UploadReport] | None = None
        self._ran = False

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        # A future, not a task: the loop's shutdown does not cancel it, so a file opened by
        # the thread after a cancellation is always closed by _close_opened.
        opening = loop.run_in_executor(None, _File, self.path, self.identity)
        try:
            self._file = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The thread cannot be stopped: close (and unlock) the file once it is open.
            opening.add_done_callback(_close_opened)
            raise
        acks = self._file.acks
        self._position = contiguous((a.start, a.end) for a in acks)
        # Acknowledged chunks inside the resumed prefix; later ones will be sent again.
        self._earlier = sorted(
            {(a.start, a.end): a for a in acks if a.end <= self._position}.values(),
            key=lambda a: a.start,
        )
        self._started = bool(acks)
        self._done = self._file.done
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Keep what was acknowledged even when failing: the next run resumes from it.
            if exc is None:
                await self._flush()
            else:
                with contextlib.suppress(Exception):
                    await self._flush()
        finally:
            if self._file is not None:
                self._file.close()

    @property
    def position(self) -> int:
        """Records at the start of the input that an earlier run had acknowledged: skip them."""
        return self._position

    @property
    def resumed(self) -> bool:
        """Whether an earlier run of this upload got anything acknowledged."""
        return self._started

    @property
    def done(self) -> bool:
        """Whether an earlier run already had every record acknowledged."""
        return self._done

    @property
    def earlier_requests(self) -> int:
        """Requests that earlier runs had acknowledged (the report of ``run`` counts them)."""
        return len(self._earlier)

    # -- the upload ------------------------------------------------------------------------

    async def run(
        self,
        records: Records,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: ProgressCallback | None = None,
        wait: bool = False,
        audience_type: str | None = None,
        keep: bool = False,
    ) -> UploadReport:
        """Upload ``records`` (the input after ``position``); return the whole upload's report.

        The report counts every run of this upload: records, requests and tokens of earlier
        runs included. Once everything was acknowledged (and indexed, with ``wait``) the
        checkpoint file is deleted, unless ``keep``.

        A RecordReader's skipped records are passed in a worker thread first (``skip=``
        can be millions of lines: not on the event loop).

        Raises:
            ValidationError, ApiError, TransportError: as ``add``; what was acknowledged is
                in the checkpoint, and running the same upload again resumes from it.
            CheckpointError: the checkpoint could not be written; the upload was stopped,
                and what was written before resumes.
        """
        if self._file is None:
            raise RuntimeError("use 'async with resumable(...)' before run()")
        if self._ran:
            raise RuntimeError("run() was already called; open the checkpoint again to rerun")
        self._ran = True
        if isinstance(records, RecordReader):
            # Passing the records acknowledged earlier (millions, perhaps) is for a thread.
            await records.skip_in_thread()
        earlier_tokens = tuple(a.token for a in self._earlier if a.token is not None)
        if self._done:
            report = UploadReport(
                audience=self.name,
                operation=self.mode,
                records=self._position,
                requests=len(self._earlier),
                tokens=earlier_tokens,
                atomic=len(self._earlier) <= 1,
            )
        else:
            # A task of its own, so that a failed checkpoint write can stop it (_drain).
            self._upload = asyncio.get_running_loop().create_task(
                self.client._upload(
                    self.mode,
                    self.name,
                    records,
                    concurrency,
                    progress,
                    self.chunk_size,
                    False,
                    audience_type,
                    start=self._position,
                    skip_replace=self.mode == "replace" and self._started,
                    on_ack=self._acknowledge,
                )
            )
            try:
                this_run = await self._upload
            except BaseException as exc:
                failure = self._failure
                current = asyncio.current_task()
                if (
                    failure is not None
                    and isinstance(exc, asyncio.CancelledError)
                    and self._upload.cancelled()
                    and not (current is not None and current.cancelling())
                ):
                    # Cancelled by _drain, not by our caller: the write failure is the error.
                    raise failure from failure.__cause__
                if isinstance(exc, Exception):
                    exc.add_note(
                        f"acknowledged chunks are saved in checkpoint {self.path!r}: "
                        "run the same upload again to resume"
                    )
                    if failure is not None and exc is not failure:
                        exc.add_note(f"also: {failure}")
                raise
            finally:
                self._upload = None
            requests = len(self._earlier) + this_run.requests
            report = attrs.evolve(
                this_run,
                records=self._position + this_run.records,
                requests=requests,
                tokens=earlier_tokens + this_run.tokens,
                atomic=requests <= 1,
            )
            self._pending.append(orjson.dumps({"done": True, "records": report.records}) + b"\n")
            await self._flush()
            self._done = True
        if wait and report.tokens:
            states = await self.client.wait_applied(self.name, report.tokens)
            report = attrs.evolve(report, states=states)
        if not keep:
            await asyncio.to_thread(_unlink, self.path)
        return report

    def _acknowledge(self, first: int, end: int, token: str | None) -> None:
        if self._failure is not None:
            return  # the upload is being stopped; this chunk is sent again on resume
        self._pending.append(orjson.dumps({"start": first, "end": end, "token": token}) + b"\n")
        self._start_writer()

    def _start_writer(self) -> asyncio.Task[None]:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return self._writer

    async def _drain(self) -> None:
        file = self._file
        assert file is not None
        while self._pending and self._failure is None:
            # Acknowledgements that came in during the last fsync share the next one.
            data = b"".join(self._pending)
            self._pending.clear()
            try:
                await asyncio.to_thread(file.write, data)
            except CheckpointError as exc:
                # Going on would record nothing: stop the upload, and say why (run, _flush).
                self._failure = exc
                exc.add_note(
                    "the upload was stopped; the chunks recorded before this error stay in the "
                    "checkpoint: make room (or fix the file) and run the same upload again"
                )
                self._pending.clear()
                if self._upload is not None:
                    self._upload.cancel()

    async def _flush(self) -> None:
        """Wait until every acknowledgement so far is on disk; raise the write error if any."""
        while self._failure is None and (
            self._pending or (self._writer is not None and not self._writer.done())
        ):
            # Shielded: a cancelled flush leaves the write to finish, never half done.
            await asyncio.shield(self._start_writer())
        if self._writer is not None and self._writer.done() and not self._writer.cancelled():
            self._writer.result()  # an unexpected error of the writer task itself
        if self._failure is not None:
            raise self._failure


def _close_opened(opening: asyncio.Future[_File]) -> None:
    if opening.cancelled():
        return
    if opening.exception() is None:
        opening.result().close()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def resumable(
    client: Client,
    name: str,
    *,
    path: str | os.PathLike[str],
    input: Mapping[str, Any],
    mode: Operation = "add",
    chunk_size: int = MAX_ENTRIES,
) -> ResumableUpload:
    """An upload checkpointed in ``path``; ``input`` identifies the records (file_fingerprint)."""
    return ResumableUpload(client, name, path=path, input=input, mode=mode, chunk_size=chunk_size)


async def upload_with_checkpoint(
    client: Client,
    name: str,
    records: Callable[[int], Records],
    *,
    path: str | os.PathLike[str],
    input: Mapping[str, Any],
    mode: Operation = "add",
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: ProgressCallback | None = None,
    chunk_size: int = MAX_ENTRIES,
    wait: bool = False,
    audience_type: str | None = None,
) -> UploadReport:
    """Upload with a checkpoint in one call; ``records(n)`` gives the input after its first n.

    Example::

        report = await upload_with_checkpoint(
            client, "winback", lambda n: open_records("users.csv", skip=n),
            path="users.csv.ckpt", input=await asyncio.to_thread(file_fingerprint, "users.csv"),
        )

    Args:
        records: called once with the number of leading records an earlier run had
            acknowledged; returns the rest of the input (e.g. ``open_records(p, skip=n)``);
            its ``close()``, if it has one, is called at the end.
        path: the checkpoint file, created if missing.
        input: what identifies the input, e.g. ``file_fingerprint(p)``; a checkpoint made
            for other input, audience, mode, chunk size or project is refused.

    Raises:
        CheckpointError: the checkpoint belongs to another upload, is damaged or in use, or
            could not be written (the upload was then stopped).
        ValidationError, ApiError, TransportError: as ``add``; rerun to resume.
    """
    async with resumable(
        client, name, path=path, input=input, mode=mode, chunk_size=chunk_size
    ) as upload:
        source = records(upload.position)
        try:
            return await upload.run(
                source,
                concurrency=concurrency,
                progress=progress,
                wait=wait,
                audience_type=audience_type,
            )
        finally:
            # A reader from open_records owns its file: close what we were handed.
            close = getattr(source, "close", None)
            if callable(close):
                close()
