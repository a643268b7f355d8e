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


# -- the module graph: no import cycles, no arrow from a lower floor to a higher one -------------

ROOT = Path(attnflow.__file__).parent
#: the floors of the library, lowest first; a module imports from its own floor or lower ones
FLOORS: tuple[tuple[str, ...], ...] = (
    ("core", "schema", "precision", "device", "sharding", "heartbeat"),
    ("nets",),
    ("flows",),
    ("models", "presets", "data", "testing"),
    ("config", "sections", "rundir"),
    ("evaluate",),
    ("train",),
    ("experiments",),
    ("cli",),
)


def _modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """``attnflow.x.y`` -> (file, is a package) for every module of the package at ``root``."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the attnflow modules it imports anywhere in its file (function-level imports
    included: a late import that dodges a cycle is still one). ``from a import b`` is an arrow to
    ``a`` and, when ``a.b`` is a module, to ``a.b``."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, (path, package) in modules.items():
        here = module.split(".") if package else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                parent = here[: len(here) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])]) if node.level else node.module or ""
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[module].update(t for t in targets if t in modules and t != module)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while component[-1:] != [v]:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _floor(module: str) -> int | None:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    return next((i for i, floor in enumerate(FLOORS) if name in floor), None)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a module on a higher floor than the importer's."""
    return [f"{a} -> {b}" for a in sorted(graph) for b in sorted(graph[a])
            if _floor(a) is not None and _floor(b) is not None and _floor(b) > _floor(a)]


def test_every_module_is_on_a_floor():
    assert [m for m in import_graph() if m != "attnflow" and _floor(m) is None] == []


def test_no_import_cycles():
    assert import_cycles(import_graph()) == []


def test_no_upward_imports():
    assert upward_imports(import_graph()) == []


def test_the_graph_sees_cycles_and_upward_arrows(tmp_path):
    pkg = tmp_path / "attnflow"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from .models import build\n")
    (pkg / "models" / "__init__.py").write_text("from ..config import f\nfrom . import glow\n")
    (pkg / "models" / "glow.py").write_text("import attnflow.core\n")
    (pkg / "core.py").write_text("from .models.glow import x\n")
    graph = import_graph(pkg)
    assert graph["attnflow.models"] == {"attnflow.config", "attnflow.models.glow"}
    assert sorted(import_cycles(graph)) == [["attnflow.config", "attnflow.models"],
                                            ["attnflow.core", "attnflow.models.glow"]]
    assert "attnflow.core -> attnflow.models.glow" in upward_imports(graph)


if __name__ == "__main__":  # the figures: python3 tests/test_layout.py
    import json

    g = import_graph()
    print(json.dumps({"modules": len(g), "imports": sum(map(len, g.values())), "cycles": import_cycles(g),
                      "upward_imports": upward_imports(g)}))
