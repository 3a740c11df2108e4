"""Total variation of colour images in an orthonormal opponent colour space.

The noise of a photograph is equally strong in every colour direction, but the picture is
not: its structure is mostly in brightness, its colour varies slowly. The opponent space

.. math::

    O = \\begin{pmatrix} 1/\\sqrt3 & 1/\\sqrt3 & 1/\\sqrt3 \\\\
                         1/\\sqrt2 & 0 & -1/\\sqrt2 \\\\
                         1/\\sqrt6 & -2/\\sqrt6 & 1/\\sqrt6 \\end{pmatrix}

splits an RGB value into brightness ``(R + G + B) / sqrt 3`` and two colour differences
``(R - B) / sqrt 2`` and ``(R - 2G + B) / sqrt 6``. ``O`` is orthonormal, so white Gaussian
noise of level ``sigma`` in RGB is white Gaussian noise of the same level in each opponent
channel, and the squared error ``|u - f|**2`` is the same in both spaces. The energy

.. math::

    E(u) = \\frac{1}{N}\\Big(|u - f|^2 + w_L \\mathrm{TV}(L u)
        + w_C \\mathrm{TV}_{joint}(C u)\\Big)

(``L``: the brightness row of ``O``, ``C``: the two colour rows, coupled by one gradient
magnitude; with ``reg="tgv"`` the second-order TGV of each part instead of its TV)
therefore splits exactly into two independent problems: brightness, one
channel with weight ``w_L``, and colour, two channels with weight ``w_C``. Each is solved
on its own (:func:`tvdenoise.solver.run_solver`, without clipping: opponent values are
not intensities) and each weight is chosen on its own, by SURE on the opponent channels
(:func:`opponent_weights`); the result is taken back to RGB and clipped to [0, 1].

Why only Gaussian noise: impulse noise hits one RGB value and leaves the others exact, and
photon noise has a variance that follows each channel's intensity; ``O`` mixes an outlier
into all three opponent channels and makes the noise correlated between them, so neither
model's fidelity splits. Those models keep the joint RGB total variation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar, get_args

import torch
from torch import Tensor

from .auto import (
    _PROBE_RATIO,
    AUTO_METHODS,
    AutoMethod,
    ProbedSure,
    _clipped_targets,
    noise_levels,
    per_image,
    per_probe,
    probes,
    refine_weights,
    results_at_rules,
    sample_tiles,
    search_groups,
    solve_pairs,
    weight_for_sigma,
)
from .checks import check_choice
from .defaults import ColorChoice
from .fidelity import data_term
from .kernel import colour_transform
from .missing import all_finite
from .solver import Iteration, weights_per_image

if TYPE_CHECKING:
    from .tgv import Regulariser

__all__ = [
    "CHROMA",
    "CHROMA_RATIO",
    "COLOR_CHOICES",
    "LIGHT",
    "ColorChoice",
    "from_opponent",
    "opponent_matrix",
    "opponent_weights",
    "partly_missing",
    "resolve_color",
    "to_opponent",
]

#: The ``color`` option of :func:`tvdenoise.denoise`: ``"auto"`` is ``"opponent"`` for
#: three-channel images with Gaussian noise, ``"joint"`` otherwise.
COLOR_CHOICES: tuple[str, ...] = get_args(ColorChoice)

#: Colour weight per brightness weight when the weight is given (``weight=W`` means
#: ``w_L = W``, ``w_C = CHROMA_RATIO * W``): the median ratio of the best colour weight to
#: the best brightness weight over photographs (``scripts/eval_colour.py``).
CHROMA_RATIO = 1.9
#: Rule of the automatic weights (the start of the SURE search), per unit of noise level:
#: brightness, and colour (the median best weights over sigma, ``scripts/eval_colour.py``).
BRIGHTNESS_GAIN = 1.2
CHROMA_GAIN = 2.2
#: The opponent channels of the two problems: brightness, and colour.
LIGHT, CHROMA = slice(0, 1), slice(1, 3)
# Monte-Carlo probes of each component's SURE: one, against two for grey and joint RGB
# images (tvdenoise.auto): measured to choose the same weights here, at a third less work
# (benchmarks/README.md, "Where the constants come from").
_PROBES = 1


def opponent_matrix(
    dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> Tensor:
    """The orthonormal ``3 x 3`` matrix ``O`` (rows: brightness, two colour differences)."""
    rows = [
        [1 / math.sqrt(3)] * 3,
        [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
        [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)],
    ]
    return torch.tensor(rows, dtype=dtype, device=device)


def _apply(matrix: Tensor, x: Tensor) -> Tensor:
    """``matrix`` applied to every pixel's three values, each output the sum
    ``(m[o, 0] x_0 + m[o, 1] x_1) + m[o, 2] x_2`` in that order: the compiled kernel's
    one pass where it applies (the same bits), else PyTorch's operations."""
    if x.dim() < 2 or x.shape[1] != 3:
        raise ValueError(f"opponent colours need (B, 3, *spatial) images, got {tuple(x.shape)}")
    done = colour_transform(matrix, x)
    if done is not None:
        return done
    m = matrix.to(x.device, x.dtype)
    return torch.stack(
        [(m[o, 0] * x[:, 0] + m[o, 1] * x[:, 1]) + m[o, 2] * x[:, 2] for o in range(3)], dim=1
    )


