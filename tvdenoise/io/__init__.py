"""Reading and writing image files: the only part of tvdenoise that touches file formats.

One module per format family, each a read/write pair registered by suffix
(:mod:`.formats`): :mod:`.png` (libpng and Pillow, 8 and 16 bits, APNG), :mod:`.tiff`
(tifffile: stacks, ImageJ, OME, any dtype), :mod:`.pillow` (JPEG, WebP, GIF, BMP) and
:mod:`.npy` (NumPy arrays). :mod:`.atomic` writes files without ever replacing one that
is not to be replaced, :mod:`.checks` checks output paths before any work,
:mod:`.scaling` maps samples to the solver's [0, 1] scale and back, and :mod:`.layout`
turns a stack into the 2-D images or 3-D volumes the solver takes.

:func:`load_image` returns a whole file as a :class:`LoadedImage` or raises
:class:`ImageFileError`, whose text is one line ending in the path; no codec prints
anything while it works.

Example:
    >>> image = load_image("cells.tif")  # doctest: +SKIP
    >>> image.axes, image.samples.shape, image.dtype, dict(image.spacing)  # doctest: +SKIP
    ('ZYX', (40, 512, 512), dtype('uint16'), {'Z': 0.3, 'Y': 0.1, 'X': 0.1})
    >>> save_image("cells_restored.tif", image)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..defaults import DEFAULT_MAX_PIXELS
from .atomic import TEMPORARY_SUFFIX, is_temporary, write_atomically
from .checks import check_output_path
from .errors import ImageFileError, OutputExistsError, first_line, os_reason, quiet
from .formats import SUPPORTED_SUFFIXES, format_for, reader_for
from .image import CHANNEL_AXES, FileFormat, LoadedImage
from .npy import axes_for_shape
from .pillow import read_pillow
from .scaling import Scaling

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "TEMPORARY_SUFFIX",
    "ImageFileError",
    "LoadedImage",
    "OutputExistsError",
    "Scaling",
    "check_output_path",
    "is_temporary",
    "load_image",
    "save_image",
    "write_atomically",
]

StrPath = str | os.PathLike[str]


def load_image(path: StrPath, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read a whole image file: every page, frame, slice and channel, or nothing.

    The format is recognised from the file's first bytes. The declared size is checked
    against ``max_pixels`` before any pixel is decoded; a stack counts all its positions
    (frames x height x width, say). See the format modules for what each reads.

    Args:
        path: The image file.
        max_pixels: Refuse images with more positions than this (a guard against
            decompression bombs); ``None`` removes the limit. Pillow's global
            ``Image.MAX_IMAGE_PIXELS`` is neither consulted nor changed.

    Returns:
        The file's samples in their own dtype and axes, with alpha, spacing and metadata.

    Raises:
        ImageFileError: The file is missing, unreadable, not an image, truncated or
            corrupt, too large, or holds data that cannot be denoised (several images
            of different shapes, complex numbers, ...).

    Example:
        >>> image = load_image("photo.png")  # doctest: +SKIP
        >>> image.axes, image.samples.shape, image.dtype  # doctest: +SKIP
        ('YXS', (480, 640, 3), dtype('uint8'))
    """
    file = Path(path)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels}")
    _check_readable_file(file)
    try:
        with file.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ImageFileError(f"cannot read the file ({os_reason(exc)})", file) from None
    reader = reader_for(head)
    with quiet():
        try:
            if reader is None:
                return read_pillow(file, max_pixels)
            return reader.read(file, max_pixels)
        except ImageFileError:
            raise
        except PermissionError:
            raise ImageFileError("permission denied, cannot read the file", file) from None
        except MemoryError:
            raise ImageFileError("not enough memory to read the image", file) from None
        except Exception as exc:  # a codec's own error type, for a damaged file
            raise ImageFileError(
                f"image data is truncated or corrupt ({first_line(exc)})", file
            ) from None


def _check_readable_file(file: Path) -> None:
    """Raise :class:`ImageFileError` unless ``file`` is an existing, non-empty file."""
    try:
        info = file.stat()
    except FileNotFoundError:
        raise ImageFileError("no such file", file) from None
    except PermissionError:
        raise ImageFileError("permission denied, cannot read the file", file) from None
    except OSError as exc:
        raise ImageFileError(f"cannot read the file ({os_reason(exc)})", file) from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageFileError("is a folder, not an image file", file)
    if not stat.S_ISREG(info.st_mode):
        raise ImageFileError("is not a regular file", file)
    if info.st_size == 0:
        raise ImageFileError("file is empty (0 bytes)", file)


