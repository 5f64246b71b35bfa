"""The command line's first hour: --version, --json failures, progress lines in a log, the
fake server's exports and members, delete's confirmation, resumed reports and doctor."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import platform
import pty
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batch_audience as ba
from batch_audience._cli.output import Console, ProgressBar
from batch_audience._cli.sync import _PhaseBars
from batch_audience.testing import FakeBatchServer, FakeMember
from tests.integration.test_cli import (
    APP,
    PROJECT,
    REST,
    UPDATE,
    assert_clean,
    cli,
    csv_ids,
    environment,
    read_exports,
    running,
    write,
)

VIEW = "/audiences/view"
PROGRESS_LINE = re.compile(
    r"batch-audience: ids: [\d,]+/30,000 records \(\d+%\), [\d,]+ records/s(, about [\d,]+ s left)?"
)


@pytest.fixture
async def server() -> AsyncIterator[FakeBatchServer]:
    """A fake server that accepts the canary keys of the CLI tests."""
    async with FakeBatchServer(rest_key=REST, project_key=PROJECT, api_key=APP) as fake:
        yield fake


@pytest.fixture
async def client(server: FakeBatchServer) -> AsyncIterator[ba.AudienceClient]:
    """A 2.x client of the fake server, for setting up and checking."""
    async with ba.AudienceClient(REST, PROJECT, base_url=server.url) as c:
        yield c


# -- --version and --json failures -------------------------------------------------------------


async def test_version_prints_the_installed_version() -> None:
    """--version prints the distribution's version and Python's, and exits 0."""
    result = await cli(None, "--version")
    assert result.code == 0, result.err
    version = importlib.metadata.version("batch-audience")
    assert result.out == f"batch-audience {version} (Python {platform.python_version()})\n"


async def test_a_failure_with_json_is_one_object_on_stdout(
    server: FakeBatchServer, tmp_path: Path
) -> None:
    """With --json every failure is {"error": {type, status, message}} on stdout, and the human
    line still goes to stderr."""
    missing = await cli(server, "view", "nope", "--json")
    assert missing.code == 1
    assert missing.json() == {
        "error": {
            "type": "NotFoundError",
            "status": 404,
            "message": "HTTP 404 NOT_FOUND on GET /2.8/audiences/view: no audience named 'nope'",
        }
    }
    assert "batch-audience: error: HTTP 404" in missing.err
    refused = await cli(server, "--json", "list", env={"BATCH_REST_KEY": "wrong-key-0000"})
    assert refused.code == 1
    assert refused.json()["error"]["type"] == "AuthenticationError"
    assert refused.json()["error"]["status"] == 401
    bad = write(tmp_path / "bad.csv", "id,int:n\nu-1,x\n")
    invalid = await cli(server, "upload", "x", str(bad), "--dry-run", "--json")
    assert invalid.code == 2
    assert invalid.json()["error"]["type"] == "SourceError"
    assert invalid.json()["error"]["message"].startswith(f"{bad}:2: record 1, id 'u-1':")
    usage = await cli(server, "--json", "upload", "only-a-name")
    assert usage.code == 2
    assert usage.json()["error"] == {
        "type": "UsageError",
        "status": None,
        "message": "the following arguments are required: FILE",
    }
    no_key = await cli(None, "list", "--json")
    assert no_key.code == 2 and no_key.json()["error"]["message"].startswith("no REST key")
    plain = await cli(server, "view", "nope")
    assert plain.code == 1 and plain.out == ""  # without --json, stdout stays empty


# -- progress in a log -------------------------------------------------------------------------


def test_progress_lines_come_at_most_once_per_interval(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without a terminal, a progress line is printed at most once per interval, then a last one."""
    now = [0.0]
    bar = ProgressBar(
        Console(), enabled=False, heartbeat=10.0, desc="ids", total=30_000, clock=lambda: now[0]
    )
    for done in range(300, 30_001, 300):  # a chunk every second for 100 s
        now[0] += 1.0
        bar.set(done)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 11, lines  # at 10 s, 20 s ... 100 s, and the last line
    assert lines[0] == (
        "batch-audience: ids: 3,000/30,000 records (10%), 300 records/s, about 90 s left"
    )
    assert lines[-1] == "batch-audience: ids: 30,000 records in 100.0 s"


