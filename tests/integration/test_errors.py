"""The spec §6 error table, as raised by the client from the fake server's answers."""

from __future__ import annotations

import aiohttp
import pytest

import batch_audience as ba
from batch_audience.testing import FakeBatchServer
from tests.conftest import RecordingSleep


async def test_bad_rest_key_is_authentication_invalid(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A wrong REST key answers 401 AUTHENTICATION_INVALID (10), and it is not retried."""
    async with ba.AudienceClient(
        "wrong-key", fake_server.project_key, base_url=fake_server.url, sleep=sleep
    ) as c:
        with pytest.raises(ba.AuthenticationError) as caught:
            await c.view("x")
    err = caught.value
    assert (err.status, err.error_code, err.numeric_code) == (401, "AUTHENTICATION_INVALID", 10)
    assert len(fake_server.requests) == 1
    assert sleep.calls == []


async def test_bad_project_key_is_authentication_invalid(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A wrong 2.x project key answers 401 too."""
    async with ba.AudienceClient(
        fake_server.rest_key, "project_nope", base_url=fake_server.url, sleep=sleep
    ) as c:
        with pytest.raises(ba.AuthenticationError):
            await c.create("x")


async def test_duplicate_create_is_malformed_parameter(client: ba.AudienceClient) -> None:
    """Creating an existing name answers 400 MALFORMED_PARAMETER (31)."""
    await client.create("dup")
    with pytest.raises(ba.BadRequestError) as caught:
        await client.create("dup")
    assert (caught.value.error_code, caught.value.numeric_code) == ("MALFORMED_PARAMETER", 31)


async def test_unknown_token_is_malformed_parameter(client: ba.AudienceClient) -> None:
    """A token unknown for the audience answers 400 MALFORMED_PARAMETER."""
    await client.create("a")
    with pytest.raises(ba.BadRequestError):
        await client.view("a", token="f" * 32)


async def test_unknown_audience_2x_is_not_found(client: ba.AudienceClient) -> None:
    """2.x on an unknown audience answers 404 NOT_FOUND."""
    with pytest.raises(ba.NotFoundError) as caught:
        await client.add("ghost", ["a"])
    assert caught.value.error_code == "NOT_FOUND"
    assert caught.value.report is not None and caught.value.report.records == 0


async def _raw(server: FakeBatchServer, method: str, path: str, **kwargs: object) -> ba.ApiError:
    """Send a raw request and turn the answer into an ApiError as the client would."""
    headers = {
        "Authorization": f"Bearer {server.rest_key}",
        "X-Batch-Project": server.project_key,
        "Content-Type": "application/json",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, server.url + path, headers=headers, **kwargs) as resp,
    ):  # type: ignore[arg-type]
        return ba.ApiError.from_response(resp.status, await resp.read())


async def test_missing_parameter_and_malformed_json(fake_server: FakeBatchServer) -> None:
    """A missing field answers MISSING_PARAMETER (30), a broken body MALFORMED_JSON_BODY (32)."""
    missing = await _raw(fake_server, "POST", "/2.8/audiences/create", data=b"{}")
    assert (missing.status, missing.error_code, missing.numeric_code) == (
        400,
        "MISSING_PARAMETER",
        30,
    )
    broken = await _raw(fake_server, "POST", "/2.8/audiences/create", data=b"{not json")
    assert (broken.status, broken.error_code, broken.numeric_code) == (
        400,
        "MALFORMED_JSON_BODY",
        32,
    )


async def test_unknown_route_is_route_not_found(fake_server: FakeBatchServer) -> None:
    """An unknown path answers 404 ROUTE_NOT_FOUND (20)."""
    err = await _raw(fake_server, "GET", "/2.8/audiences/nope")
    assert (err.status, err.error_code, err.numeric_code) == (404, "ROUTE_NOT_FOUND", 20)