def to_opponent(rgb: Tensor) -> Tensor:
    """``(B, 3, *spatial)`` RGB values to opponent values (brightness first).

    A value missing (NaN) in one channel makes the pixel missing in all three.

    Example:
        >>> grey = torch.full((1, 3, 2, 2), 0.5)
        >>> to_opponent(grey)[0, :, 0, 0].tolist()  # doctest: +ELLIPSIS
        [0.866..., 0.0, 0.0]
    """
    return _apply(opponent_matrix(device=rgb.device), rgb)


def from_opponent(opponent: Tensor) -> Tensor:
    """The inverse of :func:`to_opponent` (``O`` is orthonormal: its transpose)."""
    return _apply(opponent_matrix(device=opponent.device).T, opponent)


def partly_missing(f: Tensor) -> bool:
    """Whether some pixel of a ``(B, C, *spatial)`` batch lacks some channels (NaN) but
    not all."""
    if all_finite(f):  # one pass where nothing is missing, the usual case
        return False
    nan = torch.isnan(f)
    return bool((nan.any(1) & ~nan.all(1)).any())


def resolve_color(color: str, channels: int, noise: str, *, partly: bool = False) -> str:
    """The colour mode to use: ``"auto"`` resolved, and ``"opponent"`` checked.

    ``"auto"`` is ``"opponent"`` for three channels and Gaussian noise, ``"joint"``
    otherwise (one channel, four or more, impulse or photon noise), and also where
    ``partly``: a pixel missing some channels but not all would be missing in all three
    opponent channels, a loss the joint RGB total variation does not have.
    """
    check_choice("color", color, COLOR_CHOICES)
    if color == "auto":
        white = data_term(noise).white_under_rotation
        opponent = channels == 3 and white and not partly
        return "opponent" if opponent else "joint"
    if color == "opponent":
        if channels != 3:
            raise ValueError(
                f"color='opponent' needs 3 channels (RGB), got {channels}; "
                "use 'joint' or 'separate'"
            )
        if not data_term(noise).white_under_rotation:
            raise ValueError(
                f"color='opponent' needs noise='gaussian' (the opponent transform makes "
                f"{noise} noise correlated between channels), got noise={noise!r}; "
                "use 'joint' or 'separate'"
            )
    return color


_Reg = TypeVar("_Reg", bound="Regulariser")


def opponent_regulariser(reg: _Reg) -> _Reg:
    """The regulariser of both opponent problems: ``reg`` with the joint coupling (the
    brightness problem has one channel, the two colour channels share one magnitude)."""
    return replace(reg, color="joint")


def _opponent_tiles(rgb: Tensor) -> Tensor:
    """:func:`to_opponent` of every image's tiles, ``(B, T, 3, *spatial)``."""
    return to_opponent(rgb.flatten(0, 1)).reshape(rgb.shape)


