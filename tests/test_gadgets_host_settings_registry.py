"""Every STREAMRECON_* variable a host reads is a setting of the one registry, and no module writes the environment.

Read from the source itself (AST), so a new variable or a new write is caught
where it is added, not when a deployment misbehaves.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from gadgets import host_settings

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("models", "gadgets", "pipelines", "simulator") for p in sorted((ROOT / d).rglob("*.py"))]
# Variables that are not host settings (docs/operator-settings.md says where each is read): the data folder of
# train/evaluate, the Python that runs triton-server for tests and benchmarks, and a marker put in the
# environment of a Gadgetron we start, to find its processes again.
NOT_SETTINGS = {"STREAMRECON_DATA", "STREAMRECON_TRITON_PYTHON", "STREAMRECON_GADGETRON_TAG"}
# PyTriton's tritonserver needs its Python backend's libraries on LD_LIBRARY_PATH: a library path for the
# process triton-server starts, not a setting other code reads back.
ENVIRONMENT_WRITERS = {"pipelines/triton_server.py"}


def _environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", "") == "os"


def test_every_streamrecon_variable_is_a_registry_setting():
    registered = {s.env for s in host_settings.SETTINGS} | {host_settings.CONFIG_ENV}
    found: dict[str, str] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for name in re.findall(r"\bSTREAMRECON_[A-Z][A-Z0-9_]*", node.value):
                    found.setdefault(name, str(path.relative_to(ROOT)))
    assert {"STREAMRECON_REFERENCE_STORE", "STREAMRECON_CONFIG"} <= set(found)  # the scan sees them
    stray = {name: where for name, where in found.items() if name not in registered | NOT_SETTINGS}
    assert stray == {}, f"STREAMRECON_* variables outside gadgets/host_settings.SETTINGS: {stray}"
    documented = (ROOT / "docs" / "operator-settings.md").read_text(encoding="utf-8")
    assert all(name in documented for name in NOT_SETTINGS)


def test_no_module_writes_the_process_environment():
    writes = []
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
            if any(isinstance(t, ast.Subscript) and _environ(t.value) for t in targets):
                writes.append((rel, node.lineno))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("update", "setdefault", "pop", "clear") and _environ(node.func.value)):
                writes.append((rel, node.lineno))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("putenv", "unsetenv"):
                writes.append((rel, node.lineno))
    assert [w for w in writes if w[0] not in ENVIRONMENT_WRITERS] == []
