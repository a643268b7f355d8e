"""Self-attention for the residual branch ``g`` of contractive flows (ACF: Mukherjee, Patro &
Namboodiri, "Attentive Contractive Flow with Lipschitz Constrained Self-Attention").

Every module maps ``x [B, C, H, W]`` to a tensor of the same shape. The tokens are the
``N = H*W`` spatial positions, each a ``C``-vector: ``X = x.flatten(2).transpose(1, 2)`` is
``[B, N, C]`` (a real permute, unlike the public ACF code) and the Frobenius norm of ``X`` is the
L2 norm of the flattened sample, so every Lipschitz bound below is with respect to the L2 norm of
the whole ``[C*H*W]`` input of one sample. Heads split the projections' columns: with
``d = ceil(C / heads)`` and the inner width ``C' = heads * d``, head ``h`` uses columns
``h*d .. (h+1)*d - 1`` of each projection ``W in R^{C x C'}`` (so every head sees all ``C``
input channels through its own ``d`` columns); the heads' outputs are concatenated and
multiplied by ``W^O in R^{C' x C}``. When ``heads`` divides ``C`` (the usual case) ``C' = C``
and ``d = C / heads``; otherwise the inner width is padded up to the next multiple of ``heads``
(at most ``heads - 1`` extra columns: 16 channels with 5 heads give ``d = 4``, ``C' = 20``), so
head counts such as ACF's and AttnFlow's 5 or 7 work for any width. Every bound below is stated
per head in the spectral norms of the ``C x d`` head blocks and the head width ``d``, and holds
for any ``d``, so the certificates are unchanged by the padding (``tests/test_lipschitz_attention.py``
checks them against empirical Lipschitz estimates with uneven heads). ``1 <= heads <= C``. No
biases (a bias in a query, key or value projection would break the bounds of
:class:`LipNormSelfAttention`).

* :class:`L2MultiheadSelfAttention`: Kim et al. 2021, Lipschitz for every input, certified bound.
* :class:`LipNormSelfAttention`: Dasoulas et al. 2021 LipschitzNorm, Lipschitz for every input,
  certified bound derived below.
* :class:`DotProductSelfAttention`: plain scaled dot-product attention, not Lipschitz; the ACF
  ablation in which ``x + g(x)`` stops being invertible.

With ``normalize=True`` (the ACF usage, default) the first two divide their output by their
certified bound, so they are 1-Lipschitz and ``lipschitz_bound()`` is ``1.0``. The bounds are
differentiable functions of the weights, so the normalisation is trained through. The spectral
norms in them are certified upper bounds from Gram iteration
(:func:`attnflow.nets.operator_norm.gram_spectral_norm`: a dozen products of ``d x d`` matrices,
within 0.1% of the exact norm, no SVD and no host synchronisation); every monotone bound stays
valid with upper bounds in place of the norms. The residual branch that holds one of these
modules multiplies ``lipschitz_bound()`` into its own bound.

Each module also has ``linearize(x)`` (:class:`attnflow.nets.linearization.Linearization`): the output with
explicit Jacobian-vector and vector-Jacobian products for the log-det estimators, first-order
expressions in the saved attention matrix ``P = softmax(S)`` of every head (``O = P Z``)::

    dO = (P * (dS - rowsum(P * dS))) Z + P dZ                      (JVP)
    Z* = P^T O*,   S* = P * (O* Z^T - rowsum(O* * O))                (VJP; rowsum(P * (O* Z^T)) = rowsum(O* * O))

with the scores ``S`` and values ``Z`` of each kind linearized in their projections.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from scipy.special import lambertw
from torch import Tensor, nn

from .linearization import Linearization
from .operator_norm import gram_spectral_norm, tensor_state

__all__ = [
    "DotProductSelfAttention",
    "L2MultiheadSelfAttention",
    "LipNormSelfAttention",
    "exact_spectral_norms",
    "inverse_phi",
]


@functools.lru_cache(maxsize=64)
def inverse_phi(y: float) -> float:
    """``phi^{-1}(y)`` for ``phi(x) = x * exp(x + 1)`` on ``x >= 0``: ``W0(y / e)`` (Lambert W)."""
    if y < 0:
        raise ValueError(f"inverse_phi needs y >= 0, got {y}")
    return float(lambertw(y / math.e).real)


def exact_spectral_norms(weights: Tensor) -> Tensor:
    """Largest singular value of each matrix in ``[..., m, n]`` by SVD (tests and reports)."""
    return torch.linalg.matrix_norm(weights, ord=2)


NormFunction = Callable[[Tensor], Tensor]


def _baddbmm(bias: Tensor, a: Tensor, b: Tensor, beta: float = 1.0, alpha: float = 1.0) -> Tensor:
    """``beta bias + alpha a @ b`` for ``[B, heads, ...]`` operands, in one pass over the result."""
    lead = a.shape[:-2]
    out = torch.baddbmm(bias.flatten(0, -3), a.flatten(0, -3), b.flatten(0, -3), beta=beta, alpha=alpha)
    return out.view(*lead, *out.shape[-2:])


def _append_ones(t: Tensor) -> Tensor:
    """``[t, 1]`` along the last dimension: ``A @ [t, 1]`` gives ``A t`` and the row sums of ``A``
    in one product."""
    return torch.cat([t, t.new_ones(*t.shape[:-1], 1)], dim=-1)


# jvp: projection tangents -> (dS, dZ);  vjp: (S*, Z*) -> projection cotangents
ScoreProducts = tuple[
    Callable[[tuple[Tensor, ...]], tuple[Tensor, Tensor]],
    Callable[[Tensor, Tensor], tuple[Tensor, ...]],
]


class _TokenSelfAttention(nn.Module):
    """Shared part: argument and input checks, token reshape, head split and merge, output
    projection ``W^O`` and the optional division by the certified Lipschitz bound.

    Subclasses give the projection weights (per-head projections ``X W``), the scores ``S`` and
    values ``Z`` of every head from the projections (``out_h = softmax(S) Z``) with their
    linearization, and, when they are Lipschitz, ``raw_lipschitz_bound(tokens)``.
    """

    def __init__(self, channels: int, heads: int, normalize: bool) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if heads > channels:
            raise ValueError(
                f"heads={heads} exceeds channels={channels}: use at most {channels} heads or more channels"
            )
        self.channels = channels
        self.heads = heads
        self.head_dim = -(-channels // heads)
        self.inner = heads * self.head_dim
        self.normalize = bool(normalize)
        self.out_weight = self._projection(self.inner, channels)

    def _projection(self, rows: int | None = None, cols: int | None = None) -> nn.Parameter:
        """A ``[C, C']`` projection (or ``[rows, cols]``), orthogonally initialised (every head
        slice has norm 1)."""
        shape = (rows or self.channels, cols or self.inner)
        return nn.Parameter(nn.init.orthogonal_(torch.empty(*shape)))

    def _split_heads(self, tokens: Tensor) -> Tensor:
        """``[B, N, C'] -> [B, heads, N, d]``."""
        b, n, _ = tokens.shape
        return tokens.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def _head_weights(self, weight: Tensor) -> Tensor:
        """``W [C, C'] -> [heads, C, d]``: head ``h`` is ``W[:, h*d:(h+1)*d]``."""
        return weight.reshape(self.channels, self.heads, self.head_dim).transpose(0, 1)

    def _projection_weights(self) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _scores_and_values(self, proj: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Scores ``[B, heads, N, N]`` and values ``[B, heads, N, d]`` from the projections."""
        raise NotImplementedError

    def _score_products(self, proj: tuple[Tensor, ...]) -> ScoreProducts:
        """The linearization of :meth:`_scores_and_values` at ``proj``."""
        raise NotImplementedError

    def _project(self, tokens: Tensor) -> tuple[Tensor, ...]:
        """Per-head projections ``[B, heads, N, d]`` of ``X [B, N, C]`` (linear in ``X``)."""
        return tuple(self._split_heads(tokens @ w) for w in self._projection_weights())

    def _project_adjoint(self, grads: tuple[Tensor, ...]) -> Tensor:
        """Adjoint of :meth:`_project`: ``sum_k merge(G_k) W_k^T``."""
        b, _, n, _ = grads[0].shape
        weights = self._projection_weights()
        terms = [g.transpose(1, 2).reshape(b, n, self.inner) @ w.T for g, w in zip(grads, weights)]
        return sum(terms[1:], terms[0])

    def raw_lipschitz_bound(self, tokens: int, norm: NormFunction = gram_spectral_norm) -> Tensor:
        """Certified upper bound of the Lipschitz constant of the un-normalised map, for inputs
        with ``tokens = H*W`` positions (a differentiable function of the weights), with the
        projections' spectral norms (or upper bounds of them) from ``norm``. The bound increases
        with every norm, so :func:`exact_spectral_norms` gives the tightest value and the default
        Gram bounds a value at most 0.1% above it per norm."""
        raise NotImplementedError

    def lipschitz_bound(self, tokens: int | None = None) -> float:
        """Certified upper bound of the Lipschitz constant of :meth:`forward` (L2 norm of the
        flattened sample). ``1.0`` when normalised, for every spatial size; otherwise the raw
        bound, which depends on the number of tokens ``N = H*W`` and so needs ``tokens``."""
        if self.normalize:
            return 1.0
        if tokens is None:
            raise ValueError(
                f"{type(self).__name__}(normalize=False): the bound depends on the number of tokens "
                "N = H*W; call lipschitz_bound(tokens=H*W) or construct with normalize=True"
            )
        return float(self.raw_lipschitz_bound(tokens).detach())

    def _tokens(self, x: Tensor) -> Tensor:
        """``X = [B, N, C]`` from a checked ``[B, C, H, W]`` input."""
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects input [B, C, H, W], got shape {tuple(x.shape)}: "
                "add the missing batch/spatial dimensions"
            )
        c = x.shape[1]
        if c != self.channels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.channels} channels, got input with {c} "
                f"(shape {tuple(x.shape)}): build it with channels={c} or fix the input"
            )
        return x.flatten(2).transpose(1, 2)

    def _output_divisor(self, tokens: int) -> Tensor | None:
        """The certified bound the output is divided by (``None`` without normalisation); without
        autograd it is reused while the weights are unchanged (e.g. across the iterations of a
        fixed-point inverse)."""
        if not self.normalize:
            return None
        if torch.is_grad_enabled():
            return self.raw_lipschitz_bound(tokens)
        key = (tokens, *tensor_state(*self.parameters()))
        if getattr(self, "_divisor_cache", (None,))[0] != key:
            self._divisor_cache = (key, self.raw_lipschitz_bound(tokens))
        return self._divisor_cache[1]

    def _merge(self, heads_out: Tensor, divisor: Tensor | None, shape: torch.Size) -> Tensor:
        """``[B, heads, N, d] -> [B, C, H, W]``: concatenated heads times ``W^O`` (over the divisor)."""
        b, c, h, w = shape
        out = heads_out.transpose(1, 2).reshape(b, h * w, self.inner) @ self.out_weight
        if divisor is not None:
            out = out / divisor
        return out.transpose(1, 2).reshape(b, c, h, w)

    def _merge_adjoint(self, grad: Tensor, divisor: Tensor | None) -> Tensor:
        """Adjoint of :meth:`_merge`: ``[B, C, H, W] -> [B, heads, N, d]``."""
        g = grad.flatten(2).transpose(1, 2) @ self.out_weight.T
        return self._split_heads(g if divisor is None else g / divisor)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self._tokens(x)
        scores, values = self._scores_and_values(self._project(tokens))
        return self._merge(torch.softmax(scores, dim=-1) @ values, self._output_divisor(tokens.shape[1]), x.shape)

    def linearize(self, x: Tensor) -> Linearization:
        """The module at ``x`` with explicit products (module docstring); ``P`` is kept per head."""
        tokens = self._tokens(x)
        proj = self._project(tokens)
        scores, values = self._scores_and_values(proj)
        p = torch.softmax(scores, dim=-1)
        out = p @ values
        divisor = self._output_divisor(tokens.shape[1])
        score_jvp, score_vjp = self._score_products(proj)
        values_and_ones = _append_ones(values)

        def jvp(v: Tensor) -> Tensor:
            # d(P Z) = (P * (dS - rowsum(P * dS))) Z + P dZ = [(P * dS) Z - rowsum(P * dS) out] + P dZ,
            # the row sums taken by the same product against [Z, 1]
            d_scores, d_values = score_jvp(self._project(self._tokens(v)))
            mixed = (p * d_scores) @ values_and_ones
            d_out = _baddbmm(torch.addcmul(mixed[..., :-1], mixed[..., -1:], out, value=-1.0), p, d_values)
            return self._merge(d_out, divisor, x.shape)

        def vjp(w: Tensor) -> Tensor:
            g_out = self._merge_adjoint(w, divisor)
            row = (g_out * out).sum(-1, keepdim=True)
            g_scores = _baddbmm(row, g_out, values.transpose(-1, -2), beta=-1.0)  # G Z^T - rowsum(G * out)
            g_scores = g_scores * p if torch.is_grad_enabled() else g_scores.mul_(p)
            g_tokens = self._project_adjoint(score_vjp(g_scores, p.transpose(-1, -2) @ g_out))
            return g_tokens.transpose(1, 2).reshape(x.shape)

        return Linearization(self._merge(out, divisor, x.shape), vjp, jvp)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, normalize={self.normalize}"


class L2MultiheadSelfAttention(_TokenSelfAttention):
    r"""L2 multi-head self-attention (Kim, Papamakarios & Mnih, "The Lipschitz Constant of
    Self-Attention", ICML 2021; ACF eqs. 8, 9, 11, 12), Lipschitz on all of ``R^{N x C}``.

    With tied query/key weights ``W^{Q,h} = W^{K,h} in R^{C x d}``, ``d = ceil(C/H)`` (module
    docstring)::

        P^h_ij = softmax_j( -||x_i W^{Q,h} - x_j W^{Q,h}||^2 / sqrt(d) )
        f^h(X) = P^h X A_h,            A_h = W^{Q,h} W^{Q,h}^T / sqrt(d)
        F(X)   = [f^1(X) W^{V,1}, ..., f^H(X) W^{V,H}] W^O

    The value path goes through ``A_h`` as in Kim et al. (and ACF eq. 9): the bound needs it. A
    value map ``P^h X W^{V,h}`` without ``A_h`` is not Lipschitz when ``W^{Q,h}`` has rank
    ``d < C`` (input components in its null space leave ``P`` alone but are multiplied by the
    attention's derivative). It is computed as ``P^h Y_h (W^{Q,h}^T W^{V,h}) / sqrt(d)`` with
    ``Y_h = X W^{Q,h}``.

    Certified bound (with ``phi(x) = x e^{x+1}``, ``phi^{-1}(N-1) = W0((N-1)/e)``)::

        Lip2(F) <= sqrt(N/d) (4 phi^{-1}(N-1) + 1) sqrt(sum_h ||W^{Q,h}||^4 ||W^{V,h}||^2) ||W^O||

    Differences from the papers' statements: (1) the weight factor is ``||W^{Q,h}||^4`` inside the
    root, not ``||W^{Q,h}||^2`` as printed in the theorem (ACF eq. 12 even has
    ``||W^Q||`` to the first power). ``f^h`` is quadratic in ``W^{Q,h}``: replacing ``W^Q`` by
    ``t W^Q`` gives ``f_t(X) = t f_1(t X)``, so ``Lip(f_t) = t^2 Lip(f_1)`` and a bound linear in
    ``||W^Q||`` fails for large ``t`` (``tests/test_lipschitz_attention.py`` shows it). Kim et al.'s
    single-head lemma gives ``sqrt(N/d) (4 phi^{-1}(N-1) + 1) ||W^{Q,h}||^2`` for ``f^h``; the
    concatenation adds squares. (2) ``phi^{-1}(N-1) = W0((N-1)/e)`` exactly, where ACF writes the
    looser ``W0(N/e)``.
    """

    def __init__(self, channels: int, heads: int = 1, normalize: bool = True) -> None:
        super().__init__(channels, heads, normalize)
        self.query_weight = self._projection()
        self.value_weight = self._projection()

    def _projection_weights(self) -> tuple[Tensor, ...]:
        return (self.query_weight,)

    def _mix(self) -> Tensor:
        """``W^{Q,h}^T W^{V,h} / sqrt(d)`` per head, ``[heads, d, d]``."""
        heads_q, heads_v = self._head_weights(self.query_weight), self._head_weights(self.value_weight)
        return heads_q.transpose(-1, -2) @ heads_v / math.sqrt(self.head_dim)

    def _scores_and_values(self, proj: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """``S_ij = (2 y_i.y_j - |y_j|^2) / sqrt(d)``: ``-||y_i - y_j||^2 / sqrt(d)`` without the
        row constant ``-|y_i|^2 / sqrt(d)``, which the softmax ignores; ``Z = Y W^{Q,h}^T W^{V,h} /
        sqrt(d)``."""
        (y,) = proj
        scale = math.sqrt(self.head_dim)
        sq = y.pow(2).sum(-1).unsqueeze(-2)
        return _baddbmm(sq, y, y.transpose(-1, -2), beta=-1.0 / scale, alpha=2.0 / scale), y @ self._mix()

    def _score_products(self, proj: tuple[Tensor, ...]) -> ScoreProducts:
        """``dS_ij = 2 (dy_i.y_j + (y_i - y_j).dy_j) / sqrt(d)``;
        ``Y* = 2 (S* Y + S*^T Y - colsum(S*) Y) / sqrt(d) + Z* (W^{Q,h}^T W^{V,h})^T / sqrt(d)``."""
        (y,) = proj
        c, mix, y_and_ones = 2.0 / math.sqrt(self.head_dim), self._mix(), _append_ones(y)

        def jvp(d_proj: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
            (dy,) = d_proj
            dot = (y * dy).sum(-1).unsqueeze(-2)  # y_j.dy_j
            # c (dy_i.y_j + y_i.dy_j - y_j.dy_j): one product of inner dimension 2d
            pairs = torch.cat([dy, y], dim=-1), torch.cat([y, dy], dim=-1).transpose(-1, -2)
            return _baddbmm(dot, *pairs, beta=-c, alpha=c), dy @ mix

        def vjp(g_scores: Tensor, g_values: Tensor) -> tuple[Tensor, ...]:
            transposed = g_scores.transpose(-1, -2) @ y_and_ones  # [S*^T Y, colsum(S*)]
            g_y = torch.addcmul(_baddbmm(transposed[..., :-1], g_scores, y), transposed[..., -1:], y, value=-1.0)
            return (c * g_y + g_values @ mix.transpose(-1, -2),)

        return jvp, vjp

    def raw_lipschitz_bound(self, tokens: int, norm: NormFunction = gram_spectral_norm) -> Tensor:
        q = norm(self._head_weights(self.query_weight))
        v = norm(self._head_weights(self.value_weight))
        o = norm(self.out_weight)
        const = math.sqrt(tokens / self.head_dim) * (4.0 * inverse_phi(tokens - 1) + 1.0)
        return const * torch.sqrt((q.pow(4) * v.pow(2)).sum()) * o


class _DotProductFamily(_TokenSelfAttention):
    """Dot-product attention with separate projections, per head::

        Q = X W^{Q,h},  K = X W^{K,h},  V = X W^{V,h},  out_h = softmax(Q K^T / c) V

    subclasses choose the score divisor ``c`` (:meth:`_score_divisor`)."""

    def __init__(self, channels: int, heads: int, normalize: bool) -> None:
        super().__init__(channels, heads, normalize)
        self.query_weight = self._projection()
        self.key_weight = self._projection()
        self.value_weight = self._projection()

    def _score_divisor(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor | float:
        raise NotImplementedError

    def _projection_weights(self) -> tuple[Tensor, ...]:
        return (self.query_weight, self.key_weight, self.value_weight)

    def _scores_and_values(self, proj: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        q, k, v = proj
        return (q / self._score_divisor(q, k, v)) @ k.transpose(-1, -2), v

    def _divisor_and_gradient(self, proj: tuple[Tensor, ...]) -> tuple[Tensor | float, tuple[Tensor, ...] | None]:
        """The divisor ``c`` and ``dc/d(Q, K, V)`` of every sample and head (autograd on the small
        graph of ``c``; ``None`` for a constant), differentiable when grad mode is enabled."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            inputs = tuple(t if t.requires_grad else t.detach().requires_grad_(True) for t in proj)
            c = self._score_divisor(*inputs)
            if not isinstance(c, Tensor):
                return c, None
            grads = torch.autograd.grad(c.sum(), inputs, create_graph=create_graph, materialize_grads=True)
        return (c if create_graph else c.detach()), grads

    def _score_products(self, proj: tuple[Tensor, ...]) -> ScoreProducts:
        """With ``S = Q K^T / c``: ``dS = ((dQ - Q dc / c) K^T + Q dK^T) / c``, ``dZ = dV``;
        ``Q* = S* K / c + c* dc/dQ``, ``K* = S*^T Q / c + c* dc/dK``, ``V* = Z* + c* dc/dV`` with
        ``c* = -<Q, S* K> / c^2``."""
        q, k, _ = proj

        def jvp(d_proj: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
            dq, dk, dv = d_proj
            c, grads = self._divisor_and_gradient(proj)
            if grads is not None:
                dc = sum((g * d).sum((-2, -1), keepdim=True) for g, d in zip(grads, d_proj))
                dq = dq - q * (dc / c)
            return _baddbmm((dq / c) @ k.transpose(-1, -2), q / c, dk.transpose(-1, -2)), dv

        def vjp(g_scores: Tensor, g_values: Tensor) -> tuple[Tensor, ...]:
            c, grads = self._divisor_and_gradient(proj)
            g_q, g_k = g_scores @ (k / c), g_scores.transpose(-1, -2) @ (q / c)
            if grads is None:
                return g_q, g_k, g_values
            g_c = -(q * g_q).sum((-2, -1), keepdim=True) / c
            return g_q + g_c * grads[0], g_k + g_c * grads[1], g_values + g_c * grads[2]

        return jvp, vjp


class LipNormSelfAttention(_DotProductFamily):
    r"""Dot-product self-attention with LipschitzNorm (Dasoulas, Scaman & Virmaux, "Lipschitz
    Normalization for Self-Attention Layers with Application to Graph Neural Networks", ICML 2021;
    ACF eq. 14), Lipschitz on all of ``R^{N x C}``.

    Per head and per sample, on the activations of this forward pass::

        Q = X W^{Q,h}, K = X W^{K,h}, V = X W^{V,h}
        u = ||Q||_F,  v = max_j ||k_j||,  w = max_j ||v_j||     (v, w: ||K^T||_(inf,2), ||V^T||_(inf,2))
        out_h = softmax( Q K^T / max{uv, uw, vw} ) V

    heads concatenated, then ``W^O``. (The divisor is clamped below at the dtype's smallest normal
    number; it is 0 only when ``Q K^T = 0``, and the clamp only shrinks the scores, which keeps the
    bound.) ``u`` is the Frobenius norm over all tokens, not the largest token norm: the sum over
    query rows in the bound below needs ``sum_i ||q_i||^2 / u^2 = 1``.

    Certified bound. ACF (eq. 10, 15) quotes Dasoulas et al.'s theorem as
    ``Lip <= e^{sqrt 3} sqrt(m/n) + 2 sqrt 6`` (``m = n = N`` here, about 10.55). That constant
    contains no projection norms, so it cannot certify this module for arbitrary weights, and the
    original statement (with its assumptions) was not available to check. We use instead the
    following bound, derived for exactly this map.
    The scores ``S = Q K^T / c`` are 0-homogeneous in ``X``, so the bound is global (no bounded
    input region is needed). Write ``a_i = ||q_i|| / u`` (``sum_i a_i^2 = 1``); since ``c >= uv``,
    ``|S_ij| <= a_i <= 1``. With ``d(PV) = dP V + P dV``:

    * ``P dV``: ``P_ij <= e^{2 a_i} / N``, so each column of ``P`` sums to at most
      ``sum_i e^{2 a_i} / N <= 1 + 2/sqrt(N) + (e^2 - 3)/N =: rho_N^2`` (using
      ``e^{2a} <= 1 + 2a + (e^2 - 3) a^2`` on ``[0, 1]``), and ``||P||_2 <= rho_N <= e``.
    * ``dP V``: row ``i`` is ``sum_j p_ij (v_j - vbar_i) ds_ij``, of norm ``<= w max_j |ds_ij|``.
      ``ds_ij = (dq_i.k_j + q_i.dk_j)/c - S_ij dc/c`` and ``c >= vw, uw`` give
      ``w |ds_ij| <= ||dq_i|| + a_i max_j ||dk_j|| + a_i Delta`` where, on each branch of the max,
      ``Delta`` is the sum of two of ``|du|, |dv|, |dw|`` (e.g. ``c = uv`` forces ``u, v >= w``).
      Summing over rows: ``||dP V||_F <= ||dQ||_F + ||dK||_F + Delta``.

    Hence, with spectral norms ``q_h, k_h, w_h`` of the head projections::

        L_h = q_h + k_h + (q_h + k_h + w_h - min(q_h, k_h, w_h)) + rho_N w_h
        Lip2(F) <= ||W^O|| sqrt(sum_h L_h^2)

    With unit-norm projections this is at most ``4 + e`` (about 6.72), below the quoted constant.
    The public ACF code computes the divisor once at construction and omits ``vw``; here it is
    recomputed from the activations at every call, as Dasoulas et al. define it.
    """

    def __init__(self, channels: int, heads: int = 1, normalize: bool = True) -> None:
        super().__init__(channels, heads, normalize)

    def _score_divisor(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        u = torch.linalg.vector_norm(q, dim=(-2, -1))  # [B, heads]
        kmax = torch.linalg.vector_norm(k, dim=-1).amax(-1)
        vmax = torch.linalg.vector_norm(v, dim=-1).amax(-1)
        c = torch.stack((u * kmax, u * vmax, kmax * vmax)).amax(0)
        return c.clamp_min(torch.finfo(c.dtype).tiny)[..., None, None]

    def raw_lipschitz_bound(self, tokens: int, norm: NormFunction = gram_spectral_norm) -> Tensor:
        q = norm(self._head_weights(self.query_weight))
        k = norm(self._head_weights(self.key_weight))
        w = norm(self._head_weights(self.value_weight))
        rho = math.sqrt(1.0 + 2.0 / math.sqrt(tokens) + (math.e**2 - 3.0) / tokens)
        top_two = q + k + w - torch.minimum(torch.minimum(q, k), w)
        per_head = q + k + top_two + rho * w
        return torch.sqrt(per_head.pow(2).sum()) * norm(self.out_weight)


class DotProductSelfAttention(_DotProductFamily):
    r"""Plain multi-head scaled dot-product self-attention (Vaswani et al. 2017)::

        out_h = softmax( X W^{Q,h} (X W^{K,h})^T / sqrt(d) ) X W^{V,h},   F = [out_1 .. out_H] W^O

    Not Lipschitz on an unbounded domain (Kim et al. 2021, Thm 3.1: the Jacobian grows with the
    input scale), so :meth:`lipschitz_bound` is ``math.inf`` and there is no ``normalize``
    option. Kept for the ACF ablation: inside ``x + g(x)`` it breaks the contraction that the
    fixed-point inverse and the log-det power series rely on.
    """

    def __init__(self, channels: int, heads: int = 1) -> None:
        super().__init__(channels, heads, normalize=False)

    def _score_divisor(self, q: Tensor, k: Tensor, v: Tensor) -> float:
        return math.sqrt(self.head_dim)

    def lipschitz_bound(self, tokens: int | None = None) -> float:
        """``math.inf``: dot-product attention has no finite Lipschitz constant."""
        return math.inf
