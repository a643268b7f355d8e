"""Assembled architectures and the preset registry.

``build(name, **overrides)`` builds the model of a named preset (see ``presets()``), with any
``[model]`` keyword of its family overridden.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core import Flow
from .denseflow import denseflow
from .flowpp import flowpp
from .fullglow import fullglow
from .glow import glow
from .marflow import marflow
from .residual_flow import residual_flow
from .srflow import srflow

__all__ = ["FAMILIES", "build", "build_from_config", "presets"]

# family name -> builder(**model keys) -> Flow
FAMILIES: dict[str, Callable[..., Flow]] = {
    "glow": glow,
    "denseflow": denseflow,
    "flowpp": flowpp,
    "marflow": marflow,
    "residual": residual_flow,
    "srflow": srflow,
    "fullglow": fullglow,
}


def presets() -> list[str]:
    """Names of the bundled presets."""
    from ..config import preset_names

    return preset_names()


def build_from_config(model_cfg: dict[str, Any]) -> Flow:
    """Build a model from a resolved ``[model]`` section (``family`` plus builder keywords)."""
    kwargs = dict(model_cfg)
    family = kwargs.pop("family")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family](**kwargs)


def build(name: str, **overrides: Any) -> Flow:
    """The model of preset ``name`` with ``[model]`` keys overridden by ``overrides``."""
    from ..config import resolve_config

    cfg = resolve_config(name, [f"model.{k}={_toml(v)}" for k, v in overrides.items()])
    return build_from_config(cfg["model"])


def _toml(value: Any) -> str:
    """A Python value as a TOML literal for an override."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
