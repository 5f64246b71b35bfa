"""Fuzzing the answers: whatever a server sends back, the client gives a result or a typed error.

Every example drives a real client (2.x, 1.0 or 1.1) over HTTP against a local aiohttp.web app
that answers with a generated status, headers and body: malformed JSON, JSON of wrong types
(a list for an object, numbers as strings, missing, null and extra fields, dates in odd
formats, huge numbers), raw bytes, broken gzip. view, list, create, delete, add, remove,
replace and wait_applied must return a value of the documented type, equal to what the body
said, or raise TransportError, an ApiError subclass for the status, or (wait_applied)
IndexingTimeout; never a cattrs, KeyError, TypeError or ValueError, and never hang.
Oversized answers, 50 MB plain or a gzip bomb, are refused within the client's bound.
"""

from __future__ import annotations

import asyncio
import math
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import attrs
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import batch_audience as ba
from tests.conftest import RecordingSleep

EXAMPLES = 800  # answers per run, spread over every client and operation
ERROR_EXAMPLES = 200  # error answers: status, body and Retry-After
MiB = 1024 * 1024


@attrs.define
class Answer:
    """What the fuzz server answers to every request until changed."""

    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = attrs.Factory(dict)
    requests: int = 0


@pytest.fixture
async def fuzz_server() -> AsyncIterator[tuple[str, Answer]]:
    """A local aiohttp.web app answering any route with the current Answer."""
    answer = Answer()

    async def any_route(request: web.Request) -> web.Response:
        answer.requests += 1
        await request.read()
        empty = answer.status in (204, 304)
        return web.Response(
            status=answer.status, body=None if empty else answer.body, headers=answer.headers
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", answer
    finally:
        await runner.cleanup()


Client = ba.AudienceClient | ba.CustomAudienceClient


@pytest.fixture
async def clients(
    fuzz_server: tuple[str, Answer], sleep: RecordingSleep
) -> AsyncIterator[dict[str, Client]]:
    """A 2.x, a 1.0 and a 1.1 client of the fuzz server: two attempts, no real waits."""
    url, _ = fuzz_server
    retry = ba.RetryPolicy(max_attempts=2, base=0.01, jitter=False)
    poll = ba.PollPolicy(initial=0.001, timeout=0.02)
    made: dict[str, Client] = {
        "2": ba.AudienceClient(
            "rest", "project", base_url=url, retry=retry, poll=poll, sleep=sleep
        ),
        "1.0": ba.CustomAudienceClient(
            "app", "rest", version="1.0", base_url=url, retry=retry, poll=poll, sleep=sleep
        ),
        "1.1": ba.CustomAudienceClient(
            "app", "rest", version="1.1", base_url=url, retry=retry, poll=poll, sleep=sleep
        ),
    }
    for client in made.values():
        await client.__aenter__()
    try:
        yield made
    finally:
        for client in made.values():
            await client.aclose()


# -- generated answers ------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
odd = st.one_of(
    json_values,
    st.sampled_from(["5", "", "null", "true", "1e400", "APPLIED ", "\u202e", "\x00"]),
    st.sampled_from([2**64 - 1, -(2**63), -1, 0.5, 1e300, True, [], {}]),
)
stamps = st.sampled_from(
    [
        "2018-06-29T14:59:03",  # 1.x: no zone, read as UTC
        "2023-08-12T22:30:05Z",
        "2023-08-12T22:30:05.123456+05:30",
        "2023-08-12",
        "20230812T223005Z",
        "2023-08-12 22:30:05",
    ]
)
odd_stamps = st.sampled_from(
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 once in UTC
        "2023-02-30T00:00:00Z",
        "yesterday",
        "1690000000",
        1690000000,
        20240102,  # str() of it would parse as a date
    ]
)
field_values = {
    "name": st.text(min_size=1, max_size=12),
    "type": st.sampled_from(["CUSTOM_ID", "custom_ids", "install_ids", "advertising_ids"]),
    "nb_ids": st.integers(0, 2**64 - 1),
    "indexing_state": st.sampled_from(["APPLIED", "IN_PROGRESS", "REPLACED", "NEW", "applied"]),
    "created": stamps,
    "updated": stamps,
    "display_name": st.text(max_size=12),
    "description": st.text(max_size=12),
}


