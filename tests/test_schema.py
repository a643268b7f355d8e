"""The configuration schema: complete for every family, and every value either trains or is
refused with one clear line (property-based, with hypothesis)."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from attnflow.cli import USER_ERRORS
from attnflow.config import field, preset_names, read_config, resolve_config
from attnflow.models.registry import TINY as REGISTRY_TINY, model_fields
from attnflow.schema import ConfigError, Field
from attnflow.sections import section_fields
from attnflow.train import Trainer

# A cheap configuration of each family (one preset each); hypothesis changes one key of it.
TINY = {
    "glow-digits": ["model.steps=1", "model.hidden=8"],
    "flowpp-digits": ["model.steps=1", "model.hidden=8"],
    "flowpp-digits-vardeq": ["model.steps=1", "model.hidden=8", "model.deq_hidden=4"],
    "marflow-digits": ["model.steps=1", "model.hidden=8"],
    "resflow-digits": ["model.blocks=1", "model.hidden=8", "model.heads=1"],
    "denseflow-digits": ["model.units=[1, 1]", "model.modules=[1, 1]"],
}
TRAIN = ["train.batch_size=8", "train.warmup_steps=1", "train.threads=1", "train.steps=3"]


def _registered_family_presets() -> dict[str, list[str]]:
    """Every registered family that ``TINY`` lacks, on its first digits preset at the registry's
    tiny configuration: a new family is fuzzed without an entry here."""
    covered = {resolve_config(name)["model"]["family"] for name in TINY}
    found: dict[str, list[str]] = {}
    for name in preset_names():
        cfg = resolve_config(name)
        family = cfg["model"]["family"]
        if family not in covered and cfg["data"]["name"] == "digits":
            covered.add(family)
            found[name] = [f"model.{k}={_toml(v)}" for k, v in REGISTRY_TINY[family].items()]
    return found


def _toml(value):
    """A Python value as a TOML literal for an override."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


TINY.update(_registered_family_presets())


def test_messages_name_key_range_and_value():
    f = section_fields("train")["checkpoint_every"]
    with pytest.raises(ConfigError) as exc:
        f.check(0)
    assert str(exc.value) == ("train.checkpoint_every must be an integer in 1..1,000,000,000 "
                              "(steps between checkpoints), got 0")
    assert "in (0, 1)" in field("train", "rollback_lr_factor").describe()
    assert field("model", "growth", "denseflow").lo == 0 and field("model", "growth", "residual").lo == 1


