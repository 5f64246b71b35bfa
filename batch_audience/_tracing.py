"""Optional OpenTelemetry spans, per upload chunk and per indexing poll round.

opentelemetry-api is not a dependency: when it is importable, spans go to whatever tracer
provider the application configured (a no-op one by default); when it is not, this costs a
``nullcontext``. Span attributes never carry IDs, keys or bodies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["span"]

import importlib

_trace: Any
try:  # pragma: no cover - depends on the environment
    _trace = importlib.import_module("opentelemetry.trace")
except ImportError:  # pragma: no cover - depends on the environment
    _trace = None

_TRACER_NAME = "batch_audience"


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[None]:
    """A span named ``name`` when OpenTelemetry is installed; nothing otherwise."""
    if _trace is None:
        yield
        return
    tracer = _trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(name, attributes=dict(attributes or {})):
        yield
