"""The batch-audience command, run as a subprocess against the fake server: every subcommand,
every exit status, bad files, resumable uploads, --json, and keys that never show."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest

import batch_audience as ba
from batch_audience._checkpoint import contiguous, resumable
from batch_audience._cli.output import Console, ProgressBar
from batch_audience.testing import FakeBatchServer

REST = "CANARYcliREST41d7"
PROJECT = "project_CANARYcli9e"
APP = "CANARYcliAPP2b6"
SECRETS = (REST, PROJECT, APP)
UPDATE = "/audiences/update"
REPLACE = "/audiences/replace"


@attrs.frozen
class Result:
    """What one run of the command did."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as one JSON value."""
        return orjson.loads(self.out)


def assert_clean(*texts: str) -> None:
    """No key, nor a recognisable piece of one, appears in the texts."""
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text
        assert "CANARY" not in text, text


@pytest.fixture
async def server() -> AsyncIterator[FakeBatchServer]:
    """A fake server that accepts the canary keys."""
    async with FakeBatchServer(rest_key=REST, project_key=PROJECT, api_key=APP) as fake:
        yield fake


@pytest.fixture
async def client(server: FakeBatchServer) -> AsyncIterator[ba.AudienceClient]:
    """A 2.x client of the fake server, for setting up and checking."""
    async with ba.AudienceClient(REST, PROJECT, base_url=server.url) as c:
        yield c


def environment(server: FakeBatchServer | None, **extra: str) -> dict[str, str]:
    """The subprocess's environment: keys and base URL from BATCH_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    if server is not None:
        env |= {
            "BATCH_REST_KEY": REST,
            "BATCH_PROJECT_KEY": PROJECT,
            "BATCH_API_KEY": APP,
            "BATCH_BASE_URL": server.url,
        }
    return env | extra


# The command starts as from an interactive shell, whatever started the test run. A shell
# starts a background job (`pytest ... &` in a script, nohup) with SIGINT ignored; children
# inherit that across exec, and CPython then installs no KeyboardInterrupt handler, so every
# Ctrl-C test would fail on the test run's own state. The shim puts SIGINT back to its default
# and execs the command in the same process (same pid), which then starts as a terminal's.
# A fork-time reset (preexec_fn) is not safe with the threads the test process runs.
SIGINT_DEFAULT_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


async def start(
    *args: str, env: Mapping[str, str], stdin: bool = False
) -> asyncio.subprocess.Process:
    """Start ``python -m batch_audience ARGS``, SIGINT at its default, without blocking the loop."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SIGINT_DEFAULT_EXEC,
        "-m",
        "batch_audience",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )


