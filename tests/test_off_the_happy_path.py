"""Off the happy path (issue 21): file-system errors in one line, paths with ``~`` and
environment variables, a broken training run that fails, faithful ``sr`` inputs, ``--threads``,
``--version``. Read-only commands use the saved runs of ``tests/fixtures/runs-0.1.0``."""
from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnflow import __version__
from attnflow.cli import FAR_WORSE_BITS, _check_trained, main
from attnflow.config import RunConfig
from attnflow.models import build
from attnflow.rundir import RunDir

RUNS = Path(__file__).parent / "fixtures" / "runs-0.1.0"


def one_line_error(capsys, argv, code=2):
    """Run the command; it must exit with ``code`` and print exactly one error line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == code, err
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line and "block/s]" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"attnflow {argv[0]}: error: ")
    return lines[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"attnflow {__version__} (torch {torch.__version__})"


def test_log_prob_of_an_empty_batch_is_explained():
    with pytest.raises(ValueError, match=r"empty batch \(shape \[0, 1, 8, 8\]\); pass at least one image"):
        build("glow-digits", steps=1, hidden=8).log_prob(torch.rand(0, 1, 8, 8))


@pytest.mark.parametrize("command", [["train", "--preset", "glow-digits"],
                                     ["sr", str(RUNS / "srflow"), "--input", "x.png"], ["experiment", "samples"]])
def test_out_that_is_a_file(tmp_path, capsys, command):
    (tmp_path / "f").write_text("")
    line = one_line_error(capsys, [*command, "--out", str(tmp_path / "f")])
    assert f"--out {tmp_path / 'f'} is a file; give a folder" in line


@pytest.mark.parametrize("out", ["", "grid", "grid.unknownext"])
def test_image_out_needs_an_image_file_name(tmp_path, capsys, out):
    line = one_line_error(capsys, ["sample", str(RUNS / "glow-isdp"), "--n", "4", "--out", str(tmp_path / out)])
    assert "must be an image file name ending in .png" in line


@pytest.mark.parametrize("code,words", [(errno.EROFS, "cannot write there; choose a writable --out"),
                                        (errno.EACCES, "cannot write there; choose a writable --out"),
                                        (errno.ENOSPC, "the disk is full; free space and rerun")])
def test_file_system_errors_in_one_line(tmp_path, capsys, monkeypatch, code, words):
    def refuse(images, path, **kw):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr("attnflow.evaluate.save_image_grid", refuse)
    line = one_line_error(capsys, ["sample", str(RUNS / "glow-isdp"), "--n", "4", "--out", str(tmp_path / "s.png")])
    assert words in line and str(tmp_path / "s.png") in line


def test_a_full_disk_during_a_checkpoint_is_named_and_the_old_checkpoint_stays(tmp_path, monkeypatch):
    from attnflow import rundir
    from attnflow.train import checkpoint

    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 1})
    before = path.read_bytes()

    def stuck(state, tmp):  # what torch.save raises when the disk fills up part-way
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos 654272 vs 654164")

    monkeypatch.setattr(checkpoint.torch, "save", stuck)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1024))
    with pytest.raises(OSError) as exc:
        checkpoint.save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "step": 2})
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 0, 10**11))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # not a full disk: the writer's own error
        checkpoint.save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "step": 2})


def test_home_and_environment_variables_in_paths(tmp_path, capsys, monkeypatch):
    shutil.copytree(RUNS / "glow-isdp", tmp_path / "runs" / "g")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    main(["eval", "~/runs/g", "--json"])
    by_home = json.loads(capsys.readouterr().out)
    main(["eval", "$RUNS/g", "--json"])
    assert json.loads(capsys.readouterr().out)["bpd"] == by_home["bpd"]
    main(["sample", "~/runs/g", "--n", "4", "--out", "~/s.png"])
    assert (tmp_path / "s.png").is_file()


def test_data_root_expands_home(tmp_path, monkeypatch):
    from attnflow.data import load_configured

    for split in ("train", "test"):
        (tmp_path / "ds" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "ds" / split / "a.png")
    monkeypatch.setenv("HOME", str(tmp_path))
    data = {"name": "folder", "root": "~/ds", "n_bits": 0, "train_on": "train", "test_images": 0}
    assert load_configured(data, "test").images.shape == (1, 1, 4, 4)


def test_eval_names_the_weights_it_used(capsys):
    main(["eval", str(RUNS / "glow-isdp"), "--json"])  # trained with train.ema_decay = 0: no EMA
    assert json.loads(capsys.readouterr().out)["weights"] == "live"
    main(["eval", str(RUNS / "residual-l2"), "--json", "--max-batches", "1"])
    assert json.loads(capsys.readouterr().out)["weights"] == "ema"


@pytest.mark.parametrize("bpd,samples,fails", [(3.9, True, False), (4.09 + FAR_WORSE_BITS + 0.1, True, True),
                                               (math.nan, True, True), (3.9, False, True)])
def test_a_broken_run_is_not_a_success(tmp_path, bpd, samples, fails):
    from attnflow.cli import CommandFailed

    if samples:
        (tmp_path / "samples.png").write_bytes(b"")
    result = {"test": {"bpd": bpd}, "levels": 17}
    if not fails:
        _check_trained(result, RunDir(tmp_path), RunConfig.from_preset("glow-digits", ["train.lr=1e-3"]))
        return
    with pytest.raises(CommandFailed, match=r"training failed: .* The run in .* is kept; train again with a lower "
                                            r"train.lr \(now 0.001\)"):
        _check_trained(result, RunDir(tmp_path), RunConfig.from_preset("glow-digits", ["train.lr=1e-3"]))


@pytest.mark.slow
def test_diverged_training_exits_1_and_names_only_written_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--preset", "glow-digits", "--out", str(tmp_path / "r"), "--quiet", "--threads", "1",
              "--set", "train.lr=1.0", "--set", "train.steps=300"])
    captured = capsys.readouterr()
    assert exc.value.code == 1 and "far worse than the uniform model's 4.0875" in captured.err
    assert "samples.png" not in captured.out.splitlines()[-1] and (tmp_path / "r" / "checkpoint.pt").is_file()


def _grey(path: Path, mode: str = "L") -> Path:
    """A 4x4 image in ``mode`` (``I;16``: 16 bits per pixel)."""
    pixels = np.arange(16).reshape(4, 4) * 9
    image = Image.fromarray(pixels.astype(np.uint16)) if mode == "I;16" else Image.fromarray(pixels.astype(np.uint8))
    (image if mode in ("I;16", "L") else image.convert(mode)).save(path)
    return path


@pytest.mark.parametrize("mode,match", [("I;16", "more than 8 bits per channel"),
                                        ("RGB", r"is a colour \(mode RGB\) image")])
def test_sr_refuses_what_it_cannot_read_faithfully(tmp_path, capsys, mode, match):
    image = _grey(tmp_path / "in.png", mode=mode)
    line = one_line_error(capsys, ["sr", str(RUNS / "srflow"), "--input", str(image), "--out", str(tmp_path / "o")])
    assert re.search(match, line), line
    assert "the model reads an 8-bit grey PNG or JPEG of 4x4 pixels" in line


def test_sr_fails_when_outputs_overflow(tmp_path, capsys, monkeypatch):
    from attnflow.evaluate import superres

    monkeypatch.setattr(superres, "decode_at_temperature",
                        lambda model, lr, t, gen: torch.full((lr.shape[0], 1, 8, 8), math.inf))
    line = one_line_error(capsys, ["sr", str(RUNS / "srflow"), "--input", str(_grey(tmp_path / "in.png")), "--n", "2",
                                   "--out", str(tmp_path / "o")], code=1)
    assert "2 of 2 outputs overflowed at temperature 0.8 and were not written; try a lower --temperature" in line
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["bicubic.png"]


def test_every_model_command_takes_threads(capsys):
    main(["certify", str(RUNS / "residual-l2"), "--threads", "1", "--json"])
    assert torch.get_num_threads() == 1 and json.loads(capsys.readouterr().out)["blocks"]
    for command in ("train", "eval", "fid", "certify", "sample", "reconstruct", "interpolate", "perturb", "sr",
                    "experiment"):
        line = one_line_error(capsys, [command, str(RUNS / "glow-isdp"), "--threads", "-1"])
        assert f"attnflow {command}: error: argument --threads: must be an integer in 0..1,024" in line, line
        assert "got '-1'" in line


TINY = ["--quiet", "--threads", "1", "--set", "model.hidden=8", "--set", "model.steps=1", "--set", "train.steps=3"]


def test_resume_keeps_what_was_set_and_refuses_what_cannot_change(tmp_path, capsys):
    out = str(tmp_path / "r")
    main(["train", "--preset", "glow-digits", "--out", out, *TINY, "--set", "train.precision=bf16",
          "--set", "train.lr=5e-4"])
    main(["train", "--out", out, "--resume", "--quiet", "--set", "train.steps=5"])  # no --preset, no repeats
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["train"]["precision"] == "bf16" and saved["train"]["lr"] == 5e-4 and saved["train"]["steps"] == 5
    assert saved["model"]["hidden"] == 8 and json.loads((tmp_path / "r" / "results.json").read_text())["step"] == 5
    capsys.readouterr()
    for key, value in (("batch_size", 32), ("seed", 5)):
        line = one_line_error(capsys, ["train", "--out", out, "--resume", "--set", f"train.{key}={value}"])
        assert f"train.{key} cannot change on --resume" in line and "train a new run into another --out" in line
    line = one_line_error(capsys, ["train", "--out", out, "--resume", "--preset", "flowpp-digits"])
    assert "was not trained from preset 'flowpp-digits'" in line
    assert "give --preset NAME" in one_line_error(capsys, ["train", "--out", str(tmp_path / "new")])


def test_run_specifications_without_a_section_are_explained(tmp_path, capsys):
    line = one_line_error(capsys, ["experiment", "samples", "--out", str(tmp_path / "e"), "--data", "digits",
                                   "--preset", "glow-digits+hidden=3"])
    assert "'hidden=3' is not an override; write PRESET+section.key=value" in line
    assert "glow-digits+model.hidden=3" in line


def test_repeated_experiment_options_accumulate_so_recorded_commands_rerun():
    import shlex

    from attnflow.cli import build_parser
    from attnflow.experiments.report import command_line

    args = build_parser().parse_args(["experiment", "heads", "--out", "x", "--heads", "1", "--heads", "2", "3",
                                      "--run", "a", "--run", "b", "--preset", "p", "--preset", "q+model.hidden=3"])
    assert (args.heads, args.run, args.preset) == ([1, 2, 3], ["a", "b"], ["p", "q+model.hidden=3"])
    recorded = command_line(["experiment", "heads", "--out", "x", "--heads", "1", "--heads", "2", "--run", "a",
                             "--run", "b"])
    again = build_parser().parse_args(shlex.split(recorded)[1:])
    assert (again.heads, again.run) == ([1, 2], ["a", "b"])


def test_a_test_split_of_another_size_is_refused_before_training(tmp_path, capsys):
    for split, size in (("train", 8), ("test", 16)):
        (tmp_path / "ds" / split).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((size, size), 40 * i, dtype=np.uint8)).save(tmp_path / "ds" / split / f"{i}.png")
    out = tmp_path / "r"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--preset", "glow-digits", "--out", str(out), "--quiet", "--threads", "1",
              "--set", "data.name=folder", "--set", f"data.root={tmp_path / 'ds'}"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("attnflow data: converting")]
    assert exc.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err
    line = errors[0]
    assert "the test split of dataset 'folder' has images of shape [1, 16, 16]" in line
    assert f"(e.g. {tmp_path / 'ds' / 'test' / '0.png'})" in line and "train split [1, 8, 8]" in line
    assert not (out / "checkpoint.pt").exists() and not (out / "config.json").exists()  # nothing blocks --out


def test_a_run_with_weights_but_no_checkpoint_evaluates_them_and_is_not_trained_over(tmp_path, capsys):
    run = tmp_path / "shared"
    shutil.copytree(RUNS / "residual-l2", run)  # kept EMA weights: model.safetensors holds them
    main(["eval", str(run), "--json", "--max-batches", "1"])
    with_checkpoint = json.loads(capsys.readouterr().out)
    (run / "checkpoint.pt").unlink()
    main(["eval", str(run), "--json", "--max-batches", "1"])
    assert json.loads(capsys.readouterr().out)["bpd"] == with_checkpoint["bpd"]
    line = one_line_error(capsys, ["eval", str(run), "--weights", "live"])
    assert "has no checkpoint.pt, only model.safetensors (its EMA weights)" in line
    line = one_line_error(capsys, ["train", "--preset", "resflow-digits", "--out", str(run)])
    assert "holds a trained model (model.safetensors) without its checkpoint.pt" in line and "new --out" in line
    (run / "model.safetensors").write_bytes(b"not safetensors")
    assert "is corrupt or not a safetensors file" in one_line_error(capsys, ["eval", str(run)])


def test_a_corrupt_inception_weights_file_is_one_short_line(tmp_path):
    from attnflow.evaluate.fidelity import check_inception_weights

    (tmp_path / "w.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError) as exc:
        check_inception_weights(tmp_path / "w.pth")
    message = str(exc.value)
    assert "\n" not in message and "weights_only" not in message and len(message) < 250
    assert "is not a readable PyTorch weights file" in message


def test_perturb_grid_labels_its_rows(tmp_path, capsys):
    main(["perturb", str(RUNS / "glow-isdp"), "--n", "2", "--sigmas", "0", "0.1", "--out", str(tmp_path / "p.png"),
          "--threads", "1"])
    labelled = np.asarray(Image.open(tmp_path / "p.png"))
    margin = labelled[:, :64]  # the label column left of the grid: text in each of the 4 rows (2 per noise std)
    bands = np.array_split(margin, 4)
    assert all((band < 128).any() for band in bands) and (labelled[:, 64:] < 255).any()


@pytest.mark.parametrize("rank,printed", [("0", True), ("1", False)])
def test_under_torchrun_rank_0_alone_prints_a_user_error(tmp_path, capsys, monkeypatch, rank, printed):
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--preset", "glow-digits", "--out", str(tmp_path / "r"), "--set", "train.batch_size=0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and ("attnflow train: error: " in err) == printed and "Traceback" not in err
