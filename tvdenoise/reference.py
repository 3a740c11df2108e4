"""Exact reference solver: accelerated projected gradient (FISTA) on the dual problem.

It minimises exactly the same energy as :func:`tvdenoise.denoise` (Gaussian noise model),
and certifies its answer with the duality gap, so tests and benchmarks can measure how
far the Adam result is from the true minimiser. It is slower than the Adam solver and
meant for checking, not for production.

Per image, with ``N = C*H*W`` and ``lam = weight / 2``, the energy

.. math::

    E(u) = \\frac{1}{N}\\Big(\\|u - f\\|^2 + w\\,\\mathrm{TV}_\\varepsilon(u)\\Big)
         = \\frac{2}{N}\\Big(\\tfrac12\\|u - f\\|^2 + \\lambda\\,\\mathrm{TV}_\\varepsilon(u)\\Big)

has the dual (writing the Huber function as ``h(t) = max_{|q| <= 1} q t - eps q**2 / 2``)

.. math::

    \\max_{|p| \\le 1}\\; \\tfrac12\\|f\\|^2 - \\tfrac12\\|f + \\lambda \\operatorname{div} p\\|^2
        - \\tfrac{\\lambda\\varepsilon}{2}\\|p\\|^2,
    \\qquad u = f + \\lambda \\operatorname{div} p .

The primal problem is 1-strongly convex, so ``0.5 * ||u - u*||**2 <= gap``: the solver stops
when ``sqrt(2 * gap / N)``, an upper bound on the RMS distance to the exact minimiser,
is below ``rms_tol`` for every image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tv import (
    COLOR_MODES,
    TV_KINDS,
    ColorMode,
    TVKind,
    as_batch,
    check_choice,
    divergence,
    forward_differences,
    total_variation,
)

__all__ = ["reference_denoise"]


def _project(py: Tensor, px: Tensor, kind: str, color: str) -> None:
    """Project the dual field onto its unit ball, in place."""
    if kind == "anisotropic":
        py.clamp_(-1.0, 1.0)
        px.clamp_(-1.0, 1.0)
        return
    squared = py * py + px * px
    if color == "joint":
        squared = squared.sum(dim=1, keepdim=True)
    scale = squared.sqrt_().clamp_min_(1.0)
    py.div_(scale)
    px.div_(scale)


def reference_denoise(
    noisy: Tensor,
    weight: float | Tensor,
    *,
    kind: TVKind = "isotropic",
    color: ColorMode = "joint",
    eps: float = 0.0,
    rms_tol: float = 1e-5,
    max_iter: int = 100_000,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Minimise the TV energy to a certified tolerance.

    Args:
        noisy: ``(C, H, W)`` or ``(B, C, H, W)`` float tensor ``f``.
        weight: ``w >= 0``, a number or one per image (shape ``(B,)``).
        kind, color, eps: the total variation, as in :func:`tvdenoise.total_variation`.
        rms_tol: stop once the certified RMS distance to the minimiser is below this.
        max_iter: hard cap on iterations.
        dtype: working precision (float64 by default).

    Returns:
        ``(restored, rms_bound)``: the minimiser in ``noisy``'s shape and dtype, not
        clipped, and the per-image certified bound on its RMS error, shape ``(B,)``.

    Example:
        >>> f = torch.rand(1, 16, 16, dtype=torch.float64)
        >>> u, bound = reference_denoise(f, 0.1, rms_tol=1e-6)
        >>> bool(bound.max() < 1e-6)
        True
    """
    check_choice("kind", kind, TV_KINDS)
    check_choice("color", color, COLOR_MODES)
    f = as_batch(noisy, "noisy").to(dtype)
    b, c, h, w = f.shape
    n = c * h * w
    weights = torch.as_tensor(weight, dtype=dtype, device=f.device).reshape(-1)
    if weights.numel() == 1:
        weights = weights.expand(b)
    if weights.numel() != b or bool((weights < 0).any()):
        raise ValueError(f"weight must be >= 0, one number or one per image; got {weight}")
    lam = (weights / 2).reshape(b, 1, 1, 1)
    # 1/L with L = 8 lam^2 + lam eps, the Lipschitz constant of the dual gradient.
    step = 1.0 / (8 * lam * lam + lam * eps).clamp_min(torch.finfo(dtype).tiny)
    py, px = torch.zeros_like(f), torch.zeros_like(f)
    qy, qx = py.clone(), px.clone()
    t = 1.0
    u = f.clone()
    bound = torch.zeros(b, dtype=dtype, device=f.device)
    for it in range(max_iter):
        u = f + lam * divergence(qy, qx)
        gy, gx = forward_differences(u)
        new_py = qy + step * lam * (gy - eps * qy)
        new_px = qx + step * lam * (gx - eps * qx)
        _project(new_py, new_px, kind, color)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum = (t - 1) / t_next
        qy = new_py + momentum * (new_py - py)
        qx = new_px + momentum * (new_px - px)
        py, px, t = new_py, new_px, t_next
        if it % 20 == 19 or it == max_iter - 1:
            u = f + lam * divergence(py, px)
            bound = _rms_bound(u, f, py, px, lam, kind, color, eps, n)
            if bool((bound <= rms_tol).all()):
                break
    u = f + lam * divergence(py, px)
    bound = _rms_bound(u, f, py, px, lam, kind, color, eps, n)
    return u.to(noisy.dtype).reshape(noisy.shape), bound


def _rms_bound(
    u: Tensor,
    f: Tensor,
    py: Tensor,
    px: Tensor,
    lam: Tensor,
    kind: TVKind,
    color: ColorMode,
    eps: float,
    n: int,
) -> Tensor:
    """sqrt(2 * duality gap / N) per image, an upper bound on RMS(u - u*)."""
    flat = lam.reshape(-1)
    tv = total_variation(u, kind=kind, color=color, eps=eps, reduction="per_image") * n
    primal = 0.5 * ((u - f) ** 2).flatten(1).sum(1) + flat * tv
    dual_sq = (py * py + px * px).flatten(1).sum(1)
    dual = 0.5 * (f * f).flatten(1).sum(1) - 0.5 * (u * u).flatten(1).sum(1)
    dual = dual - flat * eps / 2 * dual_sq
    gap = (primal - dual).clamp_min(0)
    return torch.sqrt(2 * gap / n)
