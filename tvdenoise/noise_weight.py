"""Noise levels and automatic weights for the impulse and Poisson noise models.

Gaussian noise has its own estimator (:func:`tvdenoise.estimate_sigma`) and weight rule
(:mod:`tvdenoise.auto`); this module gives the other two models theirs, with one entry
point, :func:`auto_weight_for_noise`.

Impulse (salt-and-pepper) noise
-------------------------------
:func:`estimate_impulse_fraction` counts the values that sit at an extreme of the range
(``<= 0.5/255`` or ``>= 254.5/255``) while differing from the median of their 3x3
neighbourhood (same channel) by more than ``0.2``: dead, hot and salt-and-pepper pixels.
Saturated areas are not counted (their median is saturated too). The TV-L1 energy keeps a
bright or dark blob of ``a`` pixels only while its fidelity cost, ``a`` times its contrast,
is below ``weight`` times its total variation, about its perimeter times its contrast:
the weight is a length scale, independent of the contrast. Isolated outliers go for
``weight > 1 / (2 + sqrt 2) = 0.29``; corrupted pixels that touch form larger blobs, and
their size grows with the corrupted fraction ``rho``, hence the rule
:func:`impulse_weight` ``= a * (1 + b * rho)``. With the joint colour TV (isotropic,
``color="joint"``) a spike in one channel costs less total variation where the other
channels already vary, so colour images need a larger weight (a fitted factor for three
channels); with separate channels or the anisotropic TV each channel is an image of its
own and the factor is 1.

That rule is only a starting point: smooth scenes (micrographs, skies) want several times
its weight, fine texture less. :func:`auto_weight_for_noise` refines it per image on
held-out values (``_ImpulseHoldOut``): salt and pepper leaves the values it misses exact,
so a few of the values that are not at 0 or 1 (``_HOLD_OUT``) are turned into salt and
pepper as well, and the weight is the one whose result is closest to the known values
there (and to the data elsewhere), searched on the same grid as the Gaussian SURE search
(:func:`tvdenoise.auto.refine_weights`, on the same sample of up to 16 tiles for large
images), then polished on a grid three times finer: restored almost perfectly, these
images reach a high PSNR where a small error in the weight is costly, and the score's
minimum is a cusp that the coarse parabola misses.

Poisson (photon) noise
----------------------
:func:`estimate_peak` reads the photon scale from the variance-mean relation of counts:
for ``f = counts / peak`` the variance at intensity ``x`` is ``x / peak``. It takes the
unit-norm Immerkaer residual (as :func:`tvdenoise.estimate_sigma` does), whose variance on
smooth content is the local variance, and per 8x8 block the ratio of the mean squared
residual to the mean intensity. Texture only adds to a ratio, so ``1 / peak`` is the 10th
percentile of the block ratios divided by the same percentile for pure noise
(``_NOISE_QUANTILE``). Blocks close to 1 (where a file clips the counts) or holding fewer
than about 2 photons per pixel are skipped. Where fewer than 16 blocks remain (few
photons: then almost every block of a photograph holds a clipped value or too few
photons), the ratio pooled over all windows without a clipped value is used, calibrated
by simulation: those windows are the ones whose counts happened to stay below full scale,
which read the peak too high. Counts are simulated from the smoothed image at the current
peak, clipped and measured the same way, and the peak is scaled by the simulated over the
observed ratio, until it settles (eight rounds; after three the estimate could still be
10 % high on a bright smooth scene, and the weights of such scenes are sensitive to it).

The solver restores ``v = sqrt(u)`` for this model (:func:`tvdenoise.solve`), where
shot noise has the same standard deviation ``1 / (2 sqrt(peak))`` at every intensity, and
the TV weight is, as for Gaussian noise, proportional to that noise level:
:func:`poisson_weight` ``= c * sqrt(C) / (2 sqrt(peak))``. The ``sqrt(C)`` (joint colour
TV only) is the growth of the noise's joint gradient magnitude with the channel count
``C``, against a fidelity that grows like ``C``.

As for impulse noise the rule is a starting point, refined per image by
``_PoissonHoldOut``: the counts ``peak * f`` are split by binomial thinning into two
independent Poisson images, most of the photons (``1 - _THINNING``) are restored and
scored against the rest (the mean squared distance is the error plus a constant), on the
same weight grid, and the best weight for that share of the photons is scaled by the
square root of the share. A value clipped at full scale only says that its count reached
it; its count is drawn from the Poisson law given that, at the rate read from the result
at the rule's weight, so that every value is split and scored (scoring only values away
from full scale fits the weight to the dark areas). Thinning is exact only at the right
peak: with the peak overestimated the two halves are correlated and the score favours too
little smoothing, hence the calibrated estimate above. Polishing as for impulse noise does
not help here: the thinned score is too noisy at low photon counts for a finer grid.

No one estimator is the best for all photon-noise data. With the automatic weight,
:func:`poisson_estimators` gives three their weights and keeps, per image, the one that
restores held-out photons best:

* the Poisson model, at the weight refined by thinning (above);
* the Gaussian model (squared error, blind to the variance following the intensity),
  which wins on some mid-grey textures and at low counts. Its weight minimises the
  Poisson unbiased risk estimate (PURE, ``_PhotonRisk``) at the full photon level: for
  ``y = counts / peak``,
  ``mean((u - y)**2) - mean(y) / peak + 2 / (N peak) * sum_i y_i du_i/dy_i`` estimates
  ``mean((u - x)**2)`` to first order in ``1 / peak``, with the weighted divergence
  measured by probes as for SURE. It has the variance of SURE, far below that of the
  thinned score, whose best weight for fewer photons also has to be transferred;
* the Gaussian model on the Anscombe transform of the counts
  (:mod:`tvdenoise.anscombe`), where the noise has one level known from the peak, with
  the SURE weight of the Gaussian model (:func:`tvdenoise.auto.choose_weight`) and the
  exact unbiased inverse. It is often the best of the three, but where the transform is
  poor (very few photons) or the peak estimate is off its weight can be far off.

Each is scored on the same thinned split, at its weight scaled to the thinned image's
photons; the score is unbiased for any estimator of the thinned image, so the choice is
a paired comparison of their errors (``scripts/eval_noise.py --photons`` measures it).

Both rules were fitted on 256x256 crops of astronaut, camera, coffee and chelsea;
``scripts/eval_noise.py`` measures them and the refined weights against the best weight
on those and on held-out photographs (its figures are in ``benchmarks/RESULTS.md`` and
quoted in the README).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .anscombe import anscombe, inverse_anscombe, stabilised_level
from .auto import (
    _PROBE_RATIO,
    _PROBE_SEED,
    _PROBES,
    _SURE_MAX_ITER,
    choose_weight,
    per_volume,
    plane_sample,
    refine_weights,
    sample_tiles,
    search_groups,
    solve_pairs,
    weight_for_sigma,
)
from .checks import as_batch, check_choice
from .clipping import clipped_count_tail, latent_rate, sample_clipped_counts
from .colour import opponent_weights, solve_opponent_pairs
from .fidelity import NOISE_MODELS, NoiseModel, data_term
from .filters import any_in_window, box_mean, immerkaer_residual
from .missing import split_missing
from .sigma import MIN_SIZE
from .solver import DEFAULT_EPS, Iteration
from .tv import ColorMode, TotalVariation, TVKind

__all__ = [
    "PHOTON_ESTIMATORS",
    "PhotonChoice",
    "auto_weight_for_noise",
    "estimate_impulse_fraction",
    "estimate_peak",
    "impulse_weight",
    "poisson_estimators",
    "poisson_weight",
]

# Values this close to 0 or 1 are extreme (half an 8-bit level).
_EXTREME = 0.5 / 255
# An extreme value is an impulse if it differs this much from its 3x3 median.
_IMPULSE_JUMP = 0.2
# Hold-out refinement of the impulse weight: the share of the exact values turned into
# salt and pepper, the seed of that choice, and the highest grid step searched
# (2**(6/3) = 4 times the rule: smooth images such as micrographs want up to 2.5 times).
_HOLD_OUT = 0.03
_HOLD_OUT_SEED = 19920101
_IMPULSE_HIGHEST = 6
# Poisson weight refinement: the share of the photons held out to score the result.
_THINNING = 0.2
# 10th percentile of the 8x8 block mean of r**2 for unit white noise (see sigma.py).
_BLOCK = 8
_QUANTILE = 0.1
_NOISE_QUANTILE = 0.629
_MAD_TO_SIGMA = 0.6744897501960817
# Blocks need this many expected photons per pixel (with the pilot peak) ...
_MIN_PHOTONS = 2.0
# ... and a local mean this many noise standard deviations below 1.
_CLIP_MARGIN = 2.0
_MIN_BLOCKS = 16
# Where too few blocks remain (low photon counts), the pooled ratio is calibrated by
# simulating counts from the image smoothed over this window, this many times.
_SCENE_SIZE = 5
_CALIBRATION_ROUNDS = 8
# ... on at most about this many values (bands of rows of large images).
_CALIBRATION_VALUES = 1 << 18
_BAND_ROWS = 64

# Weight rules, fitted with scripts/eval_noise.py on astronaut, camera, coffee and chelsea
# (256x256 crops); see the module docstring for their form. Impulse: best weights
# 0.47-0.74 (grey) and 0.70-1.04 (colour) for 5-40 % of the values hit (estimated
# fractions 0.04-0.32: values hit where the image is already near 0 or 1 go unseen).
_IMPULSE_BASE = 0.44
_IMPULSE_PER_FRACTION = 2.0
_IMPULSE_JOINT_COLOUR = 1.5
# Poisson: best weight / (sqrt(C) * noise std of sqrt(u)) was 5.1-5.9 at peaks 10 and 30.
_POISSON_PER_SIGMA = 5.7


def _planes(image: Tensor) -> tuple[Tensor, int, int]:
    x = as_batch(image, "image")
    b, c, h, w = x.shape
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(
            f"image must be at least {MIN_SIZE}x{MIN_SIZE} pixels (H x W), got {h}x{w}"
        )
    return x.to(torch.float32).reshape(b * c, 1, h, w), b, c


def estimate_impulse_fraction(image: Tensor) -> Tensor:
    """Fraction of values hit by salt-and-pepper (or dead/hot pixel) noise.

    Args:
        image: float tensor ``(C, H, W)`` or ``(B, C, H, W)`` in [0, 1], ``H, W >= 8``.

    Returns:
        The fraction in [0, 1] per image: shape ``()`` for a 3-D input, ``(B,)`` else.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> clean = torch.full((1, 64, 64), 0.5)
        >>> hit = torch.rand(clean.shape, generator=g) < 0.2
        >>> noisy = torch.where(hit, torch.rand(clean.shape, generator=g).round(), clean)
        >>> round(float(estimate_impulse_fraction(noisy)), 2)
        0.2
    """
    planes, b, _ = _planes(image)
    padded = F.pad(planes, (1, 1, 1, 1), mode="replicate")
    windows = F.unfold(padded, 3)  # (B*C, 9, H*W)
    median = windows.median(dim=1).values.reshape(planes.shape)
    extreme = (planes <= _EXTREME) | (planes >= 1 - _EXTREME)
    impulse = extreme & ((planes - median).abs() > _IMPULSE_JUMP)
    fraction = impulse.reshape(b, -1).to(torch.float32).mean(dim=1)
    return fraction if image.dim() == 4 else fraction[0]


def _pooled_ratio(squared: Tensor, local_mean: Tensor, usable: Tensor, b: int) -> Tensor:
    """Per image, the sum of the squared residuals over the sum of the local means."""
    total = torch.where(usable, squared, 0.0).reshape(b, -1).sum(dim=1)
    return total / torch.where(usable, local_mean, 0.0).reshape(b, -1).sum(dim=1)


def _residual_and_mean(planes: Tensor) -> tuple[Tensor, Tensor]:
    """The squared unit-norm residual and the 3x3 local mean on the same grid."""
    squared = immerkaer_residual(planes).square()  # (B*C, 1, H-2, W-2)
    return squared, box_mean(planes, 3)[..., 1:-1, 1:-1]


def _unsaturated_ratio(planes: Tensor, b: int) -> Tensor:
    squared, local_mean = _residual_and_mean(planes)
    return _pooled_ratio(squared, local_mean, ~any_in_window(planes >= 1.0), b)


def _calibrated_ratio(planes: Tensor, observed: float) -> float:
    """One image's pooled ratio corrected for what clipping does to it, by simulation.

    Keeping only windows without a clipped value keeps, near full scale, the windows
    whose counts happened to be low, so the ratio reads low (at 10 photons the peak read
    10-20 % high). Counts are simulated at the current peak from the image smoothed over
    ``_SCENE_SIZE`` pixels (each local mean taken back to the rate whose clipped counts
    have it), clipped and measured like the data, and the peak is scaled by
    the simulated ratio over the observed one, ``_CALIBRATION_ROUNDS`` times (seeded).
    """
    if not (math.isfinite(observed) and observed > 0):
        return observed
    rows = planes.shape[-2]
    if planes.numel() > _CALIBRATION_VALUES and rows >= 4 * _BAND_ROWS:
        # Large images: evenly spread bands of rows, measured afresh.
        band_values = planes.numel() // rows * _BAND_ROWS
        bands = max(2, _CALIBRATION_VALUES // band_values)
        starts = torch.linspace(0, rows - _BAND_ROWS, min(bands, rows // _BAND_ROWS))
        planes = torch.cat([planes[..., int(r) : int(r) + _BAND_ROWS, :] for r in starts.tolist()])
        observed = float(_unsaturated_ratio(planes, 1)[0])
        if not (math.isfinite(observed) and observed > 0):
            return observed
    local = box_mean(planes.cpu().to(torch.float64), _SCENE_SIZE).clamp(0.0, 1.0)
    peak = 1.0 / observed
    for _ in range(_CALIBRATION_ROUNDS):
        rate = latent_rate(local, peak)  # the local means are clipped as well
        generator = torch.Generator().manual_seed(_HOLD_OUT_SEED)
        simulated = (torch.poisson(rate, generator=generator) / peak).clamp(max=1.0)
        ratio = float(_unsaturated_ratio(simulated.to(planes.dtype), 1)[0])
        peak *= ratio / observed
    return 1.0 / peak


def estimate_peak(image: Tensor) -> Tensor:
    """Estimate the photon scale ``peak`` (photons at intensity 1) of a Poisson image.

    The image is taken as ``counts / peak``; see the module docstring for the method.

    Args:
        image: float tensor ``(C, H, W)`` or ``(B, C, H, W)``, ``H, W >= 8``, intensities
            ``>= 0`` (values at or above 1 count as clipped).

    Returns:
        The estimated ``peak`` per image (``inf`` for an image without measurable noise):
        shape ``()`` for a 3-D input, ``(B,)`` else.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> clean = torch.full((1, 128, 128), 0.4)
        >>> noisy = torch.poisson(clean * 20, generator=g) / 20
        >>> round(float(estimate_peak(noisy)) / 20, 1)
        1.0
    """
    planes, b, c = _planes(image)
    if bool((planes < 0).any()):
        raise ValueError("image must be >= 0 to estimate a photon scale (counts / peak)")
    squared, local_mean = _residual_and_mean(planes)
    nan = torch.tensor(float("nan"), device=planes.device)

    def block_ratios(usable: Tensor) -> Tensor:
        var = F.avg_pool2d(torch.where(usable, squared, nan), _BLOCK)
        mean = F.avg_pool2d(torch.where(usable, local_mean, nan), _BLOCK)
        return (var / mean).reshape(b, -1)

    unsaturated = ~any_in_window(planes >= 1.0)
    # Pilot: the ratio of the sums over all pixels away from clipping (texture inflates it).
    pilot_ratio = _pooled_ratio(squared, local_mean, unsaturated, b)
    pilot = (1.0 / pilot_ratio.clamp_min(1e-12)).nan_to_num(nan=math.inf)
    pilot_px = pilot.repeat_interleave(c).view(b * c, 1, 1, 1)
    usable = (
        unsaturated
        & (local_mean * pilot_px >= _MIN_PHOTONS)
        & (local_mean < 1.0 - _CLIP_MARGIN * (1.0 / pilot_px).sqrt())
    )
    ratios = block_ratios(usable)
    n_blocks = (~ratios.isnan()).sum(dim=1)
    low = ratios.nanquantile(_QUANTILE, dim=1) / _NOISE_QUANTILE
    few = n_blocks < _MIN_BLOCKS
    for i in torch.nonzero(few).flatten().tolist():
        image_planes = planes[i * c : (i + 1) * c]
        pilot_ratio[i] = _calibrated_ratio(image_planes, float(pilot_ratio[i]))
    ratio = torch.where(few, pilot_ratio, low)
    peak = (1.0 / ratio.clamp_min(1e-12)).nan_to_num(nan=math.inf)
    return peak if image.dim() == 4 else peak[0]


def _joint(channels: int, tv: str, color: str) -> bool:
    return channels > 1 and tv == "isotropic" and color == "joint"


def impulse_weight(
    fraction: Tensor | float,
    *,
    channels: int = 1,
    tv: TVKind = "isotropic",
    color: ColorMode = "joint",
) -> Tensor:
    """Weight for ``noise="impulse"`` from the fraction of values hit.

    ``0.44 * (1 + 2 * fraction)``, times 1.5 for colour images under the joint
    isotropic TV (see the module docstring).

    Args:
        fraction: corrupted fraction(s) in [0, 1], e.g. from
            :func:`estimate_impulse_fraction`.
        channels: number of channels ``C`` of the image.
        tv, color: the total variation the weight is for.

    Returns:
        The weight(s), float32, the shape of ``fraction``.
    """
    rho = torch.as_tensor(fraction, dtype=torch.float32).clamp(0.0, 1.0)
    colour = _IMPULSE_JOINT_COLOUR if _joint(channels, tv, color) else 1.0
    return colour * _IMPULSE_BASE * (1 + _IMPULSE_PER_FRACTION * rho)


def poisson_weight(
    peak: Tensor | float,
    *,
    channels: int = 1,
    tv: TVKind = "isotropic",
    color: ColorMode = "joint",
) -> Tensor:
    """Weight for ``noise="poisson"`` from the photon scale.

    ``5.7 * sqrt(C) * sigma`` with ``sigma = 1 / (2 sqrt(peak))``, the noise level of
    ``sqrt(u)``; ``sqrt(C)`` only for the joint isotropic TV of a ``C``-channel image.

    Args:
        peak: photons at intensity 1, ``> 0`` (a number or a tensor).
        channels: number of channels ``C`` of the image.
        tv, color: the total variation the weight is for.

    Returns:
        The weight(s), float32, the shape of ``peak``.
    """
    peak_t = torch.as_tensor(peak, dtype=torch.float32)
    sigma = 0.5 / peak_t.clamp_min(1e-6).sqrt()
    scale = math.sqrt(channels) if _joint(channels, tv, color) else 1.0
    return _POISSON_PER_SIGMA * scale * sigma


class _ImpulseHoldOut:
    """Error of the impulse model's result at any weight, measured on held-out values.

    Salt-and-pepper noise leaves the values it does not hit exact. A seeded
    ``_HOLD_OUT`` of the values that are not at 0 or 1 is turned into salt and pepper as
    well; the error of the restored image there, against the values known before, stands
    for the error on the values the noise hit, and on the other non-extreme values the
    error is the plain difference to the data. The two are mixed in the proportion of
    the image's impulse fraction ``rho``:
    ``(1 - rho) * mean_kept (u - f)**2 + rho * mean_held (u - f_before)**2``.
    """

    def __init__(self, tiles: Tensor, fraction: Tensor, reg: TotalVariation) -> None:
        self.tiles = tiles  # (B, T, C, *spatial)
        self.fraction = fraction.to(tiles.device, torch.float64).clamp(max=1.0)  # (B,)
        self.reg = reg
        # The same draw for every image, so that an image is scored alike alone or in a batch.
        generator = torch.Generator().manual_seed(_HOLD_OUT_SEED)
        draw = torch.rand(tiles.shape[1:], generator=generator).to(tiles.device)
        salt = torch.rand(tiles.shape[1:], generator=generator).to(tiles.device) < 0.5
        exact = (tiles > _EXTREME) & (tiles < 1 - _EXTREME)
        self.held = exact & (draw < _HOLD_OUT)
        self.kept = exact & ~self.held
        self.data = torch.where(self.held, salt.to(tiles.dtype), tiles)

    def __call__(self, images: Tensor, weights: Tensor) -> Tensor:
        """The score of each image's result at its weight, ``(N,)`` float64."""
        index = images.to(self.tiles.device)
        restored = solve_pairs(self.data[index], weights, self.reg, data_term("impulse"))
        # Missing values (NaN) are in neither set; their squares are set to 0.
        squared = (restored - self.tiles[index].to(torch.float64)).square().nan_to_num(0.0)
        scores = []
        for mask in (self.kept[index], self.held[index]):
            count = mask.flatten(1).sum(1).clamp_min(1)
            scores.append((squared * mask).flatten(1).sum(1) / count)
        fraction = self.fraction[index]
        return (1 - fraction) * scores[0] + fraction * scores[1]


