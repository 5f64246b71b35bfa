"""Canary keys must never appear in an exception, a repr or a log line, even at DEBUG."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

import batch_audience as ba
from batch_audience.testing import FakeBatchServer
from tests.conftest import FAST_RETRY, RecordingSleep

REST = "CANARYrestKEY7f3e9a"
PROJECT = "project_CANARYproj55"
APP = "CANARYappKEY8812"
SECRETS = (REST, PROJECT, APP)


def assert_clean(text: str) -> None:
    """No canary key, nor a recognisable piece of one, is in the text."""
    for secret in SECRETS:
        assert secret not in text, text
    assert "CANARY" not in text, text


@pytest.fixture
async def canary_server() -> AsyncIterator[FakeBatchServer]:
    """A fake server that accepts the canary keys."""
    async with FakeBatchServer(rest_key=REST, project_key=PROJECT, api_key=APP) as server:
        yield server


def check_error(err: BaseException) -> None:
    """str, repr and notes of an error are clean, and so is its whole chain."""
    seen = 0
    while err is not None and seen < 10:
        assert_clean(str(err))
        assert_clean(repr(err))
        assert_clean("".join(getattr(err, "__notes__", [])))
        if isinstance(err, ba.ApiError):
            assert_clean(err.body)
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
        seen += 1


async def test_no_key_in_errors_reprs_or_debug_logs(
    canary_server: FakeBatchServer, sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    """Every failure kind, every client repr and every DEBUG log record is free of the keys."""
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    v2 = ba.AudienceClient(REST, PROJECT, base_url=canary_server.url, retry=FAST_RETRY, sleep=sleep)
    v10 = ba.CustomAudienceClient(
        APP, REST, version="1.0", base_url=canary_server.url, retry=FAST_RETRY, sleep=sleep
    )
    v11 = ba.CustomAudienceClient(
        APP, REST, version="1.1", base_url=canary_server.url, retry=FAST_RETRY, sleep=sleep
    )
    async with v2, v10, v11:
        for c in (v2, v10, v11):
            assert_clean(repr(c))
        await v2.create("a")
        await v11.create("b")
        # (fault, times): retriable faults repeat past the six attempts so they surface.
        faults: list[tuple[dict[str, object], int]] = [
            ({"status": 400}, 1),
            ({"status": 401}, 1),
            ({"status": 403}, 1),
            ({"status": 404}, 1),
            ({"status": 429, "retry_after": 1}, 6),
            ({"status": 500}, 6),
            ({"status": 503}, 6),
            ({"drop": True}, 6),
            ({"body": b"<html>" + REST.encode() + b"</html>", "status": 502}, 6),
        ]
        for client, name in ((v2, "a"), (v10, "zz"), (v11, "b")):
            for fault, times in faults:
                canary_server.fail_next(times=times, **fault)  # type: ignore[arg-type]
                with pytest.raises(ba.BatchAudienceError) as caught_fault:
                    await client.view(name)
                errors.append(caught_fault.value)
                assert canary_server.pending_faults == 0
            try:
                await client.add(name, ["ok", {"id": "bad", "attributes": {"Bad Key": 1}}])
            except ba.BatchAudienceError as exc:
                errors.append(exc)
        # Failures raised inside aiohttp: a timeout and a refused connection.
        async with ba.CustomAudienceClient(
            APP,
            REST,
            version="1.1",
            base_url=canary_server.url,
            timeouts=ba.Timeouts(total=0.05),
            retry=ba.RetryPolicy(max_attempts=1),
            sleep=sleep,
        ) as slow:
            canary_server.fail_next(delay=0.5)
            with pytest.raises(ba.RequestTimeout) as caught:
                await slow.view("b")
            errors.append(caught.value)
            assert_clean(repr(slow))
    async with ba.CustomAudienceClient(
        APP,
        REST,
        version="1.1",
        base_url="http://127.0.0.1:9",
        retry=ba.RetryPolicy(max_attempts=1),
        sleep=sleep,
    ) as dead:
        with pytest.raises(ba.ConnectError) as refused:
            await dead.view("b")
        errors.append(refused.value)
    closed = ba.AudienceClient(REST, PROJECT, base_url=canary_server.url)
    await closed.aclose()
    with pytest.raises(ba.ClientClosedError) as closed_err:
        await closed.view("a")
    errors.append(closed_err.value)

    kinds = {type(e) for e in errors}
    assert {
        ba.BadRequestError,
        ba.AuthenticationError,
        ba.ForbiddenError,
        ba.NotFoundError,
        ba.RateLimitError,
        ba.ServerError,
        ba.MaintenanceError,
        ba.ConnectError,
        ba.RequestTimeout,
        ba.ValidationError,
        ba.ClientClosedError,
    } <= kinds
    for err in errors:
        check_error(err)
    assert caplog.records, "the client should log its requests"
    for record in caplog.records:
        assert_clean(record.getMessage())
        assert_clean(repr(record.__dict__))


def test_other_errors_render_clean() -> None:
    """Errors built directly (UnsupportedOperation, IndexingTimeout) render without keys."""
    for err in (
        ba.UnsupportedOperation("replace", "1.0"),
        ba.IndexingTimeout("slow", {"t": "IN_PROGRESS"}),
    ):
        check_error(err)
