"""Flow++ mixture-of-logistics coupling, its network, variational dequantization, flowpp model."""
import math

import pytest
import torch

from attnflow.core import Flow
from attnflow.flows.invertible_attention import IMap
from attnflow.flows.mixture_coupling import (
    MixtureCoupling,
    MixtureStep,
    bisect_increasing,
    mixture_logistic_logit_cdf,
)
from attnflow.flows.variational_dequantization import VariationalDequantizer
from attnflow.models.flowpp import VariationallyDequantizedFlow, flowpp
from attnflow.testing import brute_force_logdet, check_bijection


def _perturb(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Random parameters, so zero-initialised output layers do not make the layer trivial."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def test_logit_cdf_and_its_derivative_match_the_direct_formula():
    k = 3
    logits, mu, log_s = (torch.randn(k, 5, dtype=torch.float64) for _ in range(3))
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y, log_dy = mixture_logistic_logit_cdf(x, logits, mu, log_s)
    cdf = (torch.softmax(logits, 0) * torch.sigmoid((x - mu) * torch.exp(-log_s))).sum(0)
    torch.testing.assert_close(y, torch.log(cdf) - torch.log1p(-cdf))
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_dy, grad.log())


@pytest.mark.parametrize(
    "mask,heads",
    [("channel", 2), ("channel-inv", 2), ("checkerboard", 2), ("checkerboard-inv", 2), ("channel", 0)],
)
def test_mixture_coupling_inverse_and_logdet(mask, heads):
    layer = _perturb(MixtureCoupling(3, hidden=8, mask=mask, components=3, heads=heads).double())
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    check_bijection(layer, x)
    z, _ = layer(x)
    assert (layer.inverse(z) - x).abs().max() < 1e-10


def test_conditional_mixture_coupling():
    layer = _perturb(MixtureCoupling(2, hidden=6, mask="channel", components=2, context_channels=3).double())
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    check_bijection(layer, x, context=torch.randn(2, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="conditional"):
        layer(x)


def test_mixture_coupling_float32_inverse():
    layer = _perturb(MixtureCoupling(2, hidden=8, components=4))
    x = 3 * torch.randn(4, 2, 4, 4)
    z, _ = layer(x)
    torch.testing.assert_close(layer.inverse(z), x, atol=1e-4, rtol=1e-4)


def test_bisection_reports_non_convergence():
    layer = _perturb(MixtureCoupling(2, hidden=4, components=2, bisection_max_iter=3).double())
    z = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="did not converge"):
        layer.inverse(z)
    with pytest.raises(RuntimeError, match="did not converge"):
        bisect_increasing(torch.sinh, torch.tensor([0.5]), torch.tensor([-10.0]), torch.tensor([10.0]), max_iter=5)


