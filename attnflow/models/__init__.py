"""Assembled architectures, one model family a file, and the family registry.

``build(name, **overrides)`` builds the model of a named preset (see ``presets()``), with any
``[model]`` keyword of its family overridden; ``build_from_config`` builds a resolved ``[model]``
section. Every module of this package is imported with it, so a family registers itself with
:func:`~attnflow.models.registry.register_family` in its own file (see :mod:`.registry`).

``registry.py`` holds the registry (:func:`~attnflow.models.registry.register_family`,
``FAMILIES``, ``TINY``), ``keys.py`` the ``[model]`` keys that families share; every other
module is a family (its builder, whose docstring names the paper) or a piece of one
(``hybrid.py``: the classifier head of the residual family). ``FAMILIES`` lists them; this file
lists none, so that a new family touches nothing here.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from ..core import Flow
from ..presets import load_preset, preset_names
from .registry import FAMILIES, TINY, check_model, register_family

__all__ = ["FAMILIES", "TINY", "build", "build_from_config", "presets", "register_family"]

for _module in pkgutil.iter_modules(__path__):  # each family module registers itself
    importlib.import_module(f"{__name__}.{_module.name}")
# the builders by their names (``from attnflow.models import glow``), as the package has always offered
globals().update({builder.__name__: builder for builder in FAMILIES.values()})
__all__ += [builder.__name__ for builder in FAMILIES.values()]


def presets() -> list[str]:
    """Names of the bundled presets."""
    return preset_names()


def build_from_config(model_cfg: Mapping[str, Any]) -> Flow:
    """Build a model from a resolved ``[model]`` section (``family`` plus builder keywords)."""
    kwargs = dict(model_cfg)
    family = kwargs.pop("family")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family](**kwargs)


def build(name: str, **overrides: Any) -> Flow:
    """The model of preset ``name`` with ``[model]`` keys overridden by ``overrides`` (Python
    values, checked against the family's fields)."""
    return build_from_config(check_model({**load_preset(name).get("model", {}), **overrides}))
