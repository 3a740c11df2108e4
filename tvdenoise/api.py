"""The public entry points: choose the weight, tile if needed, run the solver.

:func:`restore` and :func:`denoise` sit on top of :func:`tvdenoise.solver.solve` (the Adam
iteration for given weights). They add what a user of a whole image needs: the automatic
weight (``weight="auto"``) and overlapping tiles for images too large for the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch
from torch import Tensor

from .anscombe import anscombe, inverse_anscombe
from .auto import choose_weight
from .checks import check_choice, floating
from .colour import (
    CHROMA,
    LIGHT,
    ColorChoice,
    chroma_weights,
    from_opponent,
    opponent_regulariser,
    opponent_weights,
    partly_missing,
    resolve_color,
    to_opponent,
)
from .convert import ChannelAxis, Image, Mask, to_working
from .defaults import MIN_TILE, RegulariserName
from .fidelity import DataTerm, NoiseModel, data_term
from .missing import all_finite, check_finite
from .noise_weight import PHOTON_ESTIMATORS, poisson_estimators
from .solver import (
    DEFAULT_EPS,
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    Callback,
    DenoiseResult,
    Iteration,
    energy,
    model,
    run_solver,
    weights_per_image,
)
from .tgv import DEFAULT_RATIO, Regulariser, TotalGeneralisedVariation
from .tiling import DEFAULT_OVERLAP, auto_tile, images_per_batch, run_tiled, tiles_per_batch
from .tv import TotalVariation, TVKind

__all__ = ["REGULARISERS", "RegulariserName", "Restoration", "Weight", "denoise", "restore"]

#: A weight: one number, one per image, or ``"auto"``.
Weight = float | Sequence[float] | Tensor | Literal["auto"]
REGULARISERS: tuple[str, ...] = get_args(RegulariserName)


@dataclass(frozen=True)
class Restoration:
    """What :func:`restore` returns.

    Attributes:
        restored: the restored images, ``(B, C, *spatial)``, clipped to [0, 1].
        weights: the weight used per image, ``(B,)``.
        sigmas: the Gaussian noise level per image on the [0, 1] scale (estimated, or as
            given) when the weight was chosen automatically for Gaussian noise, else
            ``None``.
        iterations: iterations run per image (the most of any tile), ``(B,)``.
        energy: the final energy per image, ``(B,)``.
        chroma_weights: for ``color="opponent"``, the colour weight per image, ``(B,)``
            (``weights`` are then the brightness weights); for ``noise="poisson"`` with
            the automatic weight on RGB images, the colour weight of the images that the
            Anscombe estimator restored in the opponent space (NaN for the others); else
            ``None``.
        noise_models: for ``noise="poisson"`` with the automatic weight, the estimator
            each image was restored with: ``"poisson"``, ``"gaussian"`` or
            ``"anscombe"`` (the Gaussian model on the Anscombe transform of the counts;
            whichever scored best on held-out photons, see
            :func:`tvdenoise.noise_weight.poisson_estimators`; ``weights`` are in its
            units); else ``None``.
    """

    restored: Tensor
    weights: Tensor
    sigmas: Tensor | None
    iterations: Tensor
    energy: Tensor
    chroma_weights: Tensor | None = None
    noise_models: tuple[str, ...] | None = None


def _regulariser(name: str, first_order: TotalVariation, noise: str) -> Regulariser:
    """The regulariser ``name`` stands for, with the validated TV's options."""
    check_choice("reg", name, REGULARISERS)
    if name == "tv":
        return first_order
    if first_order.kind != "isotropic":
        raise ValueError(
            f"reg='tgv' is isotropic; tv={first_order.kind!r} applies to reg='tv' only"
        )
    if noise != "gaussian":
        raise ValueError(f"reg='tgv' supports noise='gaussian' only, got noise={noise!r}")
    tv = first_order
    return TotalGeneralisedVariation(DEFAULT_RATIO, tv.color, tv.eps, tv.spatial_dims, tv.spacing)


