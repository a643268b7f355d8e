"""The ``[data]`` and ``[train]`` sections of a run configuration as typed, validated objects
(:class:`DataConfig`, :class:`TrainConfig`); a ``[model]`` section is declared by its family's
builder signature (:mod:`attnflow.models.registry`) and held by :class:`attnflow.config.ModelConfig`.

Each key is declared once, as a dataclass field typed ``Annotated[type, Key(help, lo=..., hi=...,
choices=...)]`` with its default: the same declaration a model builder's keyword has, read by the
same :func:`~attnflow.schema.signature_fields`. Constructing a section checks every value
(``TrainConfig(lr=0)`` is a :class:`~attnflow.schema.ConfigError` naming ``train.lr`` and its
range), so a section object holds only valid values; ``cfg.train.lr`` is a ``float`` that tools
and type checkers follow. A section also reads as a mapping (``cfg["train"]["lr"]``), the form of
its JSON in ``config.json``.

Upper bounds on sizes are generous sanity limits (well above the papers' settings) that keep a
typo such as ``train.batch_size=640000`` from becoming an out-of-memory crash.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar

from .device import DEVICE_PATTERN
from .precision import PRECISIONS
from .schema import ConfigError, Field, Key, signature_fields, unknown_key

__all__ = ["Section", "DataConfig", "TrainConfig", "SECTION_TYPES", "section_fields"]

S = TypeVar("S", bound="Section")


def _dataset_names() -> tuple[str, ...]:
    from .data import dataset_names

    return tuple(dataset_names())


def _conditions() -> tuple[str, ...]:
    from .data.pairs import CONDITIONS

    return CONDITIONS


@functools.cache
def _fields(cls: type[Section]) -> dict[str, Field]:
    return signature_fields(cls, cls.SECTION)


class Section(Mapping[str, Any]):
    """A validated configuration section: a frozen dataclass whose fields are its keys. Subclasses
    set :attr:`SECTION` (``"data"`` or ``"train"``) and declare their keys as annotated fields."""

    SECTION: ClassVar[str]

    def __post_init__(self) -> None:
        for key, f in _fields(type(self)).items():
            object.__setattr__(self, key, f.check(getattr(self, key)))

    @classmethod
    def fields(cls) -> dict[str, Field]:
        """The :class:`~attnflow.schema.Field` of every key, by key."""
        return _fields(cls)

    @classmethod
    def from_dict(cls: type[S], values: Mapping[str, Any]) -> S:
        """The section of ``values`` (keys it lacks take their defaults); an unknown key lists the
        valid ones."""
        for key in values:
            if key not in _fields(cls):
                raise unknown_key(cls.SECTION, key, _fields(cls))
        return cls(**values)

    def replace(self: S, **values: Any) -> S:
        """A copy with ``values`` changed (checked like any other value)."""
        for key in values:
            if key not in _fields(type(self)):
                raise unknown_key(self.SECTION, key, _fields(type(self)))
        return dataclasses.replace(self, **values)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """The section as its JSON object."""
        return {key: getattr(self, key) for key in _fields(type(self))}

    def __getitem__(self, key: str) -> Any:
        if key not in _fields(type(self)):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_fields(type(self)))

    def __len__(self) -> int:
        return len(_fields(type(self)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"


@dataclass(frozen=True, eq=False, repr=False)
class DataConfig(Section):
    """The ``[data]`` section: which images a run trains and is evaluated on."""

    SECTION: ClassVar[str] = "data"

    name: Annotated[str, Key("dataset", choices=_dataset_names)] = "digits"
    root: Annotated[str, Key("folder or file of the dataset; empty = its default place")] = ""
    n_bits: Annotated[int, Key("reduce to 2**n_bits grey levels; 0 = keep the dataset's", lo=0, hi=8)] = 0
    train_on: Annotated[str, Key("images trained on: train, or train+test (AttnFlow Tables 2-3; test bits/dim are "
                                 "then on seen images)", choices=("train", "train+test"))] = "train"
    test_images: Annotated[int, Key("test images evaluated: at most the first N of the test split; 0 = all of them",
                                    lo=0, hi=10**9)] = 0
    # conditional flows (srflow, fullglow) and their paired data
    condition: Annotated[str, Key("condition image paired with each image: lowres (super-resolution), labelmap "
                                  "(label-to-image toy), paired (folder-pairs sources); none = unconditional",
                                  choices=_conditions)] = "none"
    scale: Annotated[int, Key("downscaling factor of data.condition=lowres", lo=2, hi=64)] = 2
    pad: Annotated[int, Key("zero-pad the images to pad x pad; 0 = no padding", lo=0, hi=4096)] = 0


@dataclass(frozen=True, eq=False, repr=False)
class TrainConfig(Section):
    """The ``[train]`` section: the optimisation, its safeguards, logging, device and budget."""

    SECTION: ClassVar[str] = "train"

    steps: Annotated[int, Key("optimizer steps", lo=1, hi=10**9)] = 1000
    batch_size: Annotated[int, Key("images per step", lo=1, hi=2**16)] = 64
    optimizer: Annotated[str, Key("optimizer (sgd: plain steps, runs compare to float tolerance)",
                                  choices=("adam", "adamax", "sgd"))] = "adam"
    lr: Annotated[float, Key("learning rate", lo=0.0, lo_open=True, hi=1e6)] = 1e-3
    weight_decay: Annotated[float, Key("weight decay", lo=0.0, hi=1e3)] = 0.0
    warmup_steps: Annotated[int, Key("linear learning-rate warm-up; 0 = off", lo=0, hi=10**9)] = 100
    grad_clip: Annotated[float, Key("max global gradient norm; 0 = off", lo=0.0)] = 100.0
    ema_decay: Annotated[float, Key("EMA of the weights for evaluation; 0 = off", lo=0.0, hi=1.0, hi_open=True)] = 0.0
    seed: Annotated[int, Key("random seed", lo=0, hi=2**63 - 1)] = 0
    checkpoint_every: Annotated[int, Key("steps between checkpoints", lo=1, hi=10**9)] = 200
    log_every: Annotated[int, Key("steps between metric lines", lo=1, hi=10**9)] = 10
    eval_every: Annotated[int, Key("steps between test evaluations; 0 = only at the end", lo=0, hi=10**9)] = 0
    eval_batches: Annotated[int, Key("batches per evaluation during training; 0 = whole test set",
                                     lo=0, hi=10**9)] = 0
    max_bad_steps: Annotated[int, Key("consecutive non-finite steps before a rollback to the checkpoint",
                                      lo=1, hi=10**6)] = 5
    max_rollbacks: Annotated[int, Key("rollbacks before training stops as diverged", lo=0, hi=1000)] = 5
    rollback_lr_factor: Annotated[float, Key("learning-rate factor at each rollback", lo=0.0, hi=1.0, lo_open=True,
                                             hi_open=True)] = 0.5
    device: Annotated[str, Key("device to train on; auto = CUDA when available", pattern=DEVICE_PATTERN,
                               pattern_text="auto, cpu, cuda, cuda:N")] = "auto"
    precision: Annotated[str, Key("training autocast of the coupling / dense inner networks; log-dets, priors, "
                                  "Lipschitz layers and inverses stay float32", choices=tuple(PRECISIONS))] = "fp32"
    threads: Annotated[int, Key("torch CPU threads; 0 = torch's default", lo=0, hi=1024)] = 0
    time_limit_s: Annotated[float, Key("seconds of training steps before stopping; 0 = no limit", lo=0.0)] = 0.0
    compile: Annotated[bool, Key("torch.compile the training forward (minutes of compilation first; falls back to "
                                 "eager with one warning when a part cannot compile)")] = False
    clock: Annotated[str, Key("what train.time_limit_s counts: wall = elapsed seconds; cpu = this process's CPU "
                              "seconds (equal compute for runs sharing a machine)", choices=("wall", "cpu"))] = "wall"


#: The section types by section name.
SECTION_TYPES: dict[str, type[Section]] = {"data": DataConfig, "train": TrainConfig}


def section_fields(section: str) -> dict[str, Field]:
    """The fields of the ``[data]`` or ``[train]`` section by key."""
    if section not in SECTION_TYPES:
        raise ConfigError(f"unknown section {section!r}; sections with fixed keys: {', '.join(SECTION_TYPES)}")
    return SECTION_TYPES[section].fields()
