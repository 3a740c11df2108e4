"""Estimate the level of additive white Gaussian noise in an image.

Method: the spectrum of weakly textured patches
-----------------------------------------------
White noise of variance ``sigma**2`` adds ``sigma**2`` to every eigenvalue of the
covariance matrix of an image's ``8 x 8`` patches, while image structure, even texture,
occupies only some of the 64 directions. So ``sigma**2`` can be read from the smallest
eigenvalues (the patch-PCA idea of Liu, Tanaka and Okutomi, 2013, and Chen, Zhu and Heng,
2015). Per image, with the channels pooled (one noise level for all of them):

1. **Patches.** ``8 x 8`` patches of every channel, each minus its own mean, on a grid
   whose stride is the smallest that gives at most 25,000 patches.
2. **Spectrum rule.** The eigenvalues ``l_1 <= ... <= l_63`` of the patches' covariance
   (the patch-mean direction dropped); ``sigma**2`` is the mean ``tau`` of the ``m``
   smallest, for the largest ``m`` with ``l_m <= tau * (1 + sqrt(m / N))**2``: the ``m``
   smallest eigenvalues still fit inside one Marchenko-Pastur bulk of ``N`` patches,
   which is what a noise-only subspace looks like. (Chen's rule, mean <= median, cuts
   the right-skewed bulk and reads low at high noise.)
3. **Pilot**: that rule on every patch without a saturated (0 or 1) pixel (or, when
   fewer than 256 patches are free of them, the median residual of the fallback below).
4. **Refinements that model clipping.** A file clips the noise at 0 and 1, so a patch
   whose clean value ``x`` lies near black or white keeps only the share
   ``s(x) = Var[clip(x + n, 0, 1)] / sigma**2`` of the noise variance (``1/2 - 1/(2 pi)``
   at ``x = 0``; :func:`tvdenoise.clipping.variance_share`). A patch's share is the mean
   of the shares of its four 4x4 quarters, each read from the quarter's mean: the share
   of the whole patch's mean is biased on patches that straddle a dark edge, and smaller
   parts have noisier means. Kept are the patches whose own texture,
   ``mean dx**2 + mean dy**2`` over the patch, is below ``_TEXTURE_QUANTILE * s * sigma**2``,
   the 99th percentile of that statistic for white noise (a property of the patch size
   alone, measured by Monte Carlo; the test suite re-checks it): fine texture such as
   grass lives in all 64 directions and is kept out. The spectrum rule on them gives
   their mean noise variance, ``mean(s) * sigma**2``, hence the next ``sigma``, repeated
   until ``sigma**2`` changes by less than 0.5 %. Modelling the clipped share, rather
   than using only patches far from 0 and 1, is what lets dark images at high noise
   (micrographs, night skies, where no patch is far from black) be read right.

The images of a batch are estimated together: every step above runs once on all of them
(the covariances as one batched product, the spectra as one batched eigendecomposition),
and an image whose refinements have ended keeps its value while the others go on. The
sums behind a covariance are carried from one round to the next, adding the patches that
come in and subtracting those that leave. On CPU
they go a few at a time, as many as fit the patch count of one large image.

Images smaller than about 24 x 24 pixels (fewer than 256 patches) fall back to the median
absolute Immerkaer residual (``median |r| / 0.6745`` over values not next to a 0 or 1).

Large images (above ``_MAX_SAMPLED_VALUES``, about 2.8 megapixels in RGB) are estimated
from evenly spread bands of rows, so that the temporaries stay small whatever the size.

The settings (patch size, the 99 % texture cut, the quarters, 25,000 patches) were chosen
on 15 scikit-image photographs with 8-bit noise ``clip(round(clean + N(0, sigma)))``;
``scripts/eval_sigma.py`` measures the error of this and earlier estimators on them (its
figures are in ``benchmarks/RESULTS.md`` and quoted in the README), and
``scripts/eval_auto_weight.py`` the weights that follow from the estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .clipping import variance_share
from .filters import any_in_window, immerkaer_residual

__all__ = ["MIN_SIZE", "estimate_sigma"]

MIN_SIZE = 8
"""Smallest height and width accepted by :func:`estimate_sigma`."""

_PATCH = 8
# Most patches per image (the grid's stride grows until they fit).
_MAX_PATCHES = 25_000
# Fewer usable patches than this per covariance dimension: the spectrum is not trusted.
_MIN_PATCHES_PER_DIM = 4
# 99th percentile of mean(dx**2) + mean(dy**2) over an 8x8 patch of unit white noise
# (dx: the 8x7 horizontal differences, dy: the 7x8 vertical ones; their mean is 4).
_TEXTURE_QUANTILE = 6.16
# Refinements: at most this many rounds, until sigma**2 changes by less than this.
_MAX_REFINEMENTS = 20
_CONVERGED = 5e-3
# Phi^{-1}(3/4): median |N(0, 1)|, for the small-image fallback.
_MAD_TO_SIGMA = 0.6744897501960817
# On CPU, images are estimated a few at a time, their patches together at most this many
# (one large image's): temporaries larger than the caches cost more than batching saves.
# On a GPU the whole batch at once.
_CPU_PATCHES = _MAX_PATCHES
# Images with more values than this are estimated from evenly spread bands of rows.
_MAX_SAMPLED_VALUES = 1 << 23
_SAMPLE_ROWS = 64


def _bands(rows: int, values_per_row: int) -> list[tuple[int, int]]:
    """Row ranges ``[r0, r1)`` to estimate from: the whole image, or evenly spread bands of
    ``_SAMPLE_ROWS`` rows holding about ``_MAX_SAMPLED_VALUES`` values."""
    if rows * values_per_row <= _MAX_SAMPLED_VALUES or rows <= 2 * _SAMPLE_ROWS:
        return [(0, rows)]
    starts = range(0, rows - _SAMPLE_ROWS + 1, _SAMPLE_ROWS)
    wanted = min(len(starts), max(2, _MAX_SAMPLED_VALUES // (_SAMPLE_ROWS * values_per_row)))
    chosen = [starts[round(i * (len(starts) - 1) / (wanted - 1))] for i in range(wanted)]
    return [(r0, r0 + _SAMPLE_ROWS) for r0 in chosen]


def _stride(channels: int, planes: list[torch.Tensor]) -> int:
    """The smallest patch-grid stride that gives at most ``_MAX_PATCHES`` patches per image
    of ``channels`` channels (the planes of a batch are ``(B * C, 1, h, w)``)."""
    for stride in range(1, _PATCH + 1):
        count = sum(
            channels
            * ((p.shape[-2] - _PATCH) // stride + 1)
            * ((p.shape[-1] - _PATCH) // stride + 1)
            for p in planes
        )
        if count <= _MAX_PATCHES:
            return stride
    return _PATCH


def _per_image(x: torch.Tensor, images: int) -> torch.Tensor:
    """Pooled values of ``(B * C, 1, rows, cols)`` planes, one row per image ``(B, N)``."""
    return x.reshape(images, -1)


def _joined(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _quarter_means(patches: torch.Tensor, images: int) -> torch.Tensor:
    """The means of the four 4x4 quarters of every patch of ``(B * C, 64, L)``, one row
    of ``(4, C * L)`` per image, summed in the order (and so rounded as) ``F.avg_pool2d``
    sums a window: row by row, one value after another."""
    half = _PATCH // 2
    grid = patches.view(patches.shape[0], 2, half, 2, half, -1)  # quarter row, row, ...
    total = grid[:, :, 0, :, 0]
    for r in range(half):
        for c in range(half):
            if r or c:
                total = total + grid[:, :, r, :, c]
    means = (total / half**2).reshape(images, -1, 4, patches.shape[-1])
    return means.transpose(1, 2).reshape(images, 4, -1)


@dataclass(frozen=True)
class _Patches:
    """The patches of the images of a batch on one grid, with what selects them: one row
    per image. ``values`` ``(B, N, 64)`` float64, each patch minus its mean; ``texture`` ``(B,
    N)``, its mean squared differences; ``unsaturated`` ``(B, N)``, no value at 0 or 1 in
    it; ``quarters`` ``(B, 4, N)``, the means of its four 4x4 quarters."""

    values: torch.Tensor
    texture: torch.Tensor
    unsaturated: torch.Tensor
    quarters: torch.Tensor

    @classmethod
    def of(cls, planes: list[torch.Tensor], images: int, stride: int) -> _Patches:
        """The patches of ``images`` images, each given as ``C`` planes (or bands of rows
        of them) in ``planes``, ``(B * C, 1, h, w)`` each."""
        b = images
        values, texture, unsaturated, quarters = [], [], [], []
        for band in planes:
            windows = band.unfold(2, _PATCH, stride).unfold(3, _PATCH, stride)
            # (B * C, 64, L): the values of each window in a column, as F.unfold lays them.
            patches = windows.permute(0, 1, 4, 5, 2, 3).reshape(band.shape[0], _PATCH**2, -1)
            unsaturated.append(
                _per_image((patches.amin(dim=1) > 0.0) & (patches.amax(dim=1) < 1.0), b)
            )
            quarters.append(_quarter_means(patches, b))
            dx = (band[..., :, 1:] - band[..., :, :-1]).square_()
            dy = (band[..., 1:, :] - band[..., :-1, :]).square_()
            texture.append(
                _per_image(
                    F.avg_pool2d(dx, (_PATCH, _PATCH - 1), stride=stride)
                    + F.avg_pool2d(dy, (_PATCH - 1, _PATCH), stride=stride),
                    b,
                )
            )
            # Not in place: where one window covers a plane, the patches are a view of it.
            patches = patches - patches.mean(dim=1, keepdim=True)
            # (B, C * L, 64) float64: a patch per row, those of all channels of an image
            # one after another.
            flat = patches.new_empty(
                (b, patches.numel() // (b * _PATCH**2), _PATCH**2), dtype=torch.float64
            )
            flat.view(b, -1, patches.shape[2], _PATCH**2).copy_(
                patches.view(b, -1, *patches.shape[1:]).transpose(2, 3)
            )
            values.append(flat)
        return cls(
            _joined(values, dim=1),
            _joined(texture, dim=1),
            _joined(unsaturated, dim=1),
            # A missing value makes a patch's quarters NaN; it is never kept, but its share
            # is still looked up.
            _joined(quarters, dim=2).to(torch.float64).nan_to_num(0.5),
        )

    def rows(self, images: torch.Tensor) -> _Patches:
        """The patches of some of the images (a boolean mask over the rows)."""
        return _Patches(*(getattr(self, field.name)[images] for field in fields(self)))

    def noise_share(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per patch, ``(B, N)``: the share of the noise variance that clipping leaves, the
        mean over its quarters of the variance of ``clip(x + n, 0, 1)`` over ``sigma**2``
        (one level per image), ``x`` the clean value behind the quarter's mean."""
        return variance_share(self.quarters, sigma).mean(dim=1)