def _resolve_weights(
    f: Tensor,
    weight: Weight,
    sigma: float | Tensor | None,
    reg: Regulariser,
    term: DataTerm,
    peak: float | None,
) -> tuple[Tensor | float | Sequence[float], Tensor | None]:
    if isinstance(weight, str):
        if weight != "auto":
            raise ValueError(f"weight must be a number >= 0 or 'auto', got {weight!r}")
        if isinstance(reg, TotalGeneralisedVariation):  # Gaussian noise only
            return choose_weight(f, reg, sigma=sigma)
        return term.auto_weight(f, reg, sigma=sigma, peak=peak)
    if sigma is not None:
        raise ValueError("sigma sets the automatic weight; it needs weight='auto'")
    return weight, None


def _with_missing(f: Tensor, mask: Tensor | None) -> Tensor:
    """``f`` with the values ``mask`` marks as missing set to NaN; infinities refused."""
    check_finite(f)
    if mask is None:
        return f
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor (True: missing), got {type(mask).__name__}")
    try:
        full = torch.broadcast_to(mask.to(f.device), f.shape)
    except RuntimeError:
        raise ValueError(
            f"mask must broadcast to the image's shape {tuple(f.shape)}, got {tuple(mask.shape)}"
        ) from None
    return f.masked_fill(full, math.nan)


def restore(
    image: Tensor,
    weight: Weight = "auto",
    *,
    sigma: float | Tensor | None = None,
    noise: NoiseModel = "gaussian",
    peak: float | None = None,
    tv: TVKind = "isotropic",
    color: ColorChoice = "auto",
    chroma_weight: float | Sequence[float] | Tensor | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    lr: float | None = None,
    eps: float = DEFAULT_EPS,
    tile: int | None = None,
    callback: Callback | None = None,
    spatial_dims: int = 2,
    spacing: Sequence[float] | None = None,
    mask: Tensor | None = None,
    reg: RegulariserName = "tv",
) -> Restoration:
    """Denoise images or volumes and report the weights, noise levels, iterations and
    energies.

    Options as in :func:`denoise`; ``callback(iteration, energy)`` is called at every
    energy check (for progress bars). Where the solve runs in parts one after another
    (tiles; the brightness and the colour of the opponent space; on CPU, groups of images
    of a batch), each part reports the progress of them all, in iterations of one, and
    the energies of its own images (of a tile: the tile's).

    Returns:
        A :class:`Restoration` with ``(B, C, *spatial)`` images.
    """
    first_order, term = model(tv, "joint", eps, spatial_dims, spacing, noise, peak)
    iteration = Iteration(max_iter, tol, lr)
    # The result is data, not a function of the input autograd could follow.
    f = _with_missing(floating(first_order.batch(image).detach()), mask)
    partly = color == "auto" and f.shape[1] == 3 and partly_missing(f)
    mode = resolve_color(color, f.shape[1], noise, partly=partly)
    if color in ("joint", "separate") and chroma_weight is not None:
        raise ValueError(f"chroma_weight applies to color='opponent' only; got color={color!r}")
    if mode == "separate":
        first_order = replace(first_order, color="separate")
    regulariser = _regulariser(reg, first_order, noise)
    if f.shape[0] == 0:
        nothing = f.new_zeros(0)
        return Restoration(f.clone(), nothing, None, nothing.long(), nothing)
    if tile is not None and (tile < 0 or 0 < tile < MIN_TILE):
        raise ValueError(f"tile must be 0 (never tile) or >= {MIN_TILE} pixels, got {tile}")
    term.check_data(f)
    if mode == "opponent":
        return _restore_opponent(
            f, weight, chroma_weight, sigma, regulariser, iteration, tile, callback
        )
    if term.name == "poisson" and isinstance(weight, str) and weight == "auto":
        # The Anscombe estimator's data have Gaussian-like noise, white in every colour
        # direction: the colour mode that Gaussian noise would get.
        opponent = resolve_color(color, f.shape[1], "gaussian", partly=partly) == "opponent"
        return _restore_photons(f, sigma, peak, first_order, iteration, tile, callback, opponent)
    weights, sigmas = _resolve_weights(f, weight, sigma, regulariser, term, peak)
    result = _solve(f, weights, regulariser, term, iteration, tile, callback)
    return Restoration(result.restored, result.weights, sigmas, result.iterations, result.energy)


