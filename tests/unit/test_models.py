"""The report and state types as people and programs see them."""

from __future__ import annotations

import orjson

import batch_audience as ba


def test_an_indexing_state_prints_as_the_string_it_equals() -> None:
    """An IndexingState shows as 'APPLIED' in a set or a dict, and still equals the string."""
    states = {"t1": ba.IndexingState.APPLIED}
    assert repr(ba.IndexingState.APPLIED) == "'APPLIED'"
    assert str(ba.IndexingState.REPLACED) == "REPLACED"
    assert f"{set(states.values())}" == "{'APPLIED'}"
    assert str(states) == "{'t1': 'APPLIED'}"
    assert ba.IndexingState.APPLIED == "APPLIED"
    assert isinstance(ba.IndexingState("IN_PROGRESS"), ba.IndexingState)
    assert orjson.loads(orjson.dumps(states)) == {"t1": "APPLIED"}
