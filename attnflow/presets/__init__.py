"""The bundled presets: one TOML file per named configuration, with ``[model]`` (``family`` and
the family's builder keywords), ``[data]`` and ``[train]`` tables.

Reading a preset needs nothing above :mod:`attnflow.schema`; :mod:`attnflow.config` validates and
completes it, :func:`attnflow.models.build` builds its model.
"""
from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

from ..schema import SECTIONS, ConfigError

__all__ = ["preset_dir", "preset_names", "load_preset", "check_sections"]


def preset_dir() -> Any:
    """The folder of the bundled presets (an ``importlib.resources`` traversable)."""
    return resources.files(__name__)


def preset_names() -> list[str]:
    """Names of the bundled presets, sorted."""
    return sorted(p.name[: -len(".toml")] for p in preset_dir().iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, dict[str, Any]]:
    """The raw TOML of preset ``name``; an unknown name is an error listing the presets."""
    path = preset_dir() / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(preset_names())}")
    cfg = tomllib.loads(path.read_text())
    check_sections(cfg, f"preset {name!r}")
    return cfg


def check_sections(cfg: dict[str, Any], what: str) -> None:
    """Refuse a configuration table (``what``: a preset or a file) with sections other than
    ``[model]``, ``[data]`` and ``[train]``, or without ``model.family``."""
    unknown = set(cfg) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{what} has unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    if not isinstance(cfg.get("model"), dict) or "family" not in cfg["model"]:
        raise ConfigError(f"{what} lacks model.family")
