"""The fake server's pure state model: validation rules, tokens, paging, members; no event loop."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from batch_audience.testing import FakeAudience, FakeMember, FakeToken, _state
from batch_audience.testing._state import FakeApiError, FakeState, check_name, parse_body


class Clock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class WallClock:
    """A wall clock frozen at one second, so that timestamps tie."""

    def __init__(self) -> None:
        self.now = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Tokens:
    """Predictable tokens: t0000…, t0001…, 32 characters each."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"{self.count:032x}"


@pytest.fixture
def clock() -> Clock:
    """The state's monotonic clock."""
    return Clock()


@pytest.fixture
def wall() -> WallClock:
    """The state's wall clock."""
    return WallClock()


@pytest.fixture
def state(clock: Clock, wall: WallClock) -> FakeState:
    """A state with hand-moved clocks and predictable tokens."""
    return FakeState(clock=clock, wall_clock=wall, new_token=Tokens())


def add(uid: str, **attributes: Any) -> dict[str, Any]:
    """An add entry."""
    entry: dict[str, Any] = {"action": "add", "id": uid}
    if attributes:
        entry["attributes"] = attributes
    return entry


def error(call: Any) -> FakeApiError:
    """Run a state operation that must fail; return its error."""
    with pytest.raises(FakeApiError) as caught:
        call()
    return caught.value


def token_of(answer: tuple[int, Any]) -> str:
    """The token of a write's answer."""
    return str(answer[1]["indexing_token"])


# -- bodies and names ---------------------------------------------------------------------------


def test_parse_body() -> None:
    """An empty body reads as {}; broken JSON is MALFORMED_JSON_BODY."""
    assert parse_body(b"") == {}
    assert parse_body(b"  \n") == {}
    assert parse_body(b'{"a": [1]}') == {"a": [1]}
    err = error(lambda: parse_body(b"{nope"))
    assert (err.status, err.error_code) == (400, "MALFORMED_JSON_BODY")
    assert err.payload()["error_code"] == "MALFORMED_JSON_BODY"
    assert str(err).startswith("HTTP 400 MALFORMED_JSON_BODY: ")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("A-z_0-9", True),
        ("x" * 255, True),
        ("x" * 256, False),
        ("", False),
        ("with space", False),
        ("trailing-newline\n", False),
        ("é", False),
        ("a/b", False),
    ],
)
def test_audience_names(name: str, ok: bool) -> None:
    """Names match ^[A-Za-z0-9_-]{1,255}$ exactly, with no trailing newline slipping through."""
    if ok:
        assert check_name(name) == name
    else:
        assert error(lambda: check_name(name)).error_code == "MALFORMED_PARAMETER"


def test_long_bad_names_are_shortened_in_messages() -> None:
    """A long bad name is cut in the error message."""
    message = error(lambda: check_name("!" * 1000)).message
    assert len(message) < 200


# -- attribute rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("score", _state._PLAIN),
        ("a_1", _state._PLAIN),
        ("x" * 30, _state._PLAIN),
        ("date(joined)", _state._DATE),
        ("url(avatar)", _state._URL),
        ("x" * 31, _state._BAD),
        ("Score", _state._BAD),
        ("date(joined", _state._BAD),
        ("joined)", _state._BAD),
        ("date()", _state._BAD),
        ("time(x)", _state._BAD),
        ("url(Avatar)", _state._BAD),
        ("score\n", _state._BAD),
        ("", _state._BAD),
    ],
)
def test_attribute_keys_are_classified_and_cached(key: str, kind: int) -> None:
    """Keys are plain, date(...), url(...) or bad; each verdict is kept for the next entry."""
    _state._key_kinds.pop(key, None)
    assert _state._classify_key(key) == kind
    assert _state._key_kinds[key] == kind


