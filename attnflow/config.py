"""Run configurations: named TOML presets with ``[model]``, ``[data]`` and ``[train]`` sections,
``section.key=value`` overrides, and a run's saved ``config.json``.

Every value is checked against its :class:`~attnflow.schema.Field` wherever a configuration
comes from: a preset, an override or a resumed run. The ``[model]`` fields are those of the
family's builder signature (:mod:`attnflow.models.registry`), the ``[data]`` and ``[train]``
fields those of :mod:`attnflow.fields`. The configuration is one-way: this module imports the
schema, the presets and the model registry; none of them imports it.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .fields import section_defaults, section_fields
from .models.registry import FAMILIES, check_model, model_fields
from .presets import load_preset, preset_names
from .schema import SECTIONS, ConfigError, Field, unknown_key

__all__ = [
    "preset_names", "load_preset", "check_config", "resolve_config", "apply_overrides", "parse_override",
    "read_config", "validate_config", "field",
]

Families = Mapping[str, Callable[..., Any]]


def field(section: str, key: str, family: str | None = None) -> Field | None:
    """The field of ``section.key`` (for ``[model]``, the one of ``family``), or ``None``."""
    if section == "model":
        return model_fields(family).get(key) if family in FAMILIES else None
    return section_fields(section).get(key) if section in SECTIONS else None


def validate_config(cfg: Mapping[str, Any], families: Families | None = None) -> dict[str, dict[str, Any]]:
    """Check every key and value of a configuration with ``model``, ``data`` and ``train``
    sections; returns a copy with the values converted (ints as floats where a float is
    expected). ``families`` are the valid model families (default: the registered ones)."""
    if not (
        isinstance(cfg, Mapping) and set(cfg) == set(SECTIONS) and all(isinstance(cfg[s], Mapping) for s in SECTIONS)
    ):
        got = sorted(cfg) if isinstance(cfg, Mapping) else type(cfg).__name__
        raise ConfigError(f"a configuration has exactly the sections {', '.join(SECTIONS)} (tables), "
                          f"got {got}")
    out: dict[str, dict[str, Any]] = {"model": check_model(cfg["model"], families)}
    for section in ("data", "train"):
        fields = section_fields(section)
        out[section] = {}
        for key, value in cfg[section].items():
            if key not in fields:
                raise unknown_key(section, key, fields)
            out[section][key] = fields[key].check(value)
    return out


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


#: Model keys of earlier versions that no longer configure anything: the power iteration whose
#: estimate the spectral-norm layers divided by (they now divide by a certified bound). A saved run
#: that has them loads without them; a preset or an override that sets them is refused as unknown.
RETIRED_MODEL_KEYS = ("power_tol", "power_max_iter")

#: Keys that moved to the section of what they configure, ``(old section, key) -> (new section,
#: default)``: ``train.likelihood_weight`` weighs a hybrid model's objective, so it is the residual
#: family's ``model.likelihood_weight``. A saved run, a preset or a configuration that sets the old
#: key is read as the new one (at its default it configured nothing and is dropped); an override of
#: the old key is read as the new one with a one-line note.
MOVED_KEYS: dict[tuple[str, str], tuple[str, Any]] = {("train", "likelihood_weight"): ("model", 1.0)}


def _move_keys(cfg: dict[str, Any]) -> None:
    """Move the :data:`MOVED_KEYS` of ``cfg`` (a dict of section dicts, changed in place) to their
    new sections; a key set in its new section keeps that value."""
    for (old, key), (new, default) in MOVED_KEYS.items():
        if isinstance(cfg.get(old), dict) and key in cfg[old] and isinstance(cfg.get(new), dict):
            cfg[old] = dict(cfg[old])
            value = cfg[old].pop(key)
            if value != default and key not in cfg[new]:
                cfg[new] = {**cfg[new], key: value}


def check_config(cfg: Any, families: Families | None = None) -> dict[str, dict[str, Any]]:
    """A complete, validated copy of a configuration: ``[data]`` and ``[train]`` keys it lacks
    (for instance keys added to the schema since a run was written) take their defaults, and every
    value is checked against the schema."""
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        _move_keys(cfg)
        for section in ("data", "train"):
            if isinstance(cfg.get(section), dict):
                cfg[section] = {**section_defaults(section), **cfg[section]}
    return validate_config(cfg, families)


def resolve_config(
    preset: str, overrides: Iterable[str] = (), families: Families | None = None
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
    cfg: dict[str, dict[str, Any]], overrides: Iterable[str], families: Families | None = None
) -> dict[str, dict[str, Any]]:
    """A validated copy of ``cfg`` with ``section.key=value`` ``overrides`` applied in order."""
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"unknown section {section!r} in {text!r}; valid sections: {', '.join(SECTIONS)}")
        if (section, key) in MOVED_KEYS:
            new = MOVED_KEYS[section, key][0]
            print(f"attnflow: note: {section}.{key} is now {new}.{key}; {text!r} is read as {new}.{key}",
                  file=sys.stderr)
            section = new
        cfg[section][key] = value
    return check_config(cfg, families)


def read_config(path: str | os.PathLike, families: Families | None = None) -> dict[str, dict[str, Any]]:
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