@st.composite
def audiences(draw: st.DrawFn) -> dict[str, Any]:
    """An audience object: each field absent, of its type, or of any other JSON shape."""
    out: dict[str, Any] = {}
    for key, values in field_values.items():
        roll = draw(st.integers(0, 19))
        if roll == 0 or (roll < 4 and key not in ("name", "type")):
            continue
        if roll < 6:
            out[key] = draw(odd_stamps if key in ("created", "updated") and roll == 5 else odd)
        else:
            out[key] = draw(values)
    if draw(st.booleans()):
        out[draw(st.sampled_from(["extra", "nb_ids_text", "Name"]))] = draw(json_values)
    return out


tokens = st.text(min_size=1, max_size=8) | st.sampled_from(["", None, 5, ["t"], {"t": 1}])
list_v2 = st.fixed_dictionaries(
    {},
    optional={
        "audiences": st.lists(audiences(), max_size=3) | st.lists(audiences(), max_size=3) | odd,
        "has_more": st.booleans() | st.booleans() | odd,
        "next_from": st.text(min_size=1, max_size=4) | odd,
        "count": odd,
    },
)
list_v1 = st.fixed_dictionaries(
    {}, optional={"custom_audiences": st.lists(audiences(), max_size=4) | odd, "extra": odd}
)
writes = st.fixed_dictionaries({}, optional={"indexing_token": tokens, "extra": odd})
errors = st.fixed_dictionaries(
    {
        "error_code": st.sampled_from(["MALFORMED_PARAMETER", "31", "\u00b2", "\u0661", "9" * 40])
        | odd
    },
    optional={"code": odd, "error_message": st.text(max_size=20) | odd},
) | st.fixed_dictionaries({"code": st.sampled_from([31, "32", "\u00b3"]) | odd})
malformed = st.sampled_from(
    [
        b"",
        b"   \n",
        b"{",
        b'{"name": "a",}',
        b"[1, 2",
        b"\xef\xbb\xbf{}",
        b'{"name": NaN, "type": "t"}',
        b'{"name": "a", "type": "t", "nb_ids": 1e400}',
        b'{"name": "a", "type": "t", "nb_ids": 123456789012345678901234567890}',
        b'{"name": "a", "name": 5, "type": "t"}',
        b'{"name": "a", "type": "t"} trailing',
        b"[" * 100_000,
        b'{"a":' * 5_000,
        b"\x00",
        b"<html>502 Bad Gateway</html>",
        b'"\\ud800"',
    ]
)
anything = st.one_of(
    json_values.map(orjson.dumps),
    st.binary(max_size=40),
    malformed,
    audiences().map(orjson.dumps),
    list_v2.map(orjson.dumps),
    list_v1.map(orjson.dumps),
    writes.map(orjson.dumps),
)
# The body an operation expects, in any shape its fields can take.
fitting = {
    "view": audiences(),
    "wait": audiences(),
    "list": list_v2,  # list_v1 for the 1.x clients
    "create": writes,
    "delete": writes,
    "add": writes,
    "remove": writes,
    "replace": writes,
}


