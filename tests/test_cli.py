"""The attnflow command end to end on the bundled digits."""
import json
import shutil

import pytest
from PIL import Image

from attnflow.cli import main


def run(capsys, *argv):
    main(list(argv))
    return capsys.readouterr().out


def test_train_eval_sample_reconstruct(tmp_path, capsys):
    out = tmp_path / "run"
    text = run(capsys, "train", "--preset", "glow-digits", "--out", str(out), "--quiet",
               "--set", "train.steps=30", "--set", "model.hidden=16", "--set", "model.steps=2")
    assert "test bits/dim" in text
    for name in ("checkpoint.pt", "model.safetensors", "config.json", "metrics.jsonl", "samples.png", "loss.png",
                 "results.json"):
        assert (out / name).is_file(), name

    res = json.loads(run(capsys, "eval", str(out), "--json"))
    assert res["split"] == "test" and res["n"] == 360 and res["levels"] == 17
    assert 0 < res["bpd"] < 6 and res["bpd_stderr"] > 0
    assert res["bpd"] == pytest.approx(json.loads((out / "results.json").read_text())["test"]["bpd"])

    run(capsys, "sample", str(out), "--n", "16", "--temperature", "0.7", "--out", str(tmp_path / "grid.png"))
    assert Image.open(tmp_path / "grid.png").size[0] >= 64

    text = run(capsys, "reconstruct", str(out), "--out", str(tmp_path / "recon.png"))
    err = float(text.rsplit("error", 1)[1])
    assert err < 1e-4
    assert Image.open(tmp_path / "recon.png").size[0] > 0

    run(capsys, "interpolate", str(out), "--pairs", "2", "--steps", "5", "--out", str(tmp_path / "interp.png"))
    width, height = Image.open(tmp_path / "interp.png").size
    assert width > 2 * height  # 2 rows of 5 images

    noisy = json.loads(run(capsys, "perturb", str(out), "--n", "16", "--sigmas", "0", "0.1", "--json",
                           "--out", str(tmp_path / "perturb.png")))
    assert [r["noise_std"] for r in noisy] == [0.0, 0.1] and all(r["inverse_converged"] for r in noisy)
    assert noisy[0]["bpd"] < noisy[1]["bpd"] and (tmp_path / "perturb.png").is_file()

    rows = json.loads(run(capsys, "compare", str(out), str(out), "--json", "--out", str(tmp_path / "curves.png")))
    assert [r["steps"] for r in rows] == [30, 30] and rows[0]["test_bpd"] == pytest.approx(res["bpd"])
    assert rows[0]["train_s"] > 0 and (tmp_path / "curves.png").is_file() and rows[0]["upper_bound"] is False
    bound = tmp_path / "bound-run"  # the same run, as if its family's bits/dim were a bound
    shutil.copytree(out, bound)
    results = json.loads((bound / "results.json").read_text())
    results["test"]["upper_bound"] = True
    (bound / "results.json").write_text(json.dumps(results))
    lines = run(capsys, "compare", str(out), str(bound)).splitlines()
    assert "≤" not in lines[1] and f"≤ {res['bpd']:.4f}" in lines[2]


def test_presets_listed(capsys):
    text = run(capsys, "presets")
    assert "glow-digits" in text and "glow-cifar10" in text


@pytest.mark.parametrize(
    "argv,match",
    [
        (["train", "--preset", "nope", "--out", "x"], "available presets"),
        (["train", "--preset", "glow-digits", "--out", "x", "--set", "train.bogus=1"], "valid train keys"),
        (["train", "--preset", "glow-digits", "--out", "x", "--set", "train.lr=fast"],
         "train.lr must be a finite number"),
        (["eval", "does-not-exist"], "not a run directory"),
        (["compare", "does-not-exist"], "no metrics.jsonl"),
    ],
)
def test_cli_errors(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_eval_weights_live_or_ema(tmp_path, capsys):
    out = tmp_path / "run"
    run(capsys, "train", "--preset", "glow-digits", "--out", str(out), "--quiet", "--set", "train.steps=6",
        "--set", "model.hidden=8", "--set", "model.steps=1", "--set", "train.ema_decay=0.5")
    ema = json.loads(run(capsys, "eval", str(out), "--json", "--max-batches", "1"))
    live = json.loads(run(capsys, "eval", str(out), "--json", "--max-batches", "1", "--weights", "live"))
    assert (ema["weights"], live["weights"]) == ("ema", "live")
    assert ema["bpd"] != live["bpd"]  # two different sets of weights
