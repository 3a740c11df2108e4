"""Reading and writing image files: the only module of tvdenoise that touches Pillow.

Images come in as :class:`LoadedImage`, whose ``data`` is a float32 tensor of shape
``(C, H, W)`` with ``C`` in ``{1, 3}`` and values in ``[0, 1]``; everything the denoiser does
not touch (alpha channel, bit depth, ICC profile, EXIF) rides along so that
:func:`save_image` can put it back.

Bit depth. 8-bit samples are divided by 255 and 16-bit samples by 65535. Pillow 13 reads
16-bit grayscale PNG and TIFF faithfully (mode ``I;16``) but silently keeps only the high
byte of 16-bit-per-channel colour images (a 16-bit RGB PNG or TIFF opens as 8-bit ``RGB``)
and cannot write them at all. This module therefore carries two small codecs of its own:

* PNG, 16-bit gray+alpha, RGB and RGBA: chunks, zlib and the five scanline filters in
  numpy (Adam7 interlacing included) for reading; the "Sub" filter for writing.
* TIFF, 16-bit with two or more samples per pixel: Pillow still parses the tags and
  libtiff still decompresses the strips (the strips are re-described to Pillow as one
  8-bit plane of raw bytes, so any byte-oriented compression works: none, LZW, Deflate,
  PackBits); only the byte order and the horizontal predictor are undone here. Tiled,
  JPEG-compressed, signed and floating-point files are refused with a clear error.
  Written files are Deflate-compressed with the horizontal predictor and keep the ICC
  profile, but not the EXIF block (16-bit gray TIFF without alpha goes through Pillow and
  keeps both).

Errors that a user can cause (missing file, not an image, truncated data, output exists, ...)
are raised as :class:`ImageFileError`, whose text is one line ending in the path.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import tempfile
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, TiffImagePlugin, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "ImageFileError",
    "LoadedImage",
    "check_output_path",
    "load_image",
    "save_image",
]

StrPath = str | os.PathLike[str]

#: Largest image (width * height) :func:`load_image` opens by default; Pillow's own default.
DEFAULT_MAX_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3

_FORMAT_BY_SUFFIX: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".bmp": "BMP",
}

#: Lower-case file suffixes that can be both read and written.
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_FORMAT_BY_SUFFIX)

_SIXTEEN_BIT_FORMATS = frozenset({"PNG", "TIFF"})
_ICC_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "TIFF"})
_EXIF_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "TIFF"})
_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})

_ORIENTATION_TAG = 0x0112

# Tags that describe a TIFF file's own pixel layout. When a TIFF's tags are carried over as
# EXIF they must not travel, or they would describe pixels that no longer exist.
_TIFF_LAYOUT_TAGS = frozenset(
    {
        254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284,
        292, 293, 317, 320, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 512, 513,
        514, 515, 517, 518, 519, 520, 521, 529, 530, 531, 532, 700, 33723, 34377, 34675,
        37724,
    }
)  # fmt: skip

# Serialises the short moments in which Pillow's global pixel limit is lifted (see _open).
_PIXEL_LIMIT_LOCK = threading.Lock()


class ImageFileError(Exception):
    """A file could not be read or written.

    ``str(err)`` is one line, ``"<what went wrong>: <path>"``, fit to show a user as is.

    Attributes:
        path: The file (or folder) concerned.
        reason: What went wrong, without the path.
    """

    path: Path
    reason: str

    def __init__(self, reason: str, path: StrPath) -> None:
        self.reason = " ".join(reason.split())
        self.path = Path(path)
        super().__init__(f"{self.reason}: {self.path}")

    def __reduce__(self) -> tuple[type[ImageFileError], tuple[str, Path]]:
        return (type(self), (self.reason, self.path))


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """An image read by :func:`load_image`.

    Attributes:
        data: float32 tensor of shape ``(C, H, W)``, ``C`` in ``{1, 3}``, values in
            ``[0, 1]`` (8-bit samples divided by 255, 16-bit by 65535).
        alpha: The original alpha channel, shape ``(H, W)``, in its original integer dtype
            (``uint8`` or ``uint16``), untouched apart from the EXIF rotation; ``None`` when
            the image is opaque.
        bit_depth: 8 or 16 (1-bit and palette images count as 8).
        icc_profile: The embedded ICC profile, or ``None``. Dropped when the pixels had to be
            converted to another colour space (CMYK, LAB, ...), as it would no longer fit.
        exif: The EXIF block (``b"Exif\\0\\0..."``) with its orientation tag reset to 1, or
            ``None``.
        source_format: Pillow's name for the file format, e.g. ``"PNG"``.
    """

    data: torch.Tensor
    alpha: npt.NDArray[Any] | None
    bit_depth: int
    icc_profile: bytes | None
    exif: bytes | None
    source_format: str | None


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_image(path: StrPath, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image file into a float tensor, keeping what is needed to write it back.

    Accepts Pillow's modes 1, L, LA, P (to RGB, or RGBA when the palette has transparency),
    RGB, RGBA, I;16 and I (16-bit grayscale), CMYK and other modes Pillow converts to RGB,
    plus 16-bit-per-channel PNG and TIFF (see the module notes). The EXIF orientation is
    applied, as :func:`PIL.ImageOps.exif_transpose` would, so ``data`` is upright.

    Args:
        path: The image file.
        max_pixels: Refuse images with more than this many pixels (width * height), a guard
            against decompression bombs. ``None`` removes the limit. Pillow's global
            ``Image.MAX_IMAGE_PIXELS`` is not consulted.

    Returns:
        The pixels as a ``(C, H, W)`` float32 tensor in ``[0, 1]`` with alpha and metadata.

    Raises:
        ImageFileError: The file is missing, unreadable, not an image, truncated or corrupt,
            too large, or in a mode that cannot be turned into gray or RGB.

    Example:
        >>> image = load_image("photo.png")  # doctest: +SKIP
        >>> image.data.shape, image.bit_depth  # doctest: +SKIP
        (torch.Size([3, 480, 640]), 8)
    """
    file = Path(path)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels}")
    _check_readable_file(file)
    try:
        with warnings.catch_warnings():
            # Pillow warns about damaged metadata it skips; a library should stay quiet.
            warnings.filterwarnings("ignore", module=r"PIL\.")
            return _read(file, max_pixels)
    except ImageFileError:
        raise
    except PermissionError:
        raise ImageFileError("permission denied, cannot read the file", file) from None
    except UnidentifiedImageError:
        raise ImageFileError("not an image file that can be read", file) from None
    except Image.DecompressionBombError as exc:  # only if a plugin re-checks on its own
        raise ImageFileError(f"{_first_line(exc)} (raise it with --max-pixels)", file) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageFileError(
            f"image data is truncated or corrupt ({_first_line(exc)})", file
        ) from None


