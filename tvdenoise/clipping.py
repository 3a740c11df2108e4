"""Gaussian noise seen through a file's clipping to [0, 1].

An 8-bit (or 16-bit) file stores ``f = clip(x + n, 0, 1)`` for a clean value ``x`` and
noise ``n ~ N(0, sigma**2)``. Near black and white this changes what a value says about
``x`` and ``sigma``: the mean of ``f`` is pulled towards the middle of the range and its
variance shrinks. The noise estimate (:mod:`tvdenoise.sigma`) and SURE
(:mod:`tvdenoise.auto`) both correct for it with the closed forms here, elementwise on
tensors of clean values and one noise level ``sigma > 0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["censored_mean", "censored_variance", "inverse_mills", "latent_value"]

# Bisection steps for the clean value behind a clipped mean (2**-40 of the range).
_BISECTIONS = 40
_SQRT_2PI = math.sqrt(2 * math.pi)


def _density(a: Tensor) -> Tensor:
    return torch.exp(-0.5 * a.square()) / _SQRT_2PI


def censored_mean(clean: Tensor, sigma: float) -> Tensor:
    """``E[clip(clean + n, 0, 1)]`` for ``n ~ N(0, sigma**2)``.

    Example:
        >>> round(float(censored_mean(torch.tensor(0.0), 0.1)), 4)  # sigma / sqrt(2 pi)
        0.0399
    """

    def above(level: Tensor) -> Tensor:  # E[max(0, level + n)]
        a = level / sigma
        below: Tensor = torch.special.ndtr(a)
        return level * below + sigma * _density(a)

    return above(clean) - above(clean - 1)


def censored_variance(clean: Tensor, sigma: float) -> Tensor:
    """``Var[clip(clean + n, 0, 1)]`` for ``n ~ N(0, sigma**2)``.

    Example:
        >>> v = censored_variance(torch.tensor(0.0, dtype=torch.float64), 0.1)
        >>> round(float(v) / 0.1**2, 4)  # half the noise is clipped: 1/2 - 1/(2 pi)
        0.3408
    """
    low, high = -clean / sigma, (1 - clean) / sigma  # the range in units of the noise
    inside = torch.special.ndtr(high) - torch.special.ndtr(low)
    phi_low, phi_high = _density(low), _density(high)
    # E[Y**2] = E[X**2; 0 < X < 1] + P(X >= 1) with X = clean + sigma * z.
    second = (
        clean.square() * inside
        + 2 * clean * sigma * (phi_low - phi_high)
        + sigma**2 * (inside + low * phi_low - high * phi_high)
        + torch.special.ndtr(-high)
    )
    variance: Tensor = second - censored_mean(clean, sigma).square()
    return variance.clamp_min(0.0)


def latent_value(mean: Tensor, sigma: float) -> Tensor:
    """The clean value in [0, 1] whose clipped noisy version has expectation ``mean``
    (the inverse of :func:`censored_mean`, by bisection).

    Example:
        >>> mean = censored_mean(torch.tensor(0.05), 0.2)
        >>> round(float(latent_value(mean, 0.2)), 6)
        0.05
    """
    low, high = torch.zeros_like(mean), torch.ones_like(mean)
    for _ in range(_BISECTIONS):
        middle = 0.5 * (low + high)
        up = censored_mean(middle, sigma) < mean
        low = torch.where(up, middle, low)
        high = torch.where(up, high, middle)
    return 0.5 * (low + high)


def inverse_mills(a: Tensor) -> Tensor:
    """``phi(a) / Phi(-a)``, stable for large ``a``; ``E[z | z >= a]`` for a standard
    normal ``z``."""
    log_density = -0.5 * a.square() - 0.5 * math.log(2 * math.pi)
    return torch.exp(log_density - torch.special.log_ndtr(-a))
