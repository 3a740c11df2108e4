"""Finite differences and total variation of image tensors.

Everything here is a pure function of ``(B, C, H, W)`` (or ``(C, H, W)``) float tensors.

Discretisation
--------------
Forward differences with a Neumann (mirror) boundary: the difference past the last row
or column is zero. For an image ``u``,

.. math::

    (\\partial_y u)_{i,j} = u_{i+1,j} - u_{i,j}, \\qquad
    (\\partial_x u)_{i,j} = u_{i,j+1} - u_{i,j},

and both are zero on the last row / column respectively. :func:`divergence` is the
negative adjoint of :func:`forward_differences`, so ``<grad u, p> = -<u, div p>`` holds
exactly.

Total variation variants
------------------------
Per pixel ``(i, j)`` of image ``b``, with the channel index ``c``:

* ``kind="anisotropic"``: ``sum_c |dy_c| + |dx_c|`` (the ``color`` option has no effect);
* ``kind="isotropic", color="separate"``: ``sum_c sqrt(dy_c**2 + dx_c**2)``;
* ``kind="isotropic", color="joint"``: ``sqrt(sum_c dy_c**2 + dx_c**2)`` — one gradient
  magnitude shared by all channels, which keeps colour edges aligned.

With ``eps > 0`` every magnitude ``t`` is replaced by its Huber smoothing
``t**2 / (2 eps)`` for ``t <= eps`` and ``t - eps / 2`` above; ``eps = 0`` is the exact,
non-smooth total variation.

``reduction="mean"`` divides the sum by ``B * C * H * W`` for every variant, so that a
weight means the same on any image size and channel count; for the anisotropic kind this
is exactly the classic "sum of absolute neighbour differences over ``B*C*H*W``" loss.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

TVKind = Literal["isotropic", "anisotropic"]
ColorMode = Literal["joint", "separate"]
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
    "divergence",
    "forward_differences",
    "total_variation",
    "tv_gradient",
]


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` if ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def as_batch(x: Tensor, name: str = "image") -> Tensor:
    """Return ``x`` as a ``(B, C, H, W)`` floating tensor (a view when ``x`` is 3-D)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() == 4:
        return x
    raise ValueError(f"{name} must have shape (C, H, W) or (B, C, H, W), got {tuple(x.shape)}")


def forward_differences(u: Tensor) -> tuple[Tensor, Tensor]:
    """Vertical and horizontal forward differences with a Neumann boundary.

    Args:
        u: image of shape ``(..., H, W)``.

    Returns:
        ``(dy, dx)``, each of the shape of ``u``; ``dy`` is zero on the last row and
        ``dx`` on the last column.

    Example:
        >>> dy, dx = forward_differences(torch.arange(6.0).reshape(1, 2, 3))
        >>> dx[0, 0].tolist(), dy[0, 0].tolist()
        ([1.0, 1.0, 0.0], [3.0, 3.0, 3.0])
    """
    dy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    dx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    return dy, dx


def divergence(py: Tensor, px: Tensor) -> Tensor:
    """Discrete divergence, the negative adjoint of :func:`forward_differences`.

    ``<forward_differences(u), (py, px)> == -<u, divergence(py, px)>`` for all ``u``.
    The last row of ``py`` and the last column of ``px`` do not enter the result.

    Args:
        py: vertical component, shape ``(..., H, W)``.
        px: horizontal component, same shape.

    Returns:
        Tensor of shape ``(..., H, W)``.
    """
    inner_y = py[..., :-1, :]
    inner_x = px[..., :, :-1]
    return (
        F.pad(inner_y, (0, 0, 0, 1))
        - F.pad(inner_y, (0, 0, 1, 0))
        + F.pad(inner_x, (0, 1))
        - F.pad(inner_x, (1, 0))
    )


def _magnitudes(dy: Tensor, dx: Tensor, kind: str, color: str) -> Tensor:
    """Gradient magnitudes that the total variation sums, before smoothing."""
    if kind == "anisotropic":
        return torch.cat([dy.abs(), dx.abs()], dim=1)
    squared = dy * dy + dx * dx
    if color == "joint":
        squared = squared.sum(dim=1, keepdim=True)
    # sqrt has an infinite derivative at 0; route zeros around it so that autograd
    # returns the zero subgradient on flat areas instead of NaN.
    positive = squared > 0
    safe = torch.where(positive, squared, torch.ones_like(squared))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(squared))


def _huber(t: Tensor, eps: float) -> Tensor:
    if eps == 0:
        return t
    return torch.where(t <= eps, t * t / (2 * eps), t - eps / 2)


