"""Noise seen through a file's clipping to [0, 1].

An 8-bit (or 16-bit) file stores ``f = clip(x + n, 0, 1)`` for a clean value ``x`` and
noise ``n ~ N(0, sigma**2)``. Near black and white this changes what a value says about
``x`` and ``sigma``: the mean of ``f`` is pulled towards the middle of the range and its
variance shrinks. The noise estimate (:mod:`tvdenoise.sigma`) and SURE
(:mod:`tvdenoise.auto`) both correct for it with the closed forms here, elementwise on
tensors of clean values and a noise level ``sigma > 0``: one number, or a tensor that
broadcasts against the values. The tabulated inverses (:func:`latent_value`,
:func:`variance_share`) take one level per image, ``(B,)`` for values ``(B, ...)``, so
that a batch is handled in one pass.

Photon counts clip too: a file storing ``f = min(k / peak, 1)`` for ``k ~ Poisson(peak * x)``
holds 1 for every count of ``peak`` or more. :func:`clipped_count_mean`,
:func:`latent_rate` and :func:`sample_clipped_counts` give the Poisson model's
counterparts, for the photon-noise weight (:mod:`tvdenoise.noise_weight`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "censored_mean",
    "censored_variance",
    "clipped_count_mean",
    "clipped_count_tail",
    "inverse_mills",
    "latent_rate",
    "latent_value",
    "sample_clipped_counts",
    "variance_share",
]

# The clean value behind a clipped mean: a table inverted by interpolation, then Newton.
_LATENT_POINTS = 1025
_NEWTON_STEPS = 2
# Clean values tabulated by variance_share (linear interpolation between them).
_TABLE_POINTS = 1025
_TABLE_REACH = 4.0
# Rates tabulated by latent_rate.
_RATE_POINTS = 4097
_SQRT_2PI = math.sqrt(2 * math.pi)


def _density(a: Tensor) -> Tensor:
    return torch.exp(-0.5 * a.square()) / _SQRT_2PI


def censored_mean(clean: Tensor, sigma: float | Tensor) -> Tensor:
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


def censored_variance(clean: Tensor, sigma: float | Tensor) -> Tensor:
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


def latent_value(mean: Tensor, sigma: float | Tensor) -> Tensor:
    """The clean value in [0, 1] whose clipped noisy version has expectation ``mean``
    (the inverse of :func:`censored_mean`; ``0`` or ``1`` beyond its range), for one
    ``sigma``, or one per image ``(B,)`` for ``mean`` of shape ``(B, ...)``.

    :func:`censored_mean` is increasing with slope ``P(0 < clean + n < 1)``, which is at
    least ``P(0 < n < 1)`` on [0, 1]: a table of ``_LATENT_POINTS`` values inverted by
    interpolation lands close enough for ``_NEWTON_STEPS`` Newton steps to reach the
    precision of float64 (a bisection took 40 evaluations for 2**-40).

    Example:
        >>> mean = censored_mean(torch.tensor(0.05), 0.2)
        >>> round(float(latent_value(mean, 0.2)), 6)
        0.05
    """
    levels = _per_image(sigma, mean)
    rows = mean.to(torch.float64).reshape(levels.shape[0], -1)
    grid = torch.linspace(0.0, 1.0, _LATENT_POINTS, dtype=torch.float64, device=mean.device)
    x = _interpolate(rows, censored_mean(grid, levels), grid.expand(levels.shape[0], -1))
    for _ in range(_NEWTON_STEPS):
        slope = torch.special.ndtr((1 - x) / levels) - torch.special.ndtr(-x / levels)
        x = (x - (censored_mean(x, levels) - rows) / slope).clamp_(0.0, 1.0)
    return x.reshape(mean.shape).to(mean.dtype)


def _per_image(sigma: float | Tensor, values: Tensor) -> Tensor:
    """``sigma`` as a column ``(R, 1)`` in float64 on the device of ``values``: one row
    for a number (or a single level), else one per image of ``values`` ``(R, ...)``."""
    levels = torch.as_tensor(sigma, dtype=torch.float64).to(values.device).reshape(-1, 1)
    if levels.shape[0] > 1 and (values.dim() == 0 or values.shape[0] != levels.shape[0]):
        raise ValueError(
            f"sigma must be one level or one per image ({levels.shape[0]}), "
            f"for values of shape {tuple(values.shape)}"
        )
    return levels


def inverse_mills(a: Tensor) -> Tensor:
    """``phi(a) / Phi(-a)``, stable for large ``a``; ``E[z | z >= a]`` for a standard
    normal ``z``."""
    log_density = -0.5 * a.square() - 0.5 * math.log(2 * math.pi)
    return torch.exp(log_density - torch.special.log_ndtr(-a))


def _interpolate(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear ``fp(x)`` for ``xp`` increasing along its last axis (float64),
    constant beyond its ends: ``xp, fp`` of shape ``(n,)`` and any ``x``, or one table
    per row, ``(R, n)``, and ``x`` of shape ``(R, m)``."""
    n = xp.shape[-1]
    table, values = xp.reshape(-1, n), fp.reshape(-1, n)
    rows = x.reshape(table.shape[0], -1)
    rows = torch.maximum(torch.minimum(rows, table[:, -1:]), table[:, :1]).contiguous()
    right = torch.searchsorted(table.contiguous(), rows).clamp_(1, n - 1)
    x0, x1 = table.gather(1, right - 1), table.gather(1, right)
    y0, y1 = values.gather(1, right - 1), values.gather(1, right)
    t = ((rows - x0) / (x1 - x0).clamp_min(1e-300)).clamp(0.0, 1.0)
    return (y0 + t * (y1 - y0)).reshape(x.shape)


