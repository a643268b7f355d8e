"""The model-family registry: a family is registered by its builder, in the builder's own file::

    @register_family("glow", tiny={"steps": 1, "hidden": 8})
    def glow(shape: Shape = (1, 8, 8), hidden: Hidden = 64, ...) -> Flow: ...

The builder's signature is the family's ``[model]`` schema: every keyword is typed
``Annotated[type, Key(help, lo=..., hi=..., choices=...)]`` (shared keys are the aliases of
:mod:`attnflow.models.keys`) and its default is the default of the key. ``tiny`` is the family's
seconds-fast test configuration (keyword overrides of the builder defaults); the contract test
(``tests/test_families.py``) trains, inverts and checks the change of variables of every
registered family at it. Every module of :mod:`attnflow.models` is imported with the package, so
a new family is its builder file and nothing else.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..core import Flow
from ..schema import ConfigError, Field, signature_fields, unknown_key

__all__ = ["FAMILIES", "TINY", "register_family", "builder_fields", "model_fields", "check_model"]

Builder = TypeVar("Builder", bound=Callable[..., Flow])

#: family name -> builder(**model keys) -> Flow, in registration order
FAMILIES: dict[str, Callable[..., Flow]] = {}
#: family name -> keyword overrides of its builder that make a seconds-fast model
TINY: dict[str, dict[str, Any]] = {}


@functools.cache
def builder_fields(builder: Callable[..., Flow]) -> dict[str, Field]:
    """The ``[model]`` fields of a builder, from its annotated signature."""
    return signature_fields(builder, "model")


def model_fields(family: str) -> dict[str, Field]:
    """The ``[model]`` fields of the registered family ``family``, by key."""
    return builder_fields(FAMILIES[family])


def register_family(name: str, tiny: Mapping[str, Any]) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` as model family ``name`` with test configuration
    ``tiny``; a signature without a :class:`~attnflow.schema.Key` for every keyword, or a ``tiny``
    its fields refuse, fails at import."""

    def register(builder: Builder) -> Builder:
        if name in FAMILIES:
            raise ValueError(f"model family {name!r} is already registered (by {FAMILIES[name].__module__})")
        TINY[name] = check_model({"family": name, **tiny}, {name: builder})
        del TINY[name]["family"]
        FAMILIES[name] = builder
        return builder

    return register


def check_model(
    section: Mapping[str, Any], families: Mapping[str, Callable[..., Flow]] | None = None
) -> dict[str, Any]:
    """A checked copy of a ``[model]`` section (``family`` plus builder keywords) against the
    fields of its family among ``families`` (default: the registered ones): an unknown family or
    key lists the valid ones, a bad value names its valid range."""
    families = FAMILIES if families is None else families
    family = section.get("family")
    if not isinstance(family, str) or family not in families:
        raise ConfigError(f"model.family must be one of: {', '.join(sorted(families))}, got {family!r}")
    valid = builder_fields(families[family])
    out: dict[str, Any] = {"family": family}
    for key, value in section.items():
        if key == "family":
            continue
        if key not in valid:
            users = [f for f, b in families.items() if key in builder_fields(b)]
            raise unknown_key("model", key, valid, family, users)
        out[key] = valid[key].check(value)
    return out
