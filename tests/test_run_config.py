"""The typed run configuration (:class:`attnflow.config.RunConfig`): typed, checked sections, the
same JSON as before, configuration files for ``attnflow train --config``, and the experiments'
own option types."""
import dataclasses
import json
import typing
from pathlib import Path

import pytest

from attnflow.cli import main
from attnflow.config import (
    DataConfig,
    ModelConfig,
    Override,
    RunConfig,
    TrainConfig,
    parse_override,
    preset_names,
    resolve_config,
)
from attnflow.experiments import EXPERIMENTS, ExperimentOptions, make_settings
from attnflow.experiments.heads import HeadsOptions
from attnflow.experiments.table import TableOptions
from attnflow.schema import ConfigError

RUNS = Path(__file__).parent / "fixtures" / "runs-0.1.0"
TINY = ["model.steps=1", "model.hidden=8", "train.steps=2", "train.threads=1", "train.log_every=1"]


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_is_the_same_json_typed(preset):
    """A preset's RunConfig is its JSON form (as ``resolve_config`` gives it, as ``config.json``
    holds it) read as typed attributes; the JSON round trip gives the same configuration."""
    cfg = RunConfig.from_preset(preset)
    as_json = resolve_config(preset)
    assert cfg.to_dict() == as_json and cfg == as_json
    assert RunConfig.of(json.loads(json.dumps(as_json))).to_dict() == as_json
    assert cfg.model.family == as_json["model"]["family"]
    for section in ("data", "train"):
        for key, value in as_json[section].items():
            assert getattr(cfg[section], key) == value == cfg[section][key]


@pytest.mark.parametrize("kind", [DataConfig, TrainConfig])
def test_section_fields_are_typed_as_their_checks(kind):
    """Every key's annotation is the type its field checks and its value has."""
    hints = typing.get_type_hints(kind)
    section = kind()
    assert set(kind.fields()) == {f.name for f in dataclasses.fields(kind)}
    for key, f in kind.fields().items():
        assert hints[key] is f.kind  # the annotation without its Key
        assert type(getattr(section, key)) is f.kind


def test_sections_refuse_bad_values_when_made():
    with pytest.raises(ConfigError, match=r"train.lr must be a finite number in \(0, 1e\+06\]"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="data.n_bits must be an integer in 0..8"):
        DataConfig(n_bits=9)
    cfg = RunConfig.from_preset("glow-digits")
    with pytest.raises(ConfigError, match="unknown key train.sed; valid train keys: batch_size"):
        cfg.replace(train={"sed": 1})
    with pytest.raises(ConfigError, match="model.hidden must be an integer"):
        cfg.replace(model={"hidden": 0})
    with pytest.raises(ConfigError, match="unknown key model.blocks"):
        cfg.model.replace(blocks=2)
    with pytest.raises(TypeError):
        cfg["train"]["lr"] = 1.0  # read-only: a changed configuration is a new one
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError, match="model family 'glow' has no key 'blocks'"):
        getattr(cfg.model, "blocks")  # noqa: B009 (the attribute access is what is tested)


def test_typed_changes_equal_the_command_lines():
    """Python values (``replace``, :class:`Override`) and the command line's texts give the same
    configuration; an int is a valid float and becomes one."""
    texts = ["train.lr=3e-4", "model.positions=[2]", "model.attention=imap", "train.seed=7"]
    by_text = RunConfig.from_preset("glow-digits", texts)
    by_value = RunConfig.from_preset("glow-digits").replace(
        train={"lr": 3e-4, "seed": 7}, model={"positions": [2], "attention": "imap"})
    by_override = RunConfig.from_preset("glow-digits").with_overrides(
        [Override("train", "lr", 3e-4), Override("model", "positions", [2]), Override("model", "attention", "imap"),
         Override("train", "seed", 7)])
    assert by_text.to_dict() == by_value.to_dict() == by_override.to_dict()
    assert isinstance(by_text.train.lr, float) and by_text.model.positions == [2]
    assert RunConfig.from_preset("glow-digits").replace(train={"lr": 1}).train.lr == 1.0
    for text in texts + ['data.root="a b/c"', "train.compile=true"]:
        assert parse_override(str(parse_override(text))) == parse_override(text)


def test_a_moved_key_set_as_a_value_is_read_in_its_new_section(capsys):
    cfg = RunConfig.from_preset("resflow-digits-hybrid").with_overrides([Override("train", "likelihood_weight", 4)])
    assert cfg.model.likelihood_weight == 4.0 and "likelihood_weight" not in cfg.train
    assert "train.likelihood_weight is now model.likelihood_weight" in capsys.readouterr().err


