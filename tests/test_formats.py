"""Scientific files through the command, checked with tifffile (issue 13): stacks, floats,
signed integers, tiles, 16-bit PNG, animations and NumPy arrays come back whole, in their
own dtype, axes and units, with metadata that describes them.

``--weight 0`` must give the input back (values restored exactly, or to float rounding),
so these tests check the file handling alone; a positive weight checks that the values
are denoised in the file's own units.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import numpy.typing as npt
import pytest
import tifffile
from PIL import Image

from tvdenoise.cli import EXIT_OK
from tvdenoise.io import load_image
from tvdenoise.io.layout import choose_layout, prepare
from tvdenoise.io.scaling import Scaling

from helpers import run_cli

FAST = ["--max-iter", "6", "--device", "cpu"]
HEIGHT, WIDTH = 33, 29


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _run(source: Path, out: Path, *options: str) -> dict[str, Any]:
    """Run the command; return the report's record of the file."""
    report = out.parent / "report.json"
    result = run_cli(source, "-o", out, *FAST, "--report", report, *options)
    assert result.exit_code == EXIT_OK, result.output
    assert result.stderr == ""
    record: dict[str, Any] = json.loads(report.read_text())["records"][0]
    return record


def _piecewise(shape: tuple[int, ...], seed: int = 0) -> npt.NDArray[np.float64]:
    """Blocks of constant value with noise, as float64 in [0, 1]."""
    rng = _rng(seed)
    clean = np.zeros(shape)
    clean[..., : shape[-2] // 2, :] = 0.3
    clean[..., :, shape[-1] // 3 :] += 0.4
    return np.clip(clean + rng.normal(0, 0.08, shape), 0, 1)


def test_imagej_stack_round_trip(tmp_path: Path) -> None:
    stack = (_piecewise((5, HEIGHT, WIDTH)) * 60000).astype(np.uint16)
    source = tmp_path / "stack.tif"
    tifffile.imwrite(
        source,
        stack,
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"axes": "ZYX", "spacing": 0.3, "unit": "um"},
    )
    out = tmp_path / "out.tif"
    record = _run(source, out, "--weight", "0", "--dims", "2")
    assert record["dims"] == 2 and record["images"] == 5
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == stack.shape
        np.testing.assert_array_equal(tif.asarray(), stack)
        assert tif.imagej_metadata is not None
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.3)
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.imagej_metadata["slices"] == 5
        numerator, denominator = tif.pages[0].tags["XResolution"].value
        assert numerator / denominator == pytest.approx(10.0)


def test_hyperstack_keeps_time_z_and_channels(tmp_path: Path) -> None:
    stack = (_piecewise((2, 3, 2, HEIGHT, WIDTH)) * 250).astype(np.uint8)
    source = tmp_path / "hyper.tif"
    tifffile.imwrite(source, stack, imagej=True, metadata={"axes": "TZCYX"})
    out = tmp_path / "out.tif"
    record = _run(source, out, "--weight", "0.1", "--dims", "2")
    assert record["images"] == 6  # time x z slices, each with its two channels
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "TZCYX" and tif.series[0].shape == stack.shape
        assert tif.series[0].dtype == np.uint8
        restored = tif.asarray()
    assert not np.array_equal(restored, stack)
    noisy_error = np.abs(stack.astype(float) - np.median(stack)).mean()
    assert np.abs(restored.astype(float) - np.median(stack)).mean() < noisy_error


def test_ome_tiff_keeps_physical_sizes(tmp_path: Path) -> None:
    stack = _piecewise((4, HEIGHT, WIDTH)).astype(np.float32) * 1000 - 200
    source = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        source,
        stack,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.1,
            "PhysicalSizeY": 0.1,
            "PhysicalSizeZ": 0.3,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZUnit": "µm",
        },
    )
    image = load_image(source)
    assert dict(image.spacing) == pytest.approx({"Z": 0.3, "Y": 0.1, "X": 0.1})
    assert choose_layout(image).spacing == pytest.approx((3.0, 1.0, 1.0))
    out = tmp_path / "out.ome.tif"
    _run(source, out, "--weight", "0", "--dims", "2")
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.series[0].axes == "ZYX"
        assert tif.series[0].dtype == np.float32
        np.testing.assert_allclose(tif.asarray(), stack, rtol=0, atol=1e-6 * 1000)
        assert tif.ome_metadata is not None
        for text in ('PhysicalSizeX="0.1"', 'PhysicalSizeZ="0.3"', 'PhysicalSizeZUnit="µm"'):
            assert text in tif.ome_metadata


