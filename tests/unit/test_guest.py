"""The library is a guest in its caller's process: it never changes interpreter-wide state."""

from __future__ import annotations

import ast
from pathlib import Path

import batch_audience

PACKAGE = Path(batch_audience.__file__).parent
# Calls that change state the process's owner holds: the collector, thread switching, the
# recursion limit. The command line (_cli, __main__) and the fake server's own process
# (testing/_serve.py, behind `batch-audience fake-server`) own their process and are left out.
FORBIDDEN = {
    ("gc", "disable"),
    ("gc", "freeze"),
    ("gc", "set_threshold"),
    ("gc", "set_debug"),
    ("sys", "setswitchinterval"),
    ("sys", "setrecursionlimit"),
    ("sys", "set_int_max_str_digits"),
}


def test_no_library_module_changes_interpreter_wide_state() -> None:
    """No module but the CLI calls gc.disable(), gc.freeze(), sys.setswitchinterval()..."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_cli" in path.relative_to(PACKAGE).parts or path.name in ("__main__.py", "_serve.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and (node.func.value.id, node.func.attr) in FORBIDDEN
            ):
                found.append(f"{path.name}:{node.lineno} {node.func.value.id}.{node.func.attr}")
    assert found == []
