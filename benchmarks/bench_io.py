"""Reading speed of 16-bit files, and hostile files through the command (issue 13).

Run from the repository root::

    python benchmarks/bench_io.py            # the 4000x3000 load test and small hostile files
    python benchmarks/bench_io.py --full     # hostile files at the issue's sizes (GiB bombs)
    python benchmarks/bench_io.py --quick    # 1000x750 and no subprocesses: a smoke run

1. Load and write speed. A 4000x3000 RGB photograph (a bundled sample, upscaled) is made at 16 bits
   (with a little sensor-like noise in the low bits) and at 8 bits (the same image
   divided by 257). :func:`tvdenoise.io.load_image` reads the 16-bit PNG, a 16-bit TIFF
   (deflate with the horizontal predictor, as cameras and microscopes write) and an
   uncompressed 16-bit TIFF; Pillow reads the 8-bit PNG (``open`` + ``load``). Each time is
   the best of five in this process; the bar is 16-bit within 2x of Pillow's 8-bit time.
   The same photograph, smooth as a restored one, is written as 8- and 16-bit PNG by
   :func:`tvdenoise.io.save_image` and by Pillow and libpng at their default level and at
   ours without the run-length strategy; and the photographs bundled with scikit-image,
   noisy (sigma 25/255, seeded) and restored by :func:`tvdenoise.denoise`, are written as
   8-bit PNG at our level with and without it (time and size of each).
2. Hostile files. ``scripts/make_hostile_files.py`` makes every case; each runs through
   ``python -m tvdenoise FILE -o OUT`` in its own process, timed from start to exit
   (Python and torch start-up included) with its peak resident memory from ``wait4`` (in
   a small parent process of its own, see ``_MEASURE``). The bar: one ``error:`` line
   and nothing else on stderr, a non-zero exit, no output, <= 10 s and <= 1 GiB each.
   ``load_image`` alone is timed in this process too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from results import record  # noqa: E402

from tvdenoise.io import ImageFileError, load_image, save_image  # noqa: E402


def _best(function: Callable[[], object], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _photo16(width: int, height: int) -> np.ndarray:
    """A bundled photograph upscaled to ``width x height`` at 16 bits, with noise of
    about a quarter of an 8-bit grey level (the low byte of a real 16-bit file is not
    smooth)."""
    with Image.open(ROOT / "sample_images" / "astronaut_clean.png") as im:
        planes = [
            np.asarray(
                im.convert("RGB").getchannel(c).resize((width, height), Image.Resampling.BICUBIC),
                dtype=np.float64,
            )
            for c in range(3)
        ]
    values = np.stack(planes, axis=2) * 257.0
    values += np.random.default_rng(0).normal(0.0, 64.0, values.shape)
    return np.clip(np.rint(values), 0, 65535).astype(np.uint16)


def load_speed(folder: Path, width: int, height: int) -> tuple[str, bool]:
    deep = _photo16(width, height)
    shallow = np.rint(deep / 257.0).astype(np.uint8)
    png8, png16 = folder / "photo8.png", folder / "photo16.png"
    tiff16, raw16 = folder / "photo16.tif", folder / "photo16_raw.tif"
    Image.fromarray(shallow).save(png8)
    png16.write_bytes(imagecodecs.png_encode(deep, level=6))
    tifffile.imwrite(
        tiff16, deep, photometric="rgb", compression="zlib", predictor=True, rowsperstrip=64
    )
    tifffile.imwrite(raw16, deep, photometric="rgb")

    def pillow8() -> None:
        with Image.open(png8) as im:
            im.load()

    pillow = _best(pillow8)
    rows = [("Pillow, 8-bit PNG (reference)", png8, pillow)]
    for label, path in [
        ("tvdenoise, 8-bit PNG", png8),
        ("tvdenoise, 16-bit PNG", png16),
        ("tvdenoise, 16-bit TIFF (deflate, predictor)", tiff16),
        ("tvdenoise, 16-bit TIFF (uncompressed)", raw16),
    ]:
        rows.append((label, path, _best(lambda path=path: load_image(path, max_pixels=None))))
    lines = [
        f"Load time of a {width}x{height} RGB photograph (best of 5, this process):",
        "",
        "| reader, file | size | time | vs Pillow 8-bit |",
        "|---|---|---|---|",
    ]
    for label, path, seconds in rows:
        size = path.stat().st_size / 2**20
        lines.append(f"| {label} | {size:.1f} MiB | {seconds:.3f} s | {seconds / pillow:.2f}x |")
    png_ratio = rows[2][2] / pillow
    tiff_ratio = rows[3][2] / pillow
    passed = min(png_ratio, tiff_ratio) <= 2.0
    lines += [
        "",
        f"BAR 16-bit PNG or TIFF within 2x of Pillow's 8-bit PNG: PNG {png_ratio:.2f}x, "
        f"TIFF {tiff_ratio:.2f}x -> {'PASS' if passed else 'FAIL'}",
    ]
    return "\n".join(lines), passed


def write_speed(folder: Path, width: int, height: int) -> str:
    """Write time and size of a restored-looking photograph as 8- and 16-bit PNG: the
    command's writer (zlib level ``PNG_LEVEL``, run lengths only) against Pillow's and
    libpng's level 6 and against level ``PNG_LEVEL`` with zlib's default strategy."""
    from tvdenoise.io.pillow import PNG_LEVEL

    deep = _photo16(width, height).astype(np.float64)
    # A restored image is smooth: the photograph without its low-bit noise (a 3x3 mean).
    padded = np.pad(deep, ((1, 1), (1, 1), (0, 0)), mode="edge")
    mean = sum(padded[i : i + height, j : j + width] for i in range(3) for j in range(3)) / 9
    smooth16 = np.rint(mean).astype(np.uint16)
    smooth = np.rint(mean / 257.0).astype(np.uint8)
    names = ("ours8", "ours16", "pil8", "pil8l", "png16", "png16l")
    paths = {name: folder / f"{name}.png" for name in names}

    def ours(name: str, samples: np.ndarray) -> Callable[[], object]:
        return lambda: save_image(paths[name], samples, overwrite=True)

    level = PNG_LEVEL
    rows = [
        ("8-bit, Pillow level 6", "pil8", lambda: Image.fromarray(smooth).save(paths["pil8"])),
        (
            f"8-bit, Pillow level {level}",
            "pil8l",
            lambda: Image.fromarray(smooth).save(paths["pil8l"], compress_level=level),
        ),
        (f"8-bit, tvdenoise (level {level}, run lengths)", "ours8", ours("ours8", smooth)),
        (
            "16-bit, libpng level 6",
            "png16",
            lambda: paths["png16"].write_bytes(imagecodecs.png_encode(smooth16, level=6)),
        ),
        (
            f"16-bit, libpng level {level}",
            "png16l",
            lambda: paths["png16l"].write_bytes(imagecodecs.png_encode(smooth16, level=level)),
        ),
        (f"16-bit, tvdenoise (level {level}, run lengths)", "ours16", ours("ours16", smooth16)),
    ]
    lines = [
        f"Write time of a smooth {width}x{height} RGB photograph as PNG (best of 5):",
        "",
        "| writer | time | size |",
        "|---|---|---|",
    ]
    for label, name, write in rows:
        seconds = _best(write)
        size = paths[name].stat().st_size / 2**20
        lines.append(f"| {label} | {seconds:.3f} s | {size:.1f} MiB |")
    return "\n".join(lines)


#: scikit-image's bundled photographs for the run-length sweep.
_SWEEP = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "brick", "grass",
    "gravel", "text", "checkerboard", "retina", "immunohistochemistry", "hubble_deep_field",
    "cat", "horse", "page", "binary_blobs",
)  # fmt: skip


def run_length_sweep() -> str:
    """8-bit PNG of restored photographs at ``PNG_LEVEL``, zlib's default strategy against
    run lengths only (``PNG_STRATEGY``, the writer's): time (best of 3) and size."""
    import io

    import torch
    from skimage import data

    from tvdenoise import denoise
    from tvdenoise.io.pillow import PNG_LEVEL, PNG_STRATEGY

    def encode(picture: Image.Image, **options: int) -> tuple[float, int]:
        sizes: list[int] = []

        def write() -> None:
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG", compress_level=PNG_LEVEL, **options)
            sizes.append(buffer.tell())

        return _best(write, 3), sizes[-1]

    rng = np.random.default_rng(0)
    lines = [
        f"Restored 8-bit photographs (scikit-image's, sigma 25/255) as PNG at level {PNG_LEVEL}, "
        "zlib's default strategy against run lengths (best of 3):",
        "",
        "| image | default | run lengths | time | size |",
        "|---|---|---|---|---|",
    ]
    totals = [0, 0]
    for name in _SWEEP:
        pixels = np.asarray(getattr(data, name)())
        pixels = pixels.astype(np.uint8) * 255 if pixels.dtype == bool else pixels
        clean = np.atleast_3d(pixels)[..., :3].astype(np.float32) / 255
        noisy = np.clip(clean + rng.normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)
        restored = denoise(torch.from_numpy(noisy).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        u8 = np.rint(np.clip(restored, 0, 1) * 255).astype(np.uint8)
        picture = Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8)
        (t0, s0), (t1, s1) = encode(picture), encode(picture, compress_type=PNG_STRATEGY)
        totals[0] += s0
        totals[1] += s1
        lines.append(
            f"| {name} | {1e3 * t0:.1f} ms, {s0} B | {1e3 * t1:.1f} ms, {s1} B "
            f"| {t0 / t1:.2f}x faster | {100 * (s1 / s0 - 1):+.1f} % |"
        )
    lines += ["", f"All together: run lengths {100 * (totals[1] / totals[0] - 1):+.1f} % in size."]
    return "\n".join(lines)


# Runs the command and reports its exit code, stderr, time and peak memory. A small
# parent of its own: a child forked from this (large) process would report this process's
# peak resident memory as its own (Linux carries maxrss across fork and exec).
_MEASURE = """
import json, os, subprocess, sys, tempfile, time
start = time.perf_counter()
with tempfile.TemporaryFile() as errors:
    child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=errors)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    errors.seek(0)
    text = errors.read().decode("utf-8", "replace")
print(json.dumps([os.waitstatus_to_exitcode(status), text, seconds, usage.ru_maxrss / 1024]))
"""


def _run_command(path: Path, out: Path) -> tuple[int, str, float, float]:
    """Exit code, stderr, seconds and peak resident MiB of the command on one file."""
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    command = [
        sys.executable,
        "-c",
        _MEASURE,
        sys.executable,
        "-m",
        "tvdenoise",
        os.fspath(path),
        "-o",
        os.fspath(out),
        "--device",
        "cpu",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    code, text, seconds, memory = json.loads(done.stdout)
    return int(code), str(text), float(seconds), float(memory)


def hostile(folder: Path, *, full: bool, subprocesses: bool) -> tuple[str, bool]:
    spec = importlib.util.spec_from_file_location(
        "make_hostile_files", ROOT / "scripts" / "make_hostile_files.py"
    )
    assert spec is not None and spec.loader is not None
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    files = maker.make_all(folder / "hostile", full=full)
    lines = [
        f"Hostile files ({'issue sizes' if full else 'small versions'}), each through "
        "`python -m tvdenoise FILE -o OUT --device cpu` in its own process:",
        "",
        "| file | size | load_image | command | peak memory | exit | stderr |",
        "|---|---|---|---|---|---|---|",
    ]
    passed = True
    for path in files:
        start = time.perf_counter()
        try:
            load_image(path)
            refused = False
        except ImageFileError:
            refused = True
        loading = time.perf_counter() - start
        size = path.stat().st_size
        shown = f"{size / 2**20:.1f} MiB" if size > 2**20 else f"{size} B"
        if not subprocesses:
            passed = passed and refused
            lines.append(f"| {path.name} | {shown} | {loading:.3f} s | | | | |")
            continue
        out = folder / "out" / path.name
        code, text, seconds, memory = _run_command(path, out)
        stderr = text.splitlines()
        good = (
            code != 0
            and len(stderr) == 1
            and stderr[0].startswith("error: ")
            and not out.exists()
            and seconds <= 10
            and memory <= 1024
        )
        passed = passed and good and refused
        lines.append(
            f"| {path.name} | {shown} | {loading:.3f} s | {seconds:.1f} s | {memory:.0f} MiB "
            f"| {code} | {len(stderr)} line{'' if len(stderr) == 1 else 's'}"
            f"{'' if good else ' FAIL'} |"
        )
    lines += [
        "",
        f"BAR every hostile file refused in one line, <= 10 s, <= 1 GiB: "
        f"{'PASS' if passed else 'FAIL'}",
    ]
    return "\n".join(lines), passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="hostile files at issue sizes")
    parser.add_argument("--quick", action="store_true", help="small image, no subprocesses")
    args = parser.parse_args()
    width, height = (1000, 750) if args.quick else (4000, 3000)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        speed, _ = load_speed(folder, width, height)
        speed += "\n\n" + write_speed(folder, width, height)
        if not args.quick:
            speed += "\n\n" + run_length_sweep()
        print(speed, flush=True)
        files, _ = hostile(folder, full=args.full, subprocesses=not args.quick)
        print()
        print(files)
    if not args.quick:
        record("bench_io", speed + "\n\n" + files)


if __name__ == "__main__":
    main()
