"""The fake Batch server over real HTTP, driven with raw aiohttp requests (no library client).

Every route of the three API generations, the spec §6.2 error rows, validation, indexing
tokens, list paging, faults, the rate limiter, the request log, the standalone runner and
chaos mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import email.utils
import io
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import attrs
import orjson
import pytest

from batch_audience.testing import (
    Chaos,
    FakeAudience,
    FakeBatchServer,
    FakeMember,
    Fault,
    RateLimit,
    RecordedRequest,
)
from batch_audience.testing import _app as fake_app

HEX32 = re.compile(r"[0-9a-f]{32}")
V1_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
V2_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@attrs.frozen
class Reply:
    """One HTTP answer: status, headers and the body (decoded JSON, else raw bytes)."""

    status: int
    headers: Mapping[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        """The body decoded as JSON."""
        return orjson.loads(self.raw)

    @property
    def code(self) -> str:
        """The spec §6.1 error_code of an error body."""
        body = self.json
        assert set(body) == {"error_code", "error_message"}, body
        return str(body["error_code"])

    @property
    def message(self) -> str:
        """The spec §6.1 error_message of an error body."""
        return str(self.json["error_message"])


class Api:
    """Raw requests to a fake server, with the right auth headers for each generation."""

    def __init__(self, server: FakeBatchServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    def v2_headers(self) -> dict[str, str]:
        """2.x auth headers."""
        return {
            "Authorization": f"Bearer {self.server.rest_key}",
            "X-Batch-Project": self.server.project_key,
            "Content-Type": "application/json",
        }

    def v1_headers(self) -> dict[str, str]:
        """1.x auth headers."""
        return {"X-Authorization": self.server.rest_key, "Content-Type": "application/json"}

    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send one request and read the whole answer."""
        body = orjson.dumps(json) if json is not None else data
        async with self.http.request(
            method,
            self.server.url + path,
            headers=headers,
            # BytesIO: aiohttp warns about large raw bytes bodies (filterwarnings=error).
            data=io.BytesIO(body) if body is not None else None,
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return Reply(resp.status, dict(resp.headers), await resp.read())

    async def v2(
        self,
        action: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        version: str = "2.8",
        data: bytes | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """A 2.x call: GET for list/view, POST with a JSON body otherwise."""
        method = "GET" if action in ("list", "view") else "POST"
        return await self.send(
            method,
            f"/{version}/audiences/{action}",
            headers=self.v2_headers(),
            json=body,
            data=data,
            params=params,
            timeout=timeout,
        )

    async def v1(
        self,
        method: str,
        version: str,
        name: str | None = None,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
    ) -> Reply:
        """A 1.x call on the audience list (name None) or on one audience."""
        path = f"/{version}/{self.server.api_key}/custom-audience"
        if name is not None:
            path += f"/{name}"
        return await self.send(
            method, path, headers=self.v1_headers(), json=body, data=data, params=params
        )

    async def create(self, name: str, **extra: Any) -> str:
        """Create a 2.x audience and return its token."""
        reply = await self.v2("create", {"name": name, "type": "custom_ids", **extra})
        assert reply.status == 202, reply.raw
        return str(reply.json["indexing_token"])

    async def update(self, name: str, ids: list[dict[str, Any]]) -> Reply:
        """A 2.x update."""
        return await self.v2("update", {"name": name, "ids": ids})


def add(uid: str, **attributes: Any) -> dict[str, Any]:
    """A 2.x add entry, with attributes when given."""
    entry: dict[str, Any] = {"action": "add", "id": uid}
    if attributes:
        entry["attributes"] = attributes
    return entry


def remove(uid: str) -> dict[str, Any]:
    """A remove entry."""
    return {"action": "remove", "id": uid}


@pytest.fixture
async def server() -> AsyncIterator[FakeBatchServer]:
    """A started fake server (own thread, the default)."""
    async with FakeBatchServer() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def api(server: FakeBatchServer, http: aiohttp.ClientSession) -> Api:
    """Raw access to the started fake server."""
    return Api(server, http)


# -- lifecycle --------------------------------------------------------------------------------


async def test_keys_url_and_lifecycle() -> None:
    """Keys default to random values of the documented shapes; url exists only once started."""
    fake = FakeBatchServer()
    assert re.fullmatch(r"[0-9a-f]{32,}", fake.rest_key)
    assert re.fullmatch(r"project_[0-9a-f]+", fake.project_key)
    assert re.fullmatch(r"[0-9a-f]{32}", fake.api_key)
    assert fake.rest_key != FakeBatchServer().rest_key
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.url
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.port
    await fake.start()
    try:
        assert fake.url == f"http://127.0.0.1:{fake.port}"
        assert fake.port > 0
        with pytest.raises(RuntimeError, match="already started"):
            await fake.start()
        assert fake.rest_key not in repr(fake) and fake.project_key not in repr(fake)
    finally:
        await fake.close()
    await fake.close()  # idempotent
    async with fake:  # and it can serve again
        assert fake.port > 0


@pytest.mark.parametrize("threaded", [True, False], ids=["own-thread", "caller-loop"])
async def test_both_serving_modes_answer(threaded: bool, http: aiohttp.ClientSession) -> None:
    """The fake serves from its own thread (default) or from the caller's loop alike."""
    async with FakeBatchServer(threaded=threaded) as fake:
        api = Api(fake, http)
        await api.create("a")
        reply = await api.update("a", [add("x")])
        assert reply.status == 202
        assert set(fake.members("a")) == {"x"}


async def test_given_keys_are_used(http: aiohttp.ClientSession) -> None:
    """Keys passed in are the ones the server checks."""
    async with FakeBatchServer(rest_key="r" * 32, project_key="project_p", api_key="APP") as fake:
        assert (fake.rest_key, fake.project_key, fake.api_key) == ("r" * 32, "project_p", "APP")
        api = Api(fake, http)
        assert (await api.v1("POST", "1.1", "a", {})).status == 200
    with pytest.raises(ValueError, match="rest_key"):
        FakeBatchServer(rest_key="")


async def test_a_busy_port_fails_to_start() -> None:
    """Starting on a port already in use raises OSError and leaves nothing running."""
    async with FakeBatchServer() as first:
        second = FakeBatchServer(port=first.port)
        with pytest.raises(OSError, match=r"in use"):
            await second.start()
        with pytest.raises(RuntimeError):
            _ = second.url


@pytest.mark.parametrize("threaded", [True, False], ids=["own-thread", "caller-loop"])
async def test_close_cuts_delayed_requests_short(
    threaded: bool, http: aiohttp.ClientSession
) -> None:
    """Closing wakes a request delayed for a minute: close is quick and its client sees a drop."""
    fake = FakeBatchServer(threaded=threaded)
    await fake.start()
    api = Api(fake, http)
    fake.fail_next(delay=60)
    pending = asyncio.create_task(api.v2("list"))
    while fake.in_flight == 0:
        await asyncio.sleep(0.005)
    started = time.monotonic()
    await fake.close()
    assert time.monotonic() - started < 1.5
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert [r.status for r in fake.requests] == [0]


# -- routing and auth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/", id="root"),
        pytest.param("GET", "/2.8/audiences/nope", id="2x-unknown-action"),
        pytest.param("GET", "/2.8/audiences/update", id="2x-write-with-get"),
        pytest.param("POST", "/2.8/audiences/view", id="2x-read-with-post"),
        pytest.param("PATCH", "/2.8/audiences/update", id="2x-patch"),
        pytest.param("GET", "/2.0/audiences/list", id="2.0"),
        pytest.param("GET", "/3.1/audiences/list", id="3.1"),
        pytest.param("GET", "/2.8/audiences/list/extra", id="2x-extra-segment"),
        pytest.param("GET", "/1.2/{key}/custom-audience/a", id="1.2"),
        pytest.param("PUT", "/1.0/{key}/custom-audience/a", id="1.0-put"),
        pytest.param("POST", "/1.0/{key}/custom-audience", id="1x-list-with-post"),
        pytest.param("GET", "/1.1/{key}/custom-audience/a/extra", id="1x-extra-segment"),
        pytest.param("GET", "/1.1/{key}/custom-audience/", id="1x-trailing-slash"),
        pytest.param("HEAD", "/1.1/{key}/custom-audience/a", id="1x-head"),
    ],
)
async def test_unknown_routes_are_route_not_found(api: Api, method: str, path: str) -> None:
    """Unknown paths and verbs answer 404 ROUTE_NOT_FOUND in JSON, without echoing the app key."""
    headers = {**api.v1_headers(), **api.v2_headers()}
    reply = await api.send(method, path.format(key=api.server.api_key), headers=headers)
    assert reply.status == 404
    assert reply.headers["Content-Type"] == "application/json"
    if method != "HEAD":
        assert reply.code == "ROUTE_NOT_FOUND"
        assert api.server.api_key not in reply.message


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"X-Authorization": "wrong"}, id="wrong-rest-key"),
        pytest.param({"Authorization": "Bearer {rest}"}, id="2x-header-on-1x"),
    ],
)
async def test_v1_auth_failures(api: Api, headers: dict[str, str]) -> None:
    """1.x without a valid X-Authorization answers 401 AUTHENTICATION_INVALID."""
    headers = {k: v.format(rest=api.server.rest_key) for k, v in headers.items()}
    path = f"/1.1/{api.server.api_key}/custom-audience"
    reply = await api.send("GET", path, headers=headers)
    assert (reply.status, reply.code) == (401, "AUTHENTICATION_INVALID")
    assert api.server.rest_key not in reply.message


