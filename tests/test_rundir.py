"""The run directory object: its file names, round trips of each file it reads and writes, the
same-set-up check, and the errors of a missing or broken file."""
from __future__ import annotations

import json
import os

import pytest

from attnflow.config import resolve_config
from attnflow.rundir import RunDir, atomic_write, read_metrics, setup_changes
from attnflow.schema import ConfigError


@pytest.fixture(scope="module")
def cfg():
    return resolve_config("glow-digits", ["train.steps=2", "model.hidden=8", "model.steps=1",
                                          "train.threads=1"])


def test_file_names_are_those_users_see(tmp_path):
    """The names the README's run-directory table gives."""
    run = RunDir(str(tmp_path))
    assert run.path == tmp_path
    named = {"config.json": run.config_path, "metrics.jsonl": run.metrics_path,
             "results.json": run.results_path, "checkpoint.pt": run.checkpoint,
             "model.safetensors": run.weights, "samples.png": run.samples, "loss.png": run.curves,
             "train.log": run.log, ".lock": run.lock}
    for name, path in named.items():
        assert path == tmp_path / name


def test_config_round_trip(tmp_path, cfg):
    run = RunDir(tmp_path / "new" / "run")  # the directory is created by the first write
    assert not run.is_run()
    run.write_config(cfg)
    assert run.is_run()
    assert run.saved_config() == cfg
    assert run.config() == cfg
    assert json.loads(run.config_path.read_text()) == cfg
    assert [p.name for p in run.path.iterdir()] == ["config.json"]  # no temporary left behind


def test_metrics_round_trip_and_truncation(tmp_path):
    run = RunDir(tmp_path)
    run.start_metrics()
    assert run.metrics() == []
    rows = [{"step": 1, "bpd": 3.5}, {"step": 2, "bpd": 3.25, "lr": 1e-3}, {"step": 2, "event": "rollback"},
            {"event": "note"}, {"step": 3, "test_bpd": 3.0}]
    for row in rows:
        run.append_metrics(row)
    assert run.metrics() == rows
    assert read_metrics(run.metrics_path) == rows
    written = run.metrics_path.read_text().splitlines()
    run.truncate_metrics(2)
    assert run.metrics() == rows[:4]  # a row without a step counts as step 0
    assert run.metrics_path.read_text().splitlines() == written[:4]  # kept lines are kept as written
    run.truncate_metrics(0)
    assert run.metrics() == [{"event": "note"}]


def test_truncating_absent_metrics_writes_nothing(tmp_path):
    RunDir(tmp_path).truncate_metrics(5)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_blank_metric_lines_are_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n\n  \n{"step": 2}\n')
    assert RunDir(tmp_path).metrics() == [{"step": 1}, {"step": 2}]


def test_results_round_trip(tmp_path):
    run = RunDir(tmp_path)
    assert not run.is_finished()
    results = {"step": 3, "train_seconds": 1.25,
               "test": {"bpd": 2.5, "bpd_stderr": 0.1, "upper_bound": False}}
    run.write_results(results)
    assert run.is_finished()
    assert run.results() == results
    assert run.results_path.read_text() == json.dumps(results, indent=2)  # the format of earlier versions


def test_same_setup_compares_model_and_data_only(tmp_path, cfg):
    run = RunDir(tmp_path)
    run.write_config(cfg)
    other_train = {**cfg, "train": {**cfg["train"], "lr": cfg["train"]["lr"] * 2, "steps": 99}}
    other_model = {**cfg, "model": {**cfg["model"], "hidden": 16}}
    other_data = {**cfg, "data": {**cfg["data"], "n_bits": 3}}
    assert run.setup_changes(cfg) == []
    assert run.setup_changes(other_train) == []
    assert run.setup_changes(other_model) == ["model"]
    assert run.setup_changes(other_data) == ["data"]
    assert run.setup_changes({**other_model, "data": other_data["data"]}) == ["model", "data"]
    assert setup_changes(cfg, other_model) == ["model"]


def test_a_run_saved_before_a_key_existed_has_the_same_setup(tmp_path, cfg):
    """The saved configuration is completed with today's defaults before the comparison."""
    saved = json.loads(json.dumps(cfg))
    del saved["data"]["train_on"]  # a run saved before data.train_on existed; cfg holds its default
    (tmp_path / "config.json").write_text(json.dumps(saved))
    run = RunDir(tmp_path)
    assert "train_on" not in run.saved_config()["data"]
    assert run.setup_changes(cfg) == []
    assert run.setup_changes({**cfg, "data": {**cfg["data"], "train_on": "no-such-split"}}) == ["data"]


def test_missing_metrics_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path} has no metrics.jsonl; is it a run directory"):
        RunDir(tmp_path).metrics()


def test_corrupt_metrics_line_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "bpd": 3.\n')
    with pytest.raises(ValueError, match=f"^{tmp_path / 'metrics.jsonl'} line 2 is not JSON"):
        RunDir(tmp_path).metrics()
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        RunDir(tmp_path).truncate_metrics(1)


@pytest.mark.parametrize("read", ["config", "saved_config"])
def test_missing_or_broken_config_is_named(tmp_path, read):
    run = RunDir(tmp_path)
    with pytest.raises(ConfigError, match=f"^{run.config_path} does not exist; train with `attnflow train"):
        getattr(run, read)()
    run.config_path.write_text('{"model": {"family"')
    with pytest.raises(ConfigError, match=f"^{run.config_path} is not a readable JSON configuration"):
        getattr(run, read)()


def test_not_a_run_message(tmp_path):
    assert RunDir(tmp_path).not_a_run() == f"{tmp_path} is not a run directory (no config.json)"


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")

    def broken(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_stale_temporaries_are_removed(tmp_path):
    run = RunDir(tmp_path)
    stale = [tmp_path / ".checkpoint.pt.abc.tmp", tmp_path / ".config.json.x1.tmp"]
    for p in stale:
        p.write_text("partial")
    (tmp_path / "keep.tmp").write_text("not ours")  # not a hidden temporary of atomic_write
    assert sorted(run.remove_stale_temporaries()) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp"]


def test_resume_refuses_another_setup(tmp_path, cfg):
    """The trainer resumes only a run with the same set-up, naming the sections that differ."""
    from attnflow.train import Trainer

    Trainer(cfg, tmp_path, progress=False).run(stop_at=1)
    other = resolve_config("glow-digits", ["train.steps=2", "model.hidden=16", "model.steps=1",
                                           "train.threads=1", "data.n_bits=3"])
    changed = "with a different model and data configuration; only train"
    with pytest.raises(ValueError, match=f"^cannot resume {tmp_path} {changed}"):
        Trainer(other, tmp_path, resume=True, progress=False)
    assert not RunDir(tmp_path).lock.read_text()  # the refused trainer released the lock


def test_the_report_and_its_metrics_row_agree(trained_run):
    """The end-of-run report (attnflow.train.report) logs its test evaluation as the last metrics row."""
    run = RunDir(trained_run)
    results, last = run.results(), run.metrics()[-1]
    assert last == {"step": results["step"], "test_bpd": results["test"]["bpd"],
                    "test_bpd_stderr": results["test"]["bpd_stderr"], "train_s": results["train_seconds"]}
    assert run.weights.is_file() and run.samples.is_file() and run.curves.is_file()
