"""mARFlow: channel-autoregressive priors, autoregressive factor-out, the marflow model, presets."""
import math

import pytest
import torch

from attnflow.config import preset_names, resolve_config
from attnflow.core import standard_normal_log_prob
from attnflow.flows.autoregressive_prior import AutoregressiveFactorOut, ChannelAutoregressive
from attnflow.flows.multiscale import Flatten
from attnflow.models.flowpp import flowpp
from attnflow.models.glow import glow
from attnflow.models.marflow import marflow
from attnflow.testing import check_bijection

FAMILIES = {"glow": glow, "flowpp": flowpp, "marflow": marflow}


def _perturb(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


@pytest.mark.parametrize("group,context_channels", [(1, 0), (1, 2), (2, 3)])
def test_channel_autoregressive_inverse_and_logdet(group, context_channels):
    layer = _perturb(ChannelAutoregressive(4, group=group, hidden=3, context_channels=context_channels).double())
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    ctx = torch.randn(2, context_channels, 2, 2, dtype=torch.float64) if context_channels else None
    check_bijection(layer, x, context=ctx)


def test_channel_autoregressive_is_autoregressive():
    layer = _perturb(ChannelAutoregressive(3, hidden=3).double())
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x).reshape(3, 4, 3, 4)
    for g in range(3):
        assert jac[g, :, g + 1 :].abs().sum() == 0  # e_g ignores x_{>g}
        if g:
            assert jac[g, :, :g].abs().max() > 0  # ... and uses x_{<g}


def test_autoregressive_factor_out():
    layer = _perturb(AutoregressiveFactorOut(Flatten((2, 2, 2)), (5, 2, 2), keep=2, hidden=3).double())
    check_bijection(layer, torch.randn(2, 5, 2, 2, dtype=torch.float64))


def _toy_prior() -> ChannelAutoregressive:
    """Two channels at one position: a 2-D density with a non-trivial conditional."""
    torch.manual_seed(1)
    return _perturb(ChannelAutoregressive(2, hidden=4).double(), 0.8)


def _log_density(prior: ChannelAutoregressive, x: torch.Tensor) -> torch.Tensor:
    e, logdet = prior(x.view(-1, 2, 1, 1))
    return standard_normal_log_prob(e) + logdet


@torch.no_grad()
def test_autoregressive_prior_density_is_normalised_and_matches_sampling():
    prior = _toy_prior()
    samples = prior.inverse(torch.randn(20000, 2, 1, 1, dtype=torch.float64)).view(-1, 2)
    # decode then encode gives the latent back
    e = torch.randn(5, 2, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(prior(prior.inverse(e))[0], e)
    lo, hi = samples.min(0).values - 2, samples.max(0).values + 2
    n = 400
    g0, g1 = torch.linspace(lo[0], hi[0], n, dtype=torch.float64), torch.linspace(lo[1], hi[1], n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g0, g1, indexing="ij"), -1).view(-1, 2)
    density = _log_density(prior, grid).exp().view(n, n)
    cell = (g0[1] - g0[0]) * (g1[1] - g1[0])
    assert abs(float(density.sum() * cell) - 1.0) < 5e-3
    # the second channel's marginal under the density and under the samples agree
    marginal = density.sum(0) * (g0[1] - g0[0])
    mean = float((marginal * g1).sum() * (g1[1] - g1[0]))
    std = math.sqrt(float((marginal * (g1 - mean) ** 2).sum() * (g1[1] - g1[0])))
    assert abs(float(samples[:, 1].mean()) - mean) < 4 * std / math.sqrt(len(samples))
    assert abs(float(samples[:, 1].std()) / std - 1) < 0.03


ATTENTION_CASES = [
    ("none", (), 1, "mixture"),
    ("imap", (1,), 1, "mixture"),
    ("imap", (2, 4), 1, "affine"),
    ("isdp", (3,), 1, "mixture"),
    ("isdp", (1, 4), 2, "mixture"),
    ("isdp", (2,), 2, "affine"),
]


@pytest.mark.parametrize("attention,positions,heads,coupling", ATTENTION_CASES)
def test_marflow_inverse_and_logdet(attention, positions, heads, coupling):
    flow = _perturb(marflow(shape=(1, 4, 4), scales=2, steps=2, hidden=4, components=2, prior_hidden=3,
                            coupling=coupling, attention=attention, positions=positions, heads=heads,
                            patches=1).double(), 0.1)
    check_bijection(flow.transform, torch.rand(2, 1, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("coupling", ["mixture", "affine"])
def test_marflow_without_coupling_attention(coupling):
    """coupling_heads=0: the gated-convolution coupling networks without self-attention."""
    args = dict(shape=(1, 4, 4), scales=2, steps=2, hidden=4, components=2, prior_hidden=3, coupling=coupling)
    with_attention, without = marflow(**args, coupling_heads=2), marflow(**args, coupling_heads=0)
    assert "SelfAttention2d" not in {type(m).__name__ for m in without.modules()}
    assert "SelfAttention2d" in {type(m).__name__ for m in with_attention.modules()}
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(without) < count(with_attention)
    check_bijection(_perturb(without.double(), 0.1).transform, torch.rand(2, 1, 4, 4, dtype=torch.float64))


def test_marflow_structure_and_sampling():
    flow = marflow(shape=(1, 8, 8), scales=2, steps=1, hidden=4, components=2, prior_hidden=3)
    names = [type(m).__name__ for m in flow.modules()]
    assert names.count("AutoregressiveFactorOut") == 1 and names.count("ChannelAutoregressive") == 2
    assert "FactorOut" not in names
    x = flow.sample(3)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(attention="isdp", positions=(1,), patches=16), "does not tile"),
        (dict(attention="isdp", positions=(1,), heads=17), "heads=17 exceeds the 16 features"),
        (dict(coupling_heads=5), "heads=5 exceeds channels=4"),
        (dict(prior_group=3), "group=3 must be a positive divisor"),
        (dict(coupling="additive"), "unknown coupling"),
        (dict(attention="isdp"), "needs positions"),
        (dict(positions=(5,), attention="imap"), "positions must be among"),
        (dict(shape=(1, 6, 6)), "must be multiples of 4: use scales <= 1"),
    ],
)
def test_marflow_bad_arguments(kwargs, match):
    args = dict(shape=(1, 8, 8), scales=2, steps=1, hidden=4, components=2, prior_hidden=3)
    with pytest.raises(ValueError, match=match):
        marflow(**{**args, **kwargs})


def test_presets_resolve_and_digits_ones_build():
    mine = [n for n in preset_names()
            if n.startswith(("marflow-", "flowpp-")) or n.startswith("glow-") and n.endswith(("-imap", "-isdp"))]
    assert {"marflow-digits", "marflow-digits-imap", "marflow-digits-isdp", "flowpp-digits",
            "marflow-mnist-paper"} <= set(mine)
    for name in mine:
        cfg = resolve_config(name)
        model = dict(cfg["model"])
        family = model.pop("family")
        if "digits" in name:
            flow = FAMILIES[family](**model)
            assert torch.isfinite(flow.log_prob(torch.rand(2, *flow.shape))).all()
