"""Make small reproducers of hostile and broken image files.

Each file is one class of attack or damage that ``tvdenoise`` must refuse with one
``error:`` line, a non-zero exit, no output file and nothing else on stderr, within a few
seconds and bounded memory (issue 13): decompression bombs in image data and in metadata,
absurd dimensions in tiny files, IFD loops, huge strip counts, missing or zero tags, and
image data shorter than the header says.

Usage::

    python scripts/make_hostile_files.py OUT_FOLDER          # small versions (tests)
    python scripts/make_hostile_files.py OUT_FOLDER --full   # the sizes of the issue

The tests import :func:`make_all` and write the files into a temporary folder; nothing
is committed but this script. ``benchmarks/bench_io.py`` times each file through the
command and reports its peak memory.
"""

from __future__ import annotations

import argparse
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png(width: int, height: int, depth: int, color_type: int, *chunks: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + b"".join(chunks) + _chunk(b"IEND", b"")


def _zeros_deflated(size: int) -> bytes:
    """A zlib stream inflating to ``size`` zero bytes, made in 1 MiB steps."""
    packer = zlib.compressobj(9)
    block = bytes(1 << 20)
    parts = []
    left = size
    while left > 0:
        step = min(left, len(block))
        parts.append(packer.compress(block[:step]))
        left -= step
    parts.append(packer.flush())
    return b"".join(parts)


def _tiff(
    entries: list[tuple[int, int, int, bytes]],
    data: bytes = b"",
    *,
    next_ifd: int = 0,
    ifd_offset: int = 8,
) -> bytes:
    """A little-endian TIFF with one IFD at ``ifd_offset``, values that do not fit in an
    entry placed after it, then ``data``."""
    entries = sorted(entries)
    table = struct.pack("<H", len(entries))
    spill = b""
    spill_start = ifd_offset + 2 + 12 * len(entries) + 4
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            table += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
        else:
            table += struct.pack("<HHII", tag, kind, count, spill_start + len(spill))
            spill += value + b"\x00" * (len(value) % 2)
    table += struct.pack("<I", next_ifd)
    head = b"II*\x00" + struct.pack("<I", ifd_offset)
    return head + b"\x00" * (ifd_offset - 8) + table + spill + data


def _short(value: int) -> bytes:
    return struct.pack("<H", value)


def _long(value: int) -> bytes:
    return struct.pack("<I", value)


def _tiff_gray8(
    width: int,
    height: int,
    *,
    offset: int,
    count: int,
    rows: int | None = None,
    drop: tuple[int, ...] = (),
) -> list[tuple[int, int, int, bytes]]:
    """The entries of an 8-bit grey strip TIFF; tags in ``drop`` are left out."""
    entries = [
        (256, 4, 1, _long(width)),
        (257, 4, 1, _long(height)),
        (258, 3, 1, _short(8)),
        (259, 3, 1, _short(1)),
        (262, 3, 1, _short(1)),
        (273, 4, 1, _long(offset)),
        (277, 3, 1, _short(1)),
        (279, 4, 1, _long(count)),
    ]
    if rows is not None:
        entries.append((278, 4, 1, _long(rows)))
    return [e for e in entries if e[0] not in drop]


# --------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------


def png16_idat_bomb(full: bool) -> bytes:
    """A 16x16 16-bit RGB PNG whose image data inflates to 4 GiB (64 MiB small)."""
    return _png(16, 16, 16, 2, _chunk(b"IDAT", _zeros_deflated((4 << 30) if full else (64 << 20))))


def png16_one_paeth_row(full: bool) -> bytes:
    """A 1,000,000x2 16-bit RGB PNG with one Paeth-filtered row of data (one row short)."""
    del full
    width = 1_000_000
    row = b"\x04" + bytes(width * 6)
    return _png(width, 2, 16, 2, _chunk(b"IDAT", zlib.compress(row, 9)))


def png8_short_data(full: bool) -> bytes:
    """An 8-bit RGB PNG whose complete zlib stream holds only half of its rows."""
    del full
    rows = b"".join(b"\x00" + bytes(range(111)) for _ in range(16))
    return _png(37, 31, 8, 2, _chunk(b"IDAT", zlib.compress(rows)))


def png8_cut_stream(full: bool) -> bytes:
    """An 8-bit RGB PNG whose zlib stream stops in the middle (chunks and CRCs intact)."""
    del full
    rng = np.random.default_rng(0)
    rows = b"".join(
        b"\x00" + rng.integers(0, 256, 111, dtype=np.uint8).tobytes() for _ in range(31)
    )
    stream = zlib.compress(rows)
    return _png(37, 31, 8, 2, _chunk(b"IDAT", stream[: len(stream) // 2]))


def png8_file_cut(full: bool) -> bytes:
    """An 8-bit RGB PNG file cut in the middle of its image data chunk."""
    del full
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (31, 37, 3), dtype=np.uint8)).save(buffer, "PNG")
    whole = buffer.getvalue()
    return whole[: len(whole) // 2]


def png_huge_dims(full: bool) -> bytes:
    """A 100-byte PNG claiming 100,000 x 100,000 pixels."""
    del full
    return _png(100_000, 100_000, 8, 0, _chunk(b"IDAT", zlib.compress(b"\x00" * 101)))


def png_iccp_bomb(full: bool) -> bytes:
    """A 4x4 PNG whose ICC profile inflates to 1 GiB (64 MiB small)."""
    profile = _zeros_deflated((1 << 30) if full else (64 << 20))
    rows = b"".join(b"\x00" + bytes(4) for _ in range(4))
    return _png(
        4, 4, 8, 0, _chunk(b"iCCP", b"icc\x00\x00" + profile), _chunk(b"IDAT", zlib.compress(rows))
    )


def png_ztxt_bomb(full: bool) -> bytes:
    """A 4x4 PNG with a compressed text chunk inflating to 1 GiB (64 MiB small)."""
    text = _zeros_deflated((1 << 30) if full else (64 << 20))
    rows = b"".join(b"\x00" + bytes(4) for _ in range(4))
    return _png(
        4, 4, 8, 0, _chunk(b"zTXt", b"Comment\x00\x00" + text), _chunk(b"IDAT", zlib.compress(rows))
    )


def png_exif_bomb(full: bool) -> bytes:
    """A 16x16 PNG whose EXIF, stored compressed as a raw text profile (ImageMagick's
    way), inflates to 1 GiB (64 MiB small)."""
    text = _zeros_deflated((1 << 30) if full else (64 << 20))
    rows = b"".join(b"\x00" + bytes(16) for _ in range(16))
    return _png(
        16,
        16,
        8,
        0,
        _chunk(b"zTXt", b"Raw profile type exif\x00\x00" + text),
        _chunk(b"IDAT", zlib.compress(rows)),
    )


def exif_with_loops() -> bytes:
    """An EXIF block of 4,000 entries with huge counts whose IFDs point at themselves:
    damaged metadata that a reader must survive (it is dropped, the pixels are kept)."""
    entries = [(0x8769, 4, 1, 8), (0x8825, 4, 1, 8)]  # Exif and GPS IFD: back to IFD0
    entries += [(0x9000 + i, 4, 0x3FFFFFFF, 0xFFFFFF00) for i in range(4000)]
    body = struct.pack("<H", len(entries))
    body += b"".join(struct.pack("<HHII", *entry) for entry in entries)
    return b"II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", 8)  # next IFD: loop


def png_bad_crc(full: bool) -> bytes:
    """An 8-bit PNG whose image data chunk has a wrong CRC."""
    del full
    rows = b"".join(b"\x00" + bytes(range(37)) for _ in range(31))
    good = _png(37, 31, 8, 0, _chunk(b"IDAT", zlib.compress(rows)))
    position = good.index(b"IDAT")
    length = struct.unpack(">I", good[position - 4 : position])[0]
    crc_at = position + 4 + length
    return good[:crc_at] + bytes(b ^ 0xFF for b in good[crc_at : crc_at + 4]) + good[crc_at + 4 :]


def apng_frame_bomb(full: bool) -> bytes:
    """An APNG claiming two billion frames of 64x64."""
    del full
    rows = b"".join(b"\x00" + bytes(64) for _ in range(64))
    return _png(
        64,
        64,
        8,
        0,
        _chunk(b"acTL", struct.pack(">II", 2_000_000_000, 0)),
        _chunk(b"IDAT", zlib.compress(rows)),
    )


def tiff_absurd_dims(full: bool) -> bytes:
    """A 240-byte TIFF claiming 80,000,000 x 1 pixels."""
    del full
    data = _tiff(_tiff_gray8(80_000_000, 1, offset=200, count=80_000_000))
    return data.ljust(240, b"\x00")


def tiff_rows_per_strip_zero(full: bool) -> bytes:
    """A TIFF with RowsPerStrip = 0 and its strip cut short."""
    del full
    return _tiff(_tiff_gray8(37, 31, offset=120, count=37 * 31, rows=0), bytes(600))


def tiff_missing_width(full: bool) -> bytes:
    """A TIFF without an ImageWidth tag."""
    del full
    return _tiff(_tiff_gray8(37, 31, offset=120, count=37 * 31, drop=(256,)), bytes(37 * 31))


def tiff_zero_height(full: bool) -> bytes:
    """A TIFF whose ImageLength is 0."""
    del full
    return _tiff(_tiff_gray8(37, 0, offset=120, count=37), bytes(37))


def tiff_no_strip_offsets(full: bool) -> bytes:
    """A TIFF without StripOffsets and StripByteCounts."""
    del full
    return _tiff(_tiff_gray8(37, 31, offset=0, count=0, drop=(273, 279)), bytes(37 * 31))


def tiff_ifd_loop(full: bool) -> bytes:
    """A TIFF whose IFD chain points back at itself."""
    del full
    return _tiff(_tiff_gray8(37, 31, offset=200, count=37 * 31), bytes(37 * 31), next_ifd=8)


def tiff_huge_strip_count(full: bool) -> bytes:
    """A TIFF whose strip tables claim 500 million strips."""
    del full
    entries = [
        e for e in _tiff_gray8(37, 500_000_000, offset=0, count=0, rows=1) if e[0] not in (273, 279)
    ]
    entries += [(273, 4, 500_000_000, _long(64)), (279, 4, 500_000_000, _long(64))]
    return _tiff(entries, bytes(512))


def tiff_truncated_strips(full: bool) -> bytes:
    """A deflate-compressed 16-bit RGB TIFF cut in the middle of its strips."""
    import tifffile

    del full
    rng = np.random.default_rng(2)
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        rng.integers(0, 65536, (64, 64, 3), dtype=np.uint16),
        photometric="rgb",
        compression="zlib",
        rowsperstrip=8,
    )
    whole = buffer.getvalue()
    return whole[: len(whole) * 2 // 3]


def tiff_deflate_bomb(full: bool) -> bytes:
    """A 16x16 TIFF whose one deflate strip inflates to 4 GiB (64 MiB small)."""
    stream = _zeros_deflated((4 << 30) if full else (64 << 20))
    entries = _tiff_gray8(16, 16, offset=200, count=len(stream))
    entries = [e if e[0] != 259 else (259, 3, 1, _short(8)) for e in entries]
    return _tiff(entries, b"").ljust(200, b"\x00") + stream


def gif_huge_screen(full: bool) -> bytes:
    """A GIF whose logical screen is 65,535 x 65,535 pixels, with one 1x1 frame."""
    del full
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def jpeg_huge_dims(full: bool) -> bytes:
    """A JPEG whose frame header claims 65,000 x 65,000 pixels."""
    del full
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def bmp_truncated(full: bool) -> bytes:
    """A BMP claiming 3,000 x 3,000 pixels holding 1 KiB of data."""
    del full
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "BMP")
    data = bytearray(buffer.getvalue()[:54])
    data[18:26] = struct.pack("<ii", 3000, 3000)
    return bytes(data) + bytes(1024)


def npy_absurd_shape(full: bool) -> bytes:
    """A 128-byte .npy file claiming a 9,000 x 9,000 float64 array."""
    del full
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (9000, 9000), }"
    header = header.ljust(118 - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(10)


def npy_object(full: bool) -> bytes:
    """A .npy file of Python objects (a pickle: never loaded)."""
    del full
    buffer = io.BytesIO()
    np.save(buffer, np.array([[{"a": 1}, None]], dtype=object), allow_pickle=True)
    return buffer.getvalue()


#: Every case: (file name, maker).
CASES: dict[str, Callable[[bool], bytes]] = {
    "png16_idat_bomb.png": png16_idat_bomb,
    "png16_one_paeth_row.png": png16_one_paeth_row,
    "png8_short_data.png": png8_short_data,
    "png8_cut_stream.png": png8_cut_stream,
    "png8_file_cut.png": png8_file_cut,
    "png_huge_dims.png": png_huge_dims,
    "png_iccp_bomb.png": png_iccp_bomb,
    "png_ztxt_bomb.png": png_ztxt_bomb,
    "png_exif_bomb.png": png_exif_bomb,
    "png_bad_crc.png": png_bad_crc,
    "apng_frame_bomb.png": apng_frame_bomb,
    "tiff_absurd_dims.tif": tiff_absurd_dims,
    "tiff_rows_per_strip_zero.tif": tiff_rows_per_strip_zero,
    "tiff_missing_width.tif": tiff_missing_width,
    "tiff_zero_height.tif": tiff_zero_height,
    "tiff_no_strip_offsets.tif": tiff_no_strip_offsets,
    "tiff_ifd_loop.tif": tiff_ifd_loop,
    "tiff_huge_strip_count.tif": tiff_huge_strip_count,
    "tiff_truncated_strips.tif": tiff_truncated_strips,
    "tiff_deflate_bomb.tif": tiff_deflate_bomb,
    "gif_huge_screen.gif": gif_huge_screen,
    "jpeg_huge_dims.jpg": jpeg_huge_dims,
    "bmp_truncated.bmp": bmp_truncated,
    "npy_absurd_shape.npy": npy_absurd_shape,
    "npy_object.npy": npy_object,
}


def make_all(folder: Path, *, full: bool = False) -> list[Path]:
    """Write every case into ``folder`` (created if missing) and return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in CASES.items():
        path = folder / name
        path.write_bytes(make(full))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the files")
    parser.add_argument("--full", action="store_true", help="the sizes of the issue (GiB)")
    args = parser.parse_args()
    for path in make_all(args.folder, full=args.full):
        print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
