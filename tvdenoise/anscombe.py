"""The Anscombe transform of photon counts and its exact unbiased inverse.

For counts ``k ~ Poisson(lambda)`` the Anscombe transform ``2 sqrt(k + 3/8)`` has a
variance close to 1 whatever ``lambda`` (within 10 % from about 2 photons on): it turns
photon noise into noise of one level, for which the Gaussian model and its SURE weight
are made (:mod:`tvdenoise.auto`). Here the data are intensities ``f = k / peak`` and the
transform is scaled so that full scale stays 1:

.. math::

    z = s \\cdot 2 \\sqrt{f \\cdot peak + 3/8}, \\qquad s = \\frac{1}{2 \\sqrt{peak + 3/8}},

so ``z`` lies in ``[2 s sqrt(3/8), 1]`` for ``f`` in [0, 1], with noise of level about
``s`` (:func:`stabilised_level`).

Going back, the algebraic inverse ``(z / 2s)**2 - 3/8`` of a denoised ``z`` is biased at
low counts, because the transform is not linear. The exact unbiased inverse maps
``E[2 sqrt(k + 3/8)]`` back to ``lambda``; :func:`inverse_anscombe` uses its closed-form
approximation (Makitalo and Foi, "A closed-form approximation of the exact unbiased
inverse of the Anscombe variance-stabilizing transformation", IEEE TIP 20(9), 2011):

.. math::

    I(D) = \\frac{D^2}{4} + \\frac{1}{4}\\sqrt{\\tfrac{3}{2}} D^{-1} - \\frac{11}{8} D^{-2}
        + \\frac{5}{8}\\sqrt{\\tfrac{3}{2}} D^{-3} - \\frac{1}{8},

which is 0 at ``D = 2 sqrt(3/8)``, the value of no photons; smaller ``D`` map to 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["anscombe", "inverse_anscombe", "stabilised_level"]

_SHIFT = 3.0 / 8.0
_ROOT = math.sqrt(1.5)
# The transform of zero counts, where the inverse reaches 0.
_NO_PHOTONS = 2.0 * math.sqrt(_SHIFT)


def _per_image(peak: Tensor | float, like: Tensor) -> Tensor:
    """``peak`` as a number, or one value per image of ``like`` ``(B, C, *spatial)``."""
    values = torch.as_tensor(peak, dtype=torch.float64, device=like.device)
    if values.dim() == 0:
        return values
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def stabilised_level(peak: Tensor | float) -> Tensor:
    """The noise level of :func:`anscombe`'s result, ``s = 1 / (2 sqrt(peak + 3/8))``.

    Example:
        >>> round(float(stabilised_level(10.0)), 4)
        0.1552
    """
    return 0.5 / (torch.as_tensor(peak, dtype=torch.float64) + _SHIFT).sqrt()


def anscombe(f: Tensor, peak: Tensor | float) -> Tensor:
    """The scaled Anscombe transform ``s * 2 sqrt(f * peak + 3/8)`` of intensities.

    Args:
        f: intensities ``counts / peak``, ``(B, C, *spatial)`` (or any shape with a
            number ``peak``), ``>= 0``; NaN (missing) stays NaN.
        peak: photons at intensity 1: a number, or one per image ``(B,)``.

    Returns:
        ``z`` of the shape and dtype of ``f``; 1 at full scale.

    Example:
        >>> float(anscombe(torch.ones(1), 10.0))
        1.0
    """
    p = _per_image(peak, f)
    z = 2.0 * (f.to(torch.float64) * p + _SHIFT).sqrt() * stabilised_level(p)
    return z.to(f.dtype)


def inverse_anscombe(z: Tensor, peak: Tensor | float) -> Tensor:
    """Intensities from a denoised :func:`anscombe` image, by the exact unbiased inverse.

    Args:
        z: transformed intensities, the layout of :func:`anscombe`'s result.
        peak: the ``peak`` the transform was taken with.

    Returns:
        ``I(z / s) / peak`` (see the module docstring), ``>= 0``, the shape and dtype of
        ``z``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> k = torch.poisson(torch.full((200000,), 3.0, dtype=torch.float64), generator=g)
        >>> mean_z = anscombe(k / 10, 10.0).mean()
        >>> round(float(inverse_anscombe(mean_z, 10.0)) * 10, 1)
        3.0
    """
    p = _per_image(peak, z)
    d = (z.to(torch.float64) / stabilised_level(p)).clamp_min(_NO_PHOTONS)
    counts = (
        d.square() / 4 + _ROOT / (4 * d) - 11 / (8 * d.square()) + 5 * _ROOT / (8 * d**3) - 1 / 8
    )
    return (counts.clamp_min(0.0) / p).to(z.dtype)
