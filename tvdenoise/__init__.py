"""tvdenoise: total-variation image denoising in PyTorch.

Library entry points (tensors in, tensors out):

* :func:`denoise` — restore a ``(C, H, W)`` or ``(B, C, H, W)`` image in [0, 1], or a
  volume / time series ``(C, D, H, W)`` / ``(B, C, D, H, W)`` with ``spatial_dims=3``;
* :func:`restore` — the same, returning weights, noise levels, iterations, energies;
* :func:`solve` — the Adam solver for given weights;
* :func:`total_variation` / :class:`TVLoss` — differentiable TV for training loops;
* :func:`estimate_sigma` — the noise level of an image;
* :func:`reference_denoise` — an exact (duality-gap certified) solver for checking.
"""

from __future__ import annotations

from .api import Restoration, denoise, restore
from .reference import reference_denoise
from .sigma import estimate_sigma
from .solver import DenoiseResult, solve
from .tv import TVLoss, divergence, forward_differences, total_variation, tv_gradient

__all__ = [
    "DenoiseResult",
    "Restoration",
    "TVLoss",
    "denoise",
    "divergence",
    "estimate_sigma",
    "forward_differences",
    "reference_denoise",
    "restore",
    "solve",
    "total_variation",
    "tv_gradient",
]
__version__ = "0.1.0"