async def test_v1_wrong_app_key_is_refused(api: Api) -> None:
    """A 1.x path with another app key answers 401, and the message does not echo it."""
    reply = await api.send("GET", "/1.0/SOMEOTHERAPP/custom-audience/a", headers=api.v1_headers())
    assert (reply.status, reply.code) == (401, "AUTHENTICATION_INVALID")
    assert "SOMEOTHERAPP" not in reply.message


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"X-Batch-Project": "{project}"}, id="no-bearer"),
        pytest.param({"Authorization": "Bearer {rest}"}, id="no-project"),
        pytest.param(
            {"Authorization": "Bearer nope", "X-Batch-Project": "{project}"}, id="wrong-rest"
        ),
        pytest.param(
            {"Authorization": "Bearer {rest}", "X-Batch-Project": "project_x"},
            id="wrong-project",
        ),
        pytest.param(
            {"Authorization": "Basic {rest}", "X-Batch-Project": "{project}"}, id="basic-scheme"
        ),
        pytest.param({"X-Authorization": "{rest}"}, id="1x-header-on-2x"),
    ],
)
async def test_v2_auth_failures(api: Api, headers: dict[str, str]) -> None:
    """2.x needs Bearer REST key and the project key: anything else is 401."""
    values = {"rest": api.server.rest_key, "project": api.server.project_key}
    headers = {k: v.format(**values) for k, v in headers.items()}
    reply = await api.send("GET", "/2.8/audiences/list", headers=headers)
    assert (reply.status, reply.code) == (401, "AUTHENTICATION_INVALID")
    assert api.server.rest_key not in reply.message


async def test_v2_bearer_scheme_is_case_insensitive(api: Api) -> None:
    """The Bearer scheme name is matched without regard to case, as HTTP says."""
    headers = {
        "Authorization": f"bearer {api.server.rest_key}",
        "X-Batch-Project": api.server.project_key,
    }
    assert (await api.send("GET", "/2.8/audiences/list", headers=headers)).status == 200


@pytest.mark.parametrize("version", ["2.1", "2.8", "2.11"])
async def test_every_2x_version_behaves_alike(api: Api, version: str) -> None:
    """Any 2.N with N >= 1 serves the same routes on the same project."""
    reply = await api.v2("create", {"name": "v", "type": "custom_ids"}, version=version)
    assert reply.status == 202
    listed = await api.v2("list", version="2.3")
    assert [a["name"] for a in listed.json["audiences"]] == ["v"]


# -- Audience API 2.x ---------------------------------------------------------------------------


async def test_v2_lifecycle(api: Api, server: FakeBatchServer) -> None:
    """2.x create, update, view, replace and remove answer the documented statuses and shapes."""
    token = await api.create("winback", display_name="Win-back Q3")
    assert HEX32.fullmatch(token)
    view = await api.v2("view", params={"name": "winback"})
    assert view.status == 200
    assert view.headers["Content-Type"] == "application/json"
    body = view.json
    assert list(body) == [
        "name",
        "display_name",
        "type",
        "nb_ids",
        "indexing_state",
        "created",
        "updated",
    ]
    assert (body["name"], body["display_name"], body["type"], body["nb_ids"]) == (
        "winback",
        "Win-back Q3",
        "CUSTOM_ID",
        0,
    )
    assert body["indexing_state"] == "APPLIED"
    assert V2_TIME.fullmatch(body["created"]) and V2_TIME.fullmatch(body["updated"])

    entries = [
        add("C-1", score=3, **{"date(joined)": "2023-08-12T22:30:05Z"}),
        add("C-2", **{"url(avatar)": "https://example.com/a.png"}),
        add("C-3"),
        remove("C-404"),
    ]
    updated = await api.update("winback", entries)
    assert updated.status == 202 and HEX32.fullmatch(updated.json["indexing_token"])
    assert list(updated.json) == ["indexing_token"]
    members = server.members("winback")
    assert members == {
        "C-1": FakeMember(attributes={"score": 3, "date(joined)": "2023-08-12T22:30:05Z"}),
        "C-2": FakeMember(attributes={"url(avatar)": "https://example.com/a.png"}),
        "C-3": FakeMember(),
    }
    assert (await api.update("winback", [remove("C-1")])).status == 202
    replaced = await api.v2("replace", {"name": "winback", "ids": [{"id": "N-1"}]})
    assert replaced.status == 202
    assert set(server.members("winback")) == {"N-1"}
    view = await api.v2("view", params={"name": "winback"})
    assert view.json["nb_ids"] == 1
    removed = await api.v2("remove", {"name": "winback"})
    assert removed.status == 202 and HEX32.fullmatch(removed.json["indexing_token"])
    with pytest.raises(KeyError):
        server.audience("winback")


async def test_v2_display_name_is_absent_when_never_set(api: Api) -> None:
    """A 2.x audience created without display_name has none in view."""
    await api.create("plain")
    body = (await api.v2("view", params={"name": "plain"})).json
    assert "display_name" not in body


@pytest.mark.parametrize(
    ("action", "body"),
    [
        pytest.param("view", None, id="view"),
        pytest.param("update", {"ids": []}, id="update"),
        pytest.param("replace", {"ids": []}, id="replace"),
        pytest.param("remove", {}, id="remove"),
    ],
)
async def test_v2_unknown_audience_is_not_found(api: Api, action: str, body: Any) -> None:
    """2.x routes on a missing (or removed) audience answer 404 NOT_FOUND."""
    await api.create("gone")
    await api.v2("remove", {"name": "gone"})
    if body is None:
        reply = await api.v2(action, params={"name": "gone"})
    else:
        reply = await api.v2(action, {"name": "gone", **body})
    assert (reply.status, reply.code) == (404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        pytest.param({"type": "custom_ids"}, "MISSING_PARAMETER", "name", id="no-name"),
        pytest.param({"name": "a"}, "MISSING_PARAMETER", "type", id="no-type"),
        pytest.param(
            {"name": "bad name", "type": "custom_ids"}, "MALFORMED_PARAMETER", "name", id="name"
        ),
        pytest.param(
            {"name": "x" * 256, "type": "custom_ids"}, "MALFORMED_PARAMETER", "name", id="long"
        ),
        pytest.param({"name": 5, "type": "custom_ids"}, "MALFORMED_PARAMETER", "name", id="int"),
        pytest.param(
            {"name": "a", "type": "install_ids"}, "MALFORMED_PARAMETER", "type", id="bad-type"
        ),
        pytest.param(
            {"name": "a", "type": "custom_ids", "display_name": 3},
            "MALFORMED_PARAMETER",
            "display_name",
            id="display-name-type",
        ),
    ],
)
async def test_v2_create_validation(
    api: Api, server: FakeBatchServer, body: dict[str, Any], code: str, fragment: str
) -> None:
    """2.x create refuses missing or malformed fields with the spec codes, creating nothing."""
    reply = await api.v2("create", body)
    assert (reply.status, reply.code) == (400, code)
    assert fragment in reply.message
    assert server.audiences() == []


async def test_v2_names_are_case_sensitive_and_unique(api: Api) -> None:
    """A second create of a name answers 400 MALFORMED_PARAMETER; case makes another name."""
    await api.create("Name_-1")
    await api.create("name_-1")
    again = await api.v2("create", {"name": "Name_-1", "type": "custom_ids"})
    assert (again.status, again.code) == (400, "MALFORMED_PARAMETER")
    assert (await api.v2("create", {"name": "n" * 255, "type": "custom_ids"})).status == 202


async def test_v2_attributes_on_remove_are_refused(api: Api, server: FakeBatchServer) -> None:
    """A 2.x remove entry carrying attributes is 400 MALFORMED_PARAMETER."""
    await api.create("a")
    await api.update("a", [add("x")])
    entry = {**remove("x"), "attributes": {"k": 1}}
    reply = await api.update("a", [entry])
    assert (reply.status, reply.code) == (400, "MALFORMED_PARAMETER")
    assert "ids[0]" in reply.message
    assert set(server.members("a")) == {"x"}


async def test_v2_replace_refuses_a_remove_action(api: Api) -> None:
    """Replace entries only add: an explicit remove action is malformed."""
    await api.create("a")
    reply = await api.v2("replace", {"name": "a", "ids": [remove("x")]})
    assert (reply.status, reply.code) == (400, "MALFORMED_PARAMETER")
    ok = await api.v2("replace", {"name": "a", "ids": [add("y")]})
    assert ok.status == 202


async def test_v2_tags_are_ignored(api: Api, server: FakeBatchServer) -> None:
    """2.x has no tags: an entry's tags key is ignored, not stored."""
    await api.create("a")
    reply = await api.update("a", [{**add("x"), "tags": ["Whatever", 3]}])
    assert reply.status == 202
    assert server.members("a")["x"].tags == ()


async def test_v2_list_pages_with_cursors(api: Api) -> None:
    """2.x list is newest first; count on the first page only; next_from only with has_more."""
    names = [f"aud_{i}" for i in range(7)]
    for name in names:
        await api.create(name)
    first = (await api.v2("list", params={"limit": "3"})).json
    assert [a["name"] for a in first["audiences"]] == ["aud_6", "aud_5", "aud_4"]
    assert (first["count"], first["has_more"]) == (7, True)
    audience = first["audiences"][0]
    assert set(audience) == {
        "name",
        "type",
        "nb_ids",
        "indexing_state",
        "created",
        "updated",
    }
    second = (await api.v2("list", params={"limit": "3", "from": first["next_from"]})).json
    assert [a["name"] for a in second["audiences"]] == ["aud_3", "aud_2", "aud_1"]
    assert "count" not in second and second["has_more"] is True
    third = (await api.v2("list", params={"limit": "3", "from": second["next_from"]})).json
    assert [a["name"] for a in third["audiences"]] == ["aud_0"]
    assert third["has_more"] is False and "next_from" not in third
    everything = (await api.v2("list")).json
    assert len(everything["audiences"]) == 7 and everything["has_more"] is False
    assert (await api.v2("list", params={"limit": "100"})).status == 200


async def test_v2_list_on_an_empty_project(api: Api) -> None:
    """An empty project lists nothing, with count 0."""
    body = (await api.v2("list")).json
    assert body == {"audiences": [], "count": 0, "has_more": False}


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": "0"}, id="limit-0"),
        pytest.param({"limit": "101"}, id="limit-101"),
        pytest.param({"limit": "-1"}, id="limit-negative"),
        pytest.param({"limit": "ten"}, id="limit-text"),
        pytest.param({"limit": "1.5"}, id="limit-float"),
        pytest.param({"from": "NOPE"}, id="unknown-cursor"),
    ],
)
async def test_v2_list_bad_query(api: Api, params: dict[str, str]) -> None:
    """A limit outside 1..100 or a cursor this server never gave answers 400."""
    reply = await api.v2("list", params=params)
    assert (reply.status, reply.code) == (400, "MALFORMED_PARAMETER")


