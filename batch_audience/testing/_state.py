"""The fake Batch server's state model (spec §8): namespaces, audiences, members and tokens.

Pure: no aiohttp, no I/O, no event loop. Each operation takes what the HTTP layer parsed
(version, name, query, JSON body) and returns ``(status, payload)``, or raises
``FakeApiError`` carrying the spec §6 error. Every request is validated in full before
anything is applied, so a refused request changes nothing.

Members are kept lean because tests hold a million of them: an ID maps to ``None`` (no
attributes, no tags), to its attributes dict as decoded from the body, or (1.1 tags only) to
an ``(attributes, tags)`` tuple; ``FakeMember`` objects are only built on inspection. No
per-member container is added on purpose: a dict of numbers and strings is not tracked by
the garbage collector, while a tuple per member would be, and the first collection after a
big upload would then walk every one of them with the event loop held.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, NoReturn, TypeAlias
from urllib.parse import urlsplit

import attrs
import orjson

__all__ = [
    "FakeApiError",
    "FakeAudience",
    "FakeMember",
    "FakeState",
    "FakeToken",
    "parse_body",
]

# Limits (spec §2.2, §2.3); the string and URL bounds are the fake's generous [decision].
MAX_NAME_LENGTH: Final = 255
MAX_IDS: Final = 10_000
MAX_ATTRIBUTES: Final = 15
MAX_STRING_LENGTH: Final = 300  # characters
MAX_URL_LENGTH: Final = 2048  # characters
MAX_PAGE_SIZE: Final = 100
DEFAULT_PAGE_SIZE: Final = 10

IN_PROGRESS: Final = "IN_PROGRESS"
APPLIED: Final = "APPLIED"
REPLACED: Final = "REPLACED"

# 2.x read routes report the type in this form; create takes "custom_ids" (spec §5.3).
V2_TYPE: Final = "CUSTOM_ID"
V10_TYPES: Final = ("custom_ids", "advertising_ids")
V11_TYPE: Final = "install_ids"

_NAME_RULE: Final = "^[A-Za-z0-9_-]{1,255}$"
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,255}")
_KEY_RULE: Final = r"^((date|url)\()?[a-z0-9_]{1,30}\)?$ with balanced parentheses"
# fullmatch, never match with "$": "$" also matches before a trailing newline.
_KEY: Final = re.compile(r"(?:(date|url)\([a-z0-9_]{1,30}\)|[a-z0-9_]{1,30})")

# Attribute-key verdicts: the same few keys repeat across millions of entries, so each key
# is classified once. Bounded so that a stream of junk keys cannot grow it forever.
_PLAIN: Final = 0
_DATE: Final = 1
_URL: Final = 2
_BAD: Final = 3
_KEY_CACHE_LIMIT: Final = 4096
_key_kinds: dict[str, int] = {}

# An internal member: None for a bare ID, its attributes, or (attributes or None, tags).
_Entry: TypeAlias = "dict[str, Any] | tuple[dict[str, Any] | None, tuple[str, ...]] | None"
# Marks a remove in the collapsed view of one request's entries.
_REMOVE: Final[Any] = object()
_MISSING: Final[Any] = object()


class FakeApiError(Exception):
    """An error answer of the fake: HTTP status, Batch's symbolic code and a message."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        self.status = status
        self.error_code = error_code
        self.message = message
        super().__init__(status, error_code, message)

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.error_code}: {self.message}"

    def payload(self) -> dict[str, str]:
        """The spec §6.1 error body."""
        return {"error_code": self.error_code, "error_message": self.message}


def _malformed(message: str) -> NoReturn:
    raise FakeApiError(400, "MALFORMED_PARAMETER", message)


def _missing(message: str) -> NoReturn:
    raise FakeApiError(400, "MISSING_PARAMETER", message)


def parse_body(raw: bytes) -> Any:
    """Decode a request body; an empty body reads as ``{}`` (MALFORMED_JSON_BODY if broken)."""
    if not raw or raw.isspace():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FakeApiError(
            400, "MALFORMED_JSON_BODY", f"the body is not valid JSON: {exc}"
        ) from None