def _read(file: Path, max_pixels: int | None) -> LoadedImage:
    """:func:`load_image` without the translation of errors."""
    if _is_wide_tiff(file):
        # Pillow would keep only the high bytes (RGB) or not open the file at all (LA).
        data = file.read_bytes()
        tags = Image.Exif()
        tags.load(data)  # Pillow's parser for the TIFF header and first IFD
        width, height = int(tags[256]), int(tags[257])
        _check_pixel_count(width, height, max_pixels, file)
        samples = _decode_tiff16(tags, data, file)
        icc_profile = tags.get(34675) or None
        exif, orientation = _read_exif(tags, None, "TIFF")
        return _loaded_image(samples, icc_profile, exif, orientation, "TIFF")

    with _open(file) as im:
        _check_pixel_count(im.width, im.height, max_pixels, file)
        # Pillow 13 turns TIFFs upright itself while loading and drops their orientation tag.
        tiff_tags = getattr(im, "tag_v2", None)
        had_orientation = tiff_tags is not None and _ORIENTATION_TAG in tiff_tags
        _load(im)
        icc_profile = im.info.get("icc_profile") or None
        try:
            exif_tags = im.getexif()
        except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
            exif_tags = Image.Exif()  # damaged metadata should not stop the denoising
        if had_orientation and _ORIENTATION_TAG not in exif_tags:
            exif_tags[_ORIENTATION_TAG] = 1  # already applied by Pillow
        exif, orientation = _read_exif(exif_tags, im.info.get("exif"), im.format)
        if im.format == "PNG" and _is_wide_png(file):
            samples = _decode_png16(file.read_bytes())
        else:
            samples, keep_icc = _pillow_samples(im, file)
            if not keep_icc:
                icc_profile = None
        return _loaded_image(samples, icc_profile, exif, orientation, im.format)


def _check_pixel_count(width: int, height: int, max_pixels: int | None, file: Path) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageFileError(
            f"image has {width * height} pixels ({width}x{height}), more than the "
            f"limit of {max_pixels} (raise it with --max-pixels)",
            file,
        )


def _check_readable_file(file: Path) -> None:
    """Raise :class:`ImageFileError` unless ``file`` is an existing, non-empty file."""
    try:
        info = file.stat()
    except FileNotFoundError:
        raise ImageFileError("no such file", file) from None
    except PermissionError:
        raise ImageFileError("permission denied, cannot read the file", file) from None
    except OSError as exc:
        raise ImageFileError(f"cannot read the file ({_os_reason(exc)})", file) from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageFileError("is a folder, not an image file", file)
    if not stat.S_ISREG(info.st_mode):
        raise ImageFileError("is not a regular file", file)
    if info.st_size == 0:
        raise ImageFileError("file is empty (0 bytes)", file)


