"""The model owns its objective: ``Flow.loss(Batch)`` is the mean bits/dim of a density model
(conditional ones included, their condition in the batch) and Residual Flows' hybrid loss of a
model with classes, each against its formula; the trainer trains on whatever objective the model
has; ``train.likelihood_weight`` of version 0.1 reads as ``model.likelihood_weight``."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from attnflow.config import read_config, resolve_config
from attnflow.core import Batch, Flow
from attnflow.models import TINY, build_from_config, residual_flow
from attnflow.schema import ConfigError
from attnflow.train import Trainer

LEVELS = 17


def _bits_per_dim(log_prob: torch.Tensor, dim: int) -> torch.Tensor:
    return (-log_prob + dim * math.log(LEVELS)) / (dim * math.log(2.0))


def _images(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(n, *shape, dtype=torch.float64) * 0.9 + 0.05


def _perturbed(model: Flow) -> Flow:
    """``model`` in float64, evaluating, its weights away from the identity of initialisation
    (where a condition is not read and a head predicts one class)."""
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("family", ["glow", "residual", "srflow"])
def test_the_loss_of_a_density_model_is_its_mean_bits_per_dim(family):
    torch.manual_seed(0)
    model = _perturbed(build_from_config({"family": family, **TINY[family]}))
    x = _images(4, model.shape)
    context = None if model.context_shape is None else _images(4, model.context_shape)
    with torch.no_grad():
        loss, metrics = model.loss(Batch(x, LEVELS, context, labels=torch.arange(4)))
        expected = _bits_per_dim(model.log_prob(x, context), model.dim).mean()
    assert type(model).loss is Flow.loss and metrics == {}
    assert torch.allclose(loss, expected, rtol=1e-12, atol=0)
    if context is not None:  # the condition in the batch is the one the likelihood is of
        with torch.no_grad():
            other = model.loss(Batch(x, LEVELS, _images(4, model.context_shape)))[0]
        assert not torch.allclose(other, loss)


@pytest.mark.parametrize("weight", [0.0, 1.0, 64.0])
def test_the_loss_of_a_hybrid_model_is_weighted_bits_per_dim_plus_cross_entropy_in_bits(weight):
    torch.manual_seed(0)
    model = residual_flow(**TINY["residual"], classifier_hidden=16, classes=10, likelihood_weight=weight)
    model = _perturbed(model)
    x, y = _images(6, model.shape), torch.tensor([0, 1, 2, 3, 4, 9])
    with torch.no_grad():
        loss, metrics = model.loss(Batch(x, LEVELS, labels=y))
        bpd = _bits_per_dim(model.log_prob(x), model.dim).mean()
        logits = model.classify(x)
        ce = F.cross_entropy(logits, y)
    assert torch.allclose(loss, weight * bpd + ce / math.log(2.0), rtol=1e-12, atol=0)
    assert set(metrics) == {"bpd", "ce", "accuracy"}
    assert torch.allclose(metrics["bpd"], bpd) and torch.allclose(metrics["ce"], ce)
    assert float(metrics["accuracy"]) == float((logits.argmax(1) == y).float().mean())
    with pytest.raises(ValueError, match="model.classes=10 trains on class labels but the batch has none"):
        model.loss(Batch(x, LEVELS))


def test_the_trainer_trains_on_the_objective_the_model_owns(tmp_path, monkeypatch):
    """A model whose loss is twice its bits/dim and reports what its batch held: the trainer logs
    that loss, the model's metrics and the labels it passed, whatever the model's class."""
    from attnflow.config import ModelConfig

    seen: list[torch.Tensor] = []

    def build(section):
        model = build_from_config(section)

        def loss(batch: Batch):
            bpd, _ = Flow.loss(model, batch)
            assert batch.labels is not None
            seen.append(batch.labels)
            return 2 * bpd, {"bpd": bpd.detach(), "label_mean": batch.labels.double().mean()}

        model.loss = loss
        return model

    monkeypatch.setattr(ModelConfig, "build", lambda section: build(section.to_dict()))
    cfg = resolve_config("glow-digits", ["model.steps=1", "model.hidden=8", "train.steps=2",
                                         "train.log_every=1", "train.batch_size=8", "train.threads=1",
                                         "train.checkpoint_every=1000"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.run()
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "label_mean" in r]
    assert len(steps) == 2 and len(seen) == 2
    for row, labels in zip(steps, seen):
        assert row["loss"] == pytest.approx(2 * row["bpd"], rel=1e-6)
        assert row["label_mean"] == pytest.approx(float(labels.double().mean()))
        assert labels.shape == (8,) and labels.dtype == torch.int64  # the digits' labels of the batch's rows


def test_a_saved_train_likelihood_weight_reads_as_the_model_key(tmp_path):
    cfg = resolve_config("resflow-digits-hybrid")
    saved = {"model": cfg["model"], "data": cfg["data"], "train": {**cfg["train"], "likelihood_weight": 0.25}}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    read = read_config(tmp_path / "config.json")
    assert read["model"]["likelihood_weight"] == 0.25 and "likelihood_weight" not in read["train"]
    assert build_from_config(read["model"]).likelihood_weight == 0.25
    # at its old default, 1, the key configured nothing: a density model's saved run loads without it
    glow = resolve_config("glow-digits")
    old = {**glow, "train": {**glow["train"], "likelihood_weight": 1.0}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert read_config(tmp_path / "config.json") == glow


def test_an_override_of_the_old_key_sets_the_model_key_with_a_note(capsys):
    cfg = resolve_config("resflow-digits-hybrid", ["train.likelihood_weight=64"])
    assert cfg["model"]["likelihood_weight"] == 64.0 and "likelihood_weight" not in cfg["train"]
    assert capsys.readouterr().err.strip() == (
        "attnflow: note: train.likelihood_weight is now model.likelihood_weight; "
        "'train.likelihood_weight=64' is read as model.likelihood_weight")
    assert resolve_config("resflow-digits-hybrid", ["model.likelihood_weight=64"]) == cfg
    with pytest.raises(ConfigError, match=r"model.likelihood_weight \(used by family residual\)"):
        resolve_config("glow-digits", ["train.likelihood_weight=0"])
    with pytest.raises(ValueError, match="model.likelihood_weight .* set model.classes > 0 or leave it at 1"):
        build_from_config(resolve_config("resflow-digits", ["model.likelihood_weight=0"])["model"])