class _PoissonHoldOut:
    """Error of the Poisson model's result at any weight, measured on thinned photons, for
    the tiles ``(B, T, C, *spatial)`` of a batch of images with ``peaks`` ``(B,)`` photons.

    The counts ``k = peak * f`` are split at random into ``k1 ~ Binomial(k, 1 - t)`` and
    ``k2 = k - k1`` (``t = _THINNING``): two independent Poisson images of the same scene
    with ``(1 - t) * peak`` and ``t * peak`` photons. ``k1`` is restored (clipped at full
    scale, as a file of ``(1 - t) * peak`` photons would be), and its mean squared
    distance to ``k2 / (t * peak)`` is, in expectation, the restored image's mean squared
    error plus a constant, so its minimum over the weight is the best weight for
    ``(1 - t) * peak`` photons.

    A clipped value (``f >= 1``) only says that its count reached full scale. Its count
    is drawn from the Poisson law given that (:func:`tvdenoise.clipping.sample_clipped_counts`),
    at the rate behind ``pilots`` (restored copies of the tiles, read only where a value
    is clipped), corrected for the clipping's bias (:func:`tvdenoise.clipping.latent_rate`);
    then it is split like the others. Every value is scored; the plug-in rate enters only
    through the clipped values. Each image's split is drawn with the same seed, so that an
    image gets the same weight alone or in a batch.
    """

    def __init__(
        self, tiles: Tensor, peaks: Tensor, pilots: Tensor | None, reg: TotalVariation
    ) -> None:
        self.reg = reg
        self.peaks = peaks.to(torch.float64).cpu()
        data, targets = [], []
        for i, peak in enumerate(self.peaks.tolist()):  # the random split: on the CPU
            f = tiles[i].cpu().to(torch.float64)
            missing = torch.isnan(f)
            f = f.nan_to_num(0.0)
            counts = (f * peak).round().clamp_min(0.0)
            clipped = f >= 1
            generator = torch.Generator().manual_seed(_HOLD_OUT_SEED)
            if bool(clipped.any()):
                if pilots is None:
                    raise ValueError("a pilot restoration is needed where values are clipped")
                pilot = pilots[i].cpu().to(torch.float64)
                rate = latent_rate(pilot[clipped].clamp(0.0, 1.0), peak)
                counts[clipped] = sample_clipped_counts(rate, peak, generator)
            kept = torch.binomial(counts, torch.full_like(counts, 1.0 - _THINNING), generator)
            thinned = (kept / ((1.0 - _THINNING) * peak)).clamp(max=1.0)
            data.append(thinned.masked_fill(missing, math.nan))
            targets.append((counts - kept) / (_THINNING * peak))
        self.data = torch.stack(data).to(tiles.device, tiles.dtype)
        self.target = torch.stack(targets).to(tiles.device)
        # Missing values (NaN) stay missing in the thinned image and are not scored.
        missing = torch.isnan(tiles)
        self.scored = ~missing if bool(missing.any()) else None

    def __call__(self, images: Tensor, weights: Tensor) -> Tensor:
        """The Poisson model's score of each image's result at its weight (for the
        thinned image), ``(N,)`` float64 on the CPU."""
        return self.score(_estimator("poisson", self.reg), images, weights)

    def score(self, estimator: SolvePairs, images: Tensor, weights: Tensor) -> Tensor:
        """The hold-out score of ``estimator`` (of the thinned images, with their
        ``(1 - t) * peak`` photons) for each image at its weight, ``(N,)`` float64 on the
        CPU: unbiased, up to a constant shared by all estimators, for any estimator, so
        that estimators can be compared by it."""
        index = images.to(self.data.device)
        restored = estimator(self.data[index], weights.to(torch.float64), Iteration())
        squared = (restored - self.target[index]).square()
        mean = squared.flatten(1).mean(1)
        if self.scored is not None:  # the images with missing values: over the others
            scored = self.scored[index].flatten(1)
            part = (squared.flatten(1) * scored).sum(1) / scored.sum(1)
            mean = torch.where(scored.all(1), mean, part)
        return mean.to("cpu", torch.float64)


