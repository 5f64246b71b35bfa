"""aioresponses on aiohttp 3.14: supply the ``stream_writer`` it does not pass yet.

aiohttp 3.14 (a security release) added a required ``stream_writer`` argument to
``ClientResponse``; aioresponses 0.7.x does not pass it (pnuckowski/aioresponses#289).
A request that was already sent only reads ``output_size`` from it.
"""

from __future__ import annotations

import inspect
from typing import Any

import aiohttp
import pytest
from aioresponses import core


class _SentWriter:
    """Stands in for the stream writer of a request that was already sent."""

    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    """A ClientResponse that tolerates aioresponses' missing stream_writer."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentWriter())
        super().__init__(method, url, **kwargs)


@pytest.fixture(autouse=True)
def _stream_writer_compat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build aioresponses' fake responses with _CompatResponse where aiohttp needs it."""
    needs_it = "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters
    if needs_it:
        monkeypatch.setattr(core, "ClientResponse", _CompatResponse)