def test_no_progress_line_for_a_run_shorter_than_the_interval(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run that ends within one interval prints no progress line at all."""
    bar = ProgressBar(Console(), enabled=False, heartbeat=10.0, desc="ids", total=3)
    bar.set(1)
    bar.set(3)
    bar.close()
    assert capsys.readouterr().err == ""


async def test_an_upload_in_a_log_prints_progress_lines(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """With stderr not a terminal, an upload prints plain progress lines (--progress-every), and
    none with --no-progress or within the default 10 s."""
    await client.create("ids")
    data = write(tmp_path / "ids.csv", csv_ids(30_000))
    args = ("upload", "ids", str(data), "--chunk-size", "1000", "--concurrency", "1")
    server.fail_next(delay=0.02, times=30, path=UPDATE)
    logged = await cli(server, *args, "--progress-every", "0.05")
    assert logged.code == 0, logged.err
    lines = [line for line in logged.err.splitlines() if PROGRESS_LINE.fullmatch(line)]
    assert 2 <= len(lines) < 30, logged.err  # a heartbeat, not a line per chunk
    assert logged.err.splitlines()[-1].startswith("batch-audience: ids: 30,000 records in ")
    quiet = await cli(server, *args, "--no-progress", "--progress-every", "0.05")
    assert quiet.code == 0 and quiet.err == ""
    default = await cli(server, *args)
    assert default.code == 0 and "records/s" not in default.err


def test_a_replace_phase_is_called_replacing() -> None:
    """The sync's phase bar of a replace reads "replacing", not "replaceing"."""
    bars = _PhaseBars(Console(), False, 60.0)
    update = ba.Progress(
        audience="a", operation="replace", records=1, total=2, requests=1, retries=0, elapsed=0.1
    )
    bars.progress(update)
    assert bars.bar is not None and bars.bar.desc == "replacing"
    bars.close()


async def test_help_names_every_input_format() -> None:
    """upload's and sync's help say Parquet works, not just "CSV or NDJSON"."""
    upload = await cli(None, "upload", "--help")
    assert "CSV, NDJSON or Parquet file" in upload.out
    assert "CSV or NDJSON" not in upload.out
    sync = await cli(None, "sync", "--help")
    assert ".csv, .ndjson, .jsonl or .parquet file" in sync.out


# -- dry runs, resumes and Parquet schema errors -----------------------------------------------


async def test_a_sync_dry_run_speaks_of_what_would_happen(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """A sync's dry run says "to add" and "would send", never "added" or "sent"."""
    await client.create("plan")
    data = write(tmp_path / "users.csv", csv_ids(12_000))
    plan = await cli(server, "sync", "plan", str(data), "--state", str(tmp_path / "s"), "--dry-run")
    assert plan.code == 0, plan.err
    assert "  to add" in plan.out and "would send the whole input as a replace" in plan.out
    assert "the first request would replace the members, the others add to them" in plan.out
    told = plan.out.replace("Nothing was sent", "")  # the one true statement in the past
    assert not re.search(r"\b(added|changed|removed|sent|replaced)\b", told), plan.out


async def test_a_resumed_upload_reports_what_this_run_sent(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """A resumed upload reports the records and requests of this run (and its rate), then the
    whole upload's; a resume with nothing left to send reports no rate."""
    await client.create("again")
    data = write(tmp_path / "in.csv", csv_ids(2_000))
    checkpoint = tmp_path / "in.ckpt"
    args = (
        "upload", "again", str(data), "--chunk-size", "100", "--concurrency", "1",
        "--checkpoint", str(checkpoint), "--wait",
    )  # fmt: skip
    server.fail_next(delay=0.0, times=6, path=UPDATE)
    server.fail_next(status=400, path=UPDATE)  # the 7th chunk is refused: the run stops
    first = await cli(server, *args)
    assert first.code == 1, first.err
    second = await cli(server, *args, "--json")
    assert second.code == 0, second.err
    report = second.json()
    assert (report["records"], report["requests"], report["resumed_from"]) == (2_000, 20, 600)
    assert report["this_run"] == {"records": 1_400, "requests": 14}
    assert report["records_per_second"] == pytest.approx(1_400 / report["elapsed"], rel=0.01)

    write(data, csv_ids(500))
    server.fail_next(status=400, path=VIEW)  # every chunk lands, the wait for indexing fails
    waited = await cli(server, *args)
    assert waited.code == 1 and checkpoint.exists(), waited.err
    resumed = await cli(server, *args)
    assert resumed.code == 0, resumed.err
    assert resumed.out.splitlines()[0] == (
        "nothing left to send: earlier runs had 500 records added to 'again' in 5 requests"
    )
    assert "records/s" not in resumed.out and "5 APPLIED" in resumed.out


async def test_a_parquet_schema_error_names_the_file(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """A Parquet schema error names the file, without ":0:", in upload and in sync."""
    await client.create("cols")
    bad = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"user": ["a"], "plan": ["x"]}), bad)
    upload = await cli(server, "upload", "cols", str(bad))
    assert upload.code == 2
    assert f"error: {bad}: a columnar source needs an 'id' column" in upload.err
    sync = await cli(server, "sync", "cols", str(bad), "--state", str(tmp_path / "s"))
    assert sync.code == 2
    assert f"error: {bad}: a columnar source needs an 'id' column" in sync.err
    assert ":0:" not in upload.err + sync.err


# -- the fake server's exports and members -----------------------------------------------------


async def test_fake_server_honours_the_keys_it_is_given(tmp_path: Path) -> None:
    """fake-server --rest-key/--project-key/--api-key serves those keys and exports them; the
    exports alone point the CLI at it, for 2.x and 1.x."""
    keys = ("--rest-key", "fake-rest-key", "--project-key", "project_fake", "--api-key", "app1")
    async with running("fake-server", "--port", "0", *keys, env=environment(None)) as process:
        assert process.stdout is not None
        env = await read_exports(process.stdout)
        assert (env["BATCH_REST_KEY"], env["BATCH_PROJECT_KEY"], env["BATCH_API_KEY"]) == (
            "fake-rest-key", "project_fake", "app1"
        )  # fmt: skip
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", env["BATCH_BASE_URL"])
        assert (await cli(None, "create", "two", env=env)).code == 0
        v11 = await cli(None, "--api", "1.1", "create", "one", env=env)
        assert v11.code == 0, v11.err
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        assert process.stderr is not None
        err = (await process.stderr.read()).decode()
    assert "paste them into another shell" in err


async def test_fake_server_detach_prints_exports_for_eval(tmp_path: Path) -> None:
    """fake-server --detach starts the server in the background, prints only its exports on
    stdout (for eval) and how to stop it on stderr, and returns."""
    result = await cli(None, "fake-server", "--port", "0", "--detach")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert [line.split("=")[0] for line in lines] == [
        "export BATCH_BASE_URL", "export BATCH_REST_KEY", "export BATCH_PROJECT_KEY",
        "export BATCH_API_KEY",
    ]  # fmt: skip
    pid = int(re.search(r"stop it with: kill (\d+)", result.err).group(1))  # type: ignore[union-attr]
    try:
        env = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        created = await cli(None, "create", "bg", env=env)
        assert created.code == 0, created.err
        listed = await cli(None, "list", "--json", env=env)
        assert [a["name"] for a in listed.json()["audiences"]] == ["bg"]
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if await asyncio.to_thread(_stopped, pid):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the detached fake server did not stop on SIGTERM")


def _stopped(pid: int) -> bool:
    """Whether the process ended (gone, or a zombie its parent has not reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


async def test_members_lists_the_fake_servers_members(
    server: FakeBatchServer, client: ba.AudienceClient, tmp_path: Path
) -> None:
    """members NAME prints each member as an upload's NDJSON line, sorted; --json one object;
    the output uploads back as the same members."""
    await client.create("seen")
    data = write(
        tmp_path / "in.csv",
        "id,plan,date:joined\nu-2,pro,2024-01-02T10:00:00Z\nu-1,,\n",
    )
    assert (await cli(server, "upload", "seen", str(data))).code == 0
    listed = await cli(server, "members", "seen")
    assert listed.code == 0, listed.err
    assert [orjson.loads(line) for line in listed.out.splitlines()] == [
        {"id": "u-1"},
        {"id": "u-2", "attributes": {"plan": "pro", "date(joined)": "2024-01-02T10:00:00Z"}},
    ]
    assert listed.err == "2 members in 'seen'\n"
    as_json = await cli(server, "members", "seen", "--json")
    assert as_json.json()["count"] == 2 and as_json.json()["audience"] == "seen"
    await client.create("copy")
    copy = write(tmp_path / "copy.ndjson", listed.out)
    assert (await cli(server, "upload", "copy", str(copy))).code == 0
    assert server.members("copy") == server.members("seen")

    server.seed("tagged", {"i-1": FakeMember(tags=("vip",))}, version="1.1")
    tagged = await cli(server, "--api", "1.1", "members", "tagged")
    assert tagged.code == 0, tagged.err
    assert orjson.loads(tagged.out) == {"id": "i-1", "tags": ["vip"]}


async def test_members_refuses_anything_but_a_fake(server: FakeBatchServer) -> None:
    """members refuses a non-loopback base URL before sending anything; an unknown audience or
    a wrong key is the API's error (exit 1)."""
    real = await cli(server, "members", "x", env={"BATCH_BASE_URL": "https://api.batch.com"})
    assert real.code == 2
    assert "works only against the bundled fake server" in real.err
    assert server.requests == []
    unknown = await cli(server, "members", "nope", "--json")
    assert unknown.code == 1 and unknown.json()["error"]["status"] == 404
    wrong = await cli(server, "members", "nope", env={"BATCH_REST_KEY": "wrong-key-0000"})
    assert wrong.code == 1 and "401" in wrong.err


# -- delete asks first -------------------------------------------------------------------------


async def delete_on_a_terminal(server: FakeBatchServer, answer: bytes) -> tuple[int, str, str]:
    """Run ``delete gone`` with stdin a terminal (a pty); type ``answer`` at the prompt."""
    main, tty = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batch_audience", "delete", "gone",
            stdin=tty, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=environment(server),
        )  # fmt: skip
        os.close(tty)
        tty = -1
        assert process.stderr is not None
        prompt = await asyncio.wait_for(process.stderr.readuntil(b"[y/N] "), timeout=30)
        os.write(main, answer)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        os.close(main)
        if tty >= 0:
            os.close(tty)
    text = prompt.decode() + err.decode()
    assert_clean(out.decode(), text)
    return process.returncode or 0, out.decode(), text


