"""PNG: checked chunk by chunk, then decoded by Pillow (8-bit, animations) or libpng.

Before any pixel is decoded the file's structure is checked here, because decoders differ
in what they let through (Pillow fills missing rows of a short image with black; libpng
prints warnings on stderr):

* every chunk is complete, its CRC is right, and the file ends with ``IEND``;
* the header's size is within ``max_pixels`` (every frame of an animation counted);
* the image data inflates (libdeflate, into a buffer of exactly the size the header
  implies) to exactly that size: not shorter (a truncated file), not longer (a
  decompression bomb: inflating stops where the buffer ends), and its compressed size is
  neither larger than the raw size allows nor too small to hold it.

Then 8-bit and smaller images and animations (APNG) go through :mod:`.pillow`, and 16-bit
images through libpng (imagecodecs), given only the header and the checked scanlines
(stored uncompressed, so that they are inflated once in all), so that no ancillary chunk
or excess data can make it print. Pillow reads the metadata (ICC profile, EXIF) with its
own limits on compressed metadata (``iCCP``, ``zTXt``). A 16-bit ``tRNS`` colour becomes
an alpha channel. Writing: 8-bit through Pillow, 16-bit through libpng with the ICC profile
and EXIF added as ``iCCP`` and ``eXIf`` chunks.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import imagecodecs
import numpy as np
import numpy.typing as npt

from .errors import ImageFileError, first_line
from .image import FileFormat, LoadedImage
from .pillow import (
    PILLOW_ERRORS,
    PNG_LEVEL,
    PNG_STRATEGY,
    apply_orientation,
    check_pixels,
    frames_of,
    holds_frames,
    open_image,
    read_exif,
    read_pillow,
    split_alpha,
    write_pillow,
)

__all__ = ["FORMATS", "SIGNATURE", "read_png", "write_png"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> colour type
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Adam7 passes as (x0, y0, dx, dy).
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
# Deflate never grows data by more than 1/8 (fixed Huffman codes of 9 bits) plus framing.
_DEFLATE_GROWTH = 1.125
# ... and never shrinks it by more than 1032 to 1.
_DEFLATE_MOST_RATIO = 1032
_STORED_BLOCK = 65535  # bytes in a full stored (uncompressed) deflate block


@dataclass(frozen=True)
class _Structure:
    width: int
    height: int
    depth: int
    color_type: int
    interlace: int
    header: bytes
    image_data: list[bytes]
    transparency: bytes | None
    frames: int  # 1 for a still image, acTL's count for an APNG


def _walk(data: bytes, file: Path) -> _Structure:
    """Check the chunk structure of a PNG file and collect what decoding needs."""
    if not data.startswith(SIGNATURE):
        raise ImageFileError("not a PNG file (wrong signature)", file)
    position = len(SIGNATURE)
    header: bytes | None = None
    image_data: list[bytes] = []
    transparency: bytes | None = None
    frames = 1
    end = len(data)
    while True:
        if position + 12 > end:
            raise ImageFileError(
                "image data is truncated or corrupt (the file ends inside a chunk)", file
            )
        (length,) = struct.unpack_from(">I", data, position)
        kind = data[position + 4 : position + 8]
        stop = position + 8 + length
        if length > 0x7FFFFFFF or stop + 4 > end:
            raise ImageFileError(
                f"image data is truncated or corrupt (chunk {kind!r} runs past the end)",
                file,
            )
        (crc,) = struct.unpack_from(">I", data, stop)
        payload = data[position + 8 : stop]
        if zlib.crc32(payload, zlib.crc32(kind)) != crc:
            raise ImageFileError(f"file is corrupt (chunk {kind!r} has a wrong CRC)", file)
        if header is None and kind != b"IHDR":
            raise ImageFileError("file is corrupt (the first chunk is not IHDR)", file)
        if kind == b"IHDR":
            if header is not None or length != 13:
                raise ImageFileError("file is corrupt (bad IHDR chunk)", file)
            header = payload
        elif kind == b"IDAT":
            image_data.append(payload)
        elif kind == b"tRNS":
            transparency = payload
        elif kind == b"acTL" and length >= 4:
            frames = max(1, struct.unpack_from(">I", payload)[0])
        elif kind == b"IEND":
            break
        position = stop + 4
    assert header is not None
    width, height, depth, color_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", header
    )
    if depth not in _DEPTHS.get(color_type, ()) or compression or filtering or interlace > 1:
        raise ImageFileError(
            f"file is corrupt (bit depth {depth} with colour type {color_type}, "
            f"compression {compression}, filter {filtering}, interlace {interlace})",
            file,
        )
    if not image_data:
        raise ImageFileError("image data is missing (no IDAT chunk)", file)
    return _Structure(
        width, height, depth, color_type, interlace, header, image_data, transparency, frames
    )


def _raw_size(png: _Structure) -> int:
    """Bytes of filtered scanlines the header implies (Adam7 passes summed)."""
    bits = _CHANNELS[png.color_type] * png.depth

    def lines(width: int, height: int) -> int:
        return 0 if width == 0 or height == 0 else height * (1 + (width * bits + 7) // 8)

    if not png.interlace:
        return lines(png.width, png.height)
    return sum(
        lines(
            (png.width - x0 + dx - 1) // dx if png.width > x0 else 0,
            (png.height - y0 + dy - 1) // dy if png.height > y0 else 0,
        )
        for x0, y0, dx, dy in _ADAM7
    )


def _check_image_data(png: _Structure, file: Path) -> bytes:
    """The image data must inflate to exactly the size the header implies; returns the
    inflated (still filtered) scanlines."""
    expected = _raw_size(png)
    stream = b"".join(png.image_data)
    if len(stream) > expected * _DEFLATE_GROWTH + 1024:
        raise ImageFileError(
            f"image data is far larger than a {png.width}x{png.height} image needs "
            "(a decompression bomb?)",
            file,
        )
    if len(stream) * _DEFLATE_MOST_RATIO + 1024 < expected:
        raise ImageFileError(
            f"image data is truncated or corrupt ({len(stream)} compressed bytes cannot hold a "
            f"{png.width}x{png.height} image)",
            file,
        )
    try:
        raw = imagecodecs.deflate_decode(stream, out=expected)
    except Exception as exc:  # imagecodecs.DeflateError
        text = str(exc)
        if "INSUFFICIENT_SPACE" in text:
            raise ImageFileError(
                "image data is longer than the header says (a decompression bomb?)", file
            ) from None
        raise ImageFileError(
            "image data is truncated or corrupt (bad deflate data)", file
        ) from None
    if len(raw) != expected:
        raise ImageFileError(
            f"image data is truncated or corrupt ({len(raw)} of {expected} bytes)", file
        )
    return bytes(raw)


def read_png(file: Path, max_pixels: int | None) -> LoadedImage:
    """Read a PNG or APNG file whole (see the module notes).

    Raises:
        ImageFileError: Not a PNG, truncated or corrupt, too large, or a 16-bit animation.
    """
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ImageFileError(f"cannot read the file ({first_line(exc)})", file) from None
    png = _walk(data, file)
    check_pixels(
        (png.frames, png.height, png.width) if png.frames > 1 else (png.height, png.width),
        max_pixels,
        file,
    )
    scanlines = _check_image_data(png, file)
    if png.depth < 16:
        return read_pillow(file, max_pixels)
    if png.frames > 1:
        raise ImageFileError("16-bit animated PNG is not supported", file)
    return _read_png16(scanlines, png, file)


def _stored_png(header: bytes, scanlines: bytes) -> bytearray:
    """A PNG of ``header`` and ``scanlines`` stored in deflate's uncompressed blocks.

    Inflating stored blocks is a copy, so libpng spends its time on unfiltering only; the
    file is assembled in one buffer (no copy of the scanlines but one).
    """
    size = len(scanlines)
    blocks = max(1, -(-size // _STORED_BLOCK))
    head = SIGNATURE + _chunk(b"IHDR", header)
    stream_size = 2 + 5 * blocks + size + 4
    total = len(head) + 8 + stream_size + 4 + 12
    buffer = bytearray(total)
    out = np.frombuffer(buffer, dtype=np.uint8)
    out[: len(head)] = np.frombuffer(head, np.uint8)
    position = len(head)
    out[position : position + 8] = np.frombuffer(struct.pack(">I", stream_size) + b"IDAT", np.uint8)
    start = position + 8
    out[start : start + 2] = (0x78, 0x01)  # zlib header: deflate, no preset dictionary
    full = size // _STORED_BLOCK  # full blocks; the last may be one of them
    data = np.frombuffer(scanlines, np.uint8)
    body = out[start + 2 : start + 2 + 5 * blocks + size]
    if full:
        grid = body[: full * (5 + _STORED_BLOCK)].reshape(full, 5 + _STORED_BLOCK)
        grid[:, 1:5] = (0xFF, 0xFF, 0x00, 0x00)  # LEN 65535 and its complement
        grid[:, 5:] = data[: full * _STORED_BLOCK].reshape(full, _STORED_BLOCK)
    last = body[full * (5 + _STORED_BLOCK) :]
    if len(last):
        rest = size - full * _STORED_BLOCK
        last[:5] = np.frombuffer(struct.pack("<BHH", 0, rest, rest ^ 0xFFFF), np.uint8)
        last[5:] = data[full * _STORED_BLOCK :]
        last_header = start + 2 + full * (5 + _STORED_BLOCK)
    else:
        last_header = start + 2 + (full - 1) * (5 + _STORED_BLOCK)
    out[last_header] = 1  # BFINAL
    end = start + stream_size
    out[end - 4 : end] = np.frombuffer(struct.pack(">I", zlib.adler32(scanlines)), np.uint8)
    crc = zlib.crc32(memoryview(buffer)[position + 4 : end])
    out[end : end + 4] = np.frombuffer(struct.pack(">I", crc), np.uint8)
    out[end + 4 :] = np.frombuffer(_chunk(b"IEND", b""), np.uint8)
    return buffer


def _read_png16(scanlines: bytes, png: _Structure, file: Path) -> LoadedImage:
    bare = _stored_png(png.header, scanlines)
    try:
        values = np.asarray(imagecodecs.png_decode(bare))
    except Exception as exc:  # imagecodecs raises its own PngError
        raise ImageFileError(f"image data is corrupt ({first_line(exc)})", file) from None
    if values.dtype != np.uint16 or values.shape[:2] != (png.height, png.width):
        raise ImageFileError("image data decoded to an unexpected size", file)
    if values.ndim == 2:
        values = values[:, :, None]
    if png.transparency is not None and values.shape[2] in (1, 3):
        colour = np.frombuffer(png.transparency, ">u2")[: values.shape[2]]
        if colour.size == values.shape[2]:
            transparent = (values == colour.astype(np.uint16)).all(axis=2)
            opacity = np.where(transparent, 0, 65535).astype(np.uint16)
            values = np.concatenate([values, opacity[:, :, None]], axis=2)
    try:
        with open_image(file) as im:  # metadata only: Pillow stops before the pixels
            icc_profile = im.info.get("icc_profile") or None
            exif, orientation = read_exif(im, loaded=False)
    except PILLOW_ERRORS as exc:
        raise ImageFileError(f"metadata is corrupt ({first_line(exc)})", file) from None
    values = apply_orientation(values, orientation, 0, 1)
    samples, alpha = split_alpha(values)
    return LoadedImage(
        samples=np.ascontiguousarray(samples),
        axes="YX" if samples.ndim == 2 else "YXS",
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        format="PNG",
        icc_profile=icc_profile,
        exif=exif,
    )


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def write_png(fh: IO[bytes], image: LoadedImage, quality: int) -> None:
    """Encode ``image`` as PNG: 8-bit (and animations) by Pillow, 16-bit by libpng."""
    if image.dtype != np.uint16 or (image.channel_axis is None and image.alpha is None):
        write_pillow(fh, image, quality, "PNG")  # Pillow writes 16-bit grey itself
        return
    frame: npt.NDArray[Any] = frames_of(image)[0]
    encoded = bytes(imagecodecs.png_encode(frame, level=PNG_LEVEL, strategy=PNG_STRATEGY))
    extra = b""
    if image.icc_profile:
        extra += _chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(image.icc_profile))
    if image.exif:
        extra += _chunk(b"eXIf", image.exif.removeprefix(b"Exif\x00\x00"))
    header_end = len(SIGNATURE) + 8 + 13 + 4
    fh.write(encoded[:header_end] + extra + encoded[header_end:])


def _can_hold(image: LoadedImage) -> str | None:
    if image.dtype == np.uint16 and "T" in image.axes:
        return "holds no 16-bit animation"
    return holds_frames(image, animation=True)


#: The formats of this module.
FORMATS = (
    FileFormat(
        name="PNG",
        suffixes=(".png", ".apng"),
        read=read_png,
        write=write_png,
        dtypes=frozenset({"uint8", "uint16"}),
        can_hold=_can_hold,
    ),
)