async def test_v2_view_needs_a_name(api: Api) -> None:
    """2.x view without name is MISSING_PARAMETER; a malformed one is MALFORMED_PARAMETER."""
    missing = await api.v2("view")
    assert (missing.status, missing.code) == (400, "MISSING_PARAMETER")
    bad = await api.v2("view", params={"name": "a b"})
    assert (bad.status, bad.code) == (400, "MALFORMED_PARAMETER")


# -- Custom Audience API 1.0 / 1.1 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "kind"),
    [("1.0", "custom_ids"), ("1.0", "advertising_ids"), ("1.1", "install_ids")],
)
async def test_v1_lifecycle(api: Api, server: FakeBatchServer, version: str, kind: str) -> None:
    """1.x create 200 {}, PATCH 201 + token, view, list, delete 200 {}, then 404."""
    create_body: dict[str, Any] = {"description": "VIPs"}
    if version == "1.0":
        create_body["type"] = kind
    created = await api.v1("POST", version, "vip", create_body)
    assert (created.status, created.json) == (200, {})
    patch: dict[str, Any] = {"ids": [add("a"), add("b"), add("c"), remove("b")]}
    if version == "1.0":
        patch["type"] = kind
    updated = await api.v1("PATCH", version, "vip", patch)
    assert updated.status == 201 and HEX32.fullmatch(updated.json["indexing_token"])
    assert set(server.members("vip", api_key=server.api_key)) == {"a", "c"}
    view = await api.v1(
        "GET", version, "vip", params={"indexing_token": updated.json["indexing_token"]}
    )
    assert view.status == 200
    body = view.json
    assert list(body) == [
        "name",
        "type",
        "description",
        "created",
        "updated",
        "nb_ids",
        "indexing_state",
    ]
    assert (body["name"], body["type"], body["description"], body["nb_ids"]) == (
        "vip",
        kind,
        "VIPs",
        2,
    )
    assert body["indexing_state"] == "APPLIED"
    assert V1_TIME.fullmatch(body["created"]) and V1_TIME.fullmatch(body["updated"])
    listed = (await api.v1("GET", version)).json
    assert list(listed) == ["custom_audiences"]
    [entry] = listed["custom_audiences"]
    assert entry == {
        "name": "vip",
        "type": kind,
        "description": "VIPs",
        "nb_ids": 2,
        "created": body["created"],
        "updated": body["updated"],
    }
    deleted = await api.v1("DELETE", version, "vip")
    assert (deleted.status, deleted.json) == (200, {})
    gone = await api.v1("GET", version, "vip")
    assert (gone.status, gone.code) == (404, "ROUTE_NOT_FOUND")


@pytest.mark.parametrize(
    ("version", "body", "code"),
    [
        pytest.param("1.0", {}, "MISSING_PARAMETER", id="1.0-no-type"),
        pytest.param("1.0", {"type": "install_ids"}, "MALFORMED_PARAMETER", id="1.0-install"),
        pytest.param("1.0", {"type": "nope"}, "MALFORMED_PARAMETER", id="1.0-unknown-type"),
        pytest.param("1.1", {"type": "custom_ids"}, "MALFORMED_PARAMETER", id="1.1-custom"),
        pytest.param(
            "1.0",
            {"type": "custom_ids", "description": 5},
            "MALFORMED_PARAMETER",
            id="description-type",
        ),
        pytest.param("1.1", [], "MALFORMED_PARAMETER", id="body-not-object"),
    ],
)
async def test_v1_create_validation(
    api: Api, server: FakeBatchServer, version: str, body: Any, code: str
) -> None:
    """1.0 create needs type custom_ids|advertising_ids; 1.1 takes none or install_ids."""
    reply = await api.v1("POST", version, "a", body)
    assert (reply.status, reply.code) == (400, code)
    assert server.audiences() == []


async def test_v11_create_accepts_no_body_or_install_ids(api: Api, server: FakeBatchServer) -> None:
    """1.1 create works with an empty body, {} or type install_ids."""
    assert (
        await api.send("POST", f"/1.1/{server.api_key}/custom-audience/a", headers=api.v1_headers())
    ).status == 200
    assert (await api.v1("POST", "1.1", "b", {"type": "install_ids"})).status == 200
    assert [a.type for a in server.audiences()] == ["install_ids", "install_ids"]


async def test_v1_duplicate_and_bad_names(api: Api) -> None:
    """1.x duplicate create and a malformed path name answer 400 MALFORMED_PARAMETER."""
    assert (await api.v1("POST", "1.1", "dup", {})).status == 200
    again = await api.v1("POST", "1.1", "dup", {})
    assert (again.status, again.code) == (400, "MALFORMED_PARAMETER")
    # One 1.x namespace per app: the name is taken for 1.0 too.
    other = await api.v1("POST", "1.0", "dup", {"type": "custom_ids"})
    assert (other.status, other.code) == (400, "MALFORMED_PARAMETER")
    bad = await api.v1("GET", "1.1", "bad%20name")
    assert (bad.status, bad.code) == (400, "MALFORMED_PARAMETER")


async def test_v10_patch_type_must_match(api: Api, server: FakeBatchServer) -> None:
    """1.0 PATCH needs type, equal to the audience's type."""
    await api.v1("POST", "1.0", "ads", {"type": "advertising_ids"})
    missing = await api.v1("PATCH", "1.0", "ads", {"ids": [add("x")]})
    assert (missing.status, missing.code) == (400, "MISSING_PARAMETER")
    wrong = await api.v1("PATCH", "1.0", "ads", {"type": "custom_ids", "ids": [add("x")]})
    assert (wrong.status, wrong.code) == (400, "MALFORMED_PARAMETER")
    assert "advertising_ids" in wrong.message
    assert server.members("ads", api_key=server.api_key) == {}


async def test_v10_ignores_attributes_and_tags(api: Api, server: FakeBatchServer) -> None:
    """1.0 entries' attributes and tags are ignored, even malformed ones (spec §3.2)."""
    await api.v1("POST", "1.0", "c", {"type": "custom_ids"})
    entry = {**add("x"), "attributes": {"Bad Key": True}, "tags": ["UP"]}
    reply = await api.v1("PATCH", "1.0", "c", {"type": "custom_ids", "ids": [entry]})
    assert reply.status == 201
    assert server.members("c", api_key=server.api_key) == {"x": FakeMember()}


async def test_v11_attributes_tags_and_replace(api: Api, server: FakeBatchServer) -> None:
    """1.1 stores attributes and tags as sent, ignores them on remove, and PUT replaces all."""
    await api.v1("POST", "1.1", "inst", {})
    first = {
        "action": "add",
        "id": "I-1",
        "attributes": {"tier": 3, "date(last_seen)": "2024-01-02T10:00:00"},
        "tags": ["vip", "2024"],
    }
    gone = {"action": "remove", "id": "I-9", "attributes": {"Bad Key": None}, "tags": ["X"]}
    reply = await api.v1("PATCH", "1.1", "inst", {"ids": [first, add("I-2"), gone]})
    assert reply.status == 201
    members = server.members("inst", api_key=server.api_key)
    assert members["I-1"] == FakeMember(
        attributes={"tier": 3, "date(last_seen)": "2024-01-02T10:00:00"}, tags=("vip", "2024")
    )
    assert members["I-2"] == FakeMember()
    replaced = await api.v1(
        "PUT", "1.1", "inst", {"ids": [{"id": "I-3", "tags": ["new"]}, {"id": "I-4"}]}
    )
    assert replaced.status == 201 and HEX32.fullmatch(replaced.json["indexing_token"])
    members = server.members("inst", api_key=server.api_key)
    assert members == {"I-3": FakeMember(tags=("new",)), "I-4": FakeMember()}


@pytest.mark.parametrize(
    ("tags", "fragment"),
    [
        pytest.param(["VIP"], "lowercase", id="uppercase"),
        pytest.param([""], "non-empty", id="empty"),
        pytest.param([3], "non-empty strings", id="number"),
        pytest.param("vip", "array", id="not-a-list"),
    ],
)
async def test_v11_tag_rules(api: Api, server: FakeBatchServer, tags: Any, fragment: str) -> None:
    """1.1 tags must be a list of non-empty lowercase strings."""
    await api.v1("POST", "1.1", "t", {})
    reply = await api.v1("PATCH", "1.1", "t", {"ids": [add("ok"), {**add("x"), "tags": tags}]})
    assert (reply.status, reply.code) == (400, "MALFORMED_PARAMETER")
    assert "ids[1].tags" in reply.message and fragment in reply.message
    assert server.members("t", api_key=server.api_key) == {}


@pytest.mark.parametrize(
    ("method", "body"),
    [
        pytest.param("GET", None, id="view"),
        pytest.param("PATCH", {"type": "custom_ids", "ids": []}, id="update"),
        pytest.param("DELETE", None, id="delete"),
    ],
)
async def test_v1_generation_mismatch_is_api_misuse(
    api: Api, server: FakeBatchServer, method: str, body: Any
) -> None:
    """A 1.0 route on a 1.1 audience, or the reverse, answers 403 API_MISUSE."""
    await api.v1("POST", "1.1", "inst", {})
    await api.v1("POST", "1.0", "cust", {"type": "custom_ids"})
    on_11 = await api.v1(method, "1.0", "inst", body)
    assert (on_11.status, on_11.code) == (403, "API_MISUSE")
    on_10 = await api.v1(method, "1.1", "cust", {"ids": []} if body else None)
    assert (on_10.status, on_10.code) == (403, "API_MISUSE")
    assert len(server.audiences(api_key=server.api_key)) == 2


@pytest.mark.parametrize(
    ("method", "body"),
    [
        pytest.param("GET", None, id="view"),
        pytest.param("PATCH", {"ids": []}, id="update"),
        pytest.param("PUT", {"ids": []}, id="replace"),
        pytest.param("DELETE", None, id="delete"),
    ],
)
async def test_v1_unknown_audience_is_route_not_found(api: Api, method: str, body: Any) -> None:
    """1.x routes on a missing audience answer 404 ROUTE_NOT_FOUND."""
    reply = await api.v1(method, "1.1", "ghost", body)
    assert (reply.status, reply.code) == (404, "ROUTE_NOT_FOUND")


