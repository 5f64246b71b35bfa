"""Every Python example in README.md runs, against the bundled fake server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_examples() -> None:
    """The README shows runnable examples, the first one on its first screen."""
    assert len(BLOCKS) >= 4
    assert README.read_text(encoding="utf-8").index("```python") < 1500


@pytest.mark.parametrize(
    "code", [pytest.param(b, id=f"block-{i}") for i, b in enumerate(BLOCKS) if "asyncio.run" in b]
)
def test_readme_example_runs(code: str) -> None:
    """The example exits 0, prints no traceback and prints values as people read them."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "<IndexingState" not in result.stdout  # {'APPLIED'}, not an enum's repr
