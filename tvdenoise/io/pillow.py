"""JPEG, WebP, GIF and BMP through Pillow, and the 8-bit and animated PNG it decodes.

Modes become ``uint8`` samples: 1-bit, L and P with a grey palette as grey (axes ``YX``),
everything else as RGB (``YXS``), with the alpha channel kept apart (a palette's
transparency becomes alpha). CMYK, YCbCr and LAB are converted to RGB and their ICC
profile, which described the old colour space, is dropped. ``I;16`` PNGs are ``uint16``
and ``I`` and ``F`` images (TIFF-like BMP or PNG variants) keep 32-bit samples. EXIF
orientation is applied.

An animated GIF, WebP or PNG is read whole, every frame composited as Pillow shows it, as a
``TYX`` or ``TYXS`` stack (axis ``T``), and written back as an animation with the frame
durations and loop count it had; its size counts every frame against ``max_pixels``,
checked before any frame is decoded.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from .errors import ImageFileError, first_line
from .image import CHANNEL_AXES, FileFormat, LoadedImage

__all__ = ["FORMATS", "check_pixels", "read_pillow", "write_pillow"]

_ORIENTATION_TAG = 0x0112

# Serialises the short moments in which Pillow's global pixel limit is lifted.
_PIXEL_LIMIT_LOCK = threading.Lock()
#: zlib level of the PNG files written (Pillow's and libpng's default is 6): the lowest
#: level with zlib's lazy matching, which writes two to three times faster than level 6
#: for files a few per cent larger, where levels 1-3 grow smooth images by up to a third
#: (benchmarks/bench_io.py measures both). Writing a restored image should not take as
#: long as restoring it.
PNG_LEVEL = 4
#: zlib strategy of the PNG files written: run lengths only (``Z_RLE``). After PNG's row
#: filters a photograph leaves small residuals with few long-distance repeats, so looking
#: for those costs time for nothing: run lengths write restored photographs about twice
#: as fast, in files as small or smaller (benchmarks/bench_io.py).
PNG_STRATEGY = zlib.Z_RLE

# Errors Pillow raises for damaged files.
PILLOW_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
    MemoryError,
)


def check_pixels(shape: tuple[int, ...], max_pixels: int | None, file: Path) -> None:
    """Refuse an image whose declared size has no pixels or more than ``max_pixels``.

    Args:
        shape: The declared size, channels left out (e.g. ``(frames, height, width)``).
        max_pixels: The most positions allowed, or ``None``.
        file: For the message.
    """
    count = 1
    for n in shape:
        count *= int(n)
    described = "x".join(str(int(n)) for n in shape)
    if count == 0:
        raise ImageFileError(f"image has no pixels ({described})", file)
    if max_pixels is not None and count > max_pixels:
        raise ImageFileError(
            f"image has {count} pixels ({described}), more than the limit of {max_pixels} "
            "(raise it with --max-pixels)",
            file,
        )


@contextlib.contextmanager
def _limit_lifted() -> Iterator[None]:
    """Switch off Pillow's global decompression-bomb check for the duration, under a lock.

    The readers apply their own ``max_pixels`` instead; the global is restored on exit.
    """
    with _PIXEL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@contextlib.contextmanager
def open_image(source: Path | IO[bytes]) -> Iterator[Image.Image]:
    """``Image.open`` without Pillow's global pixel limit (see :func:`_limit_lifted`)."""
    with _limit_lifted():
        im = Image.open(source)
    with im:
        yield im


