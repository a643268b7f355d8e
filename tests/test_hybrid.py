"""Hybrid model (Residual Flows' classifier head on a contractive flow's latent; ACF Table 3)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from attnflow.config import resolve_config
from attnflow.core import Flow
from attnflow.data.dataset import ImageDataset
from attnflow.evaluate.classification import accuracy_summary
from attnflow.flows.multiscale import FactorOut, Flatten
from attnflow.models import residual_flow
from attnflow.models.hybrid import HybridFlow, check_labels, hybrid_loss, latent_pieces
from attnflow.schema import ConfigError
from attnflow.train import Trainer, load_run

TINY = dict(shape=(1, 8, 8), blocks=1, hidden=8, estimator="exact", classifier_hidden=16)
LAYOUTS = [dict(scales=2, squeeze_first=True, factor_out=False), dict(scales=3, squeeze_first=True, factor_out=True),
           dict(scales=2, squeeze_first=False, factor_out=False)]
TRAIN = ["model.blocks=1", "model.hidden=32", "model.classifier_hidden=64", "train.ema_decay=0",
         "train.eval_every=0", "train.threads=1", "train.warmup_steps=10", "train.checkpoint_every=1000"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_head_gives_logits_and_reads_the_latent_pieces(layout):
    torch.manual_seed(0)
    model = residual_flow(**TINY, **layout, classes=7)
    assert isinstance(model, HybridFlow)
    x = torch.rand(5, 1, 8, 8)
    assert model.classify(x).shape == (5, 7)
    # the pieces are the factored-out halves, in order, then the last scale (as the transform builds them)
    built = [tuple(m.out_shape) for m in model.transform.modules() if isinstance(m, FactorOut)]
    built += [tuple(m.shape) for m in model.transform.modules() if isinstance(m, Flatten)]
    assert model.head.pieces == built == latent_pieces((1, 8, 8), **layout)
    assert sum(math.prod(p) for p in built) == model.latent_dim


@pytest.mark.parametrize("layout", LAYOUTS[:2])
def test_head_leaves_the_flow_unchanged(layout):
    torch.manual_seed(0)
    hybrid = residual_flow(**TINY, **layout, classes=10).double().eval()
    plain = residual_flow(**TINY, **layout).double().eval()
    assert type(plain) is Flow
    flow_state = {k: v for k, v in hybrid.state_dict().items() if not k.startswith("head.")}
    plain.load_state_dict(flow_state)  # strict: the head adds parameters, it changes none of the flow's
    with torch.no_grad():  # a non-trivial flow: ActNorm away from identity, prior weights non-zero
        for p in hybrid.transform.parameters():
            p.add_(0.05 * torch.randn_like(p))
        plain.load_state_dict({k: v for k, v in hybrid.state_dict().items() if not k.startswith("head.")})
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 0.9 + 0.05
    with torch.no_grad():
        lp, logits = hybrid.log_prob_and_logits(x)
        assert torch.equal(hybrid.log_prob(x), plain.log_prob(x))
        assert torch.equal(lp, plain.log_prob(x))
        assert torch.equal(logits, hybrid.classify(x))
        z = hybrid.encode(x)
        assert torch.equal(z, plain.encode(x))
        assert torch.allclose(hybrid.decode(z), x, atol=1e-8)
    # log-det against the float64 brute-force Jacobian of encode
    x1 = x[:1]
    jac = torch.autograd.functional.jacobian(lambda v: hybrid.encode(v.view(1, 1, 8, 8)), x1.flatten())
    _, logdet = hybrid.forward_and_logdet(x1)
    assert torch.allclose(logdet, torch.linalg.slogdet(jac.squeeze(0))[1], atol=1e-8)


def test_loss_is_weighted_bits_per_dim_plus_cross_entropy_in_bits():
    torch.manual_seed(0)
    model = residual_flow(**TINY, **LAYOUTS[0], classes=10).double().eval()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64) * 0.9 + 0.05
    y = torch.tensor([0, 1, 2, 3, 4, 9])
    with torch.no_grad():
        bpd = ((-model.log_prob(x) + 64 * math.log(17)) / (64 * math.log(2))).mean()
        ce_bits = F.cross_entropy(model.classify(x), y) / math.log(2)
    for weight in (0.0, 1.0, 64.0):
        loss, metrics = hybrid_loss(*model.log_prob_and_logits(x), y, 64, 17, weight)
        assert torch.allclose(loss, weight * bpd + ce_bits)
        assert metrics["bpd"] == pytest.approx(float(bpd))
        assert metrics["ce"] == pytest.approx(float(ce_bits) * math.log(2))


def test_accuracy_summary():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
    res = accuracy_summary(logits, torch.tensor([0, 1, 1, 1]))
    assert res["accuracy"] == 0.75
    assert res["accuracy_stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert res["cross_entropy"] == pytest.approx(float(F.cross_entropy(logits, torch.tensor([0, 1, 1, 1]))))


def _trainer(tmp_path, name, steps, *extra):
    cfg = resolve_config("resflow-digits-hybrid", [*TRAIN, f"train.steps={steps}", *extra])
    return Trainer(cfg, tmp_path / name, progress=False)


def test_short_training_classifies_digits_and_the_checkpoint_keeps_the_head(tmp_path):
    result = _trainer(tmp_path, "run", 40).run()
    test = result["test"]
    assert test["accuracy"] > 0.6, test  # chance is 0.1; shuffled labels stay there (next test)
    assert test["n"] == 360 and math.isfinite(test["bpd"]) and test["bpd"] < math.log2(17)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test"]["accuracy"] == test["accuracy"]
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "ce" in r]
    assert train_rows and all({"bpd", "ce", "accuracy", "loss"} <= set(r) for r in train_rows)
    assert rows[-1]["test_accuracy"] == test["accuracy"]
    # the checkpoint round-trip keeps the head: the loaded run classifies the same
    model, _ = load_run(tmp_path / "run")
    assert isinstance(model, HybridFlow)
    from attnflow.data import load_dataset, to_float

    data = load_dataset("digits", "test")
    x = to_float(data.images[:50], data.levels)
    with torch.no_grad():
        acc = float((model.classify(x).argmax(1) == data.labels[:50]).float().mean())
    assert acc > 0.6


def test_shuffled_labels_stay_at_chance(tmp_path):
    trainer = _trainer(tmp_path, "shuffled", 40)
    gen = torch.Generator().manual_seed(0)
    trainer.train_set.labels = trainer.train_set.labels[torch.randperm(len(trainer.train_set), generator=gen)]
    trainer.run(stop_at=40)
    assert trainer.evaluate()["accuracy"] < 0.25


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"model.classes \(used by family residual\)"):
        resolve_config("glow-digits", ["model.classes=10"])
    with pytest.raises(ValueError, match="at least 2 classes"):
        residual_flow(**TINY, **LAYOUTS[0], classes=1)
    with pytest.raises(ValueError, match="train.likelihood_weight .* model.classes > 0"):
        Trainer(resolve_config("resflow-digits", ["train.likelihood_weight=0"]), tmp_path / "w", progress=False)
    with pytest.raises(ValueError, match="labels up to 9 but model.classes=5; set model.classes=10"):
        _trainer(tmp_path, "few", 1, "model.classes=5")
    model = residual_flow(**TINY, **LAYOUTS[0], classes=10)
    with pytest.raises(ValueError, match="needs class labels but dataset 'pairs' has none"):
        check_labels(model, None, "pairs")
    import attnflow.train.trainer as trainer_module

    real = trainer_module.load_configured

    def unlabelled(data, split):
        d = real(data, split)
        return ImageDataset(d.images, None, d.levels, d.name, d.split)

    monkeypatch.setattr(trainer_module, "load_configured", unlabelled)
    with pytest.raises(ValueError, match="model.classes=10 needs class labels but dataset 'digits' has none"):
        _trainer(tmp_path, "unlabelled", 1)
