"""Glow-family bijections: exact inverse and log-det against the brute-force Jacobian."""
import pytest
import torch

from attnflow.core import Chain
from attnflow.flows.glow import ActNorm, AffineCoupling, GlowStep, InvertibleConv1x1
from attnflow.flows.multiscale import FactorOut, Flatten, Squeeze, multiscale_transform
from attnflow.flows.preprocess import Logit, Shift
from attnflow.models import build
from attnflow.testing import check_bijection

D = torch.float64


def _perturb(module, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


@pytest.mark.parametrize("size", [(3, 3), (4, 5), (2, 2)])
def test_actnorm(size):
    layer = ActNorm(3).double()
    x = torch.randn(4, 3, *size, dtype=D) * 3 + 1
    layer.train()
    z, _ = layer(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=D), atol=1e-6)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=D), atol=1e-4)
    check_bijection(_perturb(layer), x)


def test_actnorm_initialisation_is_state():
    layer = ActNorm(2)
    layer.train()
    layer(torch.randn(8, 2, 3, 3) * 5)
    copy = ActNorm(2)
    copy.load_state_dict(layer.state_dict())
    copy.train()
    copy(torch.randn(8, 2, 3, 3))  # must not re-initialise from this batch
    torch.testing.assert_close(copy.log_scale, layer.log_scale)
    assert bool(copy.initialized)


@pytest.mark.parametrize("size", [(3, 3), (1, 1), (2, 5)])
def test_invertible_conv(size):
    layer = _perturb(InvertibleConv1x1(4).double(), 0.1)
    check_bijection(layer, torch.randn(3, 4, *size, dtype=D))


@pytest.mark.parametrize("mask", AffineCoupling.MASKS)
@pytest.mark.parametrize("channels,size", [(4, (3, 3)), (3, (4, 5)), (2, (2, 2))])
def test_affine_coupling(mask, channels, size):
    layer = _perturb(AffineCoupling(channels, hidden=8, mask=mask).double())
    check_bijection(layer, torch.randn(3, channels, *size, dtype=D))


def test_affine_coupling_conditional():
    layer = _perturb(AffineCoupling(4, hidden=8, context_channels=2).double())
    check_bijection(layer, torch.randn(3, 4, 3, 3, dtype=D), context=torch.randn(3, 2, 3, 3, dtype=D))
    with pytest.raises(ValueError, match="context"):
        layer(torch.randn(1, 4, 3, 3, dtype=D))


def test_coupling_mask_errors():
    with pytest.raises(ValueError, match="valid masks"):
        AffineCoupling(4, mask="diagonal")
    with pytest.raises(ValueError, match="at least 2 channels"):
        AffineCoupling(1, mask="channel")


def test_squeeze_and_flatten():
    x = torch.randn(2, 3, 4, 6, dtype=D)
    check_bijection(Squeeze(), x)
    check_bijection(Flatten((3, 4, 6)), x)
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.randn(1, 1, 3, 4))


def test_factor_out_with_learned_prior():
    inner = Chain([_perturb(AffineCoupling(2, hidden=8).double()), Flatten((2, 3, 3))])
    layer = FactorOut(inner, (4, 3, 3)).double()
    _perturb(layer)
    check_bijection(layer, torch.randn(2, 4, 3, 3, dtype=D))


@pytest.mark.parametrize("layer", [Shift(), Logit(0.05), Logit(0.0)])
def test_preprocess(layer):
    check_bijection(layer.double(), torch.rand(3, 1, 3, 3, dtype=D) * 0.98 + 0.01)


@pytest.mark.parametrize("positions", [(), (1,), (2,), (3,), (4,), (1, 2, 3, 4)])
@pytest.mark.parametrize("attention", ["imap", "isdp"])
def test_glow_step_with_attention_positions(positions, attention):
    from attnflow.flows.invertible_attention import build_invertible_attention

    factory = (lambda c: build_invertible_attention(attention, c, heads=2, patches=4)) if positions else None
    step = GlowStep(4, hidden=8, attention=factory, positions=positions).double()
    step.train()
    x = torch.randn(3, 4, 4, 4, dtype=D)
    step(x)  # ActNorm data initialisation
    check_bijection(_perturb(step, 0.1), x)
    assert len(step) == 3 + len(positions)


def test_glow_step_bad_position():
    with pytest.raises(ValueError, match="positions"):
        GlowStep(4, positions=(5,), attention=lambda c: Shift())


@pytest.mark.parametrize("scales", [1, 2, 3])
def test_whole_glow_transform(scales):
    model = build("glow-digits", scales=scales, steps=2, hidden=8).double()
    x = torch.rand(2, 1, 8, 8, dtype=D)
    model.train()
    model.log_prob(x)
    _perturb(model, 0.05)
    check_bijection(model.transform, x)


def test_multiscale_errors():
    with pytest.raises(ValueError, match="squeeze"):
        multiscale_transform((1, 7, 7), 2, lambda c, i: [])
    with pytest.raises(ValueError, match="scales"):
        multiscale_transform((1, 8, 8), 0, lambda c, i: [])