class _ReadOnlyDict(dict[str, Any]):
    """The attributes of an inspected member: a snapshot, so writing to it is refused."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("FakeMember.attributes is a read-only snapshot; use FakeBatchServer.seed")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        # copy/pickle would refill the copy through __setitem__; hand them a plain dict.
        return dict, (dict(self),)


_NO_ATTRIBUTES: Final = _ReadOnlyDict()


@attrs.frozen(slots=True)
class FakeMember:
    """One member of a fake audience: attributes and tags exactly as received on the wire."""

    attributes: dict[str, Any] = attrs.field(factory=dict)
    tags: tuple[str, ...] = ()


# Every bare ID shares this one; it is immutable, so sharing is safe.
_BARE_MEMBER: Final = FakeMember(attributes=_NO_ATTRIBUTES, tags=())


def _member(entry: _Entry) -> FakeMember:
    if entry is None:
        return _BARE_MEMBER
    if isinstance(entry, dict):
        return FakeMember(attributes=_ReadOnlyDict(entry), tags=())
    attributes, tags = entry
    return FakeMember(
        attributes=_ReadOnlyDict(attributes) if attributes else _NO_ATTRIBUTES, tags=tags
    )


def _entry(attributes: dict[str, Any] | None, tags: tuple[str, ...]) -> _Entry:
    if tags:
        return (attributes, tags)
    return attributes or None


@attrs.frozen(slots=True)
class FakeToken:
    """An indexing token: the write that issued it, its order and when it counts as applied."""

    value: str
    operation: str  # create, update, replace or remove
    seq: int  # issue order within the audience
    issued: float  # time.monotonic() at issue
    ready_at: float  # time.monotonic() from which it is APPLIED


class FakeAudience:
    """One audience held by the fake server: identity, members, timestamps and tokens."""

    __slots__ = (
        "_clock",
        "_latest",
        "_members",
        "_replaced_below",
        "_tokens",
        "created",
        "description",
        "display_name",
        "name",
        "seq",
        "type",
        "updated",
        "version",
    )

    def __init__(
        self,
        *,
        name: str,
        version: str,
        type: str,
        created: datetime,
        seq: int,
        description: str | None = None,
        display_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        # "1.0", "1.1" or "2": the API generation that created it.
        self.version = version
        # As view reports it: "CUSTOM_ID" (2.x), "custom_ids"/"advertising_ids"/"install_ids".
        self.type = type
        self.description = description  # 1.x
        self.display_name = display_name  # 2.x
        self.created = created
        self.updated = created
        # Creation order within its namespace: lists sort on it, so order is deterministic
        # even for audiences created within the same second.
        self.seq = seq
        self._clock = clock
        self._members: dict[str, _Entry] = {}
        self._tokens: dict[str, FakeToken] = {}
        self._latest: FakeToken | None = None
        # Tokens whose seq is below this were overtaken by a replace (2.x only).
        self._replaced_below = -1

    def __repr__(self) -> str:
        return (
            f"FakeAudience(name={self.name!r}, version={self.version!r}, type={self.type!r}, "
            f"nb_ids={len(self._members)}, tokens={len(self._tokens)})"
        )

    @property
    def members(self) -> dict[str, FakeMember]:
        """A snapshot of the members: ID to FakeMember (read-only attributes)."""
        bare = _BARE_MEMBER
        member = _member
        # copy() is one C call, so a server thread writing meanwhile cannot break the loop.
        entries = self._members.copy()
        return {uid: bare if e is None else member(e) for uid, e in entries.items()}

    @property
    def member_ids(self) -> frozenset[str]:
        """The IDs of the members, without building a FakeMember for each."""
        return frozenset(self._members)

    @property
    def nb_ids(self) -> int:
        """How many members the audience has."""
        return len(self._members)

    @property
    def tokens(self) -> dict[str, FakeToken]:
        """Every token issued for this audience, oldest first."""
        return dict(self._tokens)

    @property
    def latest_token(self) -> FakeToken | None:
        """The most recent token, or None before any write."""
        return self._latest

    def token_state(self, token: str | None = None, *, now: float | None = None) -> str:
        """The indexing state of a token (KeyError if unknown), or of the latest write."""
        if token is None:
            found = self._latest
            if found is None:
                return APPLIED
        else:
            found = self._tokens[token]
        if found.seq < self._replaced_below:
            return REPLACED
        when = self._clock() if now is None else now
        return APPLIED if when >= found.ready_at else IN_PROGRESS

    def _issue(self, operation: str, delay: float, token: str) -> str:
        now = self._clock()
        issued = FakeToken(
            value=token,
            operation=operation,
            seq=len(self._tokens),
            issued=now,
            ready_at=now + delay,
        )
        self._tokens[token] = issued
        self._latest = issued
        if operation == "replace" and self.version == "2":
            # Only 2.x reports REPLACED (spec §2.4); 1.x tokens simply become APPLIED.
            self._replaced_below = issued.seq
        return token


class _Namespace:
    """The audiences of one app API key (1.x) or one project key (2.x)."""

    __slots__ = ("audiences", "cursors", "next_seq")

    def __init__(self) -> None:
        self.audiences: dict[str, FakeAudience] = {}
        self.next_seq = 0
        # 2.x list cursors handed out: cursor -> the seq the next page starts below.
        self.cursors: dict[str, int] = {}

    def newest_first(self, version: str | None = None) -> list[FakeAudience]:
        # list() is one C call: another thread may be adding audiences (seed) meanwhile.
        found = list(self.audiences.values())
        chosen = [a for a in found if a.version == version] if version else found
        # seq is unique per namespace, so this is a total, stable order.
        chosen.sort(key=lambda a: a.seq, reverse=True)
        return chosen


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_token() -> str:
    # 32 lowercase hex characters, the shape of the documented example (spec §2.4).
    return secrets.token_hex(16)


def _v1_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _v2_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_name(name: object) -> str:
    """An audience name must match ^[A-Za-z0-9_-]{1,255}$ (spec §2.2)."""
    if type(name) is not str:
        _malformed(f"name must be a string matching {_NAME_RULE}, got {_kind(name)}")
    if not _NAME.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + "…"
        _malformed(f"name {shown!r} must match {_NAME_RULE} (at most {MAX_NAME_LENGTH} chars)")
    return name


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _optional_text(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None or type(value) is str:
        return value
    _malformed(f"{field} must be a string, got {_kind(value)}")


def _body_object(body: Any) -> dict[str, Any]:
    if type(body) is not dict:
        _malformed(f"the body must be a JSON object, got {_kind(body)}")
    return body


def _classify_key(key: str) -> int:
    match = _KEY.fullmatch(key)
    if match is None:
        kind = _BAD
    elif match.group(1) == "date":
        kind = _DATE
    elif match.group(1) == "url":
        kind = _URL
    else:
        kind = _PLAIN
    if len(_key_kinds) >= _KEY_CACHE_LIMIT:
        _key_kinds.clear()
    _key_kinds[key] = kind
    return kind


def _is_date(value: str) -> bool:
    # Python 3.11's fromisoformat reads a trailing "Z" itself; only "z" needs the rewrite.
    try:
        datetime.fromisoformat(value)
    except ValueError:
        if not value.endswith("z"):
            return False
        try:
            datetime.fromisoformat(value[:-1] + "+00:00")
        except ValueError:
            return False
    return True


# Scheme, then a non-empty host, no whitespace anywhere: one regex is ~6x cheaper than
# urlsplit on distinct values, which matters at one URL per entry.
_URL_SHAPE: Final = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)


def _is_url(value: str) -> bool:
    if len(value) > MAX_URL_LENGTH or _URL_SHAPE.fullmatch(value) is None:
        return False
    if "[" in value:
        # An IPv6 literal host: let urlsplit judge its brackets.
        try:
            urlsplit(value)
        except ValueError:
            return False
    return True


def _is_text_list(values: list[Any]) -> bool:
    return all(type(item) is str and len(item) <= MAX_STRING_LENGTH for item in values)


def _check_attributes(attributes: object, index: int) -> dict[str, Any] | None:
    """Validate one entry's attributes (spec §2.3); None when there are none."""
    if type(attributes) is not dict:
        if attributes is None:
            return None
        _malformed(f"ids[{index}].attributes must be an object, got {_kind(attributes)}")
    if len(attributes) > MAX_ATTRIBUTES:
        _malformed(
            f"ids[{index}].attributes has {len(attributes)} attributes; "
            f"at most {MAX_ATTRIBUTES} per ID"
        )
    kinds = _key_kinds
    for key, value in attributes.items():
        kind = kinds.get(key)
        if kind is None:
            kind = _classify_key(key)
        vtype = type(value)
        if kind == _PLAIN:
            if vtype is str:
                if len(value) > MAX_STRING_LENGTH:
                    _attribute_error(
                        index, key, f"string values are at most {MAX_STRING_LENGTH} characters"
                    )
            elif vtype is int or vtype is float:
                pass
            elif vtype is list:
                if not _is_text_list(value):
                    _attribute_error(
                        index,
                        key,
                        f"array values must hold strings of at most {MAX_STRING_LENGTH} characters",
                    )
            else:
                _attribute_error(
                    index,
                    key,
                    f"values must be a string, a number or an array of strings, not {_kind(value)}",
                )
        elif kind == _DATE:
            if vtype is not str or not _is_date(value):
                _attribute_error(index, key, "date(...) values must be ISO-8601 date strings")
        elif kind == _URL:
            if vtype is not str or not _is_url(value):
                _attribute_error(
                    index,
                    key,
                    f"url(...) values must be absolute http(s) URLs of at most "
                    f"{MAX_URL_LENGTH} characters",
                )
        else:
            shown = key if len(key) <= 40 else key[:40] + "…"
            _malformed(f"ids[{index}].attributes key {shown!r} must match {_KEY_RULE}")
    return attributes or None