def test_configuration_files(tmp_path):
    """``RunConfig.load``: a TOML file in a preset's form, or a run's JSON; one-line errors."""
    toml = tmp_path / "mine.toml"
    toml.write_text('[model]\nfamily = "glow"\nshape = [1, 8, 8]\nsteps = 1\nhidden = 8\n\n[train]\nlr = 0.002\n')
    cfg = RunConfig.load(toml)
    assert (cfg.model.family, cfg.model.hidden, cfg.train.lr, cfg.train.steps, cfg.data.name) == \
        ("glow", 8, 0.002, TrainConfig().steps, "digits")
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(cfg.to_dict()))
    assert RunConfig.load(saved).to_dict() == cfg.to_dict()
    cases = {
        "missing.toml": (None, "configuration file .*missing.toml does not exist"),
        "bad.toml": ("[model\n", "is not valid TOML"),
        "bad.json": ("{", r"is not valid JSON \(a .toml name is read as TOML\)"),
        "sections.toml": ('[model]\nfamily = "glow"\n[optim]\nlr = 1\n', r"has unknown sections \['optim'\]"),
        "family.toml": ("[model]\nhidden = 8\n", "lacks model.family"),
        "key.toml": ('[model]\nfamily = "glow"\n[train]\nlr = -1\n', "train.lr must be a finite number"),
    }
    for name, (text, match) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=match):
            RunConfig.load(tmp_path / name)


def test_train_takes_a_configuration_file(tmp_path, capsys):
    """``attnflow train --config FILE`` trains the file's configuration (with ``--set`` on top);
    ``--config`` and ``--preset`` exclude each other; a run's own config.json trains it again."""
    toml = tmp_path / "mine.toml"
    toml.write_text('[model]\nfamily = "glow"\nsteps = 1\nhidden = 8\n\n[train]\nsteps = 2\nthreads = 1\n'
                    'warmup_steps = 1\nlog_every = 1\n')
    main(["train", "--config", str(toml), "--set", "train.seed=3", "--out", str(tmp_path / "a"), "--quiet"])
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (saved["model"]["hidden"], saved["train"]["steps"], saved["train"]["seed"]) == (8, 2, 3)
    main(["train", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b"), "--quiet"])
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == saved
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") and len(_losses(tmp_path / "a")) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(toml), "--preset", "glow-digits", "--out", str(tmp_path / "c")])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    other = tmp_path / "other.toml"
    other.write_text(toml.read_text().replace("hidden = 8", "hidden = 4"))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(other), "--out", str(tmp_path / "a"), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "was not trained from --config" in err and "[model] differs" in err
    more = tmp_path / "more.toml"
    more.write_text(toml.read_text().replace("steps = 2", "steps = 3").replace("threads = 1", "threads = 1\nseed = 3"))
    main(["train", "--config", str(more), "--out", str(tmp_path / "a"), "--resume", "--quiet"])
    assert json.loads((tmp_path / "a" / "results.json").read_text())["step"] == 3


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["bpd"]) for r in rows if "bpd" in r]


def test_experiment_options_have_their_own_types():
    """An experiment's own options are its option type's fields, each an ExperimentOptions field
    (the command line sets it by name); others' options are refused naming who takes them."""
    own = {name: e.options for name, e in EXPERIMENTS.items() if e.options is not None}
    assert own == {"heads": HeadsOptions, "table": TableOptions}
    options = {f.name for f in dataclasses.fields(ExperimentOptions)}
    for kind in own.values():
        assert {f.name for f in dataclasses.fields(kind)} <= options
    table = make_settings("table", "unused", importance_samples=4)
    assert table.option(TableOptions) == TableOptions(4, 0) and table.option(HeadsOptions) == HeadsOptions()
    assert make_settings("heads", "unused", heads=[2, 3]).option(HeadsOptions).heads == (2, 3)
    assert make_settings("heads", "unused").option(HeadsOptions).heads is None
    with pytest.raises(ValueError, match="--importance-images applies to the table experiment only"):
        make_settings("heads", "unused", importance_images=4)
    with pytest.raises(ValueError, match="--heads must be head counts >= 1"):
        make_settings("heads", "unused", heads=[0])
    with pytest.raises(ValueError, match="--importance-samples and --importance-images must be >= 0"):
        make_settings("table", "unused", importance_samples=-1)


def test_experiment_overrides_are_parsed_once():
    """``--set`` texts become typed values at the command line; a run's configuration is built
    from them without text."""
    settings = make_settings("convergence", "unused", data="digits", overrides=["train.lr=2e-3", "model.hidden=8"])
    assert settings.overrides == (Override("train", "lr", 2e-3), Override("model", "hidden", 8))
    with pytest.raises(ConfigError, match="unknown section 'optim'"):
        make_settings("convergence", "unused", overrides=["optim.lr=1"])


