"""The public namespace: complete, sorted, documented, and rooted at batch_audience."""

from __future__ import annotations

import importlib.metadata
import inspect

import batch_audience as ba
import batch_audience.testing as bat


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and names exactly the public attributes."""
    assert ba.__all__ == sorted(ba.__all__)
    public = {n for n in dir(ba) if not n.startswith("_") and not inspect.ismodule(getattr(ba, n))}
    assert public == set(ba.__all__)


def test_every_public_name_has_a_docstring_and_the_package_module() -> None:
    """Each public class has a one-line docstring and reports batch_audience as its module."""
    for name in ba.__all__:
        obj = getattr(ba, name)
        if inspect.isclass(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name
            assert obj.__module__ == "batch_audience", name


def test_testing_all_is_sorted() -> None:
    """The test kit's __all__ is sorted and every name documented."""
    assert bat.__all__ == sorted(bat.__all__)
    for name in bat.__all__:
        assert getattr(bat, name).__doc__, name


def test_version_comes_from_the_metadata() -> None:
    """__version__ is the installed distribution's version."""
    assert ba.__version__ == importlib.metadata.version("batch-audience")
