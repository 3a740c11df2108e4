"""From a file's samples to what the solver denoises, and back.

A file with axes such as ``TZCYX`` is cut into solver images of shape ``(C, H, W)``
(``dims=2``) or volumes ``(C, D, H, W)`` (``dims=3``):

* the channel axes (``C``, ``S``) become the solver's channels;
* ``Y`` and ``X`` are always spatial; with ``dims=3`` one more axis is: ``Z`` if the file
  has one, else ``T`` (time), else the first other axis (pages, frames);
* every remaining axis (``T`` of a z-stack time series, pages, ...) indexes separate
  solver images.

Default dims (:func:`choose_layout`): 3 for files with a ``Z`` axis of more than one slice
(ImageJ and OME z-stacks, volumes), else 2, so that time series, pages and animation
frames are denoised one by one unless ``dims=3`` asks for coupling along time.

Spacing: the solver takes one sample distance per spatial axis, relative to the X pixel
size (z 0.3 um with 0.1 um pixels gives ``(3, 1, 1)``). From the file, ``Z`` and ``Y``
spacing count only when the X spacing is known too; a time axis used as depth has
spacing 1 (its interval is in seconds, not in the unit of X). A given ``spacing`` overrides
the file's.

Values: all solver images of a file share one :class:`~tvdenoise.io.scaling.Scaling`.
Non-finite samples (NaN, infinities) are missing data for the solver (NaN: no fidelity
term there, see :func:`tvdenoise.restore`) and are put back unchanged afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .image import CHANNEL_AXES, LoadedImage
from .scaling import Scaling

__all__ = ["Layout", "Prepared", "choose_layout", "prepare"]


@dataclass(frozen=True)
class Layout:
    """How one file is cut into solver images.

    Attributes:
        dims: Spatial dimensions of each solver image, 2 or 3.
        depth: The file's axis used as the third spatial axis (``dims == 3``), else
            ``None``.
        spacing: One sample distance per spatial axis (depth, Y, X), relative to X.
        count: How many solver images the file makes.
    """

    dims: int
    depth: str | None
    spacing: tuple[float, ...]
    count: int


def choose_layout(
    image: LoadedImage,
    *,
    dims: int | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> Layout:
    """The layout of the module notes for ``image``.

    Args:
        image: The file.
        dims: 2 or 3, or ``None`` for the default by axes.
        spacing: ``(dz, dy, dx)`` in any one unit, overriding the file's; ``dz`` is
            used only with ``dims == 3``.

    Returns:
        The layout. A file without a third axis is one 2-D image whatever ``dims`` asks.

    Raises:
        ValueError: ``dims`` is not 2, 3 or ``None``, or ``spacing`` is not three
            positive numbers.
    """
    if dims not in (None, 2, 3):
        raise ValueError(f"dims must be 2, 3 or None, got {dims!r}")
    if spacing is not None and (len(spacing) != 3 or not all(s > 0 for s in spacing)):
        raise ValueError(f"spacing must be three numbers > 0 (dz, dy, dx), got {spacing!r}")
    sizes = dict(zip(image.axes, image.samples.shape, strict=True))
    others = [a for a in image.axes if a not in CHANNEL_AXES + "YX" and sizes[a] > 1]
    if dims is None:
        dims = 3 if "Z" in others else 2
    depth = None
    if dims == 3:
        depth = next((a for a in ("Z", "T", *others) if a in others), None)
        if depth is None:
            dims = 2
    count = int(np.prod([sizes[a] for a in others if a != depth]))

    if spacing is not None:
        dz, dy, dx = spacing
        relative = (dz / dx, dy / dx, 1.0)
    else:
        known = image.spacing
        x = known.get("X")
        y = known.get("Y") if x else None
        z = known.get("Z") if x and depth == "Z" else None
        relative = ((z / x) if z and x else 1.0, (y / x) if y and x else 1.0, 1.0)
    # 12 significant digits: 0.3 / 0.1 is 3, not 2.9999999999999996
    spacing_used = tuple(float(f"{value:.12g}") for value in relative[-dims:])
    return Layout(dims=dims, depth=depth, spacing=spacing_used, count=count)


@dataclass(frozen=True, eq=False)
class Prepared:
    """A file cut into solver images, and what is needed to put the results back.

    Attributes:
        noisy: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` float32 tensor on [0, 1].
        layout: The layout used.
        scaling: The map of the samples to [0, 1].
    """

    noisy: torch.Tensor
    layout: Layout
    scaling: Scaling
    _order: tuple[int, ...]
    _shape: tuple[int, ...]
    _nonfinite: npt.NDArray[np.bool_] | None

    def restore(self, image: LoadedImage, restored: torch.Tensor) -> LoadedImage:
        """``image`` with its samples replaced by the solver's ``restored`` images.

        Args:
            image: The file :func:`prepare` was given.
            restored: The solver's result, the shape of :attr:`noisy`, on [0, 1].

        Returns:
            The image with restored samples in its own dtype, axes and units; samples
            that were not finite are the input's.
        """
        if tuple(restored.shape) != tuple(self.noisy.shape):
            raise ValueError(
                f"restored must have shape {tuple(self.noisy.shape)}, got {tuple(restored.shape)}"
            )
        values = restored.detach().to(device="cpu", dtype=torch.float32).numpy()
        samples = self.scaling.from_unit(values.reshape(self._shape))
        if self._nonfinite is not None:
            original = image.samples.transpose(self._order)
            samples[self._nonfinite] = original[self._nonfinite]
        return image.replace(
            samples=np.ascontiguousarray(samples.transpose(np.argsort(self._order)))
        )


def prepare(image: LoadedImage, layout: Layout) -> Prepared:
    """Cut ``image`` into the solver images ``layout`` describes (see the module notes)."""
    axes = image.axes
    channels = [a for a in axes if a in CHANNEL_AXES]
    spatial = ([layout.depth] if layout.depth else []) + ["Y", "X"]
    batch = [a for a in axes if a not in channels and a not in spatial]
    order = tuple(axes.index(a) for a in [*batch, *channels, *spatial])
    permuted: npt.NDArray[Any] = image.samples.transpose(order)
    scaling = Scaling.for_samples(image.samples)
    values = scaling.to_unit(permuted)
    nonfinite = None
    if values.dtype.kind == "f" and image.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            nonfinite = ~finite
            values[nonfinite] = np.nan  # missing data: the solver fills it in from around
    sizes = dict(zip(axes, image.samples.shape, strict=True))
    unit_shape = (
        int(np.prod([sizes[a] for a in batch])),
        int(np.prod([sizes[a] for a in channels])),
        *(sizes[a] for a in spatial),
    )
    noisy = torch.from_numpy(np.ascontiguousarray(values.reshape(unit_shape)))
    return Prepared(noisy, layout, scaling, order, permuted.shape, nonfinite)
