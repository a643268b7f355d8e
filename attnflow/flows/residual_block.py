"""Invertible residual block ``y = x + g(x)`` with ``Lip(g) < 1`` (i-ResNet, Behrmann et al. 2019;
Residual Flows, Chen et al. 2019; i-DenseNet, Perugachi-Diaz et al. 2021; ACF)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import Tensor, nn

from ..core import Bijection, Context
from ..nets.residual_branches import LipschitzBounded, linearize
from ..precision import full_precision
from .residual_logdet import LogDetConfig, estimate_logdet

__all__ = ["ResidualBlock", "InverseDidNotConverge", "full_float32"]

# Residual Flows' settings: unbiased estimates with 2 exact terms and the Neumann gradient in
# training, 20 exact terms in evaluation.
DEFAULT_TRAIN_LOGDET = LogDetConfig("russian_roulette", n_exact=2, geom_p=0.5, neumann_grad=True)
DEFAULT_EVAL_LOGDET = LogDetConfig("russian_roulette", n_exact=20, geom_p=0.5)


@contextmanager
def full_float32() -> Iterator[None]:
    """Disable TF32 for convolutions (``torch.backends.cudnn.allow_tf32``) and matrix products
    (``torch.backends.cuda.matmul.allow_tf32``) inside the block, restoring both flags on exit,
    also when the block raises. The flags only affect CUDA kernels: on the CPU this costs two
    attribute writes and changes no result."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


class InverseDidNotConverge(RuntimeError):
    """The fixed-point iteration of :meth:`ResidualBlock.inverse` did not reach its tolerance."""


class ResidualBlock(Bijection):
    """``y = x + g(x)``, invertible when ``Lip(g) < 1``.

    ``log|det dy/dx| = log det(I + J_g(x))`` comes from :func:`attnflow.flows.residual_logdet.estimate_logdet`
    with ``train_logdet`` in training mode and ``eval_logdet`` in evaluation mode, on the
    branch's :func:`attnflow.nets.residual_branches.linearize` (explicit per-layer Jacobian products, autograd
    for layers without them). Under ``torch.no_grad()`` only those layers record a (local) graph.

    The inverse is Banach's fixed-point iteration ``x_{k+1} = y - g(x_k)``, ``x_0 = y``, which
    converges at rate ``Lip(g)``; it stops once, elementwise,
    ``|x_{k+1} - x_k| <= atol + rtol |x_{k+1}| + 8 eps (|y| + |x_{k+1}|)`` (the error is then at
    most ``step / (1 - Lip(g))``); the last term, with ``eps`` the dtype's machine epsilon, is the
    round-off floor of computing ``y - g(x)``: without it a float32 inverse of large values can
    stall just above a tight ``atol`` forever. It raises
    :class:`InverseDidNotConverge` after ``max_iter`` steps. It runs without autograd and with the
    branch in evaluation mode; the branch is the same function as in the forward pass (spectral
    normalisation depends on the weights only, see :class:`attnflow.nets.lipschitz_layers.SpectralNormConv2d`).
    ``last_iterations`` holds the number of steps the last inverse took.

    TF32 policy: the branch is evaluated in full float32 precision. On CUDA, TF32 (on by default
    for cuDNN convolutions) computes ``g(x)`` to only about ``1e-3`` relative, far above the
    float32 round-off floor the stopping rule assumes, so the inverse would stall and raise a
    spurious :class:`InverseDidNotConverge`, and forward and inverse would evaluate different
    functions. The forward pass (the branch and its log-det products) and the whole fixed-point
    inverse therefore run inside :func:`full_float32`, which disables TF32 for convolutions and
    matrix products and restores the caller's settings afterwards; the rest of the model keeps
    PyTorch's defaults. Gradients computed later by ``backward()`` run outside the block and
    follow the global settings. Autocast is off there too (:func:`attnflow.precision.full_precision`):
    ``train.precision = "bf16"`` never reaches a contractive branch, even under a caller's own
    ``torch.autocast``.

    Args:
        branch: the residual branch ``g`` (shape-preserving), exposing ``lipschitz_bound()``; it
            must not mix samples across the batch.
        train_logdet, eval_logdet: log-det estimator settings.
        atol, rtol, max_iter: stopping rule of the inverse.
    """

    def __init__(
        self,
        branch: nn.Module,
        train_logdet: LogDetConfig = DEFAULT_TRAIN_LOGDET,
        eval_logdet: LogDetConfig = DEFAULT_EVAL_LOGDET,
        atol: float = 1e-6,
        rtol: float = 1e-6,
        max_iter: int = 1000,
    ) -> None:
        super().__init__()
        if not callable(getattr(branch, "lipschitz_bound", None)):
            raise TypeError(
                f"the branch ({type(branch).__name__}) must expose lipschitz_bound(); "
                "build it with attnflow.nets.residual_branches.build_branch"
            )
        if atol < 0 or rtol < 0 or (atol == 0 and rtol == 0):
            raise ValueError(f"need atol >= 0, rtol >= 0 and not both zero, got atol={atol}, rtol={rtol}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.branch = branch
        self.train_logdet = train_logdet
        self.eval_logdet = eval_logdet
        self.atol, self.rtol, self.max_iter = float(atol), float(rtol), int(max_iter)
        self.last_iterations = 0

    def forward(self, x: Tensor, context: Context = None) -> tuple[Tensor, Tensor]:
        with full_float32(), full_precision(x):
            lin = linearize(self.branch, x)
            logdet = estimate_logdet(lin, self.train_logdet if self.training else self.eval_logdet)
        return x + lin.output, logdet

    @torch.no_grad()
    def inverse(self, z: Tensor, context: Context = None) -> Tensor:
        was_training = self.branch.training
        self.branch.eval()
        try:
            with full_float32(), full_precision(z):
                return self._fixed_point(z)
        finally:
            self.branch.train(was_training)

    def _fixed_point(self, z: Tensor) -> Tensor:
        x = z
        for iteration in range(1, self.max_iter + 1):
            self.last_iterations = iteration
            x_next = z - self.branch(x)
            step = (x_next - x).abs()
            x = x_next
            floor = 8 * torch.finfo(x.dtype).eps * (z.abs() + x.abs())
            if bool((step <= self.atol + self.rtol * x.abs() + floor).all()):
                return x
            if not torch.isfinite(step).all():
                break
        residual = float((x + self.branch(x) - z).abs().max())
        raise InverseDidNotConverge(
            f"fixed-point inverse of x + g(x) did not converge in {self.max_iter} iterations: "
            f"remaining residual max|x + g(x) - y| = {residual:.3e} (atol={self.atol}, rtol={self.rtol}); "
            f"Lip(g) must be < 1 (certified bound: call lipschitz_bound()), or raise max_iter"
        )

    def lipschitz_bound(self) -> float:
        """Certified upper bound of ``Lip(g)`` (the branch's bound)."""
        return float(cast(LipschitzBounded, self.branch).lipschitz_bound())
