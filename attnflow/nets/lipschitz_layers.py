"""Lipschitz-constrained layers for contractive residual branches.

* :class:`SpectralNormLinear` and :class:`SpectralNormConv2d`: weights rescaled so that the
  layer's operator norm is at most ``coeff`` (spectral normalisation, Miyato et al. 2018;
  i-ResNet, Behrmann et al. 2019; Residual Flows' "induced" norm for convolutions, Chen et
  al. 2019), dividing by a *certified upper bound* of the norm rather than a power-iteration
  estimate; each layer's :meth:`lipschitz_bound` is certified, not estimated.
* :class:`LipSwish` (Residual Flows) and :class:`CLipSwish` (i-DenseNet, Perugachi-Diaz et al.
  2021): smooth activations with Lipschitz constant at most 1.

Every layer also has ``linearize(x)``, its output with explicit Jacobian products
(:class:`attnflow.nets.linearization.Linearization`) for the log-det estimators: the normalised weight and
its transpose for the spectral-norm layers, the elementwise slopes for the activations.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linearization import Linearization, diagonal_linearization
from .operator_norm import (
    DENSE_NORM_LIMIT,
    certified_max_norm,
    circulant_norm_bound,
    tensor_state,
)

__all__ = [
    "SpectralNormLinear",
    "SpectralNormConv2d",
    "LipSwish",
    "CLipSwish",
    "conv2d",
    "conv_transpose2d",
    "DENSE_NORM_LIMIT",
]

# Operators with a side of at most this many dimensions are normalised by the Gram-iteration bound
# of their explicit matrix (within 0.1% of the norm); larger convolutions by the Gram bound of
# their circulant embedding (tight from 16x16 inputs on).
EXPLICIT_SIDE = 256


class _SpectralNorm(nn.Module):
    """Shared normalisation machinery of the spectral-norm layers.

    The layer uses ``W_used = W * min(1, coeff / sigma_hat)``, where ``sigma_hat`` is a *certified
    upper bound* of the operator norm of the linear map ``A(W)`` (a matrix or a convolution),
    differentiable in ``W`` and computed for the current weights in training and evaluation
    alike, so ``||A(W_used)|| <= coeff`` holds for every weight the layer ever runs with (after an
    optimizer step, a loaded checkpoint, an EMA average) with no state to go stale:

    * small operators (a side of at most ``explicit_side`` = :data:`EXPLICIT_SIDE` dimensions, a
      1x1 convolution, every linear layer): the Gram-iteration bound of the explicit matrix
      (:func:`attnflow.nets.operator_norm.certified_max_norm`), within 0.1% of the norm;
    * larger convolutions: the Gram bound of the circulant embedding
      (:func:`attnflow.nets.operator_norm.circulant_norm_bound`).

    Both are a fixed number of matrix products (no SVD, no host synchronisation, no iteration
    that stops on a tolerance), run without autograd; the divisor's gradient is that of the top
    singular value, as in spectral normalisation. Earlier versions divided large convolutions by a warm-started
    power-iteration estimate, a lower bound that a weight update moving the top singular vector
    could leave 16% short. The divisor of the latest forward pass is kept (with the weight state
    it belongs to), so :meth:`lipschitz_bound` of the weights in use costs nothing, and without
    autograd it is reused while the weights are unchanged (a fixed-point inverse's iterations).

    Subclasses provide the map (:meth:`_op`), its adjoint (:meth:`_adjoint`) and the certified
    bound (:meth:`_certified_norm`).
    """

    weight: Tensor

    def _init_spectral_norm(self, coeff: float) -> None:
        if not 0.0 < coeff < 1.0:
            raise ValueError(
                f"coeff must lie in (0, 1) so that the layer is a contraction, got {coeff}; "
                "use e.g. coeff=0.97"
            )
        self.coeff = float(coeff)
        self._sigma_cache: tuple = (None, None)  # (weight state, sigma_hat detached) of the last use
        self.explicit_side = EXPLICIT_SIDE

    def _op(self, v: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def _adjoint(self, u: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def _affine(self, x: Tensor, weight: Tensor) -> Tensor:
        """``A(weight) x + bias``."""
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        """Validate ``x`` (and set up what depends on its shape)."""

    def _certified_norm(self, weight: Tensor) -> Tensor:
        """A certified upper bound of ``||A(weight)||``, differentiable in ``weight``."""
        raise NotImplementedError

    def _weight_state(self) -> tuple:
        return tensor_state(self.weight)

    def _sigma(self) -> Tensor:
        """``sigma_hat`` for the current weights, differentiable in ``W`` when autograd is on; the
        value is kept for :meth:`lipschitz_bound` and reused without autograd while the weights
        are unchanged."""
        state = self._weight_state()
        if not torch.is_grad_enabled() and self._sigma_cache[0] == state:
            return self._sigma_cache[1]
        sigma = self._certified_norm(self.weight)
        self._sigma_cache = (state, sigma.detach())
        return sigma

    def _scale(self, sigma: Tensor) -> Tensor:
        """``min(1, coeff / sigma_hat)``."""
        return 1.0 / torch.clamp(sigma / self.coeff, min=1.0)

    def normalized_weight(self) -> Tensor:
        """The weight as used in the forward pass: ``W * min(1, coeff / sigma_hat)``."""
        return self.weight * self._scale(self._sigma())

    def lipschitz_bound(self) -> float:
        """Certified upper bound of the layer's Lipschitz constant as the forward pass uses it:
        ``||A(W_used)|| = ||A(W)|| min(1, coeff / sigma_hat) <= min(sigma_hat, coeff)``, since
        ``sigma_hat >= ||A(W)||``. Pure and cheap: the divisor of the latest forward pass when the
        weights have not changed since, else the one the next forward pass will compute."""
        with torch.no_grad():
            return min(float(self._sigma()), self.coeff)

    def linearize(self, x: Tensor) -> Linearization:
        """``y = A(W_used) x + b`` with ``J = A(W_used)``: ``jvp = A``, ``vjp = A^T``."""
        self._check_input(x)
        weight = self.normalized_weight()
        return Linearization(
            self._affine(x, weight),
            vjp=lambda w: self._adjoint(w, weight),
            jvp=lambda v: self._op(v, weight),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.linearize(x).output

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Checkpoints written before the divisors were certified hold the power-iteration vectors
        ``u``, ``v``: they are dropped (``v`` first gives a convolution its input size)."""
        legacy_v = state_dict.pop(prefix + "v", None)
        state_dict.pop(prefix + "u", None)
        if legacy_v is not None and legacy_v.dim() == 4:
            self._adopt_input_size(legacy_v.shape[-2:])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _adopt_input_size(self, size: Sequence[int]) -> None:
        """Record the input's spatial size (convolutions only)."""


class SpectralNormLinear(_SpectralNorm, nn.Linear):
    """Linear layer ``y = W_used x + b`` with ``W_used = W * min(1, coeff / sigma_hat)`` and
    ``sigma_hat`` the Gram-iteration bound of ``||W||_2`` (spectral normalisation, Miyato et al.
    2018, as used by i-ResNet and Residual Flows, with a certified divisor).
    """

    def __init__(self, in_features: int, out_features: int, coeff: float = 0.97, bias: bool = True) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._init_spectral_norm(coeff)

    def _op(self, v: Tensor, weight: Tensor) -> Tensor:
        return F.linear(v, weight)

    def _adjoint(self, u: Tensor, weight: Tensor) -> Tensor:
        return u @ weight

    def _affine(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.bias)

    def _certified_norm(self, weight: Tensor) -> Tensor:
        return certified_max_norm(weight[None]).to(weight.dtype)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: tuple[int, int] = (0, 0)) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` with stride 1 and ``padding < kernel size``.

    On CPU, when one side has few channels (``C_in k <= C_out`` or ``C_out k <= C_in`` with
    ``k = kh kw`` taps; every 1x1 kernel) it is one batched matrix product per sample, on the
    ``[B, C, H W]`` view of the input:

        1x1:        y = W [C_out, C_in] @ x
        C_in k:     y = W [C_out, C_in k] @ unfold(x)                 (unfold: the k shifted copies)
        C_out k:    y = fold(W~ [C_out k, C_in] @ x)   (W~: flipped kernel; fold sums the shifts)

    oneDNN is several times slower than this, forward and backward, on the few-channel ends of
    residual-flow branches at full resolution (e.g. 1 -> 64 -> 1 channels at 28x28). Other
    shapes and devices use ``F.conv2d``.
    """
    b, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    (ph, pw), taps = padding, kh * kw
    if x.device.type != "cpu" or (c_in * taps > c_out and c_out * taps > c_in):
        return F.conv2d(x, weight, bias, padding=padding)
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    if taps == 1 or c_in * taps <= c_out:
        cols = x.reshape(b, c_in, h * w) if taps == 1 else F.unfold(x, (kh, kw), padding=padding)
        matrix = weight.reshape(1, c_out, c_in * taps).expand(b, -1, -1)
        out = torch.bmm(matrix, cols) if bias is None else torch.baddbmm(bias.view(1, c_out, 1), matrix, cols)
        return out.view(b, c_out, ho, wo)
    matrix = weight.flip(2, 3).permute(0, 2, 3, 1).reshape(1, c_out * taps, c_in).expand(b, -1, -1)
    out = F.fold(torch.bmm(matrix, x.reshape(b, c_in, h * w)), (ho, wo), (kh, kw), padding=(kh - 1 - ph, kw - 1 - pw))
    return out if bias is None else out + bias.view(1, c_out, 1, 1)


def conv_transpose2d(u: Tensor, weight: Tensor, padding: tuple[int, int] = (0, 0)) -> Tensor:
    """``F.conv_transpose2d(u, weight, padding=padding)`` (stride 1, ``padding < kernel size``),
    the adjoint of :func:`conv2d`: the convolution with the flipped, transposed kernel and padding
    ``k - 1 - p``."""
    kh, kw = weight.shape[-2:]
    return conv2d(u, weight.transpose(0, 1).flip(2, 3), padding=(kh - 1 - padding[0], kw - 1 - padding[1]))


class SpectralNormConv2d(_SpectralNorm, nn.Conv2d):
    """Stride-1 zero-padded convolution with its weight rescaled by ``min(1, coeff / sigma_hat)``,
    where ``sigma_hat`` is a certified upper bound of the norm of the convolution as a linear map
    on its input (the "induced" spectral norm of Residual Flows, Chen et al. 2019 -- not the norm
    of the reshaped kernel): the Gram bound of the explicit matrix for a small operator or a 1x1
    kernel, of the circulant embedding otherwise (:class:`_SpectralNorm`).

    The input spatial size is fixed by ``input_size`` or recorded at the first forward pass; later
    inputs must have the same size.
    """

    # nn.Conv2d stores both as (height, width) pairs; the padding here is an int, never a string
    kernel_size: tuple[int, int]
    padding: tuple[int, int]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int,
        coeff: float = 0.97,
        bias: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        if not 0 <= padding < kernel_size:
            raise ValueError(f"padding must lie in [0, kernel_size - 1] = [0, {kernel_size - 1}], got {padding}")
        self._init_spectral_norm(coeff)
        self.input_size: tuple[int, int] | None = None
        if input_size is not None:
            self._adopt_input_size(input_size)

    def _adopt_input_size(self, size: Sequence[int]) -> None:
        self.input_size = (int(size[0]), int(size[1]))

    def known_input_size(self) -> tuple[int, int]:
        """The input's spatial size ``(H, W)``; an error before it is known."""
        if self.input_size is None:
            raise RuntimeError("the input size is unknown: run a forward pass first or pass input_size")
        return self.input_size

    def _op(self, v: Tensor, weight: Tensor) -> Tensor:
        return conv2d(v, weight, padding=self.padding)

    def _adjoint(self, u: Tensor, weight: Tensor) -> Tensor:
        return conv_transpose2d(u, weight, padding=self.padding)

    def _affine(self, x: Tensor, weight: Tensor) -> Tensor:
        return conv2d(x, weight, self.bias, padding=self.padding)

    def _sides(self) -> tuple[int, int, int, int]:
        """``(H', W', d_in, d_out)``: the output size and the operator's input and output dimensions."""
        (h, w), (ph, pw), (kh, kw) = self.known_input_size(), self.padding, self.kernel_size
        ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
        return ho, wo, self.in_channels * h * w, self.out_channels * ho * wo

    def divides_by_explicit_matrix(self) -> bool:
        """Whether the divisor is the Gram bound of an explicit matrix of the whole operator (a
        side of at most ``explicit_side`` dimensions, not a 1x1 kernel) rather than of the kernel
        matrix (1x1) or of the circulant embedding."""
        if self.kernel_size == (1, 1) and self.padding == (0, 0):
            return False
        _, _, d_in, d_out = self._sides()
        return min(d_in, d_out) <= self.explicit_side and d_in * d_out <= DENSE_NORM_LIMIT

    def _small_matrix(self, weight: Tensor) -> Tensor | None:
        """The kernel matrix of a 1x1 convolution without padding (block diagonal operator of
        identical blocks), or the images of a basis of the smaller side (input: rows ``A e_i``,
        the matrix ``A^T``; output: rows ``A^T e_j``, the matrix ``A``); ``None`` when both sides
        have more than ``explicit_side`` dimensions."""
        c_out, c_in, kh, kw = weight.shape
        if (kh, kw) == (1, 1) and self.padding == (0, 0):
            return weight.reshape(c_out, c_in)
        if not self.divides_by_explicit_matrix():
            return None
        (h, w), ho, wo, d_in, d_out = self.known_input_size(), *self._sides()
        if d_in <= d_out:
            basis = torch.eye(d_in, dtype=weight.dtype, device=weight.device).view(d_in, c_in, h, w)
            return self._op(basis, weight).reshape(d_in, d_out)
        basis = torch.eye(d_out, dtype=weight.dtype, device=weight.device).view(d_out, c_out, ho, wo)
        return self._adjoint(basis, weight).reshape(d_out, d_in)

    def _certified_norm(self, weight: Tensor) -> Tensor:
        size = self.known_input_size()
        matrix = self._small_matrix(weight)
        if matrix is not None:
            return certified_max_norm(matrix[None]).to(weight.dtype)
        return circulant_norm_bound(weight, size, self.padding)

    def _check_input(self, x: Tensor) -> None:
        if self.input_size is None:
            self._adopt_input_size(x.shape[-2:])
        elif tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"SpectralNormConv2d was set up for inputs of spatial size {self.input_size}, got "
                f"{tuple(x.shape[-2:])}; use one layer per resolution"
            )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, coeff={self.coeff}, input_size={self.input_size}"


# sup_t d/dt[t sigmoid(t)] = 1.0998393... (at t ~ 2.3994), hence LipSwish's 1/1.1.
_LIPSWISH_DIVISOR = 1.1
# sup_t sqrt(s'(t)^2 + s'(-t)^2) / 1.1 = 1.0039650... for s(t) = t sigmoid(t), rounded up.
_CLIPSWISH_DIVISOR = 1.004


class _LipSwishWithSlope(torch.autograd.Function):
    """``(y, d) = (x s / 1.1, s (1 + t (1 - s)) / 1.1)`` with ``t = beta x``, ``s = sigmoid(t)``
    (computed as ``d = s / 1.1 + beta y (1 - s)``), with the hand-derived backward

        dy/dx = d,    dd/dx = beta E / 1.1,    dy/dbeta = x^2 q / 1.1,    dd/dbeta = x E / 1.1,
        q = s (1 - s),    E = q (2 + t (1 - 2 s)),

    in about fifteen elementwise passes over the activations per training step, where autograd
    through the formulas needs some thirty.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
        b = beta.item()
        s = (x * b).sigmoid_()
        s_scaled = s / _LIPSWISH_DIVISOR
        y = x * s_scaled
        slope = torch.addcmul(s_scaled, y, 1 - s, value=b)
        ctx.save_for_backward(x, s, slope)
        ctx.beta = b
        return y, slope

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor, grad_slope: Tensor) -> tuple[Tensor, Tensor]:
        x, s, slope = ctx.saved_tensors
        b, c = ctx.beta, 1.0 / _LIPSWISH_DIVISOR
        q = torch.addcmul(s, s, s, value=-1.0)
        half_e = torch.addcmul(q, q, torch.addcmul(x, x, s, value=-2.0), value=b / 2)  # q + q t (1 - 2s) / 2
        grad_x = torch.addcmul(grad_y * slope, grad_slope, half_e, value=2 * b * c)
        per_x = (grad_y * q.mul_(x)).addcmul_(grad_slope, half_e, value=2.0)  # (dy/dbeta gy + dd/dbeta gd) 1.1 / x
        return grad_x, c * torch.dot(x.reshape(-1), per_x.reshape(-1))


class LipSwish(nn.Module):
    """``LipSwish(x) = x * sigmoid(beta x) / 1.1`` with ``beta = softplus(b)`` learnable (Residual
    Flows, Chen et al. 2019).

    The derivative is ``d(beta x) / 1.1`` with ``d(t) = sigmoid(t) + t sigmoid(t)(1 - sigmoid(t))``,
    independent of ``beta`` apart from the argument; ``max_t d(t) = 1.09984 < 1.1``, so
    Lip <= 1 for every ``beta > 0``.
    """

    def __init__(self, beta_init: float = 1.0) -> None:
        super().__init__()
        if not beta_init > 0:
            raise ValueError(f"beta_init must be > 0 (beta = softplus(b) is positive), got {beta_init}")
        self.b = nn.Parameter(torch.tensor(float(beta_init)).expm1().log())  # softplus^{-1}

    def forward(self, x: Tensor) -> Tensor:
        beta = F.softplus(self.b)
        return x * torch.sigmoid(beta * x) / _LIPSWISH_DIVISOR

    def value_and_slope(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``LipSwish(x)`` and its elementwise derivative ``d(beta x) / 1.1``,
        ``d(t) = s (1 + t (1 - s))`` with ``s = sigmoid(t)``; both differentiable."""
        return _LipSwishWithSlope.apply(x, F.softplus(self.b))

    def linearize(self, x: Tensor) -> Linearization:
        """Diagonal Jacobian: ``jvp(v) = vjp(v) = d * v``."""
        return diagonal_linearization(*self.value_and_slope(x))

    def lipschitz_bound(self) -> float:
        return 1.0


class CLipSwish(LipSwish):
    """Concatenated LipSwish (i-DenseNet, Perugachi-Diaz et al. 2021):
    ``CLipSwish(x) = [LipSwish(x), LipSwish(-x)] / 1.004`` along channels (doubles them).

    Per element the Jacobian is the column ``(d(t), -d(-t)) / (1.1 * 1.004)`` with ``t = beta x``
    (``d`` as in :class:`LipSwish`); its norm peaks at ``sup_t sqrt(d(t)^2 + d(-t)^2) / 1.1 =
    1.003965`` (near ``|t| = 2.4``), independent of ``beta``. Dividing by 1.004 gives Lip <= 1.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(torch.cat([x, -x], dim=1)) / _CLIPSWISH_DIVISOR

    def linearize(self, x: Tensor) -> Linearization:
        """Per element the Jacobian is the column ``D = (d(t), -d(-t)) / (1.1 * 1.004)``, stored
        as ``[B, 2C, ...]``: ``jvp(v) = D * [v, v]``, ``vjp([w1, w2]) = D1 w1 + D2 w2``."""
        y, slope = self.value_and_slope(torch.cat([x, -x], dim=1))
        pos, neg = slope.chunk(2, dim=1)
        column = torch.cat([pos, -neg], dim=1) / _CLIPSWISH_DIVISOR

        def vjp(w: Tensor) -> Tensor:
            w1, w2 = (column * w).chunk(2, dim=1)
            return w1 + w2

        return Linearization(y / _CLIPSWISH_DIVISOR, vjp, jvp=lambda v: column * torch.cat([v, v], dim=1))

