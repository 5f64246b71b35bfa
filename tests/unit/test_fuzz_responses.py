"""Fuzzing the response parsers: any answer body gives a typed result or a typed error."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

import batch_audience as ba
from batch_audience._client import _info
from batch_audience._exceptions import parse_error_body

EXAMPLES = 400  # per property

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=10,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "name": json_values | st.text(min_size=1, max_size=10),
        "type": json_values | st.sampled_from(["CUSTOM_ID", "install_ids"]),
        "nb_ids": json_values | st.integers(0, 10**9),
        "indexing_state": json_values | st.sampled_from(["APPLIED", "IN_PROGRESS", "NEW"]),
        "created": json_values
        | st.sampled_from(["2018-06-29T14:59:03", "2023-08-12T22:30:05Z", "x"]),
        "updated": json_values,
        "display_name": json_values,
        "description": json_values,
    },
)


@settings(max_examples=EXAMPLES)
@given(body=fields | json_values)
def test_audience_answers_decode_or_raise_transport_error(body: Any) -> None:
    """An audience description of any shape becomes an AudienceInfo or a TransportError."""
    try:
        info = _info(body)
    except ba.TransportError:
        return
    assert isinstance(info.name, str)
    assert isinstance(info.type, str)
    assert isinstance(info.nb_ids, int) and not isinstance(info.nb_ids, bool)
    for stamp in (info.created, info.updated):
        assert stamp is None or stamp.tzinfo is not None


@settings(max_examples=EXAMPLES)
@given(
    status=st.integers(400, 599),
    body=st.binary(max_size=200)
    | json_values.map(orjson.dumps)
    | st.sampled_from([b'{"error_code": 99999999999999999999999}', b'{"code": 1e400}']),
    retry_after=st.none() | st.floats(0, 100),
)
def test_error_answers_always_give_a_typed_api_error(
    status: int, body: bytes, retry_after: float | None
) -> None:
    """Any error body, JSON or not, gives an ApiError subclass with readable fields."""
    err = ba.ApiError.from_response(status, body, retry_after=retry_after)
    assert isinstance(err, ba.ApiError)
    assert err.status == status
    assert isinstance(str(err), str) and isinstance(repr(err), str)
    code, numeric, message, text = parse_error_body(body)
    assert code is None or isinstance(code, str)
    assert numeric is None or isinstance(numeric, int)
    assert isinstance(message, str) and isinstance(text, str)