#: The estimators of photon-noise data :func:`poisson_estimators` chooses from.
PHOTON_ESTIMATORS: tuple[str, ...] = ("poisson", "gaussian", "anscombe")

#: An estimator of photon-noise data for (image, weight) pairs: groups of tiles
#: ``(N, T, C, *spatial)``, each at its weight ``(N,)`` float64, and the solver's iteration
#: settings, to ``(N, T, C, *spatial)`` float64 results.
SolvePairs = Callable[[Tensor, Tensor, Iteration], Tensor]


class _PhotonRisk:
    """Poisson unbiased risk estimate (PURE) of a model's result at any weight, for the
    tiles ``(B, T, C, *spatial)`` of a batch of images with ``peaks`` ``(B,)`` photons.

    For ``y = k / peak`` with ``k ~ Poisson(peak * x)`` and any map ``u(y)``, Hudson's
    identity ``E[x_i u_i(y)] = E[y_i u_i(y - e_i / peak)]`` and a first-order expansion
    of ``u_i`` give

    .. math::

        \\mathrm{PURE}(w) = \\frac{1}{N}\\sum_i (u_i - y_i)^2 - \\frac{y_i}{peak}
            + \\frac{2}{peak}\\, y_i \\frac{\\partial u_i}{\\partial y_i},

    an estimate of ``mean((u - x)**2)`` at the full photon level (Luisier, Vonesch, Blu
    and Unser 2010), for the result of either model. The weighted divergence is measured
    as for SURE (:mod:`tvdenoise.auto`), with probes ``sqrt(y) * b``; every image gets the
    same fields ``b``, so that it gets the same weight alone or in a batch.

    A value clipped at full scale only says ``k >= c``: its ``y`` is replaced by
    ``E[k | k >= c] / peak`` and its derivative weight by the chance that ``k = c``
    (times ``c / peak``; above ``c`` a count less changes nothing), both at the rate behind
    ``pilots``, restored copies of the tiles (:func:`tvdenoise.clipping.latent_rate`).
    Missing values (NaN) are neither scored nor probed.
    """

    def __init__(
        self, tiles: Tensor, peaks: Tensor, pilots: Tensor | None, estimator: SolvePairs
    ) -> None:
        self.estimator = estimator
        device = tiles.device
        self.peaks = peaks.to(device, torch.float64)
        f = tiles.to(torch.float64)
        missing = torch.isnan(f)
        self.scored = ~missing
        self.count = self.scored.flatten(1).sum(1)
        f = f.nan_to_num(0.0).clamp_min(0.0)
        targets = f.clone()
        slope = f.clone()  # the weight of each derivative
        clipped = f >= 1
        if bool(clipped.any()) and pilots is None:
            raise ValueError("a pilot restoration is needed where values are clipped")
        for i in clipped.flatten(1).any(1).nonzero().flatten().tolist():
            assert pilots is not None
            photons, where = float(self.peaks[i]), clipped[i]
            pilot = pilots[i].cpu().to(torch.float64)[where.cpu()].clamp(0.0, 1.0)
            mean, first = clipped_count_tail(latent_rate(pilot, photons), photons)
            targets[i][where] = (mean / photons).to(device)
            slope[i][where] = (first * (max(1, math.ceil(photons)) / photons)).to(device)
        slope = slope.masked_fill(missing, 0.0)
        self.targets = targets
        self.noise = (targets * self.scored).flatten(1).sum(1) / self.peaks
        self.delta = _PROBE_RATIO / self.peaks.sqrt()
        generator = torch.Generator().manual_seed(_PROBE_SEED)
        ones = [1] * (tiles.dim() - 2)
        shape = (_PROBES * tiles.shape[1], *tiles.shape[2:])
        fields = torch.randn(shape, generator=generator, dtype=torch.float64).to(device)
        self.probe = fields * slope.sqrt().repeat(1, _PROBES, *ones)
        step = self.delta.reshape(-1, *[1] * (tiles.dim() - 1)) * self.probe
        probed = tiles.repeat(1, _PROBES, *ones) + step.to(tiles.dtype)
        self.images = torch.cat([tiles, probed], dim=1)

    def __call__(self, images: Tensor, weights: Tensor) -> Tensor:
        """PURE of each image's result at its weight, ``(N,)`` float64 on the CPU."""
        # No stopping test: the plain and the probed images run the same iterations.
        iteration = Iteration(_SURE_MAX_ITER, energy=False)
        index = images.to(self.images.device)
        both = self.estimator(self.images[index], weights.to(torch.float64), iteration)
        t = self.targets.shape[1]
        u, v = both[:, :t], both[:, t:]
        squared = ((u - self.targets[index]) * self.scored[index]).square().flatten(1).sum(1)
        change = (v - u.repeat(1, _PROBES, *([1] * (u.dim() - 2)))).nan_to_num(0.0)
        divergence = (change * self.probe[index]).flatten(1).sum(1) / (self.delta[index] * _PROBES)
        peak = self.peaks[index]
        risk = (squared - self.noise[index] + 2 * divergence / peak) / self.count[index]
        return risk.to("cpu", torch.float64)


