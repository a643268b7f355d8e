"""A package's ``__init__`` table of files (file / holds / paper) lists exactly the package's
modules and subpackages: a new file is added to it, a removed one leaves it."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import attnflow

ROOT = Path(attnflow.__file__).parent
RULE = re.compile(r"^=+(\s+=+)+\s*$", re.MULTILINE)  # a reStructuredText table's rule: "====  ===="


def _table_names(docstring: str) -> set[str] | None:
    """The names in the first column of the docstring's table (``x.py`` or ``pkg/``), or ``None``
    when it has no table."""
    rules = list(RULE.finditer(docstring))
    if len(rules) < 3:  # top, below the header, bottom
        return None
    body = docstring[rules[1].end() : rules[2].start()]
    return {line.split()[0] for line in body.splitlines() if line.strip() and not line.startswith(" ")}


def _contents(package: Path) -> set[str]:
    modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    return modules | {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}


def _packages_with_tables() -> list[Path]:
    return [
        init.parent for init in sorted(ROOT.rglob("__init__.py"))
        if _table_names(ast.get_docstring(ast.parse(init.read_text())) or "") is not None
    ]


def test_the_main_packages_have_tables():
    names = {p.relative_to(ROOT.parent).as_posix() for p in _packages_with_tables()}
    assert {"attnflow", "attnflow/data", "attnflow/evaluate", "attnflow/flows", "attnflow/nets",
            "attnflow/train"} <= names


@pytest.mark.parametrize("package", _packages_with_tables(), ids=lambda p: p.relative_to(ROOT.parent).as_posix())
def test_a_package_table_lists_exactly_its_files(package):
    named = _table_names(ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or "")
    assert named is not None
    files = _contents(package)
    assert not files - named, f"{package.name}/__init__.py's table misses {sorted(files - named)}"
    assert not named - files, f"{package.name}/__init__.py's table names missing files {sorted(named - files)}"


def test_the_check_reads_a_table_and_sees_a_missing_file(tmp_path):
    doc = """Things.

    ======  =====
    file    holds
    ======  =====
    a.py    A, and a second line
            of A
    sub/    B
    ======  =====
    """
    assert _table_names(inspect.cleandoc(doc)) == {"a.py", "sub/"}
    assert _table_names("no table here") is None
    (tmp_path / "a.py").write_text("")
    (tmp_path / "b.py").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "__init__.py").write_text("")
    assert _contents(tmp_path) - _table_names(inspect.cleandoc(doc)) == {"b.py"}
