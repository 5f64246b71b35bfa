"""Request bodies built around already-encoded entries: the same bytes, never a copy of them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batch_audience._endpoints import Body, EncodedIds, Endpoints, V1Endpoints, V2Endpoints

ENTRIES: list[dict[str, Any]] = [
    {"action": "add", "id": "u-1", "attributes": {"n": 1}},
    {"action": "remove", "id": "u-2"},
]


def writes() -> list[tuple[Endpoints, str]]:
    """Each generation's write routes (1.0 has no replace, spec §3)."""
    apis: list[Endpoints] = [
        V1Endpoints(version="1.0", api_key="app"),
        V1Endpoints(version="1.1", api_key="app"),
        V2Endpoints(version="2.8", project_key="project"),
    ]
    return [
        (api, op)
        for api in apis
        for op in ("update", "replace")
        if op == "update" or api.supports_replace
    ]


@pytest.mark.parametrize(("api", "operation"), writes(), ids=lambda v: getattr(v, "version", v))
def test_encoded_ids_make_the_body_the_entries_make(api: Endpoints, operation: str) -> None:
    """EncodedIds give byte for byte the body of the same entries given as mappings."""
    array = orjson.dumps(ENTRIES)

    def route(entries: Any) -> Any:
        if operation == "update":
            return api.update("audience_a", entries, "custom_ids")
        return api.replace("audience_a", entries)

    plain, encoded = route(ENTRIES), route(EncodedIds(array))
    assert isinstance(plain.body, bytes) and isinstance(encoded.body, Body)
    assert bytes(encoded.body) == plain.body
    assert len(encoded.body) == len(plain.body)
    assert orjson.loads(bytes(encoded.body))["ids"] == ENTRIES
    # The entries go as the very object given: no copy of a chunk's body per request.
    assert any(part is array for part in encoded.body.parts)
    assert "u-1" not in repr(encoded) and f"<{len(plain.body)} bytes>" in repr(encoded)
