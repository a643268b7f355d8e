"""The family registry's contract, run over every registered family: its ``[model]`` keys are
exactly its builder's keywords (defaults valid, choices the code's own registries), and at its
tiny configuration it trains a step, inverts, and obeys the change of variables (log-det against
the brute-force Jacobian in float64). A new family is tested here without a new test file."""
from __future__ import annotations

import inspect
from typing import Annotated

import pytest
import torch

from attnflow.config import resolve_config
from attnflow.core import standard_normal_log_prob
from attnflow.flows.invertible_attention import INVERTIBLE_ATTENTION_KINDS, ISDP_INITS
from attnflow.flows.preprocess import PREPROCESS_KINDS
from attnflow.flows.residual_logdet import ESTIMATORS
from attnflow.models import FAMILIES, TINY, build
from attnflow.models.keys import COUPLING_MASKS
from attnflow.models.registry import check_model, model_fields, register_family
from attnflow.models.residual_flow import ATTENTION_KINDS
from attnflow.nets.residual_branches import BRANCH_KINDS
from attnflow.presets import preset_names
from attnflow.schema import ConfigError, Key
from attnflow.testing import check_bijection

NAMES = sorted(FAMILIES)


# -- the registry --------------------------------------------------------------------------------

def test_every_builder_parameter_has_one_field_and_its_default_passes():
    for family, builder in FAMILIES.items():
        params = {n: p.default for n, p in inspect.signature(builder).parameters.items()}
        fields = model_fields(family)
        assert set(params) == set(fields), family
        for key, default in params.items():
            fields[key].check(list(default) if isinstance(default, tuple) else default)


def test_choices_are_the_code_registries():
    """A key with choices takes them from the registry of the code that uses them, not a copy."""
    registries = {"attention": INVERTIBLE_ATTENTION_KINDS, "isdp_init": ISDP_INITS,
                  "preprocess": PREPROCESS_KINDS, "mask": COUPLING_MASKS}
    residual = {"attention": tuple(ATTENTION_KINDS), "branch": tuple(BRANCH_KINDS), "estimator": ESTIMATORS}
    for family in FAMILIES:
        for key, f in model_fields(family).items():
            expected = (residual if family == "residual" else registries).get(key, registries.get(key))
            if expected is not None:
                assert tuple(f.allowed()) == tuple(expected), (family, key)


def test_every_family_has_a_preset():
    families = {resolve_config(name)["model"]["family"] for name in preset_names()}
    assert families == set(FAMILIES)


def test_a_builder_without_keys_or_a_bad_tiny_is_refused_at_registration():
    def untyped(shape=(1, 8, 8)):
        raise AssertionError("never built")

    with pytest.raises(TypeError, match=r"parameter 'shape' needs a type Annotated\[\.\.\., Key"):
        register_family("untyped", tiny={})(untyped)

    def sized(hidden: Annotated[int, Key("width", lo=1, hi=8)] = 4):
        raise AssertionError("never built")

    with pytest.raises(ConfigError, match=r"model.hidden must be an integer in 1\.\.8 \(width\), got 0"):
        register_family("sized", tiny={"hidden": 0})(sized)
    with pytest.raises(ValueError, match="model family 'glow' is already registered"):
        register_family("glow", tiny={})(sized)

    def bad_default(hidden: Annotated[int, Key("width", lo=1, hi=8)] = 0):
        raise AssertionError("never built")

    with pytest.raises(TypeError, match="the default of 'hidden' is invalid"):
        register_family("bad_default", tiny={})(bad_default)
    assert not {"untyped", "sized", "bad_default"} & set(FAMILIES)


def test_unknown_keys_name_their_families():
    used_by = r"unknown key model.levels \(used by family flowpp, fullglow, srflow\); "
    with pytest.raises(ConfigError, match=used_by + r"valid keys of model family 'glow': alpha, attention"):
        check_model({"family": "glow", "levels": 2})


def test_build_takes_python_values_and_checks_them():
    model = build("glow-digits", steps=1, hidden=8, positions=(2,), attention="imap")
    assert sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(ConfigError, match=r"model.positions must be a list of distinct integers in 1\.\.4"):
        build("glow-digits", positions=(4, 4))
    with pytest.raises(ConfigError, match=r"model.shape must be a list of 3 integers"):
        build("glow-digits", shape="1x8x8")


# -- the contract at each family's tiny configuration ---------------------------------------------

def _tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family](**TINY[family])


def _inputs(model, batch: int, dtype: torch.dtype = torch.float32):
    x = torch.rand(batch, *model.shape, dtype=dtype) * 0.9 + 0.05
    context = None if model.context_shape is None else torch.rand(batch, *model.context_shape, dtype=dtype)
    return x, context


@pytest.mark.parametrize("family", NAMES)
def test_family_trains_a_step(family):
    model = _tiny(family).train()
    x, context = _inputs(model, 4)
    model.log_prob(x, context)  # data-dependent initialisation (ActNorm)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = -model.log_prob(x, context).mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss), family
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), family
    moved = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert moved, f"{family}: no parameter moved"


@pytest.mark.parametrize("family", NAMES)
def test_family_inverts_and_obeys_the_change_of_variables(family):
    model = _tiny(family).double()
    x, context = _inputs(model, 2, torch.float64)
    model.train()
    model.log_prob(x, context)  # data-dependent initialisation, then move every parameter off its init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    torch.testing.assert_close(model.decode(model.encode(x, context), context), x, atol=1e-6, rtol=1e-6)
    if model.latent_dim != model.dim:
        # noise augmentation (DenseFlow): the latent has extra noise dimensions, log_prob is a
        # one-sample bound, and the Jacobian is square only over data and noise together; the
        # family's own test checks it that way (tests/test_denseflow.py, fixed noise)
        assert model.log_prob_is_bound, family
        return
    check_bijection(model.transform, x, context)
    z, logdet = model.transform(x, context)
    torch.testing.assert_close(model.log_prob(x, context), standard_normal_log_prob(z) + logdet)