@contextlib.contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Switch off Pillow's global decompression-bomb check for the duration, under a lock.

    :func:`load_image` applies its own ``max_pixels`` instead. The global is restored on
    exit, so other callers of Pillow keep their limit except during this window.
    """
    with _PIXEL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@contextlib.contextmanager
def _open(source: Path | IO[bytes]) -> Iterator[Image.Image]:
    """``Image.open`` without Pillow's global decompression-bomb check (see :func:`_load`)."""
    with _pillow_limit_lifted():
        im = Image.open(source)
    with im:
        yield im


def _load(im: Image.Image) -> None:
    """Decode all pixels now (so truncation is caught), past Pillow's global pixel limit.

    Some plugins (TIFF) repeat the check while loading; the limit is lifted, serialising
    loads, only for images that would hit it.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and im.width * im.height > limit:
        with _pillow_limit_lifted():
            im.load()
    else:
        im.load()


def _loaded_image(
    samples: npt.NDArray[Any],
    icc_profile: bytes | None,
    exif: bytes | None,
    orientation: int,
    source_format: str | None,
) -> LoadedImage:
    """Build a :class:`LoadedImage` from ``(H, W, C)`` uint8/uint16 samples, C in 1..4."""
    samples = _apply_orientation(samples, orientation)
    pixels, alpha = _split_alpha(samples)
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    scale = np.float32(65535.0 if bit_depth == 16 else 255.0)
    values = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32) / scale
    return LoadedImage(
        data=torch.from_numpy(values),
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        bit_depth=bit_depth,
        icc_profile=icc_profile,
        exif=exif,
        source_format=source_format,
    )


def _pillow_samples(im: Image.Image, file: Path) -> tuple[npt.NDArray[Any], bool]:
    """Samples from Pillow as ``(H, W, C)`` uint8/uint16 (alpha last), and whether the ICC
    profile still describes them."""
    mode = im.mode
    keep_icc = True
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)[:, :, None], True
    if mode == "I":
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageFileError(
                "32-bit integer samples are not supported (only 8- and 16-bit)", file
            )
        return values.astype(np.uint16)[:, :, None], True
    if mode == "F":
        raise ImageFileError(
            "floating-point images are not supported (only 8- and 16-bit integer samples)", file
        )

    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
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

    values = np.asarray(im).astype(np.uint8)
    return (values[:, :, None] if values.ndim == 2 else values), keep_icc


def _split_alpha(
    values: npt.NDArray[Any],
) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
    """Split ``(H, W, C)`` samples with ``C`` in 1..4 into colour ``(H, W, 1|3)`` and alpha."""
    if values.shape[2] in (2, 4):
        return values[:, :, :-1], values[:, :, -1]
    return values, None


def _read_exif(
    exif: Image.Exif, raw: object, source_format: str | None
) -> tuple[bytes | None, int]:
    """The EXIF block to carry (orientation reset to 1) and the orientation to apply.

    Args:
        exif: The parsed tags; for TIFF, the first IFD, whose layout tags are dropped.
        raw: The EXIF bytes as stored in the file, if the format stores them as a block.
        source_format: Pillow's format name.
    """
    try:
        orientation = exif.get(_ORIENTATION_TAG, 1)
        if not isinstance(orientation, int) or not 1 <= orientation <= 8:
            orientation = 1
        if isinstance(raw, bytes) and raw and orientation == 1 and source_format != "TIFF":
            # Nothing to change: pass the original bytes through untouched.
            return (raw if raw.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + raw), 1
        if source_format == "TIFF":
            for tag in _TIFF_LAYOUT_TAGS & set(exif):
                del exif[tag]
        if _ORIENTATION_TAG in exif:
            exif[_ORIENTATION_TAG] = 1
        return (exif.tobytes() if len(exif) else None), orientation
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        # Damaged metadata should not stop the pixels from being denoised.
        return None, 1


def _apply_orientation(values: npt.NDArray[Any], orientation: int) -> npt.NDArray[Any]:
    """Turn ``(H, W, ...)`` samples upright for an EXIF orientation (1..8).

    Matches :func:`PIL.ImageOps.exif_transpose`: 2 mirror, 3 rotate 180, 4 flip,
    5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    """
    if orientation == 2:
        return values[:, ::-1]
    if orientation == 3:
        return values[::-1, ::-1]
    if orientation == 4:
        return values[::-1]
    if orientation == 5:
        return np.swapaxes(values, 0, 1)
    if orientation == 6:
        return np.rot90(values, k=-1)
    if orientation == 7:
        return np.swapaxes(values, 0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(values, k=1)
    return values


# --------------------------------------------------------------------------------------
# 16-bit PNG codec (Pillow truncates 16-bit colour PNG to 8 bits)
# --------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> colour type
# Adam7 passes as (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # fmt: skip


def _is_wide_png(file: Path) -> bool:
    """True for a 16-bit PNG with more than one sample per pixel."""
    with file.open("rb") as fh:
        head = fh.read(33)
    if len(head) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return False
    return head[24] == 16 and head[25] in (2, 4, 6)


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(type, payload)`` for each PNG chunk, checking lengths and CRCs."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("PNG chunk header is cut off")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"PNG chunk {kind!r} is cut off")
        payload = data[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(kind + payload) != crc:
            raise ValueError(f"PNG chunk {kind!r} has a bad CRC")
        yield kind, payload
        if kind == b"IEND":
            return
        pos = end + 4
    raise ValueError("PNG file ends without IEND")


def _decode_png16(data: bytes) -> npt.NDArray[np.uint16]:
    """Decode a 16-bit PNG (colour type 0, 2, 4 or 6) to ``(H, W, C)`` uint16 samples."""
    header: bytes | None = None
    idat: list[bytes] = []
    for kind, payload in _png_chunks(data):
        if kind == b"IHDR":
            header = payload
        elif kind == b"IDAT":
            idat.append(payload)
    if header is None or len(header) != 13:
        raise ValueError("PNG has no valid IHDR chunk")
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 16 or color_type not in _PNG_CHANNELS:
        raise ValueError(f"unexpected PNG layout: depth {depth}, colour type {color_type}")
    channels = _PNG_CHANNELS[color_type]
    bpp = 2 * channels
    raw = zlib.decompress(b"".join(idat))

    if interlace == 0:
        rows = _png_unfilter(raw, height, width, bpp)
    else:
        rows = np.zeros((height, width, bpp), dtype=np.uint8)
        pos = 0
        for x0, y0, dx, dy in _ADAM7:
            pass_w = (width - x0 + dx - 1) // dx if width > x0 else 0
            pass_h = (height - y0 + dy - 1) // dy if height > y0 else 0
            if pass_w == 0 or pass_h == 0:
                continue
            size = pass_h * (1 + pass_w * bpp)
            rows[y0::dy, x0::dx] = _png_unfilter(raw[pos : pos + size], pass_h, pass_w, bpp)
            pos += size
    samples = rows.reshape(height, width * bpp).view(">u2").reshape(height, width, channels)
    return samples.astype(np.uint16)


def _png_unfilter(raw: bytes, height: int, width: int, bpp: int) -> npt.NDArray[np.uint8]:
    """Undo PNG scanline filters; returns ``(height, width, bpp)`` bytes.

    Rows filtered with None, Sub or Up are undone row by row (Sub is a running sum).
    If any row uses Average or Paeth, whose predictions depend on the left, upper and
    upper-left neighbours, pixels are decoded one anti-diagonal at a time: all pixels on
    an anti-diagonal depend only on earlier ones, so each step is one numpy operation.
    """
    stride = 1 + width * bpp
    if len(raw) < height * stride:
        raise ValueError("PNG image data is truncated")
    lines = np.frombuffer(raw, dtype=np.uint8, count=height * stride).reshape(height, stride)
    kinds = lines[:, 0]
    if kinds.size and kinds.max() > 4:
        raise ValueError(f"invalid PNG filter type {int(kinds.max())}")
    filtered = lines[:, 1:].reshape(height, width, bpp)

    if not np.isin(kinds, (3, 4)).any():
        out = np.empty((height, width, bpp), dtype=np.uint8)
        previous = np.zeros((width, bpp), dtype=np.uint8)
        for y in range(height):
            row = filtered[y]
            if kinds[y] == 1:
                row = np.cumsum(row, axis=0, dtype=np.uint8)
            elif kinds[y] == 2:
                row = row + previous
            out[y] = row
            previous = out[y]
        return out

    # Padded by one zero row on top and one zero column on the left.
    padded = np.zeros((height + 1, width + 1, bpp), dtype=np.int32)
    kind_of_row = kinds.astype(np.int32)
    for diagonal in range(height + width - 1):
        ys = np.arange(max(0, diagonal - width + 1), min(height - 1, diagonal) + 1)
        xs = diagonal - ys
        left = padded[ys + 1, xs]
        up = padded[ys, xs + 1]
        up_left = padded[ys, xs]
        pa = np.abs(up - up_left)
        pb = np.abs(left - up_left)
        pc = np.abs(left + up - 2 * up_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        kind = kind_of_row[ys][:, None]
        prediction = np.where(
            kind == 1,
            left,
            np.where(kind == 2, up, np.where(kind == 3, (left + up) >> 1, paeth * (kind == 4))),
        )
        padded[ys + 1, xs + 1] = (filtered[ys, xs] + prediction) & 0xFF
    return padded[1:, 1:].astype(np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _encode_png16(
    samples: npt.NDArray[np.uint16], icc_profile: bytes | None, exif: bytes | None
) -> bytes:
    """Encode ``(H, W, C)`` uint16 samples, ``C`` in 1..4, as a 16-bit PNG."""
    height, width, channels = samples.shape
    bpp = 2 * channels
    rows = samples.astype(">u2").view(np.uint8).reshape(height, width * bpp)
    filtered = np.empty((height, 1 + width * bpp), dtype=np.uint8)
    filtered[:, 0] = 1  # "Sub": each byte minus the same byte of the pixel to its left
    filtered[:, 1 : 1 + bpp] = rows[:, :bpp]
    filtered[:, 1 + bpp :] = rows[:, bpp:] - rows[:, :-bpp]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, _PNG_COLOR_TYPE[channels], 0, 0, 0)
    parts = [_PNG_SIGNATURE, _png_chunk(b"IHDR", ihdr)]
    if icc_profile:
        parts.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        parts.append(_png_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00")))
    compressed = zlib.compress(filtered.tobytes(), 6)
    step = 1 << 20
    for start in range(0, max(len(compressed), 1), step):
        parts.append(_png_chunk(b"IDAT", compressed[start : start + step]))
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)


# --------------------------------------------------------------------------------------
# 16-bit multi-sample TIFF (Pillow truncates 16-bit RGB TIFF to 8 bits)
# --------------------------------------------------------------------------------------

_TIFF_BYTE_COMPRESSIONS = {1: "none", 5: "LZW", 8: "Deflate", 32773: "PackBits", 32946: "Deflate"}
_SHORT, _LONG, _RATIONAL, _UNDEFINED = 3, 4, 5, 7
_TIFF_TYPE_FORMAT = {_SHORT: "H", _LONG: "I", _UNDEFINED: "B"}


def _as_tuple(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, tuple | list) else (int(value),)


def _is_wide_tiff(file: Path) -> bool:
    """True for a TIFF whose first image has 16-bit samples and several samples per pixel."""
    with file.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8 or head[:4] not in (b"II*\x00", b"MM\x00*"):
            return False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # Pillow only warns about a damaged IFD
                tags = TiffImagePlugin.ImageFileDirectory_v2(head)
                fh.seek(tags.next)
                tags.load(fh)
            bits = _as_tuple(tags.get(258, (1,)))
            samples = int(tags.get(277, 1))
        except (Warning, OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
            return False  # let Pillow try, and report
    return samples > 1 and 16 in bits


def _decode_tiff16(tags: Image.Exif, data: bytes, file: Path) -> npt.NDArray[np.uint16]:
    """Read ``(H, W, C)`` uint16 samples of a 16-bit gray+alpha, RGB or RGBA TIFF.

    ``tags`` is the first IFD as parsed by Pillow. The compressed strips of each plane are
    wrapped in a synthetic one-sample 8-bit TIFF that Pillow (libtiff) decompresses to raw
    bytes; the bytes are then read as 16-bit samples in the file's byte order and the
    horizontal predictor, if any, is undone.
    """
    width, height = int(tags[256]), int(tags[257])
    bits = _as_tuple(tags.get(258, (1,)))
    samples = int(tags.get(277, 1))
    photometric = int(tags.get(262, 2))
    compression = int(tags.get(259, 1))
    predictor = int(tags.get(317, 1))
    planar = int(tags.get(284, 1))
    sample_format = _as_tuple(tags.get(339, (1,)))

    problem = None
    if set(bits) != {16}:
        problem = f"mixed bit depths {bits}"
    elif set(sample_format) != {1}:
        problem = "signed or floating-point 16-bit samples"
    elif photometric not in (1, 2) or (photometric == 1) != (samples == 2):
        problem = f"photometric interpretation {photometric} with {samples} samples"
    elif samples > 4:
        problem = f"{samples} samples per pixel"
    elif 322 in tags or 324 in tags:
        problem = "tiled layout"
    elif compression not in _TIFF_BYTE_COMPRESSIONS:
        problem = f"compression scheme {compression}"
    elif predictor not in (1, 2):
        problem = f"predictor {predictor}"
    if problem is not None:
        raise ImageFileError(
            f"16-bit TIFF with {problem} is not supported (save it as a 16-bit PNG, or as an "
            "uncompressed, LZW or Deflate TIFF)",
            file,
        )

    offsets = _as_tuple(tags[273])
    counts = _as_tuple(tags[279])
    rows_per_strip = min(int(tags.get(278, height)), height)
    planes = 1 if planar == 1 else samples
    per_plane = samples // planes
    strips_per_plane = -(-height // rows_per_strip)
    if len(offsets) != planes * strips_per_plane or len(counts) != len(offsets):
        raise ValueError("TIFF strip tables do not match the image size")
    order = "<" if data[:2] == b"II" else ">"

    decoded = []
    for plane in range(planes):
        first = plane * strips_per_plane
        strips = [
            data[offset : offset + count]
            for offset, count in zip(
                offsets[first : first + strips_per_plane],
                counts[first : first + strips_per_plane],
                strict=True,
            )
        ]
        if any(len(s) != c for s, c in zip(strips, counts[first:], strict=False)):
            raise ValueError("TIFF strip data is truncated")
        row_bytes = width * per_plane * 2
        wrapper = _tiff_container(
            width=row_bytes,
            height=height,
            bits=(8,),
            photometric=1,
            compression=compression,
            predictor=1,
            rows_per_strip=rows_per_strip,
            strips=strips,
        )
        with _open(io.BytesIO(wrapper)) as raw_image:
            _load(raw_image)
            raw = np.asarray(raw_image, dtype=np.uint8)
        if raw.shape != (height, row_bytes):
            raise ValueError("TIFF strips decoded to an unexpected size")
        values = raw.view(order + "u2").reshape(height, width, per_plane).astype(np.uint16)
        if predictor == 2:
            values = np.cumsum(values, axis=1, dtype=np.uint16)
        decoded.append(values)
    return np.concatenate(decoded, axis=2) if len(decoded) > 1 else decoded[0]


def _tiff_container(
    *,
    width: int,
    height: int,
    bits: tuple[int, ...],
    photometric: int,
    compression: int,
    predictor: int,
    rows_per_strip: int,
    strips: Sequence[bytes],
    extra_samples: int = 0,
    icc_profile: bytes | None = None,
) -> bytes:
    """A little-endian, strip-based, chunky TIFF around already-encoded strips."""
    samples = len(bits)
    header_size = 8
    offsets = []
    position = header_size
    for strip in strips:
        offsets.append(position)
        position += len(strip)
    position += position % 2  # the IFD starts on a word boundary
    ifd_offset = position

    entries: list[tuple[int, int, Sequence[int] | bytes]] = [
        (256, _LONG, [width]),
        (257, _LONG, [height]),
        (258, _SHORT, list(bits)),
        (259, _SHORT, [compression]),
        (262, _SHORT, [photometric]),
        (273, _LONG, offsets),
        (277, _SHORT, [samples]),
        (278, _LONG, [rows_per_strip]),
        (279, _LONG, [len(s) for s in strips]),
        (282, _RATIONAL, [72, 1]),
        (283, _RATIONAL, [72, 1]),
        (284, _SHORT, [1]),
        (296, _SHORT, [2]),
    ]
    if predictor != 1:
        entries.append((317, _SHORT, [predictor]))
    if extra_samples:
        entries.append((338, _SHORT, [extra_samples]))
    entries.append((339, _SHORT, [1] * samples))
    if icc_profile:
        entries.append((34675, _UNDEFINED, icc_profile))

    table = bytearray(struct.pack("<H", len(entries)))
    overflow = bytearray()
    overflow_start = ifd_offset + 2 + 12 * len(entries) + 4
    for tag, kind, values in entries:
        if kind == _RATIONAL:
            payload = struct.pack("<II", *values)
            count = 1
        elif isinstance(values, bytes):
            payload, count = values, len(values)
        else:
            payload = struct.pack(f"<{len(values)}{_TIFF_TYPE_FORMAT[kind]}", *values)
            count = len(values)
        if len(payload) <= 4:
            field = payload.ljust(4, b"\x00")
        else:
            field = struct.pack("<I", overflow_start + len(overflow))
            overflow += payload + b"\x00" * (len(payload) % 2)
        table += struct.pack("<HHI", tag, kind, count) + field
    table += struct.pack("<I", 0)  # no further IFD

    parts = [b"II*\x00", struct.pack("<I", ifd_offset), *strips]
    body = b"".join(parts)
    return body + b"\x00" * (ifd_offset - len(body)) + bytes(table) + bytes(overflow)


def _encode_tiff16(samples: npt.NDArray[np.uint16], icc_profile: bytes | None) -> bytes:
    """Encode ``(H, W, C)`` uint16 samples, ``C`` in 2..4, as a Deflate TIFF."""
    height, width, channels = samples.shape
    differences = samples.astype(np.uint16)
    differences[:, 1:] -= samples[:, :-1]  # horizontal predictor, wraps modulo 2**16
    rows = differences.astype("<u2").view(np.uint8).reshape(height, width * channels * 2)
    rows_per_strip = max(1, min(height, (1 << 18) // max(1, rows.shape[1])))
    strips = [
        zlib.compress(rows[top : top + rows_per_strip].tobytes(), 6)
        for top in range(0, height, rows_per_strip)
    ]
    return _tiff_container(
        width=width,
        height=height,
        bits=(16,) * channels,
        photometric=1 if channels < 3 else 2,
        compression=8,
        predictor=2,
        rows_per_strip=rows_per_strip,
        strips=strips,
        extra_samples=2 if channels in (2, 4) else 0,  # unassociated alpha
        icc_profile=icc_profile,
    )


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def _format_for(file: Path) -> str:
    """Pillow's format name for an output path, from its suffix."""
    suffix = file.suffix.lower()
    if suffix not in _FORMAT_BY_SUFFIX:
        allowed = " ".join(sorted(SUPPORTED_SUFFIXES))
        shown = f"{suffix!r}" if suffix else "no suffix"
        raise ImageFileError(
            f"cannot tell the output format from {shown} (use one of {allowed})", file
        )
    return _FORMAT_BY_SUFFIX[suffix]


