"""Finite differences and total variation of images and volumes, over a list of axes.

Everything here is a pure function of ``(B, C, *spatial)`` (or ``(C, *spatial)``) float
tensors whose last ``spatial_dims`` axes (2 for images, 3 for volumes or time series) are
spatial. One object, :class:`TotalVariation`, holds the choices that define the
regulariser (kind, colour coupling, smoothing, axes and spacing), validated once; the
solvers, the reference solvers and the public functions below all use it, so the same code
serves 2-D images, 3-D volumes and time.

Discretisation
--------------
Forward differences with a Neumann (mirror) boundary along each spatial axis ``a``, divided
by the sample distance ``h_a`` along it (``spacing``; 1 by default):

.. math::

    (\\partial_a u)_{k} = (u_{k + e_a} - u_{k}) / h_a,

zero on the last index of that axis. :func:`divergence` is the negative adjoint of
:func:`forward_differences`, so ``<grad u, p> = -<u, div p>`` holds exactly. A larger
``h_a`` couples the samples along axis ``a`` more weakly: a z-step three times the pixel
size, or a time step, given as ``spacing=(3, 1, 1)``.

Total variation variants
------------------------
Per sample, with the channel index ``c`` and the axes ``a``:

* ``kind="anisotropic"``: ``sum_c sum_a |d_a u_c|`` (the ``color`` option has no effect);
* ``kind="isotropic", color="separate"``: ``sum_c sqrt(sum_a (d_a u_c)**2)``;
* ``kind="isotropic", color="joint"``: ``sqrt(sum_c sum_a (d_a u_c)**2)`` — one gradient
  magnitude shared by all channels, which keeps colour edges aligned.

With ``eps > 0`` every magnitude ``t`` is replaced by its Huber smoothing
``t**2 / (2 eps)`` for ``t <= eps`` and ``t - eps / 2`` above; ``eps = 0`` is the exact,
non-smooth total variation.

``reduction="mean"`` divides the sum by the number of values ``B * C * prod(spatial)`` for
every variant, so that a weight means the same on any size and channel count; for the
anisotropic kind in 2-D this is exactly the classic "sum of absolute neighbour differences
over ``B*C*H*W``" loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .checks import as_batch, check_choice, check_spacing, check_spatial_dims
from .defaults import ColorMode, TVKind

Reduction = Literal["mean", "sum", "per_image"]

TV_KINDS: tuple[str, ...] = get_args(TVKind)
COLOR_MODES: tuple[str, ...] = get_args(ColorMode)
REDUCTIONS: tuple[str, ...] = get_args(Reduction)

__all__ = [
    "COLOR_MODES",
    "TV_KINDS",
    "ColorMode",
    "TVKind",
    "TVLoss",
    "TotalVariation",
    "divergence",
    "forward_differences",
    "total_variation",
    "tv_gradient",
]


@dataclass(frozen=True)
class TotalVariation:
    """The total-variation regulariser over the last ``spatial_dims`` axes, validated once.

    Attributes:
        kind: ``"isotropic"`` or ``"anisotropic"``.
        color: ``"joint"`` or ``"separate"`` (ignored for ``"anisotropic"``).
        eps: Huber smoothing radius ``>= 0``.
        spatial_dims: number of trailing spatial axes, 2 or 3.
        spacing: sample distance per spatial axis, ``None`` for the unit grid (also what
            an all-ones spacing is normalised to).

    Example:
        >>> reg = TotalVariation(spatial_dims=3, spacing=(3.0, 1.0, 1.0))
        >>> reg.value(torch.zeros(1, 1, 4, 5, 6)).tolist()
        [0.0]
    """

    kind: TVKind = "isotropic"
    color: ColorMode = "joint"
    eps: float = 0.0
    spatial_dims: int = 2
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, TV_KINDS)
        check_choice("color", self.color, COLOR_MODES)
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps}")
        dims = check_spatial_dims(self.spatial_dims)
        object.__setattr__(self, "spatial_dims", dims)
        object.__setattr__(self, "spacing", check_spacing(self.spacing, dims))

    @property
    def axes(self) -> tuple[int, ...]:
        """The spatial axes, as negative dimension indices in order (e.g. ``(-3, -2, -1)``)."""
        return tuple(range(-self.spatial_dims, 0))

    @property
    def joint(self) -> bool:
        """Whether all channels share one gradient magnitude per sample."""
        return self.kind == "isotropic" and self.color == "joint"

    def kernel_form(self) -> tuple[int, float, float]:
        """This regulariser in the compiled CPU iteration (:mod:`tvdenoise.kernel`): its
        code in ``_kernel.c`` and two parameters, which TV does not use."""
        if self.kind == "anisotropic":
            return 2, 0.0, 0.0
        return (0 if self.joint else 1), 0.0, 0.0

    def inverse_spacing(self) -> tuple[float | None, ...]:
        """``1 / h`` per axis, ``None`` where ``h`` is 1 (no multiplication needed)."""
        if self.spacing is None:
            return (None,) * self.spatial_dims
        return tuple(None if h == 1.0 else 1.0 / h for h in self.spacing)

    def batch(self, x: Tensor, name: str = "image") -> Tensor:
        """``x`` as a ``(B, C, *spatial)`` float tensor (see :func:`tvdenoise.checks.as_batch`)."""
        return as_batch(x, name, self.spatial_dims)

    def differences(self, u: Tensor) -> list[Tensor]:
        """Forward differences along each spatial axis, in axis order, each of ``u``'s shape."""
        result = []
        for axis, inv in zip(self.axes, self.inverse_spacing(), strict=True):
            n = u.shape[axis]
            d = _pad(u.narrow(axis, 1, n - 1) - u.narrow(axis, 0, n - 1), axis, 0, 1)
            result.append(d if inv is None else d * inv)
        return result

    def divergence(self, fields: Sequence[Tensor]) -> Tensor:
        """The negative adjoint of :meth:`differences` applied to one field per axis."""
        if len(fields) != self.spatial_dims:
            raise ValueError(
                f"divergence needs one field per spatial axis ({self.spatial_dims}), "
                f"got {len(fields)}"
            )
        out: Tensor | None = None
        for axis, inv, p in zip(self.axes, self.inverse_spacing(), fields, strict=True):
            inner = p.narrow(axis, 0, p.shape[axis] - 1)
            if inv is not None:
                inner = inner * inv
            part = _pad(inner, axis, 0, 1) - _pad(inner, axis, 1, 0)
            out = part if out is None else out + part
        assert out is not None
        return out

    def magnitudes(self, diffs: Sequence[Tensor]) -> Tensor:
        """The magnitudes the total variation sums, before smoothing; autograd-safe."""
        if self.kind == "anisotropic":
            return torch.cat([d.abs() for d in diffs], dim=1)
        squared = self._squared_norm(diffs)
        # sqrt has an infinite derivative at 0; route zeros around it so that autograd
        # returns the zero subgradient on flat areas instead of NaN.
        positive = squared > 0
        safe = torch.where(positive, squared, torch.ones_like(squared))
        return torch.where(positive, safe.sqrt(), torch.zeros_like(squared))

    def value(self, u: Tensor) -> Tensor:
        """The summed (smoothed) total variation per image of a ``(B, C, *spatial)`` batch."""
        return huber(self.magnitudes(self.differences(u)), self.eps).flatten(1).sum(dim=1)

    def dual_field(self, u: Tensor) -> list[Tensor]:
        """``grad u / max(eps, |grad u|)`` per axis (zero where the magnitude is zero)."""
        diffs = self.differences(u)
        if self.kind == "anisotropic":
            return [d / d.abs().clamp_min(self.eps) if self.eps > 0 else d.sign() for d in diffs]
        norm = self._norm(diffs)
        if self.eps > 0:
            norm.clamp_min_(self.eps)
        else:
            norm = torch.where(norm > 0, norm, torch.ones_like(norm))
        return [d / norm for d in diffs]

    def gradient(self, u: Tensor) -> Tensor:
        """Gradient of :meth:`value` (its zero-at-zero subgradient for ``eps == 0``)."""
        return -self.divergence(self.dual_field(u))

    def _squared_norm(self, fields: Sequence[Tensor]) -> Tensor:
        """The squared Euclidean norm over axes (and channels, for ``"joint"``) per sample."""
        squared = fields[0] * fields[0]
        for p in fields[1:]:
            squared = squared + p * p
        if self.color == "joint":
            squared = squared.sum(dim=1, keepdim=True)
        return squared

    def _norm(self, fields: Sequence[Tensor]) -> Tensor:
        return self._squared_norm(fields).sqrt_()

    def project(self, fields: Sequence[Tensor], radius: Tensor | float = 1.0) -> None:
        """Project a dual field onto the ball of ``radius`` per sample group, in place.

        The ball is the one whose support function is this total variation: per value
        for the anisotropic kind, per sample (and channel, for ``"separate"``) otherwise.
        ``radius`` is a number or a ``(B, 1, ...)`` tensor, one per image.
        """
        if self.kind == "anisotropic":
            for p in fields:
                if isinstance(radius, Tensor):
                    torch.minimum(torch.maximum(p, -radius), radius, out=p)
                else:
                    p.clamp_(-radius, radius)
            return
        norm = self._norm(fields)
        scale = torch.where(norm > radius, radius / norm.clamp_min(1e-300), torch.ones_like(norm))
        for p in fields:
            p.mul_(scale)