@pytest.mark.parametrize("axes", ["YX", "YXS"], ids=["grey", "rgb"])
def test_float32_tiff_keeps_its_units(tmp_path: Path, axes: str) -> None:
    shape = (HEIGHT, WIDTH) if axes == "YX" else (HEIGHT, WIDTH, 3)
    clean = np.zeros(shape)
    clean[:, WIDTH // 2 :] = 1.0
    noisy = (clean + _rng(1).normal(0, 0.1, shape)) * 5000.0 + 12.5  # photon counts
    noisy = noisy.astype(np.float32)
    noisy[0, 0] = np.nan
    source = tmp_path / "float.tif"
    tifffile.imwrite(source, noisy, photometric="rgb" if axes == "YXS" else "minisblack")

    same = tmp_path / "same.tif"
    _run(source, same, "--weight", "0")
    back = tifffile.imread(same)
    assert back.dtype == np.float32 and back.shape == noisy.shape
    assert np.isnan(back[0, 0]).all()
    np.testing.assert_allclose(back, noisy, rtol=0, atol=1e-6 * 7000, equal_nan=True)

    out = tmp_path / "out.tif"
    _run(source, out, "--weight", "0.3", "--max-iter", "60")
    restored = tifffile.imread(out)
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == axes and tif.series[0].dtype == np.float32
    truth = clean * 5000.0 + 12.5
    finite = ~np.isnan(noisy)
    error_before = np.abs(noisy - truth)[finite].mean()
    assert np.abs(restored - truth)[finite].mean() < 0.5 * error_before
    assert np.isnan(restored[0, 0]).all()


def test_int16_tiff_round_trip(tmp_path: Path) -> None:
    values = (_piecewise((HEIGHT, WIDTH)) * 4000 - 1024).astype(np.int16)  # Hounsfield-like
    source = tmp_path / "ct.tif"
    tifffile.imwrite(source, values)
    out = tmp_path / "out.tif"
    _run(source, out, "--weight", "0")
    back = tifffile.imread(out)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, values)
    _run(source, tmp_path / "smooth.tif", "--weight", "0.2")
    smooth = tifffile.imread(tmp_path / "smooth.tif")
    assert smooth.dtype == np.int16 and smooth.min() >= values.min()
    assert (
        np.abs(np.diff(smooth.astype(int), axis=1)).sum()
        < np.abs(np.diff(values.astype(int), axis=1)).sum()
    )


def test_tiled_compressed_16bit_rgb_tiff(tmp_path: Path) -> None:
    values = (_piecewise((64, 48, 3)) * 65535).astype(np.uint16)
    source = tmp_path / "tiled.tif"
    tifffile.imwrite(
        source, values, photometric="rgb", tile=(32, 32), compression="zstd", predictor=True
    )
    out = tmp_path / "out.tif"
    _run(source, out, "--weight", "0")
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (32, 32)
        assert page.compression == tifffile.COMPRESSION.ZSTD
        assert tif.series[0].axes == "YXS" and tif.series[0].dtype == np.uint16
        np.testing.assert_array_equal(tif.asarray(), values)


def test_16bit_rgb_png_stays_16bit(tmp_path: Path) -> None:
    values = (_piecewise((HEIGHT, WIDTH, 3)) * 65535).astype(np.uint16)
    values[0, 0] = (1, 255, 65534)  # low bytes that any 8-bit shortcut would lose
    source = tmp_path / "deep.png"
    source.write_bytes(imagecodecs.png_encode(values))
    out = tmp_path / "out.png"
    _run(source, out, "--weight", "0")
    assert out.read_bytes()[24:26] == bytes([16, 2])  # IHDR: depth 16, RGB
    np.testing.assert_array_equal(imagecodecs.png_decode(out.read_bytes()), values)


