"""The package layout's one rule: the networks inside bijections (``attnflow.nets``) never import
the bijections (``attnflow.flows``), so flows build on nets and not the other way round."""
from __future__ import annotations

import ast
from pathlib import Path

import attnflow

NETS = Path(attnflow.__file__).parent / "nets"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            names.update(base + ("" if base.endswith(".") else ".") + alias.name for alias in node.names)
    return names


def test_nets_never_import_flows():
    offenders = {
        path.name: sorted(m for m in _imported_modules(path) if "flows" in m.split("."))
        for path in sorted(NETS.glob("*.py"))
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"attnflow.nets modules import attnflow.flows: {offenders}"


def test_the_check_sees_a_flows_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ..flows.glow import ActNorm\nimport attnflow.flows\n")
    assert {"..flows.glow", "attnflow.flows"} <= _imported_modules(bad)