def _attribute_error(index: int, key: str, rule: str) -> NoReturn:
    _malformed(f"ids[{index}].attributes[{key!r}]: {rule}")


def _check_tags(tags: object, index: int) -> tuple[str, ...]:
    if type(tags) is not list:
        if tags is None:
            return ()
        _malformed(f"ids[{index}].tags must be an array of strings, got {_kind(tags)}")
    for tag in tags:
        if type(tag) is not str or not tag:
            _malformed(f"ids[{index}].tags must hold non-empty strings, got {_kind(tag)}")
        # islower() is False for tags without letters ("2024"), hence the second test.
        if not tag.islower() and tag != tag.lower():
            _malformed(f"ids[{index}].tags must be lowercase, got {tag!r}")
    return tuple(tags)


class _EntryRules:
    """Which fields an ids[] entry takes, per generation and operation (spec §3-§5)."""

    __slots__ = ("attributes", "strict_remove", "tags", "update")

    def __init__(self, *, update: bool, attributes: bool, tags: bool, strict_remove: bool) -> None:
        self.update = update  # entries carry action add/remove; else a replace (adds only)
        self.attributes = attributes
        self.tags = tags
        # 2.x refuses attributes on a remove entry; 1.1 ignores them (spec §4.2, §5.4).
        self.strict_remove = strict_remove