@pytest.mark.parametrize(
    ("status", "klass", "code"),
    [
        pytest.param(500, ba.ServerError, "SERVER_ERROR", id="500"),
        pytest.param(503, ba.MaintenanceError, "MAINTENANCE_ERROR", id="503"),
        pytest.param(429, ba.RateLimitError, "TOO_MANY_REQUESTS", id="429"),
    ],
)
async def test_server_faults_raise_typed_errors_after_retries(
    client: ba.AudienceClient,
    fake_server: FakeBatchServer,
    status: int,
    klass: type[ba.ApiError],
    code: str,
) -> None:
    """Retriable faults that persist past max_attempts raise the last error, with a note."""
    fake_server.fail_next(status=status, times=6)
    with pytest.raises(klass) as caught:
        await client.view("x")
    assert caught.value.error_code == code
    assert "gave up after 6 attempts" in "".join(caught.value.__notes__)
    assert len(fake_server.requests) == 6


async def test_non_json_error_body(client: ba.AudienceClient, fake_server: FakeBatchServer) -> None:
    """A non-JSON error body still gives a typed error with the text as message."""
    fake_server.fail_next(status=502, body=b"<html>Bad Gateway</html>", times=6)
    with pytest.raises(ba.ServerError) as caught:
        await client.view("x")
    assert caught.value.status == 502
    assert caught.value.error_code is None
    assert "Bad Gateway" in caught.value.message


@pytest.mark.parametrize(
    ("call", "rule"),
    [
        pytest.param(lambda c: c.create("bad name!"), "name", id="name-chars"),
        pytest.param(lambda c: c.create("x" * 256), "name", id="name-too-long"),
        pytest.param(lambda c: c.create(""), "name", id="name-empty"),
        pytest.param(
            lambda c: c.create("ok", description="1.x only"), "description", id="1x-arg-on-2x"
        ),
        pytest.param(lambda c: c.view("ok", token=5), "token", id="token-type"),
        pytest.param(lambda c: c.add("ok", ["a"], concurrency=0), "concurrency", id="concurrency"),
        pytest.param(
            lambda c: c.add("ok", ["a"], chunk_size=10_001), "chunk_size", id="chunk-size"
        ),
    ],
)
async def test_bad_input_is_refused_before_sending(
    client: ba.AudienceClient, fake_server: FakeBatchServer, call: object, rule: str
) -> None:
    """Bad arguments raise ValidationError naming the rule, and nothing reaches the server."""
    with pytest.raises(ba.ValidationError, match=rule):
        await call(client)  # type: ignore[operator]
    assert fake_server.requests == []


@pytest.mark.parametrize("page_size", [0, 101, -1, True])
async def test_list_page_size_out_of_range(
    client: ba.AudienceClient, fake_server: FakeBatchServer, page_size: int
) -> None:
    """A list page size outside 1..100 raises at the call, before any request."""
    with pytest.raises(ba.ValidationError, match="page_size"):
        client.list(page_size=page_size)
    assert fake_server.requests == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: ba.AudienceClient("", "project_x"), id="empty-rest-key"),
        pytest.param(lambda: ba.AudienceClient("k", ""), id="empty-project-key"),
        pytest.param(lambda: ba.AudienceClient(None, "p"), id="missing-rest-key"),  # type: ignore[arg-type]
        pytest.param(lambda: ba.CustomAudienceClient("", "k"), id="empty-app-key"),
        pytest.param(lambda: ba.CustomAudienceClient("app", "k", version="1.2"), id="bad-version"),
        pytest.param(lambda: ba.AudienceClient("k", "p", api_version="3.0"), id="bad-2x-version"),
        pytest.param(lambda: ba.AudienceClient("k", "p", api_version="2.0"), id="2.0"),
        pytest.param(lambda: ba.AudienceClient("k", "p", api_version="2.8\n"), id="2.8-newline"),
        pytest.param(lambda: ba.AudienceClient("k", "p", api_version="2.08"), id="2.08"),
        pytest.param(
            lambda: ba.AudienceClient("k", "p", base_url="http://api.example.com"), id="plain-http"
        ),
        pytest.param(lambda: ba.AudienceClient("k\n", "p"), id="newline-in-key"),
    ],
)
def test_bad_construction_is_a_validation_error(make: object) -> None:
    """Missing or empty keys, bad versions and plain http to a remote host are refused."""
    with pytest.raises(ba.ValidationError):
        make()  # type: ignore[operator]


def test_plain_http_to_a_remote_host_can_be_allowed() -> None:
    """allow_insecure_http=True is the explicit opt-in for plain http."""
    client = ba.AudienceClient(
        "k", "p", base_url="http://api.example.com", allow_insecure_http=True
    )
    assert client.base_url == "http://api.example.com"
