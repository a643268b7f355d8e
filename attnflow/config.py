"""Run configurations: a typed :class:`RunConfig` (``cfg.model``, ``cfg.data``, ``cfg.train``)
resolved from a named TOML preset, a configuration file or a run's saved ``config.json``, with
``section.key=value`` overrides applied at the command line.

Below the command line no value is text: ``cfg.train.lr`` is a checked ``float``, an experiment
changes a run's keys with Python values (``cfg.replace(train={"seed": 2})``) and hands a child
process the whole configuration as a file (``attnflow train --config FILE``). Every value is
checked against its :class:`~attnflow.schema.Field` wherever it comes from. The ``[model]``
fields are those of the family's builder signature (:mod:`attnflow.models.registry`), the
``[data]`` and ``[train]`` fields those of :mod:`attnflow.sections`.

The dict functions (:func:`resolve_config`, :func:`apply_overrides`, :func:`check_config`,
:func:`read_config`) give the same configurations in their JSON form, a dict of section dicts.
The configuration is one-way: this module imports the schema, the sections, the presets and the
model registry; none of them imports it.
"""
from __future__ import annotations

import copy
import json
import os
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any, NamedTuple

from .core import Flow
from .models import build_from_config
from .models.registry import FAMILIES, check_model, model_fields
from .presets import check_sections, load_preset, preset_names
from .schema import SECTIONS, ConfigError, Field
from .sections import DataConfig, Section, TrainConfig, section_fields

__all__ = [
    "RunConfig", "ModelConfig", "DataConfig", "TrainConfig", "Override", "preset_names", "load_preset", "check_config",
    "resolve_config", "apply_overrides", "parse_override", "read_config", "read_config_file", "read_saved_config",
    "field",
]

def field(section: str, key: str, family: str | None = None) -> Field | None:
    """The field of ``section.key`` (for ``[model]``, the one of ``family``), or ``None``."""
    if section == "model":
        return model_fields(family).get(key) if family in FAMILIES else None
    return section_fields(section).get(key) if section in ("data", "train") else None


@dataclass(frozen=True, eq=False)
class ModelConfig(Mapping[str, Any]):
    """The ``[model]`` section: the model ``family`` and its builder keywords ``options``
    (checked against the builder's signature; keys it leaves out take the builder's defaults).
    Reads as attributes, which give every key of the family (``cfg.model.heads`` is the builder's
    default when the section leaves it out), and as the mapping of its JSON, which holds the keys
    it sets (``cfg.model["family"]``, ``dict(cfg.model)``)."""

    family: str
    options: dict[str, Any] = dataclass_field(default_factory=dict)

    def __post_init__(self) -> None:
        if "family" in self.options:
            raise ConfigError(f"model.family is ModelConfig's family ({self.family!r}), not one of its options; "
                              f"give ModelConfig({self.options['family']!r}, ...) instead")
        checked = check_model({"family": self.family, **copy.deepcopy(dict(self.options))})
        del checked["family"]
        object.__setattr__(self, "options", checked)

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> ModelConfig:
        """The section of a ``[model]`` mapping (``family`` plus builder keywords)."""
        if "family" not in section:
            raise ConfigError(f"the [model] section lacks model.family; families: {', '.join(sorted(FAMILIES))}")
        options = dict(section)
        return cls(options.pop("family"), options)

    def build(self) -> Flow:
        """The model (freshly initialised)."""
        return build_from_config(self)

    def replace(self, **options: Any) -> ModelConfig:
        """A copy with builder keywords ``options`` changed (checked); ``family=`` changes the
        family, whose fields then check every key."""
        return ModelConfig.from_dict({**self.to_dict(), **options})

    def to_dict(self) -> dict[str, Any]:
        """The section as its JSON object (a copy)."""
        return {"family": self.family, **copy.deepcopy(self.options)}

    def __getattr__(self, key: str) -> Any:
        options, family = self.__dict__.get("options", {}), self.__dict__.get("family")
        if key in options:
            return options[key]
        fields = model_fields(family) if family in FAMILIES else {}
        if key in fields:
            return copy.deepcopy(fields[key].default)
        raise AttributeError(f"model family {family!r} has no key {key!r}; its keys: {', '.join(sorted(fields))}")

    def __getitem__(self, key: str) -> Any:
        return self.family if key == "family" else self.options[key]

    def __iter__(self) -> Iterator[str]:
        return iter(("family", *self.options))

    def __len__(self) -> int:
        return 1 + len(self.options)


