"""Estimators of ``log|det(I + J_g(x))|`` per sample for residual blocks ``y = x + g(x)``.

For ``Lip(g) < 1`` the determinant is positive and (Behrmann et al. 2019, i-ResNet)

    log det(I + J) = sum_{k>=1} (-1)^{k+1} / k * tr(J^k),

with each trace estimated by Hutchinson's ``tr(A) = E[v^T A v]`` (``E[v v^T] = I``) through
repeated vector-Jacobian products ``w^T <- w^T J``. Three estimators:

* ``exact``: the brute-force Jacobian, ``D`` vector-Jacobian products (tiny inputs, tests).
* ``power_series``: the first ``n_terms`` terms (i-ResNet; biased by the truncation).
* ``russian_roulette``: ``N = n_exact + G`` terms with ``G ~ Geometric(geom_p)`` on ``{0, 1, ...}``
  and term ``k`` reweighted by ``1 / P(N >= k) = (1 - geom_p)^{-max(0, k - n_exact)}``, an unbiased
  estimate of the whole series (Residual Flows, Chen et al. 2019).

Neumann-series gradient (Residual Flows, eq. 8): since ``d log det(I + J) = tr((I + J)^{-1} dJ)
= sum_{k>=0} (-1)^k tr(J^k dJ)``, the gradient of an estimate ``sum_k a_k v^T J^k v`` is
estimated without building the graph of the series by differentiating the surrogate
``w^T J v`` with the detached vector ``w^T = sum_{k>=1} k a_k v^T J^{k-1}``; the returned value is
``estimate.detach() + surrogate - surrogate.detach()``. With exact traces (``v`` over a basis) its
gradient equals the gradient of the series term by term; with random ``v`` in expectation.

The estimators see ``g`` only through a :class:`~attnflow.nets.linearization.Linearization`:
``g(x)`` and the products ``w^T J`` and ``J v``. The series terms are computed without recording a
graph (or through every term when the full-series gradient is wanted), and the surrogate is
``(w * J v).sum()`` with a differentiable Jacobian-vector product, so training needs a first-order
backward pass only. Residual branches provide explicit per-layer products
(:func:`attnflow.nets.residual_branches.linearize`);
:func:`~attnflow.nets.linearization.autograd_linearization` serves any other function. Gradients
follow the grad mode: under ``torch.no_grad()`` nothing is recorded.

The estimators assume ``g`` acts on each sample separately (no mixing across the batch).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nets.linearization import Linearization
from ..sharding import per_sample_draw

__all__ = [
    "LogDetConfig",
    "estimate_logdet",
    "exact_logdet",
    "series_logdet",
    "hutchinson_vectors",
    "power_series_coefficients",
    "russian_roulette_coefficients",
]

ESTIMATORS = ("exact", "power_series", "russian_roulette")
NOISE = ("gaussian", "rademacher")


@dataclass(frozen=True)
class LogDetConfig:
    """Settings of the log-det estimator of a residual block.

    Args:
        estimator: ``"exact"``, ``"power_series"`` or ``"russian_roulette"``.
        n_terms: number of series terms of ``power_series``.
        n_exact: terms always computed by ``russian_roulette``.
        geom_p: success probability of the geometric number of extra roulette terms.
        n_samples: Hutchinson vectors per estimate (the estimates are averaged).
        noise: distribution of the Hutchinson vectors, ``"rademacher"`` (lower variance) or
            ``"gaussian"``.
        neumann_grad: use the Neumann-series gradient (memory-saving, series estimators only).
    """

    estimator: str = "russian_roulette"
    n_terms: int = 10
    n_exact: int = 2
    geom_p: float = 0.5
    n_samples: int = 1
    noise: str = "rademacher"
    neumann_grad: bool = False

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.noise not in NOISE:
            raise ValueError(f"noise must be one of {NOISE}, got {self.noise!r}")
        if self.n_terms < 1:
            raise ValueError(f"n_terms must be >= 1, got {self.n_terms}")
        if self.n_exact < 0:
            raise ValueError(f"n_exact must be >= 0, got {self.n_exact}")
        if not 0.0 < self.geom_p < 1.0:
            raise ValueError(f"geom_p must lie in (0, 1), got {self.geom_p}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1 Hutchinson vector, got {self.n_samples}")
        if self.neumann_grad and self.estimator == "exact":
            raise ValueError("neumann_grad applies to the series estimators; use power_series or russian_roulette")


def exact_logdet(lin: Linearization) -> Tensor:
    """``log|det(I + J)|`` per sample from the full Jacobian (one VJP per dimension; ``g`` maps
    its input to an output of the same shape)."""
    y = lin.output
    b, d = y.shape[0], y[0].numel()
    rows = []
    for i in range(d):
        e = y.new_zeros(b, d)
        e[:, i] = 1.0
        rows.append(lin.vjp(e.view_as(y)).reshape(b, d))
    jac = torch.stack(rows, dim=1)
    return torch.linalg.slogdet(torch.eye(d, dtype=y.dtype, device=y.device) + jac)[1]


def hutchinson_vectors(x: Tensor, n: int, noise: str = "rademacher") -> list[Tensor]:
    """``n`` random vectors shaped like ``x`` with ``E[v v^T] = I``, one per sample (of the global
    batch in data-parallel training, :func:`attnflow.sharding.per_sample_draw`)."""
    if noise == "gaussian":
        draw = lambda shape: torch.randn(shape, dtype=x.dtype, device=x.device)  # noqa: E731
    else:
        draw = lambda shape: torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(0.5) * 2 - 1  # noqa: E731
    return [per_sample_draw(x, draw) for _ in range(n)]


def power_series_coefficients(n_terms: int) -> list[float]:
    """``a_k = (-1)^{k+1} / k`` for ``k = 1..n_terms`` (i-ResNet)."""
    return [(-1) ** (k + 1) / k for k in range(1, n_terms + 1)]


def russian_roulette_coefficients(n_exact: int, geom_p: float) -> list[float]:
    """Draw ``N = n_exact + G``, ``G ~ Geometric(geom_p)`` on ``{0, 1, ...}``, and return
    ``a_k = (-1)^{k+1} / (k P(N >= k))`` for ``k = 1..N`` (Residual Flows)."""
    extra = int(torch.distributions.Geometric(probs=torch.tensor(geom_p)).sample())
    return [
        (-1) ** (k + 1) / k / (1.0 - geom_p) ** max(0, k - n_exact)
        for k in range(1, n_exact + extra + 1)
    ]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product."""
    return (a * b).flatten(1).sum(1)


