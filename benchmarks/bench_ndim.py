"""Total variation in three dimensions against slice-by-slice and against scikit-image (issue 12).

Run from the repository root::

    python benchmarks/bench_ndim.py            # the full measurement (~10-20 min on 2 cores)
    python benchmarks/bench_ndim.py --quick    # small sizes, a smoke run (numbers mean little)

Sections, each on synthetic data made here with fixed seeds (nothing is downloaded):

a. quality: a volume of piecewise-smooth objects (64x256x256, sigma = 25/255), a time-lapse
   (a still scene fading slowly while one disc crosses it, independent noise per frame) and
   a panning scene (the picture moves several pixels per frame): the PSNR of 3-D TV and of
   2-D slice-by-slice TV, each at its best weight on a grid (and scikit-image's n-D
   Chambolle at its best weight, for reference); then the automatic weight in 3-D and its
   gap to the best grid weight;
b. accuracy: the Adam result against the certified 3-D minimiser
   (:func:`tvdenoise.reference_denoise`) at the automatic weight, isotropic and anisotropic;
c. speed and memory: a 128x256x256 volume, ``tvdenoise.denoise`` at a fixed weight against
   ``skimage.restoration.denoise_tv_chambolle`` on the same float32 volume with its default
   tolerance at its best weight, and the peak resident memory above the baseline of each
   (measured in a fresh subprocess), as a multiple of the float32 volume.

It prints tables and one ``BAR <name>: <measured> (target <x>) PASS|FAIL`` line per bar, and
writes them to ``benchmarks/RESULTS.md`` (section ``bench_ndim``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tvdenoise
from tvdenoise.auto import weight_for_sigma

sys.path.insert(0, str(Path(__file__).parent))
from results import record

SIGMA = 25 / 255
SEED = 20261129
_BARS: list[str] = []


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def bar(name: str, value: float, target: str, ok: bool, unit: str = "") -> None:
    line = f"BAR {name}: {value:.3f}{unit} (target {target}) {'PASS' if ok else 'FAIL'}"
    _BARS.append(line)
    print(line, flush=True)


def objects_volume(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Piecewise-smooth objects: ellipsoids with linear ramps on a smooth background.

    Sizes are in voxels (isotropic sampling), 8 to 40 voxels in radius along each axis.
    """
    d, h, w = shape
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    volume = 0.25 + 0.15 * x / w + 0.1 * z / d
    count = max(4, round(24 * d * h * w / (64 * 256 * 256)))
    for _ in range(count):
        centre = rng.uniform(0, 1, 3) * np.array(shape)
        radii = rng.uniform(8, 40, 3)
        inside = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
        inside = inside + ((x - centre[2]) / radii[2]) ** 2 < 1
        slope = rng.uniform(-0.3, 0.3, 3) / 64
        level = rng.uniform(0.2, 0.8) + slope[0] * (z - centre[0]) + slope[1] * (y - centre[1])
        volume = np.where(inside, level + slope[2] * (x - centre[2]), volume)
    return np.clip(volume, 0, 1).astype(np.float32)


