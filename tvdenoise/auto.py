"""Choosing the regularisation weight from the noise level (Gaussian noise).

Two layers, one on top of the other:

1. :func:`weight_for_sigma` — a closed-form rule, ``weight = gain * sigma``.
2. :func:`auto_weight` — per image: estimate ``sigma`` (:func:`tvdenoise.estimate_sigma`)
   unless it is given, start from the rule, and refine the weight by minimising Stein's
   unbiased estimate of the mean squared error (SURE) of the denoised image.

Why ``weight`` is proportional to ``sigma``
-------------------------------------------
The energy ``mean((u - f)**2) + weight * TV(u) / N`` is the ROF problem with
``lambda = weight / 2``. Scaling an image and its noise by ``s`` scales the minimiser by
``s`` when ``weight`` scales by ``s``, so for a given scene the best weight is a length in
intensity units, proportional to the noise level. Because both terms are means over
``C*H*W`` values the weight does not depend on the image size.

The gain depends on the total variation:

* one channel, or ``color="separate"`` (each channel its own ROF problem):
  ``gain = ISOTROPIC_GAIN``;
* ``color="joint"`` on ``C`` channels: the joint magnitude ``sqrt(sum_c |grad u_c|**2)``
  of uncorrelated noise is ``sqrt(C)`` times that of one channel, and an edge shared by
  all channels is penalised ``sqrt(C)`` times less per channel than separately, so the
  physical form is ``gain = ISOTROPIC_GAIN * C**p`` with ``p = 1/2`` for independent
  channels. Colour photographs have strongly correlated channels, so the fitted exponent
  ``p = JOINT_EXPONENT`` is smaller;
* ``tv="anisotropic"``: for white noise ``E(|dx| + |dy|) = (4/pi) E sqrt(dx**2 + dy**2)``,
  so the anisotropic penalty is stronger and needs a gain about ``pi/4 = 0.79`` times the
  isotropic one (``ANISOTROPIC_GAIN``; the colour mode has no effect on this TV).

The constants are medians of the best weight divided by sigma over photographs
(``scripts/eval_auto_weight.py``). A particular image's best weight differs from them by up
to a factor of two (fine texture and low noise want less smoothing; smooth scenes and high
noise want more), hence layer 2.

SURE refinement
---------------
For ``y = x + n`` with white Gaussian noise of standard deviation ``sigma``,

.. math::

    \\mathrm{SURE}(w) = \\frac{1}{N}\\sum_i (u_w(y)_i - y_i)^2 - \\sigma^2
        + \\frac{2\\sigma^2}{N} \\sum_i \\frac{\\partial u_w(y)_i}{\\partial y_i}

is an unbiased estimate of the mean squared error ``mean((u_w - x)**2)`` (Stein's lemma,
one value at a time). The divergence is measured by Monte-Carlo probes (Ramani, Blu and
Unser, 2008): for a fixed Gaussian field ``b``,
``sum_i du_i/dy_i ~ <b, u_w(y + delta b) - u_w(y)> / delta`` with ``delta = sigma / 100``,
averaged over ``_PROBES`` fields.

Clipping. An 8-bit file stores ``f = clip(y, 0, 1)``: a value at 0 only says ``y <= 0``.
Stein's lemma still holds value by value, because the noise of one value is independent
of all others; what changes is the term of a clipped value. Its derivative term is zero
(``u`` does not see ``y_i`` move below 0), and in the residual ``y_i`` is replaced by its
expectation given the clipping, ``E[y | y <= 0] = x - sigma * m(x / sigma)`` (``m`` the
inverse Mills ratio ``phi / Phi(-.)``; symmetrically at 1). That needs the clean value
``x`` of clipped pixels only, read from the result at the rule's weight, corrected for
the bias clipping gives a local mean (the inverse of
``x -> E[clip(x + n, 0, 1)]``). The error of this plug-in enters only through the
clipped values, and the estimate is exact where nothing is clipped.

SURE needs the right ``sigma``: on smooth images the error at the best weight is a small
fraction of ``sigma**2``, so a low ``sigma`` makes SURE undervalue smoothing. The noise
estimate therefore models clipping itself (:mod:`tvdenoise.sigma`), and SURE runs on every
image.

SURE holds for any weakly differentiable map of ``f``, the truncated solver included, so
the candidates are solved exactly as the output will be (``DEFAULT_MAX_ITER``
iterations) and SURE estimates the error of the image actually returned; early stopping
is switched off so that the image and the probed image run the same iterations (a
stopping test would make the map discontinuous in ``f``).

The weight is searched on a geometric grid (ratio ``2**(1/3)``): the rule and its two
neighbours first, then one more point at a time while the minimum sits at an edge,
within ``[rule / 4, rule * 2]``, and refined by a parabola through the three best points in
``log(weight)``. The images of a batch are searched together: every round solves the
candidates of all of them in one batch (:func:`refine_weights`, with each image's
progress kept as masks), so a batch takes the rounds of its slowest image rather than
the sum over its images (on CPU, a group of images at a time whose tiles hold a large
image's values: there the search is memory-bound, not bound by Python's steps). Large
images are represented by up to 16 evenly spread 64x64 tiles (smaller images are used
whole), volumes by up to 27 cubes of 32 voxels: the weight is a per-value quantity, so a
weight chosen on a sample of the image holds for all of it.

How many tiles and probes: SURE is a random estimate, and near the best weight the error
curve is flat, so its noise decides the choice; the tile count and two probes were chosen by
that measurement (``benchmarks/README.md``, "Where the constants come from"). The opponent
colour search (:mod:`tvdenoise.colour`) takes one probe per component, measured as good
there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import Tensor

from .checks import check_choice
from .clipping import inverse_mills, latent_value
from .fidelity import DataTerm, data_term
from .missing import observed_share, split_missing
from .ragged import Packing
from .sigma import MIN_SIZE, estimate_sigma
from .solver import DEFAULT_EPS, DEFAULT_MAX_ITER, Iteration, run_solver
from .tiling import images_per_batch
from .tv import COLOR_MODES, TV_KINDS, ColorMode, TotalVariation, TVKind

if TYPE_CHECKING:
    from .tgv import Regulariser

__all__ = ["AutoMethod", "auto_weight", "weight_for_sigma"]

AutoMethod = Literal["sure", "rule"]
AUTO_METHODS: tuple[str, ...] = get_args(AutoMethod)

#: Weight per unit of noise level for one channel, isotropic TV (fitted, see module doc).
ISOTROPIC_GAIN = 1.4
#: The same for the anisotropic TV.
ANISOTROPIC_GAIN = 1.15
#: Joint isotropic TV on ``C`` channels: ``gain * C**JOINT_EXPONENT``.
JOINT_EXPONENT = 0.38

# Search grid: ratio between neighbouring weights and points per side of the rule at
# start (one more is added while the minimum sits at an edge). The search stays
# within [rule / 4, rule * 2], in steps: the best weights of the photographs measured
# lie within [0.3, 1.8] times the rule, and outside that range SURE's minimum was only
# ever a sign of its own bias (clipping at high noise).
_STEP = 2.0 ** (1.0 / 3.0)
# The polishing step of refine_weights (a third of a grid step).
_FINE_STEP = 2.0 ** (1.0 / 9.0)
_HALF_WIDTH = 1
_LOWEST_STEP = -6
_HIGHEST_STEP = 3
# Monte-Carlo divergence: probe size relative to sigma, and the probe's seed.
_PROBE_RATIO = 0.01
_PROBE_SEED = 20080915
_PROBES = 2
# Large images: SURE on at most this many tiles of this size; volumes on cubes.
_TILE = 64
_MAX_TILES = 16
# Volumes: cubes on a 3 x 3 x 3 grid. Corner cubes alone (2 x 2 x 2) missed a disc crossing
# the middle of a time-lapse (benchmarks/README.md).
_TILE_3D = 32
_CUBES_PER_AXIS = 3
# Volumes: their noise is estimated on at most this many evenly spaced slices.
_MAX_SLICES = 16
# Solver settings for the refinement: exactly the iterations of the final solve
# (``DEFAULT_MAX_ITER``), so SURE estimates the error of the output actually returned,
# and no early stopping (no energies: ``Iteration(energy=False)``), so that the plain and
# the probed image run the same iterations and the map stays differentiable.
_SURE_MAX_ITER = DEFAULT_MAX_ITER
# On CPU the images of a batch are searched a group at a time, their tiles together at
# most this many values (a large RGB image's): every candidate of every image of a group
# is kept in float64, and temporaries beyond the caches cost more than searching together
# saves (measured slower than one image at a time). On a GPU the whole batch is one group.
_CPU_SEARCH_VALUES = 3 * _MAX_TILES * _TILE * _TILE


def _gain(tv: str, color: str, channels: int) -> float:
    if tv == "anisotropic":
        return ANISOTROPIC_GAIN
    if color == "joint":
        return ISOTROPIC_GAIN * math.pow(channels, JOINT_EXPONENT)
    return ISOTROPIC_GAIN


def _check_sigma(sigma: Tensor) -> None:
    if not bool(torch.isfinite(sigma).all()) or bool((sigma < 0).any() or (sigma > 1).any()):
        values = sigma.tolist() if sigma.numel() <= 8 else f"a tensor of shape {sigma.shape}"
        raise ValueError(
            "sigma must be a finite noise level in [0, 1] on the intensity scale [0, 1] "
            f"(25/255 for 25 grey levels of an 8-bit image), got {values}"
        )


def weight_for_sigma(
    sigma: float | Tensor,
    *,
    tv: TVKind = "isotropic",
    color: ColorMode = "joint",
    channels: int = 1,
) -> Tensor:
    """The rule ``weight = gain * sigma`` for a known noise level.

    ``gain`` is ``ISOTROPIC_GAIN`` (one channel or ``color="separate"``),
    ``ISOTROPIC_GAIN * channels**JOINT_EXPONENT`` (joint isotropic TV) or
    ``ANISOTROPIC_GAIN``; see the module docstring for where the form comes from.

    Args:
        sigma: standard deviation of the Gaussian noise on the [0, 1] scale (``25/255``
            for 25 grey levels of an 8-bit image), ``>= 0``: a number or a tensor of any
            shape, e.g. ``(B,)``.
        tv: ``"isotropic"`` or ``"anisotropic"`` total variation.
        color: ``"joint"`` or ``"separate"``; only matters for isotropic TV with
            ``channels > 1``.
        channels: number of channels ``C`` of the image, ``>= 1``.

    Returns:
        The weight, a tensor of the shape of ``sigma`` (0-d for a number), float32 for a
        number and the dtype of ``sigma`` otherwise.

    Raises:
        ValueError: for a negative or non-finite ``sigma``, ``channels < 1`` or an
            unknown ``tv``/``color``.

    Example:
        >>> float(weight_for_sigma(0.0))
        0.0
        >>> bool(weight_for_sigma(0.1, channels=3) > weight_for_sigma(0.1, channels=1))
        True
    """
    check_choice("tv", tv, TV_KINDS)
    check_choice("color", color, COLOR_MODES)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
    if isinstance(sigma, Tensor):
        values = sigma if sigma.is_floating_point() else sigma.to(torch.float32)
    else:
        values = torch.tensor(float(sigma), dtype=torch.float32)
    _check_sigma(values)
    return values * _gain(tv, color, channels)


def plane_sample(batch: Tensor, max_slices: int = _MAX_SLICES) -> tuple[Tensor, int]:
    """Images ``(B * K, C, H, W)`` for the 2-D noise estimates, and ``K`` per image.

    A batch of images is returned as it is (``K = 1``); of a volume ``(B, C, D, H, W)``,
    up to ``max_slices`` evenly spaced slices along its first spatial axis are: the noise
    is independent from value to value, so slices show it as well as the volume does,
    and the estimate of a volume is the median of its slices' estimates (see
    :func:`per_volume`).
    """
    if batch.dim() == 4:
        return batch, 1
    b, c, d = batch.shape[:3]
    k = min(d, max_slices)
    index = torch.tensor([round(i * (d - 1) / max(k - 1, 1)) for i in range(k)])
    slices = batch.index_select(2, index.to(batch.device)).transpose(1, 2)
    return slices.reshape(b * k, c, *batch.shape[3:]), k


def per_volume(values: Tensor, k: int) -> Tensor:
    """Combine ``(B * K,)`` per-slice estimates into one per image: their median."""
    return values if k == 1 else values.reshape(-1, k).median(dim=1).values


def _sigmas(sigma: float | Tensor | None, batch: Tensor) -> Tensor:
    """Noise level per image, shape (B,), float32 on the image's device."""
    b = batch.shape[0]
    if sigma is None:
        planes, k = plane_sample(batch)
        return per_volume(estimate_sigma(planes).to(torch.float32), k)
    values = torch.as_tensor(sigma, dtype=torch.float32).to(batch.device).reshape(-1)
    if values.numel() == 1:
        values = values.expand(b).clone()
    if values.numel() != b:
        raise ValueError(
            f"sigma must be one number or one per image ({b}), got {values.numel()} values"
        )
    _check_sigma(values)
    return values