def _spaced(start: Tensor, stop: Tensor, steps: int) -> Tensor:
    """``steps`` evenly spaced values from ``start`` to ``stop`` per row, ``(R, steps)``
    for columns ``(R, 1)``."""
    fraction = torch.linspace(0.0, 1.0, steps, dtype=start.dtype, device=start.device)
    return start + (stop - start) * fraction


def variance_share(mean: Tensor, sigma: float | Tensor) -> Tensor:
    """``censored_variance(x, sigma) / sigma**2`` for the clean value ``x`` behind a
    clipped ``mean``: the share of the noise variance that clipping leaves, for one
    ``sigma``, or one per image ``(B,)`` for ``mean`` of shape ``(B, ...)``.

    ``x`` may lie beyond [0, 1] (by up to 4 sigma): a noisy mean must not be cut off at
    a clean 0 or 1, or shares read from noisy means are biased upwards. Interpolated
    in a table of 1025 evenly spaced means per level (cheap for many values).

    Example:
        >>> mean = censored_mean(torch.tensor([0.0, 0.5]), 0.1)
        >>> [round(v, 2) for v in variance_share(mean, 0.1).tolist()]
        [0.34, 1.0]
    """
    levels = _per_image(sigma, mean)
    reach = _TABLE_REACH * levels
    # Clean values -> means on a fine grid, inverted onto evenly spaced means.
    fine = _spaced(-reach, 1.0 + reach, 4 * _TABLE_POINTS)
    fine_means = censored_mean(fine, levels)
    first, last = fine_means[:, :1], fine_means[:, -1:]
    clean = _interpolate(_spaced(first, last, _TABLE_POINTS), fine_means, fine)
    shares = censored_variance(clean, levels) / levels**2
    rows = mean.to(torch.float64).reshape(levels.shape[0], -1)
    position = (rows - first) * ((_TABLE_POINTS - 1) / (last - first))
    position = position.clamp(0.0, _TABLE_POINTS - 1.0)
    left = position.floor().clamp(max=_TABLE_POINTS - 2)
    t = position - left
    index = left.long()
    share = shares.gather(1, index) * (1 - t) + shares.gather(1, index + 1) * t
    return share.reshape(mean.shape).to(mean.dtype)


def _first_clipped_count(peak: float) -> int:
    return max(1, math.ceil(peak))