@contextlib.asynccontextmanager
async def running(*args: str, env: Mapping[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """A started command that is killed on the way out if it is still running."""
    process = await start(*args, env=env)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def cli(
    server: FakeBatchServer | None,
    *args: str,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run the command to its end; check that no key shows in its output."""
    process = await start(*args, env=environment(server, **(env or {})), stdin=stdin is not None)
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    result = Result(process.returncode or 0, out.decode(), err.decode())
    assert_clean(result.out, result.err)
    return result


def write(path: Path, text: str | bytes) -> Path:
    """Write a test input file."""
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def csv_ids(count: int, *, start: int = 0) -> str:
    """A CSV of ``count`` records with a typed attribute each."""
    rows = "".join(f"u-{i},{i}\n" for i in range(start, start + count))
    return "id,int:rank\n" + rows


# -- uploads and the other subcommands ---------------------------------------------------------


async def test_upload_csv_view_list_delete(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """A typed CSV lands typed; view, list and delete work; viewing a deleted audience exits 1."""
    await client.create("cli")
    data = write(
        tmp_path / "people.csv",
        "\ufeffid,plan,int:score,float:ratio,date:joined,url:avatar,list:likes\r\n"
        "u-1,pro,3,0.5,2024-01-02T12:00:00+02:00,https://x.example/a.png,bikes|books\r\n"
        "u-2,,,,,,\r\n",
    )
    result = await cli(server, "upload", "cli", str(data), "--wait")
    assert result.code == 0, result.err
    assert "rec/s" not in result.err  # no progress bar when stderr is not a terminal
    assert "added 2 records to 'cli' in 1 request:" in result.out
    assert "1 APPLIED" in result.out
    members = server.members("cli")
    assert dict(members["u-1"].attributes) == {
        "plan": "pro",
        "score": 3,
        "ratio": 0.5,
        "date(joined)": "2024-01-02T10:00:00Z",
        "url(avatar)": "https://x.example/a.png",
        "likes": ["bikes", "books"],
    }
    assert dict(members["u-2"].attributes) == {}

    view = await cli(server, "view", "cli", "--json")
    assert view.code == 0 and view.json()["nb_ids"] == 2
    text = await cli(server, "view", "cli")
    assert "nb_ids" in text.out and "cli" in text.out
    listed = await cli(server, "list", "--json")
    assert [a["name"] for a in listed.json()["audiences"]] == ["cli"]
    table = await cli(server, "list")
    assert table.out.splitlines()[0].split() == ["NAME", "IDS", "STATE", "TYPE", "UPDATED"]
    deleted = await cli(server, "delete", "cli", "--yes")
    assert deleted.code == 0 and "deleted 'cli'" in deleted.out
    gone = await cli(server, "view", "cli")
    assert gone.code == 1
    assert "HTTP 404" in gone.err


async def test_create_remove_and_replace_modes(server: FakeBatchServer, tmp_path: Path) -> None:
    """create makes the audience; --mode remove reads only IDs; --mode replace swaps members."""
    created = await cli(server, "create", "modes", "--display-name", "Modes", "--json")
    assert created.code == 0 and created.json()["created"] is True
    everyone = write(tmp_path / "all.csv", csv_ids(5))
    assert (await cli(server, "upload", "modes", str(everyone))).code == 0
    some = write(tmp_path / "some.csv", "id,int:rank\nu-1,not-read\nu-3,x\n")
    removed = await cli(server, "upload", "modes", str(some), "--mode", "remove", "--json")
    assert removed.code == 0, removed.err
    assert removed.json()["operation"] == "remove"
    assert set(server.members("modes")) == {"u-0", "u-2", "u-4"}
    fresh = write(tmp_path / "fresh.ndjson", '{"id": "n-1"}\n"n-2"\n')
    replaced = await cli(server, "upload", "modes", str(fresh), "--mode", "replace")
    assert replaced.code == 0, replaced.err
    assert set(server.members("modes")) == {"n-1", "n-2"}


async def test_stdin_ndjson_with_a_json_report(
    server: FakeBatchServer, client: ba.AudienceClient
) -> None:
    """NDJSON from stdin uploads in chunks; --json prints one parsable report object."""
    await client.create("piped")
    lines = b"".join(b'{"id": "p-%d", "attributes": {"n": %d}}\n' % (i, i) for i in range(250))
    result = await cli(
        server, "upload", "piped", "-", "--format", "ndjson", "--chunk-size", "100", "--json",
        stdin=lines,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.json()
    assert (report["records"], report["requests"], len(report["tokens"])) == (250, 3, 3)
    assert report["audience"] == "piped" and report["operation"] == "add"
    assert len(server.members("piped")) == 250


async def test_a_bad_record_on_stdin_names_its_line(
    server: FakeBatchServer, client: ba.AudienceClient
) -> None:
    """stdin is not checked first: a bad record stops the upload at its line, exit 2."""
    await client.create("piped")
    lines = b'"a"\n"b"\n"c"\n{"id": "d", "attributes": {"Bad": 1}}\n'
    result = await cli(
        server, "upload", "piped", "-", "--format", "ndjson", "--chunk-size", "2", stdin=lines
    )
    assert result.code == 2
    assert "<stdin>:4: record 4, id 'd': attribute key 'Bad'" in result.err
    assert "2 earlier records were acknowledged" in result.err
    assert set(server.members("piped")) == {"a", "b"}


def sixteen_attributes_on_line_5() -> str:
    """A CSV whose 4th record (line 5) has 16 attributes."""
    header = "id," + ",".join(f"a{i}" for i in range(16))
    empty = "," * 16
    full = "," + ",".join(str(i) for i in range(16))
    return f"{header}\nu-1{empty}\nu-2{empty}\nu-3{empty}\nu-4{full}\n"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        pytest.param("a.csv", "plan\npro\n", "a.csv:1: no 'id' column", id="no-id-column"),
        pytest.param(
            "b.ndjson",
            '{"id": "a"}\n{"id": "b"}\n{"id": "c", \n',
            "b.ndjson:3: record 3: malformed JSON",
            id="malformed-json-line-3",
        ),
        pytest.param(
            "c.csv",
            sixteen_attributes_on_line_5(),
            "c.csv:5: record 4, id 'u-4': 16 attributes",
            id="16-attributes-line-5",
        ),
        pytest.param(
            "d.csv", b"id\nu-1\nu-\xe92\n", "d.csv:3: record 2: byte 0xe9", id="undecodable"
        ),
        pytest.param(
            "e.csv",
            csv_ids(20_000) + "u-last,not-a-number\n",
            "e.csv:20002: record 20001, id 'u-last': attribute 'rank'",
            id="bad-last-line-of-a-big-file",
        ),
    ],
)
async def test_bad_files_exit_2_and_send_nothing(
    server: FakeBatchServer,
    client: ba.AudienceClient,
    tmp_path: Path,
    name: str,
    content: str | bytes,
    expected: str,
) -> None:
    """A bad file is refused before the first request, naming the file, the line and the rule."""
    await client.create("strict")
    server.reset_stats()
    path = write(tmp_path / name, content)
    result = await cli(server, "upload", "strict", str(path))
    assert result.code == 2
    assert f"{path.parent}/{expected}" in result.err
    assert server.requests == []


async def test_dry_run_checks_and_plans_without_keys(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    """--dry-run needs no key, sends nothing and prints the plan."""
    path = write(tmp_path / "plan.csv", csv_ids(25_001))
    result = await cli(None, "upload", "any", str(path), "--dry-run", "--json")
    assert result.code == 0, result.err
    assert result.json() == {
        "dry_run": True,
        "audience": "any",
        "operation": "add",
        "file": str(path),
        "records": 25_001,
        "requests": 3,
    }
    text = await cli(None, "upload", "any", str(path), "--dry-run", "--mode", "replace")
    assert "25,001 valid records" in text.out and "Nothing was sent" in text.out
    assert server.requests == []


async def test_exit_statuses_for_api_and_usage_failures(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    """An unknown audience or a wrong key exit 1; missing keys and bad usage exit 2."""
    path = write(tmp_path / "x.csv", csv_ids(3))
    missing = await cli(server, "upload", "nowhere", str(path))
    assert missing.code == 1 and "HTTP 404" in missing.err
    wrong = await cli(server, "list", env={"BATCH_REST_KEY": "wrong-key"})
    assert wrong.code == 1 and "HTTP 401" in wrong.err
    assert "wrong-key" not in wrong.err  # a key given by the user is never echoed either
    nokey = await cli(None, "list")
    assert nokey.code == 2 and "BATCH_REST_KEY" in nokey.err
    usage = await cli(server, "upload", "x")
    assert usage.code == 2 and "usage:" in usage.err
    no_format = await cli(server, "upload", "x", "-", stdin=b"")
    assert no_format.code == 2 and "--format" in no_format.err
    stdin_checkpoint = await cli(
        server, "upload", "x", "-", "--format", "csv", "--checkpoint", "c", stdin=b""
    )
    assert stdin_checkpoint.code == 2 and "not stdin" in stdin_checkpoint.err
    misplaced = await cli(None, "--rest-key", REST, "list", "--concurrency", REST)
    assert misplaced.code == 2 and "unrecognized arguments: --concurrency ***" in misplaced.err
    replace_v10 = await cli(server, "--api", "1.0", "upload", "x", str(path), "--mode", "replace")
    assert replace_v10.code == 2 and "replace is not supported" in replace_v10.err


async def test_flags_and_verbose_logs_never_show_keys(server: FakeBatchServer) -> None:
    """Keys given as flags work and never echo; -v logs each request with a redacted path."""
    created = await cli(
        None,
        "--api", "1.1", "--base-url", server.url, "--rest-key", REST, "--api-key", APP,
        "create", "apps", "-v",
    )  # fmt: skip
    assert created.code == 0, created.err
    listed = await cli(
        None,
        "list", "--api", "1.1", "--base-url", server.url, "--rest-key", REST, "--api-key", APP,
        "--verbose", "--json",
    )  # fmt: skip
    assert listed.code == 0, listed.err
    assert [a["name"] for a in listed.json()["audiences"]] == ["apps"]
    assert "GET /1.1/***/custom-audience" in listed.err


# -- resumable uploads ---------------------------------------------------------------------------


def acks_in(path: Path) -> int:
    """How many acknowledged chunks the checkpoint file records so far."""
    return path.read_bytes().count(b'"start"') if path.exists() else 0


async def wait_for_acks(path: Path, count: int, process: asyncio.subprocess.Process) -> None:
    """Wait until the checkpoint holds ``count`` acknowledged chunks."""
    for _ in range(500):
        if await asyncio.to_thread(acks_in, path) >= count:
            return
        assert process.returncode is None, "the upload ended before it could be interrupted"
        await asyncio.sleep(0.02)
    raise AssertionError("the checkpoint never showed progress")


@pytest.mark.parametrize(
    ("mode", "signum"),
    [
        pytest.param("add", signal.SIGKILL, id="add-killed"),
        pytest.param("replace", signal.SIGINT, id="replace-interrupted"),
    ],
)
async def test_stopped_upload_resumes_from_its_checkpoint(
    server: FakeBatchServer,
    client: ba.AudienceClient,
    tmp_path: Path,
    mode: str,
    signum: signal.Signals,
) -> None:
    """An upload killed or interrupted mid-way resumes from its checkpoint to the exact members."""
    await client.create("resume")
    await client.add("resume", ["old-1", "old-2"])
    data = write(tmp_path / "in.csv", csv_ids(2_000))
    checkpoint = tmp_path / "in.ckpt"
    args = (
        "upload", "resume", str(data), "--mode", mode, "--chunk-size", "100",
        "--concurrency", "2", "--checkpoint", str(checkpoint),
    )  # fmt: skip
    server.reset_stats()
    # Six quick answers, then the server stalls: the process is killed while stuck there.
    path = REPLACE if mode == "replace" else UPDATE
    server.fail_next(delay=0.01, times=1, path=path)
    server.fail_next(delay=0.01, times=5, path=UPDATE)
    server.fail_next(delay=30, times=20, path=UPDATE)
    async with running(*args, env=environment(server)) as process:
        await wait_for_acks(checkpoint, 6, process)
        if signum == signal.SIGINT:
            assert sigint_masks(process.pid) == (False, False), "SIGINT (ignored, blocked)"
        process.send_signal(signum)
        code = await asyncio.wait_for(process.wait(), timeout=30)
    if signum == signal.SIGINT:
        assert code == 130
        assert process.stderr is not None
        err = (await process.stderr.read()).decode()
        assert "run the same command again to resume" in err
        assert_clean(err)
    first_run = len(server.requests)
    server.clear_faults()

    result = await cli(server, *args, "--json")
    assert result.code == 0, result.err
    assert "resuming from checkpoint" in result.err
    report = result.json()
    assert report["records"] == 2_000
    assert report["resumed_from"] == 600
    later = [r for r in server.requests[first_run:] if r.path.endswith((UPDATE, REPLACE))]
    assert len(later) == 14  # chunks 6..19 only
    assert not any(r.path.endswith(REPLACE) for r in later)
    members = server.members("resume")
    expected = {f"u-{i}" for i in range(2_000)} | (
        set() if mode == "replace" else {"old-1", "old-2"}
    )
    assert set(members) == expected
    assert members["u-1999"].attributes == {"rank": 1999}
    assert not checkpoint.exists()


async def test_a_checkpoint_of_another_file_is_refused(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """A checkpoint left by an upload of other content is refused with exit 2, sending nothing."""
    data = write(tmp_path / "in.csv", csv_ids(10))
    checkpoint = tmp_path / "in.ckpt"
    args = ("upload", "later", str(data), "--checkpoint", str(checkpoint))
    failed = await cli(server, *args)  # the audience does not exist yet
    assert failed.code == 1
    assert "run the same upload again to resume" in failed.err
    assert checkpoint.exists()
    await client.create("later")
    write(data, csv_ids(11))
    server.reset_stats()
    refused = await cli(server, *args)
    assert refused.code == 2
    assert "belongs to another upload" in refused.err and "input" in refused.err
    assert server.requests == []
    write(data, csv_ids(10))
    assert (await cli(server, *args)).code == 0
    assert len(server.members("later")) == 10


async def test_a_checkpoint_that_cannot_be_written_stops_the_upload(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """A checkpoint write failing mid-way (file size limit) stops the upload, exit 2; it resumes."""
    await client.create("limited")
    data = write(tmp_path / "in.csv", csv_ids(2_000))
    checkpoint = tmp_path / "in.ckpt"
    args = (
        "upload", "limited", str(data), "--chunk-size", "100", "--concurrency", "2",
        "--checkpoint", str(checkpoint),
    )  # fmt: skip
    server.reset_stats()
    server.fail_next(delay=0.05, times=20, path=UPDATE)  # slow enough to see it stop
    # RLIMIT_FSIZE makes the checkpoint's write fail (EFBIG) once the file reaches 600 bytes,
    # after a partial write, as a full disk would; CPython ignores SIGXFSZ.
    limited = (
        "import resource, sys; from batch_audience._cli import main; "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600)); "
        "sys.exit(main(sys.argv[1:]))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", limited, *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=environment(server),
    )  # fmt: skip
    out, err_bytes = await asyncio.wait_for(process.communicate(), timeout=60)
    err = err_bytes.decode()
    assert_clean(out.decode(), err)
    assert process.returncode == 2, err
    assert f"cannot write checkpoint {str(checkpoint)!r}: [Errno 27] File too large" in err
    assert "run the same upload again" in err
    sent = [r for r in server.requests if r.path.endswith(UPDATE)]
    assert len(sent) < 20  # stopped, not run to the end with nothing recorded
    content = checkpoint.read_bytes()
    assert content.endswith(b"\n") and len(content) <= 600  # whole lines only
    acked = [orjson.loads(line) for line in content.splitlines()[1:]]
    assert acked  # what was acknowledged before the failure stays recorded
    position = contiguous((a["start"], a["end"]) for a in acked)
    server.clear_faults()

    result = await cli(server, *args, "--json")
    assert result.code == 0, result.err
    assert result.json()["resumed_from"] == position > 0
    assert set(server.members("limited")) == {f"u-{i}" for i in range(2_000)}
    assert not checkpoint.exists()


# -- Ctrl-C in every phase -----------------------------------------------------------------------

STOP_WITHIN = 3.0  # seconds from SIGINT to exit; the fix takes well under one


async def wait_until(
    done: Callable[[], bool], process: asyncio.subprocess.Process, what: str
) -> None:
    """Wait until ``done()`` holds while the command still runs."""
    for _ in range(1500):
        if await asyncio.to_thread(done):
            return
        assert process.returncode is None, f"the command ended before {what}"
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw {what}")


def reads_stdin(pid: int) -> bool:
    """Whether a thread of the process is blocked in read(0, ...) (Linux /proc)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if (task / "syscall").read_text().startswith("0 0x0 "):
                return True
    return False


def sigint_masks(pid: int) -> tuple[bool, bool]:
    """Whether SIGINT is ignored by the process, and blocked in its main thread (Linux /proc)."""
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    bit = 1 << (signal.SIGINT - 1)
    return bool(int(fields["SigIgn"], 16) & bit), bool(int(fields["SigBlk"], 16) & bit)


async def interrupt(process: asyncio.subprocess.Process) -> tuple[int, float, str]:
    """Send SIGINT; return the exit status, the seconds it took to exit, and stderr."""
    # A Ctrl-C the command cannot see would fail as a timeout, naming nothing: say why here.
    assert sigint_masks(process.pid) == (False, False), "SIGINT (ignored, blocked) in the command"
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    code = await asyncio.wait_for(process.wait(), timeout=60)
    elapsed = time.monotonic() - started
    assert process.stderr is not None
    err = (await process.stderr.read()).decode()
    assert_clean(err)
    return code, elapsed, err


def write_heavy_csv(path: Path, rows: int) -> None:
    """A CSV whose whole-file check takes seconds: 15 typed attributes per record."""
    columns = [f"date:d{i}" for i in range(5)] + [f"int:n{i}" for i in range(5)]
    columns += [f"s{i}" for i in range(5)]
    cells = ["2024-01-02T10:00:00+02:00"] * 5 + ["12345"] * 5 + ["abcdef"] * 5
    tail = ("," + ",".join(cells) + "\n").encode()
    with path.open("wb") as file:
        file.write(("id," + ",".join(columns) + "\n").encode())
        file.writelines(b"u-%d%s" % (i, tail) for i in range(rows))


async def test_ctrl_c_stops_the_check_of_a_large_file_at_once(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """Ctrl-C during the whole-file check exits 130 at once; the checkpoint stays usable."""
    await client.create("big")
    data = tmp_path / "big.csv"
    await asyncio.to_thread(write_heavy_csv, data, 600_000)  # checked in 5 s or more
    checkpoint = tmp_path / "big.ckpt"
    server.reset_stats()
    args = ("upload", "big", str(data), "--checkpoint", str(checkpoint))
    async with running(*args, env=environment(server)) as process:
        # The checkpoint gets its header right before the check starts.
        await wait_until(
            lambda: checkpoint.exists() and checkpoint.read_bytes().endswith(b"\n"),
            process,
            "the checkpoint",
        )
        await asyncio.sleep(0.2)
        code, elapsed, err = await interrupt(process)
    assert code == 130, err
    assert elapsed < STOP_WITHIN, f"took {elapsed:.1f} s to stop"
    assert "run the same command again to resume" in err
    assert not any(r.path.endswith(UPDATE) for r in server.requests)
    identity = {**await asyncio.to_thread(ba.file_fingerprint, data), "format": "csv"}
    async with resumable(client, "big", path=checkpoint, input=identity) as upload:
        assert (upload.position, upload.resumed) == (0, False)  # whole, ours, and unlocked


async def test_a_piped_record_goes_out_at_once_and_ctrl_c_stops_an_idle_stdin(
    server: FakeBatchServer, client: ba.AudienceClient
) -> None:
    """A record piped in is sent without waiting for 999 more; Ctrl-C on an idle pipe exits 130."""
    await client.create("piped")
    server.reset_stats()
    args = ("upload", "piped", "-", "--format", "ndjson", "--chunk-size", "1")
    process = await start(*args, env=environment(server), stdin=True)
    try:
        assert process.stdin is not None
        process.stdin.write(b'"first"\n')
        await process.stdin.drain()
        await wait_until(
            lambda: any(r.path.endswith(UPDATE) for r in server.requests),
            process,
            "the piped record reach the server",
        )
        await wait_until(lambda: reads_stdin(process.pid), process, "the read of stdin")
        code, elapsed, err = await interrupt(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 130, err
    assert elapsed < STOP_WITHIN, f"took {elapsed:.1f} s to stop"
    assert "first" in server.members("piped")


@contextlib.contextmanager
def sigint_disposition(handler: Any) -> Iterator[None]:
    """This (the test) process's SIGINT set to ``handler`` for the block."""
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    "runner_sigint",
    [
        pytest.param(signal.default_int_handler, id="run-from-a-terminal"),
        pytest.param(signal.SIG_IGN, id="run-in-the-background"),
    ],
)
async def test_ctrl_c_stops_a_dry_run_waiting_on_an_idle_stdin(runner_sigint: Any) -> None:
    """A dry run reading a pipe that stays idle exits 130 at Ctrl-C, not when the pipe closes.

    Also when the test run itself ignores SIGINT, as a shell's background job does: the
    commands these tests start must not inherit that, or no Ctrl-C test would test anything.
    """
    args = ("upload", "x", "-", "--format", "csv", "--dry-run")
    with sigint_disposition(runner_sigint):
        process = await start(*args, env=environment(None), stdin=True)
    try:
        await wait_until(lambda: reads_stdin(process.pid), process, "the read of stdin")
        code, elapsed, err = await interrupt(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 130, err
    assert elapsed < STOP_WITHIN, f"took {elapsed:.1f} s to stop"


# -- fake-server and demo ----------------------------------------------------------------------


async def test_fake_server_command_serves_until_interrupted() -> None:
    """fake-server prints the exports that point the CLI at it, answers, exits 0 on Ctrl-C."""
    async with running("fake-server", "--port", "0", env=environment(None)) as process:
        await check_fake_server(process)


async def read_exports(stream: asyncio.StreamReader) -> dict[str, str]:
    """The four ``name: value`` lines a fake server prints first (what scripts such as the
    speed lab read), then the four ``export BATCH_...=...`` lines saying the same, as a mapping.
    """
    plain: dict[str, str] = {}
    while len(plain) < 4:
        line = (await asyncio.wait_for(stream.readline(), timeout=30)).decode()
        assert line, "the fake server exited early"
        name, _, value = line.partition(": ")
        plain[name] = value.strip()
    assert list(plain) == ["url", "rest_key", "project_key", "api_key"]
    exports: dict[str, str] = {}
    while len(exports) < 4:
        line = (await asyncio.wait_for(stream.readline(), timeout=30)).decode()
        assert line, "the fake server exited early"
        assert line.startswith("export BATCH_"), line
        name, _, value = line.removeprefix("export ").strip().partition("=")
        exports[name] = value
    assert list(exports) == [
        "BATCH_BASE_URL", "BATCH_REST_KEY", "BATCH_PROJECT_KEY", "BATCH_API_KEY"
    ]  # fmt: skip
    assert list(exports.values()) == list(plain.values())
    return exports


async def check_fake_server(process: asyncio.subprocess.Process) -> dict[str, str]:
    """Read the fake server's exports, use them as the CLI's environment, then interrupt it."""
    assert process.stdout is not None
    env = await read_exports(process.stdout)
    created = await cli(None, "create", "served", env=env)
    assert created.code == 0, created.err
    listed = await cli(None, "list", "--json", env=env)
    assert [a["name"] for a in listed.json()["audiences"]] == ["served"]
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    return env


async def test_demo_uploads_waits_and_reports() -> None:
    """demo runs its own fake server, uploads the records, waits for indexing and reports."""
    result = await cli(None, "demo", "--records", "25000", "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["report"]["records"] == 25_000
    assert summary["report"]["requests"] == 3
    assert set(summary["report"]["states"].values()) == {"APPLIED"}
    assert summary["audience"]["nb_ids"] == 25_000


async def test_dry_run_reads_stdin_to_the_end() -> None:
    """A dry run of stdin checks every line and names a bad one."""
    good = await cli(None, "upload", "x", "-", "--format", "ndjson", "--dry-run", stdin=b'"a"\n')
    assert good.code == 0 and "<stdin> holds 1 valid record;" in good.out
    bad = await cli(
        None, "upload", "x", "-", "--format", "ndjson", "--dry-run", stdin=b'"a"\n{"id": 1}\n'
    )
    assert bad.code == 2 and "<stdin>:2: record 2: id must be a non-empty str" in bad.err


def test_progress_bar_on_a_terminal_shows_rate_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the bar (tqdm, on stderr) shows records done, records/s and the ETA."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    console = Console()
    bar = ProgressBar(console, enabled=True, desc="aud", total=20_000, initial=5_000)
    progress = ba.Progress(
        audience="aud", operation="add", records=10_000, total=None, requests=1, retries=0,
        elapsed=1.0,
    )  # fmt: skip
    bar.progress(progress)
    console.err("a log line goes above the bar")
    bar.close()
    shown = stderr.getvalue()
    assert "15.0k/20.0k" in shown and "rec/s" in shown and "<" in shown
    assert "a log line goes above the bar" in shown
    assert console.bar is None


def test_progress_bar_without_tqdm_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without tqdm the upload goes on without a bar, after a note with the install command."""
    real_import = importlib.import_module

    def no_tqdm(name: str, package: str | None = None) -> Any:
        if name == "tqdm":
            raise ImportError("No module named 'tqdm'")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", no_tqdm)
    bar = ProgressBar(Console(), enabled=True, desc="aud", total=10)
    bar.set(5)
    bar.close()
    assert "pip install 'tqdm>=4.66'" in capsys.readouterr().err