@dataclass(frozen=True, eq=False)
class RunConfig(Mapping[str, Any]):
    """A complete, validated run configuration: ``model``, ``data`` and ``train`` sections.

    ``RunConfig.from_preset("glow-digits", ["train.steps=500"])`` (the command line's form),
    ``RunConfig.load(path)`` (a ``config.json`` or a TOML file with the three tables) and
    ``RunConfig.of(d)`` (a dict of section dicts) make one; ``cfg.replace(train={"lr": 3e-4})``
    changes keys with Python values. It reads as the mapping of its JSON too
    (``cfg["train"]["lr"] == cfg.train.lr``; ``to_dict()`` is that JSON), read-only.
    """

    model: ModelConfig
    data: DataConfig = dataclass_field(default_factory=DataConfig)
    train: TrainConfig = dataclass_field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name, kind in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), kind):
                got = type(getattr(self, name)).__name__
                raise ConfigError(f"RunConfig.{name} must be a {kind.__name__}, got {got}; build a configuration "
                                  "from dicts with RunConfig.of")

    @classmethod
    def of(cls, cfg: RunConfig | Mapping[str, Any]) -> RunConfig:
        """``cfg`` itself, or the configuration of a dict of section dicts: ``[data]`` and
        ``[train]`` keys it lacks take their defaults, keys that moved are read in their new
        section, every value is checked."""
        if isinstance(cfg, RunConfig):
            return cfg
        if not (isinstance(cfg, Mapping) and set(cfg) == set(SECTIONS)
                and all(isinstance(cfg[s], Mapping) for s in SECTIONS)):
            got = sorted(cfg) if isinstance(cfg, Mapping) else type(cfg).__name__
            raise ConfigError(f"a configuration has exactly the sections {', '.join(SECTIONS)} (tables), got {got}")
        sections = {s: dict(cfg[s]) for s in SECTIONS}
        _move_keys(sections)
        return cls(ModelConfig.from_dict(sections["model"]), DataConfig.from_dict(sections["data"]),
                   TrainConfig.from_dict(sections["train"]))

    @classmethod
    def from_preset(cls, preset: str, overrides: Iterable[str] = ()) -> RunConfig:
        """The configuration of preset ``preset`` with ``section.key=value`` ``overrides``."""
        return cls.of(resolve_config(preset, overrides))

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunConfig:
        """The configuration in file ``path``: a ``.toml`` file with ``[model]``, ``[data]`` and
        ``[train]`` tables (a preset's form), or a JSON one (a run's ``config.json``); keys it
        leaves out take their defaults (:func:`read_config_file`)."""
        return cls.from_tables(read_config_file(path), path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunConfig:
        """A run's saved ``config.json``, completed with today's defaults (keys added since it was
        written) and validated; retired keys are dropped, moved ones read in their new section. A
        missing, unreadable or invalid file is a :class:`~attnflow.schema.ConfigError` naming it."""
        return cls.from_tables(_tables(read_saved_config(path), Path(path)), path)

    @classmethod
    def from_tables(cls, tables: Mapping[str, Any], path: str | os.PathLike) -> RunConfig:
        """:meth:`of` the tables read from file ``path``, whose name starts any error."""
        try:
            return cls.of(tables)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def with_overrides(self, overrides: Iterable[str | Override]) -> RunConfig:
        """A copy with ``overrides`` set in order: :class:`Override` values, or the command line's
        ``section.key=value`` texts (parsed by :func:`parse_override`). A key that moved section
        (:data:`MOVED_KEYS`) is set in its new one, with a one-line note."""
        sections = self.to_dict()
        for given in overrides:
            o = parse_override(given) if isinstance(given, str) else given
            section = o.section
            if (section, o.key) in MOVED_KEYS:
                section = MOVED_KEYS[section, o.key][0]
                print(f"attnflow: note: {o.name} is now {section}.{o.key}; {str(given)!r} is read as "
                      f"{section}.{o.key}", file=sys.stderr)
            if section not in SECTIONS:
                raise ConfigError(f"unknown section {section!r} in {str(given)!r}; valid sections: "
                                  f"{', '.join(SECTIONS)}")
            sections[section][o.key] = o.value
        return RunConfig.of(sections)

    def replace(self, model: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
                train: Mapping[str, Any] | None = None) -> RunConfig:
        """A copy with the keys of each given section changed to the given Python values (checked;
        an unknown key lists the valid ones): ``cfg.replace(train={"seed": 1, "steps": 10})``."""
        return RunConfig(self.model.replace(**(model or {})), self.data.replace(**(data or {})),
                         self.train.replace(**(train or {})))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The JSON form: a dict of section dicts (what ``config.json`` holds)."""
        return {"model": self.model.to_dict(), "data": self.data.to_dict(), "train": self.train.to_dict()}

    def __getitem__(self, section: str) -> ModelConfig | Section:
        if section not in SECTIONS:
            raise KeyError(section)
        return getattr(self, section)

    def __iter__(self) -> Iterator[str]:
        return iter(SECTIONS)

    def __len__(self) -> int:
        return len(SECTIONS)


class Override(NamedTuple):
    """One key of a configuration set to a Python value: ``Override("train", "lr", 3e-4)``; the
    command line's ``train.lr=3e-4`` is :func:`parse_override`'s. ``str()`` gives that text back."""

    section: str
    key: str
    value: Any

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def __str__(self) -> str:
        return f"{self.name}={_toml_value(self.value)}"


def _toml_value(value: Any) -> str:
    """``value`` as the text of an override: a bare word for a string that :func:`parse_override`
    reads back as that string, else quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        bare = re.fullmatch(r"[A-Za-z0-9_.:+-]+", value) and _parse_value(value) == value
        return value if bare else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    return repr(value)


def _parse_value(text: str) -> Any:
    """An override's value: TOML (``1e-3``, ``true``, ``[1, 8, 8]``, ``"adam"``), else the bare word."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(text: str) -> Override:
    """``"section.key=value"`` -> ``Override(section, key, value)``; the value is parsed as TOML
    (``1e-3``, ``true``, ``[1, 8, 8]``, ``"adam"``), and a bare word is taken as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.lr=1e-3")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    value = _parse_value(raw.strip())
    if section not in SECTIONS:
        raise ConfigError(f"unknown section {section!r} in {text!r}; valid sections: {', '.join(SECTIONS)}")
    return Override(section, key, value)


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


def read_config_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The tables of a configuration file, as written (values not yet checked, keys left out
    absent): ``.toml`` is read as TOML, anything else as JSON; ``~`` and ``$VARS`` are expanded. A
    missing, unreadable or malformed file is a one-line :class:`~attnflow.schema.ConfigError`."""
    path = Path(os.path.expandvars(os.path.expanduser(path)))
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {path} cannot be read ({exc})") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON (a .toml name is read as TOML)"
        raise ConfigError(f"configuration file {path} is not valid {kind}: {exc}") from None
    return _tables(raw, path)


def read_saved_config(path: str | os.PathLike) -> Any:
    """The JSON of a run's ``config.json`` as saved (keys a run saved before they existed are
    absent); a missing or unreadable file is a :class:`~attnflow.schema.ConfigError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; train with `attnflow train --out {path.parent}`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable JSON configuration ({exc}); restore it or train a new "
                          "run") from None


def _tables(raw: Any, path: Path) -> dict[str, dict[str, Any]]:
    """The ``[model]``, ``[data]`` and ``[train]`` tables of a configuration file's content
    (``[data]``/``[train]`` may be left out); retired model keys are dropped, moved keys moved. A
    content of another shape is a one-line :class:`~attnflow.schema.ConfigError` naming ``path``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} holds a {type(raw).__name__}, not a configuration: give it [model], [data] and "
                          f"[train] tables (a JSON object of three objects)")
    check_sections(raw, str(path))
    for name in SECTIONS:
        if not isinstance(raw.get(name, {}), dict):
            raise ConfigError(f"{path}: [{name}] must be a table of keys, got {type(raw[name]).__name__}")
    tables = {"model": {k: v for k, v in raw["model"].items() if k not in RETIRED_MODEL_KEYS},
              "data": dict(raw.get("data", {})), "train": dict(raw.get("train", {}))}
    _move_keys(tables)
    return tables


def check_config(cfg: Any) -> dict[str, dict[str, Any]]:
    """A complete, validated copy of a configuration (JSON form): ``[data]`` and ``[train]`` keys
    it lacks (for instance keys added to the schema since a run was written) take their defaults,
    and every value is checked against the schema (:meth:`RunConfig.of`)."""
    return RunConfig.of(cfg).to_dict()


def resolve_config(
    preset: str, overrides: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """The full configuration (JSON form) of ``preset`` with ``[data]``/``[train]`` defaults
    filled in and ``overrides`` applied; the preset and the result are validated against the
    schema (an unknown key lists the valid ones, a bad value names its valid range)."""
    raw = load_preset(preset)
    cfg = {"model": dict(raw.get("model", {})), "data": raw.get("data", {}), "train": raw.get("train", {})}
    try:
        cfg = check_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"preset {preset!r}: {exc}") from None
    return apply_overrides(cfg, overrides)


def apply_overrides(
    cfg: Mapping[str, Any], overrides: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """A validated copy (JSON form) of ``cfg`` with ``section.key=value`` ``overrides`` applied in
    order (:meth:`RunConfig.with_overrides`)."""
    return RunConfig.of(cfg).with_overrides(overrides).to_dict()


def read_config(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A run's saved ``config.json`` in JSON form (:meth:`RunConfig.read`)."""
    return RunConfig.read(path).to_dict()