def auto_weight_for_noise(
    image: Tensor,
    noise: NoiseModel,
    *,
    peak: float | None = None,
    tv: TVKind = "isotropic",
    color: ColorMode = "joint",
    spatial_dims: int = 2,
    spacing: tuple[float, ...] | None = None,
) -> Tensor:
    """Automatic TV weight for the impulse and Poisson noise models.

    Args:
        image: the noisy image(s), ``(C, *spatial)`` or ``(B, C, *spatial)`` in [0, 1],
            at least 8 x 8 in the last two axes.
        noise: ``"impulse"`` or ``"poisson"`` (the Gaussian rule lives in
            :mod:`tvdenoise.auto`).
        peak: photons at intensity 1 for ``"poisson"``; estimated per image when
            ``None`` (:func:`estimate_peak`).
        tv, color: the total variation the weight is for (the joint isotropic TV of a
            colour image needs larger weights; see the module docstring).
        spatial_dims, spacing: the spatial axes, as in :func:`tvdenoise.solve`.

    Returns:
        One weight per image, float32, shape ``(B,)`` (``(1,)`` for an input without
        batch axis).

    Example:
        >>> noisy = torch.rand(3, 32, 32)
        >>> auto_weight_for_noise(noisy, "impulse").shape
        torch.Size([1])
    """
    check_choice("noise", noise, NOISE_MODELS)
    if noise == "gaussian":
        raise ValueError(
            "auto_weight_for_noise handles noise='impulse' and 'poisson'; "
            "use tvdenoise.auto for noise='gaussian'"
        )
    reg = TotalVariation(tv, color, DEFAULT_EPS, spatial_dims, spacing)
    batch = reg.batch(image, "image")
    weights, _ = data_term(noise).auto_weight(batch, reg, sigma=None, peak=peak)
    return weights


