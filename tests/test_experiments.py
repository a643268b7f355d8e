"""`attnflow experiment`: every experiment on the bundled digits at a tiny budget (tiny models, a
few steps each), its report, figures and numbers; listing, errors and resuming."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnflow.cli import main
from attnflow.config import Override
from attnflow.experiments import DATA_SETS, DEFAULTS, EXPERIMENTS, count_runs, make_settings
from attnflow.experiments.parallel import child_threads
from attnflow.experiments.plumbing import RunSpec, run_config

# tiny models, one thread, a metrics line every step, no evaluation during training, short log-det series
TINY = ["--data", "digits", "--budget", "0.04", "--quiet", "--set", "model.hidden=8", "--set", "train.eval_every=0",
        "--set", "train.threads=1", "--set", "train.log_every=1"]
RESIDUAL = ["--set", "model.blocks=1", "--set", "model.eval_n_exact=2"]


def experiment(capsys, name, out, *argv):
    main(["experiment", name, "--out", str(out), *TINY, *argv])
    return capsys.readouterr().out


def outputs(out: Path, *pngs: str) -> dict:
    """``results.json`` of an experiment directory, after checking its report embeds ``pngs``
    (which exist) and the command that made it."""
    report = (out / "report.md").read_text()
    assert "attnflow experiment " in report
    for png in pngs:
        assert (out / png).is_file() and f"]({png})" in report, png
    return json.loads((out / "results.json").read_text())


def finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


@pytest.fixture(scope="module")
def convergence(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments") / "convergence"
    main(["experiment", "convergence", "--out", str(out), *TINY, *RESIDUAL, "--seeds", "2", "--set", "model.steps=1",
          "--preset", "glow-digits", "glow-digits-imap", "resflow-digits", "acf-resflow-l2-digits"])
    return out


def test_convergence(convergence):
    res = outputs(convergence, "convergence-glow.png", "convergence-residual.png")
    assert [r["seed"] for r in res["runs"]] == [0, 1] * 4 and all(r["status"] == "trained" for r in res["runs"])
    for family, specs in (("glow", ("glow-digits", "glow-digits-imap")),
                          ("residual", ("resflow-digits", "acf-resflow-l2-digits"))):
        for spec in specs:
            entry = res["families"][family][spec]
            assert entry["test_bpd"]["n"] == 2 and finite(entry["test_bpd"]["mean"], entry["test_bpd"]["std"])
            band = entry["curves"]["by_step"]
            assert all(lo <= m <= hi for lo, m, hi in zip(band["min"], band["mean"], band["max"]))
            assert len(entry["curves"]["seconds"]) == len(entry["curves"]["by_time"]["mean"])
    assert "min to max over seeds" in (convergence / "report.md").read_text()


def test_convergence_compares_a_family_at_its_last_common_step(convergence):
    res = outputs(convergence)
    logged = {}  # run directory name -> [(step, training bits/dim)]
    for run in res["runs"]:
        rows = [json.loads(line) for line in (convergence / run["dir"] / "metrics.jsonl").read_text().splitlines()]
        logged[Path(run["dir"]).name] = [(m["step"], m["bpd"]) for m in rows if "bpd" in m]
    for specs in res["families"].values():
        dirs = {spec: [d for d in logged if d.rsplit("-seed", 1)[0] == spec] for spec in specs}
        common = min(max(s for s, _ in logged[d]) for ds in dirs.values() for d in ds)
        for spec, entry in specs.items():
            assert entry["common_step"] == common
            windows = [[b for s, b in logged[d] if 0.9 * common < s <= common] for d in dirs[spec]]
            per_seed = [sum(w) / len(w) for w in windows]
            at_step = entry["train_bpd_at_common_step"]
            assert at_step["n"] == 2 and at_step["mean"] == pytest.approx(sum(per_seed) / 2)
            assert at_step["min"] == pytest.approx(min(per_seed)) and at_step["max"] == pytest.approx(max(per_seed))
    assert f"training bits/dim at step {common}" in (convergence / "report.md").read_text()


def test_resume_reuses_finished_runs_and_resumes_interrupted_ones(convergence, capsys):
    done = convergence / "runs" / "glow-digits-seed0"
    interrupted = convergence / "runs" / "glow-digits-seed1"
    (interrupted / "results.json").unlink()  # as if stopped before the end: only its checkpoint is left
    mtimes = {p: p.stat().st_mtime_ns for p in (convergence / "runs").glob("*/checkpoint.pt")
              if p.parent != interrupted}
    text = experiment(capsys, "convergence", convergence, *RESIDUAL, "--seeds", "2", "--set", "model.steps=1",
                      "--preset", "glow-digits", "glow-digits-imap", "resflow-digits", "acf-resflow-l2-digits")
    assert text.count("reusing") == 7 and "resuming into " + str(interrupted) in text
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # finished runs were not retrained
    statuses = {r["dir"]: r["status"] for r in outputs(convergence)["runs"]}
    assert statuses["runs/glow-digits-seed1"] == "resumed" and statuses["runs/glow-digits-seed0"] == "reused"
    assert (interrupted / "results.json").is_file() and done.is_dir()


def test_resume_refuses_a_different_model(convergence, capsys):
    with pytest.raises(SystemExit) as exc:
        experiment(capsys, "convergence", convergence, "--seeds", "2", "--set", "model.steps=2",
                   "--preset", "glow-digits")
    assert exc.value.code == 2 and "different model configuration" in capsys.readouterr().err


def test_heads_records_refused_counts(tmp_path, capsys):
    experiment(capsys, "heads", tmp_path, *RESIDUAL, "--set", "model.steps=1", "--heads", "1", "64",
               "--preset", "acf-resflow-l2-digits", "glow-digits-isdp")
    res = outputs(tmp_path, "heads.png")
    for base in ("acf-resflow-l2-digits", "glow-digits-isdp"):
        one, many = res["bases"][base]
        assert one["heads"] == 1 and finite(one["test_bpd"]["mean"], one["seconds_per_step"]["mean"])
        assert many["heads"] == 64 and "64" in many["error"]  # more heads than features: refused, not a crash
    assert "refused: " in (tmp_path / "report.md").read_text()


def test_positions(tmp_path, capsys):
    experiment(capsys, "positions", tmp_path, "--set", "model.steps=1", "--preset", "glow-digits", "glow-digits-isdp",
               "--test-images", "50")
    res = outputs(tmp_path, "positions.png")
    assert res["test_images"] == 50 and {r["test_images"] for r in res["runs"]} == {50}
    assert "the first 50 test images of each run's data (`--test-images 50`)" in (tmp_path / "report.md").read_text()
    rows = res["rows"]
    assert [r["position"] for r in rows] == [None, 1, 2, 3, 4]
    assert all(finite(r["test_bpd"]["mean"], r["seconds_per_step"]["mean"]) for r in rows)


def test_perturbation_noise_is_a_variance(tmp_path, capsys):
    experiment(capsys, "perturbation", tmp_path, *RESIDUAL,
               "--preset", "acf-resflow-dot-digits", "acf-resflow-l2-digits")
    res = outputs(tmp_path, "perturbation.png", "perturbation-acf-resflow-l2-digits.png")
    assert res["variances"] == [1e-4, 1e-3, 1e-2, 1e-1, 1.0] and "variance" in res["noise"]
    rows = res["models"]["acf-resflow-l2-digits"]
    assert [r["noise_std"] for r in rows] == pytest.approx([0.01, 10**-1.5, 0.1, 10**-0.5, 1.0])  # std = sqrt(variance)
    for r in rows:
        assert r["inverse"] == "ok" and finite(r["bpd"], r["reconstruction_bpd"], r["log_likelihood"], r["logdet"],
                                               r["max_reconstruction_error"])
    assert rows[0]["bpd"] < rows[-1]["bpd"]  # noise of variance 1 is far less likely than 1e-4
    assert set(res["models"]) == {"acf-resflow-dot-digits", "acf-resflow-l2-digits"}
    assert "sigma is the variance" in (tmp_path / "report.md").read_text()


def test_interpolation_of_an_existing_run(convergence, tmp_path, capsys):
    run = convergence / "runs" / "acf-resflow-l2-digits-seed0"
    text = experiment(capsys, "interpolation", tmp_path, "--run", str(run))
    assert "training" not in text
    res = outputs(tmp_path, "interpolation-0.png", "interpolation-bpd.png")
    nums = res["runs"][str(run)]
    assert len(nums["pairs"]) == 8 and len(nums["path_bpd"]) == nums["steps"] == 10
    assert nums["max_endpoint_error"] < 1e-3 and finite(*nums["path_bpd"]) and res["runs"] is not None


def test_classification(tmp_path, capsys):
    experiment(capsys, "classification", tmp_path, *RESIDUAL)
    models = outputs(tmp_path)["models"]
    assert set(models) == set(DEFAULTS["classification"].digits)
    for entry in models.values():
        assert entry["dataset"] == "digits" and 0 <= entry["test_accuracy"]["mean"] <= 1
        assert finite(entry["test_bpd"]["mean"])


def test_samples_of_every_family(tmp_path, capsys):
    experiment(capsys, "samples", tmp_path, *RESIDUAL, "--set", "model.steps=1")
    res = outputs(tmp_path)
    families = {entry["family"] for entry in res["runs"].values()}
    assert families == {"glow", "flowpp", "marflow", "residual", "denseflow"}
    report = (tmp_path / "report.md").read_text()
    for run_dir in res["runs"]:
        for t in (0.5, 0.7, 0.85, 1.0):
            png = f"samples/{list(res['runs']).index(run_dir)}-{Path(run_dir).name}-t{t:g}.png"
            assert (tmp_path / png).is_file() and png in report


def test_table_with_importance_weighted_bound_rows(tmp_path, capsys):
    """Each family's rows: parameters of the built model, the difference to its no-attention row,
    and for the DenseFlow rows (bits/dim a bound) the importance-weighted estimate on the first 50
    test images, stored in results.json and reused by a rerun."""
    argv = ["--preset", "glow-digits", "glow-digits-imap", "denseflow-digits-noattn", "denseflow-digits",
            "--importance-samples", "2", "--importance-images", "50"]
    experiment(capsys, "table", tmp_path, *argv)
    res = outputs(tmp_path, "table.png")
    rows = {r["spec"]: r for r in res["rows"]}
    assert list(rows) == argv[1:5] and [r["family"] for r in res["rows"]] == ["glow"] * 2 + ["denseflow"] * 2
    assert rows["glow-digits"]["attention"] == rows["denseflow-digits-noattn"]["attention"] == "none"
    assert rows["glow-digits-imap"]["parameters"] > rows["glow-digits"]["parameters"] > 0  # iMap's weights
    assert rows["denseflow-digits"]["parameters"] > rows["denseflow-digits-noattn"]["parameters"]  # Nyström's
    runs = {r["spec"]: r for r in res["runs"]}
    for spec, base in (("glow-digits-imap", "glow-digits"), ("denseflow-digits", "denseflow-digits-noattn")):
        assert rows[spec]["delta_bpd"] == pytest.approx(runs[spec]["test_bpd"] - runs[base]["test_bpd"])
        assert rows[spec]["baseline"] == base and rows[base]["delta_bpd"] == 0
    for spec in ("glow-digits", "glow-digits-imap"):
        assert not rows[spec]["upper_bound"] and "importance_weighted" not in rows[spec]
    for spec in ("denseflow-digits-noattn", "denseflow-digits"):
        iw = rows[spec]["importance_weighted"]
        assert rows[spec]["upper_bound"] and iw["k"] == 2 and iw["n"] == 50 and finite(iw["bpd"], iw["bpd_stderr"])
    assert rows["denseflow-digits"]["delta_iw_bpd"] == pytest.approx(
        rows["denseflow-digits"]["importance_weighted"]["bpd"]
        - rows["denseflow-digits-noattn"]["importance_weighted"]["bpd"])
    report = (tmp_path / "report.md").read_text()
    assert "| importance-weighted, K = 2 | Δ vs no attention |" in report and "first 50 test images" in report
    assert "every row is evaluated on its trained weights" in report
    saved = tmp_path / "runs" / "glow-digits-seed0" / "config.json"  # a run saved before data.train_on existed
    cfg = json.loads(saved.read_text())
    del cfg["data"]["train_on"]
    saved.write_text(json.dumps(cfg))
    text = experiment(capsys, "table", tmp_path, *argv)
    assert text.count("reusing its importance-weighted estimate") == 2 and "K = 2 on" not in text
    again = outputs(tmp_path)["rows"]
    assert [r["status"] for r in again] == ["reused"] * 4
    assert [{k: v for k, v in r.items() if k != "status"} for r in again] == \
        [{k: v for k, v in r.items() if k != "status"} for r in res["rows"]]


def test_list(capsys):
    main(["experiment", "--list"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [*EXPERIMENTS, "(all)"]
    for line in lines[:-1]:
        name = line.split()[0]
        runs = count_runs(make_settings(name, "unused", data="fashion-mnist"))
        assert f"{DEFAULTS[name].minutes:g} min" in line and f"{runs:3d} runs" in line
    assert lines[-1].split()[1:5] == [f"{sum(d.minutes for d in DEFAULTS.values()):g}", "min",
                                      f"{sum(count_runs(make_settings(n, 'unused')) for n in EXPERIMENTS)}", "runs"]


def test_default_budgets_fit_a_session():
    """The whole set on Fashion-MNIST needs about 390 minutes of training (the results table 130);
    no run gets under 2."""
    assert sum(d.minutes for d in DEFAULTS.values()) == pytest.approx(390, abs=15)
    for name in EXPERIMENTS:
        assert DEFAULTS[name].minutes / count_runs(make_settings(name, "unused")) >= 2, name


@pytest.mark.parametrize("argv,match", [
    (["nope", "--out", "x"], "unknown experiment 'nope'; experiments: convergence, heads"),
    (["heads", "--out", "x", "--preset", "no-such-preset"], "unknown preset 'no-such-preset'"),
    (["positions", "--out", "x", "--heads", "2"], "--heads applies to the heads experiment only"),
    (["perturbation", "--out", "x", "--seeds", "2"], "one trained model per preset"),
    (["heads", "--out", "x", "--run", "y"], "--run applies to interpolation, samples"),
    (["heads", "--out", "x", "--importance-samples", "4"], "--importance-samples applies to the table experiment only"),
    (["samples", "--out", "x", "--run", "no-such-run"], "is not a run directory"),
    (["convergence", "--out", "x", "--set", "train.time_limit_s=5"], "set by the experiment"),
    (["positions", "--out", "x", "--data", "digits", "--set", "model.blocks=1"], "has the key model.blocks"),
    (["convergence", "--out", "x", "--budget", "0"], "--budget"),
    (["convergence", "--out", "x", "--jobs", "0"], "--jobs"),
    (["convergence", "--out", "x", "--test-images", "-1"], "--test-images"),
])
def test_one_line_errors(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["experiment", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and match in err and err.count("\n") == 1


@pytest.mark.parametrize("name", list(EXPERIMENTS))
@pytest.mark.parametrize("data", DATA_SETS)
def test_default_runs_resolve(name, data):
    """Every default run specification is a valid configuration (the papers' sizes are not built)."""
    settings = make_settings(name, "unused", data=data)
    for spec in settings.specs:
        cfg = run_config(settings, spec, 0, 60.0)
        assert cfg["train"]["time_limit_s"] == 60.0 and cfg["train"]["clock"] == "wall"


def test_test_images_defaults_and_overrides():
    """Runs are evaluated on the first 2000 test images unless the experiment (positions, table)
    keeps the whole test set, --test-images changes it, or a specification or --set gives it."""
    spec, own = RunSpec.parse("glow-fmnist-tiny"), RunSpec.parse("glow-fmnist-tiny+data.test_images=300")
    images = {name: run_config(make_settings(name, "unused"), spec, 0, 60.0)["data"]["test_images"]
              for name in EXPERIMENTS}
    assert images == {name: 0 if name in ("positions", "table") else 2000 for name in EXPERIMENTS}
    assert run_config(make_settings("heads", "unused", test_images=0), spec, 0, 60.0)["data"]["test_images"] == 0
    assert run_config(make_settings("heads", "unused"), own, 0, 60.0)["data"]["test_images"] == 300
    mine = make_settings("heads", "unused", overrides=["data.test_images=700"])
    assert run_config(mine, spec, 0, 60.0)["data"]["test_images"] == 700


def test_spec_syntax():
    spec = RunSpec.parse("glow-digits-imap+model.positions=[1,2]+train.lr=1e+3")
    assert spec.preset == "glow-digits-imap"
    assert spec.overrides == (Override("model", "positions", [1, 2]), Override("train", "lr", 1e3))
    assert spec.text == "glow-digits-imap+model.positions=[1,2]+train.lr=1e+3"
    assert spec.slug == "glow-digits-imap_positions-1-2_lr-1e-3"


def test_jobs_set_threads_and_the_cpu_clock():
    spec = RunSpec.parse("glow-digits")
    train = run_config(make_settings("convergence", "unused", data="digits", jobs=2), spec, 0, 60.0)["train"]
    assert train["threads"] == child_threads(2) >= 1 and train["clock"] == "cpu"
    mine = make_settings("convergence", "unused", data="digits", jobs=2, clock="wall", overrides=["train.threads=3"])
    train = run_config(mine, spec, 0, 60.0)["train"]
    assert (train["threads"], train["clock"]) == (3, "wall")
    train = run_config(make_settings("convergence", "unused", data="digits"), spec, 0, 60.0)["train"]
    assert (train["threads"], train["clock"], train["steps"]) == (0, "wall", 10**8)  # jobs=1: the preset's threads


def test_jobs_give_the_same_numbers_and_failed_runs_become_rows(tmp_path, capsys):
    """3 steps per run (train.steps caps them, the budget does not bind): --jobs 1 (in this
    process) and --jobs 2 (child processes) give the same numbers; a run whose training fails
    is an error row, the others finish, and the experiment exits 1 naming it."""
    presets = ["--preset", "acf-resflow-l2-digits", "glow-digits+train.batch_size=5000"]
    found = {}
    for jobs in (1, 2):
        with pytest.raises(SystemExit) as exc:
            experiment(capsys, "convergence", tmp_path / f"jobs{jobs}", *RESIDUAL, "--budget", "100", "--seeds", "1",
                       "--set", "train.steps=3", "--set", "model.steps=1", "--jobs", str(jobs), *presets)
        text = capsys.readouterr()
        assert exc.value.code == 1 and text.err.count("\n") == 1
        assert "1 of 2 training runs failed: glow-digits+train.batch_size=5000 seed 0" in text.err
        assert "exceeds the 1437 training images" in text.err
        found[jobs] = outputs(tmp_path / f"jobs{jobs}")["runs"]
        assert ("train.log)\n" in text.out) and (f"(output: {tmp_path}" in text.out) == (jobs == 2)
    assert [r["status"] for r in found[1]] == [r["status"] for r in found[2]] == ["trained", "failed"]
    for one, two in zip(found[1], found[2]):
        assert {k: v for k, v in one.items() if k not in ("train_seconds", "seconds_per_step")} == \
            {k: v for k, v in two.items() if k not in ("train_seconds", "seconds_per_step")}
    assert found[2][0]["steps"] == 3 and finite(found[2][0]["test_bpd"])
    assert "exceeds the 1437 training images" in found[2][1]["error"]
    run = "runs/acf-resflow-l2-digits-seed0"
    lines = [(tmp_path / f"jobs{j}" / run / "metrics.jsonl").read_text().splitlines() for j in (1, 2)]
    curves = [[(m["step"], m["bpd"]) for m in map(json.loads, rows) if "bpd" in m] for rows in lines]
    assert curves[0] == curves[1] and len(curves[0]) == 3
    assert json.loads((tmp_path / "jobs2" / run / "config.json").read_text())["train"]["clock"] == "cpu"
    log = (tmp_path / "jobs2" / "runs" / "glow-digits_batch-size-5000-seed0" / "train.log").read_text()
    handed = tmp_path / "jobs2" / "configs" / "glow-digits_batch-size-5000-seed0.json"
    assert log.startswith(f"$ attnflow train --config {handed} ") and "exceeds the 1437" in log.splitlines()[-1]
    handed = json.loads(handed.read_text())  # the child is handed the whole configuration, not --set strings
    assert (handed["train"]["batch_size"], handed["train"]["clock"], handed["model"]["steps"]) == (5000, "cpu", 1)
    assert "| failed: " in (tmp_path / "jobs2" / "report.md").read_text()


def _two_training_children(out: Path) -> tuple[subprocess.Popen, list[Path]]:
    """An experiment of two glow-digits runs with ``--jobs 2`` in its own session, returned once
    both children are training."""
    # a budget the runs cannot use up before the signal, even on a loaded machine (5 CPU-minutes each)
    argv = ["convergence", "--out", str(out), *TINY, "--budget", "10", "--seeds", "2", "--set", "model.steps=1",
            "--preset", "glow-digits"]
    proc = subprocess.Popen([sys.executable, "-m", "attnflow.cli", "experiment", *argv, "--jobs", "2"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    runs = [out / "runs" / f"glow-digits-seed{k}" for k in (0, 1)]

    def training(run: Path) -> bool:
        metrics = run / "metrics.jsonl"
        return metrics.is_file() and '"bpd"' in metrics.read_text()

    deadline = time.monotonic() + 300
    while not all(map(training, runs)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    return proc, runs


def test_ctrl_c_stops_every_child_at_a_step_boundary_and_a_rerun_resumes(tmp_path, capsys):
    """SIGINT to the experiment's process group (a terminal's Ctrl-C) stops both training
    processes of ``--jobs 2`` at a step boundary with a checkpoint; rerun, the runs resume."""
    out = tmp_path / "exp"
    proc, runs = _two_training_children(out)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "stopped 2 training runs at a step boundary" in err
    stopped = {}
    for run in runs:
        assert (run / "checkpoint.pt").is_file() and not (run / "results.json").exists()
        assert "SIGINT: stopped at step " in (run / "train.log").read_text()
        stopped[run] = max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines())
    text = experiment(capsys, "convergence", out, "--seeds", "2", "--set", "model.steps=1", "--set", "train.steps=1",
                      "--preset", "glow-digits")  # train.steps=1 < the steps done: each resumed run ends at once
    assert all(f"resuming into {run}" in text for run in runs)
    assert {r["dir"]: (r["status"], r["steps"]) for r in outputs(out)["runs"]} == \
        {f"runs/{run.name}": ("resumed", stopped[run]) for run in runs}


def test_sigkill_of_the_experiment_stops_its_children_with_a_checkpoint(tmp_path):
    """An experiment killed outright cannot forward a signal; its orphaned children notice (their
    parent pid changed) and stop at a step boundary with a checkpoint, as on one SIGTERM."""
    proc, runs = _two_training_children(tmp_path / "exp")
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 300
    while not all("SIGTERM: stopped at step " in (run / "train.log").read_text() for run in runs):
        assert time.monotonic() < deadline, [(run / "train.log").read_text()[-300:] for run in runs]
        time.sleep(0.2)
    for run in runs:
        assert (run / "checkpoint.pt").is_file() and not (run / "results.json").exists()


def test_report_header_names_every_bound_family(tmp_path):
    """The report legend says which bits/dim are bounds: Flow++ (variational dequantization) and
    DenseFlow (noise augmentation) both give one-sample bounds (``log_prob_is_bound``), not
    importance-weighted estimates."""
    from attnflow.experiments.report import write_outputs
    from attnflow.models.denseflow import DenseFlowModel
    from attnflow.models.flowpp import VariationallyDequantizedFlow

    assert VariationallyDequantizedFlow.log_prob_is_bound and DenseFlowModel.log_prob_is_bound
    settings = make_settings("samples", tmp_path, data="digits", command="attnflow experiment samples")
    write_outputs(settings, "title", "description", [], {})
    header = (tmp_path / "report.md").read_text()
    assert "Flow++" in header and "DenseFlow" in header and "not importance-weighted" in header
