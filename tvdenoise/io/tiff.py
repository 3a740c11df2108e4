"""TIFF through tifffile (and imagecodecs for its compressions).

Reading takes the file's one image series whole: every page of a multi-page file, ImageJ
hyperstacks (axes such as ``TZCYX``), OME-TIFF, BigTIFF, strips or tiles, any compression
imagecodecs decodes (deflate, LZW, zstd, PackBits, JPEG, ...), 8/16/32/64-bit unsigned and
signed integers, float16/32/64, any number of channels. Axes come from the series
(:mod:`.image` explains the letters), spacing from ImageJ (``spacing``, ``unit``,
``finterval`` and the resolution tags), OME (``PhysicalSizeX/Y/Z`` and their units,
``TimeIncrement``) or the resolution tags of a plain TIFF. A file with several series
(pages of different shapes, say) is refused rather than cut to its first.

Checks made before decoding: the series' declared positions against ``max_pixels``;
every strip or tile lies inside the file and has data; uncompressed data is as long as
the shape says, and compressed data is not so short that it would have to expand more
than any real image does (:data:`_MOST_RATIO`). tifffile's own complaints (an IFD chain
that loops, a tag it cannot read) are caught, never printed, and an error among them makes
the file unreadable.

Writing gives the output the input's kind (ImageJ, OME or tifffile's shaped description,
always built anew from the output so it describes it exactly), byte order, lossless
compression and predictor, tile size, planar layout, photometric interpretation, alpha
(extra sample), resolution, ICC profile and descriptive tags (make, model, date, artist,
copyright).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from .errors import ImageFileError, first_line, quiet
from .image import CHANNEL_AXES, NUMERIC_DTYPES, FileFormat, LoadedImage
from .pillow import apply_orientation, check_pixels

if TYPE_CHECKING:
    import tifffile

__all__ = ["FORMATS", "read_tiff", "write_tiff"]

#: Most bytes one compressed byte may stand for (deflate's limit is 1032; LZW and zstd
#: reach more only on data such as constant planes, which is not a noisy image).
_MOST_RATIO = 4096

_LOSSLESS = {
    1: None,
    5: "lzw",
    8: "adobe_deflate",
    32946: "deflate",
    32773: "packbits",
    34925: "lzma",
    50000: "zstd",
}
_DESCRIPTIVE_TAGS = {271: "Make", 272: "Model", 306: "DateTime", 315: "Artist", 33432: "Copyright"}
_ORIENTATION_TAG = 274
_UNITS_PER_METRE = {
    "m": 1.0,
    "cm": 1e2,
    "mm": 1e3,
    "µm": 1e6,
    "um": 1e6,
    "micron": 1e6,
    "nm": 1e9,
    "Å": 1e10,
    "pm": 1e12,
}


def read_tiff(file: Path, max_pixels: int | None) -> LoadedImage:
    """Read a TIFF file's image series whole (see the module notes).

    Raises:
        ImageFileError: Not a TIFF, truncated or corrupt, too large, several series, or
            samples that are not numbers.
    """
    import tifffile  # here, not at the top: a run without TIFF files does not load it

    with quiet() as records:
        try:
            with tifffile.TiffFile(file) as tif:
                return _read(tif, file, max_pixels, records)
        except ImageFileError:
            raise
        except tifffile.TiffFileError as exc:
            raise ImageFileError(
                f"not a TIFF file that can be read ({first_line(exc)})", file
            ) from None
        except MemoryError:
            raise ImageFileError("not enough memory to read the image", file) from None
        except Exception as exc:  # tifffile and imagecodecs raise many kinds for bad data
            if "INSUFFICIENT_SPACE" in str(exc) or "BUF_ERROR" in str(exc):
                raise ImageFileError(
                    "image data inflates to more than the image size (a decompression bomb?)",
                    file,
                ) from None
            raise ImageFileError(
                f"image data is truncated or corrupt ({first_line(exc)})", file
            ) from None


def _complaint(records: list[Any]) -> str | None:
    """The first error tifffile logged, as text without its object prefix."""
    for record in records:
        if record.levelno >= 40:  # logging.ERROR
            text = record.getMessage()
            return " ".join(text.split("> ", 1)[-1].split())[:200]
    return None


def _read(
    tif: tifffile.TiffFile, file: Path, max_pixels: int | None, records: list[Any]
) -> LoadedImage:
    pages = len(tif.pages)  # walks the whole IFD chain: loops and bad offsets show here
    series = tif.series
    problem = _complaint(records)
    if problem:
        raise ImageFileError(f"file is corrupt ({problem})", file)
    if pages == 0 or not series:
        raise ImageFileError("file holds no image", file)
    if len(series) > 1:
        shapes = ", ".join(f"{s.axes} {tuple(s.shape)}" for s in series[:4])
        raise ImageFileError(
            f"file holds {len(series)} separate images ({shapes}); only one image or stack "
            "per file is supported",
            file,
        )
    main = series[0]
    page = main.keyframe
    axes, shape = main.axes, tuple(int(n) for n in main.shape)
    if not {"Y", "X"} <= set(axes):
        raise ImageFileError(f"image has no rows and columns (axes {axes})", file)
    check_pixels(
        tuple(n for n, a in zip(shape, axes, strict=True) if a not in CHANNEL_AXES),
        max_pixels,
        file,
    )
    dtype = main.dtype
    if dtype is None or np.dtype(dtype).kind not in "uifb":
        raise ImageFileError(f"samples of type {dtype} are not supported", file)
    photometric = int(page.photometric)
    if photometric not in (0, 1, 2, 3, 5) and not (photometric == 6 and page.compression == 7):
        raise ImageFileError(f"photometric interpretation {photometric} is not supported", file)
    _check_segments(main, file)

    samples = np.asarray(main.asarray())
    problem = _complaint(records)
    if problem:
        raise ImageFileError(f"image data is corrupt ({problem})", file)
    if samples.shape != shape:
        raise ImageFileError("image data decoded to an unexpected shape", file)
    if samples.dtype == np.bool_:  # bilevel: 0 and 1 become black and white
        samples = samples.astype(np.uint8) * np.uint8(255)
    if photometric == 6:
        photometric = 2  # JPEG-compressed YCbCr decodes to RGB
    if photometric == 3:
        samples, axes = _apply_palette(page, samples, axes, file)
        photometric = 2

    alpha = None
    extrasamples = tuple(int(e) for e in (page.extrasamples or ()))
    if "S" in axes and extrasamples and extrasamples[-1] in (1, 2):
        s = axes.index("S")
        if samples.shape[s] >= 2:
            alpha = np.take(samples, -1, axis=s)
            samples = np.take(samples, range(samples.shape[s] - 1), axis=s)
            if samples.shape[s] == 1:
                samples, axes = np.take(samples, 0, axis=s), axes.replace("S", "")

    spacing, unit, kind, details = _spacing(tif, page, axes)
    orientation = page.tags.valueof(_ORIENTATION_TAG) or 1
    if orientation != 1 and "Y" in axes and "X" in axes:
        y, x = axes.index("Y"), axes.index("X")
        samples = apply_orientation(samples, int(orientation), y, x)
        if alpha is not None:
            alpha_axes = "".join(a for a in axes if a not in CHANNEL_AXES)
            alpha = apply_orientation(
                alpha, int(orientation), alpha_axes.index("Y"), alpha_axes.index("X")
            )
        if orientation >= 5 and "X" in spacing and "Y" in spacing:
            spacing["X"], spacing["Y"] = spacing["Y"], spacing["X"]

    descriptive = {
        code: value
        for code in _DESCRIPTIVE_TAGS
        if isinstance(value := page.tags.valueof(code), str) and value.isprintable()
    }
    tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
    if tile is not None and orientation >= 5:
        tile = (tile[1], tile[0])
    extra: dict[str, Any] = {
        "kind": kind,
        "details": details,
        "compression": int(page.compression),
        "predictor": int(page.predictor),
        "tile": tile,
        "planar": int(page.planarconfig),
        "photometric": photometric,
        "extrasamples": extrasamples[-1:] if alpha is not None else (),
        "bigtiff": bool(tif.is_bigtiff),
        "byteorder": tif.byteorder,
        "resolution_unit": int(page.resolutionunit),
        "tags": descriptive,
    }
    return LoadedImage(
        samples=np.ascontiguousarray(samples),
        axes=axes,
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        spacing=spacing,
        unit=unit,
        format="TIFF",
        icc_profile=_bytes_tag(page, 34675),
        exif=_exif(descriptive, orientation),
        extra=extra,
    )


def _check_segments(series: Any, file: Path) -> None:
    """Every strip or tile must lie in the file, hold data, and be long enough."""
    size = int(series.parent.filehandle.size)
    offset = series.dataoffset
    if offset is not None:  # contiguous data (uncompressed ImageJ and shaped files)
        raw = int(series.nbytes)
        if offset <= 0 or offset + raw > size:
            raise ImageFileError(
                f"image data is truncated or corrupt ({size - int(offset)} of {raw} bytes)",
                file,
            )
        return
    stored = needed = 0
    compressed = False
    for page in series.pages:
        if page is None:
            raise ImageFileError("image data is missing (a page cannot be read)", file)
        offsets, counts = page.dataoffsets, page.databytecounts
        keyframe = getattr(page, "keyframe", page)
        compressed = compressed or keyframe.compression != 1
        if len(offsets) != len(counts) or len(offsets) < _segments_expected(keyframe):
            raise ImageFileError(
                "file is corrupt (strip or tile tables do not match the image size)", file
            )
        for start, count in zip(offsets, counts, strict=True):
            if count <= 0 or start <= 0:
                raise ImageFileError("image data is missing (a strip or tile is empty)", file)
            if start + count > size:
                raise ImageFileError(
                    "image data is truncated or corrupt (a strip or tile runs past the end)",
                    file,
                )
            stored += int(count)
        needed += _stored_size(keyframe)
    if not compressed and stored < needed:
        raise ImageFileError(
            f"image data is truncated or corrupt ({stored} of {needed} bytes)", file
        )
    if compressed and stored * _MOST_RATIO + (1 << 20) < needed:
        raise ImageFileError(
            f"image data is far smaller than the declared size ({stored} bytes for {needed}): "
            "truncated, or a decompression bomb",
            file,
        )


def _stored_size(page: Any) -> int:
    """Bytes a page's samples take uncompressed, rows padded to whole bytes."""
    planes = int(page.samplesperpixel) if int(page.planarconfig) == 2 else 1
    per_pixel = int(page.samplesperpixel) // planes
    bits = page.bitspersample
    bits = sum(bits) if isinstance(bits, tuple) else int(bits)
    depth = max(1, int(page.imagedepth))
    if page.is_tiled:
        rows = int(page.tilelength)
        row_bytes = (int(page.tilewidth) * per_pixel * bits + 7) // 8
        tiles = math.ceil(int(page.imagelength) / max(1, rows))
        tiles *= math.ceil(int(page.imagewidth) / max(1, int(page.tilewidth)))
        tiles *= math.ceil(depth / max(1, int(page.tiledepth or 1)))
        return planes * tiles * rows * row_bytes
    row_bytes = (int(page.imagewidth) * per_pixel * bits + 7) // 8
    return planes * depth * int(page.imagelength) * row_bytes