def impulse_auto_weight(batch: Tensor, reg: TotalVariation) -> Tensor:
    """The impulse model's weight per image of a ``(B, C, *spatial)`` batch: the rule
    from the estimated fraction of values hit, refined by the hold-out test."""
    channels = batch.shape[1]
    planes, k = plane_sample(split_missing(batch)[0])
    fraction = per_volume(estimate_impulse_fraction(planes).reshape(-1), k)
    weights = impulse_weight(fraction, channels=channels, tv=reg.kind, color=reg.color).clone()
    tiles = sample_tiles(batch.to(torch.float32))
    for group in search_groups(fraction > 0, tiles):
        held = _ImpulseHoldOut(tiles[group], fraction[group.to(fraction.device)], reg)
        rules = weights[group.to(weights.device)]
        found = refine_weights(held, rules, highest=_IMPULSE_HIGHEST, polish=True)
        weights[group.to(weights.device)] = found.to(weights)
    return weights


def poisson_auto_weight(batch: Tensor, reg: TotalVariation, *, peak: float | None) -> Tensor:
    """The Poisson model's weight per image of a ``(B, C, *spatial)`` batch: the rule from
    the photon scale (estimated unless ``peak`` is given), refined by thinning."""
    return _photon_weights(batch, reg, peak, compare=False).weights