def _selected(values: torch.Tensor, select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The selected patches of every image, ``(B, K, 64)`` for the most selected ``K`` of
    an image (rows with fewer padded with zeros), and their positions ``(B, K)``."""
    rows, cols = select.nonzero(as_tuple=True)
    b, n, d = values.shape
    if b == 1:
        return values[0].index_select(0, cols).unsqueeze(0), cols.unsqueeze(0)
    count = select.sum(dim=1)
    width = int(count.max())
    slot = torch.arange(len(rows), device=rows.device) - (count.cumsum(0) - count)[rows]
    index = rows.new_zeros((b, width))
    index[rows, slot] = cols
    real = torch.zeros_like(index, dtype=torch.bool)
    real[rows, slot] = True
    start = torch.arange(b, device=index.device).unsqueeze(1) * n
    chosen = values.reshape(b * n, d).index_select(0, (index + start).flatten()).view(b, -1, d)
    # Zeros, not a product with 0: a padded place may hold a patch with a missing value.
    return chosen.where(real.unsqueeze(2), 0.0), index


@dataclass(frozen=True)
class _Sums:
    """What the spectrum rule needs of a set of patches of every image: the sums of their
    outer products ``gram`` ``(B, 64, 64)`` and of the patches ``total`` ``(B, 64)``,
    float64, over the patches ``kept`` ``(B, N)``.

    After the first refinement a round changes few of the kept patches, so the sums are
    carried from round to round, adding the patches that come in and subtracting those
    that leave, rather than summed anew over all."""

    gram: torch.Tensor
    total: torch.Tensor
    kept: torch.Tensor

    @classmethod
    def over(cls, values: torch.Tensor, keep: torch.Tensor) -> _Sums:
        """The sums over the patches ``keep`` of ``values`` ``(B, N, 64)``."""
        chosen, _ = _selected(values, keep)
        return cls(chosen.transpose(1, 2) @ chosen, chosen.sum(dim=1), keep)

    def carried_to(self, values: torch.Tensor, keep: torch.Tensor) -> _Sums:
        """The sums over the patches ``keep`` of the same ``values``: from the patches that
        changed, where they are fewer than the kept ones."""
        changed = keep != self.kept
        if int(changed.sum(dim=1).max()) >= int(keep.sum(dim=1).max()):
            return _Sums.over(values, keep)
        chosen, index = _selected(values, changed)
        sign = keep.gather(1, index).to(values.dtype) * 2 - 1  # +1 added, -1 removed
        weighted = chosen * sign.unsqueeze(2)
        gram = self.gram + weighted.transpose(1, 2) @ chosen
        return _Sums(gram, self.total + weighted.sum(dim=1), keep)

    def rows(self, images: torch.Tensor) -> _Sums:
        """The sums of some of the images (a boolean mask over the rows)."""
        return _Sums(self.gram[images], self.total[images], self.kept[images])


def _noise_variance(sums: _Sums) -> torch.Tensor:
    """``sigma**2`` per image by the spectrum rule on the patches summed in ``sums``,
    ``(B,)`` float64; NaN where too few."""
    d = _PATCH * _PATCH
    kept = sums.kept.sum(dim=1)
    # Rows with too few patches are computed on no more than two (a finite matrix).
    n = kept.clamp_min(2).to(torch.float64)
    mean = sums.total / n.unsqueeze(1)
    outer = mean.unsqueeze(2) * mean.unsqueeze(1)
    covariance = (sums.gram - n.view(-1, 1, 1) * outer) / (n.view(-1, 1, 1) - 1)
    # The patch mean was removed: one eigenvalue is 0 by construction.
    eigenvalues = torch.linalg.eigvalsh(covariance)[:, 1:]
    # The largest m whose m smallest eigenvalues fit in one Marchenko-Pastur bulk.
    m = torch.arange(1, d, dtype=torch.float64, device=covariance.device)
    tau = eigenvalues.cumsum(dim=1) / m
    fits = eigenvalues <= tau * (1 + (m / n.unsqueeze(1)).sqrt()).square()
    largest = torch.where(fits, m, 0.0).argmax(dim=1, keepdim=True)
    variance = torch.where(fits.any(dim=1), tau.gather(1, largest).squeeze(1), eigenvalues[:, 0])
    return variance.masked_fill(kept < _MIN_PATCHES_PER_DIM * d, math.nan)


def _median_residual(planes: torch.Tensor) -> torch.Tensor:
    """Fallback for small images: robust scale of the Immerkaer residual of every image
    of ``(B, C, H, W)`` planes, ``(B,)`` float64 (0 where no value is usable)."""
    b, c, h, w = planes.shape
    flat = planes.reshape(b * c, 1, h, w)
    residual = immerkaer_residual(flat).abs()
    clear = ~any_in_window((flat <= 0.0) | (flat >= 1.0))
    values = residual.masked_fill(~clear, math.nan).reshape(b, -1)
    median = values.nanmedian(dim=1).values.to(torch.float64).nan_to_num(0.0)
    return median / _MAD_TO_SIGMA


def _estimate(images: torch.Tensor) -> torch.Tensor:
    """Noise level of every image of a ``(B, C, H, W)`` float32 batch, ``(B,)`` float64.

    Every step runs on the whole batch; an image whose refinements have converged (or
    have too few patches left) keeps its value while the others go on.
    """
    b, c, h, w = images.shape
    if b == 0:
        return images.new_zeros(0, dtype=torch.float64)
    planes = [images[:, :, r0:r1].reshape(b * c, 1, r1 - r0, w) for r0, r1 in _bands(h, c * w)]
    patches = _Patches.of(planes, b, _stride(c, planes))
    sums = _Sums.over(patches.values, patches.unsaturated)
    variance = _noise_variance(sums)
    pilotless = torch.isnan(variance)
    if bool(pilotless.any()):
        # Too few patches without a 0 or 1: a small image, or a dark or bright one at
        # high noise; the refinements below start from the median residual instead.
        variance[pilotless] = _median_residual(images[pilotless]).square()
    # The images still refined and their patches (selected anew when some stop). An
    # image whose noise level is 0 has nothing to refine.
    left = torch.arange(b, device=images.device)
    going = variance > 0
    for _ in range(_MAX_REFINEMENTS):
        if not bool(going.all()):
            left, patches, sums = left[going], patches.rows(going), sums.rows(going)
        if left.numel() == 0:
            break
        level = variance[left]
        share = patches.noise_share(level.sqrt())
        keep = patches.texture < _TEXTURE_QUANTILE * share * level.unsqueeze(1)
        sums = sums.carried_to(patches.values, keep)
        refined = _noise_variance(sums)
        usable = ~torch.isnan(refined)
        mean_share = (share * keep).sum(dim=1) / keep.sum(dim=1)
        updated = refined / mean_share
        variance[left[usable]] = updated[usable]
        converged = (updated - level).abs() <= _CONVERGED * level
        going = usable & ~converged & (updated > 0)
    return variance.clamp_min(0.0).sqrt()


def estimate_sigma(image: torch.Tensor) -> torch.Tensor:
    """Estimate the standard deviation of additive white Gaussian noise in an image.

    The estimate is read from the smallest eigenvalues of the covariance of weakly
    textured 8x8 patches, ignoring areas where clipping at 0 or 1 truncates the noise;
    see the module docstring for the method and its measured accuracy. The noise is
    assumed to be the same in every channel, so a colour image gets one value.

    Args:
        image: Float tensor of shape (C, H, W) or (B, C, H, W), intensities in [0, 1],
            with ``H, W >= MIN_SIZE`` (8). Values at or beyond 0 and 1 count as saturated;
            NaN values are missing, and the patches that hold one are left out.

    Returns:
        Estimated sigma on the [0, 1] intensity scale (multiply by 255 for 8-bit levels),
        float32 on the device of ``image``: shape () for a (C, H, W) input, (B,) for a
        (B, C, H, W) input. A clean image gives a value near its own intrinsic noise
        (typically below 4/255 for photographs); an image with no usable pixel (for
        example entirely 0 or 1) gives 0.

    Raises:
        TypeError: If ``image`` is not a floating-point tensor.
        ValueError: If ``image`` does not have 3 or 4 dimensions, has no channel, or is
            smaller than ``MIN_SIZE`` in height or width.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> clean = torch.full((1, 64, 64), 0.5)
        >>> noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
        >>> round(float(estimate_sigma(noisy)), 2)
        0.1
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(
            f"image must be a floating-point tensor with values in [0, 1], got {image.dtype}"
        )
    if image.ndim not in (3, 4):
        raise ValueError(
            "image must have shape (C, H, W) or (B, C, H, W), "
            f"got {image.ndim} dimensions with shape {tuple(image.shape)}"
        )
    batched = image.ndim == 4
    x = image if batched else image.unsqueeze(0)
    c, h, w = x.shape[1:]
    if c < 1:
        raise ValueError(f"image must have at least one channel, got shape {tuple(image.shape)}")
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(
            f"image must be at least {MIN_SIZE}x{MIN_SIZE} pixels (H x W) to estimate noise, "
            f"got {h}x{w}"
        )
    x = x.to(torch.float32)
    chunk = len(x)
    if x.device.type == "cpu":
        patches = min(_MAX_PATCHES, c * (h - _PATCH + 1) * (w - _PATCH + 1))
        chunk = max(1, _CPU_PATCHES // patches)
    parts = [_estimate(x[start : start + chunk]) for start in range(0, max(len(x), 1), chunk)]
    sigma = torch.cat(parts).to(torch.float32)
    return sigma if batched else sigma[0]
