"""Data-fidelity terms: how far a restored image ``u`` may stray from the data ``f``.

Everything here is a pure function of ``(B, C, H, W)`` (or ``(C, H, W)``) float tensors,
reduced like :func:`tvdenoise.total_variation`, so that a library user can write an
energy of their own, e.g. ``fidelity(u, f, noise="impulse") + w * total_variation(u)``.

The three noise models, per value ``r = u - f`` (intensities on [0, 1]):

* ``"gaussian"`` — squared error ``r**2``; the negative log-likelihood (NLL) of additive
  white Gaussian noise, up to scale.
* ``"impulse"`` — the Huber function of the residual,
  ``h_delta(r) = r**2 / (2 delta)`` for ``|r| <= delta`` and ``|r| - delta / 2`` above:
  an absolute error, smoothed within ``delta`` (default :data:`IMPULSE_DELTA`, a fifth
  of an 8-bit grey level) so that the gradient is defined. An outlier (a dead or hot
  pixel, salt-and-pepper noise, dust) pulls on ``u`` with a bounded force instead of
  one proportional to its size.
* ``"poisson"`` — the Poisson deviance ``2 (u - f + f log(f / u))`` (with
  ``0 log 0 = 0``), for photon counts ``peak * f`` whose mean is ``peak * u``. The NLL of
  the counts is ``peak / 2`` times this plus a constant, so the photon scale ``peak``
  only rescales the term; it is left out here and enters through the weight
  (:mod:`tvdenoise.noise_weight`). Near ``u = f`` the deviance is ``(u - f)**2 / f``: at
  full scale it equals the Gaussian term, and darker pixels, whose counts are less
  noisy in absolute terms, are held closer. ``u`` is floored at :data:`POISSON_FLOOR`
  inside the logarithm, so a pixel without photons (``f = 0``) costs exactly ``2 u``.

``reduction="per_image"`` is the mean over the ``C*H*W`` values of each image, the
normalisation the solver's energy uses (:func:`tvdenoise.solve`). The solver pairs the
Poisson term with the total variation of ``sqrt(u)``:
``poisson_fidelity(v**2, f) + w * total_variation(v)`` in ``v = sqrt(u)``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from .tv import REDUCTIONS, Reduction, as_batch, check_choice

NoiseModel = Literal["gaussian", "impulse", "poisson"]
NOISE_MODELS: tuple[str, ...] = get_args(NoiseModel)

#: Huber radius of the impulse fidelity on the [0, 1] scale (about 1/5 of an 8-bit level):
#: small enough that the term is an absolute error for any visible residual.
IMPULSE_DELTA = 1e-3
#: Smallest intensity the Poisson fidelity evaluates its logarithm at.
POISSON_FLOOR = 1e-6

__all__ = [
    "IMPULSE_DELTA",
    "NOISE_MODELS",
    "POISSON_FLOOR",
    "NoiseModel",
    "fidelity",
    "fidelity_gradient",
    "gaussian_fidelity",
    "impulse_fidelity",
    "poisson_fidelity",
]


def _pair(u: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
    bu, bf = as_batch(u, "u"), as_batch(f, "f")
    if bu.shape != bf.shape:
        raise ValueError(
            f"u and f must have the same shape, got {tuple(u.shape)} and {tuple(f.shape)}"
        )
    return bu, bf


def _reduce(values: Tensor, reduction: Reduction, three_d: bool) -> Tensor:
    check_choice("reduction", reduction, REDUCTIONS)
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.mean()
    per_image = values.flatten(1).mean(1)
    return per_image[0] if three_d else per_image


def _huber(r: Tensor, delta: float) -> Tensor:
    a = r.abs()
    return torch.where(a <= delta, r * r / (2 * delta), a - delta / 2)


def _deviance(u: Tensor, f: Tensor, floor: float) -> Tensor:
    # f log(f / u) with u floored inside the logarithm only; zero where f = 0, so that a
    # pixel without photons costs exactly 2 u.
    positive = f > 0
    safe_f = torch.where(positive, f, torch.ones_like(f))
    log_term = torch.where(
        positive, f * torch.log(safe_f / u.clamp_min(floor)), torch.zeros_like(f)
    )
    return 2 * (u - f + log_term)


def gaussian_fidelity(u: Tensor, f: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """Squared error ``(u - f)**2``, reduced.

    Args:
        u: restored image(s), ``(C, H, W)`` or ``(B, C, H, W)``.
        f: data, the same shape.
        reduction: as in :func:`tvdenoise.total_variation` (``"mean"``, ``"sum"`` or
            ``"per_image"``, one mean per image of shape ``(B,)``).

    Returns:
        The reduced squared error.

    Example:
        >>> float(gaussian_fidelity(torch.ones(1, 2, 2), torch.zeros(1, 2, 2)))
        1.0
    """
    bu, bf = _pair(u, f)
    return _reduce((bu - bf).square(), reduction, u.dim() == 3)


def impulse_fidelity(
    u: Tensor, f: Tensor, *, delta: float = IMPULSE_DELTA, reduction: Reduction = "mean"
) -> Tensor:
    """Smoothed absolute error: the Huber function ``h_delta(u - f)``, reduced.

    ``h_delta(r) = r**2 / (2 delta)`` for ``|r| <= delta``, ``|r| - delta / 2`` above.

    Args:
        u: restored image(s), ``(C, H, W)`` or ``(B, C, H, W)``.
        f: data, the same shape.
        delta: Huber radius ``> 0`` on the intensity scale.
        reduction: as in :func:`gaussian_fidelity`.

    Returns:
        The reduced Huber error.

    Example:
        >>> u, f = torch.full((1, 2, 2), 0.5), torch.zeros(1, 2, 2)
        >>> round(float(impulse_fidelity(u, f, delta=0.1)), 6)
        0.45
    """
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    bu, bf = _pair(u, f)
    return _reduce(_huber(bu - bf, delta), reduction, u.dim() == 3)


def poisson_fidelity(
    u: Tensor, f: Tensor, *, floor: float = POISSON_FLOOR, reduction: Reduction = "mean"
) -> Tensor:
    """Poisson deviance ``2 (u - f + f log(f / u))`` with ``u`` floored, reduced.

    It is zero at ``u = f``, convex in ``u``, and ``2 / peak`` times the negative
    log-likelihood of counts ``peak * f`` with mean ``peak * u``, minus that NLL at
    ``u = f``.

    Args:
        u: restored image(s), ``(C, H, W)`` or ``(B, C, H, W)``; the logarithm is
            evaluated at ``max(u, floor)``.
        f: data ``>= 0`` (counts divided by the photon scale), the same shape.
        floor: smallest ``u`` used, ``> 0``.
        reduction: as in :func:`gaussian_fidelity`.

    Returns:
        The reduced deviance.

    Example:
        >>> f = torch.full((1, 2, 2), 0.5)
        >>> float(poisson_fidelity(f, f))
        0.0
    """
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    bu, bf = _pair(u, f)
    return _reduce(_deviance(bu, bf, floor), reduction, u.dim() == 3)


def fidelity(
    u: Tensor, f: Tensor, *, noise: NoiseModel = "gaussian", reduction: Reduction = "mean"
) -> Tensor:
    """The fidelity term of a noise model with its default constants, reduced.

    Args:
        u: restored image(s), ``(C, H, W)`` or ``(B, C, H, W)``.
        f: data, the same shape.
        noise: ``"gaussian"``, ``"impulse"`` or ``"poisson"`` (see the module docstring).
        reduction: as in :func:`gaussian_fidelity`.

    Returns:
        :func:`gaussian_fidelity`, :func:`impulse_fidelity` or :func:`poisson_fidelity`.

    Example:
        >>> from tvdenoise import total_variation
        >>> f = torch.rand(3, 16, 16)
        >>> u = f.clone().requires_grad_()
        >>> energy = fidelity(u, f, noise="impulse") + 0.5 * total_variation(u, eps=1e-3)
        >>> energy.backward()
    """
    check_choice("noise", noise, NOISE_MODELS)
    if noise == "impulse":
        return impulse_fidelity(u, f, reduction=reduction)
    if noise == "poisson":
        return poisson_fidelity(u, f, reduction=reduction)
    return gaussian_fidelity(u, f, reduction=reduction)


def fidelity_gradient(u: Tensor, f: Tensor, *, noise: NoiseModel = "gaussian") -> Tensor:
    """Gradient of ``fidelity(u, f, noise=noise, reduction="sum")`` with respect to ``u``.

    ``2 (u - f)`` (gaussian), ``clamp((u - f) / delta, -1, 1)`` (impulse),
    ``2 (1 - f / u)`` (poisson; below the floor the logarithm is frozen and the
    gradient is 2).

    Args:
        u: restored image(s), ``(C, H, W)`` or ``(B, C, H, W)``.
        f: data, the same shape.
        noise: as in :func:`fidelity`.

    Returns:
        Tensor of the shape of ``u``.
    """
    check_choice("noise", noise, NOISE_MODELS)
    bu, bf = _pair(u, f)
    if noise == "impulse":
        grad = ((bu - bf) / IMPULSE_DELTA).clamp_(-1.0, 1.0)
    elif noise == "poisson":
        log_active = (bu > POISSON_FLOOR) & (bf > 0)
        grad = 2 - torch.where(log_active, 2 * bf / bu.clamp_min(POISSON_FLOOR), 0.0)
    else:
        grad = 2 * (bu - bf)
    return grad.reshape(u.shape)
