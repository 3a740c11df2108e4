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

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, get_args

import torch
from torch import Tensor

from .checks import as_batch, check_choice
from .defaults import NoiseModel
from .tv import REDUCTIONS, Reduction

if TYPE_CHECKING:
    from .tv import TotalVariation

NOISE_MODELS: tuple[str, ...] = get_args(NoiseModel)

#: Huber radius of the impulse fidelity on the [0, 1] scale (about 1/5 of an 8-bit level):
#: small enough that the term is an absolute error for any visible residual.
IMPULSE_DELTA = 1e-3
#: Smallest intensity the Poisson fidelity evaluates its logarithm at.
POISSON_FLOOR = 1e-6

__all__ = [
    "DATA_TERMS",
    "IMPULSE_DELTA",
    "NOISE_MODELS",
    "POISSON_FLOOR",
    "DataTerm",
    "Gaussian",
    "Impulse",
    "NoiseModel",
    "Poisson",
    "Schedule",
    "data_term",
    "fidelity",
    "fidelity_gradient",
    "gaussian_fidelity",
    "impulse_fidelity",
    "poisson_fidelity",
]


def _pair(u: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
    # Any number of spatial axes: (C, *spatial) inputs have no batch axis only when 3-D,
    # as in the public 2-D functions; n-D callers pass (B, C, *spatial).
    dims = max(u.dim() - 2, 2) if u.dim() >= 4 else 2
    bu, bf = as_batch(u, "u", dims), as_batch(f, "f", dims)
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
    bu, bf = _pair(u, f)
    return _reduce(data_term(noise).value(bu, bf), reduction, u.dim() == 3)


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
    bu, bf = _pair(u, f)
    return data_term(noise).gradient(bu, bf).reshape(u.shape)


@dataclass(frozen=True)
class Schedule:
    """Adam's step rule for a data term: ``lr = lr_per_weight * weight``, decaying
    geometrically to ``final_lr_ratio * lr`` over the iterations, with second-moment
    decay ``beta2``."""

    lr_per_weight: float
    final_lr_ratio: float
    beta2: float = 0.999


class DataTerm:
    """One noise model: everything the solvers and the weight choice need of it.

    A data term ``g(u, f)`` is a sum over values. The Adam solver (:mod:`tvdenoise.solver`)
    works in a *solver variable* ``x`` (``u`` itself, or ``sqrt(u)`` for photon counts) and
    asks for half the gradient of ``g`` in it, its step schedule and its floor; the
    certified solver (:mod:`tvdenoise.reference`) asks for the proximal map, the convex
    conjugate and its domain; the automatic weight asks :meth:`auto_weight`. Adding a noise
    model means one subclass here and one entry in :data:`DATA_TERMS`.
    """

    name: ClassVar[str]
    schedule: ClassVar[Schedule]
    #: Smallest value of the solver variable (``None``: unbounded).
    floor: ClassVar[float | None] = None
    #: Whether the noise stays white and independent under an orthonormal mix of the
    #: channels, so that the opponent colour split is exact (:mod:`tvdenoise.colour`).
    white_under_rotation: ClassVar[bool] = False

    def value(self, u: Tensor, f: Tensor) -> Tensor:
        """The fidelity per value at intensities ``u`` (not reduced)."""
        raise NotImplementedError

    def to_variable(self, f: Tensor) -> Tensor:
        """The solver variable's starting point for data ``f`` (a new tensor)."""
        return f.clone()

    def from_variable_(self, x: Tensor) -> Tensor:
        """Intensities from the solver variable, in place."""
        return x

    def variable_value(self, x: Tensor, f: Tensor, out: Tensor | None = None) -> Tensor:
        """The fidelity per value in terms of the solver variable (``out``: a buffer it
        may be written to)."""
        return self.value(x, f)

    def gradient(self, u: Tensor, f: Tensor) -> Tensor:
        """Gradient of the summed fidelity with respect to the intensities ``u``."""
        raise NotImplementedError

    def half_gradient_(self, x: Tensor, f: Tensor, out: Tensor) -> None:
        """Write half the gradient of the summed fidelity in the solver variable to ``out``."""
        raise NotImplementedError

    def precondition_(self, x: Tensor, grad: Tensor) -> None:
        """Scale the whole energy gradient per value before Adam's step (in place)."""

    def kernel_form(self) -> tuple[int, float] | None:
        """This term in the compiled CPU iteration (:mod:`tvdenoise.kernel`): its code in
        ``_kernel.c`` and one parameter, or ``None`` where the kernel lacks it. The kernel
        applies :attr:`floor` itself, as the solver does after each step."""
        return None

    def check_data(self, f: Tensor) -> None:
        """Raise ``ValueError`` if ``f`` cannot be data of this model."""

    # The certified solver, in the solver variable x.
    def prox(self, v: Tensor, f: Tensor, tau: Tensor) -> Tensor:
        """``argmin_x (x - v)**2 / (2 tau) + g(x)`` for the summed fidelity ``g``."""
        raise NotImplementedError

    def conjugate(self, s: Tensor, f: Tensor) -> Tensor:
        """The convex conjugate ``g*(s)`` per value, for ``s`` inside its domain."""
        raise NotImplementedError

    def reference_value(self, x: Tensor, f: Tensor) -> Tensor:
        """The fidelity per value in the solver variable, as the certified solver defines
        it (without the Adam solver's floor)."""
        return self.value(x, f)

    def feasible_scale(self, s: Tensor) -> Tensor:
        """Largest ``theta <= 1`` per image putting ``theta * s`` in the domain of ``g*``."""
        return torch.ones(s.shape[0], dtype=s.dtype, device=s.device)

    def auto_weight(
        self, f: Tensor, reg: TotalVariation, *, sigma: Tensor | float | None, peak: float | None
    ) -> tuple[Tensor, Tensor | None]:
        """The automatic weight per image of a ``(B, C, *spatial)`` batch, and the noise
        level it was chosen from (Gaussian ``sigma`` per image, else ``None``)."""
        raise NotImplementedError


class Gaussian(DataTerm):
    """Squared error ``(u - f)**2``: additive white Gaussian noise."""

    name = "gaussian"
    white_under_rotation = True
    # Measured against the certified minimiser on 45 cases (scripts/eval_noise.py
    # --convergence): a short second-moment memory with lr = 0.2 x weight.
    schedule = Schedule(0.2, 0.03, 0.9)

    def value(self, u: Tensor, f: Tensor) -> Tensor:
        return (u - f).square()

    def gradient(self, u: Tensor, f: Tensor) -> Tensor:
        return 2 * (u - f)

    def variable_value(self, x: Tensor, f: Tensor, out: Tensor | None = None) -> Tensor:
        return torch.sub(x, f, out=out).square_() if out is not None else self.value(x, f)

    def half_gradient_(self, x: Tensor, f: Tensor, out: Tensor) -> None:
        torch.sub(x, f, out=out)

    def kernel_form(self) -> tuple[int, float]:
        return 0, 1.0

    def prox(self, v: Tensor, f: Tensor, tau: Tensor) -> Tensor:
        return (v + 2 * tau * f) / (1 + 2 * tau)

    def conjugate(self, s: Tensor, f: Tensor) -> Tensor:
        return s * f + s * s / 4

    def auto_weight(
        self, f: Tensor, reg: TotalVariation, *, sigma: Tensor | float | None, peak: float | None
    ) -> tuple[Tensor, Tensor | None]:
        from .auto import choose_weight

        if peak is not None:
            raise ValueError(f"peak applies to noise='poisson' only; got noise={self.name!r}")
        return choose_weight(f, reg, sigma=sigma)


class Impulse(DataTerm):
    """Huber error ``h_delta(u - f)``: salt-and-pepper noise, dead or hot pixels."""

    name = "impulse"
    schedule = Schedule(0.3, 0.03)

    def __init__(self, delta: float = IMPULSE_DELTA) -> None:
        if not delta > 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self.delta = delta

    def value(self, u: Tensor, f: Tensor) -> Tensor:
        return _huber(u - f, self.delta)

    def gradient(self, u: Tensor, f: Tensor) -> Tensor:
        return ((u - f) / self.delta).clamp_(-1.0, 1.0)

    def half_gradient_(self, x: Tensor, f: Tensor, out: Tensor) -> None:
        torch.sub(x, f, out=out).div_(self.delta).clamp_(-1.0, 1.0).mul_(0.5)

    def kernel_form(self) -> tuple[int, float]:
        return 1, self.delta

    def prox(self, v: Tensor, f: Tensor, tau: Tensor) -> Tensor:
        r = v - f
        inside = r.abs() <= self.delta + tau
        return f + torch.where(inside, r * (self.delta / (self.delta + tau)), r - tau * r.sign())

    def conjugate(self, s: Tensor, f: Tensor) -> Tensor:
        return s * f + self.delta / 2 * s * s

    def auto_weight(
        self, f: Tensor, reg: TotalVariation, *, sigma: Tensor | float | None, peak: float | None
    ) -> tuple[Tensor, Tensor | None]:
        from .noise_weight import impulse_auto_weight

        _only_own_level(self.name, sigma=sigma, peak=peak)
        return impulse_auto_weight(f, reg), None

    def feasible_scale(self, s: Tensor) -> Tensor:
        peak = s.abs().flatten(1).amax(1)
        return (1.0 / peak.clamp_min(1.0)).clamp_max(1.0)


class Poisson(DataTerm):
    """Poisson deviance of photon counts, solved in ``x = sqrt(u)``.

    In ``x`` shot noise has the same level ``1 / (2 sqrt(peak))`` at every intensity, and
    the total variation of ``x`` balances dark and bright areas (the TV of ``u`` itself
    smooths bright areas too much and dark ones too little); the problem is convex in
    ``x``. Adam's gradient is multiplied by ``x``, bounded where ``f / x`` is not.
    """

    name = "poisson"
    schedule = Schedule(0.03, 0.1)
    floor = math.sqrt(POISSON_FLOOR)

    def value(self, u: Tensor, f: Tensor) -> Tensor:
        return _deviance(u, f, POISSON_FLOOR)

    def gradient(self, u: Tensor, f: Tensor) -> Tensor:
        # Below the floor the logarithm is frozen and the gradient is 2.
        log_active = (u > POISSON_FLOOR) & (f > 0)
        return 2 - torch.where(log_active, 2 * f / u.clamp_min(POISSON_FLOOR), 0.0)

    def kernel_form(self) -> tuple[int, float]:
        return 2, POISSON_FLOOR

    def check_data(self, f: Tensor) -> None:
        if bool((f < 0).any()):
            raise ValueError("noisy must be >= 0 for noise='poisson' (photon counts / peak)")

    def to_variable(self, f: Tensor) -> Tensor:
        return f.clamp_min(POISSON_FLOOR).sqrt_()

    def from_variable_(self, x: Tensor) -> Tensor:
        return x.clamp_min_(0.0).square_()

    def variable_value(self, x: Tensor, f: Tensor, out: Tensor | None = None) -> Tensor:
        return _deviance(x.square(), f, POISSON_FLOOR)

    def half_gradient_(self, x: Tensor, f: Tensor, out: Tensor) -> None:
        # 2 (x - f / x), x > 0
        torch.div(f, x, out=out).neg_().add_(x).mul_(2.0)

    def precondition_(self, x: Tensor, grad: Tensor) -> None:
        grad.mul_(x)

    def prox(self, v: Tensor, f: Tensor, tau: Tensor) -> Tensor:
        # g = 2 (x^2 - 2 f log x) + const on x >= 0: the positive root of
        # (1/tau + 4) x^2 - (v / tau) x - 4 f = 0.
        k = 1 / tau + 4
        a = v / tau
        return (a + torch.sqrt(a * a + 16 * k * f)) / (2 * k)

    def conjugate(self, s: Tensor, f: Tensor) -> Tensor:
        # sup_x s x - g(x), attained at the positive root of 4 x^2 - s x - 4 f = 0.
        x = (s + torch.sqrt(s * s + 64 * f)) / 8
        return s * x - _sqrt_deviance(x, f)

    def reference_value(self, x: Tensor, f: Tensor) -> Tensor:
        """The deviance of ``u = x**2`` without the floor (the certified solver's energy)."""
        return _sqrt_deviance(x, f)

    def auto_weight(
        self, f: Tensor, reg: TotalVariation, *, sigma: Tensor | float | None, peak: float | None
    ) -> tuple[Tensor, Tensor | None]:
        from .noise_weight import poisson_auto_weight

        _only_own_level(self.name, sigma=sigma, peak=None)
        return poisson_auto_weight(f, reg, peak=peak), None


def _only_own_level(noise: str, *, sigma: Tensor | float | None, peak: float | None) -> None:
    if sigma is not None:
        raise ValueError(f"sigma applies to noise='gaussian' only, got noise={noise!r}")
    if peak is not None:
        raise ValueError(f"peak applies to noise='poisson' only; got noise={noise!r}")


def _sqrt_deviance(x: Tensor, f: Tensor) -> Tensor:
    """Poisson deviance of ``u = x**2``: ``2 (x^2 - f - 2 f log x + f log f)``, per value."""
    positive = f > 0
    safe_f = torch.where(positive, f, torch.ones_like(f))
    safe_x = torch.where(positive, x, torch.ones_like(x))
    log_term = torch.where(positive, 2 * f * torch.log(safe_f.sqrt() / safe_x), 0.0)
    return 2 * (x * x - f) + 2 * log_term


#: The noise models by name; the command line's ``--noise`` choices.
DATA_TERMS: dict[str, DataTerm] = {t.name: t for t in (Gaussian(), Impulse(), Poisson())}


def data_term(noise: str) -> DataTerm:
    """The :class:`DataTerm` registered as ``noise``."""
    check_choice("noise", noise, tuple(DATA_TERMS))
    return DATA_TERMS[noise]
