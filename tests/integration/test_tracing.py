"""OpenTelemetry spans per chunk and per poll, when a tracer is available."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

import batch_audience as ba
from batch_audience import _tracing


class _Tracer:
    """Records the spans started through it."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, dict[str, Any]]] = []

    @contextlib.contextmanager
    def start_as_current_span(self, name: str, attributes: dict[str, Any]) -> Iterator[None]:
        self.spans.append((name, attributes))
        yield


class _Trace:
    """Stands in for the opentelemetry.trace module."""

    def __init__(self) -> None:
        self.tracer = _Tracer()

    def get_tracer(self, name: str) -> _Tracer:
        assert name == "batch_audience"
        return self.tracer


async def test_spans_per_chunk_and_per_poll(
    client: ba.AudienceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload opens one span per request and wait_applied one per poll round, without IDs."""
    trace = _Trace()
    monkeypatch.setattr(_tracing, "_trace", trace)
    await client.create("traced")
    report = await client.add("traced", [f"secret-id-{i}" for i in range(25_000)])
    await client.wait_applied("traced", report.tokens)
    names = [name for name, _ in trace.tracer.spans]
    assert names == ["batch_audience.chunk"] * 3 + ["batch_audience.poll"]
    assert trace.tracer.spans[0][1] == {
        "batch_audience.audience": "traced",
        "batch_audience.operation": "update",
    }
    assert "secret-id" not in repr(trace.tracer.spans)


def test_without_opentelemetry_spans_cost_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no OpenTelemetry installed, span() is a plain context manager."""
    monkeypatch.setattr(_tracing, "_trace", None)
    with _tracing.span("x", {"a": 1}):
        pass