@dataclass(frozen=True)
class PhotonChoice:
    """The best restoration of photon-noise data per image (:func:`poisson_estimators`).

    Attributes:
        weights: the weight per image, ``(B,)`` float32, in the chosen estimator's units
            (for ``"anscombe"`` in the opponent colour space, the brightness weight).
        estimators: per image, one of :data:`PHOTON_ESTIMATORS`.
        peaks: the photon scale per image, ``(B,)`` (estimated, or as given).
        chroma_weights: with ``opponent``, the colour weight of the images restored by
            ``"anscombe"`` in the opponent space, NaN for the others, ``(B,)``; else
            ``None``.
    """

    weights: Tensor
    estimators: tuple[str, ...]
    peaks: Tensor
    chroma_weights: Tensor | None = None


def poisson_estimators(
    batch: Tensor, reg: TotalVariation, *, peak: float | None, opponent: bool = False
) -> PhotonChoice:
    """The best restoration of photon-noise data per image: which estimator, at which
    weight.

    Three estimators (:data:`PHOTON_ESTIMATORS`), each at its own automatic weight:

    * ``"poisson"``: the Poisson model (TV of ``sqrt(u)``), its weight refined on thinned
      photons (``_PoissonHoldOut``);
    * ``"gaussian"``: the squared error, blind to the variance following the intensity,
      its weight minimising the Poisson unbiased risk estimate at the full photon level
      (``_PhotonRisk``);
    * ``"anscombe"``: the Gaussian model on the Anscombe transform of the counts
      (:mod:`tvdenoise.anscombe`), where the noise has one known level, with its SURE
      weight (:func:`tvdenoise.auto.choose_weight`), and the exact unbiased inverse. With
      ``opponent`` (RGB images) the transformed image, whose noise is white and of one
      level in every colour direction, is restored in the opponent colour space with a
      brightness and a colour weight (:func:`tvdenoise.colour.opponent_weights`), as
      Gaussian noise is.

    The one whose result, at its weight scaled to the thinned image's photons, scores
    best on the held-out photons is chosen: the score is unbiased for any estimator of
    the thinned image and all are scored on the same split, so the choice is a paired
    comparison of their errors.
    """
    return _photon_weights(batch, reg, peak, compare=True, opponent=opponent)