def _segments_expected(page: Any) -> int:
    planes = int(page.samplesperpixel) if int(page.planarconfig) == 2 else 1
    depth = max(1, int(page.imagedepth))
    length, width = int(page.imagelength), int(page.imagewidth)
    if page.is_tiled:
        tiles = math.ceil(length / max(1, int(page.tilelength)))
        tiles *= math.ceil(width / max(1, int(page.tilewidth)))
        tiles *= math.ceil(depth / max(1, int(page.tiledepth or 1)))
        return planes * tiles
    rows = int(page.rowsperstrip) or length
    return planes * depth * math.ceil(length / max(1, min(rows, length)))


def _apply_palette(
    page: Any, samples: npt.NDArray[Any], axes: str, file: Path
) -> tuple[npt.NDArray[Any], str]:
    """Palette indices to 16-bit RGB samples (a new ``S`` axis last)."""
    colormap = page.colormap
    if colormap is None or samples.dtype.kind != "u" or "S" in axes:
        raise ImageFileError("palette TIFF without a usable colour map", file)
    table = np.asarray(colormap, dtype=np.uint16)
    if int(samples.max(initial=0)) >= table.shape[1]:
        raise ImageFileError("palette index outside the colour map", file)
    return np.moveaxis(table[:, samples], 0, -1), axes + "S"


