"""Tests for tvdenoise.io: every file is generated in tmp_path by the test itself."""

from __future__ import annotations

import io
import os
import pickle
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image, ImageCms, ImageOps, TiffImagePlugin

from tvdenoise import io as tio
from tvdenoise.io import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    ImageFileError,
    LoadedImage,
    check_output_path,
    load_image,
    save_image,
)

WIDTH, HEIGHT = 37, 31  # odd, non-square sizes catch off-by-one and transposition mistakes


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _random_u8(channels: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    return _rng(seed).integers(0, 256, size=(HEIGHT, WIDTH, channels), dtype=np.uint8)


def _random_u16(channels: int, seed: int = 0) -> npt.NDArray[np.uint16]:
    values = _rng(seed).integers(0, 65536, size=(HEIGHT, WIDTH, channels), dtype=np.uint16)
    values[0, 0] = 0
    values[0, 1] = 65535
    values[0, 2] = 0x00FF  # low byte only: lost by any 8-bit shortcut
    return values


def _pil(values: npt.NDArray[np.uint8]) -> Image.Image:
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[values.shape[2]]
    return Image.frombytes(mode, (values.shape[1], values.shape[0]), values.tobytes())


def _as_samples(image: LoadedImage) -> npt.NDArray[np.int64]:
    """The loaded samples as (H, W, C) integers; checks that ``data`` agrees with them."""
    channel = image.channel_axis
    order = [image.axes.index("Y"), image.axes.index("X")] + ([] if channel is None else [channel])
    samples = image.samples.transpose(order)
    samples = samples if samples.ndim == 3 else samples[:, :, None]
    top = 65535 if image.dtype == np.uint16 else 255
    scaled = np.rint(image.data.numpy().astype(np.float64) * top).astype(np.int64)
    np.testing.assert_array_equal(scaled.transpose(1, 2, 0), samples)
    return samples.astype(np.int64)


def _pillow_reading(path: Path, channels: int) -> npt.NDArray[np.uint8]:
    """Pillow's own reading of a 16-bit file: the high byte of each sample, as (H, W, C).

    Pillow 13 opens 16-bit gray+alpha PNG as RGBA with the gray replicated.
    """
    with Image.open(path) as im:
        values = np.asarray(im)
    return values[:, :, [0, 3]] if channels == 2 else values


def _noisy_photo(seed: int = 0) -> npt.NDArray[np.uint8]:
    """A smooth gradient plus noise, so that JPEG quality changes the file size."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([x * 6, y * 7, (x + y) * 3], axis=2).astype(np.float64)
    noise = _rng(seed).normal(0, 25, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


# ---- independent reference encoders for the 16-bit formats Pillow cannot write ------------


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_rows(samples: npt.NDArray[np.uint16], first_kind: int) -> bytes:
    """PNG-filter rows byte by byte, cycling through all five filter types."""
    bpp = 2 * samples.shape[2]
    out = bytearray()
    previous = bytes(samples.shape[1] * bpp)
    for y in range(samples.shape[0]):
        row = samples[y].astype(">u2").tobytes()
        kind = (first_kind + y) % 5
        out.append(kind)
        for i, value in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            prediction = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
            out.append((value - prediction) % 256)
        previous = row
    return bytes(out)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _reference_png16(
    samples: npt.NDArray[np.uint16], *, interlace: bool = False, exif: bytes | None = None
) -> bytes:
    height, width, channels = samples.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4)]
        passes += [(1, 0, 2, 2), (0, 1, 1, 2)]
        raw = b"".join(
            _filter_rows(samples[y0::dy, x0::dx], first_kind=i)
            for i, (x0, y0, dx, dy) in enumerate(passes)
            if samples[y0::dy, x0::dx].size
        )
    else:
        raw = _filter_rows(samples, first_kind=0)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, int(interlace))
    body = _chunk(b"IHDR", ihdr)
    if exif is not None:
        body += _chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    compressed = zlib.compress(raw)
    half = len(compressed) // 2  # two IDAT chunks, to check that they are joined
    body += _chunk(b"IDAT", compressed[:half]) + _chunk(b"IDAT", compressed[half:])
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")


def _reference_tiff(
    *,
    width: int,
    height: int,
    bits: int,
    samples: int,
    photometric: int,
    strips: list[bytes],
    rows_per_strip: int,
    order: str = "<",
    compression: int = 1,
    predictor: int = 1,
    planar: int = 1,
    extra: tuple[tuple[int, int, int, bytes], ...] = (),
    ifd_first: bool = False,
) -> bytes:
    """A minimal TIFF with one IFD; ``extra`` holds (tag, type, count, packed values)."""
    entries = [
        (256, 4, 1, struct.pack(order + "I", width)),
        (257, 4, 1, struct.pack(order + "I", height)),
        (258, 3, samples, struct.pack(order + f"{samples}H", *[bits] * samples)),
        (259, 3, 1, struct.pack(order + "H", compression)),
        (262, 3, 1, struct.pack(order + "H", photometric)),
        (277, 3, 1, struct.pack(order + "H", samples)),
        (278, 4, 1, struct.pack(order + "I", rows_per_strip)),
        (284, 3, 1, struct.pack(order + "H", planar)),
        (317, 3, 1, struct.pack(order + "H", predictor)),
        *extra,
    ]
    n = len(strips)
    counts = struct.pack(order + f"{n}I", *[len(s) for s in strips])

    def table_for(offsets: list[int], ifd_start: int) -> bytes:
        full = sorted([*entries, (273, 4, n, struct.pack(order + f"{n}I", *offsets)),
                       (279, 4, n, counts)])  # fmt: skip
        spill_start = ifd_start + 2 + 12 * len(full) + 4
        table, spill = struct.pack(order + "H", len(full)), b""
        for tag, kind, count, value in full:
            if len(value) <= 4:
                field = value.ljust(4, b"\x00")
            else:
                field = struct.pack(order + "I", spill_start + len(spill))
                spill += value + b"\x00" * (len(value) % 2)
            table += struct.pack(order + "HHI", tag, kind, count) + field
        return table + b"\x00\x00\x00\x00" + spill

    def offsets_from(start: int) -> list[int]:
        return [start + sum(len(s) for s in strips[:i]) for i in range(n)]

    strips_size = sum(len(s) for s in strips)
    if ifd_first:  # header, IFD, strips: cutting the file cuts pixel data only
        table_size = len(table_for([0] * n, 8))
        ifd_start, data_start = 8, 8 + table_size
    else:  # header, strips, IFD
        data_start = 8
        ifd_start = 8 + strips_size + strips_size % 2
    table = table_for(offsets_from(data_start), ifd_start)
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    head = magic + struct.pack(order + "I", ifd_start)
    if ifd_first:
        return head + table + b"".join(strips)
    body = head + b"".join(strips)
    return body + b"\x00" * (ifd_start - len(body)) + table


def _tiff16_uncompressed(
    values: npt.NDArray[np.uint16],
    *,
    order: str = "<",
    planar: int = 1,
    predictor: int = 1,
    orientation: int = 1,
    ifd_first: bool = False,
) -> bytes:
    height, width, channels = values.shape
    stored = values.astype(np.uint16)
    if predictor == 2:
        stored = stored.copy()
        stored[:, 1:] -= values[:, :-1]
    rows_per_strip = 8
    planes = [stored] if planar == 1 else [stored[:, :, i : i + 1] for i in range(channels)]
    strips = [
        plane[top : top + rows_per_strip].astype(order + "u2").tobytes()
        for plane in planes
        for top in range(0, height, rows_per_strip)
    ]
    extra: tuple[tuple[int, int, int, bytes], ...]
    extra = ((274, 3, 1, struct.pack(order + "H", orientation)),)
    if channels in (2, 4):
        extra += ((338, 3, 1, struct.pack(order + "H", 2)),)
    return _reference_tiff(
        width=width,
        height=height,
        bits=16,
        samples=channels,
        photometric=2 if channels >= 3 else 1,
        strips=strips,
        rows_per_strip=rows_per_strip,
        order=order,
        predictor=predictor,
        planar=planar,
        extra=extra,
        ifd_first=ifd_first,
    )


# ---- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_8bit_round_trip_is_exact(tmp_path: Path, suffix: str, channels: int) -> None:
    values = _random_u8(channels)
    source = tmp_path / f"in{suffix}"
    _pil(values).save(source)

    image = load_image(source)
    assert image.data.dtype == torch.float32
    assert image.data.shape == (channels, HEIGHT, WIDTH)
    assert image.dtype == np.uint8 and image.alpha is None
    assert float(image.data.min()) >= 0.0 and float(image.data.max()) <= 1.0
    np.testing.assert_array_equal(_as_samples(image), values)

    target = tmp_path / f"out{suffix}"
    save_image(target, image.data, like=image)
    again = load_image(target)
    assert again.data.shape == image.data.shape
    assert torch.equal(again.data, image.data)
    with Image.open(target) as written:
        assert written.mode == ("L" if channels == 1 else "RGB")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gray_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    values = _random_u16(1)[:, :, 0]
    source = tmp_path / f"in{suffix}"
    Image.frombytes("I;16", (WIDTH, HEIGHT), values.astype("<u2").tobytes()).save(source)

    image = load_image(source)
    assert image.dtype == np.uint16 and image.data.shape == (1, HEIGHT, WIDTH)
    np.testing.assert_array_equal(_as_samples(image)[:, :, 0], values)

    target = tmp_path / f"out{suffix}"
    save_image(target, image.data, like=image)
    with Image.open(target) as written:  # an independent reader agrees
        assert written.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(written), values)
    assert torch.equal(load_image(target).data, image.data)


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True], ids=["plain", "adam7"])
def test_16bit_png_keeps_all_16_bits(tmp_path: Path, channels: int, interlace: bool) -> None:
    values = _random_u16(channels)
    source = tmp_path / "in.png"
    source.write_bytes(_reference_png16(values, interlace=interlace))
    high_bytes = (values >> 8).astype(np.uint8)
    np.testing.assert_array_equal(_pillow_reading(source, channels), high_bytes)

    image = load_image(source)
    assert image.dtype == np.uint16
    colour = values[:, :, : 3 if channels >= 3 else 1]
    np.testing.assert_array_equal(_as_samples(image), colour)
    if channels in (2, 4):
        assert image.alpha is not None and image.alpha.dtype == np.uint16
        np.testing.assert_array_equal(image.alpha, values[:, :, -1])
    else:
        assert image.alpha is None

    target = tmp_path / "out.png"
    save_image(target, image.data, like=image)
    assert target.read_bytes()[24:26] == bytes([16, {2: 4, 3: 2, 4: 6}[channels]])
    np.testing.assert_array_equal(_pillow_reading(target, channels), high_bytes)
    again = load_image(target)
    assert torch.equal(again.data, image.data)
    if image.alpha is not None:
        assert again.alpha is not None
        np.testing.assert_array_equal(again.alpha, image.alpha)


def test_png_unfilter_handles_a_single_row_and_column(tmp_path: Path) -> None:
    for shape in [(1, 1, 3), (1, 9, 3), (9, 1, 3)]:
        values = _rng(3).integers(0, 65536, size=shape, dtype=np.uint16)
        source = tmp_path / "tiny.png"
        source.write_bytes(_reference_png16(values))
        np.testing.assert_array_equal(_as_samples(load_image(source)), values)


@pytest.mark.parametrize(
    ("order", "planar", "predictor"),
    [("<", 1, 1), (">", 1, 1), ("<", 2, 1), (">", 2, 1)],
)
def test_16bit_rgb_tiff_keeps_all_16_bits(
    tmp_path: Path, order: str, planar: int, predictor: int
) -> None:
    values = _random_u16(3)
    source = tmp_path / "in.tif"
    source.write_bytes(
        _tiff16_uncompressed(values, order=order, planar=planar, predictor=predictor)
    )

    image = load_image(source)
    assert image.dtype == np.uint16 and image.data.shape == (3, HEIGHT, WIDTH)
    np.testing.assert_array_equal(_as_samples(image), values)


def test_16bit_tiff_orientation_is_applied(tmp_path: Path) -> None:
    values = _random_u16(4, seed=9)
    source = tmp_path / "rotated16.tif"
    source.write_bytes(_tiff16_uncompressed(values, orientation=6, order=">"))
    image = load_image(source)
    rotated = np.rot90(values, k=-1)
    np.testing.assert_array_equal(_as_samples(image), rotated[:, :, :3])
    assert image.alpha is not None
    np.testing.assert_array_equal(image.alpha, rotated[:, :, 3])
    assert image.exif is not None
    carried = Image.Exif()
    carried.load(image.exif)
    assert dict(carried) == {0x0112: 1}


def test_16bit_rgb_tiff_with_lzw_strips(tmp_path: Path) -> None:
    values = _random_u16(3, seed=5)
    row_bytes = WIDTH * 3 * 2
    # Let libtiff compress the byte stream, then describe it as 16-bit RGB.
    packer = io.BytesIO()
    plain = values.astype("<u2").tobytes()
    Image.frombytes("L", (row_bytes, HEIGHT), plain).save(packer, "TIFF", compression="tiff_lzw")
    packer.seek(0)
    with Image.open(packer) as packed:
        assert isinstance(packed, TiffImagePlugin.TiffImageFile)
        offsets, counts = packed.tag_v2[273], packed.tag_v2[279]
        rows_per_strip = int(packed.tag_v2.get(278, HEIGHT))
    blob = packer.getvalue()
    strips = [blob[o : o + c] for o, c in zip(offsets, counts, strict=True)]
    source = tmp_path / "lzw.tif"
    source.write_bytes(
        _reference_tiff(
            width=WIDTH,
            height=HEIGHT,
            bits=16,
            samples=3,
            photometric=2,
            strips=strips,
            rows_per_strip=rows_per_strip,
            compression=5,
        )
    )
    np.testing.assert_array_equal(_as_samples(load_image(source)), values)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_tiff_round_trip_with_alpha(tmp_path: Path, channels: int) -> None:
    values = _random_u16(channels, seed=7)
    source = tmp_path / "in.png"
    source.write_bytes(_reference_png16(values))
    image = load_image(source)

    target = tmp_path / "out.tiff"
    save_image(target, image.data, like=image)
    if channels != 2:  # Pillow cannot open 16-bit gray+alpha TIFF at all
        with Image.open(target) as written:  # it parses what we wrote (high bytes only)
            assert written.size == (WIDTH, HEIGHT)
            np.testing.assert_array_equal(np.asarray(written), (values >> 8).astype(np.uint8))
    again = load_image(target)
    assert again.dtype == np.uint16
    assert torch.equal(again.data, image.data)
    if channels in (2, 4):
        assert again.alpha is not None
        np.testing.assert_array_equal(again.alpha, values[:, :, -1])


def test_signed_16bit_rgb_tiff_is_read_as_int16(tmp_path: Path) -> None:
    values = _random_u16(3)
    source = tmp_path / "signed.tif"
    signed = ((339, 3, 3, struct.pack("<3H", 2, 2, 2)),)
    source.write_bytes(
        _reference_tiff(
            width=WIDTH,
            height=HEIGHT,
            bits=16,
            samples=3,
            photometric=2,
            strips=[values.astype("<u2").tobytes()],
            rows_per_strip=HEIGHT,
            extra=signed,
        )
    )
    image = load_image(source)
    assert image.dtype == np.int16 and image.axes == "YXS"
    np.testing.assert_array_equal(image.samples, values.view(np.int16))


def test_16bit_source_written_as_8bit_where_format_needs_it(tmp_path: Path) -> None:
    values = _random_u16(4, seed=2)
    source = tmp_path / "in.png"
    source.write_bytes(_reference_png16(values))
    image = load_image(source)

    target = tmp_path / "out.webp"  # WebP: 8 bits per sample, lossy colour, exact alpha
    save_image(target, image.data, like=image)
    again = load_image(target)
    assert again.dtype == np.uint8
    assert again.alpha is not None and again.alpha.dtype == np.uint8
    expected_alpha = np.round(values[:, :, 3] / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(again.alpha, expected_alpha)


def test_palette_becomes_rgb(tmp_path: Path) -> None:
    palette = _rng(1).integers(0, 256, size=(256, 3), dtype=np.uint8)
    indices = _rng(2).integers(0, 256, size=(HEIGHT, WIDTH), dtype=np.uint8)
    im = Image.frombytes("P", (WIDTH, HEIGHT), indices.tobytes())
    im.putpalette(palette.tobytes())
    source = tmp_path / "palette.png"
    im.save(source)

    image = load_image(source)
    assert image.data.shape == (3, HEIGHT, WIDTH) and image.alpha is None
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(_as_samples(image), palette[indices])


def test_palette_with_transparency_carries_alpha(tmp_path: Path) -> None:
    indices = (np.arange(HEIGHT * WIDTH) % 3).reshape(HEIGHT, WIDTH).astype(np.uint8)
    im = Image.frombytes("P", (WIDTH, HEIGHT), indices.tobytes())
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    source = tmp_path / "palette.png"
    im.save(source, transparency=bytes([0, 128, 255]))

    image = load_image(source)
    assert image.data.shape == (3, HEIGHT, WIDTH)
    assert image.alpha is not None and image.alpha.dtype == np.uint8
    np.testing.assert_array_equal(image.alpha, np.array([0, 128, 255], np.uint8)[indices])

    target = tmp_path / "out.png"
    save_image(target, image.data, like=image)
    with Image.open(target) as written:
        assert written.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(written)[:, :, 3], image.alpha)


@pytest.mark.parametrize("channels", [2, 4], ids=["LA", "RGBA"])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_8bit_alpha_is_carried_bit_exactly(tmp_path: Path, channels: int, suffix: str) -> None:
    values = _random_u8(channels, seed=4)
    source = tmp_path / f"in{suffix}"
    _pil(values).save(source)

    image = load_image(source)
    assert image.data.shape[0] == channels - 1
    assert image.alpha is not None and image.alpha.dtype == np.uint8
    np.testing.assert_array_equal(image.alpha, values[:, :, -1])

    target = tmp_path / f"out{suffix}"
    save_image(target, image.data, like=image)
    with Image.open(target) as written:
        assert written.mode == ("LA" if channels == 2 else "RGBA")
        np.testing.assert_array_equal(np.asarray(written), values)


@pytest.mark.parametrize("suffix", [".jpg", ".bmp"])
def test_alpha_is_dropped_where_the_format_cannot_hold_it(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / "in.png"
    _pil(_random_u8(4)).save(source)
    image = load_image(source)
    target = tmp_path / f"out{suffix}"
    save_image(target, image.data, like=image)
    with Image.open(target) as written:
        assert written.mode == "RGB"


def test_one_bit_image_reads_as_gray(tmp_path: Path) -> None:
    bits = _rng(6).integers(0, 2, size=(HEIGHT, WIDTH), dtype=np.uint8).astype(bool)
    source = tmp_path / "bits.png"
    Image.fromarray(bits).save(source)

    image = load_image(source)
    assert image.data.shape == (1, HEIGHT, WIDTH) and image.dtype == np.uint8
    np.testing.assert_array_equal(image.data[0].numpy(), bits.astype(np.float32))


def test_cmyk_jpeg_becomes_rgb_and_drops_its_profile(tmp_path: Path) -> None:
    values = _random_u8(4)
    source = tmp_path / "cmyk.jpg"
    Image.frombytes("CMYK", (WIDTH, HEIGHT), values.tobytes()).save(
        source, icc_profile=b"not really a CMYK profile"
    )
    image = load_image(source)
    assert image.data.shape == (3, HEIGHT, WIDTH) and image.alpha is None
    assert image.icc_profile is None


def test_cmyk_tiff_keeps_its_four_channels_and_profile(tmp_path: Path) -> None:
    values = _random_u8(4)
    source = tmp_path / "cmyk.tif"
    Image.frombytes("CMYK", (WIDTH, HEIGHT), values.tobytes()).save(
        source, icc_profile=b"not really a CMYK profile"
    )
    image = load_image(source)
    assert image.axes == "YXS" and image.alpha is None
    np.testing.assert_array_equal(image.samples, values)
    assert image.icc_profile == b"not really a CMYK profile"
    target = tmp_path / "out.tif"
    save_image(target, image)
    with Image.open(target) as written:
        assert written.mode == "CMYK"
        np.testing.assert_array_equal(np.asarray(written), values)


def test_floating_point_tiff_is_read_as_float32(tmp_path: Path) -> None:
    source = tmp_path / "float.tif"
    Image.new("F", (WIDTH, HEIGHT), 0.5).save(source)
    image = load_image(source)
    assert image.dtype == np.float32 and image.axes == "YX"
    assert (image.samples == 0.5).all()


# ---- metadata ----------------------------------------------------------------------------


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"  # Make: must survive the orientation reset
    return exif


def test_exif_orientation_6_is_applied_and_reset(tmp_path: Path) -> None:
    values = _random_u8(3)
    source = tmp_path / "rotated.png"
    _pil(values).save(source, exif=_exif(6))

    image = load_image(source)
    assert image.data.shape == (3, WIDTH, HEIGHT)  # rotated: now 31 wide, 37 high
    rotated = np.rot90(values, k=-1)  # orientation 6: turn 90 degrees clockwise
    np.testing.assert_array_equal(_as_samples(image), rotated)
    assert _as_samples(image)[0, -1].tolist() == values[0, 0].tolist()  # top-left -> top-right

    assert image.exif is not None
    target = tmp_path / "out.jpg"
    save_image(target, image.data, like=image)
    with Image.open(target) as written:
        assert written.size == (HEIGHT, WIDTH)
        exif = written.getexif()
        assert exif[0x0112] == 1
        assert exif[0x010F] == "TestCam"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    values = _random_u8(3, seed=orientation)
    source = tmp_path / "o.png"
    _pil(values).save(source, exif=_exif(orientation))
    with Image.open(source) as im:
        upright = ImageOps.exif_transpose(im)
        assert upright is not None
        expected = np.asarray(upright)
    np.testing.assert_array_equal(_as_samples(load_image(source)), expected)


def test_orientation_applies_to_16bit_png_and_its_alpha(tmp_path: Path) -> None:
    values = _random_u16(4, seed=8)
    source = tmp_path / "rotated16.png"
    source.write_bytes(_reference_png16(values, exif=_exif(8).tobytes()))
    image = load_image(source)
    rotated = np.rot90(values, k=1)  # orientation 8: 90 degrees counter-clockwise
    np.testing.assert_array_equal(_as_samples(image), rotated[:, :, :3])
    assert image.alpha is not None
    np.testing.assert_array_equal(image.alpha, rotated[:, :, 3])

    target = tmp_path / "out.png"
    save_image(target, image.data, like=image)
    with Image.open(target) as written:
        assert written.getexif()[0x0112] == 1


def test_tiff_tags_carried_as_exif_lose_the_pixel_layout(tmp_path: Path) -> None:
    source = tmp_path / "rotated.tif"
    _pil(_random_u8(3)).save(source, exif=_exif(6))
    image = load_image(source)
    assert image.data.shape == (3, WIDTH, HEIGHT)
    assert image.exif is not None
    carried = Image.Exif()
    carried.load(image.exif)
    assert carried[0x0112] == 1 and carried[0x010F] == "TestCam"
    assert not {256, 257, 258, 273, 279} & set(carried)

    target = tmp_path / "out.jpg"
    save_image(target, image.data, like=image)
    with Image.open(target) as written:
        assert written.size == (HEIGHT, WIDTH) and written.getexif()[0x0112] == 1


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
@pytest.mark.parametrize("depth", [8, 16])
def test_icc_profile_is_preserved(tmp_path: Path, suffix: str, depth: int) -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = tmp_path / "in.png"
    if depth == 8:
        _pil(_random_u8(3)).save(source, icc_profile=profile)
    else:
        source.write_bytes(_reference_png16(_random_u16(3)))
    image = load_image(source)
    if depth == 16:  # attach the profile as if it came with the file
        image = image.replace(icc_profile=profile)
    assert image.icc_profile == profile

    target = tmp_path / f"out{suffix}"
    save_image(target, image.data, like=image)
    with Image.open(target) as written:
        assert written.info.get("icc_profile") == profile
    assert load_image(target).icc_profile == profile


def test_jpeg_quality_is_honoured(tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    _pil(_noisy_photo()).save(source)
    image = load_image(source)
    low, high = tmp_path / "low.jpg", tmp_path / "high.jpg"
    save_image(low, image.data, like=image, quality=30)
    save_image(high, image.data, like=image, quality=95)
    assert high.stat().st_size > low.stat().st_size


def test_save_clips_and_rounds(tmp_path: Path) -> None:
    data = torch.tensor([[[-0.5, 0.0, 0.5 / 255, 1.49 / 255, 1.0, 7.0]]], dtype=torch.float64)
    target = tmp_path / "clip.png"
    save_image(target, data)
    with Image.open(target) as written:
        assert written.mode == "L"
        assert np.asarray(written).tolist() == [[0, 0, 0, 1, 255, 255]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (torch.zeros(2, 4, 4), "shape"),
        (torch.zeros(4, 4), "shape"),
        (torch.full((1, 2, 2), float("nan")), "NaN"),
    ],
)
def test_save_rejects_bad_data(tmp_path: Path, data: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        save_image(tmp_path / "x.png", data)
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_bad_quality(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quality"):
        save_image(tmp_path / "x.jpg", torch.zeros(3, 2, 2), quality=0)


# ---- errors on reading -------------------------------------------------------------------


def _assert_one_line(err: ImageFileError, path: Path) -> None:
    text = str(err)
    assert "\n" not in text
    assert text.endswith(f": {path}")
    assert err.path == path


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageFileError, match="no such file") as info:
        load_image(path)
    _assert_one_line(info.value, path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageFileError, match="folder") as info:
        load_image(tmp_path)
    _assert_one_line(info.value, tmp_path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageFileError, match="empty") as info:
        load_image(path)
    _assert_one_line(info.value, path)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageFileError, match="not an image") as info:
        load_image(path)
    _assert_one_line(info.value, path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    whole = tmp_path / f"whole{suffix}"
    _pil(_random_u8(3)).save(whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(ImageFileError, match="truncated or corrupt") as info:
        load_image(cut)
    _assert_one_line(info.value, cut)


def test_truncated_16bit_png(tmp_path: Path) -> None:
    whole = _reference_png16(_random_u16(3))
    cut = tmp_path / "cut16.png"
    cut.write_bytes(whole[: len(whole) - 200])
    with pytest.raises(ImageFileError, match="truncated or corrupt"):
        load_image(cut)


@pytest.mark.parametrize("ifd_first", [True, False], ids=["strips-cut", "ifd-cut"])
def test_truncated_16bit_tiff(tmp_path: Path, ifd_first: bool) -> None:
    whole = _tiff16_uncompressed(_random_u16(3), ifd_first=ifd_first)
    cut = tmp_path / "cut16.tif"
    cut.write_bytes(whole[:-100])
    with pytest.raises(ImageFileError) as info:
        load_image(cut)
    _assert_one_line(info.value, cut)
    if ifd_first:
        assert "truncated or corrupt" in str(info.value)


def test_too_many_pixels(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    _pil(_random_u8(1)).save(path)
    with pytest.raises(ImageFileError, match="--max-pixels") as info:
        load_image(path, max_pixels=WIDTH * HEIGHT - 1)
    _assert_one_line(info.value, path)
    assert f"{WIDTH * HEIGHT} pixels" in str(info.value)
    assert load_image(path, max_pixels=WIDTH * HEIGHT).data.shape == (1, HEIGHT, WIDTH)


@pytest.mark.parametrize("kind", ["png8", "tiff8", "tiff16"])
def test_pixel_limit_ignores_and_keeps_pillows_global(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = tmp_path / ("img.png" if kind == "png8" else "img.tif")
    if kind == "tiff16":
        path.write_bytes(_tiff16_uncompressed(_random_u16(3)))
    else:
        _pil(_random_u8(3)).save(path)
    # Pillow alone would refuse this image (more than twice its limit), also in load().
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert load_image(path, max_pixels=None).data.shape == (3, HEIGHT, WIDTH)
    assert load_image(path).data.shape == (3, HEIGHT, WIDTH)
    assert Image.MAX_IMAGE_PIXELS == 100
    assert DEFAULT_MAX_PIXELS == 89_478_485


def test_error_pickles(tmp_path: Path) -> None:
    err = ImageFileError("output exists (use --overwrite)", tmp_path / "a.png")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.path == err.path


# ---- output paths and atomic writes --------------------------------------------------------


def test_supported_suffixes() -> None:
    assert {
        ".png",
        ".apng",
        ".jpg",
        ".jpeg",
        ".tif",
        ".tiff",
        ".btf",
        ".tf8",
        ".webp",
        ".bmp",
        ".gif",
        ".npy",
    } == SUPPORTED_SUFFIXES


def test_unknown_output_suffix(tmp_path: Path) -> None:
    path = tmp_path / "out.pdf"
    with pytest.raises(ImageFileError, match=r"\.png") as info:
        check_output_path(path)
    _assert_one_line(info.value, path)
    with pytest.raises(ImageFileError, match="use one of"):
        save_image(path, torch.zeros(1, 2, 2))
    assert not path.exists()


def test_upper_case_suffix_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "OUT.JPG"
    save_image(path, torch.zeros(3, 4, 4))
    with Image.open(path) as written:
        assert written.format == "JPEG"


def test_output_exists(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(b"keep me")
    with pytest.raises(ImageFileError, match=r"output exists \(use --overwrite\)"):
        check_output_path(path)
    with pytest.raises(ImageFileError, match="output exists"):
        save_image(path, torch.zeros(1, 2, 2))
    assert path.read_bytes() == b"keep me"
    assert check_output_path(path, overwrite=True) == path.resolve()
    save_image(path, torch.zeros(1, 2, 2), overwrite=True)
    assert load_image(path).data.shape == (1, 2, 2)


def test_output_equal_to_input_is_refused_even_with_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.png"
    _pil(_random_u8(1)).save(source)
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.png"
    link.symlink_to(source)
    spellings: list[str | Path] = [source, "in.png", "./missing/../in.png", link]
    for spelling in spellings:
        with pytest.raises(ImageFileError, match="input"):
            check_output_path(spelling, inputs=[source], overwrite=True)
    assert check_output_path("other.png", inputs=[source]) == tmp_path / "other.png"


def test_unwritable_folder(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running with privileges that ignore folder permissions")
        with pytest.raises(ImageFileError, match="permission denied"):
            check_output_path(folder / "out.png")
        with pytest.raises(ImageFileError, match="cannot write in the folder"):
            save_image(folder / "out.png", torch.zeros(1, 2, 2))
    finally:
        folder.chmod(stat.S_IRWXU)


def test_file_in_the_way_of_the_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(ImageFileError, match="a file is in the way"):
        check_output_path(blocker / "out.png")
    with pytest.raises(ImageFileError, match="cannot create the folder"):
        save_image(blocker / "out.png", torch.zeros(1, 2, 2))


def test_missing_parent_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.png"
    assert check_output_path(path) == path
    save_image(path, torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0)))
    assert load_image(path).data.shape == (3, HEIGHT, WIDTH)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]


def test_new_file_gets_normal_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = tmp_path / "out.png"
        save_image(path, torch.zeros(1, 2, 2))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("failure", [OSError("disk full"), RuntimeError("encoder bug")])
def test_failed_save_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(b"previous result")

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        assert hasattr(fp, "write")
        fp.write(b"half an image")
        raise failure

    monkeypatch.setattr(Image.Image, "save", broken_save)
    expected = ImageFileError if isinstance(failure, OSError) else RuntimeError
    with pytest.raises(expected):
        save_image(path, torch.zeros(1, 2, 2), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    assert path.read_bytes() == b"previous result"


def test_image_file_error_is_raised_from_module() -> None:
    assert tio.ImageFileError is ImageFileError


# ---- never replacing ----------------------------------------------------------------------


def test_write_never_replaces_a_file_that_appears_meanwhile(tmp_path: Path) -> None:
    from tvdenoise.io import OutputExistsError, is_temporary, write_atomically

    target = tmp_path / "out.png"

    def slow_write(fh: Any) -> None:
        fh.write(b"ours")
        target.write_bytes(b"theirs")  # another process finishes first

    with pytest.raises(OutputExistsError, match="created by someone else"):
        write_atomically(target, slow_write)
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left
    write_atomically(target, lambda fh: fh.write(b"ours"), overwrite=True)
    assert target.read_bytes() == b"ours"
    assert is_temporary(tmp_path / ".out.png.1a2b3c4d.tvdenoise-tmp")
    assert not is_temporary(tmp_path / "out.png")


def test_temporary_name_is_ours_and_in_the_destination_folder(tmp_path: Path) -> None:
    from tvdenoise.io import TEMPORARY_SUFFIX, write_atomically

    seen: list[str] = []

    def write(fh: Any) -> None:
        seen.append(fh.name)
        fh.write(b"x")

    write_atomically(tmp_path / "sub" / "a.tif", write)
    assert Path(seen[0]).parent == tmp_path / "sub"
    assert Path(seen[0]).name.startswith(".a.tif.") and seen[0].endswith(TEMPORARY_SUFFIX)


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "hard-link"])
def test_final_name_is_created_without_replacing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool
) -> None:
    from tvdenoise.io import atomic

    if not renameat2:
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    source, target = tmp_path / "source", tmp_path / "target"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        atomic._rename_no_replace(source, target)
    assert target.read_bytes() == b"old" and source.read_bytes() == b"new"
    target.unlink()
    atomic._rename_no_replace(source, target)
    assert target.read_bytes() == b"new" and not source.exists()


@pytest.mark.parametrize("size", [1, 1000, 65535, 65536, 3 * 65535, 3 * 65535 + 7])
def test_stored_png_framing_at_block_boundaries(size: int) -> None:
    """The 16-bit path hands libpng its scanlines in stored deflate blocks."""
    from tvdenoise.io import png

    raw = _rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    data = bytes(png._stored_png(bytes(13), raw))
    start = len(png.SIGNATURE) + 25
    (length,) = struct.unpack(">I", data[start : start + 4])
    assert data[start + 4 : start + 8] == b"IDAT"
    assert zlib.decompress(data[start + 8 : start + 8 + length]) == raw
    (crc,) = struct.unpack(">I", data[start + 8 + length : start + 12 + length])
    assert crc == zlib.crc32(data[start + 4 : start + 8 + length])
    assert data.endswith(b"IEND\xae\x42\x60\x82")
