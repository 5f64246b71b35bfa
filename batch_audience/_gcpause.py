"""Automatic garbage collection paused for the length of a bulk upload.

An upload allocates millions of short-lived dicts. They are freed by reference counting, but
each allocation still counts toward CPython's collection thresholds, so full collections keep
firing, and each one walks every tracked object: 15-45 ms with the event loop held, measured
on the project's 2-core machines (benchmarks/README.md). Pausing automatic collection for the
upload's duration removes those stalls and about a quarter of the CPU time; what the upload
allocates is acyclic, so nothing waits for the collector. Pauses nest across concurrent
uploads, and collection is turned back on only if it was on when the first one began.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused_gc"]

_depth = 0
_was_enabled = False


@contextlib.contextmanager
def paused_gc(enabled: bool = True) -> Iterator[None]:
    """Pause automatic garbage collection inside the block (no-op when ``enabled`` is False)."""
    global _depth, _was_enabled
    if not enabled:
        yield
        return
    if _depth == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _was_enabled:
            gc.enable()
