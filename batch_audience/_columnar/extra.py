"""The optional extra (pyarrow, DuckDB, numpy): looked up, imported, and called without surprises.

pyarrow, duckdb and numpy are ``batch-audience[data]``. They are imported only when a columnar
source is given, in a worker thread (importing them holds the GIL ~0.1 s, which would stall the
caller's event loop), and their absence raises an error naming the install command at once.

``Kernels`` calls pyarrow's compute kernels with every allocation from the library's memory pool
and with Python values turned into Arrow scalars from their bytes: pyarrow's conversion of Python
values imports pandas whenever it is installed (~0.4 s and ~50 MB, in a process that may never
use pandas).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import struct
import sys
from collections.abc import Callable
from typing import Any, Final

__all__ = ["INSTALL_COMMAND", "Kernels", "import_extra", "memory_pool", "require", "rows", "scalar"]

INSTALL_COMMAND: Final = "pip install 'batch-audience[data]'"
_EXTRA: Final = ("pyarrow", "duckdb", "numpy")


def require() -> None:
    """Raise the install hint if a module of the extra is missing, without importing it.

    Importing pyarrow and duckdb takes ~0.1 s: on the event loop that would stall it, so the
    workers import them (``import_extra``); this only looks them up.
    """
    for name in _EXTRA:
        if name in sys.modules:  # None there: an import of it failed, or it is blocked
            found = sys.modules[name] is not None
        else:
            found = importlib.util.find_spec(name) is not None
        if not found:
            raise _missing(ModuleNotFoundError(f"No module named {name!r}", name=name))


def _missing(exc: ImportError) -> ModuleNotFoundError:
    error = ModuleNotFoundError(
        f"a columnar source (an object with __arrow_c_stream__) needs pyarrow, duckdb and numpy "
        f"(the data extra): {exc}. Install them with: {INSTALL_COMMAND}",
        name=exc.name,
    )
    error.__cause__ = exc
    return error


def import_extra(name: str) -> Any:
    """A module of the data extra; an error naming the install command if it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise _missing(exc) from exc


def memory_pool(pa: Any) -> Any:
    """The pool a columnar upload allocates from: jemalloc's where pyarrow has it, else malloc.

    jemalloc keeps freed pages for reuse and returns them ~1 s later (pyarrow's settings);
    glibc's malloc maps a batch-sized block anew for each batch and the kernel zeroes it. It is
    passed per call: the process's default pool stays the application's.
    """
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without it (Windows)
        return pa.system_memory_pool()


class Kernels:
    """pyarrow.compute with every call allocating from one given memory pool.

    The kernels a common upload uses are called by name (``pyarrow._compute.call_function``):
    importing ``pyarrow.compute`` itself (its Python wrappers of every kernel, with their docs)
    holds the GIL ~25 ms. It is imported, in the worker, the first time a function below is not
    enough. Python values given to a function (``pc.equal(lengths, 0)``) become Arrow scalars
    built from their bytes (``scalar``).
    """

    def __init__(self, pa: Any, pool: Any) -> None:
        self._pa = pa
        self.pool = pool

    @functools.cached_property
    def _compute(self) -> Any:
        return import_extra("pyarrow._compute")

    def __getattr__(self, name: str) -> Any:
        kernel = _KERNELS.get(name)
        if kernel is not None:
            call = self._kernel(kernel)
        elif name == "cast":
            call = self._cast
        elif name == "is_in":
            call = self._is_in
        else:
            call = self._wrapped(name)
        setattr(self, name, call)  # looked up once per name
        return call

    def _kernel(self, kernel: str) -> Callable[..., Any]:
        pa, call_function = self._pa, self._compute.call_function

        def call(*args: Any) -> Any:
            return call_function(kernel, _arrow_values(pa, args), None, self.pool)

        return call

    def _cast(self, values: Any, target: Any, safe: bool = True) -> Any:
        options = self._compute.CastOptions
        cast = options.safe(target) if safe else options.unsafe(target)
        return self._compute.call_function("cast", [values], cast, self.pool)

    def _is_in(self, values: Any, *, value_set: Any) -> Any:
        lookup = self._compute.SetLookupOptions(value_set=value_set)
        return self._compute.call_function("is_in", [values], lookup, self.pool)

    def _wrapped(self, name: str) -> Callable[..., Any]:
        function = getattr(import_extra("pyarrow.compute"), name)
        parameters = inspect.signature(function).parameters.values()
        pooled = any(p.name == "memory_pool" for p in parameters)
        # The values a function computes on come first (positional-only, or *args); what
        # follows is options (a regex, a slice's bounds), which stay Python values.
        if any(p.kind is p.VAR_POSITIONAL for p in parameters):
            values = sys.maxsize
        else:
            values = sum(p.kind is p.POSITIONAL_ONLY for p in parameters) or 1
        pa = self._pa

        def call(*args: Any, **kwargs: Any) -> Any:
            args = (*_arrow_values(pa, args[:values]), *args[values:])
            if pooled:
                kwargs["memory_pool"] = self.pool
            return function(*args, **kwargs)

        return call


def _arrow_values(pa: Any, args: tuple[Any, ...]) -> list[Any]:
    """Arguments with each Python value as an Arrow scalar built from its bytes (``scalar``)."""
    return [scalar(pa, arg) if isinstance(arg, bool | int | float | str) else arg for arg in args]


# pyarrow.compute's functions called by their kernel's name: each takes only values, and its
# default options are the kernel's (``fill_null`` is ``coalesce`` with a scalar of the type).
_KERNELS: Final = {
    "any": "any",
    "all": "all",
    "binary_length": "binary_length",
    "equal": "equal",
    "not_equal": "not_equal",
    "greater": "greater",
    "greater_equal": "greater_equal",
    "less": "less",
    "less_equal": "less_equal",
    "invert": "invert",
    "and_": "and",
    "or_": "or",
    "is_finite": "is_finite",
    "is_valid": "is_valid",
    "is_null": "is_null",
    "indices_nonzero": "indices_nonzero",
    "min_max": "min_max",
    "fill_null": "coalesce",
    "list_flatten": "list_flatten",
    "list_value_length": "list_value_length",
    "list_parent_indices": "list_parent_indices",
    "take": "array_take",
    "cumulative_sum": "cumulative_sum",
}
_LAYOUTS: Final = {"bool": "?", "int64": "<q", "uint64": "<Q", "double": "<d"}  # struct formats
_DEFAULT_TYPES: Final = {bool: "bool_", int: "int64", float: "float64"}


def scalar(pa: Any, value: bool | int | float | str, type_: Any = None) -> Any:
    """An Arrow scalar of ``value`` (of ``type_`` if given), built from its bytes.

    pyarrow's conversion of Python values (``pa.scalar``, a Python int given to a compute
    function, ``pa.array`` of a list) imports pandas whenever it is installed. From a buffer
    nothing is imported.
    """
    if isinstance(value, str):
        data = value.encode()
        offsets = struct.pack("<ii", 0, len(data))
        return pa.Array.from_buffers(
            pa.string(), 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )[0]
    if type_ is None:
        type_ = getattr(pa, _DEFAULT_TYPES[type(value)])()
    data = pa.py_buffer(struct.pack(_LAYOUTS[str(type_)], value))
    return pa.Array.from_buffers(type_, 1, [None, data])[0]


def rows(pa: Any, numbers: list[int]) -> Any:
    """Row numbers as an Arrow index array (built from a buffer: see ``scalar``)."""
    data = pa.py_buffer(struct.pack(f"<{len(numbers)}q", *numbers))
    return pa.Array.from_buffers(pa.int64(), len(numbers), [None, data])