@pytest.mark.parametrize(
    "override,match",
    [
        # the catalogue's silently accepted values (issue 12, "Bad values accepted silently")
        ("train.steps=-5", r"train.steps must be an integer in 1\.\."),
        ("train.time_limit_s=-5", r"train.time_limit_s must be a finite number >= 0"),
        ("train.eval_every=-1", r"train.eval_every must be an integer in 0\.\."),
        ("train.warmup_steps=-3", r"train.warmup_steps must be an integer in 0\.\."),
        ("train.grad_clip=-1", r"train.grad_clip must be a finite number >= 0"),
        # the catalogue's raw tracebacks
        ("train.checkpoint_every=0", r"train.checkpoint_every must be an integer in 1\.\."),
        ("train.log_every=0", r"train.log_every must be an integer in 1\.\."),
        ("train.threads=-1", r"train.threads must be an integer in 0\.\.1,024"),
        ("model.hidden=-4", r"model.hidden must be an integer in 1\.\.4,096"),
        ("model.hidden=0", r"model.hidden must be an integer in 1\.\.4,096"),
        # more of the same kind
        ("train.lr=nan", r"train.lr must be a finite number in \(0, 1e\+06\]"),
        ("train.ema_decay=1.0", r"train.ema_decay must be a finite number in \[0, 1\)"),
        ("train.optimizer=lbfgs", r"train.optimizer must be one of: adam, adamax, sgd"),
        ("model.positions=[4, 4]", r"model.positions must be a list of distinct integers in 1\.\.4"),
        ("model.squeeze_first=true", r"unknown key model.squeeze_first \(used by family residual\)"),
    ],
)
def test_bad_values_are_refused_with_their_range(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config("glow-digits", [override])


def test_resumed_config_is_validated_and_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model": {"family": "glow"}, "data": {}, "train": {"steps": -5}}')
    with pytest.raises(ConfigError, match=f"{path}: train.steps must be an integer"):
        read_config(path)
    path.write_text('{"model": ')
    with pytest.raises(ConfigError, match=f"{path} is not a readable JSON configuration"):
        read_config(path)


def test_cli_option_fields_parse_and_check():
    n = Field("cli", "n", int, "number of images", lo=1).argparse_type()
    assert n("3") == 3
    for bad in ("0", "-1", "2.5", "x"):
        with pytest.raises(Exception, match="must be an integer >= 1"):
            n(bad)


# -- property: any value trains a step or is refused in one clear line --------------------------

def _valid(f: Field) -> st.SearchStrategy:
    """Cheap valid values (sizes near their minimum so that one step stays fast)."""
    if f.kind is bool:
        return st.booleans()
    if f.kind is str:
        return st.sampled_from(f.allowed()) if f.allowed() else st.just("")
    if f.kind is float:
        lo = f.lo if f.lo is not None else -10.0
        hi = min(f.hi if f.hi is not None else lo + 10.0, lo + 10.0)
        return st.floats(lo, hi, exclude_min=f.lo_open, exclude_max=f.hi_open or f.hi is None,
                         allow_nan=False, allow_infinity=False)
    lo = int(f.lo if f.lo is not None else 0)
    ints = st.integers(lo, min(int(f.hi) if f.hi is not None else lo + 3, lo + 3))
    if f.odd:
        ints = ints.map(lambda v: v | 1)
    if f.kind is list:
        size = f.length if f.length is not None else None
        return st.lists(ints, min_size=size or f.min_length, max_size=size or 3, unique=f.unique)
    return ints


def _invalid(f: Field) -> st.SearchStrategy:
    """Values of the wrong type or out of range."""
    wrong_type = st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2),
                           st.floats(allow_nan=True, allow_infinity=True))
    out_of_range = st.nothing()
    if f.kind in (int, float) and f.lo is not None:
        out_of_range = st.integers(-10**12, int(math.floor(f.lo)) - 1)
    if f.kind in (int, float) and f.hi is not None:
        out_of_range = out_of_range | st.integers(int(math.ceil(f.hi)) + 1, int(math.ceil(f.hi)) + 10**12)
    return wrong_type | out_of_range


@st.composite
def one_setting(draw):
    preset = draw(st.sampled_from(sorted(TINY)))
    family = resolve_config(preset)["model"]["family"]
    fields = [*model_fields(family).values(), *section_fields("train").values(), *section_fields("data").values()]
    f = draw(st.sampled_from(fields))
    value = draw(_valid(f) | _invalid(f))
    return preset, f, value


def _trains_a_step_or_refuses(tmp_path_factory, preset, f, value):
    threads = torch.get_num_threads()
    override = f"{f.section}.{f.key}={_toml(value)}"
    try:
        cfg = resolve_config(preset, TINY[preset] + TRAIN + [override])
        result = Trainer(cfg, tmp_path_factory.mktemp("run"), progress=False).run(stop_at=1)
        assert result.get("interrupted_at", result.get("step")) == 1, (override, result)  # steps=1 finishes
    except USER_ERRORS as exc:
        message = str(exc)
        assert message and "\n" not in message, (override, message)
        assert "Traceback" not in message
    finally:
        torch.set_num_threads(threads)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(one_setting())
def test_any_value_trains_a_step_or_is_refused_clearly(tmp_path_factory, setting):
    _trains_a_step_or_refuses(tmp_path_factory, *setting)


@pytest.mark.slow
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(one_setting())
def test_any_value_trains_a_step_or_is_refused_clearly_many(tmp_path_factory, setting):
    _trains_a_step_or_refuses(tmp_path_factory, *setting)