def _bytes_tag(page: Any, code: int) -> bytes | None:
    value = page.tags.valueof(code)
    if isinstance(value, bytes | bytearray) and value:
        return bytes(value)
    if isinstance(value, tuple | list | np.ndarray) and len(value):
        try:
            return bytes(bytearray(int(v) & 0xFF for v in value))
        except (TypeError, ValueError):
            return None
    return None


def _exif(descriptive: dict[int, str], orientation: int) -> bytes | None:
    """The descriptive tags as an EXIF block for formats that carry EXIF."""
    exif = Image.Exif()
    for code, value in descriptive.items():
        exif[code] = value
    if orientation != 1:
        exif[0x0112] = 1
    return exif.tobytes() if len(exif) else None


def _resolution(page: Any) -> tuple[float | None, float | None]:
    """Sample distances along Y and X in the resolution unit (``None`` if not stated)."""
    values: list[float | None] = []
    for code in (283, 282):  # YResolution, XResolution
        value = page.tags.valueof(code)
        try:
            numerator, denominator = value
            ratio = float(numerator) / float(denominator)
        except (TypeError, ValueError, ZeroDivisionError):
            values.append(None)
            continue
        values.append(1.0 / ratio if ratio > 0 and math.isfinite(ratio) else None)
    return values[0], values[1]


