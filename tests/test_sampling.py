"""Samples are finite and in [0, 1], or the bad ones are counted and refused (issue 12)."""
import json

import pytest
import torch
from PIL import Image
from toy_flows import OverflowingInverse, overflowing_flow

import attnflow.train
from attnflow.cli import main
from attnflow.config import resolve_config
from attnflow.core import NonFiniteSamples
from attnflow.evaluate import finite_samples, image_grid, save_image_grid
from attnflow.models import build
from attnflow.train import Trainer


def test_non_finite_samples_are_counted_not_returned():
    flow = overflowing_flow()
    z = torch.randn(200, 64, generator=torch.Generator().manual_seed(3))
    expected = int((~torch.isfinite(OverflowingInverse().inverse(z))).any(1).sum())
    assert 0 < expected < 200
    with pytest.raises(NonFiniteSamples, match=f"{expected} of 200 samples are not finite") as exc:
        flow.sample(200, generator=torch.Generator().manual_seed(3))
    assert exc.value.count == expected and int(exc.value.finite.sum()) == 200 - expected
    good, error = finite_samples(flow, 200, generator=torch.Generator().manual_seed(3))
    assert error.count == expected and len(good) == 200 - expected
    assert torch.isfinite(good).all() and good.min() >= 0 and good.max() <= 1


@pytest.mark.parametrize("preset", ["glow-digits", "resflow-digits", "denseflow-digits", "flowpp-digits"])
def test_samples_lie_in_the_unit_cube_and_the_model_scores_them(preset):
    flow = build(preset, hidden=8)
    x = flow.sample(64, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert x.min() >= 0 and x.max() <= 1
    with torch.no_grad():
        assert torch.isfinite(flow.log_prob(x)).all()


def test_sampling_decodes_in_bounded_batches():
    flow = build("glow-digits", steps=1, hidden=8)
    sizes, inverse = [], flow.transform.inverse

    def recording(z, context=None):
        sizes.append(len(z))
        return inverse(z, context)

    full = flow.sample(300, generator=torch.Generator().manual_seed(1), batch_size=300)
    flow.transform.inverse = recording
    batched = flow.sample(300, generator=torch.Generator().manual_seed(1), batch_size=128)
    assert sizes == [128, 128, 44]
    torch.testing.assert_close(batched, full)


def test_image_grid_refuses_non_finite_images(tmp_path):
    images = torch.rand(3, 1, 8, 8)
    images[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="1 of 3 images hold NaN or infinite values"):
        image_grid(images)
    with pytest.raises(ValueError, match="NaN"):
        save_image_grid(images, tmp_path / "grid.png")
    assert not (tmp_path / "grid.png").exists()


def test_training_reports_non_finite_end_samples(tmp_path, capsys):
    cfg = resolve_config("glow-digits", ["train.steps=2", "model.steps=1", "model.hidden=8", "train.threads=1"])
    threads = torch.get_num_threads()
    trainer = Trainer(cfg, tmp_path, progress=False)
    inverse = trainer.model.transform.inverse

    def overflowing(z, context=None):  # the first 5 samples overflow, as a diverged model's do
        x = inverse(z, context)
        x[:5] = float("nan")
        return x

    trainer.model.transform.inverse = overflowing
    results = trainer.run()
    torch.set_num_threads(threads)
    assert results["non_finite_samples"] == 5
    assert json.loads((tmp_path / "results.json").read_text())["non_finite_samples"] == 5
    assert "5 of 64 samples are not finite" in capsys.readouterr().err
    assert Image.open(tmp_path / "samples.png").size[0] > 0  # the 59 finite samples


def test_sample_command_counts_non_finite_samples(tmp_path, capsys, monkeypatch, trained_run):
    cfg = json.loads((trained_run / "config.json").read_text())
    monkeypatch.setattr(attnflow.train, "load_run", lambda run, device, use_ema=True: (overflowing_flow(), cfg))
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(trained_run), "--n", "100", "--out", str(tmp_path / "s.png")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "samples are not finite" in err[0] and f"{tmp_path / 's.png'} holds the" in err[0]
    assert (tmp_path / "s.png").is_file()

