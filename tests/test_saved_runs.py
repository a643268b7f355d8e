"""Run directories written by an earlier version load, evaluate, certify and resume with the
numbers that version gave (``tests/fixtures/runs-*/``, made by ``tests/fixtures/make_runs.sh``;
``expected.json`` holds that version's numbers, computed by ``tests/fixtures/expected_numbers.py``).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SAVED = sorted(p for p in FIXTURES.glob("runs-*") if (p / "expected.json").is_file())


def _numbers_module():
    spec = importlib.util.spec_from_file_location("expected_numbers", FIXTURES / "expected_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("run", [run for folder in SAVED for run in sorted(p for p in folder.iterdir() if p.is_dir())],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_saved_run_gives_its_numbers(run: Path) -> None:
    expected = json.loads((run.parent / "expected.json").read_text())[run.name]
    got = _numbers_module().run_numbers(run)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), f"{run.name}: {key}"
