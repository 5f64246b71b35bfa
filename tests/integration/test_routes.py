"""Every route of every API generation against the fake server over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import batch_audience as ba
from batch_audience.testing import FakeBatchServer
from tests.conftest import RecordingSleep, make_v1_client


async def test_v2_lifecycle(client: ba.AudienceClient, fake_server: FakeBatchServer) -> None:
    """2.x create, add, view, replace, remove members and delete end in the expected states."""
    token = await client.create("winback", display_name="Win-back Q3")
    assert token is not None and len(token) == 32
    info = await client.view("winback")
    assert (info.name, info.type, info.nb_ids, info.display_name) == (
        "winback",
        "CUSTOM_ID",
        0,
        "Win-back Q3",
    )
    assert info.created is not None and info.created.tzinfo is not None

    report = await client.add("winback", [ba.Record("C-1", attributes={"score": 3}), "C-2"])
    assert (report.records, report.requests, len(report.tokens)) == (2, 1, 1)
    assert set(fake_server.members("winback")) == {"C-1", "C-2"}
    assert fake_server.members("winback")["C-1"].attributes == {"score": 3}

    view = await client.view("winback", token=report.tokens[0])
    assert view.indexing_state == ba.IndexingState.APPLIED
    assert view.nb_ids == 2

    await client.remove("winback", ["C-1"])
    assert set(fake_server.members("winback")) == {"C-2"}

    replaced = await client.replace("winback", ["C-9"])
    assert replaced.atomic
    assert set(fake_server.members("winback")) == {"C-9"}
    # The token of the earlier add now reports REPLACED.
    assert (
        await client.view("winback", token=report.tokens[0])
    ).indexing_state == ba.IndexingState.REPLACED

    assert isinstance(await client.delete("winback"), str)
    with pytest.raises(ba.NotFoundError) as caught:
        await client.view("winback")
    assert caught.value.error_code == "NOT_FOUND"


async def test_v2_list_pages_through_every_audience(client: ba.AudienceClient) -> None:
    """2.x list follows next_from across pages and returns every audience, newest first."""
    names = [f"aud_{i:02d}" for i in range(7)]
    for name in names:
        await client.create(name)
    listed = [info.name async for info in client.list(page_size=3)]
    assert listed == list(reversed(names))


@pytest.mark.parametrize("version", ["2.1", "2.4", "2.8", "2.10", "2.11", "2.99"])
async def test_the_client_sends_the_api_version_it_is_given(
    fake_server: FakeBatchServer, sleep: RecordingSleep, version: str
) -> None:
    """api_version="2.11" reaches /2.11/audiences/...; the fake serves every 2.N (N >= 1)."""
    async with ba.AudienceClient(
        fake_server.rest_key,
        fake_server.project_key,
        base_url=fake_server.url,
        api_version=version,
        sleep=sleep,
    ) as c:
        assert c.api_version == version
        await c.create("versioned")
        await c.add("versioned", ["a"])
        assert (await c.view("versioned")).nb_ids == 1
        assert [i.name async for i in c.list()] == ["versioned"]
        await c.delete("versioned")
    paths = {r.path for r in fake_server.requests}
    assert paths == {
        f"/{version}/audiences/{action}"
        for action in ("create", "update", "view", "list", "remove")
    }
    assert {r.status // 100 for r in fake_server.requests} == {2}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"audiences": [], "has_more": true}', id="no-cursor"),
        pytest.param(b'{"audiences": [], "has_more": true, "next_from": ""}', id="empty-cursor"),
        pytest.param(b'{"audiences": [], "has_more": true, "next_from": null}', id="null-cursor"),
    ],
)
async def test_a_list_page_with_more_but_no_cursor_is_an_error(
    client: ba.AudienceClient, fake_server: FakeBatchServer, body: bytes
) -> None:
    """has_more without next_from would end the list silently part-way: TransportError."""
    for name in ("a", "b", "c"):
        await client.create(name)
    listed: list[str] = []

    async def collect() -> None:
        async for info in client.list(page_size=2):
            listed.append(info.name)
            if len(listed) == 2:
                # The real first page said "more"; the second says it too, but not where.
                fake_server.fail_next(status=200, body=body, path="/audiences/list")

    with pytest.raises(ba.TransportError, match="no cursor"):
        await collect()
    assert listed == ["c", "b"]
    assert [r.status for r in fake_server.requests if r.path.endswith("/list")] == [200, 200]


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_v1_lifecycle(
    fake_server: FakeBatchServer, sleep: RecordingSleep, version: str
) -> None:
    """1.x create, add, view, remove, list and delete work against the fake."""
    async with make_v1_client(fake_server, version, sleep) as c:
        assert await c.create("vip", description="VIPs") is None
        report = await c.add("vip", ["a", "b", "c"])
        assert report.records == 3
        members = fake_server.members("vip", api_key=fake_server.api_key)
        assert set(members) == {"a", "b", "c"}
        await c.remove("vip", ["b"])
        info = await c.view("vip", token=report.tokens[0])
        assert (info.nb_ids, info.description) == (2, "VIPs")
        assert info.indexing_state == ba.IndexingState.APPLIED
        assert info.type == ("custom_ids" if version == "1.0" else "install_ids")
        assert info.updated is not None and info.updated.tzinfo == UTC
        assert [i.name async for i in c.list(page_size=1)] == ["vip"]
        await c.delete("vip")
        with pytest.raises(ba.NotFoundError) as caught:
            await c.view("vip")
        assert (caught.value.error_code, caught.value.numeric_code) == ("ROUTE_NOT_FOUND", 20)


async def test_v1_list_pages_by_offset(fake_server: FakeBatchServer, sleep: RecordingSleep) -> None:
    """1.x list pages with from/limit until a short page."""
    async with make_v1_client(fake_server, "1.0", sleep) as c:
        for i in range(5):
            await c.create(f"a{i}")
        assert [i.name async for i in c.list(page_size=2)] == ["a4", "a3", "a2", "a1", "a0"]
        assert [i.name async for i in c.list(page_size=5)] == ["a4", "a3", "a2", "a1", "a0"]


async def test_v11_attributes_tags_and_replace(
    client_v11: ba.CustomAudienceClient, fake_server: FakeBatchServer
) -> None:
    """1.1 sends typed attributes and tags, and PUT replace installs exactly the given members."""
    await client_v11.create("inst")
    when = datetime(2024, 1, 2, 10, 0, tzinfo=UTC)
    await client_v11.add(
        "inst", [ba.Record("I-1", attributes={"tier": 3, "last_seen": when}, tags=["vip"])]
    )
    member = fake_server.members("inst", api_key=fake_server.api_key)["I-1"]
    assert member.attributes == {"tier": 3, "date(last_seen)": "2024-01-02T10:00:00Z"}
    assert member.tags == ("vip",)
    await client_v11.replace("inst", ["I-2", "I-3"])
    assert set(fake_server.members("inst", api_key=fake_server.api_key)) == {"I-2", "I-3"}


async def test_v10_upload_learns_the_audience_type(
    client_v10: ba.CustomAudienceClient, fake_server: FakeBatchServer
) -> None:
    """A 1.0 upload looks the audience type up once when not given, then PATCHes with it."""
    await client_v10.create("ads", audience_type="advertising_ids")
    await client_v10.add("ads", ["idfa-1"])
    assert set(fake_server.members("ads", api_key=fake_server.api_key)) == {"idfa-1"}
    methods = [r.method for r in fake_server.requests]
    assert methods == ["POST", "GET", "PATCH"]


async def test_v10_has_no_replace(
    client_v10: ba.CustomAudienceClient, fake_server: FakeBatchServer
) -> None:
    """1.0 replace raises UnsupportedOperation before any request."""
    with pytest.raises(ba.UnsupportedOperation, match=r"1\.0"):
        await client_v10.replace("x", ["a"])
    assert fake_server.requests == []


async def test_wrong_generation_route_is_api_misuse(
    fake_server: FakeBatchServer, sleep: RecordingSleep
) -> None:
    """A 1.0 call on an audience created through 1.1 answers 403 API_MISUSE."""
    async with (
        make_v1_client(fake_server, "1.1", sleep) as c11,
        make_v1_client(fake_server, "1.0", sleep) as c10,
    ):
        await c11.create("inst")
        with pytest.raises(ba.ForbiddenError) as caught:
            await c10.view("inst")
    assert (caught.value.status, caught.value.error_code, caught.value.numeric_code) == (
        403,
        "API_MISUSE",
        12,
    )