def clipped_count_mean(rate: Tensor, peak: float) -> Tensor:
    """``E[min(k / peak, 1)]`` for ``k ~ Poisson(rate)``: the mean a file stores.

    With ``c`` the smallest count stored as 1, ``sum_{k < c} k p(k) = rate P(k <= c - 2)``.

    Example:
        >>> rate = torch.tensor([0.5, 50.0], dtype=torch.float64)
        >>> [round(v, 4) for v in clipped_count_mean(rate, 10.0).tolist()]
        [0.05, 1.0]
    """
    c = _first_clipped_count(peak)
    low: Tensor = torch.special.gammaincc(torch.full_like(rate, max(c - 1, 1)), rate)
    below = rate * low if c >= 2 else torch.zeros_like(rate)
    at_top: Tensor = torch.special.gammainc(torch.full_like(rate, c), rate)
    return below / peak + at_top


def clipped_count_tail(rate: Tensor, peak: float) -> tuple[Tensor, Tensor]:
    """For ``k ~ Poisson(rate)`` given that it was clipped (``k >= c``, the smallest count
    stored as 1): ``E[k | k >= c]`` and ``P(k = c | k >= c)``, elementwise.

    ``E[k 1(k >= c)] = rate P(k >= c - 1)``; where the tail is too thin to evaluate
    (a rate far below ``c``), the limits ``c`` and 1.

    Example:
        >>> mean, first = clipped_count_tail(torch.tensor([1e-3, 100.0], dtype=torch.float64), 10.0)
        >>> [round(v, 2) for v in mean.tolist()], [round(v, 2) for v in first.tolist()]
        ([10.0, 100.0], [1.0, 0.0])
    """
    c = _first_clipped_count(peak)
    rate = rate.to(torch.float64)
    tail: Tensor = torch.special.gammainc(torch.full_like(rate, c), rate)
    wider: Tensor = (
        torch.special.gammainc(torch.full_like(rate, c - 1), rate)
        if c >= 2
        else torch.ones_like(rate)
    )
    at_c = torch.exp(c * torch.log(rate.clamp_min(1e-300)) - rate - math.lgamma(c + 1))
    thin = tail < 1e-12
    safe = torch.where(thin, torch.ones_like(tail), tail)
    mean = torch.where(thin, float(c), rate * wider / safe)
    first = torch.where(thin, 1.0, at_c / safe)
    return mean, first


def latent_rate(mean: Tensor, peak: float) -> Tensor:
    """The Poisson rate in ``[0, peak]`` (a clean value in [0, 1]) whose clipped counts
    have the mean ``mean`` (the inverse of :func:`clipped_count_mean`), interpolated in
    a table of 4097 rates (cheap for many values).

    Example:
        >>> mean = clipped_count_mean(torch.tensor([8.0], dtype=torch.float64), 10.0)
        >>> round(float(latent_rate(mean, 10.0)[0]), 4)
        8.0
    """
    rates = torch.linspace(0.0, peak, _RATE_POINTS, dtype=torch.float64)
    means = clipped_count_mean(rates, peak)
    rate = _interpolate(mean.to(torch.float64).cpu(), means, rates)
    return rate.to(mean.device, mean.dtype)


def sample_clipped_counts(rate: Tensor, peak: float, generator: torch.Generator) -> Tensor:
    """Counts drawn from ``Poisson(rate)`` given that they were clipped (``k >= c``, the
    smallest count stored as 1), by inverting the tail's distribution function.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> k = sample_clipped_counts(torch.full((1000,), 9.0, dtype=torch.float64), 10.0, g)
        >>> bool((k >= 10).all()), 11 < float(k.mean()) < 12.5
        (True, True)
    """
    c = _first_clipped_count(peak)
    tail: Tensor = torch.special.gammainc(torch.full_like(rate, c), rate)
    draw = torch.rand(rate.shape, generator=generator, dtype=rate.dtype) * tail
    top = float(rate.max()) if rate.numel() else 0.0
    largest = max(c, math.ceil(top)) + math.ceil(10.0 * math.sqrt(top + 1.0)) + 10
    counts = torch.full_like(rate, float(largest))
    cumulative = torch.zeros_like(rate)
    log_rate = torch.log(rate.clamp_min(1e-300))
    for k in range(c, largest):
        cumulative += torch.exp(k * log_rate - rate - math.lgamma(k + 1))
        counts = torch.where((cumulative >= draw) & (counts == largest), float(k), counts)
    return counts
