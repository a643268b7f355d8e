"""Reconstruction, interpolation and perturbation judge the inverse by the reconstruction error
(issue 12): a wrong preimage is reported per image, apart from an inverse that did not converge."""
import json

import pytest
import torch
from PIL import Image
from toy_flows import folding_flow, non_converging_flow

import attnflow.train
from attnflow.cli import main
from attnflow.config import RunConfig
from attnflow.data import load_dataset, to_float
from attnflow.evaluate import noise_perturbation, reconstruct


def test_reconstruct_finds_the_images_sent_to_another_preimage():
    x = torch.full((4, 1, 8, 8), 0.25)
    x[1, 0, 3, 3] = 0.75  # folded onto 0.25 by the toy's inverse
    x[3] = 0.9
    rec = reconstruct(folding_flow(), x)
    assert rec.converged and rec.wrong() == [1, 3] and rec.status() == "inverse wrong"
    torch.testing.assert_close(rec.errors, torch.tensor([0.0, 0.5, 0.0, 0.8]), atol=1e-6, rtol=0)


def test_reconstruct_records_an_inverse_that_did_not_converge():
    rec = reconstruct(non_converging_flow(), torch.rand(3, 1, 8, 8))
    assert not rec.converged and rec.status() == "did not converge" and rec.wrong() == [0, 1, 2]
    assert "did not converge in 20 iterations" in rec.failure


def test_perturbation_reports_wrong_inverse_apart_from_non_convergence():
    x = torch.full((6, 1, 8, 8), 0.25)
    x[:2] = 0.8
    rows, _ = noise_perturbation(folding_flow(), x, 17, [0.0], torch.Generator().manual_seed(0))
    assert rows[0]["inverse"] == "inverse wrong" and rows[0]["wrong_images"] == 2 and rows[0]["inverse_converged"]
    rows, _ = noise_perturbation(non_converging_flow(), x, 17, [0.0], torch.Generator().manual_seed(0))
    assert rows[0]["inverse"] == "did not converge" and not rows[0]["inverse_converged"]


@pytest.fixture
def toy_run(monkeypatch, trained_run):
    """The CLI commands on the digits test split, with ``load_run`` giving a toy model."""
    cfg = RunConfig.read(trained_run / "config.json")

    def use(flow):
        monkeypatch.setattr(attnflow.train, "load_run", lambda run, device, use_ema=True: (flow, cfg))

    return use


def failing(capsys, argv, code):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == code
    err = err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return out, err[0]


def test_reconstruct_command_exits_non_zero_naming_each_wrong_image(tmp_path, capsys, toy_run, trained_run):
    toy_run(folding_flow())
    out, err = failing(capsys, ["reconstruct", str(trained_run), "--n", "16", "--out", str(tmp_path / "r.png")], 1)
    wrong = [line for line in out.splitlines() if line.startswith("image ")]
    assert wrong and all("max reconstruction error" in line and "> tolerance 0.001" in line for line in wrong)
    assert f"{len(wrong)} of 16 images are not reconstructed within 0.001" in err
    assert "another preimage" in err


def test_reconstruct_command_reports_non_convergence_in_one_line(tmp_path, capsys, toy_run, trained_run):
    toy_run(non_converging_flow())
    _, err = failing(capsys, ["reconstruct", str(trained_run), "--out", str(tmp_path / "r.png")], 1)
    assert "the inverse did not converge" in err and "remaining residual" in err


def test_interpolate_command_checks_the_end_points(tmp_path, capsys, toy_run, trained_run):
    toy_run(folding_flow())
    _, err = failing(capsys, ["interpolate", str(trained_run), "--pairs", "3", "--out", str(tmp_path / "i.png")], 1)
    assert "of 3 pairs are not reconstructed within 0.001" in err


def test_perturb_command_says_inverse_wrong(capsys, toy_run, trained_run):
    toy_run(folding_flow())
    main(["perturb", str(trained_run), "--n", "8", "--sigmas", "0", "0.1"])
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 2 and all("inverse wrong for" in line and "of 8 images" in line for line in lines)


def test_reconstruct_grid_has_rows_of_eight(tmp_path, capsys, trained_run):
    """`reconstruct --n 64` used to write one row of 128 images."""
    main(["reconstruct", str(trained_run), "--n", "64", "--out", str(tmp_path / "r.png")])
    width, height = Image.open(tmp_path / "r.png").size
    assert width < height <= 2.5 * width  # 16 rows (8 real, 8 reconstructed) of 8 images
    assert "max reconstruction error" in capsys.readouterr().out


@pytest.mark.slow
def test_dot_product_ablation_is_caught_after_training(tmp_path, capsys):
    """ACF's plain dot-product attention after 500 steps: fixed points converge to other
    preimages of noisy images (the catalogue's `perturb` said "converged" for them)."""
    run = tmp_path / "dot"
    main(["train", "--preset", "acf-resflow-dot-digits", "--out", str(run), "--quiet",
          "--set", "train.steps=500", "--set", "train.threads=1"])
    capsys.readouterr()
    main(["perturb", str(run), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert any(r["inverse"] == "inverse wrong" and r["wrong_images"] > 0 for r in rows), rows
    # reconstruct exits non-zero exactly when an image comes back off by more than the tolerance
    model, _ = attnflow.train.load_run(run)
    test = load_dataset("digits", "test")
    off = reconstruct(model, to_float(test.images[:64], test.levels)).wrong()  # the command's 64 images
    argv = ["reconstruct", str(run), "--n", "64", "--out", str(tmp_path / "r.png")]
    if off:
        out, err = failing(capsys, argv, 1)
        assert f"{len(off)} of 64 images are not reconstructed" in err
    else:
        main(argv)
