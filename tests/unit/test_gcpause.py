"""The garbage-collection pause around uploads nests and restores the collector's state."""

from __future__ import annotations

import gc

import pytest

from batch_audience._gcpause import paused_gc


def test_pause_nests_and_restores() -> None:
    """The collector stays off until the outermost pause ends, then is back on."""
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_pause_restores_after_an_error() -> None:
    """An exception inside the block still turns the collector back on."""
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError
    assert gc.isenabled()


def test_pause_leaves_a_disabled_collector_disabled() -> None:
    """If the application turned collection off, the pause does not turn it on."""
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_disabled_pause_does_nothing() -> None:
    """paused_gc(False) leaves the collector alone."""
    with paused_gc(False):
        assert gc.isenabled()
