"""Conditional bijections (injector, conditional steps with iMap / iSDP, conditioned transforms)
and the SRFlow / Full-Glow models: exact inverse and log-det against the brute-force Jacobian for
a fixed condition, sampling, and clear errors on bad input."""
import pytest
import torch

from attnflow.core import Chain, standard_normal_log_prob
from attnflow.flows.conditional import ConditionalAffineInjector, ConditionedTransform, PickCondition
from attnflow.flows.glow import GlowStep
from attnflow.flows.invertible_attention import ISDP, IMap
from attnflow.flows.source_flow import SourceFlowEncoder
from attnflow.models import build
from attnflow.models.fullglow import fullglow
from attnflow.models.srflow import srflow
from attnflow.nets.rrdb_encoder import RRDBEncoder
from attnflow.testing import check_bijection

D = torch.float64
TINY = dict(hidden=6, steps=2)
TINY_SR = dict(TINY, encoder_features=4, encoder_blocks=2, encoder_growth=4, transition_steps=1)


def _perturb(module, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.double()


def test_injector_logdet_and_inverse():
    layer = _perturb(ConditionalAffineInjector(3, context_channels=2, hidden=5))
    x, c = torch.randn(3, 3, 2, 3, dtype=D), torch.randn(3, 2, 2, 3, dtype=D)
    check_bijection(layer, x, context=c)
    # the log-det depends on the condition only
    _, ld1 = layer(x, c)
    _, ld2 = layer(torch.randn_like(x), c)
    torch.testing.assert_close(ld1, ld2)


@pytest.mark.parametrize("attention", [None, "imap", "isdp"])
@pytest.mark.parametrize("positions", [(1,), (3, 5), (4,)])
def test_conditional_step_with_attention(attention, positions):
    make = {None: None, "imap": lambda ch: IMap(ch), "isdp": lambda ch: ISDP(ch, heads=2, patches=1)}[attention]
    step = GlowStep(
        4, hidden=5, attention=make, positions=positions if make else (), context_channels=3,
        injector=ConditionalAffineInjector(4, 3, hidden=5),
    )
    step = _perturb(step)
    check_bijection(step, torch.randn(2, 4, 2, 2, dtype=D), context=torch.randn(2, 3, 2, 2, dtype=D))


def test_conditioned_transform_with_per_level_features():
    encoder = RRDBEncoder(1, [(4, 4), (2, 2)], features=3, blocks=2, growth=2)
    transform = ConditionedTransform(encoder, Chain([
        PickCondition(GlowStep(2, 4, context_channels=encoder.out_channels,
                               injector=ConditionalAffineInjector(2, encoder.out_channels, 4)), 0),
    ]))
    transform = _perturb(transform)
    lr = torch.rand(2, 1, 2, 2, dtype=D)
    check_bijection(transform, torch.randn(2, 2, 4, 4, dtype=D), context=lr)
    with pytest.raises(ValueError, match="level 0 expects a context of shape"):
        transform(torch.randn(2, 2, 2, 2, dtype=D), lr)


def test_rrdb_encoder_sizes_and_channels():
    encoder = RRDBEncoder(3, [(16, 16), (8, 8), (4, 4), (2, 2)], features=4, blocks=8, growth=2)
    assert encoder.out_channels == 5 * 4  # SRFlow: blocks 1, 3, 5, 7 and the last features
    feats = encoder(torch.rand(2, 3, 4, 4))
    assert [tuple(f.shape) for f in feats] == [(2, 20, s, s) for s in (16, 8, 4, 2)]


def test_source_flow_encoder_matches_target_levels():
    encoder = SourceFlowEncoder((3, 8, 8), levels=2, steps=2, hidden=4)
    acts = encoder(torch.rand(2, 3, 8, 8))
    assert encoder.step_channels == [12, 12, 24, 24]
    assert [tuple(a.shape[1:]) for a in acts] == [(12, 4, 4), (12, 4, 4), (24, 2, 2), (24, 2, 2)]


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(attention="imap", positions=[0]),
    dict(attention="isdp", positions=[0], heads=2, patches=1),
    dict(attention="imap", positions=[4]),
])
def test_srflow_change_of_variables(kwargs):
    flow = _perturb(srflow(shape=(1, 8, 8), scale=2, levels=2, **TINY_SR, **kwargs), 0.1)
    x, lr = torch.rand(2, 1, 8, 8, dtype=D), torch.rand(2, 1, 4, 4, dtype=D)
    check_bijection(flow.transform, x, context=lr)
    z, logdet = flow.transform(x, lr)
    torch.testing.assert_close(flow.log_prob(x, lr), standard_normal_log_prob(z) + logdet)


@pytest.mark.parametrize("kwargs", [dict(), dict(attention="imap", positions=[0]),
                                    dict(attention="isdp", positions=[5], patches=1)])
def test_fullglow_change_of_variables(kwargs):
    flow = _perturb(fullglow(shape=(3, 4, 4), source_shape=(1, 4, 4), levels=2, source_hidden=4, **TINY, **kwargs), 0.1)
    x, labels = torch.rand(2, 3, 4, 4, dtype=D), torch.rand(2, 1, 4, 4, dtype=D)
    check_bijection(flow.transform, x, context=labels)
    assert flow.context_shape == (1, 4, 4)


def test_srflow_sampling_depends_on_condition_and_temperature():
    flow = srflow(shape=(1, 8, 8), scale=4, levels=2, **TINY_SR).eval()
    _perturb(flow, 0.1).float()
    lr = torch.rand(1, 1, 2, 2).repeat(4, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    hot = flow.sample(4, temperature=0.8, context=lr, generator=gen)
    assert hot.shape == (4, 1, 8, 8)
    assert (hot[0] - hot[1]).abs().max() > 1e-4  # several super-resolutions of one input
    cold = flow.decode(torch.zeros(4, flow.latent_dim), lr)
    torch.testing.assert_close(cold[0], cold[1])  # temperature 0 is deterministic
    other = flow.decode(torch.zeros(4, flow.latent_dim), torch.rand(4, 1, 2, 2))
    assert (other - cold).abs().max() > 1e-4


def test_conditional_bad_input():
    flow = srflow(shape=(1, 8, 8), scale=2, levels=2, **TINY_SR)
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="conditional"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"context must have shape \[2, 1, 4, 4\]"):
        flow.log_prob(x, torch.rand(2, 1, 2, 2))
    glow = build("glow-digits", hidden=8, steps=1)
    with pytest.raises(ValueError, match="unconditional"):
        glow.log_prob(x, torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="scale 3 does not divide the image size 8x8"):
        srflow(shape=(1, 8, 8), scale=3)
    with pytest.raises(ValueError, match="divisible by 8"):
        srflow(shape=(1, 12, 12), scale=2, levels=3)
    with pytest.raises(ValueError, match="same height and width"):
        fullglow(shape=(3, 8, 8), source_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="positions must be among"):
        srflow(shape=(1, 8, 8), attention="imap", positions=[6], **TINY_SR)
    with pytest.raises(ValueError, match="needs positions"):
        srflow(shape=(1, 8, 8), attention="imap", **TINY_SR)
    with pytest.raises(ValueError, match="injector is conditional"):
        ConditionalAffineInjector(2, 3)(torch.rand(1, 2, 2, 2))