_V10_UPDATE: Final = _EntryRules(update=True, attributes=False, tags=False, strict_remove=False)
_V11_UPDATE: Final = _EntryRules(update=True, attributes=True, tags=True, strict_remove=False)
_V11_REPLACE: Final = _EntryRules(update=False, attributes=True, tags=True, strict_remove=False)
_V2_UPDATE: Final = _EntryRules(update=True, attributes=True, tags=False, strict_remove=True)
_V2_REPLACE: Final = _EntryRules(update=False, attributes=True, tags=False, strict_remove=False)


def collect_entries(body: Mapping[str, Any], rules: _EntryRules) -> tuple[dict[str, Any], bool]:
    """Validate ``ids`` in full; return ID -> final entry (or the remove mark), and any removes.

    Several entries for one ID collapse to the last (spec §2.3), which is what assigning
    into a dict in order gives.
    """
    ids = body.get("ids", _MISSING)
    if ids is _MISSING or ids is None:
        _missing("ids is required")
    if type(ids) is not list:
        _malformed(f"ids must be an array of entries, got {_kind(ids)}")
    if len(ids) > MAX_IDS:
        _malformed(f"ids has {len(ids)} entries; at most {MAX_IDS:,} per request")
    result: dict[str, Any] = {}
    removes = False
    update = rules.update
    with_attributes = rules.attributes
    with_tags = rules.tags
    strict_remove = rules.strict_remove
    get = dict.get
    kinds = _key_kinds
    plain, date, url = _PLAIN, _DATE, _URL
    is_date, is_url = _is_date, _is_url
    for index, entry in enumerate(ids):
        if type(entry) is not dict:
            _malformed(f"ids[{index}] must be an object, got {_kind(entry)}")
        uid = get(entry, "id")
        if type(uid) is not str or not uid:
            if uid is None:
                _missing(f"ids[{index}].id is required")
            _malformed(f"ids[{index}].id must be a non-empty string, got {_kind(uid)}")
        action = get(entry, "action")
        if update:
            if action != "add":
                if action == "remove":
                    if strict_remove and "attributes" in entry:
                        _malformed(f"ids[{index}]: attributes are only allowed with action 'add'")
                    result[uid] = _REMOVE
                    removes = True
                    continue
                if action is None:
                    _missing(f"ids[{index}].action is required ('add' or 'remove')")
                _malformed(f"ids[{index}].action must be 'add' or 'remove', got {action!r}")
        elif action is not None and action != "add":
            _malformed(f"ids[{index}].action: a replace only adds, got {action!r}")
        attributes = get(entry, "attributes") if with_attributes else None
        if attributes is not None:
            # The hot loop, for keys already classified and values that pass. Anything else
            # (a new key, a broken rule) takes the full check, which names the problem.
            if type(attributes) is dict and len(attributes) <= MAX_ATTRIBUTES:
                for key, value in attributes.items():
                    kind = kinds.get(key)
                    if kind == plain:
                        vtype = type(value)
                        if vtype is str:
                            if len(value) > MAX_STRING_LENGTH:
                                break
                        elif vtype is int or vtype is float:
                            pass
                        elif vtype is not list or not _is_text_list(value):
                            break
                    elif kind == date:
                        if type(value) is not str or not is_date(value):
                            break
                    elif kind != url or type(value) is not str or not is_url(value):
                        break
                else:
                    if not attributes:
                        attributes = None
                    if not with_tags:
                        result[uid] = attributes
                        continue
                    raw_tags = get(entry, "tags")
                    result[uid] = (
                        attributes
                        if raw_tags is None
                        else (_entry(attributes, _check_tags(raw_tags, index)))
                    )
                    continue
            attributes = _check_attributes(attributes, index)
        tags: tuple[str, ...] = ()
        if with_tags:
            raw_tags = get(entry, "tags")
            if raw_tags is not None:
                tags = _check_tags(raw_tags, index)
        result[uid] = (attributes, tags) if tags else attributes
    return result, removes