def _spacing(
    tif: tifffile.TiffFile, page: Any, axes: str
) -> tuple[dict[str, float], str | None, str, dict[str, Any]]:
    """Spacing per axis, its unit, the file's kind, and the details to write it back."""
    spacing: dict[str, float] = {}
    dy, dx = _resolution(page)
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        unit = meta.get("unit")
        unit = unit if isinstance(unit, str) and unit.isprintable() else None
        for letter, value in (
            ("Y", dy),
            ("X", dx),
            ("Z", meta.get("spacing")),
            ("T", meta.get("finterval")),
        ):
            if _positive(value) and letter in axes:
                spacing[letter] = float(value)  # type: ignore[arg-type]
        details: dict[str, Any] = {
            k: meta[k] for k in ("spacing", "unit", "finterval", "loop") if k in meta
        }
        return spacing, unit, "imagej", details
    if tif.is_ome and tif.ome_metadata:
        return _ome_spacing(tif.ome_metadata, axes)
    unit = {2: "inch", 3: "cm"}.get(int(page.resolutionunit))
    if unit is not None:
        for letter, value in (("Y", dy), ("X", dx)):
            if value is not None:
                spacing[letter] = value
    kind = "shaped" if tif.is_shaped else "plain"
    return spacing, unit, kind, {}


