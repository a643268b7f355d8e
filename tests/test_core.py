"""Flow contract, bits/dim, and bad-input errors."""
import math

import pytest
import torch

from attnflow.core import Bijection, Chain, Flow, standard_normal_log_prob
from attnflow.evaluate import bits_per_dim, evaluate_bits_per_dim, log_prob_to_bits_per_dim
from attnflow.flows.multiscale import Flatten
from attnflow.models import build, presets


class NormalCDFInverse(Bijection):
    """z = Phi^{-1}(x): pushes U[0,1] onto N(0,1), so the flow's density on [0,1]^D is exactly 1."""

    def forward(self, x, context=None):
        normal = torch.distributions.Normal(0.0, 1.0)
        z = normal.icdf(x)
        return z, -normal.log_prob(z).flatten(1).sum(1)

    def inverse(self, z, context=None):
        return torch.distributions.Normal(0.0, 1.0).cdf(z)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_uniform_flow_has_log2_levels_bits_per_dim(levels):
    flow = Flow(Chain([NormalCDFInverse(), Flatten((1, 4, 4))]), (1, 4, 4))
    x = torch.rand(16, 1, 4, 4, dtype=torch.float64) * 0.998 + 0.001
    bpd = bits_per_dim(flow, x, levels)
    torch.testing.assert_close(bpd, torch.full_like(bpd, math.log2(levels)))


def test_evaluate_bits_per_dim_over_uint8_data():
    flow = Flow(Chain([NormalCDFInverse(), Flatten((1, 4, 4))]), (1, 4, 4))
    images = torch.randint(0, 17, (50, 1, 4, 4), dtype=torch.uint8)
    res = evaluate_bits_per_dim(flow, images, 17, batch_size=16)
    assert res["n"] == 50 and res["upper_bound"] is False
    assert abs(res["bpd"] - math.log2(17)) < 1e-4


def test_log_prob_to_bpd_formula():
    lp = torch.tensor([-10.0], dtype=torch.float64)
    expected = (10.0 + 64 * math.log(256)) / (64 * math.log(2))
    assert abs(float(log_prob_to_bits_per_dim(lp, 64, 256)) - expected) < 1e-9
    with pytest.raises(ValueError):
        log_prob_to_bits_per_dim(lp, 64, 1)


@pytest.fixture
def glow():
    torch.manual_seed(0)
    model = build("glow-digits", steps=2, hidden=16).double()
    model.train()
    model.log_prob(torch.rand(32, 1, 8, 8, dtype=torch.float64))  # ActNorm initialisation
    return model.eval()


def test_flow_contract(glow):
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    z, logdet = glow.transform(x)
    assert z.shape == (5, 64) and logdet.shape == (5,)
    torch.testing.assert_close(glow.log_prob(x), standard_normal_log_prob(z) + logdet)
    torch.testing.assert_close(glow.encode(x), z)
    torch.testing.assert_close(glow.decode(z), x)
    assert glow.latent_dim == 64 and glow.dim == 64


def test_sample_temperature(glow):
    gen = torch.Generator().manual_seed(1)
    x = glow.sample(7, temperature=0.5, generator=gen)
    assert x.shape == (7, 1, 8, 8) and torch.isfinite(x).all()
    z = glow.encode(x.clamp(0, 1))
    assert z.std() < 0.8  # latents drawn at T=0.5 (clamping moves few values)
    with pytest.raises(ValueError, match="temperature"):
        glow.sample(2, temperature=0.0)


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.rand(2, 1, 7, 8, dtype=torch.float64), "shape"),
        (torch.rand(2, 64, dtype=torch.float64), "shape"),
        (torch.randint(0, 2, (2, 1, 8, 8), dtype=torch.uint8), "dtype"),
        (torch.rand(2, 1, 8, 8, dtype=torch.float64) * 2, r"\[0, 1\]"),
        (torch.full((2, 1, 8, 8), float("nan"), dtype=torch.float64), "NaN"),
    ],
)
def test_bad_input_errors(glow, x, match):
    with pytest.raises(ValueError, match=match):
        glow.log_prob(x)


def test_bad_latent_errors(glow):
    with pytest.raises(ValueError, match="latents"):
        glow.decode(torch.zeros(2, 63, dtype=torch.float64))
    with pytest.raises(ValueError, match="context"):
        glow.log_prob(torch.rand(2, 1, 8, 8, dtype=torch.float64), context=torch.zeros(2, 3))


def test_unknown_preset():
    with pytest.raises(ValueError, match="available presets"):
        build("no-such-preset")
    assert "glow-digits" in presets()


def test_chain_rejects_modules():
    with pytest.raises(TypeError):
        Chain([torch.nn.Linear(2, 2)])
