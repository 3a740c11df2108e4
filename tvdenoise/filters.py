"""Small separable filters on ``(N, 1, H, W)`` planes, written as shifted-slice sums.

The noise estimators need a 3x3 high-pass residual, local means and "is anything
saturated nearby" masks. ``conv2d``, ``avg_pool2d`` and ``max_pool2d`` on single-channel
planes are slow on CPU (measured on 512x512: 2.9, 5.9 and 6.1 ms against 0.3, 0.6 and
about 0.5 ms here, one thread); all three filters are separable, so two passes of a few
shifted additions do the same work. The results equal the pooling/convolution ones up to
float rounding (the tests compare them).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["any_in_window", "box_mean", "immerkaer_residual"]


def _second_difference(x: Tensor, dim: int) -> Tensor:
    n = x.shape[dim]
    middle = x.narrow(dim, 1, n - 2)
    return torch.add(x.narrow(dim, 0, n - 2), x.narrow(dim, 2, n - 2)).sub_(middle, alpha=2.0)


def immerkaer_residual(planes: Tensor) -> Tensor:
    """Immerkær's mask ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]] / 6`` (unit L2 norm), valid
    part: ``(N, 1, H - 2, W - 2)`` for ``(N, 1, H, W)`` planes, ``H, W >= 3``."""
    rows = _second_difference(planes, -2)
    return _second_difference(rows, -1).div_(6.0)


def _window_sum(x: Tensor, radius: int, dim: int) -> Tensor:
    """Sum over ``[i - radius, i + radius]`` clipped to ``[0, n)`` along ``dim``."""
    n = x.shape[dim]
    out = x.clone()
    for shift in range(1, min(radius, n - 1) + 1):
        out.narrow(dim, shift, n - shift).add_(x.narrow(dim, 0, n - shift))
        out.narrow(dim, 0, n - shift).add_(x.narrow(dim, shift, n - shift))
    return out


def _window_counts(n: int, radius: int, like: Tensor) -> Tensor:
    index = torch.arange(n, device=like.device)
    counts = 1 + index.clamp(max=radius) + (n - 1 - index).clamp(max=radius)
    return counts.to(like.dtype)


def box_mean(planes: Tensor, size: int) -> Tensor:
    """Mean over the ``size x size`` window (odd ``size``) clipped to the image, over the
    last two dimensions of a tensor of any shape ``(..., H, W)``; for ``(N, 1, H, W)``
    ``avg_pool2d(planes, size, 1, size // 2, count_include_pad=False)``."""
    radius = size // 2
    h, w = planes.shape[-2:]
    rows = _window_sum(planes, radius, -2).div_(_window_counts(h, radius, planes).view(-1, 1))
    return _window_sum(rows, radius, -1).div_(_window_counts(w, radius, planes))


def any_in_window(mask: Tensor) -> Tensor:
    """Whether any value of each 3x3 window of a boolean ``(N, 1, H, W)`` mask is set, valid
    part: ``(N, 1, H - 2, W - 2)``, ``max_pool2d(mask, 3, stride=1) > 0``."""
    h, w = mask.shape[-2:]
    rows = mask[..., : h - 2, :] | mask[..., 1 : h - 1, :] | mask[..., 2:, :]
    return rows[..., : w - 2] | rows[..., 1 : w - 1] | rows[..., 2:]
