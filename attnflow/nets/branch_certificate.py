"""A tighter certified Lipschitz bound for convolutional residual branches than the product of
the layers' bounds.

A branch ``g = L_n o E_{n-1} o L_{n-1} o ... o E_1 o L_1 o E_0`` (i-ResNet, Residual Flow, ACF:
spectral-normalised "same" convolutions ``L_i`` on one ``H x W`` grid, separated by activations
and the attention mix ``E_i``) has the Jacobian ``J = A_n D_{n-1} ... D_1 A_1 D_0`` at every
input, where ``A_i`` is the convolution and ``D_i`` the Jacobian of ``E_i`` there. The usual
certificate is ``prod ||A_i|| prod Lip(E_i)``. It ignores that the ``A_i`` need not align: here
every inner ``D_i`` is written ``c_i I + r_i R_i`` with ``||R_i|| <= 1`` (a constant part and a
bounded rest), and expanding the product over the choices of ``c_i I`` or ``r_i R_i`` gives

    ||J|| <= Lip(E_0) sum_{S subset of inner elements} prod_{i in S} r_i prod_{i not in S} |c_i|
                      prod_{runs of consecutive convolutions between elements of S} ||A_run||,

where ``A_run`` is the *product* of a run's convolutions, whose norm can be far below the product
of their norms. Taking ``S`` = all elements recovers the product bound times
``prod (|c_i| + r_i)``, and ``|c_i| + r_i`` is at most the element's Lipschitz bound, so the
expansion is never looser than the product (and the minimum of both is reported).

The parts, and why each is certified:

* **Activation** with slopes in ``[a, b]`` (LipSwish: ``[-0.0908, 1]``, since its slope
  ``d(t) / 1.1`` has ``d(t) + d(-t) = 1`` and ``max d = 1.0998``; ELU with ``alpha <= 1`` and ReLU:
  ``[0, 1]``): ``D = m I + r R`` with ``m = (a' + b') / 2``, ``r = (b' - a') / 2`` over
  ``[a', b'] = [min(a, 0), max(b, 0)]``, so that the zero padding (slope 0 outside the image)
  fits in the same interval.
* **Attention mix** ``(1 - alpha) I + alpha F / s`` (:class:`AttentionMix`) after an element
  ``c I + r R``: ``c' = (1 - alpha) c``, ``r' = (1 - alpha) r + alpha (B_F / s)(|c| + r)``.
* **Convolutions on one grid.** A zero-padded convolution equals ``crop o C o embed`` with ``C``
  circular on the ``M_h x M_w`` grid of :func:`attnflow.nets.operator_norm.circulant_grid`
  (``M`` the largest any of the branch's kernels needs). Between two convolutions the signal is
  masked to the image window (the next zero padding); that mask is diagonal with entries 0 and 1
  and is absorbed into the activation's ``D`` (the reason ``0`` is added to ``[a, b]``). So every
  run is a product of circular convolutions on the same grid, which the 2-D DFT diagonalises
  into per-frequency products of ``C_out x C_in`` blocks: ``||A_run|| <= max_w ||K_n(w) ...
  K_1(w)||`` (exact per-frequency eigenvalues of the products' Gram matrices in float64, in
  real arithmetic, rounded up by ``1 + 1e-9``).

Branches with other layers (i-DenseNet's dense concatenations, CLipSwish) get no expansion bound.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .lipschitz_layers import CLipSwish, LipSwish, SpectralNormConv2d
from .operator_norm import circulant_grid, kernel_spectrum

__all__ = ["SLOPE_RANGES", "expansion_bound"]

# Slope intervals [a, b] of the 1-Lipschitz activations (rounded outwards).
LIPSWISH_SLOPES = (-0.0998394 / 1.1, 1.0)
SLOPE_RANGES: dict[type[nn.Module], tuple[float, float]] = {
    nn.ReLU: (0.0, 1.0), nn.ELU: (0.0, 1.0), LipSwish: LIPSWISH_SLOPES,
}
_SVD_MARGIN = 1.0 + 1e-9


def _slopes(layer: nn.Module) -> tuple[float, float] | None:
    if isinstance(layer, CLipSwish) or (isinstance(layer, nn.ELU) and not 0.0 <= layer.alpha <= 1.0):
        return None
    return next((r for cls, r in SLOPE_RANGES.items() if isinstance(layer, cls)), None)


def _compose(element: tuple[float, float], layer: nn.Module) -> tuple[float, float] | None:
    """``(c, r)`` of ``layer o element`` (``element = c I + r R``), ``None`` if not expandable."""
    c, r = element
    slopes = _slopes(layer)
    if slopes is not None:
        a, b = min(slopes[0], 0.0), max(slopes[1], 0.0)
        m, rest = (a + b) / 2, (b - a) / 2
        return c * m, abs(m) * r + rest * (abs(c) + r)  # (mI + rest R')(cI + rR)
    mix_terms = getattr(layer, "mix_terms", None)  # an AttentionMix (residual_branches imports this module)
    if mix_terms is not None:
        weight, bound, divisor = mix_terms()
        alpha = float(weight)
        return (1 - alpha) * c, (1 - alpha) * r + alpha * bound / divisor * (abs(c) + r)
    return None


def _folded_kernels(layers: Sequence[SpectralNormConv2d]) -> list[Tensor]:
    """The normalised kernels of a run of convolutions (in order of application), with every 1x1
    kernel multiplied into its neighbour: a 1x1 convolution is pointwise, so it commutes with the
    zero padding and ``conv_B o conv_1x1(M) = conv_(B M)`` exactly. Left: the spatial kernels, or
    one 1x1 kernel when the run has nothing else."""
    kernels = [layer.normalized_weight().double() for layer in layers]
    folded: list[Tensor] = []
    pending: Tensor | None = None  # a 1x1 matrix waiting for the next spatial kernel
    for kernel in kernels:
        if kernel.shape[-2:] == (1, 1):
            matrix = kernel[:, :, 0, 0]
            if folded:
                folded[-1] = torch.einsum("om,mihw->oihw", matrix, folded[-1])
            else:
                pending = matrix if pending is None else matrix @ pending
        else:
            folded.append(kernel if pending is None else torch.einsum("omhw,mi->oihw", kernel, pending))
            pending = None
    if folded:
        return folded
    assert pending is not None  # a run of 1x1 kernels only: all of them folded into pending
    return [pending[:, :, None, None]]


def _largest_singular_value(blocks: Tensor) -> float:
    """``max ||B||_2`` over ``[..., p, q]`` from the eigenvalues of the smaller Gram matrix."""
    gram = blocks.mT @ blocks if blocks.shape[-1] <= blocks.shape[-2] else blocks @ blocks.mT
    return float(torch.linalg.eigvalsh(gram)[..., -1].max().clamp_min(0).sqrt())


def _run_norm(layers: Sequence[SpectralNormConv2d], grid: tuple[int, int]) -> float:
    """``max_w ||K_n(w) ... K_1(w)||_2`` over the DFT grid: the norm of the product of the circular
    convolutions ``layers`` (in order of application), with 1x1 kernels folded into their
    neighbours first. A single convolution whose divisor already bounds the circulant on this grid
    (a 1x1 kernel, or a circulant-path layer whose own grid is the branch's) needs no new
    computation: its ``lipschitz_bound()``."""
    layer = layers[0]
    own_grid = circulant_grid(layer.known_input_size(), layer.kernel_size, layer.padding)
    if (len(layers) == 1 and not layer.divides_by_explicit_matrix()
            and (layer.kernel_size == (1, 1) or own_grid == grid)):
        return layer.lipschitz_bound()  # its divisor bounds this very circulant (a 1x1 kernel's on any grid)
    first, *rest = _folded_kernels(layers)
    product = kernel_spectrum(first, grid)
    for kernel in rest:
        product = kernel_spectrum(kernel, grid) @ product
    return _largest_singular_value(product) * _SVD_MARGIN


@torch.no_grad()
def expansion_bound(layers: Sequence[nn.Module]) -> float | None:
    """The expansion bound (module docstring) of the branch ``layers`` (applied in order), or
    ``None`` when the branch has a layer the expansion does not cover or fewer than two
    convolutions."""
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, SpectralNormConv2d)]
    kernels = [layer for layer in layers if isinstance(layer, SpectralNormConv2d)]
    sizes = {k.input_size for k in kernels}
    if len(kernels) < 2 or None in sizes:
        return None
    if len(sizes) != 1 or any(k.padding != tuple(s // 2 for s in k.kernel_size) for k in kernels):
        return None  # not all "same" convolutions on one grid
    size = kernels[0].known_input_size()
    grids = [circulant_grid(size, k.kernel_size, k.padding) for k in kernels]
    grid = (max(g[0] for g in grids), max(g[1] for g in grids))
    outer = 1.0
    for layer in list(layers[: convs[0]]) + list(layers[convs[-1] + 1 :]):
        slopes = _slopes(layer)
        if slopes is None:
            return None
        outer *= max(abs(slopes[0]), abs(slopes[1]))
    elements: list[tuple[float, float]] = []
    for before, after in itertools.pairwise(convs):
        # the window mask: absorbed by a leading activation, else its own element P = I/2 + (2P - I)/2
        element = (1.0, 0.0) if _slopes(layers[before + 1]) else (0.5, 0.5)
        for layer in layers[before + 1 : after]:
            composed = _compose(element, layer)
            if composed is None:
                return None
            element = composed
        elements.append(element)
    if not all(math.isfinite(c) and math.isfinite(r) for c, r in elements):
        return math.inf
    run_norms: dict[tuple[int, int], float] = {}
    total = 0.0
    for split in itertools.product((False, True), repeat=len(elements)):  # True: the element's r R part
        weight: float = math.prod(r if s else abs(c) for (c, r), s in zip(elements, split))
        if weight == 0.0:
            continue
        cuts = [0] + [i + 1 for i, s in enumerate(split) if s] + [len(kernels)]
        for run in itertools.pairwise(cuts):
            if run not in run_norms:
                run_norms[run] = _run_norm(kernels[run[0] : run[1]], grid)
            weight *= run_norms[run]
        total += weight
    return outer * total
