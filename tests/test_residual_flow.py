"""Contractive residual flow models (i-ResNet, Residual Flow, i-DenseNet) with ACF attention."""
import math

import pytest
import torch

from attnflow.evaluate import noise_perturbation
from attnflow.flows.residual_block import InverseDidNotConverge, ResidualBlock
from attnflow.models import build
from attnflow.models.residual_flow import residual_flow
from attnflow.nets.lipschitz_layers import SpectralNormConv2d
from attnflow.testing import check_bijection

BRANCHES = ("iresnet", "residual_flow", "idensenet")
SIZES = {"iresnet": {"hidden": 8}, "residual_flow": {"hidden": 8}, "idensenet": {"growth": 4, "depth": 2}}


def tiny(branch: str, attention: str = "none", **overrides) -> torch.nn.Module:
    """A 2-scale model on 1x4x4 whose spectral norms are all active (raw norms >> coeff)."""
    kwargs = dict(shape=(1, 4, 4), scales=2, blocks=1, branch=branch, attention=attention, heads=2,
                  squeeze_first=True, preprocess="shift", mix_init=0.5, **SIZES[branch])
    model = residual_flow(**{**kwargs, **overrides}).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SpectralNormConv2d):
                m.weight.mul_(10.0)
    model.train()
    model.log_prob(torch.rand(3, 1, 4, 4, dtype=torch.float64))  # one power-iteration update
    return model.eval()


def residual_blocks(model: torch.nn.Module) -> list[ResidualBlock]:
    return [m for m in model.modules() if isinstance(m, ResidualBlock)]


@pytest.mark.parametrize("attention", ["none", "l2", "lipnorm"])
@pytest.mark.parametrize("branch", BRANCHES)
def test_model_inverts_and_exact_logdet_matches_brute_force(branch: str, attention: str) -> None:
    model = tiny(branch, attention, estimator="exact")
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    check_bijection(model.transform, x)


@pytest.mark.parametrize("attention", ["none", "l2", "lipnorm"])
@pytest.mark.parametrize("branch", BRANCHES)
def test_every_block_is_certified_contractive(branch: str, attention: str) -> None:
    blocks = residual_blocks(tiny(branch, attention))
    assert blocks and all(b.lipschitz_bound() < 1.0 for b in blocks)


def test_dot_product_ablation_has_no_certificate() -> None:
    blocks = residual_blocks(tiny("residual_flow", "dot"))
    assert all(math.isinf(b.lipschitz_bound()) for b in blocks)


@pytest.mark.parametrize("attention", ["none", "l2", "lipnorm"])
def test_inverse_error_below_1e5_at_coeff_097_with_attention(attention: str) -> None:
    """float32, as trained: decode(encode(x)) within 1e-5 of x for images in [0, 1]."""
    torch.manual_seed(1)
    model = residual_flow((1, 8, 8), scales=2, blocks=2, hidden=16, attention=attention, heads=2,
                          squeeze_first=True, coeff=0.97, mix_init=0.5, alpha=0.05)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SpectralNormConv2d):
                m.weight.mul_(10.0)
    x = torch.rand(16, 1, 8, 8) * 0.9 + 0.05
    model.train()
    for _ in range(3):
        model.log_prob(x)
    model.eval()
    with torch.no_grad():
        x_rec = model.decode(model.encode(x))
    assert float((x_rec - x).abs().max()) < 1e-5


def test_dot_product_attention_can_break_the_inverse() -> None:
    """The ablation: with large attention weights the fixed-point inverse diverges and says so,
    and the noise-perturbation analysis reports it instead of failing."""
    torch.manual_seed(0)
    model = residual_flow((1, 8, 8), scales=1, blocks=1, hidden=16, attention="dot", heads=1,
                          squeeze_first=True, mix_init=0.99, preprocess="shift", inverse_max_iter=200)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "DotProductSelfAttention":
                for p in m.parameters():
                    p.mul_(30.0)
    model.eval()
    z = model.encode(torch.rand(4, 1, 8, 8))
    with pytest.raises(InverseDidNotConverge, match="residual"):
        model.decode(z)
    rows, _ = noise_perturbation(model, torch.rand(4, 1, 8, 8), 17, [0.0])
    assert rows[0]["inverse_converged"] is False


def test_attention_scales_select_where_attention_sits() -> None:
    def count(**kw):
        model = residual_flow((1, 8, 8), scales=2, blocks=1, hidden=8, attention="l2", heads=2, squeeze_first=True,
                              **kw)
        return sum(type(m).__name__ == "L2MultiheadSelfAttention" for m in model.modules())

    assert count() == 2
    assert count(attention_scales=[1]) == 1


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"attention": "l2", "heads": 9}, "heads=9 exceeds channels=8"),
        ({"coeff": 1.0}, "coeff"),
        ({"attention": "softmax"}, "unknown attention"),
        ({"branch": "resnet"}, "unknown branch"),
        ({"attention": "l2", "attention_scales": [5]}, "attention_scales"),
    ],
)
def test_bad_configuration(overrides: dict, match: str) -> None:
    kwargs = {"shape": (1, 8, 8), "scales": 2, "blocks": 1, "hidden": 8, "squeeze_first": True, **overrides}
    with pytest.raises(ValueError, match=match):
        residual_flow(**kwargs)


@pytest.mark.parametrize("name", ["resflow-digits", "acf-resflow-l2-digits", "acf-resflow-lipnorm-digits",
                                  "iresnet-digits", "idensenet-digits", "acf-idensenet-l2-digits"])
def test_digits_presets_train_a_step(name: str) -> None:
    model = build(name)
    x = torch.rand(8, 1, 8, 8) * 0.9 + 0.05
    loss = -model.log_prob(x).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