def _load(im: Image.Image) -> None:
    """Decode the current frame now (so truncation is caught), past Pillow's global limit."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and im.width * im.height > limit:
        with _limit_lifted():
            im.load()
    else:
        im.load()


def read_pillow(file: Path, max_pixels: int | None) -> LoadedImage:
    """Read a file Pillow can open, whole (every frame), as a :class:`LoadedImage`.

    Raises:
        ImageFileError: Not an image, truncated or corrupt, too large, or a mode that
            cannot be turned into grey or RGB.
    """
    try:
        with open_image(file) as im:
            frames = int(getattr(im, "n_frames", 1) or 1)
            check_pixels(
                (frames, im.height, im.width) if frames > 1 else (im.height, im.width),
                max_pixels,
                file,
            )
            if frames > 1:
                return _read_frames(im, frames, file)
            return _read_single(im, file)
    except ImageFileError:
        raise
    except UnidentifiedImageError:
        raise ImageFileError("not an image file that can be read", file) from None
    except Image.DecompressionBombError as exc:
        raise ImageFileError(f"{first_line(exc)} (raise it with --max-pixels)", file) from None
    except PILLOW_ERRORS as exc:
        if "too large" in str(exc):  # PngImagePlugin's limit on compressed metadata
            raise ImageFileError(
                f"metadata inflates past the safe limit ({first_line(exc)})",
                file,
            ) from None
        raise ImageFileError(
            f"image data is truncated or corrupt ({first_line(exc)})", file
        ) from None


def _read_single(im: Image.Image, file: Path) -> LoadedImage:
    tiff_tags = getattr(im, "tag_v2", None)
    had_orientation = tiff_tags is not None and _ORIENTATION_TAG in tiff_tags
    _load(im)
    icc_profile = im.info.get("icc_profile") or None
    exif_block, orientation = read_exif(im, had_orientation)
    values, keep_icc = _samples(im, file)
    values = apply_orientation(values, orientation, 0, 1)
    samples, alpha = split_alpha(values)
    axes = "YX" if samples.ndim == 2 else "YXS"
    return LoadedImage(
        samples=samples,
        axes=axes,
        alpha=alpha,
        format=str(im.format),
        icc_profile=icc_profile if keep_icc else None,
        exif=exif_block,
    )


def _read_frames(im: Image.Image, frames: int, file: Path) -> LoadedImage:
    """Every frame of an animation as a ``(T, H, W[, S])`` stack."""
    fmt = str(im.format)
    decoded: list[npt.NDArray[Any]] = []
    durations: list[int] = []
    grey, alpha_seen = True, False
    icc_profile = im.info.get("icc_profile") or None
    size = im.size
    for index in range(frames):
        im.seek(index)
        _load(im)
        if im.size != size:
            raise ImageFileError("animation frames differ in size", file)
        values, _ = _samples(im, file)
        grey = grey and (values.ndim == 2 or values.shape[2] == 2)
        alpha_seen = alpha_seen or (values.ndim == 3 and values.shape[2] in (2, 4))
        decoded.append(values)
        durations.append(int(im.info.get("duration", 0) or 0))
    stack = np.stack([_widen(v, grey=grey, alpha=alpha_seen) for v in decoded])
    samples, alpha = split_alpha(stack)
    return LoadedImage(
        samples=samples,
        axes="TYX" if samples.ndim == 3 else "TYXS",
        alpha=alpha,
        format=fmt,
        icc_profile=icc_profile,
        extra={"durations": durations, "loop": im.info.get("loop")},
    )


def _widen(values: npt.NDArray[Any], *, grey: bool, alpha: bool) -> npt.NDArray[Any]:
    """One frame as ``(H, W, C)`` with the channels every frame of the stack shares."""
    if values.ndim == 2:
        values = values[:, :, None]
    colour = values[:, :, :1] if values.shape[2] in (1, 2) else values[:, :, :3]
    if not grey and colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    if not alpha:
        return colour
    if values.shape[2] in (2, 4):
        opacity = values[:, :, -1:]
    else:
        opacity = np.full((*values.shape[:2], 1), np.iinfo(values.dtype).max, values.dtype)
    return np.concatenate([colour, opacity], axis=2)


def _samples(im: Image.Image, file: Path) -> tuple[npt.NDArray[Any], bool]:
    """The current frame as ``(H, W)`` or ``(H, W, C)`` samples (alpha last), and whether
    the ICC profile still describes them."""
    mode = im.mode
    keep_icc = True
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16), True
    if mode in ("I", "F"):
        return np.asarray(im).copy(), True
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        if not has_alpha and _is_grey(im):
            im = im.convert("L")
    elif mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert(mode + "A")
    elif mode in ("La", "RGBa"):
        im = im.convert(mode.upper())
    elif mode == "RGBX":
        im = im.convert("RGB")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        # CMYK, YCbCr, LAB, HSV, ...: the embedded profile describes the old colour space.
        keep_icc = False
        try:
            im = im.convert("RGBA" if "A" in mode else "RGB")
        except (ValueError, OSError):
            raise ImageFileError(f"unsupported image mode {mode!r}", file) from None
    return np.asarray(im).astype(np.uint8), keep_icc


def _is_grey(im: Image.Image) -> bool:
    values = np.asarray(im)
    return bool(
        (values[:, :, 0] == values[:, :, 1]).all() and (values[:, :, 1] == values[:, :, 2]).all()
    )


def split_alpha(values: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
    """Split ``(..., C)`` samples with ``C`` of 2 or 4 into colour and alpha; ``C`` of 1
    is squeezed, ``C`` of 3 kept. Arrays without a channel dimension pass through."""
    if values.ndim < 3:
        return values, None
    channels = values.shape[-1]
    if channels in (2, 4):
        colour = values[..., :-1]
        return (colour[..., 0] if channels == 2 else colour), values[..., -1]
    if channels == 1:
        return values[..., 0], None
    return values, None


def read_exif(
    im: Image.Image, had_orientation: bool = False, *, loaded: bool = True
) -> tuple[bytes | None, int]:
    """The EXIF block to carry (orientation reset to 1) and the orientation to apply.

    Args:
        im: The open image.
        had_orientation: Pillow has turned a TIFF upright already.
        loaded: The pixels are decoded; if not, only EXIF stored before them is read
            (Pillow would decode the whole image to look for EXIF after them).
    """
    raw = im.info.get("exif")
    try:
        if loaded:
            exif = im.getexif()
        else:
            exif = Image.Exif()
            if isinstance(raw, bytes) and raw:
                exif.load(raw)
        if had_orientation and _ORIENTATION_TAG not in exif:
            exif[_ORIENTATION_TAG] = 1
        orientation = exif.get(_ORIENTATION_TAG, 1)
        if not isinstance(orientation, int) or not 1 <= orientation <= 8:
            orientation = 1
        if isinstance(raw, bytes) and raw and orientation == 1:
            return (raw if raw.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + raw), 1
        if _ORIENTATION_TAG in exif:
            exif[_ORIENTATION_TAG] = 1
        return (exif.tobytes() if len(exif) else None), orientation
    except PILLOW_ERRORS:
        return None, 1  # damaged metadata should not stop the pixels from being denoised


def apply_orientation(
    values: npt.NDArray[Any], orientation: int, y: int, x: int
) -> npt.NDArray[Any]:
    """Turn samples upright for an EXIF orientation (1..8) over axes ``y`` and ``x``.

    Matches :func:`PIL.ImageOps.exif_transpose`: 2 mirror, 3 rotate 180, 4 flip,
    5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    """
    if orientation in (5, 7):
        values = np.swapaxes(values, y, x)
        return np.flip(values, (y, x)) if orientation == 7 else values
    if orientation == 6:
        return np.rot90(values, k=-1, axes=(y, x))
    if orientation == 8:
        return np.rot90(values, k=1, axes=(y, x))
    flips = {2: (x,), 3: (y, x), 4: (y,)}.get(orientation)
    return np.flip(values, flips) if flips else values


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def frames_of(image: LoadedImage) -> npt.NDArray[Any]:
    """The samples with alpha attached, as ``(T, H, W, C)`` (``T`` 1 for a single image)."""
    order = [image.axes.index(a) for a in "TYX" if a in image.axes]
    channel = image.channel_axis
    samples = image.samples.transpose([*order, *([] if channel is None else [channel])])
    if channel is None:
        samples = samples[..., None]
    if "T" not in image.axes:
        samples = samples[None]
    if image.alpha is not None:
        alpha_axes = "".join(a for a in image.axes if a not in CHANNEL_AXES)
        alpha = image.alpha.transpose([alpha_axes.index(a) for a in "TYX" if a in alpha_axes])
        alpha = alpha if "T" in image.axes else alpha[None]
        samples = np.concatenate([samples, alpha[..., None].astype(samples.dtype)], axis=3)
    return np.ascontiguousarray(samples)


def holds_frames(image: LoadedImage, *, animation: bool) -> str | None:
    """Why an image with these axes cannot be stored as one picture (or an animation)."""
    allowed = set("TYX" if animation else "YX") | set(CHANNEL_AXES)
    channel = image.channel_axis
    colours = 1 if channel is None else image.samples.shape[channel]
    if not set(image.axes) <= allowed or colours not in (1, 3):
        what = "one image or an animation" if animation else "one 2-D image"
        return f"holds {what} of grey or RGB, not axes {image.axes} {image.samples.shape}"
    return None


def _mode(channels: int, dtype: np.dtype[Any]) -> str:
    if dtype == np.uint16:
        return "I;16"
    return {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]


def to_pil(frame: npt.NDArray[Any]) -> Image.Image:
    """A Pillow image of one ``(H, W, C)`` frame, uint8 or single-channel uint16."""
    height, width, channels = frame.shape
    mode = _mode(channels, frame.dtype)
    raw = frame.astype("<u2").tobytes() if mode == "I;16" else frame.tobytes()
    return Image.frombytes(mode, (width, height), raw)


def write_pillow(fh: IO[bytes], image: LoadedImage, quality: int, fmt: str) -> None:
    """Encode ``image`` (one picture or an animation) in Pillow's format ``fmt``."""
    frames = frames_of(image)
    if fmt in ("JPEG", "BMP") and frames.shape[3] in (2, 4):
        frames = frames[..., :-1]  # these formats hold no alpha
    pictures = [to_pil(frame) for frame in frames]
    options: dict[str, Any] = {}
    if image.icc_profile and fmt in ("PNG", "JPEG", "WEBP"):
        options["icc_profile"] = image.icc_profile
    if image.exif and fmt in ("PNG", "JPEG", "WEBP"):
        options["exif"] = image.exif
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    if fmt == "PNG":
        options["compress_level"] = PNG_LEVEL
        options["compress_type"] = PNG_STRATEGY
    if len(pictures) > 1:
        options["save_all"] = True
        options["append_images"] = pictures[1:]
        durations = list(image.extra.get("durations") or [])
        if len(durations) == len(pictures) and any(durations):
            options["duration"] = durations
        loop = image.extra.get("loop")
        options["loop"] = int(loop) if isinstance(loop, int) else 0
    pictures[0].save(fh, format=fmt, **options)


def _plugin(name: str, suffixes: tuple[str, ...], *, animation: bool) -> FileFormat:
    def write(fh: IO[bytes], image: LoadedImage, quality: int) -> None:
        write_pillow(fh, image, quality, name)

    def can_hold(image: LoadedImage) -> str | None:
        return holds_frames(image, animation=animation)

    return FileFormat(
        name=name,
        suffixes=suffixes,
        read=read_pillow,
        write=write,
        dtypes=frozenset({"uint8"}),
        can_hold=can_hold,
    )


#: The formats of this module.
FORMATS = (
    _plugin("JPEG", (".jpg", ".jpeg"), animation=False),
    _plugin("WEBP", (".webp",), animation=True),
    _plugin("GIF", (".gif",), animation=True),
    _plugin("BMP", (".bmp",), animation=False),
)