def _estimator(
    name: str, reg: TotalVariation, peaks: Tensor | None = None, chroma: Tensor | None = None
) -> SolvePairs:
    """The photon-data estimator ``name`` of :data:`PHOTON_ESTIMATORS`, for pairs of one
    image's tiles and a weight. The Anscombe estimator needs the photons of each pair's
    image, ``peaks`` ``(N,)``; with ``chroma`` ``(N,)``, it works in the opponent space,
    its colour weight that many times the brightness weight."""
    if name == "anscombe":
        assert peaks is not None

        def stabilised(groups: Tensor, weights: Tensor, iteration: Iteration) -> Tensor:
            z = anscombe(groups, peaks)
            if chroma is None:
                solved = solve_pairs(z, weights, reg, iteration=iteration, clip=False)
            else:
                colour = weights * chroma.to(weights)
                solved = solve_opponent_pairs(z, weights, colour, reg, iteration)
            return inverse_anscombe(solved, peaks).clamp_(0.0, 1.0)

        return stabilised
    term = data_term(name)

    def direct(groups: Tensor, weights: Tensor, iteration: Iteration) -> Tensor:
        return solve_pairs(groups, weights, reg, term, iteration=iteration)

    return direct


def _gaussian_rules(tiles: Tensor, peaks: Tensor, reg: TotalVariation) -> Tensor:
    """The Gaussian model's starting weight for photon data of the tiles ``(B, T, C,
    *spatial)`` of images of ``peaks`` ``(B,)`` photons: the Gaussian rule at each image's
    mean noise level ``sqrt(mean(f) / peak)``, ``(B,)`` float64."""
    mean = tiles.nan_to_num(0.0).flatten(1).mean(1).to("cpu", torch.float64)
    level = (mean.clamp_min(1e-6) / peaks.to(torch.float64)).sqrt().clamp(max=1.0)
    # The rule in float32, as for a noise level given as a number.
    rules = weight_for_sigma(
        level.to(torch.float32), tv=reg.kind, color=reg.color, channels=tiles.shape[2]
    )
    return rules.to(torch.float64)


