"""The one schema of every configuration value: its type, valid range or allowed values, its
default (``[data]`` and ``[train]``; model defaults are the family builder's keyword defaults)
and, for ``[model]`` keys, the families that use it.

It validates presets, ``--set`` overrides and the ``config.json`` of a resumed or loaded run
alike (:func:`validate_config`), and the CLI's numeric options (:meth:`Field.argparse_type`),
so every bad value gets the same kind of one-line message naming the key and its valid range::

    train.checkpoint_every must be an integer >= 1 (steps between checkpoints), got 0

Extending it (new keys, new model families): call :func:`register` with new :class:`Field` s at
import time of the module that uses them, e.g. for a conditional family ``"srflow"``::

    from attnflow.schema import Field, register, add_family
    register(Field("model", "scale_factor", int, "upscaling factor", lo=2, hi=16, families=("srflow",)),
             Field("data", "lr_root", str, "folder of the low-resolution images", default=""))
    add_family("srflow", "shape", "hidden", "steps")   # shared keys keep one meaning

and add the builder to :data:`attnflow.models.FAMILIES`. A key that means something else in
another family gets its own :class:`Field` with disjoint ``families`` (see ``growth``).
``tests/test_schema.py`` checks that every builder parameter has exactly one field for its family
and that every builder default passes its field.
"""
from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "ConfigError",
    "Field",
    "SECTIONS",
    "register",
    "add_family",
    "field",
    "section_fields",
    "section_defaults",
    "model_fields",
    "validate_config",
]

SECTIONS = ("model", "data", "train")


class ConfigError(ValueError):
    """A configuration value or CLI option that the schema refuses."""


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else f"{x:,}"