def _ome_spacing(text: str, axes: str) -> tuple[dict[str, float], str | None, str, dict[str, Any]]:
    """Physical sizes of the first OME image, converted to the unit of X."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return {}, None, "ome", {}
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
    if pixels is None:
        return {}, None, "ome", {}
    unit = pixels.get("PhysicalSizeXUnit", "µm")
    spacing: dict[str, float] = {}
    details: dict[str, Any] = {}
    for letter in "ZYX":
        value = _number(pixels.get(f"PhysicalSize{letter}"))
        own_unit = pixels.get(f"PhysicalSize{letter}Unit", "µm")
        if value is None or letter not in axes:
            continue
        if own_unit != unit:
            if own_unit not in _UNITS_PER_METRE or unit not in _UNITS_PER_METRE:
                continue
            value *= _UNITS_PER_METRE[unit] / _UNITS_PER_METRE[own_unit]
        spacing[letter] = value
        details[f"PhysicalSize{letter}"] = value
        details[f"PhysicalSize{letter}Unit"] = unit
    increment = _number(pixels.get("TimeIncrement"))
    if increment is not None and "T" in axes:
        spacing["T"] = increment
        details["TimeIncrement"] = increment
        details["TimeIncrementUnit"] = pixels.get("TimeIncrementUnit", "s")
    return spacing, unit, "ome", details


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if _positive(value) else None


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_tiff(fh: IO[bytes], image: LoadedImage, quality: int) -> None:
    """Encode ``image`` as TIFF, of the kind it was read as (see the module notes)."""
    import tifffile

    del quality  # TIFF output is lossless
    samples, axes, extrasamples = _with_alpha(image)
    extra = image.extra if image.format == "TIFF" else {}
    channels = samples.shape[axes.index("S")] if "S" in axes else 1
    photometric = extra.get("photometric")
    colours = channels - len(extrasamples)
    if (photometric == 2 and colours != 3) or (photometric == 5 and colours < 1):
        photometric = None
    if photometric is None:
        photometric = 2 if colours == 3 and "S" in axes else 1
    compression = extra.get("compression", 8)
    if compression not in _LOSSLESS:
        compression = 8
    predictor = extra.get("predictor", 1) if compression != 1 else 1
    if compression != 1 and "predictor" not in extra:
        predictor = 3 if samples.dtype.kind == "f" else 2
    if (predictor == 3) != (samples.dtype.kind == "f") and predictor != 1:
        predictor = 1
    kind = extra.get("kind", "shaped")
    if kind == "imagej" and not _imagej_can_hold(samples, axes):
        kind = "shaped"
    spacing = dict(image.spacing)
    options: dict[str, Any] = {
        "photometric": photometric,
        "compression": _LOSSLESS[compression],
        "predictor": predictor if predictor != 1 else None,
        "iccprofile": image.icc_profile,
        "extrasamples": extrasamples or None,
        "tile": extra.get("tile"),
        "software": None,
        "extratags": [
            (code, "s", 0, value, True) for code, value in sorted(extra.get("tags", {}).items())
        ],
    }
    if "S" in axes and extra.get("planar") == 2:
        options["planarconfig"] = "separate"
    if options["tile"] is not None:
        tile_y, tile_x = options["tile"]
        if tile_y % 16 or tile_x % 16:
            options["tile"] = None  # tifffile writes tiles in multiples of 16 only
    resolution = _written_resolution(spacing, image.unit, extra, kind)
    options.update(resolution)
    metadata: dict[str, Any] = {"axes": axes}
    if kind == "imagej":
        details = dict(extra.get("details", {}))
        details.pop("unit", None)
        metadata.update({k: v for k, v in details.items() if k in ("loop",)})
        if "Z" in spacing:
            metadata["spacing"] = spacing["Z"]
        if "T" in spacing:
            metadata["finterval"] = spacing["T"]
        if image.unit:
            metadata["unit"] = image.unit
        options["compression"] = options["compression"] if compression != 1 else None
    elif kind == "ome":
        metadata.update(_ome_metadata(spacing, image.unit, extra.get("details", {})))
    big = bool(extra.get("bigtiff")) or samples.nbytes > 2**32 - 2**25
    with tifffile.TiffWriter(
        fh,
        bigtiff=big,
        byteorder=extra.get("byteorder", "<"),
        imagej=kind == "imagej",
        ome=kind == "ome",
    ) as writer:
        writer.write(samples, metadata=metadata, **options)


def _with_alpha(image: LoadedImage) -> tuple[npt.NDArray[Any], str, tuple[int, ...]]:
    """Samples with alpha appended as an extra sample (``S``), their axes, extrasamples."""
    samples, axes = image.samples, image.axes
    if image.alpha is None:
        return samples, axes, ()
    alpha = image.alpha.astype(samples.dtype)
    kind = tuple(image.extra.get("extrasamples") or (2,)) if image.format == "TIFF" else (2,)
    if "S" in axes:
        s = axes.index("S")
        return np.concatenate([samples, np.expand_dims(alpha, s)], axis=s), axes, kind
    if "C" in axes:  # channels as planes: alpha becomes one more plane
        c = axes.index("C")
        return np.concatenate([samples, np.expand_dims(alpha, c)], axis=c), axes, ()
    return np.stack([samples, alpha], axis=-1), axes + "S", kind


def _imagej_can_hold(samples: npt.NDArray[Any], axes: str) -> bool:
    order = "TZCYXS"
    if samples.dtype not in (np.uint8, np.uint16, np.float32) or not set(axes) <= set(order):
        return False
    positions = [order.index(a) for a in axes]
    return positions == sorted(positions)


def _written_resolution(
    spacing: dict[str, float], unit: str | None, extra: Mapping[str, Any], kind: str
) -> dict[str, Any]:
    """tifffile's ``resolution``/``resolutionunit`` options for the output's spacing."""
    if "X" not in spacing or "Y" not in spacing:
        return {}
    resolution = (1.0 / spacing["X"], 1.0 / spacing["Y"])
    if kind == "imagej":
        return {"resolution": resolution}
    code = extra.get("resolution_unit")
    if code not in (2, 3):
        code = {"inch": 2, "cm": 3}.get(unit or "", 1)
    return {"resolution": resolution, "resolutionunit": code}


def _ome_metadata(
    spacing: dict[str, float], unit: str | None, details: dict[str, Any]
) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for letter in "ZYX":
        if letter in spacing:
            metadata[f"PhysicalSize{letter}"] = spacing[letter]
            metadata[f"PhysicalSize{letter}Unit"] = unit or "µm"
    if "T" in spacing:
        metadata["TimeIncrement"] = spacing["T"]
        metadata["TimeIncrementUnit"] = details.get("TimeIncrementUnit", "s")
    return metadata


def _can_hold(image: LoadedImage) -> str | None:
    if not {"Y", "X"} <= set(image.axes):
        return f"needs rows and columns, not axes {image.axes}"
    return None


#: The formats of this module.
FORMATS = (
    FileFormat(
        name="TIFF",
        suffixes=(".tif", ".tiff", ".btf", ".tf8"),
        read=read_tiff,
        write=write_tiff,
        dtypes=NUMERIC_DTYPES,
        can_hold=_can_hold,
    ),
)
