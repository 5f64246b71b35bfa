"""Oversized and malformed answers become typed errors; none is buffered without limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

import batch_audience as ba
from batch_audience.testing import FakeBatchServer
from tests.conftest import RecordingSleep

LIMIT = 1024 * 1024  # bytes, the client's bound in these tests


@pytest.fixture
async def streaming_server() -> AsyncIterator[tuple[str, list[int]]]:
    """A server answering view with 50 MB sent in pieces, no Content-Length; counts bytes sent."""
    sent = [0]

    async def view(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        piece = b" " * (256 * 1024)
        try:
            for _ in range(200):  # 50 MB
                await response.write(piece)
                sent[0] += len(piece)
        except (ConnectionResetError, RuntimeError):
            pass  # the client hung up, as it should
        return response

    app = web.Application()
    app.router.add_get("/2.8/audiences/view", view)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", sent
    finally:
        await runner.cleanup()


async def test_a_declared_oversized_body_is_refused_unread(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A 2xx whose Content-Length passes the bound is refused before its body is read."""
    fake_server.fail_next(body=b"[" + b"0," * (3 * LIMIT) + b"0]", times=6)
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        max_response_bytes=LIMIT,
        sleep=sleep,
    ) as client:
        with pytest.raises(ba.TransportError, match="refused"):
            await client.view("a")


async def test_a_streamed_50_mb_body_is_cut_off_at_the_bound(
    streaming_server: tuple[str, list[int]], sleep: RecordingSleep
) -> None:
    """A 50 MB body without Content-Length is refused once it passes the bound."""
    url, sent = streaming_server
    async with ba.AudienceClient(
        "rest-key",
        "project_x",
        base_url=url,
        max_response_bytes=LIMIT,
        retry=ba.RetryPolicy(max_attempts=1),
        sleep=sleep,
    ) as client:
        with pytest.raises(ba.TransportError, match="larger than"):
            await client.view("a")
    assert sent[0] < 50 * 1024 * 1024


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="malformed"),
        pytest.param(b"[1, 2, 3]", id="a-list"),
        pytest.param(b'{"name": 5, "type": "CUSTOM_ID"}', id="wrong-type"),
        pytest.param(b'{"type": "CUSTOM_ID"}', id="missing-name"),
        pytest.param(b'{"name": "a", "type": "CUSTOM_ID", "created": "yesterday"}', id="bad-date"),
        pytest.param(b'{"name": "a", "type": "CUSTOM_ID", "nb_ids": "many"}', id="bad-count"),
    ],
)
async def test_malformed_view_answers_are_transport_errors(
    client: ba.AudienceClient, fake_server: FakeBatchServer, body: bytes
) -> None:
    """A 2xx view answer that cannot be read raises TransportError, never a parsing error."""
    fake_server.fail_next(body=body, times=6)
    with pytest.raises(ba.TransportError):
        await client.view("a")
