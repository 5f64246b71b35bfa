"""Builds the optional C accelerator of the columnar path; everything else is in pyproject.toml.

``optional=True``: without a C compiler the package installs without it, and columnar
uploads write their JSON with DuckDB instead (the same entries, ~3x the CPU).
"""

import os

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "batch_audience._speedups",
            ["batch_audience/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"] if os.name == "posix" else [],
            libraries=["m"] if os.name == "posix" else [],  # nearbyint
        )
    ]
)