async def test_v1_list_pages_by_offset(api: Api) -> None:
    """1.x list is newest first, paged by from/limit, and shows only its version's audiences."""
    for i in range(5):
        await api.v1("POST", "1.0", f"a{i}", {"type": "custom_ids"})
    await api.v1("POST", "1.1", "inst", {})
    page = (await api.v1("GET", "1.0", params={"from": "1", "limit": "2"})).json
    assert [a["name"] for a in page["custom_audiences"]] == ["a3", "a2"]
    rest = (await api.v1("GET", "1.0", params={"from": "4", "limit": "2"})).json
    assert [a["name"] for a in rest["custom_audiences"]] == ["a0"]
    past = (await api.v1("GET", "1.0", params={"from": "50"})).json
    assert past == {"custom_audiences": []}
    everything = (await api.v1("GET", "1.0")).json
    assert len(everything["custom_audiences"]) == 5
    assert [a["name"] for a in (await api.v1("GET", "1.1")).json["custom_audiences"]] == ["inst"]


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"from": "-1"}, id="negative-from"),
        pytest.param({"from": "x"}, id="text-from"),
        pytest.param({"limit": "0"}, id="limit-0"),
        pytest.param({"limit": "101"}, id="limit-101"),
    ],
)
async def test_v1_list_bad_query(api: Api, params: dict[str, str]) -> None:
    """1.x list with a negative from or a limit outside 1..100 answers 400."""
    reply = await api.v1("GET", "1.0", params=params)
    assert (reply.status, reply.code) == (400, "MALFORMED_PARAMETER")


# -- bodies and validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "code"),
    [
        pytest.param(
            lambda api: api.v2("create", data=b"{not json"), "MALFORMED_JSON_BODY", id="2x"
        ),
        pytest.param(
            lambda api: api.v1("PATCH", "1.1", "a", data=b'{"ids": [}'),
            "MALFORMED_JSON_BODY",
            id="1x-patch",
        ),
        pytest.param(
            lambda api: api.v1("PUT", "1.1", "a", data=b"\xff\xfe"),
            "MALFORMED_JSON_BODY",
            id="1x-put-binary",
        ),
        pytest.param(
            lambda api: api.v2("update", data=b"[1, 2]"), "MALFORMED_PARAMETER", id="array"
        ),
        pytest.param(lambda api: api.v2("update", data=b""), "MISSING_PARAMETER", id="empty-body"),
        pytest.param(
            lambda api: api.v1("PATCH", "1.1", "a", data=b"{}"), "MISSING_PARAMETER", id="no-ids"
        ),
    ],
)
async def test_broken_bodies(api: Api, send: Any, code: str) -> None:
    """A body that is not JSON is MALFORMED_JSON_BODY; not an object or without ids, the others."""
    await api.v1("POST", "1.1", "a", {})
    reply = await send(api)
    assert (reply.status, reply.code) == (400, code)


GOOD = {"action": "add", "id": "good", "attributes": {"n": 1}}


@pytest.mark.parametrize(
    ("entry", "code", "fragment"),
    [
        pytest.param("just-an-id", "MALFORMED_PARAMETER", "must be an object", id="not-object"),
        pytest.param({"action": "add"}, "MISSING_PARAMETER", "id is required", id="no-id"),
        pytest.param({"action": "add", "id": ""}, "MALFORMED_PARAMETER", ".id", id="empty-id"),
        pytest.param({"action": "add", "id": 7}, "MALFORMED_PARAMETER", ".id", id="int-id"),
        pytest.param({"id": "x"}, "MISSING_PARAMETER", "action", id="no-action"),
        pytest.param({"action": "upsert", "id": "x"}, "MALFORMED_PARAMETER", "action", id="action"),
        pytest.param(
            add("x") | {"attributes": [1]}, "MALFORMED_PARAMETER", "object", id="attrs-list"
        ),
        pytest.param(
            add("x", **{f"k{i}": i for i in range(16)}),
            "MALFORMED_PARAMETER",
            "at most 15",
            id="16-attributes",
        ),
        pytest.param(add("x", Score=1), "MALFORMED_PARAMETER", "'Score'", id="uppercase-key"),
        pytest.param(add("x", **{"a b": 1}), "MALFORMED_PARAMETER", "'a b'", id="space-key"),
        pytest.param(add("x", **{"k" * 31: 1}), "MALFORMED_PARAMETER", "must match", id="31-chars"),
        pytest.param(
            add("x", **{"date(d": "2024-01-01"}),
            "MALFORMED_PARAMETER",
            "must match",
            id="open-paren",
        ),
        pytest.param(add("x", **{"d)": 1}), "MALFORMED_PARAMETER", "must match", id="close-paren"),
        pytest.param(
            add("x", **{"foo(d)": 1}), "MALFORMED_PARAMETER", "must match", id="other-prefix"
        ),
        pytest.param(add("x", flag=True), "MALFORMED_PARAMETER", "boolean", id="bool"),
        pytest.param(
            add("x") | {"attributes": {"n": None}}, "MALFORMED_PARAMETER", "null", id="null"
        ),
        pytest.param(add("x", obj={"a": 1}), "MALFORMED_PARAMETER", "object", id="object"),
        pytest.param(add("x", arr=["a", 1]), "MALFORMED_PARAMETER", "array", id="mixed-array"),
        pytest.param(add("x", s="y" * 301), "MALFORMED_PARAMETER", "300", id="long-string"),
        pytest.param(
            add("x", **{"date(d)": "yesterday"}), "MALFORMED_PARAMETER", "ISO-8601", id="date-text"
        ),
        pytest.param(
            add("x", **{"date(d)": 1700000000}), "MALFORMED_PARAMETER", "ISO-8601", id="date-number"
        ),
        pytest.param(
            add("x", **{"url(u)": "ftp://e.com/x"}), "MALFORMED_PARAMETER", "http", id="url-ftp"
        ),
        pytest.param(
            add("x", **{"url(u)": "/relative"}), "MALFORMED_PARAMETER", "http", id="url-relative"
        ),
        pytest.param(
            add("x", **{"url(u)": "https://e.com/" + "a" * 2040}),
            "MALFORMED_PARAMETER",
            "2048",
            id="url-too-long",
        ),
    ],
)
async def test_entry_rules(
    api: Api, server: FakeBatchServer, entry: Any, code: str, fragment: str
) -> None:
    """A bad entry is refused with the rule and its index, and nothing of the request lands."""
    await api.create("v")
    reply = await api.v2("update", {"name": "v", "ids": [GOOD, entry]})
    assert (reply.status, reply.code) == (400, code)
    assert "ids[1]" in reply.message and fragment in reply.message, reply.message
    assert server.members("v") == {}
    assert len(server.audience("v").tokens) == 1  # the create's only