def _pad(x: Tensor, axis: int, before: int, after: int) -> Tensor:
    """Zero-pad ``x`` along the negative ``axis``."""
    return F.pad(x, (0, 0) * (-axis - 1) + (before, after))


def huber(t: Tensor, eps: float) -> Tensor:
    """Huber smoothing of magnitudes ``t >= 0``; ``t`` itself for ``eps == 0``."""
    if eps == 0:
        return t
    return torch.where(t <= eps, t * t / (2 * eps), t - eps / 2)


def forward_differences(
    u: Tensor, *, spatial_dims: int = 2, spacing: Sequence[float] | None = None
) -> tuple[Tensor, ...]:
    """Forward differences along each spatial axis with a Neumann boundary.

    Args:
        u: tensor of shape ``(..., *spatial)``.
        spatial_dims: number of trailing spatial axes (2 or 3).
        spacing: sample distance per spatial axis; the differences are divided by it.

    Returns:
        One tensor of the shape of ``u`` per spatial axis, in axis order (``(dy, dx)`` in
        2-D, ``(dz, dy, dx)`` in 3-D); each is zero on the last index of its axis.

    Example:
        >>> dy, dx = forward_differences(torch.arange(6.0).reshape(1, 2, 3))
        >>> dx[0, 0].tolist(), dy[0, 0].tolist()
        ([1.0, 1.0, 0.0], [3.0, 3.0, 3.0])
    """
    reg = TotalVariation(spatial_dims=spatial_dims, spacing=_spacing_tuple(spacing))
    return tuple(reg.differences(u))