def series_logdet(
    lin: Linearization,
    coefficients: Sequence[float],
    vectors: Sequence[Tensor],
    neumann_grad: bool = False,
) -> Tensor:
    """``mean_v sum_k a_k v^T J^k v`` per sample for the linearized ``g``.

    With grad mode enabled the estimate is differentiable: through every term, or with
    ``neumann_grad`` through the Neumann surrogate ``w^T J v`` only (see the module docstring),
    the series itself then being computed without a graph. The surrogate needs ``J v``, which
    also gives the last term, ``v^T J^n v = (v^T J^{n-1}) (J v)``: ``n - 1`` VJPs and one JVP.
    """
    total = lin.output.new_zeros(lin.output.shape[0])
    n = len(coefficients)
    if not n:
        return total
    neumann = neumann_grad and torch.is_grad_enabled()
    for v in vectors:
        w = v
        value: Tensor | float = 0.0
        grad_vector = coefficients[0] * v  # sum_k k a_k v^T J^{k-1}, for the Neumann surrogate
        with torch.set_grad_enabled(torch.is_grad_enabled() and not neumann):
            for k in range(1, n if neumann else n + 1):  # w = v^T J^k
                w = lin.vjp(w)
                value = value + coefficients[k - 1] * _dot(w, v)
                if neumann:
                    grad_vector = grad_vector + (k + 1) * coefficients[k] * w
        if neumann:
            jv = lin.jvp(v)
            surrogate = _dot(grad_vector, jv)
            value = value + coefficients[-1] * _dot(w, jv.detach()) + surrogate - surrogate.detach()
        total = total + value
    return total / len(vectors)


def estimate_logdet(lin: Linearization, config: LogDetConfig) -> Tensor:
    """``log|det(I + J_g(x))|`` per sample with the estimator chosen by ``config``;
    differentiable when grad mode is enabled."""
    if config.estimator == "exact":
        return exact_logdet(lin)
    if config.estimator == "power_series":
        coefficients = power_series_coefficients(config.n_terms)
    else:
        coefficients = russian_roulette_coefficients(config.n_exact, config.geom_p)
    vectors = hutchinson_vectors(lin.output, config.n_samples, config.noise)
    return series_logdet(lin, coefficients, vectors, config.neumann_grad)