async def test_an_oversized_body_is_refused(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body over the size limit (64 MiB, shrunk here) answers 400 and applies nothing."""
    monkeypatch.setattr(fake_app, "CLIENT_MAX_SIZE", 4096)
    async with FakeBatchServer() as fake:
        api = Api(fake, http)
        await api.create("big")
        reply = await api.update("big", [add(f"u{i}") for i in range(1_000)])
        assert (reply.status, reply.code) == (400, "MALFORMED_PARAMETER")
        assert "4096 bytes" in reply.message
        assert fake.members("big") == {}
        assert (await api.update("big", [add("small")])).status == 202


async def test_ids_must_be_a_list_of_at_most_10000(api: Api, server: FakeBatchServer) -> None:
    """ids missing is MISSING_PARAMETER; not an array or over 10,000 entries, MALFORMED."""
    await api.create("v")
    missing = await api.v2("update", {"name": "v"})
    assert (missing.status, missing.code) == (400, "MISSING_PARAMETER")
    wrong = await api.v2("update", {"name": "v", "ids": {"id": "x"}})
    assert (wrong.status, wrong.code) == (400, "MALFORMED_PARAMETER")
    too_many = await api.update("v", [add(f"u{i}") for i in range(10_001)])
    assert (too_many.status, too_many.code) == (400, "MALFORMED_PARAMETER")
    assert "10,000" in too_many.message
    assert server.members("v") == {}
    exactly = await api.update("v", [add(f"u{i}") for i in range(10_000)])
    assert exactly.status == 202
    assert server.audience("v").nb_ids == 10_000


async def test_every_attribute_kind_is_stored_as_received(
    api: Api, server: FakeBatchServer
) -> None:
    """Strings, numbers, arrays, dates and URLs at their limits are accepted and kept verbatim."""
    await api.create("v")
    attributes: dict[str, Any] = {
        "s": "gold",
        "long": "y" * 300,
        "empty": "",
        "i": -3,
        "f": 1.5,
        "big": 2**62,
        "arr": ["bikes", "cars"],
        "none_yet": [],
        "date(z)": "2023-08-12T22:30:05Z",
        "date(naive)": "2012-08-12T22:30:05",
        "date(offset)": "2012-08-12T22:30:05+02:00",
        "url(a)": "https://example.com/a.png",
        "url(b)": "http://e.com/" + "p" * 2035,
        "k" * 30: 1,
        "date(" + "d" * 30 + ")": "2024-01-01",
    }
    assert len(attributes) == 15
    reply = await api.update("v", [add("x", **attributes)])
    assert reply.status == 202, reply.raw
    assert server.members("v")["x"].attributes == attributes


async def test_duplicates_last_wins_and_adds_overwrite(api: Api, server: FakeBatchServer) -> None:
    """Within a request the last entry per ID wins; an add replaces attributes wholesale."""
    await api.create("d")
    await api.update("d", [add("x", a=1, b=2), add("y", a=1), add("z")])
    reply = await api.update(
        "d",
        [
            add("x", c=3),
            remove("y"),
            add("y", a=2),
            add("z", a=1),
            remove("z"),
            remove("never-there"),
            add("w", a=1),
            add("w", a=2),
        ],
    )
    assert reply.status == 202
    assert {k: dict(v.attributes) for k, v in server.members("d").items()} == {
        "x": {"c": 3},
        "y": {"a": 2},
        "w": {"a": 2},
    }


async def test_a_refused_request_changes_nothing(api: Api, server: FakeBatchServer) -> None:
    """A request with its only bad entry last applies nothing: members, tokens, updated."""
    await api.create("r")
    await api.update("r", [add("keep")])
    before = server.audience("r")
    updated, tokens = before.updated, before.tokens
    entries = [add(f"u{i}") for i in range(9_999)] + [add("bad", Bad=1)]
    reply = await api.update("r", entries)
    assert (reply.status, reply.code) == (400, "MALFORMED_PARAMETER")
    assert "ids[9999]" in reply.message
    after = server.audience("r")
    assert set(after.members) == {"keep"}
    assert (after.updated, after.tokens) == (updated, tokens)


# -- indexing tokens ----------------------------------------------------------------------------


async def test_tokens_progress_from_in_progress_to_applied(
    api: Api, server: FakeBatchServer
) -> None:
    """With indexing_delay, a token is IN_PROGRESS, then APPLIED once the delay has passed."""
    await api.create("t")
    server.indexing_delay = 0.2
    token = (await api.update("t", [add("a")])).json["indexing_token"]
    # The delay is read when the token is issued: changing it now does not move this one.
    server.indexing_delay = 3600
    state = (await api.v2("view", params={"name": "t", "indexing_token": token})).json
    assert state["indexing_state"] == "IN_PROGRESS"
    latest = (await api.v2("view", params={"name": "t"})).json
    assert latest["indexing_state"] == "IN_PROGRESS"
    await asyncio.sleep(0.25)
    state = (await api.v2("view", params={"name": "t", "indexing_token": token})).json
    assert state["indexing_state"] == "APPLIED"
    slow = (await api.update("t", [add("b")])).json["indexing_token"]
    # The view without token follows the latest write; the older token stays APPLIED.
    assert (await api.v2("view", params={"name": "t"})).json["indexing_state"] == "IN_PROGRESS"
    assert server.audience("t").token_state(token) == "APPLIED"
    assert server.audience("t").token_state(slow) == "IN_PROGRESS"
    with pytest.raises(ValueError, match="indexing_delay"):
        server.indexing_delay = -1


async def test_a_replace_overtakes_earlier_2x_tokens(api: Api) -> None:
    """In 2.x, tokens issued before a replace report REPLACED; its own and later ones do not."""
    create = await api.create("r")
    add_token = (await api.update("r", [add("a")])).json["indexing_token"]
    assert (await api.v2("view", params={"name": "r", "indexing_token": add_token})).json[
        "indexing_state"
    ] == "APPLIED"
    replace_token = (await api.v2("replace", {"name": "r", "ids": [add("b")]})).json[
        "indexing_token"
    ]
    after = (await api.update("r", [add("c")])).json["indexing_token"]

    async def state(token: str) -> str:
        reply = await api.v2("view", params={"name": "r", "indexing_token": token})
        return str(reply.json["indexing_state"])

    assert await state(create) == "REPLACED"
    assert await state(add_token) == "REPLACED"
    assert await state(replace_token) == "APPLIED"
    assert await state(after) == "APPLIED"


async def test_1x_tokens_are_never_replaced(api: Api) -> None:
    """A 1.1 token issued before a PUT replace still reports APPLIED."""
    await api.v1("POST", "1.1", "i", {})
    token = (await api.v1("PATCH", "1.1", "i", {"ids": [add("a")]})).json["indexing_token"]
    await api.v1("PUT", "1.1", "i", {"ids": [{"id": "b"}]})
    view = await api.v1("GET", "1.1", "i", params={"indexing_token": token})
    assert view.json["indexing_state"] == "APPLIED"


async def test_tokens_are_fresh_32_hex(api: Api) -> None:
    """Every write gets a new 32-character lowercase hex token."""
    await api.create("t")
    tokens = {(await api.update("t", [add("a")])).json["indexing_token"] for _ in range(20)}
    assert len(tokens) == 20 and all(HEX32.fullmatch(t) for t in tokens)


async def test_unknown_tokens_are_malformed(api: Api) -> None:
    """A token unknown for that audience (even one of another audience) answers 400."""
    await api.create("a")
    other = await api.create("b")
    for token in ("f" * 32, other, ""):
        reply = await api.v2("view", params={"name": "a", "indexing_token": token})
        assert (reply.status, reply.code) == (400, "MALFORMED_PARAMETER")
    await api.v1("POST", "1.1", "i", {})
    reply = await api.v1("GET", "1.1", "i", params={"indexing_token": other})
    assert (reply.status, reply.code) == (400, "MALFORMED_PARAMETER")


async def test_view_without_any_write_is_applied(api: Api) -> None:
    """A 1.x audience that was only created reports APPLIED."""
    await api.v1("POST", "1.0", "c", {"type": "custom_ids"})
    assert (await api.v1("GET", "1.0", "c")).json["indexing_state"] == "APPLIED"


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "path"),
    [
        pytest.param(500, "SERVER_ERROR", "/2.8/audiences/update", id="500"),
        pytest.param(502, "SERVER_ERROR", "/2.8/audiences/update", id="502"),
        pytest.param(503, "MAINTENANCE_ERROR", "/2.8/audiences/update", id="503"),
        pytest.param(504, "SERVER_ERROR", "/2.8/audiences/update", id="504"),
        pytest.param(429, "TOO_MANY_REQUESTS", "/2.8/audiences/update", id="429"),
        pytest.param(400, "MALFORMED_PARAMETER", "/2.8/audiences/update", id="400"),
        pytest.param(401, "AUTHENTICATION_INVALID", "/2.8/audiences/update", id="401"),
        pytest.param(403, "API_MISUSE", "/2.8/audiences/update", id="403"),
        pytest.param(404, "NOT_FOUND", "/2.8/audiences/update", id="404-2x"),
        pytest.param(404, "ROUTE_NOT_FOUND", "/1.1/{key}/custom-audience/a", id="404-1x"),
        pytest.param(409, "MALFORMED_PARAMETER", "/2.8/audiences/update", id="other-4xx"),
    ],
)
async def test_status_faults_answer_the_spec_body_and_apply_nothing(
    api: Api, server: FakeBatchServer, status: int, code: str, path: str
) -> None:
    """An injected status answers the spec error body; the write is not applied."""
    await api.create("a")
    await api.v1("POST", "1.1", "a", {})
    server.fail_next(status=status)
    headers = api.v2_headers() if path.startswith("/2") else api.v1_headers()
    body = {"name": "a", "ids": [add("x")]}
    reply = await api.send(
        "POST" if path.startswith("/2") else "PATCH",
        path.format(key=server.api_key),
        headers=headers,
        json=body,
    )
    assert (reply.status, reply.code) == (status, code)
    assert reply.headers["Content-Type"] == "application/json"
    assert "Retry-After" not in reply.headers
    assert server.members("a") == {}
    assert server.members("a", api_key=server.api_key) == {}
    assert server.requests[-1].fault == Fault(status=status)
    assert server.pending_faults == 0


@pytest.mark.parametrize(
    ("retry_after", "sent"),
    [
        pytest.param(7, "7", id="int"),
        pytest.param(7.0, "7", id="whole-float"),
        pytest.param(1.5, "1.5", id="float"),
        pytest.param(0, "0", id="zero"),
        pytest.param("Wed, 21 Oct 2026 07:28:00 GMT", "Wed, 21 Oct 2026 07:28:00 GMT", id="date"),
    ],
)
async def test_retry_after_is_sent_as_given(
    api: Api, server: FakeBatchServer, retry_after: float | str, sent: str
) -> None:
    """Retry-After: numbers as seconds, strings verbatim; the log keeps what was sent."""
    server.fail_next(status=429, retry_after=retry_after)
    reply = await api.v2("list")
    assert (reply.status, reply.headers["Retry-After"]) == (429, sent)
    assert server.requests[-1].retry_after == sent


async def test_retry_after_alone_decorates_a_normal_answer(
    api: Api, server: FakeBatchServer
) -> None:
    """A fault with only retry_after lets the request through and adds the header."""
    server.fail_next(retry_after=email.utils.formatdate(usegmt=True))
    reply = await api.v2("list")
    assert reply.status == 200 and reply.headers["Retry-After"].endswith("GMT")


async def test_raw_body_faults(api: Api, server: FakeBatchServer) -> None:
    """body= replaces the JSON error body verbatim; without status the answer is a 200."""
    server.fail_next(body=b"<html>Bad Gateway</html>", status=502)
    reply = await api.v2("list")
    assert (reply.status, reply.raw) == (502, b"<html>Bad Gateway</html>")
    assert reply.headers["Content-Type"] == "text/html"
    await api.create("a")
    server.fail_next(body=b"not json")
    reply = await api.update("a", [add("x")])
    assert (reply.status, reply.raw, reply.headers["Content-Type"]) == (
        200,
        b"not json",
        "text/plain",
    )
    assert server.members("a") == {}
    server.fail_next(body=b"{}", status=503, content_type="application/problem+json")
    reply = await api.v2("list")
    assert reply.headers["Content-Type"] == "application/problem+json"


async def test_error_code_can_be_overridden(api: Api, server: FakeBatchServer) -> None:
    """error_code= picks the symbolic code of an injected error body."""
    server.fail_next(status=400, error_code="MISSING_PARAMETER")
    assert (await api.v2("list")).code == "MISSING_PARAMETER"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_dropped_connection_is_seen_by_the_client(
    api: Api, server: FakeBatchServer, method: str
) -> None:
    """drop=True cuts the connection without an answer; aiohttp cannot hide it by resending."""
    await api.create("a")
    server.fail_next(drop=True)
    request = (
        api.v2("view", params={"name": "a"}) if method == "GET" else api.update("a", [add("x")])
    )
    with pytest.raises(aiohttp.ClientPayloadError):
        await request
    assert server.pending_faults == 0
    last = server.requests[-1]
    assert (last.status, last.fault) == (0, Fault(drop=True))
    assert server.members("a") == {}
    # The next request, on a new connection, is served normally.
    assert (await api.v2("view", params={"name": "a"})).status == 200
    assert len(server.requests) == 3


async def test_drop_after_applying(api: Api, server: FakeBatchServer) -> None:
    """drop=True, apply=True applies the write, then drops: the outcome is unknown to the client."""
    await api.create("a")
    server.fail_next(drop=True, apply=True)
    with pytest.raises(aiohttp.ClientError):
        await api.update("a", [add("x")])
    assert set(server.members("a")) == {"x"}


async def test_status_after_applying(api: Api, server: FakeBatchServer) -> None:
    """status with apply=True applies the write and still answers the error."""
    await api.create("a")
    server.fail_next(status=500, apply=True)
    assert (await api.update("a", [add("x")])).status == 500
    assert set(server.members("a")) == {"x"}


async def test_a_delay_then_normal_processing(api: Api, server: FakeBatchServer) -> None:
    """delay alone holds the answer, then processes the request normally."""
    await api.create("a")
    server.fail_next(delay=0.2)
    started = time.monotonic()
    reply = await api.update("a", [add("x")])
    assert reply.status == 202 and time.monotonic() - started >= 0.2
    last = server.requests[-1]
    assert last.answered - last.received >= 0.2
    assert set(server.members("a")) == {"x"}


async def test_a_delay_past_the_client_timeout_still_applies(
    api: Api, server: FakeBatchServer
) -> None:
    """A client that times out during the delay sees a timeout; the write lands anyway."""
    await api.create("a")
    server.fail_next(delay=0.3)
    with pytest.raises(asyncio.TimeoutError):
        await api.v2("update", {"name": "a", "ids": [add("x")]}, timeout=0.05)
    assert server.members("a") == {}  # still waiting out its delay
    deadline = time.monotonic() + 5
    while not server.members("a"):
        assert time.monotonic() < deadline, "the delayed write never landed"
        await asyncio.sleep(0.02)
    assert set(server.members("a")) == {"x"}
    assert server.requests[-1].status == 202


async def test_a_delay_with_a_status(api: Api, server: FakeBatchServer) -> None:
    """delay with status waits, then answers the error without applying."""
    await api.create("a")
    server.fail_next(delay=0.1, status=503)
    started = time.monotonic()
    reply = await api.update("a", [add("x")])
    assert (reply.status, reply.code) == (503, "MAINTENANCE_ERROR")
    assert time.monotonic() - started >= 0.1
    assert server.members("a") == {}


async def test_faults_match_path_and_method_in_fifo_order(
    api: Api, server: FakeBatchServer
) -> None:
    """Faults hit the next matching request in queue order; others pass untouched."""
    await api.create("a")
    server.fail_next(status=503, path="/audiences/update", times=2)
    server.fail_next(status=500, method="get")
    server.fail_next(status=429, path="/audiences/update")
    assert server.pending_faults == 4
    assert (await api.v2("view", params={"name": "a"})).status == 500
    assert (await api.v2("view", params={"name": "a"})).status == 200
    statuses = [(await api.update("a", [add("x")])).status for _ in range(4)]
    assert statuses == [503, 503, 429, 202]
    assert server.pending_faults == 0
    server.fail_next(status=500, times=3)
    server.clear_faults()
    assert server.pending_faults == 0
    assert (await api.v2("list")).status == 200


async def test_fail_next_takes_a_fault_object(api: Api, server: FakeBatchServer) -> None:
    """fail_next accepts a ready Fault; mixing it with fields is a TypeError."""
    fault = Fault(status=503, retry_after=2)
    server.fail_next(fault, times=2)
    assert [(await api.v2("list")).status for _ in range(3)] == [503, 503, 200]
    with pytest.raises(TypeError):
        server.fail_next(fault, status=500)
    with pytest.raises(ValueError, match="times"):
        server.fail_next(status=500, times=0)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        pytest.param({"status": 99}, "status", id="status-low"),
        pytest.param({"status": 600}, "status", id="status-high"),
        pytest.param({"delay": -1}, "delay", id="negative-delay"),
        pytest.param({"delay": float("inf")}, "delay", id="infinite-delay"),
        pytest.param({"retry_after": -2}, "retry_after", id="negative-retry-after"),
        pytest.param({"drop": True, "status": 500}, "drop", id="drop-and-status"),
        pytest.param({"apply": True}, "apply", id="apply-alone"),
    ],
)
def test_meaningless_faults_are_refused(fields: dict[str, Any], match: str) -> None:
    """A Fault that could not mean anything raises ValueError naming the field."""
    with pytest.raises(ValueError, match=match):
        Fault(**fields)


def test_fault_matching() -> None:
    """Fault.matches checks the path substring and the method, case-insensitively for the method."""
    fault = Fault(status=500, path="custom-audience", method="patch")
    assert fault.method == "PATCH"
    assert fault.matches("PATCH", "/1.1/k/custom-audience/a")
    assert not fault.matches("GET", "/1.1/k/custom-audience/a")
    assert not fault.matches("PATCH", "/2.8/audiences/update")
    assert Fault(status=500).matches("DELETE", "/anything")


# -- rate limiting ------------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after(api: Api, server: FakeBatchServer) -> None:
    """Past its burst the bucket answers 429 TOO_MANY_REQUESTS with whole-second Retry-After."""
    await api.create("a")
    server.rate_limit = RateLimit(rate=0.25, burst=2)
    assert (await api.update("a", [add("x")])).status == 202
    assert (await api.v2("list")).status == 200
    limited = await api.update("a", [add("y")])
    assert (limited.status, limited.code) == (429, "TOO_MANY_REQUESTS")
    assert limited.headers["Retry-After"] == "4"
    assert set(server.members("a")) == {"x"}
    assert server.requests[-1].retry_after == "4" and server.requests[-1].fault is None
    # Buckets are per key pair: the 1.x app has its own.
    assert (await api.v1("GET", "1.1")).status == 200
    server.rate_limit = None
    assert (await api.v2("list")).status == 200


async def test_rate_limit_refills(api: Api, server: FakeBatchServer) -> None:
    """Tokens come back at the configured rate; Retry-After is at least one second."""
    server.rate_limit = RateLimit(rate=20, burst=1)
    assert (await api.v2("list")).status == 200
    refused = await api.v2("list")
    assert (refused.status, refused.headers["Retry-After"]) == (429, "1")
    await asyncio.sleep(0.1)
    assert (await api.v2("list")).status == 200


async def test_rate_limit_comes_after_faults(api: Api, server: FakeBatchServer) -> None:
    """Injected faults answer first and do not use up the bucket."""
    server.rate_limit = RateLimit(rate=0.1, burst=1)
    server.fail_next(status=503)
    assert (await api.v2("list")).status == 503
    assert (await api.v2("list")).status == 200
    assert (await api.v2("list")).status == 429


@pytest.mark.parametrize(
    "fields",
    [
        {"rate": 0},
        {"rate": -1},
        {"rate": float("nan")},
        {"rate": 1, "burst": 0},
        {"rate": 1, "burst": 1.5},
    ],
)
def test_meaningless_rate_limits_are_refused(fields: dict[str, Any]) -> None:
    """A rate must be > 0 requests/s and a burst an int >= 1."""
    with pytest.raises(ValueError, match=r"rate|burst"):
        RateLimit(**fields)


def test_rate_limit_setter_checks_its_type() -> None:
    """rate_limit only takes a RateLimit or None."""
    with pytest.raises(TypeError):
        FakeBatchServer().rate_limit = 5  # type: ignore[assignment]


# -- request log --------------------------------------------------------------------------------


async def test_the_request_log(api: Api, server: FakeBatchServer) -> None:
    """Each request is logged: method, path, query, status, entries, times, masked headers."""
    await api.create("a")
    await api.update("a", [add("x"), add("y"), remove("z")])
    await api.v2("view", params={"name": "a"})
    await api.v1("GET", "1.1", params={"limit": "5"})
    create, update, view, listing = server.requests
    assert (create.method, create.path, create.status, create.entries) == (
        "POST",
        "/2.8/audiences/create",
        202,
        0,
    )
    assert (update.status, update.entries) == (202, 3)
    assert (view.method, view.query, view.status) == ("GET", {"name": "a"}, 200)
    assert listing.query == {"limit": "5"}
    for recorded in server.requests:
        assert isinstance(recorded, RecordedRequest)
        assert recorded.received <= recorded.answered
        assert recorded.body is None and recorded.fault is None and recorded.retry_after is None
    assert update.headers["Authorization"] == "***"
    assert update.headers["x-batch-project"] == "***"
    assert listing.headers["X-Authorization"] == "***"
    assert update.headers["Content-Type"] == "application/json"
    for text in (repr(server.requests), str(server.requests)):
        assert server.rest_key not in text and server.project_key not in text
    assert server.request_count == 4


async def test_bodies_are_kept_only_on_request(http: aiohttp.ClientSession) -> None:
    """record_bodies=True keeps each raw body; the repr shows only its size."""
    async with FakeBatchServer(record_bodies=True) as fake:
        api = Api(fake, http)
        await api.create("a")
        await api.v2("list")
        create, listing = fake.requests
        assert create.body == orjson.dumps({"name": "a", "type": "custom_ids"})
        assert listing.body == b""
        assert f"<{len(create.body)} bytes>" in repr(create)
        assert '"name"' not in repr(create)


async def test_the_log_keeps_arrival_order(api: Api, server: FakeBatchServer) -> None:
    """A slow request that arrived first stays first in the log though it was answered last."""
    server.fail_next(delay=0.3, path="/audiences/list")
    slow = asyncio.create_task(api.v2("list"))
    while server.in_flight == 0:
        await asyncio.sleep(0.005)
    await api.create("fast")
    await slow
    first, second = server.requests
    assert first.path.endswith("/list") and second.path.endswith("/create")
    assert first.received < second.received and first.answered > second.answered


async def test_max_in_flight_counts_concurrent_requests(api: Api, server: FakeBatchServer) -> None:
    """Five concurrent delayed requests are five in flight; reset_stats starts over."""
    server.fail_next(delay=0.2, times=5)
    await asyncio.gather(*(api.v2("list") for _ in range(5)))
    assert server.max_in_flight == 5 and server.in_flight == 0
    assert len(server.requests) == 5
    server.reset_stats()
    assert (server.requests, server.max_in_flight, server.request_count) == ([], 0, 0)
    await api.v2("list")
    assert server.max_in_flight == 1 and server.request_count == 1


# -- inspection ---------------------------------------------------------------------------------


async def test_inspection_finds_each_namespace(api: Api, server: FakeBatchServer) -> None:
    """audience() looks in the 1.x app with api_key, a 2.x project, or ours (2.x first)."""
    await api.create("both")
    await api.v1("POST", "1.1", "both", {"description": "installs"})
    await api.v1("POST", "1.0", "only1", {"type": "advertising_ids"})
    v2 = server.audience("both")
    v1 = server.audience("both", api_key=server.api_key)
    assert isinstance(v2, FakeAudience) and isinstance(v1, FakeAudience)
    assert (v2.version, v2.type, v2.display_name) == ("2", "CUSTOM_ID", None)
    assert (v1.version, v1.type, v1.description) == ("1.1", "install_ids", "installs")
    assert server.audience("both", project_key=server.project_key) is v2
    # Neither key: our 2.x project first, then our 1.x app.
    assert server.audience("only1").type == "advertising_ids"
    assert v2.created.tzinfo is not None and v2.updated >= v2.created
    assert abs((datetime.now(UTC) - v2.created).total_seconds()) < 60
    with pytest.raises(KeyError):
        server.audience("nope")
    with pytest.raises(KeyError):
        server.audience("only1", project_key=server.project_key)
    assert [a.name for a in server.audiences()] == ["both", "both", "only1"]
    assert [a.name for a in server.audiences(api_key=server.api_key)] == ["both", "only1"]
    assert server.audiences(api_key="other") == []
    assert server.members("only1") == {}


async def test_audience_tokens_are_inspectable(api: Api, server: FakeBatchServer) -> None:
    """FakeAudience lists its tokens in order, with the operation that issued each."""
    token = await api.create("a")
    update = (await api.update("a", [add("x")])).json["indexing_token"]
    audience = server.audience("a")
    assert list(audience.tokens) == [token, update]
    assert [t.operation for t in audience.tokens.values()] == ["create", "update"]
    assert audience.latest_token is not None and audience.latest_token.value == update
    assert audience.token_state() == "APPLIED"
    assert audience.nb_ids == 1 and audience.member_ids == frozenset({"x"})
    assert "a" in repr(audience) and "nb_ids=1" in repr(audience)


async def test_members_are_read_only_snapshots(api: Api, server: FakeBatchServer) -> None:
    """members() is a snapshot: later writes do not show in it, and its attributes are read-only."""
    await api.create("a")
    await api.update("a", [add("x", n=1), add("y")])
    snapshot = server.members("a")
    await api.update("a", [remove("x")])
    assert set(snapshot) == {"x", "y"}
    with pytest.raises(TypeError, match="read-only"):
        snapshot["x"].attributes["n"] = 2
    with pytest.raises(TypeError):
        snapshot["y"].attributes.update(n=2)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        snapshot["y"].tags = ("t",)  # type: ignore[misc]
    clone = copy.deepcopy(snapshot["x"])
    clone.attributes["n"] = 3
    assert dict(snapshot["x"].attributes) == {"n": 1}
    assert snapshot["x"] == FakeMember(attributes={"n": 1})


async def test_seed_puts_members_in_directly(api: Api, server: FakeBatchServer) -> None:
    """seed() creates audiences and adds members without HTTP, visible to the routes after."""
    seeded = server.seed("s", ["a", "b"], display_name="Seeded")
    assert (seeded.version, seeded.nb_ids, seeded.tokens) == ("2", 2, {})
    server.seed("s", {"c": FakeMember(attributes={"n": 1}, tags=("t",))})
    assert server.members("s")["c"] == FakeMember(attributes={"n": 1}, tags=("t",))
    view = (await api.v2("view", params={"name": "s"})).json
    assert (view["nb_ids"], view["display_name"], view["indexing_state"]) == (
        3,
        "Seeded",
        "APPLIED",
    )
    legacy = server.seed("ads", ["idfa"], version="1.0", audience_type="advertising_ids")
    assert (legacy.type, legacy.version) == ("advertising_ids", "1.0")
    reply = await api.v1("PATCH", "1.0", "ads", {"type": "advertising_ids", "ids": [add("x")]})
    assert reply.status == 201
    assert set(server.members("ads", api_key=server.api_key)) == {"idfa", "x"}
    with pytest.raises(ValueError, match=r"1\.0"):
        server.seed("ads", ["y"], version="1.1")
    with pytest.raises(ValueError, match="version"):
        server.seed("z", version="3")


async def test_a_million_members_stay_cheap(server: FakeBatchServer) -> None:
    """A million members are held and snapshotted quickly, sharing one object for bare IDs."""
    started = time.perf_counter()
    server.seed("big", (f"u-{i}" for i in range(1_000_000)))
    members = server.members("big")
    assert len(members) == 1_000_000
    assert members["u-1"] is members["u-999999"]  # one shared bare member
    assert time.perf_counter() - started < 5.0


async def test_a_10000_entry_update_is_handled_quickly(api: Api, server: FakeBatchServer) -> None:
    """Validating and applying 10,000 entries with 5 attributes takes milliseconds, not seconds."""
    await api.create("perf")
    entries = [
        add(f"u-{i}", n=i, plan="gold", ratio=0.5, tag="x", rank=i % 7) for i in range(10_000)
    ]
    elapsed = []
    for _ in range(3):
        reply = await api.update("perf", entries)
        assert reply.status == 202
        elapsed.append(server.requests[-1].elapsed)
    # Generous: ~15 ms is typical on a loaded 2-core machine; this only catches a regression
    # to per-entry regexes or the standard json module.
    assert min(elapsed) < 0.25, elapsed


# -- the standalone runner ----------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_run_fake_server_prints_its_keys_and_stops_on_a_signal(
    http: aiohttp.ClientSession, stop: signal.Signals
) -> None:
    """run_fake_server prints url and keys, serves, and exits 0 on SIGTERM or SIGINT."""
    code = (
        "from batch_audience.testing._serve import run_fake_server; "
        "run_fake_server(port=0, rest_key='r' * 32, api_key='APP', indexing_delay=0.5)"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        info: dict[str, str] = {}
        while len(info) < 4:
            line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
            assert line, "the fake server exited early"
            key, _, value = line.strip().partition(": ")
            info[key] = value
        assert list(info) == ["url", "rest_key", "project_key", "api_key"]
        assert info["rest_key"] == "r" * 32 and info["api_key"] == "APP"
        assert info["project_key"].startswith("project_")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", info["url"])
        headers = {"X-Authorization": info["rest_key"]}
        async with http.post(
            f"{info['url']}/1.1/APP/custom-audience/x", headers=headers, json={}
        ) as resp:
            assert resp.status == 200
        async with http.patch(
            f"{info['url']}/1.1/APP/custom-audience/x", headers=headers, json={"ids": []}
        ) as resp:
            token = (await resp.json())["indexing_token"]
        async with http.get(
            f"{info['url']}/1.1/APP/custom-audience/x",
            headers=headers,
            params={"indexing_token": token},
        ) as resp:
            assert (await resp.json())["indexing_state"] == "IN_PROGRESS"
        process.send_signal(stop)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- chaos mode ---------------------------------------------------------------------------------


async def chaos_kinds(api: Api, count: int) -> list[str | None]:
    """Send ``count`` list requests one after the other; the chaos kind each one drew."""
    server = api.server
    start = len(server.requests)
    for _ in range(count):
        with contextlib.suppress(aiohttp.ClientError):  # a drop
            await api.v2("list", timeout=5)
    return [r.chaos for r in server.requests[start:]]


async def test_chaos_is_seeded_and_hits_about_rate_of_requests(
    api: Api, server: FakeBatchServer
) -> None:
    """The same seed draws the same faults for the same request sequence, at about ``rate``."""
    kinds = ["429", "500", "502", "503", "504", "drop"]
    server.chaos(0.3, seed=7, kinds=kinds, retry_after=(0, 0))
    first = await chaos_kinds(api, 200)
    server.chaos(0.3, seed=7, kinds=kinds, retry_after=(0, 0))
    again = await chaos_kinds(api, 200)
    server.chaos(0.3, seed=8, kinds=kinds, retry_after=(0, 0))
    other = await chaos_kinds(api, 200)
    assert first == again != other
    hits = [kind for kind in first if kind is not None]
    # Binomial(200, 0.3): mean 60, sd 6.5; the seed is fixed, the bound is for readers.
    assert 35 <= len(hits) <= 85
    assert set(hits) == set(kinds)
    for recorded in server.requests[-200:]:
        assert (recorded.fault is None) == (recorded.chaos is None)
        kind = recorded.chaos
        assert recorded.status == (200 if kind is None else 0 if kind == "drop" else int(kind))
    server.chaos(None)
    assert server.chaos_settings is None
    assert await chaos_kinds(api, 20) == [None] * 20


async def test_chaos_weights_filters_and_queued_faults(api: Api, server: FakeBatchServer) -> None:
    """Weights pick the mix, path/method pick the requests, and a queued fault comes first."""
    await api.create("a")
    settings = server.chaos(1.0, seed=1, kinds={"503": 1, "500": 0.001}, path="/audiences/upd")
    assert settings is server.chaos_settings and settings is not None
    assert settings.kinds == (("503", 1.0), ("500", 0.001))
    assert (await api.v2("list")).status == 200  # another path: untouched
    server.fail_next(status=404)
    assert (await api.update("a", [add("x")])).status == 404
    assert server.requests[-1].chaos is None
    statuses = [(await api.update("a", [add("x")])).status for _ in range(20)]
    assert statuses == [503] * 20
    assert server.members("a") == {}
    server.chaos(Chaos(rate=1.0, kinds=["500"], method="get"))
    assert (await api.update("a", [add("x")])).status == 202
    assert (await api.v2("view", params={"name": "a"})).status == 500


async def test_chaos_429_draws_retry_after_in_range(api: Api, server: FakeBatchServer) -> None:
    """A chaos 429 applies nothing and sends Retry-After in seconds, two decimals, in range."""
    await api.create("a")
    server.chaos(1.0, seed=3, kinds=["429"], retry_after=(0.25, 0.75))
    values = []
    for _ in range(30):
        reply = await api.update("a", [add("x")])
        assert (reply.status, reply.code) == (429, "TOO_MANY_REQUESTS")
        values.append(float(reply.headers["Retry-After"]))
        assert server.requests[-1].retry_after == reply.headers["Retry-After"]
    assert all(0.25 <= v <= 0.75 and round(v, 2) == v for v in values)
    assert len(set(values)) > 10
    assert server.members("a") == {}


@pytest.mark.parametrize(
    ("kind", "landed"),
    [pytest.param("drop", False, id="drop"), pytest.param("drop_applied", True, id="applied")],
)
async def test_chaos_drops(api: Api, server: FakeBatchServer, kind: str, landed: bool) -> None:
    """A chaos drop cuts the answer; drop_applied lands the write first."""
    await api.create("a")
    server.chaos(1.0, kinds=[kind])
    with pytest.raises(aiohttp.ClientPayloadError):
        await api.update("a", [add("x")])
    assert set(server.members("a")) == ({"x"} if landed else set())
    last = server.requests[-1]
    assert (last.status, last.chaos, last.fault) == (0, kind, Fault(drop=True, apply=landed))


async def test_chaos_stall_lands_the_write_then_answers_late(
    api: Api, server: FakeBatchServer
) -> None:
    """A chaos stall applies the write at once and answers ``stall`` seconds later."""
    await api.create("a")
    server.chaos(1.0, kinds=["stall"], stall=0.3)
    with pytest.raises(asyncio.TimeoutError):
        await api.v2("update", {"name": "a", "ids": [add("x")]}, timeout=0.1)
    assert set(server.members("a")) == {"x"}  # landed before the client gave up
    while server.in_flight:
        await asyncio.sleep(0.01)
    last = server.requests[-1]
    assert (last.status, last.chaos, last.fault) == (202, "stall", Fault(delay=0.3, apply=True))
    assert last.elapsed >= 0.3


async def read_in_pieces(api: Api, timeout: float) -> tuple[int, float, list[tuple[float, int]]]:
    """Update x; return the status, when the headers came, and (time, size) of each body piece."""
    server = api.server
    started = time.monotonic()
    async with api.http.post(
        server.url + "/2.8/audiences/update",
        headers=api.v2_headers(),
        data=orjson.dumps({"name": "a", "ids": [add("x")]}),
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        headers_at = time.monotonic() - started
        pieces = [
            (time.monotonic() - started, len(piece)) async for piece in resp.content.iter_any()
        ]
        return resp.status, headers_at, pieces


async def test_chaos_slow_body_arrives_in_pieces(api: Api, server: FakeBatchServer) -> None:
    """A slow body sends the headers at once and the body in pieces over ``slow_body`` seconds."""
    await api.create("a")
    server.chaos(1.0, kinds=["slow_body"], slow_body=0.4)
    status, headers_at, pieces = await read_in_pieces(api, timeout=5)
    assert status == 202 and headers_at < 0.2
    assert len(pieces) >= 3
    assert pieces[-1][0] >= 0.4
    assert sum(size for _, size in pieces) == len(b'{"indexing_token":""}') + 32
    assert set(server.members("a")) == {"x"}
    last = server.requests[-1]
    assert (last.chaos, last.fault) == ("slow_body", Fault(slow_body=0.4))


async def test_chaos_stall_body_times_the_client_out_mid_body(
    api: Api, server: FakeBatchServer
) -> None:
    """A stalled body reaches the client's timeout after the headers; the write has landed."""
    await api.create("a")
    server.chaos(1.0, kinds=["stall_body"], stall=0.6)
    with pytest.raises(asyncio.TimeoutError):
        await read_in_pieces(api, timeout=0.2)
    assert set(server.members("a")) == {"x"}
    assert server.requests[-1].fault == Fault(slow_body=0.6)
    # The server writes on into a closed connection without a fuss, and serves the next one.
    await asyncio.sleep(0.6)
    server.chaos(None)
    assert (await api.v2("list")).status == 200


async def test_a_slow_fault_with_a_status(api: Api, server: FakeBatchServer) -> None:
    """slow_body also spreads out an injected error body; Retry-After still comes first."""
    server.fail_next(status=429, retry_after=1, slow_body=0.2)
    started = time.monotonic()
    reply = await api.v2("list")
    assert (reply.status, reply.code, reply.headers["Retry-After"]) == (
        429,
        "TOO_MANY_REQUESTS",
        "1",
    )
    assert time.monotonic() - started >= 0.2


async def test_closing_cuts_a_slow_body_short(http: aiohttp.ClientSession) -> None:
    """Closing the server mid-body ends the connection instead of waiting the body out."""
    fake = FakeBatchServer()
    await fake.start()
    try:
        api = Api(fake, http)
        fake.fail_next(slow_body=30)
        request = asyncio.create_task(api.v2("list", timeout=10))
        while not fake.requests:
            await asyncio.sleep(0.01)
        started = time.monotonic()
    finally:
        await fake.close()
    assert time.monotonic() - started < 5
    with pytest.raises(aiohttp.ClientError):
        await request


async def test_the_log_holds_a_digest_of_each_body(api: Api, server: FakeBatchServer) -> None:
    """RecordedRequest.digest tells the same body sent twice from another body."""
    await api.create("a")
    for ids in ([add("x")], [add("x")], [add("y")]):
        await api.update("a", ids)
    first, second, third = server.requests[-3:]
    assert first.digest == second.digest != third.digest
    assert first.digest is not None and re.fullmatch(r"[0-9a-f]{16}", first.digest)
    await api.v2("list")
    assert server.requests[-1].digest is None


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        pytest.param({"rate": 1.5}, "rate", id="rate-over-one"),
        pytest.param({"rate": -0.1}, "rate", id="negative-rate"),
        pytest.param({"rate": True}, "rate", id="bool-rate"),
        pytest.param({"rate": 0.1, "seed": 1.5}, "seed", id="float-seed"),
        pytest.param({"rate": 0.1, "kinds": []}, "kinds", id="no-kinds"),
        pytest.param({"rate": 0.1, "kinds": "429"}, "kinds", id="kinds-as-str"),
        pytest.param({"rate": 0.1, "kinds": ["418"]}, "418", id="unknown-kind"),
        pytest.param({"rate": 0.1, "kinds": ["429", "429"]}, "repeat", id="repeated-kind"),
        pytest.param({"rate": 0.1, "kinds": {"429": 0}}, "weight", id="zero-weight"),
        pytest.param({"rate": 0.1, "retry_after": (2, 1)}, "retry_after", id="range-reversed"),
        pytest.param({"rate": 0.1, "retry_after": (-1, 1)}, "retry_after", id="range-negative"),
        pytest.param({"rate": 0.1, "stall": -1}, "stall", id="negative-stall"),
        pytest.param({"rate": 0.1, "slow_body": float("inf")}, "slow_body", id="endless-body"),
    ],
)
def test_meaningless_chaos_is_refused(fields: dict[str, Any], match: str) -> None:
    """Chaos settings that could not mean anything raise ValueError naming the field."""
    with pytest.raises(ValueError, match=match):
        Chaos(**fields)


