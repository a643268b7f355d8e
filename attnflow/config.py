"""Run configurations: named TOML presets with ``[model]``, ``[data]`` and ``[train]`` sections,
``section.key=value`` overrides, and validation that names the valid keys.

The ``[model]`` section's ``family`` selects a builder from :mod:`attnflow.models`; its other keys
are that builder's keyword arguments, so the valid model keys are the builder's parameters.
"""
from __future__ import annotations

import copy
import inspect
import tomllib
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

__all__ = ["DATA_DEFAULTS", "TRAIN_DEFAULTS", "preset_names", "load_preset", "resolve_config", "parse_override"]

DATA_DEFAULTS: dict[str, Any] = {
    "name": "digits",  # see attnflow.data.dataset_names()
    "root": "",  # folder or file of the dataset ("" = the dataset's default place)
    "n_bits": 0,  # reduce to 2**n_bits levels (0 = keep the dataset's levels)
}

TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 1000,
    "batch_size": 64,
    "optimizer": "adam",  # adam | adamax
    "lr": 1e-3,
    "weight_decay": 0.0,
    "warmup_steps": 100,
    "grad_clip": 100.0,  # max global gradient norm (0 = off)
    "ema_decay": 0.0,  # EMA of weights for evaluation (0 = off)
    "seed": 0,
    "checkpoint_every": 200,
    "log_every": 10,
    "eval_every": 0,  # test bits/dim during training every N steps (0 = only at the end)
    "eval_batches": 0,  # batches per evaluation (0 = whole test set)
    "max_bad_steps": 5,  # consecutive non-finite steps before rolling back to the checkpoint
    "rollback_lr_factor": 0.5,
    "threads": 0,  # torch threads (0 = torch's default)
    "time_limit_s": 0.0,  # stop after this many seconds of training steps, evaluation excluded (0 = no limit)
}

SECTIONS = ("model", "data", "train")


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
        raise ValueError(f"preset {name!r} has unknown sections {sorted(unknown)}; valid: {SECTIONS}")
    if "family" not in cfg.get("model", {}):
        raise ValueError(f"preset {name!r} lacks model.family")
    return cfg


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` -> ``(section, key, value)``; the value is parsed as TOML
    (``1e-3``, ``true``, ``[1, 8, 8]``, ``"adam"``), and a bare word is taken as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. train.lr=1e-3")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def _check_type(where: str, key: str, value: Any, default: Any) -> Any:
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(
            f"{where}.{key} must be of type {type(default).__name__} (like {default!r}), got {value!r}"
        )
    return value


def model_defaults(builder: Callable[..., Any]) -> dict[str, Any]:
    """Keyword parameters of a model builder and their defaults."""
    return {
        n: (None if p.default is inspect.Parameter.empty else p.default)
        for n, p in inspect.signature(builder).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def resolve_config(
    preset: str, overrides: Iterable[str] = (), families: dict[str, Callable[..., Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The full configuration of ``preset`` with defaults filled in and ``overrides`` applied.

    Every key is checked: an unknown key or a value of the wrong type is an error that lists
    the valid keys.
    """
    if families is None:
        from .models import FAMILIES as families  # noqa: N811 - late import avoids a cycle
    raw = load_preset(preset)
    cfg = {
        "model": copy.deepcopy(raw.get("model", {})),
        "data": {**DATA_DEFAULTS, **raw.get("data", {})},
        "train": {**TRAIN_DEFAULTS, **raw.get("train", {})},
    }
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r} in {text!r}; valid sections: {', '.join(SECTIONS)}")
        cfg[section][key] = value
    family = cfg["model"].get("family")
    if family not in families:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(sorted(families))}")
    schemas = {
        "model": model_defaults(families[family]),
        "data": DATA_DEFAULTS,
        "train": TRAIN_DEFAULTS,
    }
    for section, schema in schemas.items():
        for key, value in cfg[section].items():
            if section == "model" and key == "family":
                continue
            if key not in schema:
                raise ValueError(
                    f"unknown key {section}.{key}; valid {section} keys: {', '.join(sorted(schema))}"
                )
            cfg[section][key] = _check_type(section, key, value, schema[key])
    return cfg