def test_model_config_builds_its_family():
    model = ModelConfig("glow", {"steps": 1, "hidden": 8, "shape": [1, 8, 8]})
    flow = model.build()
    assert flow.shape == (1, 8, 8) and model.to_dict()["family"] == "glow" and dict(model)["hidden"] == 8
    with pytest.raises(ConfigError, match="model.family must be one of"):
        ModelConfig("nope")


def test_configuration_files_of_another_shape_are_one_line_errors(tmp_path):
    cases = {"five.json": ("5", "holds a int, not a configuration"),
             "null.json": ("null", "holds a NoneType, not a configuration"),
             "list.json": ("[]", "holds a list, not a configuration"),
             "text.json": ('"abc"', "holds a str, not a configuration"),
             "data.json": ('{"model": {"family": "glow"}, "data": 5}', r"\[data\] must be a table of keys, got int")}
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=match) as exc:
            RunConfig.load(tmp_path / name)
        assert str(exc.value).count(str(tmp_path / name)) == 1  # the file is named once


def test_an_old_config_json_with_retired_keys_trains_again(tmp_path):
    old = json.loads((RUNS / "residual-l2" / "config.json").read_text())
    old["model"].update(power_tol=1e-3, power_max_iter=100)
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert RunConfig.load(tmp_path / "config.json").to_dict() == RunConfig.read(tmp_path / "config.json").to_dict()
    assert "power_tol" not in RunConfig.load(tmp_path / "config.json").model


def test_model_config_family_and_defaults():
    cfg = RunConfig.from_preset("glow-digits")
    assert "heads" not in cfg.model and cfg.model.heads == 1  # the builder's default, read as an attribute
    with pytest.raises(ConfigError, match="model.family is ModelConfig's family"):
        ModelConfig("glow", {"family": "residual", "blocks": 2})
    assert cfg.replace(model={"family": "nsf", "hidden": 8}).model.family == "nsf"  # every key checked again
    with pytest.raises(ConfigError, match="unknown key model.steps .*valid keys of model family .residual."):
        cfg.replace(model={"family": "residual"})


def test_a_run_config_holds_its_own_sections_and_copies():
    cfg = RunConfig.from_preset("glow-digits")
    with pytest.raises(ConfigError, match="RunConfig.data must be a DataConfig, got TrainConfig"):
        RunConfig(cfg.model, cfg.train, cfg.data)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="RunConfig.train must be a TrainConfig, got dict"):
        RunConfig(cfg.model, cfg.data, {"lr": 1.0})  # type: ignore[arg-type]
    shape = cfg.model.shape
    cfg.to_dict()["model"]["shape"].append(99)
    assert cfg.model.shape == shape == [1, 8, 8]


def test_override_texts_read_back_as_their_values():
    for value in ("1", "true", "inf", "a b", "dot", 1, 1.5, True, [1, 2]):
        o = Override("data", "root", value)
        assert parse_override(str(o)) == o, str(o)


def test_a_resume_with_a_partial_configuration_file_keeps_the_saved_train_keys(tmp_path, capsys):
    toml = tmp_path / "mine.toml"
    toml.write_text('[model]\nfamily = "glow"\nsteps = 1\nhidden = 8\n\n[train]\nsteps = 2\nthreads = 1\nlr = 3e-4\n'
                    'checkpoint_every = 1\n')
    main(["train", "--config", str(toml), "--out", str(tmp_path / "a"), "--quiet"])
    (tmp_path / "more.toml").write_text('[model]\nfamily = "glow"\nsteps = 1\nhidden = 8\n\n[train]\nsteps = 3\n')
    main(["train", "--config", str(tmp_path / "more.toml"), "--out", str(tmp_path / "a"), "--resume", "--quiet"])
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["train"]
    assert (saved["steps"], saved["lr"], saved["checkpoint_every"], saved["threads"]) == (3, 3e-4, 1, 1)


def test_the_trainer_itself_refuses_what_a_resume_cannot_change(tmp_path):
    from attnflow.train import Trainer

    cfg = RunConfig.from_preset("glow-digits", TINY)
    Trainer(cfg, tmp_path / "r", progress=False).run()
    for key, value in (("batch_size", 32), ("seed", 5)):
        with pytest.raises(ValueError, match=f"train.{key} cannot change on --resume"):
            Trainer(cfg.replace(train={key: value, "steps": 3}), tmp_path / "r", resume=True, progress=False)