def _solve(
    f: Tensor,
    weights: Tensor | float | Sequence[float],
    reg: Regulariser,
    term: DataTerm,
    iteration: Iteration,
    tile: int | None,
    callback: Callback | None,
    *,
    clip: bool = True,
) -> DenoiseResult:
    """Solve a batch whole, or in tiles when ``tile`` (or the device's memory) asks."""
    chosen = auto_tile(f.shape, f.device, f.dtype) if tile is None else tile
    per_image = weights_per_image(weights, f.shape[0], f)
    if not chosen or all(chosen >= n for n in f.shape[2:]):
        return _solve_images(f, per_image, reg, term, iteration, callback, clip=clip)
    c = f.shape[1]

    def solve_tiles(
        tiles: Tensor, tile_weights: Tensor, index: int, count: int
    ) -> tuple[Tensor, Tensor]:
        progress = _share(callback, index, count, iteration.max_iter)
        done = run_solver(tiles[:, :c], tile_weights, reg, term, iteration, progress, clip=clip)
        if done.field is None:
            return done.restored, done.iterations
        return torch.cat([done.restored, done.field], dim=1), done.iterations

    # TGV's field is stitched with the image (as extra channels) for the final energy.
    extra = 0 if isinstance(reg, TotalVariation) else reg.spatial_dims * c
    padded = f if not extra else torch.cat([f, f.new_zeros((f.shape[0], extra, *f.shape[2:]))], 1)
    stitched, iterations = run_tiled(
        padded,
        per_image,
        solve_tiles,
        tile=chosen,
        overlap=DEFAULT_OVERLAP,
        tiles_per_batch=tiles_per_batch(f.device),
    )
    final = energy(stitched, f, per_image, reg, term)
    restored = stitched[:, :c].contiguous() if extra else stitched
    return DenoiseResult(restored, per_image, iterations, final)


def _solve_images(
    f: Tensor,
    weights: Tensor,
    reg: Regulariser,
    term: DataTerm,
    iteration: Iteration,
    callback: Callback | None,
    *,
    clip: bool,
) -> DenoiseResult:
    """Solve whole images, a group of them at a time (:func:`images_per_batch`)."""
    size = images_per_batch(f.shape, f.device)
    starts = range(0, f.shape[0], size)
    if len(starts) <= 1:
        return run_solver(f, weights, reg, term, iteration, callback, clip=clip)
    parts = [
        run_solver(
            f[start : start + size],
            weights[start : start + size],
            reg,
            term,
            iteration,
            _share(callback, index, len(starts), iteration.max_iter),
            clip=clip,
        )
        for index, start in enumerate(starts)
    ]
    fields = [p.field for p in parts if p.field is not None]
    return DenoiseResult(
        torch.cat([p.restored for p in parts]),
        weights,
        torch.cat([p.iterations for p in parts]),
        torch.cat([p.energy for p in parts]),
        torch.cat(fields) if len(fields) == len(parts) else None,
    )


