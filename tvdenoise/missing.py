"""Missing values: NaN samples (dead pixels, masked regions) carry no data.

A missing value has no fidelity term, so the total variation alone decides it: TV
inpainting. The solvers see data without NaN: :func:`split_missing` fills every missing
value with the mean of its observed neighbours (growing inwards from the edge of a hole, as
a normalised box filter repeated) and returns the mask of observed values, which zeroes the
fidelity there. The fill is only the starting point; the result in a hole is the one the
total variation makes of its border.

Holes are filled from their border inwards, one sample per Adam iteration at most, so a
hole wider than a few tens of samples keeps much of its smooth initial fill (after
:data:`FILL_ROUNDS` rounds the rest of a hole is filled with the image's observed mean).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["FILL_ROUNDS", "all_finite", "check_finite", "observed_share", "split_missing"]

#: Rounds of the neighbour-mean fill before the rest of a hole takes the observed mean.
FILL_ROUNDS = 32


def all_finite(x: Tensor) -> bool:
    """Whether every value of ``x`` is finite, where one reduction can tell: a finite sum
    has no NaN or infinity among its terms (one pass; a mask and a test of it are two
    passes and a tensor). A sum that overflows says nothing, and ``False`` sends the caller
    to its own test."""
    return bool(torch.isfinite(x.sum())) if x.is_floating_point() else True


def check_finite(image: Tensor, name: str = "image") -> None:
    """Raise ``ValueError`` if ``image`` holds an infinite value (NaN means missing)."""
    if all_finite(image):
        return
    if bool(torch.isinf(image).any()):
        raise ValueError(
            f"{name} contains infinite values; mark missing values as NaN (or with mask=) "
            "instead, or clip the data"
        )


def split_missing(f: Tensor) -> tuple[Tensor, Tensor | None]:
    """Data without NaN, and the mask of observed values (``None`` if none is missing).

    Args:
        f: ``(B, C, *spatial)`` data, NaN where a value is missing.

    Returns:
        ``(filled, observed)``: ``f`` with every NaN replaced by the mean of its observed
        neighbours (a new tensor when anything was missing, else ``f`` itself), and a
        float mask of ``f``'s shape, 1 where observed and 0 where missing.

    Raises:
        ValueError: if every value of an image is missing.
    """
    if all_finite(f):
        return f, None
    missing = torch.isnan(f)
    if not bool(missing.any()):
        return f, None
    if bool(missing.flatten(1).all(dim=1).any()):
        raise ValueError("an image has no observed value (every value is NaN or masked)")
    observed = (~missing).to(f.dtype)
    values = torch.where(missing, torch.zeros_like(f), f)
    weights = observed.clone()
    # Each channel of each image on its own: (B * C, 1, *spatial).
    flat_values = values.reshape(-1, 1, *f.shape[2:])
    flat_weights = weights.reshape(-1, 1, *f.shape[2:])
    pool = F.avg_pool2d if f.dim() == 4 else F.avg_pool3d
    for _ in range(FILL_ROUNDS):
        holes = flat_weights == 0
        if not bool(holes.any()):
            break
        total = pool(flat_values, 3, stride=1, padding=1, count_include_pad=False)
        count = pool(flat_weights, 3, stride=1, padding=1, count_include_pad=False)
        reached = holes & (count > 0)
        mean = total / count.clamp_min(torch.finfo(f.dtype).tiny)
        flat_values = torch.where(reached, mean, flat_values)
        flat_weights = torch.where(reached, torch.ones_like(flat_weights), flat_weights)
    filled = flat_values.reshape(f.shape)
    left = flat_weights.reshape(f.shape) == 0
    if bool(left.any()):
        dims = tuple(range(2, f.dim()))
        counts = observed.sum(dims, keepdim=True).clamp_min(1.0)
        mean = (values * observed).sum(dims, keepdim=True) / counts
        filled = torch.where(left, mean.expand_as(f), filled)
    return filled, observed


def observed_share(f: Tensor) -> Tensor:
    """The share of observed (not NaN) values per image of a ``(B, C, *spatial)`` batch.

    The noise estimates run on filled data, whose filled values carry no noise; to first
    order a noise variance read there is this share times the true one.
    """
    if all_finite(f):  # one pass where nothing is missing, the usual case
        return torch.ones(f.shape[0], dtype=torch.float32, device=f.device)
    return (~torch.isnan(f)).flatten(1).to(torch.float32).mean(1)
