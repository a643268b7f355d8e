"""Run configurations: named TOML presets with ``[model]``, ``[data]`` and ``[train]`` sections,
``section.key=value`` overrides, and a run's saved ``config.json``.

Every value is checked against the one schema of :mod:`attnflow.schema` (type, range, allowed
values, which model families use a key) wherever a configuration comes from: a preset, an
override or a resumed run.
"""
from __future__ import annotations

import copy
import json
import os
import tomllib
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from .schema import SECTIONS, ConfigError, section_defaults, validate_config

__all__ = ["preset_names", "load_preset", "check_config", "resolve_config", "apply_overrides", "parse_override",
           "read_config"]


def _preset_dir() -> Any:
    return resources.files("attnflow") / "presets"


def preset_names() -> list[str]:
    """Names of the bundled presets, sorted."""
    return sorted(p.name[: -len(".toml")] for p in _preset_dir().iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, dict[str, Any]]:
    """The raw TOML of preset ``name``; an unknown name is an error listing the presets."""
    path = _preset_dir() / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(preset_names())}")
    cfg = tomllib.loads(path.read_text())
    unknown = set(cfg) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"preset {name!r} has unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    if "family" not in cfg.get("model", {}):
        raise ConfigError(f"preset {name!r} lacks model.family")
    return cfg


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` -> ``(section, key, value)``; the value is parsed as TOML
    (``1e-3``, ``true``, ``[1, 8, 8]``, ``"adam"``), and a bare word is taken as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.lr=1e-3")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value




def _families(families: dict[str, Callable[..., Any]] | None) -> dict[str, Callable[..., Any]]:
    if families is None:
        from .models import FAMILIES  # late import avoids a cycle

        return FAMILIES
    return families


#: Model keys of earlier versions that no longer configure anything: the power iteration whose
#: estimate the spectral-norm layers divided by (they now divide by a certified bound). A saved run
#: that has them loads without them; a preset or an override that sets them is refused as unknown.
RETIRED_MODEL_KEYS = ("power_tol", "power_max_iter")


def check_config(cfg: Any, families: dict[str, Callable[..., Any]] | None = None) -> dict[str, dict[str, Any]]:
    """A complete, validated copy of a configuration: ``[data]`` and ``[train]`` keys it lacks
    (for instance keys added to the schema since a run was written) take their defaults, and every
    value is checked against the schema."""
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        for section in ("data", "train"):
            if isinstance(cfg.get(section), dict):
                cfg[section] = {**section_defaults(section), **cfg[section]}
    return validate_config(cfg, _families(families))


def resolve_config(
    preset: str, overrides: Iterable[str] = (), families: dict[str, Callable[..., Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The full configuration of ``preset`` with ``[data]``/``[train]`` defaults filled in and
    ``overrides`` applied; the preset and the result are validated against the schema (an
    unknown key lists the valid ones, a bad value names its valid range)."""
    raw = load_preset(preset)
    cfg = {"model": copy.deepcopy(raw.get("model", {})), "data": raw.get("data", {}), "train": raw.get("train", {})}
    try:
        cfg = check_config(cfg, families)
    except ConfigError as exc:
        raise ConfigError(f"preset {preset!r}: {exc}") from None
    return apply_overrides(cfg, overrides, families)


def apply_overrides(
    cfg: dict[str, dict[str, Any]], overrides: Iterable[str], families: dict[str, Callable[..., Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """A validated copy of ``cfg`` with ``section.key=value`` ``overrides`` applied in order."""
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"unknown section {section!r} in {text!r}; valid sections: {', '.join(SECTIONS)}")
        cfg[section][key] = value
    return check_config(cfg, families)


def read_config(path: str | os.PathLike, families: dict[str, Callable[..., Any]] | None = None) -> dict[str, dict[str, Any]]:
    """A run's saved ``config.json``, completed and validated by :func:`check_config`; a missing,
    unreadable or invalid file is a :class:`~attnflow.schema.ConfigError` naming the file."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; train with `attnflow train --out {path.parent}`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path} is not a readable JSON configuration ({exc}); restore it or train a new run"
        ) from None
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        cfg["model"] = {k: v for k, v in cfg["model"].items() if k not in RETIRED_MODEL_KEYS}
    try:
        return check_config(cfg, families)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