def _component_sure(
    opponent: Tensor,
    targets: Tensor | None,
    moves: Tensor,
    response: Tensor,
    sigma: Tensor,
    values: int,
    reg: Regulariser,
) -> ProbedSure:
    """SURE of one opponent component's result at any weight, with RGB clipping modelled,
    for the component ``opponent`` ``(B, T, K, *spatial)`` of the tiles of a batch of RGB
    images (``values`` RGB values per image).

    ``O`` is orthonormal, so the RGB squared error is the sum of the components' errors
    and the RGB divergence ``sum_i du_i / dy_i`` is the sum of the components' traces of
    ``D O^T J_k O`` (``J_k`` the Jacobian of component ``k``'s solve, ``D`` the RGB values
    that are not clipped): SURE splits into one term per component, and each weight
    minimises its own. The clipping model is the RGB one of :mod:`tvdenoise.auto`: a
    clipped value's target is its expected unclipped value (the component of ``targets``;
    set later when ``None``: it needs both components' results), and it is left out of
    the divergence. The divergence is probed in RGB (the fields ``b`` of
    :func:`tvdenoise.auto.probes` in float64, the same for every image): component ``k``'s
    data moves by ``delta (O b)_k`` (``moves``: ``(O b)_k``) and its response is read
    against ``(O D b)_k`` (``response``).
    """
    nan = torch.isnan(opponent)
    missing = nan if bool(nan.any()) else None
    # Per image: every RGB value, or the component's observed values where some are missing.
    count = torch.where(nan.flatten(1).any(1), (~nan).flatten(1).sum(1), values)
    delta = per_image(_PROBE_RATIO * sigma.to(opponent.device, torch.float64), opponent)
    return ProbedSure(
        opponent,
        (delta * moves).to(opponent.dtype),
        response,
        sigma,
        reg,
        targets=targets,
        count=count,
        missing=missing,
        clip=False,
        offset=torch.zeros_like(sigma),
    )


class _OpponentSure:
    """The brightness and colour SURE of the tiles ``(B, T, 3, *spatial)`` of a batch of
    RGB images, as one risk of ``2 B`` rows (brightness of image ``i``: row ``i``, its
    colour: row ``B + i``), so that both searches run together; without ``colour`` only
    the brightness rows are searched.

    Clipped values' targets need the RGB result at both rules (``light``, ``chroma``,
    ``(B,)`` float64): read from the search's first request, which holds every row's rule
    (the colour result at its rule is solved apart when the colour is not searched).
    """

    def __init__(
        self,
        tiles: Tensor,
        sigma: Tensor,
        light: Tensor,
        chroma: Tensor,
        reg: Regulariser,
        *,
        colour: bool,
    ) -> None:
        f = tiles.to(torch.float64)
        clipped = (f <= 0) | (f >= 1)
        scored = ~clipped & ~torch.isnan(f)
        known = None if bool(clipped.any()) else f
        probe = probes(tiles[0], _PROBES, torch.float64)
        # Each in the opponent space once, for both components.
        opponent = _opponent_tiles(tiles)
        moves = to_opponent(probe)
        response = _opponent_tiles(probe * per_probe(scored, _PROBES))
        targets = None if known is None else _opponent_tiles(known)
        self.parts = [
            _component_sure(
                opponent[:, :, part],
                None if targets is None else targets[:, :, part],
                moves[:, part],
                response[:, :, part],
                sigma,
                tiles[0].numel(),
                reg,
            )
            for part in (LIGHT, CHROMA)
        ]
        self.tiles, self.f, self.sigma, self.reg, self.colour = tiles, f, sigma, reg, colour
        self.rules = (light, chroma)

    def __call__(self, rows: Tensor, weights: Tensor) -> Tensor:
        b = len(self.f)
        component, images = rows // b, rows % b
        asked = [component == k for k in range(len(self.parts))]
        requests = [(images[mask], weights[mask]) for mask in asked]
        solved = [
            part.solve(*request) if bool(mask.any()) else None
            for part, mask, request in zip(self.parts, asked, requests, strict=True)
        ]
        if self.parts[0].targets is None:
            self._set_targets(requests, solved)
        values = torch.empty(len(rows), dtype=torch.float64)
        for part, mask, (image, _), result in zip(self.parts, asked, requests, solved, strict=True):
            if result is not None:
                values[mask] = part.score(image, result).cpu()
        return values

    def _set_targets(
        self, requests: list[tuple[Tensor, Tensor]], solved: list[Tensor | None]
    ) -> None:
        """The clipped values' targets, from the RGB result at both rules."""
        t = self.tiles.shape[1]
        results = [
            results_at_rules(images, weights, rules, result, t)
            for (images, weights), result, rules in zip(requests, solved, self.rules, strict=True)
            if result is not None
        ]
        if not self.colour:
            chroma = _opponent_tiles(self.tiles)[:, :, CHROMA]
            results.append(solve_pairs(chroma, self.rules[1], self.reg, clip=False))
        rgb = from_opponent(torch.cat(results, dim=2).flatten(0, 1))
        smoothed = rgb.reshape(self.f.shape).clamp_(0.0, 1.0)
        targets = _opponent_tiles(_clipped_targets(self.f, smoothed, self.sigma))
        for part, channels in zip(self.parts, (LIGHT, CHROMA), strict=True):
            part.set_targets(targets[:, :, channels])