@st.composite
def answers(draw: st.DrawFn, operation: str, generation: str) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers: mostly a 2xx with a body shaped for the call, else anything."""
    if draw(st.integers(0, 9)) < 6:
        status = draw(st.sampled_from([200, 200, 200, 201, 202, 204, 299]))
    else:
        status = draw(statuses)
    shaped = list_v1 if operation == "list" and generation != "2" else fitting[operation]
    if status >= 300 and draw(st.booleans()):
        shaped = errors
    body = draw(shaped.map(orjson.dumps) if draw(st.integers(0, 9)) < 6 else anything)
    head = draw(headers) if draw(st.integers(0, 9)) < 2 else {}
    return status, body, head


statuses = st.sampled_from(
    [200, 201, 202, 204, 299, 301, 302, 304, 400, 401, 403, 404, 409, 418, 429, 500, 502]
) | st.sampled_from([503, 504, 599])
headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(["application/json", "text/html", "application/x-ndjson"]),
        "Retry-After": st.sampled_from(
            [
                "0",
                "1.5",
                "-5",
                "nan",
                "inf",
                "1e400",
                "soon",
                "Mon, 01 Jan 2024 00:00:00 GMT",
                "Mon, 01 Jan 2024 00:00:00 +99999999999999",
                "Mon, 01 Jan 0000 00:00:00 GMT",
                "Fri, 31 Dec 9999 23:59:59 GMT",
            ]
        ),
        "Content-Encoding": st.just("gzip"),  # over a body that is not gzip
    },
)
operations = st.sampled_from(
    [
        "view",
        "view",
        "view",
        "list",
        "list",
        "list",
        "create",
        "delete",
        "add",
        "remove",
        "replace",
        "wait",
    ]
)

# -- what the documentation promises ----------------------------------------------------------

_CLASSES: dict[int, type[ba.ApiError]] = {
    400: ba.BadRequestError,
    401: ba.AuthenticationError,
    403: ba.ForbiddenError,
    404: ba.NotFoundError,
    429: ba.RateLimitError,
    503: ba.MaintenanceError,
}


def error_class(status: int) -> type[ba.ApiError]:
    """The ApiError subclass documented for an HTTP status."""
    return _CLASSES.get(status, ba.ServerError if 500 <= status < 600 else ba.ApiError)


def _stamp(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def expected_info(data: Any) -> ba.AudienceInfo | None:
    """The AudienceInfo an audience object stands for; None when it breaks the documented types."""
    if not isinstance(data, dict):
        return None
    name, kind = data.get("name"), data.get("type")
    nb_ids = data.get("nb_ids", 0)
    state = data.get("indexing_state")
    labels = [data.get("display_name"), data.get("description")]
    if not (isinstance(name, str) and isinstance(kind, str)):
        return None
    if isinstance(nb_ids, bool) or not isinstance(nb_ids, int):
        return None
    if not (state is None or isinstance(state, str)):
        return None
    if not all(label is None or isinstance(label, str) for label in labels):
        return None
    try:
        created, updated = _stamp(data.get("created")), _stamp(data.get("updated"))
    except (ValueError, OverflowError):
        return None
    return ba.AudienceInfo(
        name=name,
        type=kind,
        nb_ids=nb_ids,
        indexing_state=state,
        created=created,
        updated=updated,
        display_name=labels[0],
        description=labels[1],
    )


def decoded(body: bytes) -> tuple[bool, Any]:
    """(readable, value) of a 2xx body as the docs describe: empty is {}, else strict JSON."""
    if not body.strip():
        return True, {}
    try:
        return True, orjson.loads(body)
    except orjson.JSONDecodeError:
        return False, None


def check_info(info: object, data: Any) -> None:
    """An AudienceInfo with the documented types, equal to what the server said."""
    assert isinstance(info, ba.AudienceInfo)
    wanted = expected_info(data)
    assert wanted is not None, f"decoded an audience that breaks the types: {data!r}"
    assert info == wanted
    assert type(info.nb_ids) is int
    assert info.indexing_state is None or isinstance(info.indexing_state, str)
    for stamp in (info.created, info.updated):
        assert stamp is None or stamp.utcoffset() is not None


# -- the property -----------------------------------------------------------------------------


async def run(client: Client, operation: str) -> object:
    """One call of ``operation``; the list is read to its end or to 30 audiences."""
    one_0 = isinstance(client, ba.CustomAudienceClient) and client.version == "1.0"
    kind = {"audience_type": "custom_ids"} if one_0 else {}
    attributes = None if one_0 or operation == "remove" else {"score": 1}
    records = ["u-1", ba.Record("u-2", attributes)]
    if operation == "view":
        return await client.view("a")
    if operation == "list":
        found = []
        listing = client.list(page_size=2)
        async for info in listing:
            found.append(info)
            if len(found) == 30:
                await listing.aclose()  # type: ignore[attr-defined]
                break
        return found
    if operation == "create":
        return await client.create("a")
    if operation == "delete":
        return await client.delete("a")
    if operation == "add":
        return await client.add("a", records, **kind)
    if operation == "remove":
        return await client.remove("a", records, **kind)
    if operation == "replace":
        return await client.replace("a", records)
    return await client.wait_applied("a", ["t-1"])


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(generation=st.sampled_from(["2", "1.0", "1.1"]), operation=operations, data=st.data())
async def test_any_answer_gives_a_typed_result_or_a_typed_error(
    fuzz_server: tuple[str, Answer],
    clients: dict[str, Client],
    generation: str,
    operation: str,
    data: st.DataObject,
) -> None:
    """Any status, headers and body give the documented value or a typed library error."""
    if operation == "replace" and generation == "1.0":
        operation = "add"  # 1.0 has no replace (UnsupportedOperation, tested elsewhere)
    status, body, head = data.draw(answers(operation, generation), label="answer")
    _, answer = fuzz_server
    answer.status, answer.body, answer.headers = status, body, head
    error: ba.BatchAudienceError | None = None
    try:
        async with asyncio.timeout(10):
            result = await run(clients[generation], operation)
    except (ba.ApiError, ba.TransportError, ba.IndexingTimeout) as exc:
        error = exc
    if isinstance(error, ba.ApiError):
        event("ApiError")
        assert type(error) is error_class(status) and error.status == status
        assert error.error_code is None or isinstance(error.error_code, str)
        assert error.numeric_code is None or type(error.numeric_code) is int
        assert isinstance(error.message, str) and str(error) and repr(error)
        if isinstance(error, ba.RateLimitError) and error.retry_after is not None:
            assert math.isfinite(error.retry_after) and error.retry_after >= 0
        return
    if isinstance(error, ba.TransportError):
        event(f"TransportError: {error.cause or type(error).__name__}")
        assert str(error) and repr(error)
        return
    if isinstance(error, ba.IndexingTimeout):
        assert operation == "wait"
        event("IndexingTimeout")
        return
    event(f"{operation} returned")
    assert 200 <= status < 300, f"status {status} gave a result: {result!r}"
    # A body that is not gzip under Content-Encoding: gzip is an error, except that aiohttp
    # reads a stream cut before the end of the gzip header as empty (it checks the end of
    # deflate streams only), which is then the documented empty answer.
    sent = b"" if status in (204, 304) or "Content-Encoding" in head else body
    readable, value = decoded(sent)
    assert readable, f"an unreadable body gave a result: {result!r}"
    token = value.get("indexing_token") if isinstance(value, dict) else None
    token = token if isinstance(token, str) and token else None
    if operation == "view":
        check_info(result, value)
    elif operation == "list":
        assert isinstance(result, list) and isinstance(value, dict)
        key = "audiences" if generation == "2" else "custom_audiences"
        items = value.get(key)
        assert isinstance(items, list)
        for index, info in enumerate(result):
            check_info(info, items[index % len(items)])
    elif operation in ("create", "delete"):
        assert result == token
    elif operation == "wait":
        assert result == {"t-1": ba.IndexingState(value["indexing_state"])}
    else:
        assert isinstance(result, ba.UploadReport)
        assert result.records == 2 and result.requests == 1
        assert result.tokens == ((token,) if token else ())


@settings(max_examples=ERROR_EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    status=st.sampled_from([301, 302, 304, 400, 401, 403, 404, 409, 418, 429, 500, 502, 503, 599]),
    body=errors.map(orjson.dumps) | anything,
    head=headers,
    generation=st.sampled_from(["2", "1.0", "1.1"]),
)
async def test_any_error_answer_gives_the_api_error_of_its_status(
    fuzz_server: tuple[str, Answer],
    clients: dict[str, Client],
    status: int,
    body: bytes,
    head: dict[str, str],
    generation: str,
) -> None:
    """Error bodies of any shape, odd codes and Retry-After values give the status's ApiError."""
    _, answer = fuzz_server
    answer.status, answer.body, answer.headers = status, body, head
    error: BaseException | None = None
    try:
        async with asyncio.timeout(10):
            await clients[generation].view("a")
    except (ba.ApiError, ba.TransportError) as exc:
        error = exc
    if "Content-Encoding" in head and isinstance(error, ba.TransportError):
        return  # the body is not gzip: no usable answer
    assert type(error) is error_class(status)
    assert isinstance(error, ba.ApiError) and error.status == status
    assert error.error_code is None or isinstance(error.error_code, str)
    assert error.numeric_code is None or type(error.numeric_code) is int
    assert isinstance(error.message, str) and str(error) and repr(error)