def divergence(*fields: Tensor, spacing: Sequence[float] | None = None) -> Tensor:
    """Discrete divergence, the negative adjoint of :func:`forward_differences`.

    ``<forward_differences(u), p> == -<u, divergence(*p)>`` for all ``u``. The last index
    of each field along its own axis does not enter the result.

    Args:
        fields: one field per spatial axis, in axis order (``py, px`` in 2-D,
            ``pz, py, px`` in 3-D), each of shape ``(..., *spatial)``.
        spacing: sample distance per spatial axis, as given to :func:`forward_differences`.

    Returns:
        Tensor of the fields' shape.
    """
    reg = TotalVariation(spatial_dims=len(fields), spacing=_spacing_tuple(spacing))
    return reg.divergence(fields)


def _spacing_tuple(spacing: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if spacing is None else tuple(spacing)


def total_variation(
    x: Tensor,
    *,
    kind: TVKind = "isotropic",
    color: ColorMode = "joint",
    eps: float = 0.0,
    reduction: Reduction = "mean",
    weight: float | None = None,
    spatial_dims: int = 2,
    spacing: Sequence[float] | None = None,
) -> Tensor:
    """Total variation of images or volumes; differentiable by autograd.

    Args:
        x: float tensor ``(C, *spatial)`` or ``(B, C, *spatial)``.
        kind: ``"isotropic"`` (Euclidean gradient magnitude) or ``"anisotropic"``
            (the sum of the absolute differences).
        color: ``"joint"`` couples the channels in one magnitude per sample,
            ``"separate"`` treats each channel on its own. Ignored for ``"anisotropic"``.
        eps: Huber smoothing radius, ``>= 0``; ``0`` gives the exact total variation.
        reduction: ``"mean"`` — the sum divided by the number of values (a scalar);
            ``"sum"`` — the plain sum (a scalar); ``"per_image"`` — one mean per image,
            shape ``(B,)`` (``()`` for an input without batch axis).
        weight: optional factor the result is multiplied by.
        spatial_dims: number of trailing spatial axes (2: images, 3: volumes or time).
        spacing: sample distance per spatial axis (``None``: all 1).

    Returns:
        The total variation as described by ``reduction``.

    Example:
        >>> x = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
        >>> float(total_variation(x, kind="anisotropic"))
        0.5
        >>> volume = torch.zeros(1, 3, 4, 4)
        >>> volume[:, 1:] = 1.0
        >>> float(total_variation(volume, spatial_dims=3, reduction="sum"))
        16.0
    """
    check_choice("reduction", reduction, REDUCTIONS)
    reg = TotalVariation(kind, color, eps, spatial_dims, _spacing_tuple(spacing))
    batch = reg.batch(x)
    per_image = reg.value(batch)
    if reduction == "sum":
        result = per_image.sum()
    elif reduction == "mean":
        result = per_image.sum() / batch.numel()
    else:
        result = per_image / batch[0].numel()
        if x.dim() == spatial_dims + 1:
            result = result[0]
    return result if weight is None else result * weight


def tv_gradient(
    u: Tensor,
    *,
    kind: TVKind = "isotropic",
    color: ColorMode = "joint",
    eps: float = 0.0,
    spatial_dims: int = 2,
    spacing: Sequence[float] | None = None,
) -> Tensor:
    """Gradient of the summed, smoothed total variation, written out by hand.

    For ``eps > 0`` this is the exact gradient of
    ``total_variation(u, ..., reduction="sum")`` with the same options; for ``eps == 0``
    it is the subgradient that is zero where the magnitude is zero. It equals
    ``-divergence(p)`` with ``p = grad u / max(eps, |grad u|)``.

    Args:
        u: float tensor ``(C, *spatial)`` or ``(B, C, *spatial)``.
        kind, color, eps, spatial_dims, spacing: as in :func:`total_variation`.

    Returns:
        Tensor of the shape of ``u``.
    """
    reg = TotalVariation(kind, color, eps, spatial_dims, _spacing_tuple(spacing))
    return reg.gradient(reg.batch(u)).reshape(u.shape)


class TVLoss(nn.Module):
    """Total variation as a loss module; a thin wrapper around :func:`total_variation`.

    Args:
        weight: factor the total variation is multiplied by (default 1).
        kind, color, eps, reduction, spatial_dims, spacing: as in :func:`total_variation`.

    Example:
        >>> loss = TVLoss(weight=0.1)
        >>> x = torch.rand(2, 3, 8, 8, requires_grad=True)
        >>> loss(x).backward()
    """

    def __init__(
        self,
        weight: float = 1.0,
        *,
        kind: TVKind = "isotropic",
        color: ColorMode = "joint",
        eps: float = 0.0,
        reduction: Reduction = "mean",
        spatial_dims: int = 2,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        self.regulariser = TotalVariation(kind, color, eps, spatial_dims, _spacing_tuple(spacing))
        self.weight = weight
        self.reduction: Reduction = reduction

    def forward(self, x: Tensor) -> Tensor:
        reg = self.regulariser
        return total_variation(
            x,
            kind=reg.kind,
            color=reg.color,
            eps=reg.eps,
            reduction=self.reduction,
            weight=self.weight,
            spatial_dims=reg.spatial_dims,
            spacing=reg.spacing,
        )

    def extra_repr(self) -> str:
        reg = self.regulariser
        return (
            f"weight={self.weight}, kind={reg.kind!r}, color={reg.color!r}, "
            f"eps={reg.eps}, reduction={self.reduction!r}, spatial_dims={reg.spatial_dims}, "
            f"spacing={reg.spacing}"
        )