async def test_delete_asks_on_a_terminal(
    server: FakeBatchServer, client: ba.AudienceClient
) -> None:
    """On a terminal, delete shows the audience and deletes it only after a yes."""
    await client.create("gone")
    await client.add("gone", ["u-1", "u-2"])
    code, out, err = await delete_on_a_terminal(server, b"n\n")
    assert code == 0 and out == "kept 'gone': not deleted\n"
    assert "delete audience 'gone' (2 IDs, updated " in err and "cannot be undone" in err
    assert [a.name async for a in client.list()] == ["gone"]
    code, out, err = await delete_on_a_terminal(server, b"y\n")
    assert code == 0 and out == "deleted 'gone'\n"
    assert [a.name async for a in client.list()] == []


async def test_delete_without_a_terminal_needs_yes(
    server: FakeBatchServer, client: ba.AudienceClient
) -> None:
    """Without a terminal, delete refuses (exit 2, nothing sent) unless given --yes."""
    await client.create("kept")
    server.reset_stats()
    refused = await cli(server, "delete", "kept")
    assert refused.code == 2 and "pass --yes to delete from a script" in refused.err
    assert server.requests == []
    deleted = await cli(server, "delete", "kept", "--yes")
    assert deleted.code == 0 and deleted.out == "deleted 'kept'\n"
    assert [a.name async for a in client.list()] == []