def test_animated_gif_is_never_cut_to_one_frame(tmp_path: Path) -> None:
    frames = (_piecewise((4, HEIGHT, WIDTH)) * 255).astype(np.uint8)
    source = tmp_path / "movie.gif"
    pictures = [Image.fromarray(frame, "L") for frame in frames]
    pictures[0].save(source, save_all=True, append_images=pictures[1:], duration=120, loop=0)
    out = tmp_path / "out.gif"
    record = _run(source, out, "--weight", "0.1")
    assert record["dims"] == 2 and record["images"] == 4  # frames one by one by default
    with Image.open(out) as written:
        assert written.n_frames == 4 and written.size == (WIDTH, HEIGHT)
        assert written.info.get("duration") == 120


@pytest.mark.parametrize("suffix", [".webp", ".png"], ids=["webp", "apng"])
def test_other_animations_keep_their_frames(tmp_path: Path, suffix: str) -> None:
    frames = (_piecewise((3, HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)
    source = tmp_path / f"movie{suffix}"
    pictures = [Image.fromarray(frame, "RGB") for frame in frames]
    pictures[0].save(source, save_all=True, append_images=pictures[1:], duration=100, lossless=True)
    image = load_image(source)
    assert image.axes == "TYXS" and image.samples.shape == frames.shape
    out = tmp_path / f"out{suffix}"
    _run(source, out, "--weight", "0")
    with Image.open(out) as written:
        assert getattr(written, "n_frames", 1) == 3


def test_npy_in_and_out(tmp_path: Path) -> None:
    volume = _piecewise((5, HEIGHT, WIDTH)) * 3.0 - 1.0
    source = tmp_path / "volume.npy"
    np.save(source, volume)
    out = tmp_path / "out.npy"
    record = _run(source, out, "--weight", "0", "--dims", "2")
    assert record["images"] == 5
    back = np.load(out, allow_pickle=False)
    assert back.dtype == np.float64 and back.shape == volume.shape
    np.testing.assert_allclose(back, volume, rtol=0, atol=1e-6 * 3.0)


def test_spacing_option_overrides_the_file(tmp_path: Path) -> None:
    stack = (_piecewise((3, HEIGHT, WIDTH)) * 255).astype(np.uint8)
    source = tmp_path / "stack.tif"
    tifffile.imwrite(
        source,
        stack,
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"axes": "ZYX", "spacing": 0.3, "unit": "um"},
    )
    image = load_image(source)
    assert choose_layout(image).spacing == pytest.approx((3.0, 1.0, 1.0))
    assert choose_layout(image, spacing=(1.0, 0.5, 0.5)).spacing == (2.0, 1.0, 1.0)
    assert choose_layout(image, dims=2).spacing == (1.0, 1.0)


# ---- the layout and scaling rules --------------------------------------------------------


@pytest.mark.parametrize(
    ("axes", "shape", "dims", "depth", "count"),
    [
        ("YX", (7, 9), None, None, 1),
        ("YXS", (7, 9, 3), 3, None, 1),  # no third axis: one 2-D image whatever is asked
        ("ZYX", (4, 7, 9), None, "Z", 1),
        ("ZYX", (4, 7, 9), 2, None, 4),
        ("TYX", (5, 7, 9), None, None, 5),  # time: frame by frame unless asked
        ("TYX", (5, 7, 9), 3, "T", 1),
        ("TZCYX", (2, 3, 2, 7, 9), None, "Z", 2),
        ("TZCYX", (2, 3, 2, 7, 9), 2, None, 6),
        ("IYX", (3, 7, 9), 3, "I", 1),
        ("ZYX", (1, 7, 9), None, None, 1),  # a single slice is a 2-D image
    ],
)
def test_default_dims_and_cuts(
    axes: str, shape: tuple[int, ...], dims: int | None, depth: str | None, count: int
) -> None:
    from tvdenoise.io import LoadedImage

    image = LoadedImage(np.zeros(shape, np.uint8), axes)
    layout = choose_layout(image, dims=dims)
    assert (layout.depth, layout.count) == (depth, count)
    assert layout.dims == (3 if depth else 2)
    prepared = prepare(image, layout)
    channels = shape[axes.index("C")] if "C" in axes else shape[-1] if "S" in axes else 1
    assert prepared.noisy.shape[:2] == (count, channels)
    assert prepared.noisy.ndim == 2 + layout.dims


def test_prepare_and_restore_are_inverse_for_every_axis_order() -> None:
    from tvdenoise.io import LoadedImage

    values = _rng(3).integers(-30000, 30000, size=(2, 3, 4, 7, 9), dtype=np.int16)
    for axes in ("TZCYX", "CZTYX", "ZTYXS"):
        image = LoadedImage(values, axes)
        for dims in (2, 3):
            prepared = prepare(image, choose_layout(image, dims=dims))
            back = prepared.restore(image, prepared.noisy)
            assert back.axes == axes and back.dtype == np.int16
            np.testing.assert_array_equal(back.samples, values)


@pytest.mark.parametrize(
    ("dtype", "offset", "scale"),
    [
        (np.uint8, 0, 255),
        (np.uint16, 0, 65535),
        (np.int16, -7, 20),
        (np.float32, -7, 20),
        (np.uint32, 0, 13),
        (np.float64, -7, 20),
    ],
)
def test_scaling_rule(dtype: type, offset: float, scale: float) -> None:
    values = np.array([[-7, 13], [0, 5]] if np.dtype(dtype).kind != "u" else [[0, 13], [2, 5]])
    samples = values.astype(dtype)
    scaling = Scaling.for_samples(samples)
    assert (scaling.offset, scaling.scale) == (offset, scale)
    unit = scaling.to_unit(samples)
    assert unit.dtype == np.float32
    back = scaling.from_unit(unit)
    assert back.dtype == samples.dtype
    if samples.dtype.kind == "f":  # through float32: to its rounding, relative to the range
        np.testing.assert_allclose(back, samples, rtol=0, atol=1e-6 * scale)
    else:
        np.testing.assert_array_equal(back, samples)


def test_scaling_ignores_nan_and_handles_constants() -> None:
    samples = np.array([np.nan, 2.0, 6.0, np.inf], dtype=np.float32)
    scaling = Scaling.for_samples(samples)
    assert (scaling.offset, scaling.scale) == (2.0, 4.0)
    constant = np.full((3, 3), 42.5, dtype=np.float32)
    assert (
        Scaling.for_samples(constant)
        .from_unit(Scaling.for_samples(constant).to_unit(constant))
        .tolist()
        == constant.tolist()
    )


def _tiff_variant(path: Path, kind: str) -> npt.NDArray[Any]:
    rng = _rng(4)
    if kind == "pages":  # a plain multi-page file, as Pillow writes it
        frames = rng.integers(0, 256, (3, 20, 30), dtype=np.uint8)
        pictures = [Image.fromarray(frame) for frame in frames]
        pictures[0].save(path, save_all=True, append_images=pictures[1:])
        return frames
    if kind == "planar-rgba":
        values = rng.integers(0, 65536, (4, 20, 30), dtype=np.uint16)
        tifffile.imwrite(
            path, values, photometric="rgb", planarconfig="separate", extrasamples=["unassalpha"]
        )
        return values
    if kind == "bilevel":
        bits = rng.integers(0, 2, (20, 30), dtype=np.uint8).astype(bool)
        Image.fromarray(bits).save(path)
        return bits.astype(np.uint8) * 255
    if kind == "five-channels":
        values = rng.random((5, 20, 30)).astype(np.float32)
        tifffile.imwrite(path, values, metadata={"axes": "CYX"})
        return values
    values = rng.integers(0, 256, (20, 30), dtype=np.uint8)  # miniswhite
    tifffile.imwrite(path, values, photometric="miniswhite")
    return values


@pytest.mark.parametrize(
    ("kind", "axes"),
    [
        ("pages", "IYX"),
        ("planar-rgba", "SYX"),
        ("bilevel", "YX"),
        ("five-channels", "CYX"),
        ("miniswhite", "YX"),
    ],
)
def test_tiff_variants_round_trip(tmp_path: Path, kind: str, axes: str) -> None:
    from tvdenoise.io import save_image

    source = tmp_path / "in.tif"
    expected = _tiff_variant(source, kind)
    image = load_image(source)
    assert image.axes == axes
    save_image(tmp_path / "out.tif", image)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.series[0].axes == axes
        written = tif.asarray()
        photometric = tif.pages[0].photometric
    np.testing.assert_array_equal(written, expected)  # bilevel: now 8-bit black and white
    if kind == "miniswhite":
        assert photometric == tifffile.PHOTOMETRIC.MINISWHITE


# ---- volumes: --dims 3 ---------------------------------------------------------------------


def test_z_stack_is_one_volume_by_default(tmp_path: Path) -> None:
    import torch

    from tvdenoise import restore

    stack = (_piecewise((6, 20, 24)) * 65535).astype(np.uint16)
    source = tmp_path / "stack.tif"
    tifffile.imwrite(
        source,
        stack,
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"axes": "ZYX", "spacing": 0.3, "unit": "um"},
    )
    out = tmp_path / "out.tif"
    record = _run(source, out, "--weight", "0.2")
    assert (record["dims"], record["spacing"], record["images"]) == (3, [3.0, 1.0, 1.0], 1)
    written = tifffile.imread(out)
    volume = torch.from_numpy(stack.astype(np.float32) / 65535)[None, None]
    expected = restore(volume, 0.2, max_iter=6, spatial_dims=3, spacing=(3.0, 1.0, 1.0))
    expected_u16 = np.rint(expected.restored[0, 0].numpy().astype(np.float64) * 65535)
    assert np.abs(written.astype(np.float64) - expected_u16).max() <= 1
    slices = _run(source, tmp_path / "slices.tif", "--weight", "0.2", "--dims", "2")
    assert (slices["dims"], slices["images"]) == (2, 6)
    assert not np.array_equal(tifffile.imread(tmp_path / "slices.tif"), written)