def check_output_path(
    path: StrPath, *, inputs: Sequence[StrPath] = (), overwrite: bool = False
) -> Path:
    """Check that an image can be written at ``path``, before any expensive work.

    Args:
        path: Where the result will be written.
        inputs: The input files; the output may never be one of them, even with
            ``overwrite=True``.
        overwrite: Whether an existing (non-input) file may be replaced.

    Returns:
        ``path``, made absolute with symbolic links resolved.

    Raises:
        ImageFileError: The suffix is not a supported format, the path is one of
            ``inputs``, it exists and ``overwrite`` is false, it is a folder, or the
            folder it would go into cannot be created or written.

    Example:
        >>> check_output_path("out/clean.png", inputs=["noisy.png"])  # doctest: +SKIP
        PosixPath('/home/me/out/clean.png')
    """
    file = Path(path).expanduser().resolve()
    _format_for(file)
    for source in inputs:
        if _same_file(file, Path(source)):
            raise ImageFileError(
                "output is the input file, which is never overwritten (choose another output)",
                file,
            )
    if file.is_dir():
        raise ImageFileError("output is a folder, not a file", file)
    if file.exists() and not overwrite:
        raise ImageFileError("output exists (use --overwrite)", file)
    folder = file.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ImageFileError("cannot create the output folder, a file is in the way", folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImageFileError("permission denied, cannot write in the folder", folder)
    return file


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    resolved_a = os.path.normcase(a.expanduser().resolve())
    return resolved_a == os.path.normcase(b.expanduser().resolve())


def save_image(
    path: StrPath,
    data: torch.Tensor,
    *,
    like: LoadedImage | None = None,
    quality: int = 95,
    overwrite: bool = False,
) -> None:
    """Write a ``(C, H, W)`` tensor as an image file, atomically.

    The format comes from the suffix (see :data:`SUPPORTED_SUFFIXES`). Values are clipped
    to ``[0, 1]`` and rounded to 16 bits when ``like.bit_depth == 16`` and the format is
    PNG or TIFF, else to 8 bits. From ``like`` the alpha channel is re-attached (its depth
    converted if needed, 16 to 8 bits as ``round(a / 257)``), and the ICC profile and EXIF
    are kept where the format holds them (PNG, JPEG, WebP, TIFF). Known losses: JPEG and BMP
    hold no alpha (Pillow does not read BMP alpha back), so it is dropped; WebP stores gray
    as RGB and is always lossy; 16-bit TIFF with alpha or colour is written
    without EXIF.

    The file is written to a temporary file in the same folder and renamed over ``path``
    only once complete; missing parent folders are created.

    Args:
        path: The output file.
        data: Tensor of shape ``(C, H, W)``, ``C`` in ``{1, 3}``, on any device.
        like: The image this one came from, to carry alpha, bit depth and metadata.
        quality: JPEG and WebP quality, 1 (smallest) to 100 (best).
        overwrite: Replace an existing file instead of refusing.

    Raises:
        ImageFileError: Unknown suffix, the output exists (without ``overwrite``), or the
            file or its folder cannot be written.
        ValueError: ``data`` has the wrong shape or non-finite values, ``like.alpha`` does
            not match its size, or ``quality`` is out of range.

    Example:
        >>> image = load_image("noisy.png")  # doctest: +SKIP
        >>> save_image("clean.png", image.data, like=image)  # doctest: +SKIP
    """
    file = Path(path)
    fmt = _format_for(file)
    samples, alpha, depth = _prepare_samples(data, like, fmt, quality)
    icc_profile = exif = None
    if like is not None:
        if fmt in _ICC_FORMATS and like.data.shape[0] == samples.shape[2]:
            icc_profile = like.icc_profile
        if fmt in _EXIF_FORMATS:
            exif = like.exif
    if alpha is not None:
        samples = np.concatenate([samples, alpha[:, :, None]], axis=2)

    if depth == 16 and (fmt == "PNG" or samples.shape[2] > 1):
        encoded = (
            _encode_png16(samples, icc_profile, exif)
            if fmt == "PNG"
            else _encode_tiff16(samples, icc_profile)
        )

        def write(fh: IO[bytes]) -> None:
            fh.write(encoded)

    else:
        image = _pillow_image(samples, fmt)
        options: dict[str, Any] = {}
        if icc_profile:
            options["icc_profile"] = icc_profile
        if exif:
            options["exif"] = exif
        if fmt in ("JPEG", "WEBP"):
            options["quality"] = quality
        if fmt == "TIFF":
            options["compression"] = "tiff_deflate"

        def write(fh: IO[bytes]) -> None:
            image.save(fh, format=fmt, **options)

    write_atomically(file, write, overwrite=overwrite)


def _prepare_samples(
    data: torch.Tensor, like: LoadedImage | None, fmt: str, quality: int
) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None, int]:
    """Validate, clip and round ``data`` to ``(H, W, C)`` integers; convert the alpha."""
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a torch.Tensor, got {type(data).__name__}")
    if data.ndim != 3 or data.shape[0] not in (1, 3):
        raise ValueError(
            f"data must have shape (C, H, W) with C in {{1, 3}}, got {tuple(data.shape)}"
        )
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    values = data.detach().to(device="cpu", dtype=torch.float64)
    if torch.isnan(values).any():
        raise ValueError("data contains NaN values")
    depth = 16 if like is not None and like.bit_depth == 16 and fmt in _SIXTEEN_BIT_FORMATS else 8
    top = 65535.0 if depth == 16 else 255.0
    dtype = np.uint16 if depth == 16 else np.uint8
    scaled = torch.round(values.clamp(0.0, 1.0) * top).numpy().astype(dtype)
    samples = np.ascontiguousarray(scaled.transpose(1, 2, 0))

    alpha = None
    if like is not None and like.alpha is not None and fmt in _ALPHA_FORMATS:
        if like.alpha.shape != samples.shape[:2]:
            raise ValueError(
                f"like.alpha has shape {like.alpha.shape}, but data is {samples.shape[:2]}"
            )
        alpha = _convert_alpha(like.alpha, depth)
    return samples, alpha, depth