def save_image(
    path: StrPath,
    data: LoadedImage | npt.NDArray[Any] | torch.Tensor,
    *,
    like: LoadedImage | None = None,
    quality: int = 95,
    overwrite: bool = False,
) -> None:
    """Write an image file atomically, in the format its suffix names.

    ``data`` is one of:

    * a :class:`LoadedImage` (a read image with new samples, say), written as it is;
    * a NumPy array of samples with the axes of ``like`` (or, without ``like``, the axes
      a ``.npy`` file of that shape would have), in any dtype;
    * a ``(C, H, W)`` tensor on [0, 1], ``C`` of 1 or 3, mapped back to the dtype and
      units of ``like`` (:class:`Scaling`), or to 8 bits without it.

    From ``like`` come the alpha channel, spacing and metadata. Where the format cannot
    store the dtype, samples are converted: to 16 bits for PNG from deeper or float data,
    else to 8 bits, each file's range stretched to the new one as :class:`Scaling` maps
    it. JPEG and BMP hold no alpha; it is dropped there. A format that cannot hold the
    image (a z-stack as JPEG) is an error.

    The file is written under a temporary name in its folder and given its name only
    once complete (see :func:`write_atomically`); missing folders are created.

    Args:
        path: The output file.
        data: The image (see above).
        like: The image ``data`` came from, for alpha, dtype, spacing and metadata.
        quality: JPEG and WebP quality, 1 (smallest) to 100 (best).
        overwrite: Replace an existing file instead of refusing.

    Raises:
        ImageFileError: Unknown suffix, a format that cannot hold the image, the output
            exists (:class:`OutputExistsError`, without ``overwrite``), or the file or
            its folder cannot be written.
        ValueError: ``data`` has the wrong shape or NaN values (a tensor), ``like.alpha``
            does not match its size, or ``quality`` is out of range.

    Example:
        >>> image = load_image("noisy.png")  # doctest: +SKIP
        >>> save_image("clean.png", image.data, like=image)  # doctest: +SKIP
    """
    file = Path(path)
    fmt = format_for(file)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    image = _as_image(data, like)
    image = _storable(image, fmt)
    reason = fmt.can_hold(image)
    if reason is not None:
        raise ImageFileError(f"{fmt.name} {reason} (write .tif or .npy instead)", file)

    def write(fh: Any) -> None:
        with quiet():
            fmt.write(fh, image, quality)

    write_atomically(file, write, overwrite=overwrite)


def _as_image(
    data: LoadedImage | npt.NDArray[Any] | torch.Tensor, like: LoadedImage | None
) -> LoadedImage:
    """``data`` as a :class:`LoadedImage`, with ``like``'s alpha and metadata."""
    if isinstance(data, LoadedImage):
        return data
    # The package does not import PyTorch (planning a run needs none); a tensor can only
    # come from a program that has.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(data, torch.Tensor):
        if data.ndim != 3 or data.shape[0] not in (1, 3):
            raise ValueError(
                f"data must have shape (C, H, W) with C in {{1, 3}}, got {tuple(data.shape)}"
            )
        values = data.detach().to(device="cpu", dtype=torch.float64).numpy()
        if np.isnan(values).any():
            raise ValueError("data contains NaN values")
        values = np.clip(values, 0.0, 1.0)
        planes = values[0] if values.shape[0] == 1 else values.transpose(1, 2, 0)
        axes = "YX" if values.shape[0] == 1 else "YXS"
        if like is None:
            scaling = Scaling(0.0, 255.0, np.dtype(np.uint8))
        else:
            scaling = Scaling.for_samples(like.samples)
        samples = scaling.from_unit(planes)
    elif isinstance(data, np.ndarray):
        samples = data
        if like is not None:
            axes = like.axes
        else:
            try:
                axes = axes_for_shape(data.shape)
            except ValueError as exc:
                raise ValueError(f"data: {exc}") from None
    else:
        raise TypeError(
            f"data must be a LoadedImage, a NumPy array or a torch.Tensor, "
            f"got {type(data).__name__}"
        )
    if like is None:
        return LoadedImage(samples=samples, axes=axes)
    alpha = like.alpha
    if alpha is not None:
        expected = tuple(
            n for n, a in zip(samples.shape, axes, strict=True) if a not in CHANNEL_AXES
        )
        if alpha.shape != expected:
            raise ValueError(f"like.alpha has shape {alpha.shape}, but data is {expected}")
    icc = (
        like.icc_profile if _channels(samples, axes) == _channels(like.samples, like.axes) else None
    )
    return like.replace(samples=samples, axes=axes, icc_profile=icc)


def _channels(samples: npt.NDArray[Any], axes: str) -> int:
    return int(np.prod([n for n, a in zip(samples.shape, axes, strict=True) if a in CHANNEL_AXES]))


def _storable(image: LoadedImage, fmt: FileFormat) -> LoadedImage:
    """The image with samples (and alpha) in a dtype the format stores."""
    dtype = image.dtype
    alpha = image.alpha
    if dtype.name in fmt.dtypes:
        target = dtype
        samples = image.samples
    else:
        wide = "uint16" in fmt.dtypes and (dtype.itemsize > 1 or dtype.kind == "f")
        target = np.dtype(np.uint16 if wide else np.uint8)
        unit = Scaling.for_samples(image.samples).to_unit(image.samples)
        unit = np.nan_to_num(np.clip(unit, 0.0, 1.0), nan=0.0)
        samples = Scaling(0.0, float(np.iinfo(target).max), target).from_unit(unit)
    if alpha is not None and alpha.dtype != target:
        alpha = _convert_alpha(alpha, target)
    if samples is image.samples and alpha is image.alpha:
        return image
    return image.replace(samples=samples, alpha=alpha)


def _convert_alpha(alpha: npt.NDArray[Any], target: np.dtype[Any]) -> npt.NDArray[Any]:
    """Alpha in another dtype: 8 <-> 16 bits as ``a * 257`` and ``round(a / 257)``."""
    if alpha.dtype == np.uint8 and target == np.uint16:
        return alpha.astype(np.uint16) * np.uint16(257)
    if alpha.dtype == np.uint16 and target == np.uint8:
        return ((alpha.astype(np.uint32) + 128) // 257).astype(np.uint8)
    source = Scaling.for_samples(alpha)
    if target.kind == "f":
        return source.to_unit(alpha).astype(target)
    unit = np.clip(source.to_unit(alpha), 0.0, 1.0)
    return Scaling(0.0, float(np.iinfo(target).max), target).from_unit(unit)
