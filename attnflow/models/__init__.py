"""Assembled architectures, one model family a file, and the family registry.

``build(name, **overrides)`` builds the model of a named preset (see ``presets()``), with any
``[model]`` keyword of its family overridden; ``build_from_config`` builds a resolved ``[model]``
section. Every module of this package is imported with it, so a family registers itself with
:func:`~attnflow.models.registry.register_family` in its own file (see :mod:`.registry`).

================  =====================================================  ===================================
file              holds                                                  paper
================  =====================================================  ===================================
registry.py       register_family, FAMILIES, TINY, check_model
keys.py           the [model] keys shared by families (Shape, Hidden,
                  Heads, ...) as Annotated types
glow.py           glow (multi-scale, affine couplings, iMap / iSDP)       Glow; AttnFlow
flowpp.py         flowpp (mixture couplings, variational dequantization)  Flow++ (Ho et al. 2019)
marflow.py        marflow (multi-scale autoregressive priors)             mARFlow (Bhattacharyya et al. 2020)
residual_flow.py  residual_flow (i-ResNet, Residual Flow, i-DenseNet       ACF; Behrmann et al. 2019; Chen
                  with Lipschitz attention)                              et al. 2019; Perugachi-Diaz 2021
hybrid.py         HybridFlow (classifier head on the latent)             Residual Flows; Nalisnick 2019
denseflow.py      denseflow (cross-unit noise augmentation)              DenseFlow (Grcić et al. 2021)
srflow.py         srflow (conditional super-resolution, cAttnFlow)       SRFlow (Lugmayr et al. 2020)
fullglow.py       fullglow (image-to-image translation)                  Full-Glow (Sorkhei et al. 2021)
nsf.py            nsf (rational-quadratic spline couplings)              NSF (Durkan et al. 2019)
================  =====================================================  ===================================
"""
from __future__ import annotations

import importlib
import pkgutil
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


def build_from_config(model_cfg: dict[str, Any]) -> Flow:
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