def test_slow_body_cannot_go_with_a_drop() -> None:
    """A dropped connection has no body to send slowly."""
    with pytest.raises(ValueError, match="drop"):
        Fault(drop=True, slow_body=1)


async def test_the_standalone_runner_can_start_in_chaos_mode(
    http: aiohttp.ClientSession,
) -> None:
    """run_fake_server(chaos=...) serves with chaos mode on from the first request."""
    code = (
        "from batch_audience.testing import Chaos; "
        "from batch_audience.testing._serve import run_fake_server; "
        "run_fake_server(rest_key='r' * 32, chaos=Chaos(rate=1.0, kinds=['503']))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        info: dict[str, str] = {}
        while len(info) < 4:
            line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
            assert line, "the fake server exited early"
            key, _, value = line.strip().partition(": ")
            info[key] = value
        async with http.get(f"{info['url']}/1.1/{info['api_key']}/custom-audience") as resp:
            assert resp.status == 503
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("version", ["2.1", "2.9", "2.10", "2.11", "2.12", "2.100"])
async def test_every_2n_version_is_served_alike(api: Api, version: str) -> None:
    """Every 2.N with N >= 1 is served, identically (Batch's pages go up to 2.11)."""
    created = await api.v2("create", {"name": "v", "type": "custom_ids"}, version=version)
    assert created.status == 202
    viewed = await api.v2("view", params={"name": "v"}, version=version)
    assert viewed.status == 200 and viewed.json["name"] == "v"
    assert (await api.v2("remove", {"name": "v"}, version=version)).status == 202


async def test_the_in_progress_spelling_can_be_changed(api: Api, server: FakeBatchServer) -> None:
    """IN_PROCESS spelling changes view and list answers; inspection keeps IN_PROGRESS."""
    assert server.in_progress_state == "IN_PROGRESS"
    server.indexing_delay = 3600
    token = await api.create("s")
    server.in_progress_state = "IN_PROCESS"
    one = await api.v2("view", params={"name": "s", "indexing_token": token})
    assert one.json["indexing_state"] == "IN_PROCESS"
    latest = await api.v2("view", params={"name": "s"})
    assert latest.json["indexing_state"] == "IN_PROCESS"
    listed = await api.v2("list")
    assert listed.json["audiences"][0]["indexing_state"] == "IN_PROCESS"
    assert (await api.v1("POST", "1.1", "t")).status == 200
    assert (await api.v1("PATCH", "1.1", "t", {"ids": [add("x")]})).status == 201
    assert (await api.v1("GET", "1.1", "t")).json["indexing_state"] == "IN_PROCESS"
    assert server.audience("s").token_state(token) == "IN_PROGRESS"
    server.indexing_delay = 0
    server.in_progress_state = "IN_PROGRESS"
    assert (await api.v2("view", params={"name": "s"})).json["indexing_state"] == "IN_PROGRESS"
    with pytest.raises(ValueError, match="in_progress_state"):
        server.in_progress_state = ""
    with pytest.raises(ValueError, match="in_progress_state"):
        FakeBatchServer(in_progress_state=None)  # type: ignore[arg-type]