def _apply(members: dict[str, _Entry], collapsed: dict[str, Any], removes: bool) -> None:
    if not removes:
        members.update(collapsed)
        return
    remove = _REMOVE
    pop = members.pop
    for uid, entry in collapsed.items():
        if entry is remove:
            pop(uid, None)
        else:
            members[uid] = entry


def _int_query(
    query: Mapping[str, str], field: str, default: int, low: int, high: int | None = None
) -> int:
    raw = query.get(field)
    if raw is None:
        return default
    # isascii() first: isdigit() alone accepts digits of other scripts, which int() parses.
    if not (raw.isascii() and raw.isdigit()) or not (
        low <= int(raw) and (high is None or int(raw) <= high)
    ):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        _malformed(f"{field} must be an integer {bound}, got {raw[:20]!r}")
    return int(raw)


class FakeState:
    """Every namespace of the fake server, and the operations of each API generation."""

    def __init__(
        self,
        *,
        indexing_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utcnow,
        new_token: Callable[[], str] = _new_token,
    ) -> None:
        # Seconds a token stays IN_PROGRESS; read when the token is issued.
        self.indexing_delay = indexing_delay
        # How view and list answers spell the in-progress state: one Batch page says
        # IN_PROCESS where the schema says IN_PROGRESS (spec §2.4). Inspection
        # (FakeAudience.token_state) always says IN_PROGRESS.
        self.in_progress_state = IN_PROGRESS
        self._clock = clock
        self._wall_clock = wall_clock
        self._new_token = new_token
        self.v1: dict[str, _Namespace] = {}  # app API key -> its 1.x audiences
        self.v2: dict[str, _Namespace] = {}  # project key -> its 2.x audiences

    # -- inspection -------------------------------------------------------------------------

    def _space(self, api_key: str | None, project_key: str | None) -> _Namespace | None:
        if api_key is not None:
            return self.v1.get(api_key)
        return self.v2.get(project_key or "")

    def find(
        self, name: str, *, api_key: str | None = None, project_key: str | None = None
    ) -> FakeAudience | None:
        """The audience of a 1.x app key or a 2.x project key, or None."""
        space = self._space(api_key, project_key)
        return None if space is None else space.audiences.get(name)

    def all(
        self, *, api_key: str | None = None, project_key: str | None = None
    ) -> list[FakeAudience]:
        """The audiences of a 1.x app key or a 2.x project key, oldest first."""
        space = self._space(api_key, project_key)
        if space is None:
            return []
        return sorted(space.audiences.values(), key=lambda a: a.seq)

    def seed(
        self,
        name: str,
        members: Iterable[str] | Mapping[str, FakeMember],
        *,
        version: str,
        key: str,
        audience_type: str | None = None,
        description: str | None = None,
        display_name: str | None = None,
    ) -> FakeAudience:
        """Create the audience if needed and put members in directly, without a token."""
        check_name(name)
        if version == "2":
            kind = V2_TYPE
            space = self.v2.setdefault(key, _Namespace())
        elif version in ("1.0", "1.1"):
            kind = audience_type or (V10_TYPES[0] if version == "1.0" else V11_TYPE)
            space = self.v1.setdefault(key, _Namespace())
        else:
            raise ValueError(f"version must be '1.0', '1.1' or '2', got {version!r}")
        audience = space.audiences.get(name)
        if audience is None:
            audience = self._create(
                space, name, version, kind, description=description, display_name=display_name
            )
        elif audience.version != version:
            raise ValueError(f"{name!r} was created through API {audience.version}")
        if isinstance(members, Mapping):
            for uid, member in members.items():
                attributes = dict(member.attributes) or None
                tags = tuple(member.tags)
                audience._members[uid] = (
                    None
                    if attributes is None and not tags
                    else (
                        attributes,
                        tags,
                    )
                )
        else:
            audience._members.update(dict.fromkeys(members))
        audience.updated = self._wall_clock()
        return audience

    # -- shared -----------------------------------------------------------------------------

    def _create(
        self,
        space: _Namespace,
        name: str,
        version: str,
        kind: str,
        *,
        description: str | None = None,
        display_name: str | None = None,
    ) -> FakeAudience:
        audience = FakeAudience(
            name=name,
            version=version,
            type=kind,
            created=self._wall_clock(),
            seq=space.next_seq,
            description=description,
            display_name=display_name,
            clock=self._clock,
        )
        space.next_seq += 1
        space.audiences[name] = audience
        return audience

    def _write(self, audience: FakeAudience, operation: str) -> str:
        audience.updated = self._wall_clock()
        return audience._issue(operation, self.indexing_delay, self._new_token())

    def _token_state(self, audience: FakeAudience, token: str | None) -> str:
        if token is not None and token not in audience._tokens:
            _malformed("indexing_token is not a token of this audience")
        return self._spelled(audience.token_state(token))

    def _spelled(self, state: str) -> str:
        return self.in_progress_state if state == IN_PROGRESS else state

    # -- Custom Audience API 1.0 / 1.1 ------------------------------------------------------

    def _v1_audience(self, app_key: str, version: str, name: str) -> FakeAudience:
        check_name(name)
        space = self.v1.get(app_key)
        audience = None if space is None else space.audiences.get(name)
        if audience is None:
            raise FakeApiError(404, "ROUTE_NOT_FOUND", f"no custom audience named {name!r}")
        if audience.version != version:
            raise FakeApiError(
                403,
                "API_MISUSE",
                f"audience {name!r} was created with Custom Audience API {audience.version}; "
                f"use the {audience.version} routes",
            )
        return audience

    def v1_create(self, app_key: str, version: str, name: str, body: Any) -> tuple[int, Any]:
        """POST /{1.0|1.1}/{key}/custom-audience/{name}: 200 ``{}``."""
        check_name(name)
        fields = _body_object(body)
        kind = fields.get("type")
        if version == "1.0":
            if kind is None:
                _missing("type is required: 'custom_ids' or 'advertising_ids'")
            if kind not in V10_TYPES:
                _malformed(f"type must be 'custom_ids' or 'advertising_ids', got {kind!r}")
        elif kind is not None and kind != V11_TYPE:
            _malformed(f"type must be 'install_ids' (or absent) in 1.1, got {kind!r}")
        description = _optional_text(fields, "description")
        space = self.v1.setdefault(app_key, _Namespace())
        if name in space.audiences:
            _malformed(f"a custom audience named {name!r} already exists")
        self._create(space, name, version, kind or V11_TYPE, description=description or None)
        return 200, {}

    def v1_update(self, app_key: str, version: str, name: str, body: Any) -> tuple[int, Any]:
        """PATCH /{1.0|1.1}/{key}/custom-audience/{name}: 201 and a token."""
        audience = self._v1_audience(app_key, version, name)
        fields = _body_object(body)
        if version == "1.0":
            kind = fields.get("type")
            if kind is None:
                _missing(f"type is required: the audience's type, {audience.type!r}")
            if kind != audience.type:
                _malformed(f"type {kind!r} does not match the audience's type {audience.type!r}")
            collapsed, removes = collect_entries(fields, _V10_UPDATE)
        else:
            collapsed, removes = collect_entries(fields, _V11_UPDATE)
        _apply(audience._members, collapsed, removes)
        return 201, {"indexing_token": self._write(audience, "update")}

    def v1_replace(self, app_key: str, version: str, name: str, body: Any) -> tuple[int, Any]:
        """PUT /1.1/{key}/custom-audience/{name}: 201 and a token."""
        audience = self._v1_audience(app_key, version, name)
        collapsed, _ = collect_entries(_body_object(body), _V11_REPLACE)
        audience._members = collapsed
        return 201, {"indexing_token": self._write(audience, "replace")}

    def v1_delete(self, app_key: str, version: str, name: str) -> tuple[int, Any]:
        """DELETE /{1.0|1.1}/{key}/custom-audience/{name}: 200 ``{}``."""
        self._v1_audience(app_key, version, name)
        del self.v1[app_key].audiences[name]
        return 200, {}

    def v1_view(
        self, app_key: str, version: str, name: str, query: Mapping[str, str]
    ) -> tuple[int, Any]:
        """GET /{1.0|1.1}/{key}/custom-audience/{name}[?indexing_token=]."""
        audience = self._v1_audience(app_key, version, name)
        state = self._token_state(audience, query.get("indexing_token"))
        return 200, {
            "name": audience.name,
            "type": audience.type,
            "description": audience.description or "",
            "created": _v1_time(audience.created),
            "updated": _v1_time(audience.updated),
            "nb_ids": len(audience._members),
            "indexing_state": state,
        }

    def v1_list(self, app_key: str, version: str, query: Mapping[str, str]) -> tuple[int, Any]:
        """GET /{1.0|1.1}/{key}/custom-audience?from=&limit=: newest first, offset paged."""
        offset = _int_query(query, "from", 0, 0)
        limit = _int_query(query, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        space = self.v1.get(app_key)
        # Each version lists the audiences it can address (the others would be API_MISUSE).
        found = [] if space is None else space.newest_first(version)
        return 200, {
            "custom_audiences": [
                {
                    "name": a.name,
                    "type": a.type,
                    "description": a.description or "",
                    "nb_ids": len(a._members),
                    "created": _v1_time(a.created),
                    "updated": _v1_time(a.updated),
                }
                for a in found[offset : offset + limit]
            ]
        }

    # -- Audience API 2.x -------------------------------------------------------------------

    def _v2_name(self, fields: Mapping[str, Any]) -> str:
        name = fields.get("name")
        if name is None:
            _missing("name is required")
        return check_name(name)

    def _v2_audience(self, project_key: str, name: str) -> FakeAudience:
        space = self.v2.get(project_key)
        audience = None if space is None else space.audiences.get(name)
        if audience is None:
            raise FakeApiError(404, "NOT_FOUND", f"no audience named {name!r}")
        return audience

    def v2_create(self, project_key: str, body: Any) -> tuple[int, Any]:
        """POST /2.x/audiences/create: 202 and a token."""
        fields = _body_object(body)
        name = self._v2_name(fields)
        kind = fields.get("type")
        if kind is None:
            _missing("type is required: 'custom_ids'")
        if kind != "custom_ids":
            _malformed(f"type must be 'custom_ids', got {kind!r}")
        display_name = _optional_text(fields, "display_name")
        space = self.v2.setdefault(project_key, _Namespace())
        if name in space.audiences:
            _malformed(f"an audience named {name!r} already exists")
        audience = self._create(space, name, "2", V2_TYPE, display_name=display_name)
        return 202, {"indexing_token": self._write(audience, "create")}

    def v2_update(self, project_key: str, body: Any) -> tuple[int, Any]:
        """POST /2.x/audiences/update: 202 and a token."""
        fields = _body_object(body)
        audience = self._v2_audience(project_key, self._v2_name(fields))
        collapsed, removes = collect_entries(fields, _V2_UPDATE)
        _apply(audience._members, collapsed, removes)
        return 202, {"indexing_token": self._write(audience, "update")}

    def v2_replace(self, project_key: str, body: Any) -> tuple[int, Any]:
        """POST /2.x/audiences/replace: 202 and a token; earlier tokens become REPLACED."""
        fields = _body_object(body)
        audience = self._v2_audience(project_key, self._v2_name(fields))
        collapsed, _ = collect_entries(fields, _V2_REPLACE)
        audience._members = collapsed
        return 202, {"indexing_token": self._write(audience, "replace")}

    def v2_remove(self, project_key: str, body: Any) -> tuple[int, Any]:
        """POST /2.x/audiences/remove: deletes the audience; 202 and a token."""
        fields = _body_object(body)
        name = self._v2_name(fields)
        audience = self._v2_audience(project_key, name)
        token = self._write(audience, "remove")
        del self.v2[project_key].audiences[name]
        return 202, {"indexing_token": token}

    def _v2_info(self, audience: FakeAudience, state: str) -> dict[str, Any]:
        info: dict[str, Any] = {"name": audience.name}
        if audience.display_name is not None:
            info["display_name"] = audience.display_name
        info["type"] = audience.type
        info["nb_ids"] = len(audience._members)
        info["indexing_state"] = state
        info["created"] = _v2_time(audience.created)
        info["updated"] = _v2_time(audience.updated)
        return info

    def v2_view(self, project_key: str, query: Mapping[str, str]) -> tuple[int, Any]:
        """GET /2.x/audiences/view?name=[&indexing_token=]."""
        audience = self._v2_audience(project_key, self._v2_name(query))
        state = self._token_state(audience, query.get("indexing_token"))
        return 200, self._v2_info(audience, state)

    def v2_list(self, project_key: str, query: Mapping[str, str]) -> tuple[int, Any]:
        """GET /2.x/audiences/list?from=&limit=: newest first, cursor paged."""
        limit = _int_query(query, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        space = self.v2.get(project_key)
        cursor = query.get("from")
        below: int | None = None
        if cursor is not None:
            below = None if space is None else space.cursors.get(cursor)
            if below is None:
                _malformed("from is not a cursor this server handed out (use next_from)")
        found = [] if space is None else space.newest_first()
        if below is not None:
            # Keyset paging on the creation seq: stable even if audiences come and go.
            found = [a for a in found if a.seq < below]
        page = found[:limit]
        payload: dict[str, Any] = {
            "audiences": [self._v2_info(a, self._spelled(a.token_state())) for a in page]
        }
        if cursor is None:
            payload["count"] = len(found)
        has_more = len(found) > limit
        payload["has_more"] = has_more
        if has_more and space is not None:
            next_from = secrets.token_hex(8).upper()
            space.cursors[next_from] = page[-1].seq
            payload["next_from"] = next_from
        return 200, payload
