"""Paired data for conditional flows (low-resolution inputs, label maps, paired folders) and the
super-resolution metrics (PSNR, SSIM, LR-PSNR, diversity)."""
import numpy as np
import pytest
import torch
from PIL import Image

from attnflow.data import ImageDataset, load_dataset
from attnflow.data.pairs import (
    attach_condition,
    bicubic_downscale,
    bicubic_upscale,
    coarse_label_map,
    lowres_images,
    pad_images,
)
from attnflow.evaluate.superres import comparison_rows, evaluate_conditional, lr_psnr, psnr, ssim
from attnflow.models.srflow import srflow


def test_digits_lowres_pairs():
    data = load_dataset("digits", "test", condition="lowres", scale=2)
    assert data.condition_shape == (1, 4, 4) and data.condition_levels == data.levels == 17
    assert int(data.conditions.max()) < 17
    # a constant image stays constant when downscaled
    flat = torch.full((1, 1, 8, 8), 7, dtype=torch.uint8)
    assert (lowres_images(flat, 17, 4) == 7).all()


def test_scale_must_divide_size():
    with pytest.raises(ValueError, match="scale 3 does not divide the image size 8x8"):
        load_dataset("digits", "test", condition="lowres", scale=3)
    with pytest.raises(ValueError, match="scale 8 does not divide the image size 28x28"):
        bicubic_downscale(torch.rand(1, 1, 28, 28), 8)


def test_labelmap_and_padding():
    data = load_dataset("digits", "test", condition="labelmap")
    assert data.condition_levels == 3 and set(data.conditions.unique().tolist()) <= {0, 1, 2}
    maps = coarse_label_map(torch.tensor([[[[0, 16], [16, 16]]]], dtype=torch.uint8), 17)
    assert maps.shape == (1, 1, 2, 2) and (maps == 2).all()  # block mean 0.75: ink
    padded = pad_images(torch.ones(2, 1, 28, 28, dtype=torch.uint8), 32)
    assert padded.shape == (2, 1, 32, 32) and int(padded.sum()) == 2 * 28 * 28
    with pytest.raises(ValueError, match="data.pad must be at least 28"):
        pad_images(torch.ones(1, 1, 28, 28), 16)


def test_unknown_and_unpaired_conditions():
    with pytest.raises(ValueError, match="unknown data.condition"):
        load_dataset("digits", "test", condition="sketch")
    with pytest.raises(ValueError, match="needs a dataset with source images"):
        load_dataset("digits", "test", condition="paired")
    data = load_dataset("digits", "test")
    with pytest.raises(ValueError, match="one per image"):
        ImageDataset(data.images, None, 17, "x", "test", conditions=data.images[:3], condition_levels=17)
    assert attach_condition(attach_condition(data, "labelmap"), "none").conditions is None


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_pairs(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        _write(tmp_path / "train" / "source" / f"{name}.png", rng.integers(0, 5, (4, 6), dtype=np.uint8))
        _write(tmp_path / "train" / "target" / f"{name}.png", rng.integers(0, 255, (4, 6, 3), dtype=np.uint8))
    data = load_dataset("folder-pairs", "train", root=tmp_path, condition="paired")
    assert data.images.shape == (2, 3, 4, 6) and data.conditions.shape == (2, 1, 4, 6)
    source = np.asarray(Image.open(tmp_path / "train" / "source" / "b.png"))
    assert (data.conditions[1, 0].numpy() == source).all()  # matched by name, in name order

    _write(tmp_path / "train" / "target" / "c.png", rng.integers(0, 255, (4, 6, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"appear on one side only, e.g. \['c'\]"):
        load_dataset("folder-pairs", "train", root=tmp_path, condition="paired")
    for name in ("a", "b", "c"):
        _write(tmp_path / "val" / "source" / f"{name}.png", rng.integers(0, 5, (8, 8), dtype=np.uint8))
        _write(tmp_path / "val" / "target" / f"{name}.png", rng.integers(0, 255, (4, 6, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="a pair must have the same size"):
        load_dataset("folder-pairs", "val", root=tmp_path, condition="paired")


def test_lr_psnr_perfect_and_constant():
    hr = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    lr = bicubic_downscale(hr, 4)
    assert torch.isinf(lr_psnr(hr, lr, 4)).all()  # the true image is perfectly consistent
    assert (lr_psnr(torch.full_like(hr, 0.5), lr, 4) < 30).all()
    assert (lr_psnr(bicubic_upscale(lr, 4), lr, 4) > lr_psnr(torch.full_like(hr, 0.5), lr, 4)).all()


def test_psnr_and_ssim():
    x = torch.rand(3, 1, 8, 8)
    assert torch.isinf(psnr(x, x)).all()
    torch.testing.assert_close(psnr(x, (x + 0.1).clamp(0, 1)), psnr(x, (x + 0.1).clamp(0, 1)))
    y = torch.zeros_like(x)
    expected = 10 * torch.log10(1 / (x.double() ** 2).flatten(1).mean(1))
    torch.testing.assert_close(psnr(x, y), expected)
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert (ssim(x, torch.rand(3, 1, 8, 8)) < 0.5).all()


def test_evaluate_conditional_on_a_tiny_model():
    torch.manual_seed(0)
    flow = srflow(shape=(1, 8, 8), scale=2, levels=2, hidden=4, steps=1, encoder_features=4, encoder_blocks=1,
                  encoder_growth=2, transition_steps=0)
    hr = torch.rand(5, 1, 8, 8)
    lr = bicubic_downscale(hr, 2)
    res = evaluate_conditional(flow, hr, lr, temperatures=(0.0, 0.8), samples=2, scale=2, batch_size=3)
    assert res["n"] == 5 and set(res["temperatures"]) == {"0.0", "0.8"}
    cold, hot = res["temperatures"]["0.0"], res["temperatures"]["0.8"]
    assert cold["diversity"] == 0.0 < hot["diversity"]
    assert set(res["bicubic"]) == {"psnr", "ssim", "lr_psnr"} and "lpips" in res["unavailable"]
    rows = comparison_rows(lr[:2], hr[:2], [hr[:2]], 2)
    assert rows.shape == (8, 1, 8, 8)  # LR, bicubic, one output row, HR


def test_evaluate_conditional_counts_non_finite_outputs(monkeypatch):
    torch.manual_seed(0)
    flow = srflow(shape=(1, 8, 8), scale=2, levels=2, hidden=4, steps=1, encoder_features=4, encoder_blocks=1,
                  encoder_growth=2, transition_steps=0)
    real = flow.decode

    def overflowing(z, context):  # the first condition's outputs blow up
        x = real(z, context).clone()
        x[0] = float("inf")
        return x

    monkeypatch.setattr(flow, "decode", overflowing)
    hr = torch.rand(4, 1, 8, 8)
    res = evaluate_conditional(flow, hr, bicubic_downscale(hr, 2), temperatures=(0.5,), samples=2, scale=2)
    m = res["temperatures"]["0.5"]
    assert m["non_finite"] == 2  # counted, one per sample
    assert all(np.isfinite([m["psnr"], m["ssim"], m["lr_psnr"], m["diversity"]]))