def opponent_weights(
    rgb: Tensor,
    reg: Regulariser,
    *,
    sigma: float | Tensor | None = None,
    method: AutoMethod = "sure",
    colour: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """The automatic brightness and colour weights of a ``(B, 3, *spatial)`` RGB batch.

    The noise level is estimated on the RGB image (or given), and is the same in every
    opponent channel; each weight starts at its rule (``BRIGHTNESS_GAIN * sigma``,
    ``CHROMA_GAIN * sigma``, times the anisotropic TV's factor) and is refined by its own
    share of SURE (:func:`_component_sure`, with the clipping of the RGB data modelled as
    in :mod:`tvdenoise.auto`). The clipped values' targets are read from the result at
    both rules, which the searches solve first anyway. Both searches of all images run
    together (:func:`tvdenoise.auto.refine_weights`). ``colour=False`` skips the colour
    search (its rule is returned), for a colour weight given by the caller.

    Returns:
        ``(brightness weights, colour weights, sigmas)``, each ``(B,)`` float32.
    """
    check_choice("method", method, AUTO_METHODS)
    sigmas = noise_levels(rgb, sigma)
    anisotropic = float(weight_for_sigma(1.0, tv=reg.kind)) / float(weight_for_sigma(1.0))
    light = sigmas * (BRIGHTNESS_GAIN * anisotropic)
    chroma = sigmas * (CHROMA_GAIN * anisotropic)
    if method == "rule":
        return light, chroma, sigmas
    f = rgb.to(torch.float64 if rgb.dtype == torch.float64 else torch.float32)
    tiles = sample_tiles(f)
    for group in search_groups(sigmas > 0, tiles):
        rules = [weights[group].to(torch.float64).cpu() for weights in (light, chroma)]
        sure = _OpponentSure(
            tiles[group],
            sigmas[group],
            rules[0],
            rules[1],
            opponent_regulariser(reg),
            colour=colour,
        )
        found = refine_weights(sure, torch.cat(rules) if colour else rules[0])
        light[group] = found[: len(group)].to(light)
        if colour:
            chroma[group] = found[len(group) :].to(chroma)
    return light, chroma, sigmas


def solve_opponent_pairs(
    rgb: Tensor,
    light: Tensor,
    chroma: Tensor,
    reg: Regulariser,
    iteration: Iteration | None = None,
) -> Tensor:
    """Groups of RGB images ``(N, T, 3, *spatial)``, each restored in the opponent space
    at its own brightness and colour weights ``(N,)``: ``(N, T, 3, *spatial)`` in RGB,
    float64, not clipped (for data that are not intensities)."""
    g = to_opponent(rgb.flatten(0, 1)).reshape(rgb.shape)
    part = opponent_regulariser(reg)
    parts = [
        solve_pairs(g[:, :, channels], w, part, iteration=iteration, clip=False)
        for channels, w in ((LIGHT, light), (CHROMA, chroma))
    ]
    both = torch.cat(parts, dim=2)
    return from_opponent(both.flatten(0, 1)).reshape(both.shape)


def chroma_weights(
    chroma_weight: float | Sequence[float] | Tensor | None, brightness: Tensor
) -> Tensor:
    """The colour weight per image, ``(B,)``: ``chroma_weight`` as given (one number or
    one per image), or ``CHROMA_RATIO`` times the brightness weight."""
    if chroma_weight is None:
        return brightness * CHROMA_RATIO
    try:
        return weights_per_image(chroma_weight, brightness.shape[0], brightness)
    except ValueError as error:
        raise ValueError(f"chroma_{error}") from None