@dataclass(frozen=True)
class Field:
    """One configuration key.

    ``kind`` is ``int``, ``float``, ``bool``, ``str`` or ``list`` (of ``item``, an int or float
    type; ``length`` fixes the number of entries, else at least ``min_length``). Numbers (and list
    entries) lie in ``[lo, hi]``, with ``lo_open`` / ``hi_open`` making an end exclusive; strings
    are one of ``choices`` when given (a callable is called at check time, for registries), or
    match the regular expression ``pattern`` in full (``pattern_text`` says what it accepts).
    ``families`` lists the model families that use a ``[model]`` key; ``default`` is the value of
    a ``[data]`` / ``[train]`` key that a preset leaves out.
    """

    section: str
    key: str
    kind: type
    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    pattern: str | None = None
    pattern_text: str = ""
    item: type | None = None
    length: int | None = None
    min_length: int = 0
    unique: bool = False
    odd: bool = False
    families: tuple[str, ...] = ()
    default: Any = None

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def allowed(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    def _range_text(self) -> str:
        if self.lo is not None and self.hi is not None:
            if self.kind is int or self.item is int:
                return f"in {_fmt(self.lo)}..{_fmt(self.hi)}"
            return f"in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        return ""

    def describe(self) -> str:
        """What a valid value looks like, e.g. ``an integer >= 1``."""
        rng = self._range_text()
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            allowed = self.allowed()
            if self.pattern is not None:
                return f"one of: {self.pattern_text}"
            return f"one of: {', '.join(allowed)}" if allowed else "a string"
        if self.kind is list:
            noun = ("odd integers" if self.odd else "integers") if self.item is int else "numbers"
            count = f"a list of {self.length}" if self.length is not None else (
                "a non-empty list of" if self.min_length else "a list of")
            distinct = " distinct" if self.unique else ""
            return f"{count}{distinct} {noun}{' ' + rng if rng else ''}"
        noun = "an integer" if self.kind is int else "a finite number"
        return f"{noun}{' ' + rng if rng else ''}"

    def error(self, value: Any) -> ConfigError:
        return ConfigError(f"{self.name} must be {self.describe()} ({self.help}), got {value!r}")

    def _number(self, value: Any, kind: type) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(value)
        if kind is int and not isinstance(value, int):
            raise self.error(value)
        value = kind(value) if kind is float else value
        if kind is float and not math.isfinite(value):
            raise self.error(value)
        lo_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        hi_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if lo_bad or hi_bad:
            raise self.error(value)
        if self.odd and value % 2 == 0:
            raise self.error(value)
        return value

    def check(self, value: Any) -> Any:
        """``value`` converted to the field's type (an int is a valid float, a list a tuple's
        stand-in), or a :class:`ConfigError` naming the key, its valid values and ``value``."""
        if self.kind in (int, float):
            return self._number(value, self.kind)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise self.error(value)
            return value
        if self.kind is str:
            allowed = self.allowed()
            if not isinstance(value, str) or (allowed and value not in allowed):
                raise self.error(value)
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise self.error(value)
            return value
        if not isinstance(value, (list, tuple)):
            raise self.error(value)
        if (self.length is not None and len(value) != self.length) or len(value) < self.min_length:
            raise self.error(list(value))
        if self.unique and len(set(value)) != len(value):
            raise self.error(list(value))
        try:
            return [self._number(v, self.item) for v in value]
        except ConfigError:
            raise self.error(list(value)) from None

    def argparse_type(self) -> Callable[[str], Any]:
        """A ``type=`` for argparse: parses the text as the field's kind and checks it, so a bad
        option is one line ``argument --n: must be an integer >= 1 (...), got 0``."""
        def parse(text: str) -> Any:
            try:
                value = self.kind(text) if self.kind in (int, float) else text
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {self.describe()} ({self.help}), got {text!r}") from None
            try:
                return self.check(value)
            except ConfigError:
                raise argparse.ArgumentTypeError(f"must be {self.describe()} ({self.help}), got {text!r}") from None

        parse.__name__ = self.key  # argparse names the type in some messages
        return parse


_FIELDS: dict[str, dict[str, list[Field]]] = {s: {} for s in SECTIONS}


def register(*fields: Field) -> None:
    """Add fields to the schema. A ``[model]`` key may have several fields as long as their
    ``families`` are disjoint; a ``[data]`` / ``[train]`` key has one field with a default."""
    for f in fields:
        if f.section not in _FIELDS:
            raise ValueError(f"unknown section {f.section!r}; valid: {', '.join(SECTIONS)}")
        existing = _FIELDS[f.section].setdefault(f.key, [])
        if f.section == "model":
            if not f.families:
                raise ValueError(f"model field {f.key!r} must list the families that use it")
            clash = [g for g in existing if set(g.families) & set(f.families)]
            if clash:
                raise ValueError(f"model.{f.key} is already registered for {sorted(set(clash[0].families) & set(f.families))}")
            existing.append(f)
        else:
            if existing:
                raise ValueError(f"{f.name} is already registered")
            f.check(f.default)
            existing.append(f)


def add_family(family: str, *keys: str) -> None:
    """Let model family ``family`` use the existing (single-field) ``[model]`` keys ``keys``."""
    for key in keys:
        fields = _FIELDS["model"].get(key)
        if not fields or len(fields) != 1:
            raise ValueError(f"model.{key} has {len(fields or [])} fields; register a field for {family!r} instead")
        fields[0] = replace(fields[0], families=(*fields[0].families, family))


def field(section: str, key: str, family: str | None = None) -> Field | None:
    """The field of ``section.key`` (for ``[model]``, the one used by ``family``), or ``None``."""
    for f in _FIELDS.get(section, {}).get(key, []):
        if section != "model" or family in f.families:
            return f
    return None


def section_fields(section: str) -> dict[str, Field]:
    """The fields of the ``[data]`` or ``[train]`` section by key."""
    return {k: fs[0] for k, fs in _FIELDS[section].items()}


def section_defaults(section: str) -> dict[str, Any]:
    """Defaults of the ``[data]`` or ``[train]`` section."""
    return {k: f.default for k, f in section_fields(section).items()}


def model_fields(family: str) -> dict[str, Field]:
    """The ``[model]`` fields that ``family`` uses, by key."""
    return {k: f for k in _FIELDS["model"] if (f := field("model", k, family)) is not None}


def _unknown_key(section: str, key: str, valid: Mapping[str, Any], family: str | None) -> ConfigError:
    users = sorted({fam for f in _FIELDS["model"].get(key, []) for fam in f.families}) if section == "model" else []
    where = f"{section} keys" if family is None else f"keys of model family {family!r}"
    used_by = f" (used by family {', '.join(users)})" if users else ""
    return ConfigError(f"unknown key {section}.{key}{used_by}; valid {where}: {', '.join(sorted(valid))}")


def validate_config(cfg: Mapping[str, Any], families: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Check every key and value of a configuration with ``model``, ``data`` and ``train``
    sections against the schema; returns a copy with the values converted (ints as floats where
    a float is expected). ``families`` are the valid ``model.family`` names (the builders)."""
    if not isinstance(cfg, Mapping) or set(cfg) != set(SECTIONS) or not all(isinstance(cfg[s], Mapping) for s in SECTIONS):
        got = sorted(cfg) if isinstance(cfg, Mapping) else type(cfg).__name__
        raise ConfigError(f"a configuration has exactly the sections {', '.join(SECTIONS)} (tables), got {got}")
    family = cfg["model"].get("family")
    if family not in families:
        raise ConfigError(f"model.family must be one of: {', '.join(sorted(families))}, got {family!r}")
    out: dict[str, dict[str, Any]] = {"model": {"family": family}}
    valid = model_fields(family)
    for key, value in cfg["model"].items():
        if key == "family":
            continue
        if key not in valid:
            raise _unknown_key("model", key, valid, family)
        out["model"][key] = valid[key].check(value)
    for section in ("data", "train"):
        fields = section_fields(section)
        out[section] = {}
        for key, value in cfg[section].items():
            if key not in fields:
                raise _unknown_key(section, key, fields, None)
            out[section][key] = fields[key].check(value)
    return out


from . import fields as _fields  # noqa: E402,F401  - registers the built-in keys (imports this module)
