"""Routes, auth headers and supported operations of Batch's audience API generations.

Pure: builds method, path, query and body for each operation; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs
import orjson

from ._exceptions import UnsupportedOperation, ValidationError
from ._validate import Generation, check_audience_name

__all__ = ["ApiRoute", "Body", "EncodedIds", "Endpoints", "V1Endpoints", "V2Endpoints"]

MAX_PAGE_SIZE: Final = 100
# 2.1 up (Batch's pages show 2.1 to 2.11); fullmatch, as "$" would also match before "\n".
_V2_VERSION: Final = re.compile(r"2\.[1-9][0-9]*")
_V1_TYPES: Final = {"1.0": ("custom_ids", "advertising_ids"), "1.1": ("install_ids",)}
_PATH_BREAKERS: Final = frozenset("/?#%")

Method = Literal["GET", "POST", "PATCH", "PUT", "DELETE"]


@attrs.frozen(slots=True)
class EncodedIds:
    """The ``ids`` array of a write, already encoded as JSON (a chunk's body)."""

    array: bytes | memoryview = attrs.field(repr=lambda array: f"<{len(array)} bytes>")


# Wire entries, or the JSON array of them already encoded.
Entries = Sequence[Mapping[str, Any]] | EncodedIds


@attrs.frozen(slots=True)
class Body:
    """A JSON body in parts sent one after the other: a chunk's entries are never copied into it.

    A full chunk is 1-4 MB: joining it into its envelope would copy it once more per request.
    """

    parts: tuple[bytes | memoryview, ...] = attrs.field(
        repr=lambda parts: f"<{sum(map(len, parts))} bytes>"
    )

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


def _with_ids(fields: dict[str, Any], entries: Entries) -> bytes | Body:
    """``fields`` and then ``ids`` as one JSON object (``ids`` last, as Batch's docs show it)."""
    if not isinstance(entries, EncodedIds):
        return orjson.dumps({**fields, "ids": entries})
    head = orjson.dumps(fields)[:-1] + (b',"ids":' if fields else b'"ids":')
    return Body((head, entries.array, b"}"))


@attrs.frozen(slots=True)
class ApiRoute:
    """One request to make: method, path below the base URL, query and encoded JSON body."""

    operation: str
    method: Method
    path: str
    query: Mapping[str, str] | None = None
    body: bytes | Body | None = None


def check_page_size(limit: int) -> int:
    """A list page size must be an int in 1..100 (spec §3.4, §5.7)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError(
            f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}"
        )
    return limit


def _check_text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a str, got {type(value).__name__}")
    return value


class Endpoints:
    """What every generation offers; subclasses fill in the routes."""

    generation: Generation
    version: str

    def auth_headers(self, rest_key: str) -> dict[str, str]:
        """The headers that authenticate a request."""
        raise NotImplementedError

    def create(
        self,
        name: str,
        *,
        display_name: str | None,
        description: str | None,
        audience_type: str | None,
    ) -> ApiRoute:
        """The create route."""
        raise NotImplementedError

    def view(self, name: str, token: str | None) -> ApiRoute:
        """The view route, for the latest write or for one token."""
        raise NotImplementedError

    def delete(self, name: str) -> ApiRoute:
        """The route that deletes the whole audience."""
        raise NotImplementedError

    def update(self, name: str, entries: Entries, audience_type: str | None) -> ApiRoute:
        """The add/remove route for at most 10,000 wire entries."""
        raise NotImplementedError

    def replace(self, name: str, entries: Entries) -> ApiRoute:
        """The replace route for at most 10,000 wire entries."""
        raise UnsupportedOperation(
            "replace", self.version, "use Custom Audience API 1.1 or Audience API 2.x"
        )

    @property
    def supports_replace(self) -> bool:
        """Whether this generation has a replace route."""
        return True


@attrs.frozen
class V1Endpoints(Endpoints):
    """Custom Audience API 1.0 (custom and advertising IDs) and 1.1 (install IDs); app scoped."""

    version: str
    api_key: str = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if self.version not in _V1_TYPES:
            raise ValidationError(
                f"Custom Audience API version must be '1.0' or '1.1', got {self.version!r}"
            )
        # The app key is a path segment: "/", "?", "#" or "%" in it would end the segment or
        # be decoded, sending another key and leaving its tail outside the redacted segment.
        if (
            not isinstance(self.api_key, str)
            or not self.api_key
            or _PATH_BREAKERS & set(self.api_key)
        ):
            raise ValidationError("api_key must be a non-empty app API key without / ? # or %")

    @property
    def generation(self) -> Generation:  # type: ignore[override]
        return "1.0" if self.version == "1.0" else "1.1"

    @property
    def supports_replace(self) -> bool:
        return self.version == "1.1"

    def auth_headers(self, rest_key: str) -> dict[str, str]:
        return {"X-Authorization": rest_key, "Content-Type": "application/json"}

    def _base(self) -> str:
        return f"/{self.version}/{self.api_key}/custom-audience"

    def _one(self, name: str) -> str:
        return f"{self._base()}/{check_audience_name(name)}"

    def default_type(self) -> str:
        """The audience type create uses when none is given."""
        return _V1_TYPES[self.version][0]

    def check_type(self, audience_type: str) -> str:
        """The type must be one this version handles."""
        allowed = _V1_TYPES[self.version]
        if audience_type not in allowed:
            raise ValidationError(
                f"audience_type for Custom Audience API {self.version} must be one of "
                f"{', '.join(allowed)}, got {audience_type!r}"
            )
        return audience_type

    def create(
        self,
        name: str,
        *,
        display_name: str | None,
        description: str | None,
        audience_type: str | None,
    ) -> ApiRoute:
        if display_name is not None:
            raise ValidationError(
                "display_name is an Audience API 2.x argument; "
                "Custom Audience API 1.x takes description"
            )
        path = self._one(name)
        body: dict[str, str] = {"type": self.check_type(audience_type or self.default_type())}
        if description is not None:
            body["description"] = _check_text("description", description)
        return ApiRoute("create", "POST", path, body=orjson.dumps(body))

    def view(self, name: str, token: str | None) -> ApiRoute:
        query = {"indexing_token": _check_text("token", token)} if token is not None else None
        return ApiRoute("view", "GET", self._one(name), query=query)

    def list_page(self, offset: int, limit: int) -> ApiRoute:
        """One page of the offset-paged 1.x list."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValidationError(f"list offset must be an integer >= 0, got {offset!r}")
        query = {"from": str(offset), "limit": str(check_page_size(limit))}
        return ApiRoute("list", "GET", self._base(), query=query)

    def delete(self, name: str) -> ApiRoute:
        return ApiRoute("delete", "DELETE", self._one(name))

    def update(self, name: str, entries: Entries, audience_type: str | None) -> ApiRoute:
        fields: dict[str, Any] = {}
        if self.version == "1.0":
            # 1.0 PATCH names the audience's type in every body (spec §3.2).
            fields = {"type": self.check_type(audience_type or self.default_type())}
        return ApiRoute("update", "PATCH", self._one(name), body=_with_ids(fields, entries))

    def replace(self, name: str, entries: Entries) -> ApiRoute:
        if self.version != "1.1":
            return super().replace(name, entries)
        return ApiRoute("replace", "PUT", self._one(name), body=_with_ids({}, entries))


@attrs.frozen
class V2Endpoints(Endpoints):
    """Audience API 2.x: project scoped, action-style routes."""

    version: str
    project_key: str = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.version, str) or not _V2_VERSION.fullmatch(self.version):
            raise ValidationError(
                f"Audience API version must be 2.N with N >= 1, like '2.8', got {self.version!r}"
            )
        if not isinstance(self.project_key, str) or not self.project_key:
            raise ValidationError("project_key must be a non-empty string")

    @property
    def generation(self) -> Generation:  # type: ignore[override]
        return "2"

    def auth_headers(self, rest_key: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {rest_key}",
            "X-Batch-Project": self.project_key,
            "Content-Type": "application/json",
        }

    def _path(self, action: str) -> str:
        return f"/{self.version}/audiences/{action}"

    def create(
        self,
        name: str,
        *,
        display_name: str | None,
        description: str | None,
        audience_type: str | None,
    ) -> ApiRoute:
        if description is not None:
            raise ValidationError(
                "description is a Custom Audience API 1.x argument; "
                "Audience API 2.x takes display_name"
            )
        kind = (
            "custom_ids" if audience_type is None else _check_text("audience_type", audience_type)
        )
        if not kind:
            raise ValidationError("audience_type must be a non-empty string")
        body = {"name": check_audience_name(name), "type": kind}
        if display_name is not None:
            body["display_name"] = _check_text("display_name", display_name)
        return ApiRoute("create", "POST", self._path("create"), body=orjson.dumps(body))

    def view(self, name: str, token: str | None) -> ApiRoute:
        query = {"name": check_audience_name(name)}
        if token is not None:
            query["indexing_token"] = _check_text("token", token)
        return ApiRoute("view", "GET", self._path("view"), query=query)

    def list_page(self, cursor: str | None, limit: int) -> ApiRoute:
        """One page of the cursor-paged 2.x list."""
        query = {"limit": str(check_page_size(limit))}
        if cursor is not None:
            query["from"] = cursor
        return ApiRoute("list", "GET", self._path("list"), query=query)

    def delete(self, name: str) -> ApiRoute:
        body = orjson.dumps({"name": check_audience_name(name)})
        return ApiRoute("delete", "POST", self._path("remove"), body=body)

    def update(self, name: str, entries: Entries, audience_type: str | None) -> ApiRoute:
        body = _with_ids({"name": check_audience_name(name)}, entries)
        return ApiRoute("update", "POST", self._path("update"), body=body)

    def replace(self, name: str, entries: Entries) -> ApiRoute:
        body = _with_ids({"name": check_audience_name(name)}, entries)
        return ApiRoute("replace", "POST", self._path("replace"), body=body)