# -- answers that are too large ---------------------------------------------------------------


@attrs.define
class Stream:
    """A streamed answer: how many bytes, whether to declare them, and what was written."""

    size: int = 50 * 1024 * 1024
    declare: bool = False
    gzip: bytes | None = None
    written: int = 0


@pytest.fixture
async def big_server() -> AsyncIterator[tuple[str, Stream]]:
    """A server answering any route with 50 MB of JSON whitespace, written in 256 KiB pieces."""
    stream = Stream()

    async def any_route(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if stream.gzip is not None:
            response.headers["Content-Encoding"] = "gzip"
            response.content_length = len(stream.gzip)
        elif stream.declare:
            response.content_length = stream.size
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        # The same 256 KiB piece again and again: the server itself holds no 50 MB.
        piece = b" " * (256 * 1024)
        pieces = (
            [
                memoryview(stream.gzip)[i : i + len(piece)]
                for i in range(0, len(stream.gzip), len(piece))
            ]
            if stream.gzip is not None
            else [piece] * (stream.size // len(piece) + 1)
        )
        try:
            for part in pieces:
                await response.write(part)
                stream.written += len(part)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", stream
    finally:
        await runner.cleanup()


async def peak_while(call: Any) -> tuple[BaseException | None, int]:
    """The error a call raised and the peak of Python memory allocated meanwhile (bytes)."""
    tracemalloc.start()
    error: BaseException | None = None
    try:
        await call
    except ba.BatchAudienceError as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("declare", [False, True], ids=["chunked", "content-length"])
@pytest.mark.parametrize("operation", ["view", "list", "create", "add"])
async def test_a_50_mb_answer_is_refused_within_the_default_bound(
    big_server: tuple[str, Stream], operation: str, declare: bool, sleep: RecordingSleep
) -> None:
    """50 MB is refused with TransportError, buffering at most the 16 MiB bound, never all."""
    url, stream = big_server
    stream.declare = declare
    async with ba.CustomAudienceClient(
        "app", "rest", version="1.1", base_url=url, retry=ba.RetryPolicy(max_attempts=1)
    ) as client:
        error, peak = await peak_while(run(client, operation))
    assert isinstance(error, ba.TransportError), error
    assert "refused" in str(error)
    # Measured: 16.8 MiB streamed (the bound and a read chunk), 0.8 MiB declared.
    assert peak < 20 * MiB  # the bound plus aiohttp's buffers, not 50 MB
    if declare:
        assert peak < 2 * MiB  # a declared size over the bound is refused before reading
    assert stream.written < stream.size / 2  # the read stopped early (socket buffers aside)


async def test_a_gzip_bomb_is_cut_off_at_the_bound(
    big_server: tuple[str, Stream], sleep: RecordingSleep
) -> None:
    """200 MB of JSON whitespace in 200 kB of gzip is refused once 1 MiB is decompressed."""
    url, stream = big_server
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    stream.gzip = b"".join(packer.compress(b" " * MiB) for _ in range(200)) + packer.flush()
    assert len(stream.gzip) < MiB
    async with ba.AudienceClient(
        "rest",
        "project",
        base_url=url,
        max_response_bytes=MiB,
        retry=ba.RetryPolicy(max_attempts=1),
    ) as client:
        error, peak = await peak_while(client.view("a"))
    assert isinstance(error, ba.TransportError) and "larger than" in str(error)
    assert peak < 16 * MiB


# -- answers that are not HTTP ----------------------------------------------------------------

RAW_ANSWERS = [
    pytest.param(b"hello\r\n\r\n", id="not-http"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", id="truncated-body"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}", id="bad-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100_000 + b"\r\n\r\n", id="huge-header"),
    pytest.param(
        b"HTTP/1.1 429 Slow down\r\nRetry-After: Mon, 01 Jan 2024 00:00:00 +99999999999999\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        id="retry-after-overflow",
    ),
    pytest.param(b"HTTP/1.1 999 What\r\nContent-Length: 2\r\n\r\n{}", id="status-999"),
    pytest.param(b"", id="closed-without-answer"),
]


@pytest.fixture
async def raw_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A TCP server that reads a request head and answers with the given raw bytes."""
    reply = [b""]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply[0])
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", reply
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("raw", RAW_ANSWERS)
@pytest.mark.parametrize("generation", ["2", "1.1"])
async def test_answers_that_break_http_give_typed_errors(
    raw_server: tuple[str, list[bytes]], raw: bytes, generation: str, sleep: RecordingSleep
) -> None:
    """Broken status lines, bodies, chunks and headers give TransportError or ApiError."""
    url, reply = raw_server
    reply[0] = raw
    retry = ba.RetryPolicy(max_attempts=2, base=0.01, jitter=False)
    client: Client = (
        ba.AudienceClient("rest", "project", base_url=url, retry=retry, sleep=sleep)
        if generation == "2"
        else ba.CustomAudienceClient(
            "app", "rest", version="1.1", base_url=url, retry=retry, sleep=sleep
        )
    )
    async with client:
        for operation in ("view", "list", "create", "add"):
            with pytest.raises((ba.TransportError, ba.ApiError)):
                async with asyncio.timeout(10):
                    await run(client, operation)