def test_the_key_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream of distinct keys cannot grow the verdict cache past its limit."""
    monkeypatch.setattr(_state, "_KEY_CACHE_LIMIT", 10)
    _state._key_kinds.clear()
    for i in range(25):
        _state._classify_key(f"k{i}")
    assert len(_state._key_kinds) <= 10


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2023-08-12T22:30:05Z", True),
        ("2023-08-12T22:30:05", True),
        ("2023-08-12T22:30:05.123+02:00", True),
        ("2023-08-12", True),
        ("2023-13-12T22:30:05Z", False),
        ("12/08/2023", False),
        ("", False),
    ],
)
def test_date_values(value: str, ok: bool) -> None:
    """date(...) values are ISO-8601 strings that datetime.fromisoformat reads (Z allowed)."""
    assert _state._is_date(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("https://example.com/a.png", True),
        ("http://e.com", True),
        ("HTTPS://E.COM/x", True),
        ("https://e.com/" + "a" * (2048 - 14), True),
        ("https://e.com/" + "a" * (2049 - 14), False),
        ("ftp://e.com/x", False),
        ("https:///path", False),
        ("example.com", False),
        ("https://e.com/a b", False),
        ("http://[::1", False),
    ],
)
def test_url_values(value: str, ok: bool) -> None:
    """url(...) values are absolute http(s) URLs of at most 2048 characters."""
    assert _state._is_url(value) is ok


def test_entry_rules_by_generation() -> None:
    """Each generation and operation reads the fields its spec section lists, and no others."""
    body = {
        "ids": [
            {"action": "add", "id": "a", "attributes": {"n": 1}, "tags": ["t"]},
            {"action": "remove", "id": "b", "attributes": {"Bad": None}, "tags": ["X"]},
        ]
    }
    v10, removes = _state.collect_entries(body, _state._V10_UPDATE)
    assert (v10, removes) == ({"a": None, "b": _state._REMOVE}, True)
    v11, _ = _state.collect_entries(body, _state._V11_UPDATE)
    assert v11 == {"a": ({"n": 1}, ("t",)), "b": _state._REMOVE}
    err = error(lambda: _state.collect_entries(body, _state._V2_UPDATE))
    assert "ids[1]" in err.message and "only allowed with action 'add'" in err.message
    replace = {"ids": [{"id": "a", "attributes": {"n": 1}, "tags": ["t"]}, {"id": "c"}]}
    assert _state.collect_entries(replace, _state._V2_REPLACE) == (
        {"a": {"n": 1}, "c": None},
        False,
    )
    assert _state.collect_entries(replace, _state._V11_REPLACE)[0]["a"] == ({"n": 1}, ("t",))


def test_empty_attributes_and_tags_store_nothing() -> None:
    """An add with {} attributes and [] tags is stored as a bare ID."""
    body = {"ids": [{"action": "add", "id": "a", "attributes": {}, "tags": []}]}
    assert _state.collect_entries(body, _state._V11_UPDATE)[0] == {"a": None}


def test_the_fast_path_and_the_full_check_agree() -> None:
    """Entries that leave the fast path (dates, arrays, new keys) end up stored the same way."""
    body = {
        "ids": [
            add("a", n=1, s="x"),
            add("b", **{"date(d)": "2024-01-01", "arr": ["x"]}),
            add("c", brand_new_key=2.5),
        ]
    }
    collapsed, _ = _state.collect_entries(body, _state._V2_UPDATE)
    assert collapsed == {
        "a": {"n": 1, "s": "x"},
        "b": {"date(d)": "2024-01-01", "arr": ["x"]},
        "c": {"brand_new_key": 2.5},
    }


# -- operations ---------------------------------------------------------------------------------


def test_v2_create_and_view_shapes(state: FakeState, wall: WallClock) -> None:
    """2.x create answers 202 with a token; view reports the documented fields."""
    status, body = state.v2_create("p", {"name": "a", "type": "custom_ids", "display_name": "A"})
    assert (status, list(body)) == (202, ["indexing_token"])
    wall.now += timedelta(seconds=5)
    state.v2_update("p", {"name": "a", "ids": [add("x")]})
    assert state.v2_view("p", {"name": "a"}) == (
        200,
        {
            "name": "a",
            "display_name": "A",
            "type": "CUSTOM_ID",
            "nb_ids": 1,
            "indexing_state": "APPLIED",
            "created": "2024-01-02T03:04:05Z",
            "updated": "2024-01-02T03:04:10Z",
        },
    )


def test_v1_view_and_list_shapes(state: FakeState) -> None:
    """1.x timestamps have no zone; description is always present."""
    assert state.v1_create("app", "1.0", "a", {"type": "custom_ids"}) == (200, {})
    _, view = state.v1_view("app", "1.0", "a", {})
    assert view == {
        "name": "a",
        "type": "custom_ids",
        "description": "",
        "created": "2024-01-02T03:04:05",
        "updated": "2024-01-02T03:04:05",
        "nb_ids": 0,
        "indexing_state": "APPLIED",
    }
    assert state.v1_list("app", "1.0", {}) == (
        200,
        {
            "custom_audiences": [
                {
                    "name": "a",
                    "type": "custom_ids",
                    "description": "",
                    "nb_ids": 0,
                    "created": "2024-01-02T03:04:05",
                    "updated": "2024-01-02T03:04:05",
                }
            ]
        },
    )


def test_namespaces_are_separate(state: FakeState) -> None:
    """Apps and projects each hold their own audiences; 1.x and 2.x never meet."""
    state.v2_create("p1", {"name": "a", "type": "custom_ids"})
    state.v2_create("p2", {"name": "a", "type": "custom_ids"})
    state.v1_create("app", "1.1", "a", {})
    assert state.find("a", project_key="p1") is not state.find("a", project_key="p2")
    assert state.find("a", api_key="app") is not None
    assert state.find("a", api_key="other") is None
    assert error(lambda: state.v2_view("p3", {"name": "a"})).error_code == "NOT_FOUND"
    assert [a.name for a in state.all(project_key="p1")] == ["a"]
    assert state.all(project_key="nope") == []


def test_token_lifecycle_follows_the_clock(state: FakeState, clock: Clock) -> None:
    """A token is IN_PROGRESS for indexing_delay seconds after its issue, then APPLIED."""
    state.v2_create("p", {"name": "a", "type": "custom_ids"})
    state.indexing_delay = 2.0
    token = token_of(state.v2_update("p", {"name": "a", "ids": [add("x")]}))
    audience = state.find("a", project_key="p")
    assert audience is not None
    assert audience.tokens[token] == FakeToken(
        value=token, operation="update", seq=1, issued=100.0, ready_at=102.0
    )
    view = state.v2_view("p", {"name": "a", "indexing_token": token})[1]
    assert view["indexing_state"] == "IN_PROGRESS"
    clock.now = 101.999
    assert audience.token_state(token) == "IN_PROGRESS"
    clock.now = 102.0
    assert audience.token_state(token) == "APPLIED"
    assert audience.token_state(token, now=50.0) == "IN_PROGRESS"
    with pytest.raises(KeyError):
        audience.token_state("f" * 32)


def test_replaced_is_2x_only(state: FakeState) -> None:
    """A 2.x replace overtakes earlier tokens; a 1.1 replace leaves them APPLIED."""
    state.v2_create("p", {"name": "a", "type": "custom_ids"})
    before = token_of(state.v2_update("p", {"name": "a", "ids": [add("x")]}))
    replace = token_of(state.v2_replace("p", {"name": "a", "ids": [{"id": "y"}]}))
    audience = state.find("a", project_key="p")
    assert audience is not None
    assert (audience.token_state(before), audience.token_state(replace)) == ("REPLACED", "APPLIED")
    again = token_of(state.v2_replace("p", {"name": "a", "ids": []}))
    assert audience.token_state(replace) == "REPLACED"
    assert audience.token_state(again) == "APPLIED"
    assert audience.nb_ids == 0

    state.v1_create("app", "1.1", "i", {})
    old = token_of(state.v1_update("app", "1.1", "i", {"ids": [add("x")]}))
    state.v1_replace("app", "1.1", "i", {"ids": [{"id": "y"}]})
    legacy = state.find("i", api_key="app")
    assert legacy is not None and legacy.token_state(old) == "APPLIED"


def test_the_same_second_sorts_by_creation_order(state: FakeState) -> None:
    """Audiences created within one second still list newest first, in a fixed order."""
    for name in ("b", "a", "c"):
        state.v2_create("p", {"name": name, "type": "custom_ids"})
        state.v1_create("app", "1.0", name, {"type": "custom_ids"})
    names = [a["name"] for a in state.v2_list("p", {})[1]["audiences"]]
    assert names == ["c", "a", "b"]
    v1_names = [a["name"] for a in state.v1_list("app", "1.0", {})[1]["custom_audiences"]]
    assert v1_names == ["c", "a", "b"]


def test_cursors_survive_deletions_between_pages(state: FakeState) -> None:
    """A 2.x cursor keeps its place when audiences are removed or created between pages."""
    for i in range(6):
        state.v2_create("p", {"name": f"a{i}", "type": "custom_ids"})
    first = state.v2_list("p", {"limit": "2"})[1]
    assert [a["name"] for a in first["audiences"]] == ["a5", "a4"]
    state.v2_remove("p", {"name": "a3"})
    state.v2_create("p", {"name": "late", "type": "custom_ids"})
    second = state.v2_list("p", {"limit": "2", "from": first["next_from"]})[1]
    assert [a["name"] for a in second["audiences"]] == ["a2", "a1"]
    third = state.v2_list("p", {"limit": "2", "from": second["next_from"]})[1]
    assert [a["name"] for a in third["audiences"]] == ["a0"]
    assert third["has_more"] is False
    # A cursor belongs to its project.
    other = error(lambda: state.v2_list("q", {"from": first["next_from"]}))
    assert other.error_code == "MALFORMED_PARAMETER"


def test_remove_forgets_the_audience(state: FakeState) -> None:
    """2.x remove answers a token and the name is free again afterwards."""
    state.v2_create("p", {"name": "a", "type": "custom_ids"})
    status, body = state.v2_remove("p", {"name": "a"})
    assert status == 202 and len(body["indexing_token"]) == 32
    assert state.find("a", project_key="p") is None
    assert state.v2_create("p", {"name": "a", "type": "custom_ids"})[0] == 202


def test_v1_delete_frees_the_name(state: FakeState) -> None:
    """1.x delete answers 200 {} and forgets the audience."""
    state.v1_create("app", "1.1", "a", {"description": "d"})
    assert state.v1_delete("app", "1.1", "a") == (200, {})
    assert error(lambda: state.v1_view("app", "1.1", "a", {})).error_code == "ROUTE_NOT_FOUND"


def test_errors_carry_status_and_code(state: FakeState) -> None:
    """Each refusal maps to its spec §6.2 status and symbolic code."""
    state.v1_create("app", "1.1", "inst", {})
    cases = [
        (lambda: state.v1_view("app", "1.0", "inst", {}), 403, "API_MISUSE"),
        (lambda: state.v1_view("app", "1.1", "ghost", {}), 404, "ROUTE_NOT_FOUND"),
        (lambda: state.v2_update("p", {"name": "ghost", "ids": []}), 404, "NOT_FOUND"),
        (lambda: state.v2_update("p", {"ids": []}), 400, "MISSING_PARAMETER"),
        (lambda: state.v1_create("app", "1.1", "inst", {}), 400, "MALFORMED_PARAMETER"),
        (lambda: state.v1_update("app", "1.1", "inst", []), 400, "MALFORMED_PARAMETER"),
        # An Arabic-Indic digit one: isdigit() says yes, the rule says ASCII digits only.
        (lambda: state.v1_list("app", "1.1", {"limit": "\u0661"}), 400, "MALFORMED_PARAMETER"),
    ]
    for call, status, code in cases:
        err = error(call)
        assert (err.status, err.error_code) == (status, code), err


# -- members and inspection ---------------------------------------------------------------------


def test_members_snapshot(state: FakeState) -> None:
    """members builds FakeMember objects; bare IDs share one immutable member."""
    state.v1_create("app", "1.1", "i", {})
    state.v1_update(
        "app",
        "1.1",
        "i",
        {"ids": [add("a"), add("b"), add("c", n=1) | {"tags": ["t"]}, add("d", s="x")]},
    )
    audience = state.find("i", api_key="app")
    assert isinstance(audience, FakeAudience)
    members = audience.members
    assert members["a"] is members["b"]
    assert members["c"] == FakeMember(attributes={"n": 1}, tags=("t",))
    assert members["d"] == FakeMember(attributes={"s": "x"})
    assert audience.member_ids == frozenset("abcd")


def test_member_attributes_are_read_only_but_copyable() -> None:
    """Inspected attributes refuse writes; copies, deep copies and pickles are plain dicts."""
    member = _state._member({"n": 1})
    for write in (
        lambda: member.attributes.__setitem__("n", 2),
        lambda: member.attributes.pop("n"),
        lambda: member.attributes.clear(),
        lambda: member.attributes.setdefault("m", 1),
    ):
        with pytest.raises(TypeError, match="read-only"):
            write()
    assert copy.copy(member.attributes) == {"n": 1}
    assert type(copy.deepcopy(member.attributes)) is dict
    assert pickle.loads(pickle.dumps(member)) == member
    assert _state._member(None).attributes == {}


def test_seed(state: FakeState) -> None:
    """seed creates what is missing and writes members directly, with no token."""
    audience = state.seed("s", ["a", "b"], version="2", key="p")
    assert (audience.nb_ids, audience.tokens, audience.type) == (2, {}, "CUSTOM_ID")
    state.seed("s", {"c": FakeMember(attributes={"n": 1})}, version="2", key="p")
    assert audience.members["c"].attributes == {"n": 1}
    legacy = state.seed("i", [], version="1.1", key="app", description="d")
    assert (legacy.type, legacy.description) == ("install_ids", "d")
    with pytest.raises(ValueError, match="created through"):
        state.seed("i", [], version="1.0", key="app")
    with pytest.raises(FakeApiError):
        state.seed("bad name", [], version="2", key="p")
