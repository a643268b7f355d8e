"""Every preset's model has the state-dict keys (names, order and shapes) that version 0.1.0 gave
it, so checkpoints written by that version load into it.

``tests/fixtures/state_dict_keys-0.1.0.json`` was written by this file's ``__main__`` at version
0.1.0 (``PYTHONPATH=. python3 tests/test_state_dict_keys.py``): per preset the number of entries
and a SHA-256 of the ``name<TAB>shape`` lines in state-dict order, and, to name what changed when
a digest differs, the key patterns (numeric indices as ``#``) of every preset. Models are built on
the ``meta`` device (no memory, no initialisation cost).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from attnflow import models

FIXTURE = Path(__file__).parent / "fixtures" / "state_dict_keys-0.1.0.json"


def _entries(preset: str) -> list[str]:
    """``name<TAB>shape`` of every state-dict entry of the preset's model, in order."""
    with torch.device("meta"):
        model = models.build(preset)
    return [f"{name}\t{list(value.shape)}" for name, value in model.state_dict().items()]


def _patterns(entries: list[str]) -> set[str]:
    return {re.sub(r"\.\d+(?=\.|$)", ".#", e.split("\t")[0]) for e in entries}


def _summary(entries: list[str]) -> dict[str, object]:
    return {"entries": len(entries), "sha256": hashlib.sha256("\n".join(entries).encode()).hexdigest()}


EXPECTED = json.loads(FIXTURE.read_text()) if FIXTURE.is_file() else {"presets": {}, "patterns": []}


@pytest.mark.parametrize("preset", sorted(EXPECTED["presets"]))
def test_preset_state_dict_keys_are_unchanged(preset: str) -> None:
    entries = _entries(preset)
    expected = EXPECTED["presets"][preset]
    if _summary(entries) != expected:
        patterns, known = _patterns(entries), set(EXPECTED["patterns"])
        pytest.fail(
            f"{preset}: {len(entries)} state-dict entries (0.1.0: {expected['entries']}), digest differs; "
            f"key patterns not in 0.1.0: {sorted(patterns - known)[:5]}"
        )


def test_fixture_covers_the_presets_of_0_1_0() -> None:
    """The fixture is not empty and every preset it names still exists."""
    assert len(EXPECTED["presets"]) >= 50
    assert set(EXPECTED["presets"]) <= set(models.presets())


if __name__ == "__main__":
    all_entries = {name: _entries(name) for name in models.presets()}
    FIXTURE.write_text(json.dumps({
        "presets": {name: _summary(e) for name, e in all_entries.items()},
        "patterns": sorted(set().union(*(_patterns(e) for e in all_entries.values()))),
    }, indent=1) + "\n")
