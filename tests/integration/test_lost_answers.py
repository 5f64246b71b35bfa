"""Create and delete whose first answer was lost (spec §7), over real HTTP against the fake.

A retried create that meets "already exists", or a retried delete that meets "not found",
after an attempt whose outcome is unknown (a timeout, a connection dropped after the request
was sent, a 5xx), means the earlier attempt did the work: the call succeeds and says so in an
INFO log line. The same answers on a first attempt, or after a failure that cannot have been
applied (a 429), stay errors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator

import attrs
import pytest

import batch_audience as ba
from batch_audience.testing import FakeBatchServer, Fault
from tests.conftest import FAST_RETRY, RecordingSleep, make_v1_client

CREATE = "/audiences/create"
REMOVE = "/audiences/remove"

# The three ways an attempt can land while its answer is lost.
LOST = [
    pytest.param(Fault(drop=True, apply=True), id="dropped-after-applying"),
    pytest.param(Fault(delay=1.0, apply=True), id="answer-past-the-timeout"),
    pytest.param(Fault(status=500, apply=True), id="5xx-after-applying"),
]


@pytest.fixture
async def quick(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> AsyncIterator[ba.AudienceClient]:
    """A 2.x client that gives up on an attempt after 0.3 s, with zero-wait retries."""
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        retry=FAST_RETRY,
        timeouts=ba.Timeouts(total=0.3),
        sleep=sleep,
    ) as client:
        yield client


def paths(server: FakeBatchServer) -> list[tuple[str, int]]:
    """The route and status of each logged request."""
    return [(r.path.rsplit("/", 1)[-1], r.status) for r in server.requests]


@pytest.mark.parametrize("fault", LOST)
async def test_a_create_whose_answer_was_lost_succeeds(
    quick: ba.AudienceClient,
    fake_server: FakeBatchServer,
    fault: Fault,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The retry meets 400, a view finds the audience: create returns None and logs how."""
    fake_server.fail_next(attrs.evolve(fault, path=CREATE))
    with caplog.at_level(logging.INFO, logger="batch_audience"):
        assert await quick.create("lost", display_name="Lost") is None
    assert fake_server.audience("lost").display_name == "Lost"
    assert paths(fake_server)[-2:] == [("create", 400), ("view", 200)]
    confirmed = [
        r for r in caplog.records if getattr(r, "event", "") == "batch_audience.create_confirmed"
    ]
    assert len(confirmed) == 1 and confirmed[0].levelno == logging.INFO


@pytest.mark.parametrize("fault", LOST)
async def test_a_delete_whose_answer_was_lost_succeeds(
    quick: ba.AudienceClient,
    fake_server: FakeBatchServer,
    fault: Fault,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The retry meets 404 after the first attempt deleted the audience: delete succeeds."""
    await quick.create("doomed")
    fake_server.fail_next(attrs.evolve(fault, path=REMOVE))
    with caplog.at_level(logging.INFO, logger="batch_audience"):
        assert await quick.delete("doomed") is None
    assert fake_server.audiences() == []
    assert paths(fake_server)[-1] == ("remove", 404)
    confirmed = [
        r for r in caplog.records if getattr(r, "event", "") == "batch_audience.delete_confirmed"
    ]
    assert len(confirmed) == 1 and confirmed[0].levelno == logging.INFO


async def test_a_first_attempt_duplicate_create_is_an_error(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """ "Already exists" on the first attempt is the caller's duplicate: raised, no view sent."""
    await client.create("twice")
    with pytest.raises(ba.BadRequestError) as caught:
        await client.create("twice")
    assert not caught.value.after_unknown_outcome
    assert paths(fake_server) == [("create", 202), ("create", 400)]


async def test_a_first_attempt_delete_of_nothing_is_an_error(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """ "Not found" on the first attempt is raised."""
    with pytest.raises(ba.NotFoundError):
        await client.delete("never")
    assert paths(fake_server) == [("remove", 404)]


async def test_after_a_429_a_duplicate_is_still_an_error(
    client: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """A 429 applies nothing, so "already exists" / "not found" after it are the caller's."""
    await client.create("taken")
    fake_server.fail_next(status=429, retry_after=0, path=CREATE)
    with pytest.raises(ba.BadRequestError) as refused:
        await client.create("taken")
    assert not refused.value.after_unknown_outcome
    fake_server.fail_next(status=429, retry_after=0, path=REMOVE)
    with pytest.raises(ba.NotFoundError):
        await client.delete("absent")
    assert [p for p in paths(fake_server) if p[0] == "view"] == []


async def test_a_400_after_a_lost_answer_is_an_error_unless_the_audience_exists(
    quick: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """The error code alone proves nothing: when the view finds no audience, the 400 stands."""
    fake_server.fail_next(status=500, path=CREATE)  # not applied
    fake_server.fail_next(status=400, path=CREATE)
    with pytest.raises(ba.BadRequestError) as caught:
        await quick.create("ghost")
    assert caught.value.after_unknown_outcome
    assert paths(fake_server) == [("create", 500), ("create", 400), ("view", 404)]
    with pytest.raises(KeyError):
        fake_server.audience("ghost")


async def test_an_audience_with_another_label_was_not_created_by_this_call(
    quick: ba.AudienceClient, fake_server: FakeBatchServer
) -> None:
    """If the existing audience has another display name, someone else made it: an error."""
    await quick.create("shared", display_name="Theirs")
    fake_server.fail_next(status=502, path=CREATE)  # not applied; the retry meets theirs
    with pytest.raises(ba.BadRequestError) as caught:
        await quick.create("shared", display_name="Mine")
    assert "another label" in "".join(caught.value.__notes__)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_1x_create_and_delete_after_a_lost_answer(
    fake_server: FakeBatchServer, sleep: RecordingSleep, version: str
) -> None:
    """Custom Audience API 1.x: the same confirmation for create (400) and delete (404)."""
    async with make_v1_client(fake_server, version, sleep) as client:
        fake_server.fail_next(drop=True, apply=True, method="POST")
        assert await client.create("v1", description="d") is None
        assert fake_server.audience("v1").description == "d"
        fake_server.fail_next(drop=True, apply=True, method="DELETE")
        assert await client.delete("v1") is None
    assert fake_server.audiences() == []
    assert [r.status for r in fake_server.requests] == [0, 400, 200, 0, 404]


# -- the command line ---------------------------------------------------------------------------


async def cli(server: FakeBatchServer, *args: str) -> tuple[int, str, str]:
    """Run ``python -m batch_audience ARGS`` against the fake; return (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env |= {
        "BATCH_REST_KEY": server.rest_key,
        "BATCH_PROJECT_KEY": server.project_key,
        "BATCH_BASE_URL": server.url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batch_audience",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_cli_create_and_delete_exit_0_after_a_lost_answer(
    fake_server: FakeBatchServer,
) -> None:
    """The command's exit status follows the call: 0 when the earlier attempt did the work."""
    fake_server.fail_next(drop=True, apply=True, path=CREATE)
    code, out, err = await cli(fake_server, "create", "cli-lost")
    assert code == 0, err
    assert "created 'cli-lost'" in out
    fake_server.fail_next(drop=True, apply=True, path=REMOVE)
    code, out, err = await cli(fake_server, "delete", "cli-lost", "--yes")
    assert code == 0, err
    assert "deleted 'cli-lost'" in out
    assert fake_server.audiences() == []
    # The same answers on a first attempt are failures (exit 1).
    code, _, err = await cli(fake_server, "delete", "cli-lost", "--yes")
    assert code == 1 and "HTTP 404" in err
