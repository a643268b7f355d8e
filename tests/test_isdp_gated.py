"""iSDP with the gated initialisation (``init="gated"``: ``z_u = (tanh(gamma) A + cI) x_u``, gamma = 0
at the start): exact bijection, its invertibility guarantee, and the wiring of ``model.isdp_init``."""
from __future__ import annotations

import math

import pytest
import torch

from attnflow.config import resolve_config
from attnflow.flows.invertible_attention import ISDP, invertible_attention_factory
from attnflow.models import build, build_from_config
from attnflow.testing import check_bijection

DT = torch.float64


def _input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _randomize(layer: torch.nn.Module, seed: int, std: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


@pytest.mark.parametrize("c,h,w,heads,patches", [(2, 4, 4, 1, 4), (3, 2, 2, 1, 4), (2, 4, 4, 3, 4), (2, 4, 4, 2, 16)])
@pytest.mark.parametrize("seed", [0, 1])
def test_gated_isdp_is_bijection(c: int, h: int, w: int, heads: int, patches: int, seed: int) -> None:
    layer = ISDP(c, heads=heads, patches=patches, seed=seed, init="gated").double()
    _randomize(layer, seed)
    assert layer.gate_raw.abs() > 0.01  # the gate is part of the randomised layer
    check_bijection(layer, _input((2, c, h, w), seed))


def test_gated_isdp_starts_as_a_scale_of_the_unmasked_half() -> None:
    """gamma = 0: z_m = x_m, z_u = c x_u and log|det| = (unmasked features) * N * log c, for any input."""
    layer = ISDP(2, heads=2, patches=4, seed=3, init="gated").double()
    x = _input((3, 2, 4, 4), 3)
    z, logdet = layer(x)
    mask = layer.mask(4, 4)
    c = layer.offset.item()
    assert c == pytest.approx(1.01)
    torch.testing.assert_close(z, torch.where(mask, x, c * x), rtol=1e-14, atol=0)
    unmasked = int((~mask).sum())  # = (unmasked features per patch) * N
    torch.testing.assert_close(logdet, torch.full((3,), unmasked * math.log(c), dtype=DT))
    check_bijection(layer, x)


def test_gated_isdp_learns_its_gate_from_zero() -> None:
    """At gamma = 0 the attention has no effect, but the gate has a gradient, so training opens it."""
    layer = ISDP(2, heads=1, patches=4, seed=1, init="gated").double()
    z, logdet = layer(_input((4, 2, 4, 4), 1))
    (z.pow(2).sum() - logdet.sum()).backward()
    assert layer.gate_raw.grad.abs() > 0
    assert layer.query.weight.grad.abs().max() == 0  # Q and K act only through the gate


def test_gated_isdp_extreme_parameters_stay_invertible() -> None:
    """|g| -> 1 (either sign), c at its floor, near-hard attention: finite and exact."""
    for gate in (30.0, -30.0):
        layer = ISDP(2, heads=1, patches=16, seed=5, init="gated").double()
        _randomize(layer, 5, std=4.0)
        with torch.no_grad():
            layer.log_d.fill_(-6.0)
            layer.offset_raw.fill_(-40.0)
            layer.gate_raw.fill_(gate)
        x = _input((2, 2, 4, 4), 5)
        z, logdet = layer(x)
        assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
        check_bijection(layer, x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gated_isdp_mixing_matrix_bounds(seed: int) -> None:
    """The docstring's guarantee: |eig(gA + cI)| >= c - |g|, ||(gA + cI)^-1||_inf <= 1/(c - |g|), det > 0."""
    layer = ISDP(2, heads=2, patches=16, seed=seed, init="gated").double()
    _randomize(layer, seed, std=3.0)
    with torch.no_grad():
        layer.offset_raw.fill_(-3.0)
        layer.gate_raw.fill_(-2.0 if seed % 2 else 2.0)
    mixing = layer.attention(_input((3, 2, 4, 4), seed))
    c, g = layer.offset.item(), float(layer.gate.detach())
    attn = (mixing - c * torch.eye(mixing.shape[-1], dtype=DT)) / g
    torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)))
    assert (attn >= 0).all()
    gap = c - abs(g)
    assert gap > 0
    assert (torch.linalg.eigvals(mixing).abs() >= gap - 1e-12).all()
    assert (torch.linalg.inv(mixing).abs().sum(-1).amax(-1) <= 1 / gap + 1e-12).all()
    assert (torch.linalg.det(mixing) > 0).all()


def test_paper_init_has_no_gate_and_is_unchanged() -> None:
    layer = ISDP(2, heads=1, patches=4, seed=0)
    assert layer.init == "paper" and layer.gate_raw is None and layer.gate == 1.0
    assert "gate_raw" not in dict(layer.named_parameters())


def test_bad_init_raises() -> None:
    with pytest.raises(ValueError, match="paper, gated"):
        ISDP(2, init="zero")
    with pytest.raises(ValueError, match="paper, gated"):
        invertible_attention_factory("isdp", [4], isdp_init="zero")


@pytest.mark.parametrize("family_preset", ["glow-digits-isdp", "marflow-digits-isdp"])
def test_model_isdp_init_key_reaches_every_layer(family_preset: str) -> None:
    for init in ("paper", "gated"):
        model = build_from_config(resolve_config(family_preset, [f'model.isdp_init="{init}"'])["model"])
        layers = [m for m in model.modules() if isinstance(m, ISDP)]
        assert layers and all(m.init == init for m in layers)


def test_gated_and_paper_models_differ_by_one_parameter_per_layer() -> None:
    gated, paper = build("glow-digits-isdp", isdp_init="gated"), build("glow-digits-isdp", isdp_init="paper")
    layers = sum(isinstance(m, ISDP) for m in gated.modules())
    assert sum(p.numel() for p in gated.parameters()) - sum(p.numel() for p in paper.parameters()) == layers