def sample_tiles(f: Tensor, count: int | None = None) -> Tensor:
    """Up to ``count`` (default ``_MAX_TILES``) evenly spread ``_TILE``-pixel tiles of
    every image, ``(B, T, C, h, w)``; the whole image (``T = 1``) if it has no more
    pixels. Volumes ``(B, C, D, H, W)`` give up to ``_CUBES_PER_AXIS**3`` evenly spread
    cubes of ``_TILE_3D`` voxels a side, ``(B, T, C, d, h, w)``."""
    if f.dim() == 5:
        return _sample_cubes(f)
    count = _MAX_TILES if count is None else count
    h, w = f.shape[-2:]
    if h * w <= count * _TILE * _TILE or min(h, w) < _TILE:
        return f.unsqueeze(1)
    side = math.isqrt(count)
    rows = min(side, h // _TILE)
    cols = min(count // rows, w // _TILE)
    tops = [round(i * (h - _TILE) / max(rows - 1, 1)) for i in range(rows)]
    lefts = [round(j * (w - _TILE) / max(cols - 1, 1)) for j in range(cols)]
    tiles = [f[:, :, t : t + _TILE, s : s + _TILE] for t in tops for s in lefts]
    return torch.stack(tiles, dim=1)


def _sample_cubes(f: Tensor) -> Tensor:
    """Up to ``_CUBES_PER_AXIS**3`` evenly spread cubes of every volume (or the whole)."""
    sizes = f.shape[2:]
    if math.prod(sizes) <= (_CUBES_PER_AXIS * _TILE_3D) ** 3 or min(sizes) < _TILE_3D:
        return f.unsqueeze(1)
    starts = [
        [round(i * (n - _TILE_3D) / max(k - 1, 1)) for i in range(k)]
        for n in sizes
        for k in [min(_CUBES_PER_AXIS, n // _TILE_3D)]
    ]
    tiles = [
        f[:, :, z : z + _TILE_3D, y : y + _TILE_3D, x : x + _TILE_3D]
        for z in starts[0]
        for y in starts[1]
        for x in starts[2]
    ]
    return torch.stack(tiles, dim=1)


def _clipped_targets(f: Tensor, smoothed: Tensor, sigma: Tensor) -> Tensor:
    """``f`` ``(B, ...)`` with every clipped value replaced by the expected unclipped noisy
    value, for one noise level per image ``sigma`` ``(B,)``.

    A value at 0 stands for a noisy value ``y <= 0``, one at 1 for ``y >= 1``; given
    the clean value ``x`` the expectations are ``x - sigma * m(x / sigma)`` and
    ``x + sigma * m((1 - x) / sigma)`` with ``m`` the inverse Mills ratio. ``x`` is read
    from ``smoothed`` (a denoised copy of ``f``), corrected for the clipping's bias.
    """
    low = (f <= 0).flatten(1)
    clipped = low | (f >= 1).flatten(1)
    if not bool(clipped.any()):
        return f
    # The clipped values only, every image's side by side (with its own noise level).
    packing = Packing.of(clipped)
    clean = latent_value(packing.pack(smoothed.flatten(1).clamp(0, 1), fill=0.5), sigma)
    level = per_image(sigma.to(f), clean)
    below = packing.pack(low)
    distance = torch.where(below, clean, 1 - clean)  # to the clipping level
    sign = torch.where(below, -1.0, 1.0)
    expected = clean + sign * level * inverse_mills(distance / level)
    return packing.unpack(expected, f.flatten(1)).reshape(f.shape)


class ProbedSure:
    """SURE of the tiles of a batch of images at any weights, from Monte-Carlo probes.

    ``data`` ``(B, T, C, *spatial)`` is what the solver restores; ``moves`` ``(B, P * T,
    C, *spatial)`` the probes' displacements of it and ``response`` the fields the probed
    changes are read against (the probe, with the values that do not count set to 0).
    Every request, a list of (image, weight) pairs, is solved in one batch: each image
    with its probed copies at its weight. ``sigma``, ``count`` (the values scored) and
    ``offset`` (added to every value: ``-sigma**2`` for the plain SURE) are per image,
    ``(B,)``. The clipping targets may be set after the first request
    (:meth:`set_targets`, they need the result at a weight): until then :meth:`solve`
    and :meth:`score` are called apart.
    """

    def __init__(
        self,
        data: Tensor,
        moves: Tensor,
        response: Tensor,
        sigma: Tensor,
        reg: Regulariser,
        *,
        targets: Tensor | None,
        count: Tensor,
        missing: Tensor | None,
        clip: bool,
        offset: Tensor,
    ) -> None:
        self.tiles = data.shape[1]
        self.probes = moves.shape[1] // self.tiles
        self.images = torch.cat([data, per_probe(data, self.probes) + moves], dim=1)
        self.response = response
        self.reg, self.missing, self.clip, self.targets = reg, missing, clip, targets
        device = data.device
        self.sigma = sigma.to(device, torch.float64)
        self.delta = _PROBE_RATIO * self.sigma
        self.count = count.to(device, torch.float64)
        self.offset = offset.to(device, torch.float64)

    def solve(self, images: Tensor, weights: Tensor) -> Tensor:
        """Each pair's image and its probed copies solved at its weight, ``(N, (1 + P) *
        T, C, *spatial)`` float64 for image indices and weights ``(N,)``."""
        return solve_pairs(
            self.images[images.to(self.images.device)],
            weights,
            self.reg,
            iteration=Iteration(_SURE_MAX_ITER, energy=False),
            clip=self.clip,
        )

    def set_targets(self, targets: Tensor) -> None:
        """What the results are compared with, ``(B, T, C, *spatial)``."""
        self.targets = targets

    def score(self, images: Tensor, solved: Tensor) -> Tensor:
        """SURE of each pair from its :meth:`solve` result, ``(N,)`` float64 (the targets
        must be set)."""
        assert self.targets is not None
        index = images.to(solved.device)
        t = self.tiles
        u, v = solved[:, :t], solved[:, t:]
        squared = (u - _for_pairs(self.targets, images)).square_()
        if self.missing is not None:
            squared.masked_fill_(_for_pairs(self.missing, images), 0.0)
        residual = squared.flatten(1).sum(1)
        change = (v - per_probe(u, self.probes)).nan_to_num_(0.0)
        response = change.mul_(_for_pairs(self.response, images)).flatten(1).sum(1)
        divergence = response / (self.delta[index] * self.probes)
        var = self.sigma[index].square()
        return (residual + 2 * var * divergence) / self.count[index] + self.offset[index]

    def __call__(self, images: Tensor, weights: Tensor) -> Tensor:
        """SURE of the result of each image at its weight (the targets must be set)."""
        return self.score(images, self.solve(images, weights))


def _for_pairs(x: Tensor, images: Tensor) -> Tensor:
    """The rows of ``x`` ``(B, ...)`` of (image, weight) pairs, ``(N, ...)``; ``(1, ...)``,
    to broadcast without a copy, when all pairs are of one image (as for one image)."""
    if len(images) > 0 and bool((images == images[0]).all()):
        return x[int(images[0])].unsqueeze(0)
    return x[images.to(x.device)]


def per_probe(x: Tensor, count: int) -> Tensor:
    """Every image's ``(B, T, ...)`` tiles repeated once per probe, ``(B, P * T, ...)``,
    as :func:`probes` lays the probes out (``x`` itself for one probe)."""
    return x if count == 1 else x.repeat(1, count, *[1] * (x.dim() - 2))


def probes(like: Tensor, count: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``count`` Gaussian fields for every tile of ``like`` ``(T, C, *spatial)`` (one
    image's tiles), ``(P * T, C, *spatial)``: the same for every image, so that an image
    gets the same weight alone or in a batch."""
    shape = (count * like.shape[0], *like.shape[1:])
    return _probe_fields(shape, dtype).to(like.device, copy=True)


@lru_cache(maxsize=2)
def _probe_fields(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """The fields of :func:`probes`, drawn once per shape: a folder of images of one size
    draws them once, not once per image."""
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    return torch.randn(shape, generator=generator, dtype=dtype)


def per_image(values: Tensor, like: Tensor) -> Tensor:
    """``(B,)`` values shaped to broadcast against ``(B, ...)`` tensors like ``like``."""
    return values.reshape(-1, *[1] * (like.dim() - 1))


def results_at_rules(
    images: Tensor, weights: Tensor, rules: Tensor, solved: Tensor, tiles: int
) -> Tensor:
    """Each image's unprobed result at its rule, ``(B, T, ...)`` for ``tiles`` tiles ``T``,
    from a request of (image, weight) pairs (``images``, ``weights``, their solves
    ``solved``) that holds every image's rule: the first of :func:`refine_weights`."""
    at_rule = weights == rules[images]
    if not torch.equal(images[at_rule].sort().values, torch.arange(len(rules))):
        raise RuntimeError("the first request of a search must hold every image's rule")
    restored = solved.new_empty((len(rules), tiles, *solved.shape[2:]))
    restored[images[at_rule].to(solved.device)] = solved[at_rule.to(solved.device), :tiles]
    return restored


class _Sure(ProbedSure):
    """SURE of the tiles ``(B, T, C, *spatial)`` of a batch of images at any weights;
    clipped values as in the module doc, their targets read from each image's result at
    its rule (``rules``, ``(B,)`` float64, a candidate the search solves first)."""

    def __init__(self, tiles: Tensor, sigma: Tensor, rules: Tensor, reg: Regulariser) -> None:
        f = tiles.to(torch.float64)
        clipped = (f <= 0) | (f >= 1)
        # Missing values (NaN) are neither scored nor probed; the solver fills them.
        missing = torch.isnan(f) if bool(torch.isnan(f).any()) else None
        level = sigma.to(tiles.device, torch.float64)
        probe = probes(tiles[0], _PROBES).to(tiles.dtype)
        scored = ~clipped if missing is None else ~clipped & ~missing
        observed = f[0].numel() if missing is None else (~missing).flatten(1).sum(1)
        super().__init__(
            tiles,
            per_image(_PROBE_RATIO * level, tiles).to(tiles.dtype) * probe,
            probe.to(torch.float64) * per_probe(scored, _PROBES),
            level,
            reg,
            targets=f if not bool(clipped.any()) else None,
            count=torch.as_tensor(observed).expand(len(tiles)),
            missing=missing,
            clip=True,
            offset=-level.square(),
        )
        self.f, self.rules = f, rules

    def __call__(self, images: Tensor, weights: Tensor) -> Tensor:
        solved = self.solve(images, weights)
        if self.targets is None:
            smoothed = results_at_rules(images, weights, self.rules, solved, self.tiles)
            self.set_targets(_clipped_targets(self.f, smoothed, self.sigma))
        return self.score(images, solved)


#: The estimated error of the results of a batch's images at some weights: for image
#: indices and weights ``(N,)`` (int64 and float64, on the CPU), the estimate of each
#: pair, ``(N,)``.
RiskEstimate = Callable[[Tensor, Tensor], Tensor]


def solve_pairs(
    groups: Tensor,
    weights: Tensor,
    reg: Regulariser,
    term: DataTerm | None = None,
    *,
    iteration: Iteration | None = None,
    clip: bool = True,
) -> Tensor:
    """Every group of images ``(N, T, C, *spatial)`` solved at its weight ``(N,)``, in one
    batch: ``(N, T, C, *spatial)`` in float64 (Gaussian data term by default; ``clip`` as
    in :func:`tvdenoise.solver.run_solver`)."""
    term = data_term("gaussian") if term is None else term
    iteration = Iteration() if iteration is None else iteration
    t = groups.shape[1]
    batch = groups.flatten(0, 1)
    per_image = weights.to(batch.device, batch.dtype).repeat_interleave(t)
    # On CPU, in groups whose solver buffers stay in the cache, as for whole images.
    chunk = max(1, images_per_batch(batch.shape, batch.device))
    restored = [
        run_solver(
            batch[start : start + chunk],
            per_image[start : start + chunk],
            reg,
            term,
            iteration,
            clip=clip,
        ).restored.to(torch.float64)
        for start in range(0, len(batch), chunk)
    ]
    return (restored[0] if len(restored) == 1 else torch.cat(restored)).reshape(groups.shape)


def solve_at_weights(
    images: Tensor,
    weights: list[float],
    reg: Regulariser,
    term: DataTerm | None = None,
    *,
    iteration: Iteration | None = None,
    clip: bool = True,
) -> Tensor:
    """Every image of ``(T, C, *spatial)`` solved at every weight, in one batch:
    ``(K, T, C, *spatial)`` in float64 for ``K`` weights (as :func:`solve_pairs`)."""
    groups = images.expand(len(weights), *images.shape)
    values = torch.tensor(weights, dtype=torch.float64)
    return solve_pairs(groups, values, reg, term, iteration=iteration, clip=clip)


def _vertex(left: Tensor, mid: Tensor, right: Tensor) -> Tensor:
    """Where the parabola through three equally spaced values has its minimum, in grid
    steps from the middle one, within half a step (0 if it opens downwards)."""
    curvature = left - 2 * mid + right
    opens_up = curvature > 0
    offset = 0.5 * (left - right) / torch.where(opens_up, curvature, 1.0)
    return torch.where(opens_up, offset, 0.0).clamp(-0.5, 0.5)


def _first_steps(highest: int) -> list[int]:
    return list(range(max(-_HALF_WIDTH, _LOWEST_STEP), min(_HALF_WIDTH, highest) + 1))


def refine_weights(
    risk: RiskEstimate, rules: Tensor, *, highest: int = _HIGHEST_STEP, polish: bool = False
) -> Tensor:
    """The weight minimising ``risk`` for every image: grid search around its rule and a
    parabola.

    Per image, the grid has ratio ``2**(1/3)`` and reaches from ``rule / 4`` to
    ``rule * 2**(highest / 3)``; points are evaluated a few at a time (three around the
    rule, then one more while the minimum sits at an edge of the points evaluated). All
    images are searched together: every round asks ``risk`` once, for the points all
    images still need, and an image whose search has ended asks for nothing more. The
    first round holds every image's rule (``rules`` exactly), so that a risk estimate
    can read what it needs from the results at the rules there
    (:func:`results_at_rules`). With ``polish``, the result and
    its neighbours at ratio ``2**(1/9)`` are evaluated as well and a second parabola (or
    the lower neighbour) is taken: the impulse model's hold-out score has minima too
    sharp for the coarse parabola (see :mod:`tvdenoise.noise_weight`).

    Args:
        risk: the estimated error of (image, weight) pairs (:data:`RiskEstimate`).
        rules: the starting weight of every image, ``(B,)``, ``> 0``.

    Returns:
        The weights, ``(B,)`` float64 on the CPU.
    """
    rules = rules.detach().to("cpu", torch.float64)
    b = len(rules)
    steps = list(range(_LOWEST_STEP, highest + 1))
    grid = rules.unsqueeze(1) * torch.tensor([_STEP**k for k in steps], dtype=torch.float64)
    values = torch.full(grid.shape, math.inf, dtype=torch.float64)
    # When each point was evaluated (rounds, then steps): ties go to the earliest.
    order = torch.full(grid.shape, -1, dtype=torch.long)
    column = torch.arange(len(steps))
    first = torch.tensor([k in _first_steps(highest) for k in steps])
    wanted = first.expand(grid.shape).clone()
    rows = torch.arange(b)
    rounds = 0
    best = torch.zeros(b, dtype=torch.long)
    while bool(wanted.any()):
        image, point = wanted.nonzero(as_tuple=True)
        values[image, point] = risk(image, grid[image, point]).to("cpu", torch.float64)
        order[image, point] = rounds * len(steps) + point
        rounds += 1
        evaluated = order >= 0
        lowest = values.min(dim=1, keepdim=True).values
        tied = torch.where(values == lowest, order, torch.iinfo(torch.long).max)
        best = tied.argmin(dim=1)
        top = torch.where(evaluated, column, -1).max(dim=1).values
        bottom = torch.where(evaluated, column, len(steps)).min(dim=1).values
        up = (best == top) & (best < len(steps) - 1)
        down = (best == bottom) & (best > 0) & ~up
        wanted = torch.zeros_like(wanted)
        wanted[rows[up], best[up] + 1] = True
        wanted[rows[down], best[down] - 1] = True
    inner = (best > 0) & (best < len(steps) - 1)
    left, right = (best - 1).clamp(min=0), (best + 1).clamp(max=len(steps) - 1)
    neighbours = inner & (order[rows, left] >= 0) & (order[rows, right] >= 0)
    offset = torch.where(
        neighbours, _vertex(values[rows, left], values[rows, best], values[rows, right]), 0.0
    )
    exponent = torch.tensor(steps, dtype=torch.float64)[best] + offset
    weight = rules * torch.pow(_STEP, exponent)
    if not polish:
        return weight
    fine = torch.stack([weight / _FINE_STEP, weight, weight * _FINE_STEP], dim=1)
    low, mid, high = risk(rows.repeat_interleave(3), fine.flatten()).cpu().reshape(b, 3).unbind(1)
    neighbour = torch.where(low < high, fine[:, 0], fine[:, 2])
    vertex = weight * torch.pow(_FINE_STEP, _vertex(low, mid, high))
    return torch.where(torch.minimum(low, high) < mid, neighbour, vertex)


def auto_weight(
    image: Tensor,
    *,
    sigma: float | Tensor | None = None,
    tv: TVKind = "isotropic",
    color: ColorMode = "joint",
    method: AutoMethod = "sure",
    eps: float = DEFAULT_EPS,
    spatial_dims: int = 2,
    spacing: tuple[float, ...] | None = None,
) -> tuple[Tensor, Tensor]:
    """Choose the weight of every image from its noise level.

    With ``method="rule"`` the weight is :func:`weight_for_sigma` of the noise level.
    With ``method="sure"`` (default) that weight is the starting point of a search for
    the weight that minimises Stein's unbiased risk estimate of the image's mean squared
    error (see the module docstring); this takes usually 9-15 extra solves of the image
    (of at most 16 tiles of 64x64 pixels for large images, 27 cubes of 32 voxels for large
    volumes). An image with ``sigma = 0`` gets weight 0.

    Args:
        image: noisy image(s), float tensor ``(C, *spatial)`` or ``(B, C, *spatial)`` in
            [0, 1], at least ``8 x 8`` in its last two axes.
        sigma: standard deviation of the noise on the [0, 1] scale: one number for all
            images, one per image (shape ``(B,)``), or ``None`` to estimate it per image
            with :func:`tvdenoise.estimate_sigma` (on up to 16 slices of a volume).
        tv: ``"isotropic"`` or ``"anisotropic"`` total variation, as in
            :func:`tvdenoise.solve`.
        color: ``"joint"`` or ``"separate"``, as in :func:`tvdenoise.solve`.
        method: ``"sure"`` (rule, then SURE refinement) or ``"rule"`` (rule only).
        eps: Huber smoothing radius of the total variation, as in :func:`tvdenoise.solve`
            (the SURE search solves with it).
        spatial_dims, spacing: the spatial axes, as in :func:`tvdenoise.solve`.

    Returns:
        ``(weights, sigmas)``, each of shape ``(B,)`` (``(1,)`` for an input without batch
        axis), float32 on the device of ``image``: the weight for :func:`tvdenoise.solve`
        and the noise level it was chosen for (the estimate, or ``sigma`` as given).

    Raises:
        TypeError: if ``image`` is not a floating-point tensor.
        ValueError: for a wrong shape, an image smaller than 8x8, a negative or
            non-finite ``sigma``, a ``sigma`` with the wrong number of values, or an
            unknown ``tv``, ``color`` or ``method``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> clean = torch.linspace(0.2, 0.8, 64).expand(1, 64, 64)
        >>> noisy = clean + 0.1 * torch.randn(1, 64, 64, generator=g)
        >>> weights, sigmas = auto_weight(noisy, method="rule")
        >>> round(float(sigmas[0]), 2), weights.shape
        (0.1, torch.Size([1]))
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    reg = TotalVariation(tv, color, eps, spatial_dims, spacing)
    return choose_weight(reg.batch(image, "image"), reg, sigma=sigma, method=method)


def noise_levels(batch: Tensor, sigma: float | Tensor | None) -> Tensor:
    """The Gaussian noise level per image of a ``(B, C, *spatial)`` batch, ``(B,)``:
    ``sigma`` as given (validated), or estimated."""
    h, w = batch.shape[-2:]
    if sigma is None and (h < MIN_SIZE or w < MIN_SIZE):
        raise ValueError(
            f"image must be at least {MIN_SIZE}x{MIN_SIZE} pixels to estimate its noise, "
            f"got {h}x{w}; give sigma (or a weight)"
        )
    # Missing values (NaN) are filled for the noise estimate, which the noise-free fill
    # lowers by the observed share of the variance; SURE ignores them.
    sigmas = _sigmas(sigma, split_missing(batch)[0])
    if sigma is None:
        sigmas = sigmas / observed_share(batch).to(sigmas.device).sqrt()
    return sigmas


def choose_weight(
    batch: Tensor,
    reg: Regulariser,
    *,
    sigma: float | Tensor | None = None,
    method: AutoMethod = "sure",
) -> tuple[Tensor, Tensor]:
    """:func:`auto_weight` of a ``(B, C, *spatial)`` batch for a validated regulariser.

    ``reg`` may be a :class:`~tvdenoise.tgv.TotalGeneralisedVariation` too: the rule then
    starts its first-order weight at the isotropic TV's, and SURE searches from there.
    """
    check_choice("method", method, AUTO_METHODS)
    b, c = batch.shape[:2]
    sigmas = noise_levels(batch, sigma)
    weights = weight_for_sigma(sigmas, tv=reg.kind, color=reg.color, channels=c).clone()
    if method == "rule" or b == 0:
        return weights, sigmas
    f = batch.to(torch.float64 if batch.dtype == torch.float64 else torch.float32)
    tiles = sample_tiles(f)
    for group in search_groups(weights > 0, tiles):
        rules = weights[group].to(torch.float64).cpu()
        sure = _Sure(tiles[group], sigmas[group], rules, reg)
        weights[group] = refine_weights(sure, rules).to(weights)
    return weights, sigmas


def search_groups(searched: Tensor, tiles: Tensor) -> list[Tensor]:
    """The images to search (``searched``, a mask over the batch) as groups of indices,
    each searched together: all of them on a GPU, on CPU as many as the tiles ``(B, T, C,
    *spatial)`` of ``_CPU_SEARCH_VALUES`` values hold."""
    images = searched.nonzero().flatten().to(tiles.device)
    if images.numel() == 0:
        return []
    if tiles.device.type != "cpu":
        return [images]
    size = max(1, _CPU_SEARCH_VALUES // max(tiles[0].numel(), 1))
    return [images[start : start + size] for start in range(0, len(images), size)]
