"""Coupling masks (:mod:`attnflow.flows.masks`) and the masked-coupling base
(:mod:`attnflow.flows.coupling`): split / merge, complements, and a subclass with its own
element-wise transform checked against the brute-force Jacobian."""
import math

import pytest
import torch
from torch import Tensor

from attnflow.flows.coupling import MaskedCoupling
from attnflow.flows.masks import COUPLING_MASKS, MASK_NAMES, Mask, alternating_masks
from attnflow.models.glow import COUPLING_MASKS as GLOW_MASKS
from attnflow.models.marflow import COUPLING_MASKS as MARFLOW_MASKS
from attnflow.nets.glow_coupling_net import conv_coupling_net
from attnflow.testing import check_bijection

D = torch.float64
SHAPES = [(2, 3, 3), (3, 4, 5), (5, 2, 3), (4, 1, 1)]


@pytest.mark.parametrize("name", MASK_NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_split_then_merge_gives_the_input(name, shape):
    mask = Mask.parse(name)
    x = torch.randn(2, *shape, dtype=D)
    kept, transformed = mask.split(x)
    assert kept.shape[1] == mask.kept_channels(shape[0])
    assert transformed.shape[1] == mask.transformed_channels(shape[0])
    assert torch.equal(mask.merge(kept, transformed), x)


@pytest.mark.parametrize("name", MASK_NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_inverse_mask_is_the_complement(name, shape):
    mask = Mask.parse(name)
    other = mask.inverse()
    assert other != mask and other.inverse() == mask
    x = torch.randn(2, *shape, dtype=D)
    kept, transformed = mask.split(x)
    other_kept, other_transformed = other.split(x)
    assert torch.equal(kept, other_transformed) and torch.equal(transformed, other_kept)
    assert mask.kept_channels(shape[0]) == other.transformed_channels(shape[0])
    # every element is transformed by exactly one of the two masks
    assert _transformed_count(mask, shape) + _transformed_count(other, shape) == math.prod(shape)


def _transformed_count(mask: Mask, shape: tuple[int, ...]) -> int:
    transformed = mask.split(torch.ones(1, *shape, dtype=D))[1]
    return int(mask.sum_transformed(torch.ones_like(transformed)))


@pytest.mark.parametrize("name", MASK_NAMES)
def test_sum_and_merge_read_only_the_transformed_elements(name):
    mask = Mask.parse(name)
    x = torch.randn(2, 3, 4, 5, dtype=D)
    kept, transformed = mask.split(x)
    junk = torch.full_like(transformed, 1e3)
    ones = torch.ones_like(x)
    on_transformed = mask.split(ones)[1] if mask.kind == "checkerboard" else torch.ones_like(transformed)
    # values on the kept positions of a checkerboard are ignored by merge and sum_transformed
    noisy = transformed + junk * (1 - on_transformed)
    assert torch.equal(mask.merge(kept, noisy), x)
    assert torch.equal(mask.sum_transformed(noisy), mask.sum_transformed(transformed))
    assert torch.equal(mask.sum_transformed(torch.ones_like(transformed)), on_transformed.flatten(1).sum(1))


def test_the_two_masks_of_a_checkerboard_cover_the_board_once():
    x = torch.ones(1, 1, 3, 4, dtype=D)
    a, b = Mask("checkerboard"), Mask("checkerboard", inverted=True)
    assert torch.equal(a.split(x)[0] + b.split(x)[0], x)
    assert int(a.sum_transformed(x)) + int(b.sum_transformed(x)) == 12
    assert int(a.sum_transformed(x)) == 6


def test_names_parse_and_print_back():
    for name in MASK_NAMES:
        mask = Mask.parse(name)
        assert mask.name == str(mask) == name and Mask.parse(mask) is mask
    assert MASK_NAMES == ("channel", "channel-inv", "checkerboard", "checkerboard-inv")
    assert GLOW_MASKS is COUPLING_MASKS and MARFLOW_MASKS is COUPLING_MASKS
    assert [m.name for m in alternating_masks("channel", 3)] == ["channel", "channel-inv", "channel"]
    with pytest.raises(ValueError, match="coupling mask 'diagonal'; valid masks: channel, channel-inv"):
        Mask.parse("diagonal")
    with pytest.raises(ValueError, match="valid kinds: channel, checkerboard"):
        alternating_masks("channel-inv", 2)


class SinhCoupling(MaskedCoupling):
    """A non-affine element-wise transform for the base: ``tau(x) = exp(a) sinh(x) + b``."""

    def __init__(self, channels: int, mask: str, context_channels: int = 0, wrong_logdet: bool = False):
        super().__init__(channels, mask, 2, lambda i, o: conv_coupling_net(i, o, 6), context_channels)
        self.wrong_logdet = wrong_logdet

    def transform(self, x_b: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        log_derivative = theta[0] if self.wrong_logdet else theta[0] + torch.log(torch.cosh(x_b))
        return torch.exp(theta[0]) * torch.sinh(x_b) + theta[1], log_derivative

    def inverse_transform(self, z_b: Tensor, theta: Tensor) -> Tensor:
        return torch.asinh((z_b - theta[1]) * torch.exp(-theta[0]))


def _perturbed(layer: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer.double()


@pytest.mark.parametrize("name", MASK_NAMES)
@pytest.mark.parametrize("channels,context", [(3, 0), (2, 2)])
def test_a_subclass_gets_inverse_and_logdet_from_the_base(name, channels, context):
    layer = _perturbed(SinhCoupling(channels, name, context))
    assert layer.net[0].in_channels == layer.mask.kept_channels(channels) + context
    assert layer.net[-1].out_channels == 2 * layer.mask.transformed_channels(channels)
    x = torch.randn(2, channels, 3, 4, dtype=D)
    c = torch.randn(2, context, 3, 4, dtype=D) if context else None
    check_bijection(layer, x, context=c)
    z, _ = layer(x, c)
    kept, _ = layer.mask.split(x)
    assert torch.equal(layer.mask.split(z)[0], kept)  # z_a = x_a
    assert not torch.allclose(z, x)


def test_a_wrong_element_wise_logdet_is_caught():
    layer = _perturbed(SinhCoupling(2, "checkerboard", wrong_logdet=True))
    with pytest.raises(AssertionError, match="log-det"):
        check_bijection(layer, torch.randn(2, 2, 3, 3, dtype=D))


def test_base_errors_name_the_fix():
    with pytest.raises(ValueError, match="at least 2 channels, got 1; use a checkerboard mask"):
        SinhCoupling(1, "channel-inv")
    layer = SinhCoupling(2, "channel", context_channels=1)
    with pytest.raises(ValueError, match="conditional: pass a context"):
        layer(torch.randn(1, 2, 2, 2))
    with pytest.raises(ValueError, match="expects 2 channels, got 3"):
        layer.inverse(torch.randn(1, 3, 2, 2), torch.randn(1, 1, 2, 2))
