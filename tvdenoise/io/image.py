"""What a reader returns and a writer takes: :class:`LoadedImage`, and the format record.

A :class:`LoadedImage` is a whole file: every page, frame, slice and channel, in the
file's own dtype and axis order, with what is needed to write a result back (alpha,
physical spacing, colour profile, format-specific settings). Axes are named by one letter
each, tifffile's convention:

* ``Y``, ``X``: rows and columns (always present, always last but for ``S``);
* ``Z``: depth (a z-stack or volume); ``T``: time (a time-lapse, or animation frames);
* ``C``: channels stored as planes; ``S``: samples of a pixel (RGB), stored interleaved;
* ``I``, ``Q`` and others: a sequence of images whose meaning the file does not state.

Example:
    ``samples.shape == (5, 8, 2, 64, 64)`` with ``axes == "TZCYX"`` is five time points of
    an eight-slice volume with two channels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .scaling import Scaling

if TYPE_CHECKING:
    import torch

__all__ = ["CHANNEL_AXES", "FileFormat", "LoadedImage"]

#: Axis letters that hold colour or channels rather than positions.
CHANNEL_AXES = "CS"


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A whole image file: samples, axes, spacing and what writing it back needs.

    Attributes:
        samples: The samples in the file's dtype (``uint8``, ``uint16``, ``int16``,
            ``float32``, ...), one dimension per letter of ``axes``, alpha excluded.
            EXIF or TIFF orientation has been applied, so rows run top to bottom.
        axes: One letter per dimension of ``samples`` (see the module notes), e.g.
            ``"YX"``, ``"YXS"``, ``"ZYX"``, ``"TZCYX"``.
        alpha: The alpha channel, carried and never denoised, with the axes of
            ``samples`` minus the channel axis; ``None`` when the image is opaque.
        spacing: The physical distance between neighbouring samples along each axis the
            file states it for (``"Z"``, ``"Y"``, ``"X"``; ``"T"`` for a frame interval),
            in ``unit`` (seconds for ``"T"``).
        unit: The unit of the spatial spacing (``"micron"``, ``"mm"``, ...), or ``None``.
        format: The format it was read as: ``"PNG"``, ``"JPEG"``, ``"TIFF"``, ``"NPY"``, ...
        icc_profile: The embedded ICC colour profile, or ``None``.
        exif: An EXIF block (``b"Exif\\0\\0..."``) with its orientation reset to 1, or
            ``None``.
        extra: Format-specific settings for writing the same kind of file back (TIFF:
            compression, tiles, ImageJ or OME flavour, resolution; GIF: frame durations),
            keyed by name; readers and writers of other formats ignore them.
    """

    samples: npt.NDArray[Any]
    axes: str
    alpha: npt.NDArray[Any] | None = None
    spacing: Mapping[str, float] = field(default_factory=dict)
    unit: str | None = None
    format: str = ""
    icc_profile: bytes | None = None
    exif: bytes | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.axes) != self.samples.ndim or len(set(self.axes)) != len(self.axes):
            raise ValueError(
                f"axes must name each of the {self.samples.ndim} dimensions once, "
                f"got {self.axes!r} for shape {self.samples.shape}"
            )
        if self.alpha is not None and self.alpha.shape != self.alpha_shape:
            raise ValueError(f"alpha must have shape {self.alpha_shape}, got {self.alpha.shape}")

    @property
    def dtype(self) -> np.dtype[Any]:
        """The samples' dtype."""
        return self.samples.dtype

    @property
    def channel_axis(self) -> int | None:
        """The index of the ``C`` or ``S`` axis in ``axes``, or ``None`` (one channel)."""
        for i, letter in enumerate(self.axes):
            if letter in CHANNEL_AXES:
                return i
        return None

    @property
    def alpha_shape(self) -> tuple[int, ...]:
        """The shape an alpha channel of this image has: ``samples`` without channels."""
        return tuple(
            n for n, a in zip(self.samples.shape, self.axes, strict=True) if a not in CHANNEL_AXES
        )

    @property
    def pixels(self) -> int:
        """Positions in the image: the product of every dimension but the channels."""
        return math.prod(self.alpha_shape)

    @property
    def is_stack(self) -> bool:
        """Whether the file holds more than one 2-D image (pages, frames, slices)."""
        return self.pixels > math.prod(self._yx())

    @property
    def data(self) -> torch.Tensor:
        """A single 2-D image as a float32 ``(C, H, W)`` tensor on [0, 1].

        Values are scaled by :func:`tvdenoise.io.scaling.scaling_for` (8- and 16-bit
        samples divided by 255 and 65535). For stacks, see :mod:`tvdenoise.io.layout`.

        Raises:
            ValueError: The image is a stack.
        """
        if self.is_stack or not set(self.axes) <= set("YX" + CHANNEL_AXES):
            raise ValueError(f"data holds one 2-D image; this one has axes {self.axes!r}")
        order = [self.axes.index(a) for a in CHANNEL_AXES if a in self.axes]
        order += [self.axes.index("Y"), self.axes.index("X")]
        planes = self.samples.transpose(order).reshape(-1, *self._yx())
        values = Scaling.for_samples(planes).to_unit(planes)
        import torch  # not at module level: planning a run reads no pixels

        return torch.from_numpy(np.ascontiguousarray(values))

    def _yx(self) -> tuple[int, int]:
        shape = self.samples.shape
        return shape[self.axes.index("Y")], shape[self.axes.index("X")]

    def replace(self, **changes: Any) -> LoadedImage:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


#: Every integer and floating sample type that NumPy, TIFF and .npy files share.
NUMERIC_DTYPES = frozenset(
    f"{kind}{bits}"
    for kind, sizes in (
        ("uint", (8, 16, 32, 64)),
        ("int", (8, 16, 32, 64)),
        ("float", (16, 32, 64)),
    )
    for bits in sizes
)


@dataclass(frozen=True)
class FileFormat:
    """One file format: its names, what it holds, and its reader and writer.

    Attributes:
        name: The format's name, e.g. ``"PNG"``.
        suffixes: Lower-case file suffixes, e.g. ``(".png",)``.
        read: ``read(path, max_pixels)`` returns the whole file as a :class:`LoadedImage`
            or raises :class:`~tvdenoise.io.errors.ImageFileError`; it refuses files with
            more than ``max_pixels`` positions before decoding them.
        write: ``write(handle, image, quality)`` encodes ``image`` to a binary handle;
            the samples already have one of ``dtypes`` and the axes ``can_hold`` allows.
        dtypes: The sample dtypes the format stores.
        can_hold: Whether the format can store an image with these axes and shape
            (alpha counted in the shape's channels); returns the reason when not.
    """

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Any, int | None], LoadedImage]
    write: Callable[[IO[bytes], LoadedImage, int], None]
    dtypes: frozenset[str]
    can_hold: Callable[[LoadedImage], str | None]
