"""Contraction certificates hold on the weights users actually run: after real training steps,
for the EMA weights, after loading a checkpoint, and certificates do not change the model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attnflow.config import resolve_config
from attnflow.evaluate.certificates import certify
from attnflow.nets.lipschitz_attention import L2MultiheadSelfAttention, exact_spectral_norms
from attnflow.nets.lipschitz_layers import SpectralNormConv2d
from attnflow.nets.operator_norm import gram_spectral_norm
from attnflow.train import Trainer, load_run

STEPS = 100
ROUND_OFF = 1e-6  # the divisor is certified; float32 rounding of the scaled weight is far below this


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small matrix factorisations are fastest on one thread (and multi-threaded LAPACK stalls on a
    loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    """``acf-resflow-l2-digits`` after 100 real training steps (EMA on, a checkpoint at the end)."""
    out = tmp_path_factory.mktemp("acf") / "run"
    cfg = resolve_config("acf-resflow-l2-digits", [f"train.steps={STEPS}", "train.eval_every=0", "train.threads=1",
                                                   "train.checkpoint_every=50"])
    trainer = Trainer(cfg, out, progress=False)
    trainer.run()
    return trainer


def exact_used_norm(layer: SpectralNormConv2d) -> float:
    """Operator norm of the convolution as the layer uses it, by SVD of its explicit matrix
    (float64, "same" padding, built from the smaller side), independent of the layer's own
    bound. ``normalized_weight()`` is the weight the next forward pass uses."""
    with torch.no_grad():
        weight = layer.normalized_weight().double()
    size, pad = layer.input_size, layer.padding
    if layer.kernel_size == (1, 1):  # the same C_out x C_in block at every position
        return float(torch.linalg.matrix_norm(weight.flatten(1), ord=2))
    channels = min(layer.in_channels, layer.out_channels)
    d = channels * size[0] * size[1]
    basis = torch.eye(d, dtype=torch.float64).reshape(d, channels, *size)
    if channels == layer.in_channels:
        matrix = F.conv2d(basis, weight, padding=pad)
    else:
        matrix = F.conv_transpose2d(basis, weight, padding=pad)
    return float(torch.linalg.matrix_norm(matrix.reshape(d, -1), ord=2))


def assert_used_norms_within_coeff(model: torch.nn.Module) -> None:
    layers = [m for m in model.modules() if isinstance(m, SpectralNormConv2d)]
    assert len(layers) == 24  # 2 scales x 4 blocks x 3 convolutions
    ratios = [exact_used_norm(m) / m.coeff for m in layers]
    assert max(ratios) <= 1 + ROUND_OFF, f"used operator norms up to {max(ratios):.7f} x coeff"


def run_forward(model: torch.nn.Module, train: bool) -> None:
    model.train(train)
    with torch.no_grad():
        model.log_prob(torch.rand(4, *model.shape))


def test_live_model_after_training(trained: Trainer) -> None:
    run_forward(trained.model, train=True)
    assert_used_norms_within_coeff(trained.model)
    run_forward(trained.model, train=False)
    assert_used_norms_within_coeff(trained.model)


def test_ema_weights_get_their_own_normalisation(trained: Trainer) -> None:
    ema = trained.eval_model()
    assert ema is not trained.model
    run_forward(ema, train=False)
    assert_used_norms_within_coeff(ema)


def test_loaded_checkpoint(trained: Trainer) -> None:
    model, _ = load_run(trained.out)  # EMA weights, loaded into a fresh model
    run_forward(model, train=False)
    assert_used_norms_within_coeff(model)
    live, _ = load_run(trained.out, use_ema=False)
    run_forward(live, train=False)
    assert_used_norms_within_coeff(live)


def test_certificates_are_pure_and_certify_every_block(trained: Trainer) -> None:
    model, _ = load_run(trained.out)
    x = torch.rand(16, *model.shape) * 0.9 + 0.05
    with torch.no_grad():
        z = model.encode(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = certify(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"certify changed {k}"
    with torch.no_grad():
        x_rec = model.decode(z)
    assert float((x_rec - x).abs().max()) < 1e-5
    assert len(report["blocks"]) == 8 and report["uncertified"] == []
    assert report["max_block_bound"] < 1.0
    assert report["max_layer_norm_over_coeff"] <= 1 + 1e-3


def test_attention_norms_bound_the_exact_norms_within_tolerance(trained: Trainer) -> None:
    attentions = [m for m in trained.model.modules() if isinstance(m, L2MultiheadSelfAttention)]
    assert attentions
    for att in attentions:
        for weight in (att._head_weights(att.query_weight), att._head_weights(att.value_weight), att.out_weight):
            with torch.no_grad():
                exact, gram = exact_spectral_norms(weight.double()), gram_spectral_norm(weight)
            assert torch.all(gram >= exact)
            assert torch.all(gram <= exact * (1 + 1e-3))


def test_circulant_path_after_training() -> None:
    """Layers too large for the explicit Gram bound are divided by the Gram bound of their circulant
    embedding: after 40 Adam steps (and for weights averaged as by EMA, loaded into a copy) every
    used norm is at most ``coeff``. Here on 1x16x16 with the explicit path switched off."""
    from attnflow.models.residual_flow import residual_flow
    from attnflow.train import ExponentialMovingAverage

    torch.manual_seed(0)
    model = residual_flow((1, 16, 16), scales=2, blocks=1, hidden=16, attention="l2", heads=2).train()
    layers = [m for m in model.modules() if isinstance(m, SpectralNormConv2d)]
    for layer in layers:
        layer.explicit_side = 0
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ema = ExponentialMovingAverage(model, 0.9)
    for _ in range(40):
        loss = -model.log_prob(torch.rand(16, 1, 16, 16) * 0.9 + 0.05).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
    run_forward(model, train=True)
    ratios = [exact_used_norm(m) / m.coeff for m in layers]
    assert max(ratios) <= 1 + ROUND_OFF, f"used operator norms up to {max(ratios):.7f} x coeff"
    averaged = copy.deepcopy(model)
    averaged.load_state_dict(ema.state_dict_for(model))
    for layer in averaged.modules():
        if isinstance(layer, SpectralNormConv2d):
            layer.explicit_side = 0
    run_forward(averaged, train=False)
    ratios = [exact_used_norm(m) / m.coeff for m in averaged.modules() if isinstance(m, SpectralNormConv2d)]
    assert max(ratios) <= 1 + ROUND_OFF, f"EMA: used operator norms up to {max(ratios):.7f} x coeff"


def test_uncertified_blocks_are_named_after_training_in_eval_and_certify(tmp_path, capsys) -> None:
    """The dot-product ablation has no finite bound: training, `attnflow eval` and `attnflow
    certify` (exit status 1) name its blocks."""
    import json

    from attnflow.cli import main

    out = tmp_path / "dot"
    main(["train", "--preset", "acf-resflow-dot-digits", "--out", str(out), "--quiet", "--set", "train.steps=2",
          "--set", "train.eval_every=0", "--set", "model.blocks=1"])
    results = json.loads((out / "results.json").read_text())
    assert len(results["certificates"]["uncertified"]) == 2
    assert "not certified contractive" in capsys.readouterr().err
    main(["eval", str(out), "--max-batches", "1"])
    assert "2 of 2 residual blocks are not certified" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["certify", str(out)])
    assert exit_info.value.code == 1
    assert "plain dot-product attention" in capsys.readouterr().err
