"""Second-order total generalised variation (TGV²) over a list of axes, and its solvers.

TGV (Bredies, Kunisch and Pock, 2010) measures an image ``u`` against a vector field ``w``
(one component per spatial axis) that it may subtract from the gradient:

.. math::

    \\mathrm{TGV}^2(u) = \\min_w\\; \\alpha_1 \\sum |\\nabla u - w|
        + \\alpha_0 \\sum |\\mathcal{E} w|,

with ``E w`` the symmetrised gradient, ``(E w)_{ab} = (d_a w_b + d_b w_a) / 2``. Where the
image is a ramp, ``w`` follows its gradient and only the change of slope costs; at an
edge, ``w`` stays smooth and the jump costs as in total variation. So TGV keeps edges like
TV but leaves no staircase on smooth shading: it suits micrographs, astronomy and other
smooth scientific images; on photographs full of texture it gains little.

Discretisation: ``d_a`` are the forward differences of :class:`tvdenoise.tv.TotalVariation`
(Neumann boundary, divided by the ``spacing`` of axis ``a``), for ``grad u`` and for ``E w``
alike. ``E w`` has one component per pair ``a <= b``; its norm counts the off-diagonal
components twice (the Frobenius norm of the symmetric matrix), and
:meth:`TotalGeneralisedVariation.symmetrised_divergence` is the negative adjoint of ``E`` for
that inner product. Both magnitudes are isotropic and, with ``color="joint"``, shared by all
channels (one magnitude per sample, as the joint TV); ``color="separate"`` gives each channel
its own. With ``eps > 0`` each magnitude is Huber-smoothed as in the TV, so the energy has
a gradient for Adam.

Weights: ``alpha1 = weight`` (the first-order term plays the part of the TV weight and has
its units) and ``alpha0 = ratio * weight``; ``ratio`` is a length in samples, measured by
``scripts/eval_tgv.py``. In the solver's energy both terms are divided by ``N`` like the TV:

.. math::

    E(u, w) = \\frac{1}{N}\\sum (u - f)^2 + \\frac{w_1}{N}\\Big(\\sum h_\\varepsilon|\\nabla u - w|
        + r \\sum h_\\varepsilon|\\mathcal{E} w|_F\\Big).

Two solvers minimise it over ``(u, w)``: the Adam solver of :mod:`tvdenoise.solver` through
:class:`TGVWorkspace` (the same step, schedule and stopping rule as for TV, on ``u`` and
``w`` stacked into one tensor; for images and volumes on the CPU, the compiled kernel of
:mod:`tvdenoise.kernel` takes its steps in one pass), and :func:`reference_tgv`, a
certified primal-dual solver for checking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor

from .checks import check_choice
from .fidelity import DataTerm
from .solver import _huber_sum, weights_per_image
from .tv import COLOR_MODES, ColorMode, TotalVariation, TVKind, huber

__all__ = [
    "DEFAULT_RATIO",
    "FIELD_STEP",
    "Regulariser",
    "TGVWorkspace",
    "TotalGeneralisedVariation",
    "reference_tgv",
]

#: ``alpha0 / alpha1``, in samples (``scripts/eval_tgv.py --ratios`` measures the choice).
DEFAULT_RATIO = 5.0
#: Adam's step on the field ``w`` is ``FIELD_STEP / weight`` times its step on ``u``: ``u``
#: travels a distance that grows with the weight, ``w`` (a slope) does not. Chosen by the
#: distance to the certified minimiser after the default iterations (2-D and 3-D cases of
#: tests/test_tgv.py) and the energy reached on micrographs.
FIELD_STEP = 0.25


@dataclass(frozen=True)
class TotalGeneralisedVariation:
    """Second-order TGV over the last ``spatial_dims`` axes, validated once.

    Attributes:
        ratio: ``alpha0 / alpha1 > 0``, the weight of the symmetrised gradient of ``w``
            relative to the first-order term, a length in samples.
        color: ``"joint"`` (one magnitude per sample for all channels) or ``"separate"``.
        eps: Huber smoothing radius ``>= 0`` of both magnitudes.
        spatial_dims: number of trailing spatial axes, 2 or 3.
        spacing: sample distance per spatial axis, ``None`` for the unit grid.

    Example:
        >>> reg = TotalGeneralisedVariation(spatial_dims=3)
        >>> ramp = torch.arange(5.0).expand(1, 1, 3, 4, 5)
        >>> w = [torch.zeros_like(ramp), torch.zeros_like(ramp), torch.ones_like(ramp)]
        >>> reg.value(ramp, w).tolist()  # the ramp's slope is w: only the boundary costs
        [12.0]
    """

    ratio: float = DEFAULT_RATIO
    color: ColorMode = "joint"
    eps: float = 0.0
    spatial_dims: int = 2
    spacing: tuple[float, ...] | None = None
    #: TGV's magnitudes are Euclidean (the automatic weight's rule reads this).
    kind: ClassVar[TVKind] = "isotropic"

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, int | float) and math.isfinite(self.ratio)):
            raise ValueError(f"ratio must be a finite number > 0, got {self.ratio!r}")
        if not self.ratio > 0:
            raise ValueError(f"ratio must be a finite number > 0, got {self.ratio!r}")
        check_choice("color", self.color, COLOR_MODES)
        # Validates eps, spatial_dims and spacing (and normalises the latter two).
        first = self.first_order
        object.__setattr__(self, "spatial_dims", first.spatial_dims)
        object.__setattr__(self, "spacing", first.spacing)

    @property
    def first_order(self) -> TotalVariation:
        """The isotropic TV with the same options, whose differences TGV uses."""
        return TotalVariation("isotropic", self.color, self.eps, self.spatial_dims, self.spacing)

    @property
    def axes(self) -> tuple[int, ...]:
        """The spatial axes, as negative dimension indices in order."""
        return tuple(range(-self.spatial_dims, 0))

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """The components ``(a, b)``, ``a <= b``, of a symmetrised gradient, in order."""
        n = self.spatial_dims
        return [(a, b) for a in range(n) for b in range(a, n)]

    def batch(self, x: Tensor, name: str = "image") -> Tensor:
        """``x`` as a ``(B, C, *spatial)`` float tensor."""
        return self.first_order.batch(x, name)

    def differences(self, u: Tensor) -> list[Tensor]:
        """Forward differences along each spatial axis (see :class:`TotalVariation`)."""
        return self.first_order.differences(u)

    def divergence(self, fields: Sequence[Tensor]) -> Tensor:
        """The negative adjoint of :meth:`differences`."""
        return self.first_order.divergence(fields)

    def symmetrised_gradient(self, w: Sequence[Tensor]) -> list[Tensor]:
        """``E w``: ``d_a w_a`` on the diagonal, ``(d_a w_b + d_b w_a) / 2`` off it, per pair."""
        self._check_fields("w", w, self.spatial_dims)
        d = [self.differences(component) for component in w]  # d[b][a] = d_a w_b
        return [d[a][a] if a == b else 0.5 * (d[b][a] + d[a][b]) for a, b in self.pairs]

    def symmetrised_divergence(self, q: Sequence[Tensor]) -> list[Tensor]:
        """The negative adjoint of :meth:`symmetrised_gradient` for the Frobenius product.

        ``sum_pairs m_ab <E w, q>_ab = -sum_a <w_a, div q_a>`` with ``m_ab`` 1 on the
        diagonal and 2 off it; ``(div q)_a = sum_b div_b q_ab``, ``q`` symmetric.
        """
        self._check_fields("q", q, len(self.pairs))
        index = {pair: k for k, pair in enumerate(self.pairs)}
        n = self.spatial_dims
        return [
            self.divergence([q[index[min(a, b), max(a, b)]] for b in range(n)]) for a in range(n)
        ]

    def pair_weights(self) -> list[float]:
        """``m_ab``: how often each stored component counts in the Frobenius norm."""
        return [1.0 if a == b else 2.0 for a, b in self.pairs]

    def _check_fields(self, name: str, fields: Sequence[Tensor], count: int) -> None:
        if len(fields) != count:
            raise ValueError(
                f"{name} needs {count} fields for spatial_dims={self.spatial_dims}, "
                f"got {len(fields)}"
            )

    def _magnitude(self, fields: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
        squared = sum(
            (m * f * f for m, f in zip(weights, fields, strict=True)), torch.zeros_like(fields[0])
        )
        if self.color == "joint":
            squared = squared.sum(dim=1, keepdim=True)
        # Autograd-safe square root: the zero subgradient where the magnitude is zero.
        positive = squared > 0
        safe = torch.where(positive, squared, torch.ones_like(squared))
        return torch.where(positive, safe.sqrt(), torch.zeros_like(squared))

    def value(self, u: Tensor, w: Sequence[Tensor]) -> Tensor:
        """``sum h(|grad u - w|) + ratio * sum h(|E w|)`` per image of a ``(B, C, *spatial)``
        batch, for a given field ``w`` (one tensor of ``u``'s shape per axis);
        differentiable by autograd. Its minimum over ``w`` is TGV² with ``alpha1 = 1``."""
        self._check_fields("w", w, self.spatial_dims)
        first = [d - c for d, c in zip(self.differences(u), w, strict=True)]
        ones = [1.0] * self.spatial_dims
        a = huber(self._magnitude(first, ones), self.eps).flatten(1).sum(1)
        sym = self.symmetrised_gradient(w)
        b = huber(self._magnitude(sym, self.pair_weights()), self.eps).flatten(1).sum(1)
        return a + self.ratio * b

    def gradient(self, u: Tensor, w: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The gradient of :meth:`value` in ``u`` and in each component of ``w``."""
        first = [d - c for d, c in zip(self.differences(u), w, strict=True)]
        p = _normalised(first, self._norm(first, [1.0] * self.spatial_dims))
        q = self.symmetrised_gradient(w)
        q = _normalised(q, self._norm(q, self.pair_weights()))
        grad_u = -self.divergence(p)
        back = self.symmetrised_divergence(q)
        grad_w = [-pa - self.ratio * ba for pa, ba in zip(p, back, strict=True)]
        return grad_u, grad_w

    def _norm(self, fields: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
        """``max(eps, |fields|)`` (1 where the magnitude is zero for ``eps == 0``)."""
        norm = self._magnitude(fields, weights)
        if self.eps > 0:
            return norm.clamp_min(self.eps)
        return torch.where(norm > 0, norm, torch.ones_like(norm))

    def kernel_form(self) -> tuple[int, float, float]:
        """This regulariser in the compiled CPU iteration (:mod:`tvdenoise.kernel`): its
        code in ``_kernel.c``, the ratio and :data:`FIELD_STEP`."""
        return (3 if self.color == "joint" else 4), self.ratio, FIELD_STEP

    def workspace(
        self, f: Tensor, half_weight: Tensor, term: DataTerm, observed: Tensor | None = None
    ) -> TGVWorkspace:
        """The Adam solver's buffers and gradient for data ``f`` (see :class:`TGVWorkspace`)."""
        return TGVWorkspace(f, half_weight, self, term, observed)


def _normalised(fields: Sequence[Tensor], norm: Tensor) -> list[Tensor]:
    return [f / norm for f in fields]


#: Either regulariser; the Adam solver and the automatic weight take both.
Regulariser = TotalVariation | TotalGeneralisedVariation


class TGVWorkspace:
    """Preallocated buffers and the hand-written gradient of the TGV energy for Adam.

    The solver variable is ``x = (u, w_1 / s, ..., w_n / s)`` stacked along the channel
    axis, ``(B, (1 + n) C, *spatial)``, so that Adam's fused step updates both at once;
    ``w`` starts at zero (TGV starts as TV). Storing ``w / s``, ``s = FIELD_STEP / weight``,
    makes Adam's steps on ``w`` ``s`` times those on ``u``: ``w`` is a slope whose size
    does not grow with the weight as the distance ``u`` travels does. Buffers, made when
    PyTorch's operations first need them: one field per axis (``grad u - w``), one per pair
    (``E w``), two differences, the gradient the size of ``x`` and a magnitude.
    """

    def __init__(
        self,
        f: Tensor,
        half_weight: Tensor,
        reg: TotalGeneralisedVariation,
        term: DataTerm,
        observed: Tensor | None = None,
    ) -> None:
        if term.name != "gaussian":
            raise ValueError(f"reg='tgv' supports noise='gaussian' only, got noise={term.name!r}")
        self.f = f
        self.observed = observed
        self.term = term
        self.half_weight = half_weight
        self.reg = reg
        self.channels = f.shape[1]
        # Per image: w / s is stored, s = FIELD_STEP / weight (weight 0: w stays 0).
        weight = (2 * half_weight).clamp_min(1e-6)
        self.field_scale = (FIELD_STEP / weight).reshape(-1, *([1] * (f.dim() - 1)))
        self.inverse_spacing = reg.first_order.inverse_spacing()
        #: The solver variable's shape: the image and one field component per axis.
        self.shape = (f.shape[0], (1 + reg.spatial_dims) * f.shape[1], *f.shape[2:])

    # The buffers are made at first use: the compiled kernel (tvdenoise.kernel) needs none.
    @cached_property
    def first(self) -> list[Tensor]:
        """``grad u - w``, one field per axis."""
        return [torch.empty_like(self.f) for _ in self.reg.axes]

    @cached_property
    def sym(self) -> list[Tensor]:
        """``E w``, one field per pair of axes."""
        return [torch.zeros_like(self.f) for _ in self.reg.pairs]

    @cached_property
    def scratch(self) -> list[Tensor]:
        """Two buffers the size of the image."""
        return [torch.zeros_like(self.f), torch.zeros_like(self.f)]

    @cached_property
    def grad(self) -> Tensor:
        """The gradient, the size of the solver variable."""
        return self.f.new_empty(self.shape)

    @cached_property
    def norm(self) -> Tensor:
        """A magnitude: one per sample for joint colour, one per value for separate."""
        f = self.f
        channels = 1 if self.reg.color == "joint" else f.shape[1]
        return f.new_empty((f.shape[0], channels, *f.shape[2:]))

    def variables(self, u: Tensor) -> Tensor:
        """The solver variable for the starting image ``u`` (``w = 0``), or for ``u`` and
        ``w`` stacked along the channel axis (as :meth:`extra` gives them)."""
        if u.shape[1] == self.shape[1]:
            x = u.clone()
            x[:, self.channels :] /= self.field_scale
            return x
        x = u.new_zeros(self.shape)
        x[:, : self.channels] = u
        return x

    def image(self, x: Tensor) -> Tensor:
        """The image part ``u`` of the solver variable (a view)."""
        return x[:, : self.channels]

    def extra(self, x: Tensor) -> Tensor:
        """The field ``w`` of the solver variable, its components along the channel axis."""
        return x[:, self.channels :] * self.field_scale

    def field(self, x: Tensor) -> list[Tensor]:
        """The stored field ``w / field_scale`` of the solver variable, one view per axis."""
        c = self.channels
        return [x[:, (1 + a) * c : (2 + a) * c] for a in range(self.reg.spatial_dims)]

    def _difference(self, src: Tensor, a: int, out: Tensor, *, full: bool) -> None:
        """``out <- d_a src``; with ``full`` the last slice along ``a`` is zeroed, else it
        is left as it is (zero in buffers written only this way)."""
        axis = self.reg.axes[a]
        n = src.shape[axis]
        torch.sub(
            src.narrow(axis, 1, n - 1), src.narrow(axis, 0, n - 1), out=out.narrow(axis, 0, n - 1)
        )
        if full:
            out.narrow(axis, n - 1, 1).zero_()
        inv = self.inverse_spacing[a]
        if inv is not None:
            out.mul_(inv)

    def _add_adjoint(self, out: Tensor, p: Tensor, a: int, scale: float = 1.0) -> None:
        """``out += scale * d_a^T p`` (the last slice of ``p`` along ``a`` does not enter)."""
        axis = self.reg.axes[a]
        n = p.shape[axis]
        inv = self.inverse_spacing[a]
        s = scale if inv is None else scale * inv
        inner = p.narrow(axis, 0, n - 1)
        out.narrow(axis, 0, n - 1).sub_(inner, alpha=s)
        out.narrow(axis, 1, n - 1).add_(inner, alpha=s)

    def _fields(self, x: Tensor) -> None:
        """``first <- grad u - w`` and ``sym <- E w``."""
        u, w = self.image(x), self.field(x)
        for a, (p, wa) in enumerate(zip(self.first, w, strict=True)):
            self._difference(u, a, p, full=True)
            p.addcmul_(wa, self.field_scale, value=-1.0)
        for k, (a, b) in enumerate(self.reg.pairs):
            if a == b:
                self._difference(w[a], a, self.sym[k], full=False)
                self.sym[k].mul_(self.field_scale)
            else:
                self._difference(w[b], a, self.scratch[0], full=True)
                self._difference(w[a], b, self.scratch[1], full=True)
                torch.add(self.scratch[0], self.scratch[1], out=self.sym[k])
                self.sym[k].mul_(0.5 * self.field_scale)

    def _magnitudes(self, fields: list[Tensor], pairs: bool) -> Tensor:
        """``|fields|`` (Frobenius for pairs) in the norm buffer.

        Accumulated channel by channel in elementwise passes, straight into the norm
        (for joint colour, a reduction over the short channel axis is slower).
        """
        weights = self.reg.pair_weights() if pairs else [1.0] * len(fields)
        channels = range(fields[0].shape[1]) if self.reg.color == "joint" else [None]
        terms = [
            (field if c is None else field.narrow(1, c, 1), m)
            for field, m in zip(fields, weights, strict=True)
            for c in channels
        ]
        (first, m), rest = terms[0], terms[1:]
        torch.mul(first, first, out=self.norm)
        if m != 1.0:
            self.norm.mul_(m)
        for plane, m in rest:
            self.norm.addcmul_(plane, plane, value=m)
        return self.norm.sqrt_()

    def gradient(self, x: Tensor) -> Tensor:
        """Half the energy gradient times ``N`` in ``(u, w)``, in the gradient buffer."""
        self._fields(x)
        eps = self.reg.eps
        out = self.grad
        c = self.channels
        gu, gw = out[:, :c], self.field(out)
        torch.sub(self.image(x), self.f, out=gu)
        if self.observed is not None:  # no fidelity where a value is missing
            gu.mul_(self.observed)
        for g in gw:
            g.zero_()
        # p <- (w1 / 2) (grad u - w) / max(eps, |.|); q likewise with the ratio.
        scale = self._magnitudes(self.first, False).clamp_min_(eps).reciprocal_()
        scale.mul_(self.half_weight)
        for a, p in enumerate(self.first):
            p.mul_(scale)
            self._add_adjoint(gu, p, a)
            gw[a].sub_(p)
        scale = self._magnitudes(self.sym, True).clamp_min_(eps).reciprocal_()
        scale.mul_(self.half_weight).mul_(self.reg.ratio)
        for k, (a, b) in enumerate(self.reg.pairs):
            q = self.sym[k].mul_(scale)
            self._add_adjoint(gw[a], q, b)
            if a != b:
                self._add_adjoint(gw[b], q, a)
        for g in gw:
            g.mul_(self.field_scale)
        return out

    def energy(self, x: Tensor) -> Tensor:
        """``E(u, w)`` per image, computed in the workspace's buffers."""
        self._fields(x)
        n = self.f[0].numel()
        eps = self.reg.eps
        first = _huber_sum(self._magnitudes(self.first, False), eps)
        second = _huber_sum(self._magnitudes(self.sym, True), eps)
        values = self.term.variable_value(self.image(x), self.f, self.scratch[1])
        if self.observed is not None:
            values = values * self.observed
        fidelity = values.flatten(1).mean(1)
        return fidelity + 2 * self.half_weight.reshape(-1) * (first + self.reg.ratio * second) / n


def reference_tgv(
    noisy: Tensor,
    weight: float | Tensor,
    *,
    ratio: float = DEFAULT_RATIO,
    color: ColorMode = "joint",
    eps: float = 0.0,
    rms_tol: float = 1e-4,
    max_iter: int = 200_000,
    dtype: torch.dtype = torch.float64,
    spatial_dims: int = 2,
    spacing: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Minimise the TGV energy (Gaussian noise) to a certified tolerance.

    Method: the primal-dual algorithm of Chambolle and Pock on the saddle problem, per
    image with ``lam1 = weight / 2``, ``lam0 = ratio * lam1`` (the energy times ``N / 2``):

    .. math::

        \\min_{u, w} \\max_{|p| \\le \\lambda_1, |q|_F \\le \\lambda_0}
        \\tfrac12\\|u - f\\|^2 + \\langle \\nabla u - w, p\\rangle
        + \\langle \\mathcal{E} w, q\\rangle_F
        - \\tfrac{\\varepsilon}{2\\lambda_1}\\|p\\|^2
        - \\tfrac{\\varepsilon}{2\\lambda_0}\\|q\\|_F^2 .

    Certificate: the dual problem needs ``p = E* q``; from the current ``q`` the pair
    ``(theta E* q, theta q)``, scaled by the largest ``theta <= 1`` that keeps
    ``|E* q| <= lam1``, is dual feasible, with dual value
    ``||f||^2 / 2 - ||f + div p||^2 / 2 - eps / (2 lam1) ||p||^2 - eps / (2 lam0) ||q||_F^2``.
    The primal problem is 1-strongly convex in ``u``, so ``||u - u*||^2 / 2`` is at most the
    duality gap; the solver stops once ``sqrt(2 gap / N)``, a bound on the RMS distance of
    ``u`` to the exact minimiser, is below ``rms_tol`` for every image.

    Args:
        noisy: ``(C, *spatial)`` or ``(B, C, *spatial)`` float tensor ``f``.
        weight: ``w >= 0``, a number or one per image.
        ratio, color, eps, spatial_dims, spacing: as in :class:`TotalGeneralisedVariation`.
        rms_tol: stop once the certified RMS distance to the minimiser is below this.
        max_iter: hard cap on iterations.
        dtype: working precision (float64 by default).

    Returns:
        ``(restored, rms_bound)``: the minimiser in ``noisy``'s shape and dtype, not
        clipped, and the per-image certified bound on its RMS error, shape ``(B,)``.

    Example:
        >>> f = torch.rand(1, 9, 11, dtype=torch.float64)
        >>> u, bound = reference_tgv(f, 0.1, eps=3e-3, rms_tol=1e-4)
        >>> bool(bound.max() <= 1e-4)
        True
    """
    reg = TotalGeneralisedVariation(
        ratio, color, eps, spatial_dims, None if spacing is None else tuple(spacing)
    )
    f = reg.batch(noisy, "noisy").to(dtype)
    b = f.shape[0]
    n = f[0].numel()
    weights = weights_per_image(weight, b, f)
    lam1 = (weights / 2).reshape(b, *([1] * (f.dim() - 1)))
    lam0 = ratio * lam1
    tiny = torch.finfo(dtype).tiny
    spacing_ = reg.spacing or (1.0,) * reg.spatial_dims
    grad_sq = 4.0 * sum(1.0 / (h * h) for h in spacing_)
    # ||K||^2 <= max(2 ||grad||^2, 2 + ||E||^2) with ||E||^2 <= ||grad||^2.
    norm_sq = max(2 * grad_sq, 2 + grad_sq)
    # Balance the primal (intensities) and dual (|p| <= lam) scales.
    tau = (0.02 / lam1.clamp_min(1e-12)).clamp(1e-3, 1.0)
    sigma = 0.99 / (norm_sq * tau)
    smooth1 = eps / lam1.clamp_min(tiny)
    smooth0 = eps / lam0.clamp_min(tiny)
    tgv = reg
    pw = reg.pair_weights()
    u = f.clone()
    w = [torch.zeros_like(f) for _ in reg.axes]
    u_bar, w_bar = u.clone(), [c.clone() for c in w]
    p = [torch.zeros_like(f) for _ in reg.axes]
    q = [torch.zeros_like(f) for _ in reg.pairs]
    bound = torch.full((b,), math.inf, dtype=dtype, device=f.device)
    for it in range(max_iter):
        g = tgv.differences(u_bar)
        p = [
            (pa + sigma * (ga - wa)) / (1 + sigma * smooth1)
            for pa, ga, wa in zip(p, g, w_bar, strict=True)
        ]
        _project(p, lam1, [1.0] * len(p), color)
        e = tgv.symmetrised_gradient(w_bar)
        q = [(qa + sigma * ea) / (1 + sigma * smooth0) for qa, ea in zip(q, e, strict=True)]
        _project(q, lam0, pw, color)
        u_new = (u + tau * tgv.divergence(p) + tau * f) / (1 + tau)
        back = tgv.symmetrised_divergence(q)
        w_new = [wa + tau * (pa + ba) for wa, pa, ba in zip(w, p, back, strict=True)]
        u_bar = 2 * u_new - u
        w_bar = [2 * new - old for new, old in zip(w_new, w, strict=True)]
        u, w = u_new, w_new
        if it % 50 == 49 or it == max_iter - 1:
            bound = _tgv_bound(u, w, q, f, lam1, lam0, reg, n)
            if bool((bound <= rms_tol).all()):
                break
    return u.to(noisy.dtype).reshape(noisy.shape), bound


def _project(fields: list[Tensor], radius: Tensor, weights: Sequence[float], color: str) -> None:
    """Scale ``fields`` in place onto the ball ``|fields| <= radius`` per sample group."""
    squared = sum(
        (m * x * x for m, x in zip(weights, fields, strict=True)), torch.zeros_like(fields[0])
    )
    if color == "joint":
        squared = squared.sum(dim=1, keepdim=True)
    norm = squared.sqrt()
    scale = torch.where(norm > radius, radius / norm.clamp_min(1e-300), torch.ones_like(norm))
    for x in fields:
        x.mul_(scale)


def _tgv_bound(
    u: Tensor,
    w: list[Tensor],
    q: list[Tensor],
    f: Tensor,
    lam1: Tensor,
    lam0: Tensor,
    reg: TotalGeneralisedVariation,
    n: int,
) -> Tensor:
    """``sqrt(2 gap / N)`` per image for the primal ``(u, w)`` and the dual built from ``q``."""
    flat1, flat0 = lam1.reshape(-1), lam0.reshape(-1)
    ones = [1.0] * reg.spatial_dims
    first = [d - c for d, c in zip(reg.differences(u), w, strict=True)]
    sym = reg.symmetrised_gradient(w)
    primal = 0.5 * (u - f).square().flatten(1).sum(1)
    primal = primal + flat1 * huber(reg._magnitude(first, ones), reg.eps).flatten(1).sum(1)
    primal = primal + flat0 * huber(reg._magnitude(sym, reg.pair_weights()), reg.eps).flatten(
        1
    ).sum(1)
    # Dual feasible pair: p = E* q = -div q, scaled into |p| <= lam1.
    p = [-x for x in reg.symmetrised_divergence(q)]
    size = reg._magnitude(p, ones).flatten(1).amax(1)
    theta = (flat1 / size.clamp_min(1e-300)).clamp_max(1.0)
    t = theta.reshape(-1, *([1] * (f.dim() - 1)))
    p = [x * t for x in p]
    qs = [x * t for x in q]
    p_sq = sum((x.square().flatten(1).sum(1) for x in p), torch.zeros_like(flat1))
    q_sq = sum(
        (m * x.square().flatten(1).sum(1) for m, x in zip(reg.pair_weights(), qs, strict=True)),
        torch.zeros_like(flat1),
    )
    v = f + reg.divergence(p)
    dual = 0.5 * f.square().flatten(1).sum(1) - 0.5 * v.square().flatten(1).sum(1)
    tiny = torch.finfo(f.dtype).tiny
    dual = (
        dual
        - reg.eps / (2 * flat1.clamp_min(tiny)) * p_sq
        - reg.eps / (2 * flat0.clamp_min(tiny)) * q_sq
    )
    gap = (primal - dual).clamp_min(0)
    return torch.sqrt(2 * gap / n)