def total_variation(
    x: Tensor,
    *,
    kind: TVKind = "isotropic",
    color: ColorMode = "joint",
    eps: float = 0.0,
    reduction: Reduction = "mean",
    weight: float | None = None,
) -> Tensor:
    """Total variation of an image or a batch of images; differentiable by autograd.

    Args:
        x: float tensor ``(C, H, W)`` or ``(B, C, H, W)``.
        kind: ``"isotropic"`` (Euclidean gradient magnitude) or ``"anisotropic"``
            (``|dy| + |dx|``).
        color: ``"joint"`` couples the channels in one magnitude per pixel,
            ``"separate"`` treats each channel on its own. Ignored for ``"anisotropic"``.
        eps: Huber smoothing radius, ``>= 0``; ``0`` gives the exact total variation.
        reduction: ``"mean"`` — the sum divided by ``B*C*H*W`` (a scalar);
            ``"sum"`` — the plain sum (a scalar); ``"per_image"`` — one mean per image,
            shape ``(B,)`` (``()`` for a 3-D input).
        weight: optional factor the result is multiplied by.

    Returns:
        The total variation as described by ``reduction``.

    Example:
        >>> x = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
        >>> float(total_variation(x, kind="anisotropic"))
        0.5
    """
    check_choice("kind", kind, TV_KINDS)
    check_choice("color", color, COLOR_MODES)
    check_choice("reduction", reduction, REDUCTIONS)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    batch = as_batch(x)
    dy, dx = forward_differences(batch)
    per_pixel = _huber(_magnitudes(dy, dx, kind, color), eps)
    per_image = per_pixel.flatten(1).sum(dim=1)
    b, c, h, w = batch.shape
    if reduction == "sum":
        result = per_image.sum()
    elif reduction == "mean":
        result = per_image.sum() / (b * c * h * w)
    else:
        result = per_image / (c * h * w)
        if x.dim() == 3:
            result = result[0]
    return result if weight is None else result * weight


def tv_gradient(
    u: Tensor, *, kind: TVKind = "isotropic", color: ColorMode = "joint", eps: float = 0.0
) -> Tensor:
    """Gradient of the summed, smoothed total variation, written out by hand.

    For ``eps > 0`` this is the exact gradient of
    ``total_variation(u, kind=kind, color=color, eps=eps, reduction="sum")``;
    for ``eps == 0`` it is the subgradient that is zero where the magnitude is zero.
    It equals ``-divergence(p)`` with ``p = grad u / max(eps, |grad u|)``.

    Args:
        u: float tensor ``(C, H, W)`` or ``(B, C, H, W)``.
        kind: as in :func:`total_variation`.
        color: as in :func:`total_variation`.
        eps: Huber smoothing radius, ``>= 0``.

    Returns:
        Tensor of the shape of ``u``.
    """
    check_choice("kind", kind, TV_KINDS)
    check_choice("color", color, COLOR_MODES)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    batch = as_batch(u)
    dy, dx = forward_differences(batch)
    if kind == "anisotropic":
        py = dy / dy.abs().clamp_min(eps) if eps > 0 else dy.sign()
        px = dx / dx.abs().clamp_min(eps) if eps > 0 else dx.sign()
    else:
        squared = dy * dy + dx * dx
        if color == "joint":
            squared = squared.sum(dim=1, keepdim=True)
        norm = squared.sqrt_()
        if eps > 0:
            norm.clamp_min_(eps)
        else:
            norm = torch.where(norm > 0, norm, torch.ones_like(norm))
        py, px = dy / norm, dx / norm
    return (-divergence(py, px)).reshape(u.shape)


class TVLoss(nn.Module):
    """Total variation as a loss module; a thin wrapper around :func:`total_variation`.

    Args:
        weight: factor the total variation is multiplied by (default 1).
        kind, color, eps, reduction: as in :func:`total_variation`.

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
    ) -> None:
        super().__init__()
        check_choice("kind", kind, TV_KINDS)
        check_choice("color", color, COLOR_MODES)
        check_choice("reduction", reduction, REDUCTIONS)
        self.weight = weight
        self.kind: TVKind = kind
        self.color: ColorMode = color
        self.eps = eps
        self.reduction: Reduction = reduction

    def forward(self, x: Tensor) -> Tensor:
        return total_variation(
            x,
            kind=self.kind,
            color=self.color,
            eps=self.eps,
            reduction=self.reduction,
            weight=self.weight,
        )

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, kind={self.kind!r}, color={self.color!r}, "
            f"eps={self.eps}, reduction={self.reduction!r}"
        )