def test_time_series_couples_frames_only_when_asked(tmp_path: Path) -> None:
    series = (_piecewise((4, 20, 24)) * 255).astype(np.uint8)
    source = tmp_path / "movie.tif"
    tifffile.imwrite(source, series, imagej=True, metadata={"axes": "TYX", "finterval": 2.0})
    alone = _run(source, tmp_path / "alone.tif", "--weight", "0.2")
    assert (alone["dims"], alone["images"]) == (2, 4)
    coupled = _run(source, tmp_path / "coupled.tif", "--weight", "0.2", "--dims", "3")
    assert (coupled["dims"], coupled["spacing"], coupled["images"]) == (3, [1.0, 1.0, 1.0], 1)
    spaced = _run(
        source, tmp_path / "spaced.tif", "--weight", "0.2", "--dims", "3", "--spacing", "4,1,1"
    )
    assert spaced["spacing"] == [4.0, 1.0, 1.0]
    with tifffile.TiffFile(tmp_path / "coupled.tif") as tif:
        assert tif.series[0].axes == "TYX" and tif.imagej_metadata is not None
        assert tif.imagej_metadata["finterval"] == pytest.approx(2.0)


@pytest.mark.parametrize("value", ["1,2", "0,1,1", "a,b,c", "1,1,-1"])
def test_bad_spacing_is_a_usage_error(tmp_path: Path, value: str) -> None:
    source = tmp_path / "x.npy"
    np.save(source, np.zeros((9, 9)))
    result = run_cli(source, "--spacing", value)
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert "--spacing" in result.stderr and len(result.stderr.splitlines()) == 1


def test_nan_is_missing_data_not_a_value(tmp_path: Path) -> None:
    """NaN samples carry no data: their neighbours are not pulled towards any fill value."""
    values = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    values[:, WIDTH // 2 :] = 1000.0
    values[10:14, 20:24] = np.nan  # a hole inside the bright half
    values[0, 0] = np.inf
    source = tmp_path / "holes.tif"
    tifffile.imwrite(source, values)
    out = tmp_path / "out.tif"
    _run(source, out, "--weight", "0.5", "--max-iter", "60")
    restored = tifffile.imread(out)
    assert np.isnan(restored[10:14, 20:24]).all() and restored[0, 0] == np.inf
    around = restored[9:15, 19:25][~np.isnan(restored[9:15, 19:25])]
    far = restored[25:, 19:25]  # the same columns away from the hole (TV lowers the step)
    np.testing.assert_allclose(around, far.mean(), rtol=5e-3)
    assert abs(far.mean() - 1000.0) < 50