def _convert_alpha(alpha: npt.NDArray[Any], depth: int) -> npt.NDArray[Any]:
    if alpha.dtype == np.uint8:
        wide = alpha.astype(np.uint32) * 257
    elif alpha.dtype == np.uint16:
        wide = alpha.astype(np.uint32)
    else:
        raise ValueError(f"alpha must be uint8 or uint16, got {alpha.dtype}")
    if depth == 16:
        return wide.astype(np.uint16)
    return ((wide + 128) // 257).astype(np.uint8)


def _pillow_image(samples: npt.NDArray[Any], fmt: str) -> Image.Image:
    """A Pillow image for ``(H, W, C)`` uint8 samples, or uint16 single-channel samples."""
    height, width, channels = samples.shape
    if samples.dtype == np.uint16:
        return Image.frombytes("I;16", (width, height), samples.astype("<u2").tobytes())
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    return Image.frombytes(mode, (width, height), np.ascontiguousarray(samples).tobytes())


def write_atomically(
    file: Path, write: Callable[[IO[bytes]], object], *, overwrite: bool = False
) -> None:
    """Write a file through a temporary file in its folder, then rename it into place.

    An interrupted or failed ``write`` leaves no file behind; missing folders are created.

    Args:
        file: The destination.
        write: Writes the content to the binary handle it is given.
        overwrite: Replace an existing ``file``.

    Raises:
        ImageFileError: The folder cannot be created or written, ``file`` exists and
            ``overwrite`` is false, or ``write`` raised ``OSError``/``ValueError``.
    """
    if file.is_dir():
        raise ImageFileError("output is a folder, not a file", file)
    if file.exists() and not overwrite:
        raise ImageFileError("output exists (use --overwrite)", file)
    folder = file.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageFileError(f"cannot create the folder ({_os_reason(exc)})", folder) from None
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{file.name}.", suffix=".tmp")
    except OSError as exc:
        raise ImageFileError(f"cannot write in the folder ({_os_reason(exc)})", folder) from None
    try:
        with os.fdopen(handle, "wb") as fh:
            write(fh)
        os.chmod(temporary, _new_file_mode(file))
        os.replace(temporary, file)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError | ValueError):
            raise ImageFileError(f"could not write ({_first_line(exc)})", file) from exc
        raise


def _new_file_mode(file: Path) -> int:
    """The permission bits the output should get: the old file's, or 0o666 minus umask."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(file.stat().st_mode)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _os_reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
