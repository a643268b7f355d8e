"""The one description of a configuration value: its type, valid range or allowed values and
what it means (:class:`Field`), and the ``Annotated`` metadata (:class:`Key`) from which a model
family's builder signature gives its ``[model]`` fields, and the section dataclasses their
``[data]`` / ``[train]`` fields (:func:`signature_fields`).

A :class:`Field` checks presets, ``--set`` overrides and the ``config.json`` of a resumed or
loaded run alike (:meth:`Field.check`), and the CLI's numeric options (:meth:`Field.argparse_type`),
so every bad value gets the same kind of one-line message naming the key and its valid range::

    train.checkpoint_every must be an integer >= 1 (steps between checkpoints), got 0

This module is the floor of the configuration: it imports nothing from attnflow. The ``[data]``
and ``[train]`` fields are declared in :mod:`attnflow.sections`, each model family's in its
builder's signature (:mod:`attnflow.models.registry`); :mod:`attnflow.config` puts them together.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

__all__ = ["ConfigError", "Field", "Key", "SECTIONS", "signature_fields", "unknown_key"]

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
    ``default`` is the value the key takes when a configuration leaves it out: its builder
    keyword's or section field's default (a list for a tuple default).
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

    def _number(self, value: Any, kind: type | None) -> int | float:
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


_KEY_OPTIONS = frozenset(f.name for f in dataclasses.fields(Field)) - {
    "section", "key", "kind", "help", "item", "default"}


class Key:
    """``Annotated`` metadata of a builder keyword: its help text and the :class:`Field` options
    that bound it (``lo``, ``hi``, ``lo_open``, ``hi_open``, ``choices``, ``length``,
    ``min_length``, ``unique``, ``odd``, ``pattern``); the name, the kind and, for a list, the
    item type come from the parameter itself, the default from its keyword default::

        def glow(hidden: Annotated[int, Key("width of the coupling networks", lo=1, hi=4096)] = 64): ...
    """

    def __init__(self, help: str, **options: Any) -> None:
        unknown = set(options) - _KEY_OPTIONS
        if unknown:
            raise TypeError(f"unknown Key options {sorted(unknown)}; "
                            f"valid: {', '.join(sorted(_KEY_OPTIONS))}")
        self.help = help
        self.options = options

    def __repr__(self) -> str:
        return f"Key({self.help!r}, {self.options!r})"


def _kind(annotation: Any) -> tuple[type, type | None]:
    """``(kind, item)`` of a parameter type: a scalar, or a sequence of ints or floats."""
    if annotation in (int, float, bool, str):
        return annotation, None
    args = typing.get_args(annotation)
    sequence = typing.get_origin(annotation) in (list, tuple, Sequence)
    if sequence and len(args) == 1 and args[0] in (int, float):
        return list, args[0]
    raise TypeError(f"unsupported configuration type {annotation!r}: "
                    "use int, float, bool, str or Sequence[int | float]")


def signature_fields(fn: Callable[..., Any], section: str = "model") -> dict[str, Field]:
    """The :class:`Field` of every parameter of ``fn``, from its ``Annotated[type, Key(...)]``
    annotation; a parameter without one, without a default, or whose default its field refuses
    is a ``TypeError`` naming it."""
    hints = typing.get_type_hints(fn, include_extras=True)
    where = f"{fn.__module__}.{fn.__qualname__}"
    out: dict[str, Field] = {}
    for name, param in inspect.signature(fn).parameters.items():
        hint = hints.get(name)
        keys = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Key)]
        if typing.get_origin(hint) is not Annotated or len(keys) != 1:
            raise TypeError(f"{where}: parameter {name!r} needs a type Annotated[..., Key(help, ...)]")
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"{where}: parameter {name!r} needs a default")
        kind, item = _kind(typing.get_args(hint)[0])
        default = list(param.default) if isinstance(param.default, tuple) else param.default
        f = Field(section, name, kind, keys[0].help, item=item, default=default, **keys[0].options)
        try:
            f.check(default)
        except ConfigError as exc:
            raise TypeError(f"{where}: the default of {name!r} is invalid: {exc}") from None
        out[name] = f
    return out


def unknown_key(section: str, key: str, valid: Iterable[str], family: str | None = None,
                users: Iterable[str] = ()) -> ConfigError:
    """The error of an unknown ``section.key``: the valid keys (of ``family`` for ``[model]``) and
    the families ``users`` that do have the key."""
    users = sorted(users)
    where = f"{section} keys" if family is None else f"keys of model family {family!r}"
    used_by = f" (used by family {', '.join(users)})" if users else ""
    return ConfigError(f"unknown key {section}.{key}{used_by}; valid {where}: {', '.join(sorted(valid))}")