def scene(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A 2-D piecewise-smooth picture (discs and bars with ramps)."""
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    image = 0.3 + 0.2 * y
    for _ in range(16):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.04, 0.2)
        level = rng.uniform(0.15, 0.85) + rng.uniform(-0.2, 0.2) * (x - cx)
        image = np.where((y - cy) ** 2 + (x - cx) ** 2 < r * r, level, image)
    return image


def time_lapse(frames: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A still scene fading slowly while one bright disc crosses it."""
    still = scene(h, w, rng)
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty((frames, h, w), dtype=np.float32)
    for t in range(frames):
        fade = 1.0 - 0.3 * t / max(frames - 1, 1)
        cx = 0.1 * w + 0.8 * w * t / max(frames - 1, 1)
        disc = (y - h / 2) ** 2 + (x - cx) ** 2 < (0.08 * h) ** 2
        out[t] = np.where(disc, 0.9, still * fade)
    return np.clip(out, 0, 1)


def panning(frames: int, h: int, w: int, rng: np.random.Generator, step: int) -> np.ndarray:
    """A wide scene seen through a window that moves ``step`` pixels per frame."""
    wide = scene(h, w + step * frames, rng)
    return np.stack([wide[:, t * step : t * step + w] for t in range(frames)]).astype(np.float32)


def add_noise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = clean + SIGMA * rng.standard_normal(clean.shape)
    return np.clip(noisy, 0, 1).astype(np.float32)


def best_on_grid(run, clean: np.ndarray, grid: list[float]) -> tuple[float, float]:
    """The best PSNR over ``grid`` and the weight giving it (a parabola is not needed
    at this grid's resolution: neighbouring points differ by < 0.05 dB near the top)."""
    scores = [psnr(run(w), clean) for w in grid]
    i = int(np.argmax(scores))
    return scores[i], grid[i]


def ours(noisy: np.ndarray, weight: float | str, dims: int) -> np.ndarray:
    x = torch.from_numpy(noisy)[None]  # (1, D, H, W): one channel
    if dims == 3:
        return tvdenoise.denoise(x, weight, spatial_dims=3)[0].numpy()
    return tvdenoise.denoise(x.transpose(0, 1), weight).transpose(0, 1)[0].numpy()


def quality(
    name: str, clean: np.ndarray, noisy: np.ndarray, rows: list[str], skimage: bool
) -> None:
    rule = float(weight_for_sigma(SIGMA))
    grid = [rule * 2.0 ** (k / 4) for k in range(-6, 7)]
    best3, w3 = best_on_grid(lambda w: ours(noisy, w, 3), clean, grid)
    best2, w2 = best_on_grid(lambda w: ours(noisy, w, 2), clean, grid)
    started = time.perf_counter()
    restored = tvdenoise.restore(torch.from_numpy(noisy)[None], "auto", spatial_dims=3)
    auto_seconds = time.perf_counter() - started
    auto = psnr(restored.restored[0, 0].numpy(), clean)
    line = (
        f"| {name} | {psnr(noisy, clean):.2f} | {best2:.2f} ({w2:.3f}) | {best3:.2f} ({w3:.3f}) "
        f"| {best3 - best2:+.2f} | {auto:.2f} ({float(restored.weights[0]):.3f}, "
        f"sigma {255 * float(restored.sigmas[0]):.1f}/255, {auto_seconds:.1f} s) "
        f"| {best3 - auto:.3f} |"
    )
    if skimage:
        from skimage.restoration import denoise_tv_chambolle

        sk3, _ = best_on_grid(lambda w: denoise_tv_chambolle(noisy, weight=w / 2), clean, grid)
        sk2, _ = best_on_grid(
            lambda w: np.stack([denoise_tv_chambolle(s, weight=w / 2) for s in noisy]),
            clean,
            grid,
        )
        line += f" {sk3 - sk2:+.2f} |"
    else:
        line += " |"
    rows.append(line)
    print(line, flush=True)
    if name != "panning":
        bar(f"gain_3d_over_2d[{name}]", best3 - best2, ">= 1 dB", best3 - best2 >= 1.0, " dB")
    bar(f"auto_gap_3d[{name}]", best3 - auto, "<= 0.3 dB", best3 - auto <= 0.3, " dB")


def accuracy(noisy: np.ndarray, rows: list[str]) -> None:
    x = torch.from_numpy(noisy)[None]
    for kind in ("isotropic", "anisotropic"):
        weights, _ = tvdenoise.auto.auto_weight(x, tv=kind, spatial_dims=3)
        adam = tvdenoise.solve(x, weights, tv=kind, spatial_dims=3).restored[0]
        exact, bound = tvdenoise.reference_denoise(
            x.double(),
            weights.double(),
            kind=kind,
            eps=tvdenoise.solver.DEFAULT_EPS,
            spatial_dims=3,
            rms_tol=2e-5,
        )
        rms = float((adam.double() - exact.clamp(0, 1)).square().mean().sqrt())
        rows.append(f"| {kind} | {float(weights[0]):.4f} | {rms:.2e} | {float(bound.max()):.1e} |")
        print(rows[-1], flush=True)
        bar(f"rms_to_minimiser_3d[{kind}]", rms, "<= 2e-3", rms <= 2e-3)


_MEMORY_CHILD = r"""
import json, sys, time
import numpy as np
import torch


def high_water_kib():
    # VmHWM of this process's own memory map (ru_maxrss would carry over the parent's peak
    # across fork and exec on Linux).
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


method, weight, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
noisy = np.load(path)
if method == "tvdenoise":
    import tvdenoise
    x = torch.from_numpy(noisy)[None]
    tvdenoise.denoise(torch.rand(1, 4, 8, 8), 0.1, spatial_dims=3)  # warm-up
else:
    from skimage.restoration import denoise_tv_chambolle
base = high_water_kib()
started = time.perf_counter()
if method == "tvdenoise":
    tvdenoise.denoise(x, weight, spatial_dims=3)
else:
    denoise_tv_chambolle(noisy, weight=weight / 2)
seconds = time.perf_counter() - started
peak = high_water_kib()
print(json.dumps({"seconds": seconds, "extra_kib": peak - base}))
"""


def child(method: str, weight: float, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, method, str(weight), str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(shape: tuple[int, int, int], rows: list[str], repeat: int) -> None:
    from skimage.restoration import denoise_tv_chambolle

    rng = np.random.default_rng(SEED + 7)
    clean = objects_volume(shape, rng)
    noisy = add_noise(clean, rng)
    rule = float(weight_for_sigma(SIGMA))
    grid = [rule * 2.0 ** (k / 2) for k in range(-3, 3)]
    # Best weights, each method on its own (scikit-image's weight is lambda = w / 2).
    ours_best, ours_w = best_on_grid(lambda w: ours(noisy, w, 3), clean, grid)
    sk_best, sk_w = best_on_grid(lambda w: denoise_tv_chambolle(noisy, weight=w / 2), clean, grid)
    timings: dict[str, list[float]] = {"tvdenoise": [], "skimage": []}
    memory: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "noisy.npy"
        np.save(path, noisy)
        for _ in range(repeat):  # interleaved, so that load on the machine hits both alike
            for method, weight in (("tvdenoise", ours_w), ("skimage", sk_w)):
                result = child(method, weight, path)
                timings[method].append(result["seconds"])
                memory[method] = max(memory.get(method, 0.0), result["extra_kib"])
    volume_kib = math.prod(shape) * 4 / 1024
    t_ours, t_sk = (float(np.median(timings[m])) for m in ("tvdenoise", "skimage"))
    rows.append(
        f"| tvdenoise (fixed weight {ours_w:.3f}) | {t_ours:.2f} | {ours_best:.2f} "
        f"| {memory['tvdenoise'] / volume_kib:.1f}x |"
    )
    rows.append(
        f"| skimage denoise_tv_chambolle float32 (weight {sk_w / 2:.3f}) | {t_sk:.2f} "
        f"| {sk_best:.2f} | {memory['skimage'] / volume_kib:.1f}x |"
    )
    print("\n".join(rows[-2:]), flush=True)
    bar("time_ratio_3d_tvdenoise/skimage", t_ours / t_sk, "<= 0.6", t_ours / t_sk <= 0.6)
    bar("psnr_3d_tvdenoise-skimage", ours_best - sk_best, ">= 0 dB", ours_best >= sk_best, " dB")
    ratio = memory["tvdenoise"] / volume_kib
    bar("peak_memory_3d/volume", ratio, "<= 8", ratio <= 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--no-skimage-quality", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--sections",
        default="quality,accuracy,speed",
        help="comma-separated subset of quality, accuracy, speed (each recorded on its own)",
    )
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    rng = np.random.default_rng(SEED)
    if args.quick:
        vol, frames, speed_shape = (16, 64, 64), (12, 64, 64), (16, 64, 64)
    else:
        vol, frames, speed_shape = (64, 256, 256), (48, 192, 192), (128, 256, 256)
    print(f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    clean = objects_volume(vol, rng)
    noisy = add_noise(clean, rng)
    lapse = time_lapse(*frames, rng)
    lapse_noisy = add_noise(lapse, rng)
    pan = panning(*frames, rng, step=6)
    pan_noisy = add_noise(pan, rng)
    parts: dict[str, str] = {}
    if "quality" in sections:
        rows = [
            "| data | noisy | 2-D slices best (weight) | 3-D best (weight) | 3-D gain "
            "| 3-D automatic (weight, sigma, time) | auto gap | skimage 3-D gain |",
            "|---|---|---|---|---|---|---|---|",
        ]
        skimage = not args.no_skimage_quality
        quality("objects volume", clean, noisy, rows, skimage)
        quality("time-lapse", lapse, lapse_noisy, rows, skimage)
        quality("panning", pan, pan_noisy, rows, skimage)
        parts["quality"] = (
            f"sigma = 25/255, sizes {vol} (volume) and {frames} (time series; panning: 6 "
            "pixels per frame); PSNR in dB:\n\n" + "\n".join(rows)
        )
    if "accuracy" in sections:
        rows = ["| TV | automatic weight | RMS to minimiser | certificate |", "|---|---|---|---|"]
        accuracy(noisy[: min(32, vol[0]), :128, :128], rows)
        parts["accuracy"] = (
            "Adam against the certified 3-D minimiser (a 32x128x128 crop of the volume):\n\n"
            + "\n".join(rows)
        )
    if "speed" in sections:
        rows = ["| method | seconds | PSNR dB | peak memory / volume |", "|---|---|---|---|"]
        speed(speed_shape, rows, args.repeat)
        parts["speed"] = (
            f"{speed_shape} float32, median of {args.repeat} interleaved runs in fresh "
            f"processes, torch threads {torch.get_num_threads()}, load average "
            f"{os.getloadavg()[0]:.1f}:\n\n" + "\n".join(rows)
        )
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    if args.quick:
        return
    for name, text in parts.items():
        bars = [line for line in _BARS if _section_of(line) == name]
        record(f"bench_ndim {name}", text + "\n\n```\n" + "\n".join(bars) + "\n```")


def _section_of(bar_line: str) -> str:
    if "rms_to_minimiser" in bar_line:
        return "accuracy"
    if "time_ratio" in bar_line or "psnr_3d" in bar_line or "peak_memory" in bar_line:
        return "speed"
    return "quality"


if __name__ == "__main__":
    main()