def _anscombe_weights(
    batch: Tensor, reg: TotalVariation, peaks: Tensor, opponent: bool
) -> tuple[Tensor, Tensor | None]:
    """The SURE weight of the Gaussian model on the Anscombe transform of every image,
    whose noise level is known from its photon scale; with ``opponent``, the brightness
    and the colour weight."""
    usable = torch.isfinite(peaks) & (peaks > 0)
    safe = torch.where(usable, peaks, torch.ones_like(peaks)).to(torch.float64)
    z = anscombe(batch.to(torch.float32), safe.to(batch.device))
    levels = stabilised_level(safe).to(torch.float32).to(batch.device)
    if opponent:
        light, chroma, _ = opponent_weights(z, reg, sigma=levels)
        return light.cpu(), chroma.cpu()
    return choose_weight(z, reg, sigma=levels)[0].cpu(), None


def _photon_weights(
    batch: Tensor, reg: TotalVariation, peak: float | None, *, compare: bool, opponent: bool = False
) -> PhotonChoice:
    if peak is not None and not (math.isfinite(peak) and peak > 0):
        raise ValueError(f"peak must be a finite number of photons > 0, got {peak}")
    channels = batch.shape[1]
    if peak is None:
        planes, k = plane_sample(split_missing(batch)[0])
        peaks = per_volume(estimate_peak(planes).reshape(-1), k).cpu()
    else:
        peaks = torch.full((batch.shape[0],), peak)
    weights = poisson_weight(peaks, channels=channels, tv=reg.kind, color=reg.color)
    weights = weights.reshape(-1).clone()
    names = ["poisson"] * batch.shape[0]
    tiles = sample_tiles(batch.to(torch.float32))
    # The thinned image has keep * peak photons: its noise, and so its weight, is
    # 1 / sqrt(keep) times larger.
    keep = 1.0 - _THINNING
    scale = math.sqrt(keep)
    stabilised, chroma = _anscombe_weights(batch, reg, peaks, opponent) if compare else (None, None)
    usable = torch.isfinite(peaks) & (weights > 0)
    if bool(usable.any()):
        # The images' searches run together: each round solves all their candidates.
        rows = usable.nonzero().flatten()
        part = tiles[rows.to(tiles.device)]
        photons = peaks[rows].to(torch.float64)
        rules = weights[rows].to(torch.float64)
        # Clipped values need a restored copy of their image (the Poisson model at its rule).
        clipped = (part >= 1).flatten(1).any(1)
        pilots = None
        if bool(clipped.any()):
            pilots = torch.zeros(part.shape, dtype=torch.float64, device=part.device)
            index = clipped.nonzero().flatten()
            poisson = _estimator("poisson", reg)
            pilots[index] = poisson(part[index], rules[index.cpu()], Iteration())
        held = _PoissonHoldOut(part, photons, pilots, reg)
        candidates = {"poisson": refine_weights(held, rules / scale) * scale}
        best = torch.zeros(len(rows), dtype=torch.long)  # without a comparison: Poisson
        if stabilised is not None:
            gaussian = _PhotonRisk(part, photons, pilots, _estimator("gaussian", reg))
            candidates["gaussian"] = refine_weights(gaussian, _gaussian_rules(part, photons, reg))
            light = stabilised[rows].to(torch.float64)
            candidates["anscombe"] = light
            ratio = (
                None if chroma is None else chroma[rows].to(torch.float64) / light.clamp_min(1e-12)
            )
            pairs = torch.arange(len(rows))
            scores = [
                held.score(
                    _estimator(name, reg, keep * photons, ratio if name == "anscombe" else None),
                    pairs,
                    weight / scale,
                )
                for name, weight in candidates.items()
            ]
            best = torch.stack(scores, dim=1).argmin(dim=1)  # the first of equal scores
        found = torch.stack(list(candidates.values()), dim=1)
        weights[rows] = found[torch.arange(len(rows)), best].to(weights)
        for row, choice in zip(rows.tolist(), best.tolist(), strict=True):
            names[row] = list(candidates)[choice]
    chroma_weights = None
    if chroma is not None:
        anscombe_chosen = torch.tensor([name == "anscombe" for name in names])
        chroma_weights = torch.where(anscombe_chosen, chroma.to(weights.dtype), math.nan)
    return PhotonChoice(weights, tuple(names), peaks, chroma_weights)
