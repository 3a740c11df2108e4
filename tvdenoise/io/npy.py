"""NumPy ``.npy`` files, for data that lives in arrays.

The header is read and checked before any data: the shape against ``max_pixels`` and the
file's size against what the shape and dtype need, so a tiny file claiming a huge array is
refused without allocating it. Only plain numeric dtypes are read (booleans, integers,
floats); object arrays are refused (``allow_pickle=False``), and so are structured and
complex dtypes. The file is read into memory, never memory-mapped.

Axes are not stored in a ``.npy`` file, so they are inferred from the shape:

* 2 dimensions: ``YX``;
* 3 dimensions: ``YXS`` (colour samples last) when the last has 3 or 4 entries and the
  first more than 4, else ``ZYX`` (a volume);
* 4 dimensions: ``ZYXS`` when the last has 3 or 4 entries, else ``TZYX``.

Every sample is data (a ``.npy`` file has no alpha channel). Written files hold the
samples with the axes and dtype they have; an alpha channel from another format is
appended as the last sample.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from .errors import ImageFileError, first_line
from .image import CHANNEL_AXES, NUMERIC_DTYPES, FileFormat, LoadedImage
from .pillow import check_pixels

__all__ = ["FORMATS", "MAGIC", "axes_for_shape", "read_npy", "write_npy"]

MAGIC = b"\x93NUMPY"


def axes_for_shape(shape: tuple[int, ...]) -> str:
    """The axes a ``.npy`` array of this shape is taken to have (see the module notes)."""
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        return "YXS" if shape[2] in (3, 4) and shape[0] > 4 else "ZYX"
    if len(shape) == 4:
        return "ZYXS" if shape[3] in (3, 4) else "TZYX"
    raise ValueError(f"arrays of 2 to 4 dimensions can be read, got {len(shape)}")


def read_npy(file: Path, max_pixels: int | None) -> LoadedImage:
    """Read a ``.npy`` file (see the module notes).

    Raises:
        ImageFileError: Not a ``.npy`` file, truncated, too large, or an unsupported dtype
            or number of dimensions.
    """
    try:
        with file.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            start = fh.tell()
            if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
                raise ImageFileError(
                    f"arrays of dtype {dtype} are not supported (numbers only)", file
                )
            try:
                axes = axes_for_shape(tuple(shape))
            except ValueError as exc:
                raise ImageFileError(str(exc), file) from None
            check_pixels(
                tuple(n for n, a in zip(shape, axes, strict=True) if a not in CHANNEL_AXES),
                max_pixels,
                file,
            )
            needed = math.prod(shape) * dtype.itemsize
            available = file.stat().st_size - start
            if available < needed:
                raise ImageFileError(
                    f"image data is truncated or corrupt ({available} of {needed} bytes)", file
                )
            data = np.frombuffer(fh.read(needed), dtype=dtype)
            if data.size != math.prod(shape):
                raise ImageFileError("image data is truncated or corrupt", file)
    except ImageFileError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ImageFileError(
            f"not a NumPy .npy file that can be read ({first_line(exc)})", file
        ) from None
    values: npt.NDArray[Any] = data.reshape(shape, order="F" if fortran else "C")
    values = np.ascontiguousarray(values.astype(dtype.newbyteorder("=")))
    if values.dtype == np.bool_:
        values = values.astype(np.uint8) * np.uint8(255)
    return LoadedImage(samples=values, axes=axes, format="NPY")


def write_npy(fh: IO[bytes], image: LoadedImage, quality: int) -> None:
    """Write the samples (alpha appended as the last sample) as a ``.npy`` array."""
    del quality
    samples = image.samples
    if image.alpha is not None:
        alpha = image.alpha.astype(samples.dtype)
        samples = (
            np.concatenate([samples, alpha[..., None]], axis=-1)
            if image.axes.endswith("S")
            else np.stack([samples, alpha], axis=-1)
        )
    np.save(fh, np.ascontiguousarray(samples), allow_pickle=False)


def _can_hold(image: LoadedImage) -> str | None:
    del image
    return None


#: The formats of this module.
FORMATS = (
    FileFormat(
        name="NPY",
        suffixes=(".npy",),
        read=read_npy,
        write=write_npy,
        dtypes=NUMERIC_DTYPES,
        can_hold=_can_hold,
    ),
)
