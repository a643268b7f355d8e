"""Every CLI command against a tiny run of every model family (issue 21): each invocation exits 0
with the documented output, or fails with exit status 1 or 2 and one line on stderr that names
the problem — never a traceback. The families' runs: the 0.1.0 run directories of
``tests/fixtures/runs-0.1.0`` (glow, residual, residual hybrid, denseflow, srflow), and the others
(flowpp, marflow, nsf, fullglow) trained for 2 steps at the registry's tiny configuration."""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnflow.cli import main
from attnflow.models import FAMILIES, TINY

FIXTURES = Path(__file__).parent / "fixtures" / "runs-0.1.0"
SAVED = {"glow": "glow-isdp", "residual": "residual-l2", "hybrid": "hybrid", "denseflow": "denseflow",
         "srflow": "srflow"}
TRAINED = {"flowpp": "flowpp-digits", "marflow": "marflow-digits", "nsf": "nsf-digits",
           "fullglow": "fullglow-digits-labels"}
RUNS = [*SAVED, *TRAINED]
CONDITIONAL = ("srflow", "fullglow")
CONTRACTIVE = ("residual", "hybrid")


def test_every_registered_family_is_covered():
    assert set(FAMILIES) <= set(RUNS) and set(RUNS) - set(FAMILIES) == {"hybrid"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """name -> run directory (copies of the saved runs; the trained ones made here)."""
    root = tmp_path_factory.mktemp("families")
    dirs = {}
    for name, saved in SAVED.items():
        dirs[name] = root / name
        shutil.copytree(FIXTURES / saved, dirs[name])
    for name, preset in TRAINED.items():
        tiny = [a for k, v in TINY[name].items() for a in ("--set", f"model.{k}={v}")]
        dirs[name] = root / name
        main(["train", "--preset", preset, "--out", str(dirs[name]), "--quiet", "--threads", "1",
              "--set", "train.steps=2", *tiny])
    return dirs


def invoke(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of one command; a failure must be one line, no traceback."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    if code:
        lines = [line for line in err.splitlines()
                 if line.strip() and "/s]" not in line and "still working" not in line]
        assert code in (1, 2) and len(lines) == 1 and lines[0].startswith(f"attnflow {argv[0]}:"), (code, err)
    return code, out, err


FAST = ["--threads", "1"]


@pytest.mark.parametrize("family", RUNS)
def test_model_commands(runs, tmp_path, capsys, family):
    run = str(runs[family])
    conditional = family in CONDITIONAL
    cond = ["--sr-images", "4", "--samples", "1", "--temperatures", "0"] if conditional else []

    code, out, _ = invoke(capsys, ["eval", run, "--max-batches", "1", "--batch-size", "32", *cond, *FAST])
    assert code == 0 and "bits/dim" in out.splitlines()[0]
    assert ("accuracy" in out) == (family == "hybrid") and ("T=0.0" in out) == conditional
    code, out, _ = invoke(capsys, ["eval", run, "--json", "--max-batches", "1", "--batch-size", "32", *cond, *FAST])
    res = json.loads(out)
    assert code == 0 and res["bpd"] > 0 and ("conditional" in res) == conditional

    code, out, _ = invoke(capsys, ["sample", run, "--n", "4", "--out", str(tmp_path / "s.png"), *FAST])
    assert code == 0 and (tmp_path / "s.png").is_file() and out.startswith("wrote ")

    code, out, _ = invoke(capsys, ["reconstruct", run, "--n", "2", "--out", str(tmp_path / "r.png"), *FAST])
    assert code == 0 and (tmp_path / "r.png").is_file() and "max reconstruction error" in out

    for argv in (["interpolate", run, "--pairs", "1", "--steps", "3", "--out", str(tmp_path / "i.png")],
                 ["perturb", run, "--n", "2", "--sigmas", "0", "0.1", "--out", str(tmp_path / "p.png")]):
        code, out, err = invoke(capsys, [*argv, *FAST])
        if conditional:  # refused, naming the commands that apply
            assert code == 2 and "is a conditional run" in err and "`attnflow sr`" in err
        else:
            assert code == 0 and Path(argv[-1]).is_file() and out.strip()

    code, out, err = invoke(capsys, ["certify", run, "--search-images", "2", *FAST])
    if family in CONTRACTIVE:
        assert code in (0, 1) and "largest certified block bound" in out
    else:
        assert code == 0 and "nothing to certify" in out

    code, out, err = invoke(capsys, ["sr", run, "--input", str(_low_res(tmp_path)), "--n", "1",
                                     "--out", str(tmp_path / "sr"), *FAST])
    if family == "srflow":
        assert code == 0 and (tmp_path / "sr" / "sr-0.png").is_file()
    else:
        assert code == 2 and "is not a super-resolution run" in err

    code, _, err = invoke(capsys, ["fid", run, "--inception-weights", str(tmp_path / "missing.pth"), *FAST])
    assert code == 2 and ("missing.pth" in err or "torch-fidelity" in err)


def _low_res(tmp_path: Path) -> Path:
    path = tmp_path / "lr.png"
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16).save(path)
    return path


def test_compare_presets_and_experiment_list(runs, tmp_path, capsys):
    paths = [str(runs[f]) for f in RUNS]
    code, out, _ = invoke(capsys, ["compare", *paths, "--out", str(tmp_path / "c.png")])
    assert code == 0 and len(out.splitlines()) == len(RUNS) + 2 and (tmp_path / "c.png").is_file()
    code, out, _ = invoke(capsys, ["compare", *paths, "--json"])
    assert code == 0 and len(json.loads(out)) == len(RUNS)
    code, out, _ = invoke(capsys, ["presets"])
    assert code == 0 and "glow-digits" in out and "srflow-digits-2x" in out
    code, out, _ = invoke(capsys, ["experiment", "--list"])
    assert code == 0 and "samples" in out


def test_samples_experiment_on_every_family(runs, tmp_path, capsys):
    """``experiment samples --run`` over all the families, conditional ones included."""
    argv = ["experiment", "samples", "--out", str(tmp_path / "e"), "--data", "digits", "--quiet",
            *(a for f in RUNS for a in ("--run", str(runs[f]))), *FAST]
    code, _, _ = invoke(capsys, argv)
    assert code == 0
    report = (tmp_path / "e" / "report.md").read_text()
    assert f"- command: `attnflow {shlex.join(argv)}`" in report  # the argv as given: it reruns the experiment
    for family in RUNS:
        assert f"{runs[family].name}-t0.5.png" in report
    assert len(list((tmp_path / "e" / "samples").glob("*.png"))) == 4 * len(RUNS)


@pytest.mark.parametrize("experiment", ["interpolation", "perturbation"])
def test_experiments_on_unconditional_flows_refuse_a_conditional_run(runs, tmp_path, capsys, experiment):
    extra = ["--run", str(runs["srflow"])] if experiment == "interpolation" else ["--preset", "srflow-digits-2x",
                                                                                  "--budget", "0.02"]
    code, _, err = invoke(capsys, ["experiment", experiment, "--out", str(tmp_path / "e"), "--data", "digits",
                                   "--quiet", *extra, *FAST])
    assert code == 2 and "is a conditional " in err and "samples experiment" in err


def test_a_long_step_prints_a_line_every_few_seconds(capsys):
    import time

    from attnflow.heartbeat import heartbeat

    with heartbeat("attnflow sample: sampling 64 images", every=0.05):
        time.sleep(0.3)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2 and lines[0].startswith("attnflow sample: sampling 64 images: still working, ")
    with heartbeat("quiet", enabled=False, every=0.01):
        time.sleep(0.05)
    assert capsys.readouterr().err == ""
