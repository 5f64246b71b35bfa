"""Exact request shapes of every route (method, path, query, headers, body), via aioresponses."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aioresponses import aioresponses
from yarl import URL

import batch_audience as ba
from tests.conftest import FAST_RETRY, RecordingSleep

BASE = "https://api.batch.test"
REST = "rest-KEY-0123456789"
PROJECT = "project_abc"
APP = "APPKEY42"
TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def mocked() -> AsyncIterator[aioresponses]:
    """aioresponses intercepting every aiohttp request."""
    with aioresponses() as m:
        yield m


@pytest.fixture
async def v2(sleep: RecordingSleep) -> AsyncIterator[ba.AudienceClient]:
    """A 2.x client aimed at a mocked base URL."""
    async with ba.AudienceClient(REST, PROJECT, base_url=BASE, retry=FAST_RETRY, sleep=sleep) as c:
        yield c


def v1(version: str, sleep: RecordingSleep) -> ba.CustomAudienceClient:
    """A 1.x client aimed at a mocked base URL."""
    return ba.CustomAudienceClient(
        APP, REST, version=version, base_url=BASE, retry=FAST_RETRY, sleep=sleep
    )


def only_call(m: aioresponses) -> tuple[str, URL, dict[str, Any]]:
    """The single request made: method, URL and aiohttp keyword arguments."""
    calls = [
        (method, url, call.kwargs)
        for (method, url), calls_ in m.requests.items()
        for call in calls_
    ]
    assert len(calls) == 1, calls
    return calls[0]


V2_HEADERS = {
    "Authorization": f"Bearer {REST}",
    "X-Batch-Project": PROJECT,
    "Content-Type": "application/json",
}
V1_HEADERS = {"X-Authorization": REST, "Content-Type": "application/json"}


async def test_v2_create(mocked: aioresponses, v2: ba.AudienceClient) -> None:
    """2.x create POSTs name, type and display_name to /2.8/audiences/create."""
    mocked.post(f"{BASE}/2.8/audiences/create", status=202, payload={"indexing_token": TOKEN})
    assert await v2.create("winback", display_name="Win-back Q3") == TOKEN
    method, url, kw = only_call(mocked)
    assert (method, url.path) == ("POST", "/2.8/audiences/create")
    assert kw["headers"] == V2_HEADERS
    assert orjson.loads(kw["data"]) == {
        "name": "winback",
        "type": "custom_ids",
        "display_name": "Win-back Q3",
    }


async def test_v2_view_with_token(mocked: aioresponses, v2: ba.AudienceClient) -> None:
    """2.x view GETs /audiences/view with name and indexing_token in the query."""
    mocked.get(
        re.compile(r".*/2\.8/audiences/view.*"),
        payload={
            "name": "winback",
            "type": "CUSTOM_ID",
            "nb_ids": 2,
            "indexing_state": "APPLIED",
            "created": "2023-08-12T22:30:05Z",
            "updated": "2023-08-12T22:31:05Z",
        },
    )
    info = await v2.view("winback", token=TOKEN)
    method, url, kw = only_call(mocked)
    assert (method, url.path, dict(url.query)) == (
        "GET",
        "/2.8/audiences/view",
        {"name": "winback", "indexing_token": TOKEN},
    )
    assert kw["headers"] == V2_HEADERS
    assert kw["data"] is None
    assert info.indexing_state == ba.IndexingState.APPLIED
    assert info.nb_ids == 2


async def test_v2_list_follows_the_cursor(mocked: aioresponses, v2: ba.AudienceClient) -> None:
    """2.x list sends limit, then from=next_from while has_more."""
    item = {
        "name": "a",
        "type": "CUSTOM_ID",
        "nb_ids": 0,
        "created": "2023-08-12T22:30:05Z",
        "updated": "2023-08-12T22:30:05Z",
    }
    mocked.get(
        f"{BASE}/2.8/audiences/list?limit=2",
        payload={"audiences": [item, item], "count": 3, "has_more": True, "next_from": "CUR"},
    )
    mocked.get(
        f"{BASE}/2.8/audiences/list?limit=2&from=CUR",
        payload={"audiences": [item], "has_more": False},
    )
    names = [info.name async for info in v2.list(page_size=2)]
    assert names == ["a", "a", "a"]
    queries = [dict(url.query) for (_, url) in mocked.requests]
    assert queries == [{"limit": "2"}, {"limit": "2", "from": "CUR"}]


async def test_v2_delete_posts_to_remove(mocked: aioresponses, v2: ba.AudienceClient) -> None:
    """2.x delete is POST /audiences/remove with the name."""
    mocked.post(f"{BASE}/2.8/audiences/remove", status=202, payload={"indexing_token": TOKEN})
    assert await v2.delete("winback") == TOKEN
    _, url, kw = only_call(mocked)
    assert url.path == "/2.8/audiences/remove"
    assert orjson.loads(kw["data"]) == {"name": "winback"}


async def test_v2_add_and_remove_bodies(mocked: aioresponses, v2: ba.AudienceClient) -> None:
    """2.x add sends action=add with typed attributes; remove sends action=remove."""
    mocked.post(
        f"{BASE}/2.8/audiences/update", status=202, payload={"indexing_token": TOKEN}, repeat=True
    )
    from datetime import UTC, datetime

    rec = ba.Record(
        "C-1",
        attributes={
            "score": 3,
            "joined": datetime(2023, 8, 12, 22, 30, 5, tzinfo=UTC),
            "avatar": ba.Url("https://example.com/a.png"),
        },
    )
    report = await v2.add("winback", [rec])
    assert report.tokens == (TOKEN,)
    await v2.remove("winback", ["C-2"])
    bodies = [orjson.loads(c.kwargs["data"]) for cs in mocked.requests.values() for c in cs]
    assert bodies == [
        {
            "name": "winback",
            "ids": [
                {
                    "action": "add",
                    "id": "C-1",
                    "attributes": {
                        "score": 3,
                        "date(joined)": "2023-08-12T22:30:05Z",
                        "url(avatar)": "https://example.com/a.png",
                    },
                }
            ],
        },
        {"name": "winback", "ids": [{"action": "remove", "id": "C-2"}]},
    ]


async def test_v2_replace_body(mocked: aioresponses, v2: ba.AudienceClient) -> None:
    """2.x replace POSTs ids without action to /audiences/replace."""
    mocked.post(f"{BASE}/2.8/audiences/replace", status=202, payload={"indexing_token": TOKEN})
    report = await v2.replace("winback", [{"id": "C-1", "attributes": {"tier": "gold"}}])
    assert report.atomic is True
    _, url, kw = only_call(mocked)
    assert url.path == "/2.8/audiences/replace"
    assert orjson.loads(kw["data"]) == {
        "name": "winback",
        "ids": [{"id": "C-1", "attributes": {"tier": "gold"}}],
    }


async def test_api_version_is_configurable(mocked: aioresponses, sleep: RecordingSleep) -> None:
    """api_version changes the first path segment."""
    mocked.get(re.compile(r".*/2\.11/audiences/view.*"), payload={"name": "a", "type": "CUSTOM_ID"})
    async with ba.AudienceClient(
        REST, PROJECT, base_url=BASE, api_version="2.11", sleep=sleep
    ) as c:
        await c.view("a")
    _, url, _ = only_call(mocked)
    assert url.path == "/2.11/audiences/view"


@pytest.mark.parametrize(("version", "kind"), [("1.0", "custom_ids"), ("1.1", "install_ids")])
async def test_v1_create(
    mocked: aioresponses, sleep: RecordingSleep, version: str, kind: str
) -> None:
    """1.x create POSTs type and description to /{v}/{APP}/custom-audience/{name}."""
    mocked.post(f"{BASE}/{version}/{APP}/custom-audience/vip", payload={})
    async with v1(version, sleep) as c:
        assert await c.create("vip", description="VIPs") is None
    method, url, kw = only_call(mocked)
    assert (method, url.path) == ("POST", f"/{version}/{APP}/custom-audience/vip")
    assert kw["headers"] == V1_HEADERS
    assert orjson.loads(kw["data"]) == {"type": kind, "description": "VIPs"}


async def test_v10_update_names_the_type(mocked: aioresponses, sleep: RecordingSleep) -> None:
    """1.0 PATCH carries the audience type and add/remove entries."""
    mocked.patch(
        f"{BASE}/1.0/{APP}/custom-audience/vip", status=201, payload={"indexing_token": TOKEN}
    )
    async with v1("1.0", sleep) as c:
        await c.add("vip", ["u-1", "u-2"], audience_type="advertising_ids")
    method, _url, kw = only_call(mocked)
    assert method == "PATCH"
    assert orjson.loads(kw["data"]) == {
        "type": "advertising_ids",
        "ids": [{"action": "add", "id": "u-1"}, {"action": "add", "id": "u-2"}],
    }


async def test_v11_update_and_replace(mocked: aioresponses, sleep: RecordingSleep) -> None:
    """1.1 PATCH sends ids with attributes and tags; PUT replaces."""
    mocked.patch(
        f"{BASE}/1.1/{APP}/custom-audience/vip", status=201, payload={"indexing_token": TOKEN}
    )
    mocked.put(
        f"{BASE}/1.1/{APP}/custom-audience/vip", status=201, payload={"indexing_token": TOKEN}
    )
    async with v1("1.1", sleep) as c:
        await c.add("vip", [ba.Record("I-1", attributes={"tier": 3}, tags=["vip"])])
        await c.replace("vip", ["I-2"])
    sent = [
        (m, orjson.loads(c.kwargs["data"])) for (m, _), cs in mocked.requests.items() for c in cs
    ]
    assert sent == [
        (
            "PATCH",
            {"ids": [{"action": "add", "id": "I-1", "attributes": {"tier": 3}, "tags": ["vip"]}]},
        ),
        ("PUT", {"ids": [{"id": "I-2"}]}),
    ]


async def test_v1_view_list_delete(mocked: aioresponses, sleep: RecordingSleep) -> None:
    """1.x view takes indexing_token, list pages with from/limit, delete is DELETE."""
    item = {
        "name": "vip",
        "type": "install_ids",
        "description": "d",
        "nb_ids": 1,
        "created": "2018-06-29T14:59:03",
        "updated": "2018-06-29T15:07:32",
        "indexing_state": "APPLIED",
    }
    mocked.get(f"{BASE}/1.1/{APP}/custom-audience/vip?indexing_token={TOKEN}", payload=item)
    mocked.get(
        f"{BASE}/1.1/{APP}/custom-audience?from=0&limit=1", payload={"custom_audiences": [item]}
    )
    mocked.get(f"{BASE}/1.1/{APP}/custom-audience?from=1&limit=1", payload={"custom_audiences": []})
    mocked.delete(f"{BASE}/1.1/{APP}/custom-audience/vip", payload={})
    async with v1("1.1", sleep) as c:
        info = await c.view("vip", token=TOKEN)
        listed = [i.name async for i in c.list(page_size=1)]
        assert await c.delete("vip") is None
    assert info.created is not None and info.created.tzinfo is not None
    assert info.description == "d"
    assert listed == ["vip"]
    methods = [m for (m, _), kws in mocked.requests.items() for _ in kws]
    assert methods == ["GET", "GET", "GET", "DELETE"]