def _share(callback: Callback | None, index: int, count: int, max_iter: int) -> Callback | None:
    """The callback of the ``index``-th of ``count`` solves run one after another, which
    reports the progress of them all in iterations of one: the ``index``-th at its
    iteration ``i`` reports ``(index * max_iter + i) // count``."""
    if callback is None or count == 1:
        return callback
    outer = callback

    def report(i: int, energy: Tensor) -> None:
        outer((index * max_iter + i) // count, energy)

    return report


def _restore_opponent(
    f: Tensor,
    weight: Weight,
    chroma_weight: float | Sequence[float] | Tensor | None,
    sigma: float | Tensor | None,
    reg: Regulariser,
    iteration: Iteration,
    tile: int | None,
    callback: Callback | None,
) -> Restoration:
    """Gaussian denoising in the opponent colour space (:mod:`tvdenoise.colour`): the
    brightness and the colour problems solved apart, each at its own weight."""
    b = f.shape[0]
    sigmas: Tensor | None = None
    if isinstance(weight, str):
        if weight != "auto":
            raise ValueError(f"weight must be a number >= 0 or 'auto', got {weight!r}")
        light, colour, sigmas = opponent_weights(f, reg, sigma=sigma, colour=chroma_weight is None)
        light = weights_per_image(light, b, f)
        colour = colour if chroma_weight is None else chroma_weights(chroma_weight, light)
    else:
        if sigma is not None:
            raise ValueError("sigma sets the automatic weight; it needs weight='auto'")
        light = weights_per_image(weight, b, f)
        colour = chroma_weights(chroma_weight, light)
    g = to_opponent(f)
    part_reg = opponent_regulariser(reg)
    term = data_term("gaussian")
    parts = [
        _solve(
            g[:, channels].contiguous(),
            w,
            part_reg,
            term,
            iteration,
            tile,
            _share(callback, index, 2, iteration.max_iter),
            clip=False,
        )
        for index, (channels, w) in enumerate(((LIGHT, light), (CHROMA, colour)))
    ]
    # The data plus the change taken back to RGB: exactly the data where nothing changed
    # (weight 0); where a pixel is missing, the values the total variation filled in.
    change = torch.empty_like(g)
    for part, channels in zip(parts, (LIGHT, CHROMA), strict=True):
        torch.sub(part.restored, g[:, channels], out=change[:, channels])
    restored = from_opponent(change).add_(f)
    if not all_finite(restored):
        u = torch.cat([p.restored for p in parts], dim=1)
        restored = torch.where(torch.isnan(restored), from_opponent(u), restored)
    restored.clamp_(0.0, 1.0)
    # Both energies are means over their values: one brightness and two colour channels.
    total = (parts[0].energy + 2 * parts[1].energy) / 3
    iterations = torch.maximum(parts[0].iterations, parts[1].iterations)
    return Restoration(restored, parts[0].weights, sigmas, iterations, total, parts[1].weights)


def _restore_photons(
    f: Tensor,
    sigma: float | Tensor | None,
    peak: float | None,
    reg: TotalVariation,
    iteration: Iteration,
    tile: int | None,
    callback: Callback | None,
    opponent: bool,
) -> Restoration:
    """Photon noise at the automatic weight: per image, the estimator that restores
    held-out photons best (:func:`tvdenoise.noise_weight.poisson_estimators`): the
    Poisson model, the Gaussian one, or the Gaussian one on the Anscombe transform
    (:mod:`tvdenoise.anscombe`; its energy is then the transformed problem's; with
    ``opponent``, in the opponent colour space)."""
    if sigma is not None:
        raise ValueError("sigma applies to noise='gaussian' only, got noise='poisson'")
    choice = poisson_estimators(f, reg, peak=peak, opponent=opponent)
    restored = torch.empty_like(f)
    iterations = torch.zeros(f.shape[0], dtype=torch.long)
    final = f.new_zeros(f.shape[0])
    present = [name for name in PHOTON_ESTIMATORS if name in choice.estimators]
    for part, name in enumerate(present):
        index = torch.tensor([i for i, e in enumerate(choice.estimators) if e == name])
        on_device = index.to(f.device)
        share = _share(callback, part, len(present), iteration.max_iter)
        if name == "anscombe":
            peaks = choice.peaks[index].to(f.device)
            z = anscombe(f[on_device], peaks)
            done: Restoration | DenoiseResult
            if choice.chroma_weights is not None:
                done = _restore_opponent(
                    z,
                    choice.weights[index],
                    choice.chroma_weights[index],
                    None,
                    reg,
                    iteration,
                    tile,
                    share,
                )
            else:
                done = _solve(
                    z,
                    choice.weights[index],
                    reg,
                    data_term("gaussian"),
                    iteration,
                    tile,
                    share,
                    clip=False,
                )
            restored[on_device] = inverse_anscombe(done.restored, peaks).clamp_(0.0, 1.0)
        else:
            done = _solve(
                f[on_device], choice.weights[index], reg, data_term(name), iteration, tile, share
            )
            restored[on_device] = done.restored
        iterations[index] = done.iterations
        final[on_device] = done.energy
    per_image = weights_per_image(choice.weights, f.shape[0], f)
    chroma = None if choice.chroma_weights is None else choice.chroma_weights.to(per_image)
    return Restoration(
        restored, per_image, None, iterations, final, chroma, noise_models=choice.estimators
    )


def denoise(
    image: Image,
    weight: Weight = "auto",
    *,
    channel_axis: ChannelAxis = "auto",
    sigma: float | Tensor | None = None,
    noise: NoiseModel = "gaussian",
    peak: float | None = None,
    tv: TVKind = "isotropic",
    color: ColorChoice = "auto",
    chroma_weight: float | Sequence[float] | Tensor | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    lr: float | None = None,
    eps: float = DEFAULT_EPS,
    tile: int | None = None,
    spatial_dims: int = 2,
    spacing: Sequence[float] | None = None,
    mask: Mask | None = None,
    reg: RegulariserName = "tv",
) -> Image:
    """Total-variation denoising of images, volumes or time series.

    Minimises, per image with ``N`` values ``f`` on [0, 1] (``N = C*H*W`` for an image,
    ``C*D*H*W`` for a volume),
    ``E(u) = fidelity(u, f) + weight * TV_eps(u) / N`` with Adam, on the device of
    ``image``. For Gaussian noise the fidelity is ``mean((u - f)**2)``: the classic ROF
    parameter of ``0.5 ||u - f||^2 + lambda TV(u)`` is then ``lambda = weight / 2``, and
    ``weight`` is in intensity units on [0, 1] (about 1.4 to 2.5 times the noise standard
    deviation is a good start). See :mod:`tvdenoise.solver` for the iteration and its
    stopping rule: every 10 iterations an image stops once ``|E_prev - E| < tol * E``, and
    after ``max_iter`` iterations at most.

    Args:
        image: a tensor ``(C, *spatial)`` or ``(B, C, *spatial)`` (the last ``spatial_dims``
            axes are spatial), or a NumPy array ``(H, W)`` or ``(H, W, C)`` (``(D, H, W)``
            or ``(D, H, W, C)`` with ``spatial_dims=3``); floats with intensities on
            [0, 1], or integers (scaled by their dtype's range, e.g. uint8 by 255). Other
            layouts through ``channel_axis``.
        weight: regularisation weight ``>= 0`` (one number, or one per image), or
            ``"auto"`` (default): estimated per image from its noise level
            (:func:`tvdenoise.auto.auto_weight`, or for impulse/Poisson noise
            :func:`tvdenoise.noise_weight.auto_weight_for_noise`). ``0`` returns the input.
            With ``color="opponent"`` it is the brightness weight.
        sigma: Gaussian noise standard deviation on the [0, 1] scale (a number or one
            per image) for the automatic weight, instead of estimating it.
        noise: ``"gaussian"`` (squared error), ``"impulse"`` (absolute error: salt and
            pepper, dead pixels) or ``"poisson"`` (photon counts); see
            :mod:`tvdenoise.fidelity`. With ``"poisson"`` and ``weight="auto"`` each image
            is restored with the Poisson model, the Gaussian one, or the Gaussian one on
            the Anscombe transform of the counts, whichever restores held-out photons
            best (:func:`tvdenoise.noise_weight.poisson_estimators`).
        peak: photons at intensity 1 for ``noise="poisson"``; estimated when ``None``.
        tv: ``"isotropic"`` or ``"anisotropic"`` total variation.
        color: ``"joint"`` (one gradient magnitude for all channels), ``"separate"``,
            ``"opponent"`` (three channels, Gaussian noise: brightness and the two
            colour differences of an orthonormal opponent space, each with its own
            weight; see :mod:`tvdenoise.colour`) or ``"auto"`` (default): ``"opponent"``
            for three-channel images with Gaussian noise (unless some pixel lacks some
            of its channels but not all), ``"joint"`` otherwise.
        chroma_weight: for ``"opponent"``, the weight of the colour channels (one
            number or one per image); ``None``: chosen automatically with
            ``weight="auto"``, else ``CHROMA_RATIO`` (:mod:`tvdenoise.colour`) times
            ``weight``. Ignored where ``"auto"`` resolves to ``"joint"``; an error
            with ``"joint"`` or ``"separate"``.
        max_iter: maximum number of Adam iterations.
        tol: relative energy change below which an image stops.
        lr: initial learning rate; default proportional to the weight.
        eps: Huber smoothing radius of the total variation (> 0).
        tile: solve in overlapping tiles (cubes for volumes) of this many pixels a side,
            at least ``MIN_TILE`` (16); ``None`` decides from the size and the device's
            memory, ``0`` never tiles.
        spatial_dims: number of trailing spatial axes: 2 (images, each slice on its own)
            or 3 (volumes ``(D, H, W)``, or time series ``(T, H, W)``: neighbouring slices
            or frames are coupled by the total variation).
        spacing: sample distance per spatial axis (``None``: all 1); each axis'
            differences are divided by it, so ``spacing=(3, 1, 1)`` couples the slices of a
            volume whose z-step is three pixels more weakly. Give it relative to the
            in-plane pixel size, so that ``weight`` keeps its meaning.
        mask: boolean tensor or array broadcastable to ``image`` (in its own layout),
            ``True`` where a value is missing (as NaN values of ``image`` are): no fidelity
            there, so the total variation fills it in from its surroundings (see
            :mod:`tvdenoise.missing` for how large a hole is sensible). Infinite values
            are an error.
        reg: ``"tv"`` (total variation) or ``"tgv"``: second-order total generalised
            variation (:mod:`tvdenoise.tgv`), which keeps edges like TV but restores
            smooth shading without TV's staircase; for smooth scientific images
            (micrographs, astronomy). ``weight`` is then its first-order weight, the
            second-order one is :data:`tvdenoise.tgv.DEFAULT_RATIO` times it. Gaussian
            noise and isotropic ``tv`` only.
        channel_axis: the axis holding the channels (``-1`` for channels last), ``None``
            for none, or ``"auto"``: ``(C, *spatial)`` / ``(B, C, *spatial)`` for tensors,
            ``(*spatial)`` / ``(*spatial, C)`` for arrays; see :mod:`tvdenoise.convert`.

    Returns:
        The restored image(s) of the type, shape, dtype and device of ``image``, on
        [0, 1] (floats) or rounded to the integer dtype's levels.

    Example:
        >>> noisy = (torch.rand(3, 32, 32) * 0.2 + 0.4).clamp(0, 1)
        >>> denoise(noisy, 0.1).shape
        torch.Size([3, 32, 32])
        >>> volume = (torch.rand(1, 8, 24, 24) * 0.2 + 0.4)
        >>> denoise(volume, 0.1, spatial_dims=3, spacing=(2.0, 1.0, 1.0)).shape
        torch.Size([1, 8, 24, 24])
    """
    prepared = to_working(image, channel_axis=channel_axis, spatial_dims=spatial_dims)
    result = restore(
        prepared.tensor,
        weight,
        sigma=sigma,
        noise=noise,
        peak=peak,
        tv=tv,
        color=color,
        chroma_weight=chroma_weight,
        max_iter=max_iter,
        tol=tol,
        lr=lr,
        eps=eps,
        tile=tile,
        spatial_dims=spatial_dims,
        spacing=spacing,
        mask=prepared.working_mask(mask),
        reg=reg,
    )
    return prepared.restore_layout(result.restored)
