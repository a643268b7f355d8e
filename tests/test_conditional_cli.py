"""The conditional presets end to end on the bundled digits: train, eval (conditional bits/dim and
super-resolution metrics), sample, sr; and the errors for unpaired data or a wrong input."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from attnflow.cli import main

TINY = ["--set", "train.steps=3", "--set", "model.hidden=8", "--set", "model.steps=1", "--set", "train.threads=1"]


def run(capsys, *argv):
    main(list(argv))
    return capsys.readouterr().out


def test_srflow_train_eval_sample_sr(tmp_path, capsys):
    out = tmp_path / "sr"
    run(capsys, "train", "--preset", "srflow-digits-2x-imap", "--out", str(out), "--quiet", *TINY,
        "--set", "model.encoder_blocks=1", "--set", "model.encoder_features=4")
    assert (out / "samples.png").is_file()
    res = json.loads(run(capsys, "eval", str(out), "--json", "--sr-images", "8", "--samples", "2",
                         "--temperatures", "0", "0.8"))
    assert res["bpd"] == pytest.approx(json.loads((out / "results.json").read_text())["test"]["bpd"])
    cond = res["conditional"]
    assert set(cond["temperatures"]) == {"0.0", "0.8"} and cond["n"] == 8
    for metrics in (*cond["temperatures"].values(), cond["bicubic"]):
        assert {"psnr", "ssim", "lr_psnr"} <= set(metrics)
    text = run(capsys, "eval", str(out), "--sr-images", "4", "--samples", "1")
    assert "conditional" in text and "bicubic" in text and "LPIPS: unavailable" in text

    run(capsys, "sample", str(out), "--n", "4", "--temperature", "0.5", "--out", str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").is_file()

    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16).save(tmp_path / "lr.png")
    text = run(capsys, "sr", str(out), "--input", str(tmp_path / "lr.png"), "--n", "2", "--out", str(tmp_path / "o"))
    assert "LR-PSNR" in text
    assert Image.open(tmp_path / "o" / "sr-1.png").size == Image.open(tmp_path / "o" / "bicubic.png").size


def test_translation_train_and_eval(tmp_path, capsys):
    out = tmp_path / "tr"
    run(capsys, "train", "--preset", "fullglow-digits-labels", "--out", str(out), "--quiet", *TINY,
        "--set", "model.source_hidden=4")
    res = json.loads(run(capsys, "eval", str(out), "--json", "--sr-images", "4", "--samples", "1"))
    assert 0 < res["bpd"] < 10 and "bicubic" not in res["conditional"]  # no LR-PSNR for label maps
    text = run(capsys, "eval", str(out), "--sr-images", "4", "--samples", "1")  # the text report too
    assert "conditional" in text and "T=0.0" in text and "bicubic" not in text


@pytest.mark.parametrize("argv,match", [
    (["--preset", "srflow-digits-2x", "--set", "data.condition=none"],
     "model is conditional but the data has no condition"),
    (["--preset", "glow-digits", "--set", "data.condition=lowres"], "model family is unconditional"),
    (["--preset", "srflow-digits-2x", "--set", "data.scale=4"], r"expects conditions of shape \[1, 4, 4\]"),
    (["--preset", "srflow-digits-2x", "--set", "data.condition=sketch"], "data.condition must be one of"),
    (["--preset", "srflow-digits-2x", "--set", "model.scale=3"], "scale 3 does not divide the image size 8x8"),
])
def test_bad_pairing(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv, "--out", str(tmp_path / "x"), "--quiet", *TINY])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(match, err), err


def test_sr_refuses_a_wrong_input(tmp_path, capsys):
    out = tmp_path / "sr"
    run(capsys, "train", "--preset", "srflow-digits-2x", "--out", str(out), "--quiet", *TINY,
        "--set", "model.encoder_blocks=0")
    Image.fromarray(np.zeros((5, 4), dtype=np.uint8)).save(tmp_path / "lr.png")
    with pytest.raises(SystemExit):
        main(["sr", str(out), "--input", str(tmp_path / "lr.png")])
    assert "is 4x5 but the model super-resolves 4x4 inputs" in capsys.readouterr().err
