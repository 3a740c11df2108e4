"""The public entry points: choose the weight, tile if needed, run the solver.

:func:`restore` and :func:`denoise` sit on top of :func:`tvdenoise.solver.solve` (the Adam
iteration for given weights). They add what a user of a whole image needs: the automatic
weight (``weight="auto"``) and overlapping tiles for images too large for the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from .auto import auto_weight
from .fidelity import NoiseModel
from .noise_weight import auto_weight_for_noise
from .solver import (
    DEFAULT_EPS,
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    Callback,
    energy,
    solve,
    weights_per_image,
)
from .tiling import DEFAULT_OVERLAP, auto_tile, run_tiled, tiles_per_batch
from .tv import ColorMode, TVKind, as_batch

__all__ = ["Restoration", "Weight", "denoise", "restore"]

#: A weight: one number, one per image, or ``"auto"``.
Weight = float | Sequence[float] | Tensor | Literal["auto"]


@dataclass(frozen=True)
class Restoration:
    """What :func:`restore` returns.

    Attributes:
        restored: the restored images, ``(B, C, H, W)``, clipped to [0, 1].
        weights: the weight used per image, ``(B,)``.
        sigmas: the Gaussian noise level per image on the [0, 1] scale (estimated, or as
            given) when the weight was chosen automatically for Gaussian noise, else
            ``None``.
        iterations: iterations run per image (the most of any tile), ``(B,)``.
        energy: the final energy per image, ``(B,)``.
    """

    restored: Tensor
    weights: Tensor
    sigmas: Tensor | None
    iterations: Tensor
    energy: Tensor


def _resolve_weights(
    f: Tensor,
    weight: Weight,
    sigma: float | Tensor | None,
    tv: TVKind,
    color: ColorMode,
    noise: NoiseModel,
    peak: float | None,
    eps: float,
) -> tuple[Tensor | float | Sequence[float], Tensor | None]:
    if isinstance(weight, str):
        if weight != "auto":
            raise ValueError(f"weight must be a number >= 0 or 'auto', got {weight!r}")
        if noise == "gaussian":
            return auto_weight(f, sigma=sigma, tv=tv, color=color, eps=eps)
        if sigma is not None:
            raise ValueError(f"sigma applies to noise='gaussian' only, got noise={noise!r}")
        return auto_weight_for_noise(f, noise, peak=peak, tv=tv, color=color), None
    if sigma is not None:
        raise ValueError("sigma sets the automatic weight; it needs weight='auto'")
    return weight, None


def restore(
    image: Tensor,
    weight: Weight = "auto",
    *,
    sigma: float | Tensor | None = None,
    noise: NoiseModel = "gaussian",
    peak: float | None = None,
    tv: TVKind = "isotropic",
    color: ColorMode = "joint",
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    lr: float | None = None,
    eps: float = DEFAULT_EPS,
    tile: int | None = None,
    callback: Callback | None = None,
) -> Restoration:
    """Denoise images and report the weights, noise levels, iterations and energies.

    Options as in :func:`denoise`; ``callback(iteration, energy)`` is called at every
    energy check of an untiled solve (for progress bars).

    Returns:
        A :class:`Restoration` with ``(B, C, H, W)`` images.
    """
    f = as_batch(image)
    if f.dtype not in (torch.float32, torch.float64):
        f = f.float()
    if tile is not None and tile < 0:
        raise ValueError(f"tile must be >= 0 (0: never tile), got {tile}")
    weights, sigmas = _resolve_weights(f, weight, sigma, tv, color, noise, peak, eps)
    run = partial(
        solve, tv=tv, color=color, max_iter=max_iter, tol=tol, lr=lr, eps=eps, noise=noise
    )
    chosen = auto_tile(f.shape, f.device, f.dtype) if tile is None else tile
    if not chosen or (chosen >= f.shape[-2] and chosen >= f.shape[-1]):
        result = run(f, weights, peak=peak, callback=callback)
        return Restoration(
            result.restored, result.weights, sigmas, result.iterations, result.energy
        )
    per_image = weights_per_image(weights, f.shape[0], f)

    def solve_tiles(tiles: Tensor, tile_weights: Tensor) -> tuple[Tensor, Tensor]:
        done = run(tiles, tile_weights, peak=peak)
        return done.restored, done.iterations

    restored, iterations = run_tiled(
        f,
        per_image,
        solve_tiles,
        tile=chosen,
        overlap=DEFAULT_OVERLAP,
        tiles_per_batch=tiles_per_batch(f.device),
    )
    final = energy(restored, f, per_image, tv=tv, color=color, eps=eps, noise=noise)
    return Restoration(restored, per_image, sigmas, iterations, final)


def denoise(
    image: Tensor,
    weight: Weight = "auto",
    *,
    sigma: float | Tensor | None = None,
    noise: NoiseModel = "gaussian",
    peak: float | None = None,
    tv: TVKind = "isotropic",
    color: ColorMode = "joint",
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    lr: float | None = None,
    eps: float = DEFAULT_EPS,
    tile: int | None = None,
) -> Tensor:
    """Total-variation denoising of an image or a batch of images.

    Minimises, per image with ``N = C*H*W`` values ``f`` on [0, 1],
    ``E(u) = fidelity(u, f) + weight * TV_eps(u) / N`` with Adam, on the device of
    ``image``. For Gaussian noise the fidelity is ``mean((u - f)**2)``: the classic ROF
    parameter of ``0.5 ||u - f||^2 + lambda TV(u)`` is then ``lambda = weight / 2``, and
    ``weight`` is in intensity units on [0, 1] (about 1.4 to 2.5 times the noise standard
    deviation is a good start). See :mod:`tvdenoise.solver` for the iteration and its
    stopping rule: every 10 iterations an image stops once ``|E_prev - E| < tol * E``, and
    after ``max_iter`` iterations at most.

    Args:
        image: float tensor ``(C, H, W)`` or ``(B, C, H, W)`` with intensities in [0, 1].
        weight: regularisation weight ``>= 0`` (one number, or one per image), or
            ``"auto"`` (default): estimated per image from its noise level
            (:func:`tvdenoise.auto.auto_weight`, or for impulse/Poisson noise
            :func:`tvdenoise.noise_weight.auto_weight_for_noise`). ``0`` returns the input.
        sigma: Gaussian noise standard deviation on the [0, 1] scale (a number or one
            per image) for the automatic weight, instead of estimating it.
        noise: ``"gaussian"`` (squared error), ``"impulse"`` (absolute error: salt and
            pepper, dead pixels) or ``"poisson"`` (photon counts); see
            :mod:`tvdenoise.fidelity`.
        peak: photons at intensity 1 for ``noise="poisson"``; estimated when ``None``.
        tv: ``"isotropic"`` or ``"anisotropic"`` total variation.
        color: ``"joint"`` (one gradient magnitude for all channels) or ``"separate"``.
        max_iter: maximum number of Adam iterations.
        tol: relative energy change below which an image stops.
        lr: initial learning rate; default proportional to the weight.
        eps: Huber smoothing radius of the total variation (> 0).
        tile: solve in overlapping tiles of this many pixels; ``None`` decides from the
            image size and the device's memory, ``0`` never tiles.

    Returns:
        The restored image(s), shape, dtype and device of ``image``, clipped to [0, 1].

    Example:
        >>> noisy = (torch.rand(3, 32, 32) * 0.2 + 0.4).clamp(0, 1)
        >>> denoise(noisy, 0.1).shape
        torch.Size([3, 32, 32])
    """
    result = restore(
        image,
        weight,
        sigma=sigma,
        noise=noise,
        peak=peak,
        tv=tv,
        color=color,
        max_iter=max_iter,
        tol=tol,
        lr=lr,
        eps=eps,
        tile=tile,
    )
    return result.restored.to(image.dtype).reshape(image.shape)