def test_mixture_coupling_rejects_non_finite_latent():
    layer = MixtureCoupling(2, hidden=4, components=2)
    z = torch.zeros(1, 2, 2, 2)
    z[0, 1, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        layer.inverse(z)


def test_mixture_coupling_bad_arguments():
    with pytest.raises(ValueError, match="components"):
        MixtureCoupling(2, components=0)
    with pytest.raises(ValueError, match="heads=9 exceeds channels=8"):
        MixtureCoupling(2, hidden=8, heads=9)
    with pytest.raises(ValueError, match="coupling heads must be >= 0"):
        MixtureCoupling(2, hidden=8, heads=-1)
    with pytest.raises(ValueError, match="checkerboard"):
        MixtureCoupling(1, mask="channel")


@pytest.mark.parametrize("positions", [(1,), (2, 3), (4,)])
def test_mixture_step_places_attention(positions):
    step = _perturb(MixtureStep(2, hidden=4, mask="checkerboard", attention=IMap, positions=positions,
                                components=2).double())
    kinds = [type(layer).__name__ for layer in step]
    assert kinds.count("IMap") == len(positions) and "MixtureCoupling" in kinds and "AffineCoupling" not in kinds
    check_bijection(step, torch.randn(2, 2, 4, 4, dtype=torch.float64))


def test_variational_dequantizer_density():
    deq = _perturb(VariationalDequantizer(1, levels=17, steps=2, hidden=4, components=2)).double()
    k = torch.randint(0, 17, (2, 1, 4, 4)).double()
    torch.manual_seed(3)
    u, log_q = deq(k)
    torch.manual_seed(3)
    eps = torch.randn_like(k)
    ctx = deq.context(k)
    assert ((u > 0) & (u < 1)).all()
    for b in range(2):
        def to_u(e, b=b):
            return torch.sigmoid(deq.flow(e, ctx[b : b + 1])[0])
        torch.testing.assert_close(to_u(eps[b : b + 1]), u[b : b + 1])
        log_normal = -0.5 * (eps[b] ** 2 + math.log(2 * math.pi)).sum()
        expected = log_normal - brute_force_logdet(to_u, eps[b : b + 1])[0]
        torch.testing.assert_close(log_q[b], expected)


def test_variationally_dequantized_flow_is_a_bound_on_the_same_levels():
    flow = flowpp(shape=(1, 4, 4), scales=1, steps=1, hidden=4, components=2, dequantization="variational",
                  levels=17, deq_steps=1, deq_hidden=4).double()
    assert isinstance(flow, VariationallyDequantizedFlow) and flow.log_prob_is_bound
    k = torch.randint(0, 17, (3, 1, 4, 4)).double()
    x1, x2 = (k + torch.rand_like(k)) / 17, (k + torch.rand_like(k)) / 17
    torch.manual_seed(5)
    lp1 = flow.log_prob(x1)
    torch.manual_seed(5)
    lp2 = flow.log_prob(x2)
    torch.testing.assert_close(lp1, lp2)  # only the levels k matter, not the uniform noise
    torch.manual_seed(5)
    u, log_q = flow.dequantizer(k)
    with torch.no_grad():
        torch.testing.assert_close(lp1, Flow.log_prob(flow, (k + u) / 17) - log_q)


@pytest.mark.parametrize(
    "attention,positions,heads",
    [("none", (), 1), ("imap", (1,), 1), ("imap", (3, 4), 1), ("isdp", (2,), 1), ("isdp", (4,), 2)],
)
def test_flowpp_model_inverse_and_logdet(attention, positions, heads):
    flow = _perturb(flowpp(shape=(1, 4, 4), scales=2, steps=2, hidden=4, components=2, attention=attention,
                           positions=positions, heads=heads, patches=4).double(), 0.1)
    check_bijection(flow.transform, torch.rand(2, 1, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(attention="isdp", positions=(1,), patches=9), "does not tile"),
        (dict(attention="isdp", positions=(1,), heads=5), "heads=5 exceeds the 4 features"),
        (dict(attention="imap"), "needs positions"),
        (dict(positions=(2,)), "attention='none'"),
        (dict(attention="bogus", positions=(1,)), "unknown attention"),
        (dict(coupling_heads=5), "heads=5 exceeds channels=4"),
        (dict(dequantization="flat"), "unknown dequantization"),
        (dict(shape=(1, 6, 6), scales=3), "cannot squeeze"),
    ],
)
def test_flowpp_bad_arguments(kwargs, match):
    args = dict(shape=(1, 4, 4), scales=2, steps=1, hidden=4, components=2)
    with pytest.raises(ValueError, match=match):
        flowpp(**{**args, **kwargs})


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_flowpp_without_coupling_attention(dequantization):
    """coupling_heads=0: gated convolutions only (the attention-free baseline), still a bijection."""
    args = dict(shape=(1, 4, 4), scales=2, steps=2, hidden=4, components=2, dequantization=dequantization,
                levels=17, deq_steps=1, deq_hidden=4)
    with_attention, without = flowpp(**args, coupling_heads=2), flowpp(**args, coupling_heads=0)
    kinds = {type(m).__name__ for m in without.modules()}
    assert "SelfAttention2d" not in kinds and "SelfAttention2d" in {
        type(m).__name__ for m in with_attention.modules()}
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(without) < count(with_attention)
    check_bijection(_perturb(without.double(), 0.1).transform, torch.rand(2, 1, 4, 4, dtype=torch.float64))