# -- doctor ------------------------------------------------------------------------------------


async def test_doctor_with_good_keys_passes_every_check(
    server: FakeBatchServer, client: ba.AudienceClient
) -> None:
    """doctor --write lists, creates, fills, waits, views and deletes, printing each request and
    no key; the temporary audience is gone afterwards."""
    result = await cli(server, "doctor", "--write")
    assert result.code == 0, result.out + result.err
    checks = [line.split(":")[0] for line in result.out.splitlines() if line.startswith("ok")]
    assert checks == [
        "ok    connection", "ok    keys", "ok    API version", "ok    create", "ok    add",
        "ok    indexing", "ok    view", "ok    delete",
    ]  # fmt: skip
    requests = [line.strip() for line in result.out.splitlines() if line.startswith("      ")]
    assert requests[0].startswith("GET /2.8/audiences/list -> 200 in ")
    assert any(line.startswith("POST /2.8/audiences/create -> 202") for line in requests)
    assert any(line.startswith("POST /2.8/audiences/remove -> 202") for line in requests)
    assert result.out.splitlines()[-1] == "every check passed"
    assert [a.name async for a in client.list()] == []
    v1 = await cli(server, "--api", "1.1", "doctor", "--write", "--json")
    assert v1.code == 0, v1.out + v1.err
    assert v1.json()["ok"] is True and all(c["ok"] for c in v1.json()["checks"])
    assert any("/1.1/***/custom-audience" in line for line in v1.json()["requests"])


async def test_doctor_names_bad_keys_a_wrong_url_and_a_wrong_version(
    server: FakeBatchServer,
) -> None:
    """doctor exits 1 with FAIL on the keys, the connection or the API version, as it is."""
    keys = await cli(server, "doctor", env={"BATCH_REST_KEY": "wrong-key-0000"})
    assert keys.code == 1
    assert "ok    connection" in keys.out and "FAIL  keys: the REST key or the project" in keys.out
    async with FakeBatchServer() as gone:
        url = gone.url
    down = await cli(server, "doctor", "--json", env={"BATCH_BASE_URL": url})
    assert down.code == 1
    report = down.json()
    assert report["checks"][0]["check"] == "connection" and not report["checks"][0]["ok"]
    assert report["error"]["type"] == "ConnectError"
    version = await cli(server, "doctor", env={"BATCH_BASE_URL": server.url + "/v9"})
    assert version.code == 1
    assert "FAIL  API version: the list route of version 2.8 is not served" in version.out
