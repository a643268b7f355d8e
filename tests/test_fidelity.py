"""FID / KID / IS plumbing (attnflow.evaluate.fidelity, ``attnflow fid``) without torch-fidelity or
Inception weights: the one-line messages, the uint8 RGB conversion, and the arguments given to
``torch_fidelity.calculate_metrics`` (a fake module records its call)."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from attnflow.cli import main
from attnflow.evaluate.fidelity import FidelityUnavailable, check_inception_weights, fidelity_images, sample_quality


@pytest.fixture
def inception_weights(tmp_path):
    """A file with the keys of an Inception-v3 state dict (tiny tensors)."""
    path = tmp_path / "inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, path)
    return path


@pytest.fixture
def fake_fidelity(monkeypatch):
    calls = []

    def calculate_metrics(**kwargs):
        calls.append(kwargs)
        return {"frechet_inception_distance": 12.5, "kernel_inception_distance_mean": 0.01,
                "kernel_inception_distance_std": 0.002, "inception_score_mean": 3.0, "inception_score_std": 0.1}

    monkeypatch.setitem(sys.modules, "torch_fidelity", types.SimpleNamespace(calculate_metrics=calculate_metrics))
    return calls


def test_grey_images_become_rgb_uint8():
    x = torch.tensor([0.0, 0.5, 1.0, 0.2]).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    out = fidelity_images(x)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 2, 2)
    assert out[0, :, 0, 1].tolist() == [128, 128, 128] and out[0, 0].flatten().tolist() == [0, 128, 255, 51]
    rgb = torch.rand(2, 3, 4, 4)
    assert torch.equal(fidelity_images(rgb), (rgb * 255).round().to(torch.uint8))
    with pytest.raises(ValueError, match="1 or 3"):
        fidelity_images(torch.rand(2, 2, 4, 4))


def test_missing_package_is_one_line(monkeypatch, inception_weights):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import raises ImportError
    with pytest.raises(FidelityUnavailable, match=r'pip install -e "\.\[fid\]"'):
        sample_quality(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8), inception_weights)


def test_missing_and_corrupt_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing can be downloaded"):
        check_inception_weights(tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        check_inception_weights(corrupt)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not an Inception-v3 state dict"):
        check_inception_weights(other)


def test_calculate_metrics_gets_uint8_rgb_images_and_the_local_weights(fake_fidelity, inception_weights):
    samples, reference = torch.rand(6, 1, 28, 28), torch.rand(5, 1, 28, 28)
    res = sample_quality(samples, reference, inception_weights, batch_size=3)
    (call,) = fake_fidelity
    fake, real = call["input1"], call["input2"]
    assert len(fake) == 6 and len(real) == 5
    assert fake[0].dtype == torch.uint8 and fake[0].shape == (3, 28, 28)
    assert torch.equal(fake[2], fidelity_images(samples)[2]) and torch.equal(real[4], fidelity_images(reference)[4])
    assert call["fid"] and call["kid"] and call["isc"] and call["kid_subset_size"] == 5
    assert call["feature_extractor"] == "inception-v3-compat"
    assert call["feature_extractor_weights_path"] == str(inception_weights)
    assert call["datasets_download"] is False and call["cache"] is False and call["batch_size"] == 3
    assert res == {"fid": 12.5, "kid": 0.01, "kid_std": 0.002, "inception_score": 3.0,
                   "inception_score_std": 0.1, "n_samples": 6, "n_reference": 5}


def test_fid_command(fake_fidelity, inception_weights, tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--preset", "glow-digits", "--out", str(run), "--set", "train.steps=2", "--set", "model.steps=1",
          "--set", "model.hidden=8", "--set", "train.threads=1"])
    capsys.readouterr()
    main(["fid", str(run), "--inception-weights", str(inception_weights), "--n", "20", "--json"])
    out = capsys.readouterr().out
    assert '"fid": 12.5' in out and '"n_samples": 20' in out
    (call,) = fake_fidelity
    assert call["input1"][0].shape == (3, 8, 8) and len(call["input2"]) == 20
    with pytest.raises(SystemExit) as exc:
        main(["fid", str(run), "--inception-weights", str(tmp_path / "absent.pth")])
    assert exc.value.code == 2
    assert "Inception weights file" in capsys.readouterr().err


def test_fid_command_without_the_package(monkeypatch, inception_weights, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(SystemExit) as exc:
        main(["fid", str(tmp_path), "--inception-weights", str(inception_weights)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.count("\n") == 0 and "torch-fidelity" in err and "[fid]" in err
