"""Argument checks shared by the whole library, in one place (as kornia's ``core/check``).

Every public function validates its arguments here, so a message reads the same wherever
the mistake is made: it names the argument, says what came in and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["as_batch", "check_choice", "check_spacing", "check_spatial_dims"]

#: Numbers of spatial dimensions the solvers support: images (2) and volumes (3).
SPATIAL_DIMS: tuple[int, ...] = (2, 3)


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` if ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is a supported number of spatial dimensions."""
    if isinstance(spatial_dims, bool) or spatial_dims not in SPATIAL_DIMS:
        allowed = " or ".join(str(d) for d in SPATIAL_DIMS)
        raise ValueError(f"spatial_dims must be {allowed}, got {spatial_dims!r}")
    return int(spatial_dims)


def check_spacing(spacing: Sequence[float] | None, spatial_dims: int) -> tuple[float, ...] | None:
    """Validate ``spacing``: one finite sample distance ``> 0`` per spatial axis.

    Returns ``None`` when every distance is 1 (the unit grid: the solvers then skip the
    divisions, so ``spacing=(1, 1, 1)`` gives exactly the default result), else a tuple of
    floats in axis order.
    """
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != spatial_dims:
        raise ValueError(
            f"spacing must have one value per spatial axis ({spatial_dims}), got {tuple(spacing)}"
        )
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be finite numbers > 0, got {tuple(spacing)}")
    return None if all(s == 1.0 for s in values) else values


def as_batch(x: Tensor, name: str = "image", spatial_dims: int = 2) -> Tensor:
    """Return ``x`` as a ``(B, C, *spatial)`` floating tensor (a view when ``x`` has no batch).

    Args:
        x: ``(C, *spatial)`` or ``(B, C, *spatial)`` with ``spatial_dims`` spatial axes.
        name: the argument's name, for messages.
        spatial_dims: number of trailing spatial axes.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    spatial_dims = check_spatial_dims(spatial_dims)
    axes = "HW" if spatial_dims == 2 else "DHW"
    if x.dim() not in (spatial_dims + 1, spatial_dims + 2):
        raise ValueError(
            f"{name} must have shape (C, {', '.join(axes)}) or (B, C, {', '.join(axes)}) "
            f"with spatial_dims={spatial_dims}, got {tuple(x.shape)}"
        )
    # An empty batch is a batch of no images; an image without channels or samples is none.
    if 0 in x.shape[-spatial_dims - 1 :]:
        raise ValueError(
            f"{name} must have at least one channel and one sample along each of "
            f"{', '.join(axes)}, got shape {tuple(x.shape)}"
        )
    return x.unsqueeze(0) if x.dim() == spatial_dims + 1 else x


def floating(x: Tensor) -> Tensor:
    """``x`` in float32 unless it is float32 or float64 already (the solvers' dtypes)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
