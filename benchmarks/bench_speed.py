"""Speed and memory of tvdenoise against scikit-image and a plain autograd loop (issue 5).

Run from the repository root::

    python benchmarks/bench_speed.py              # sections a, b, c, e
    python benchmarks/bench_speed.py --all        # also d, the 6000x4000 image
    python benchmarks/bench_speed.py --size 128 --repeat 2 --recipe-iters 50 \\
        --large --large-size 600x400              # a quick smoke run

Sections:

a. one 512x512 RGB photograph (two photographs), Gaussian noise sigma = 25/255 added to
   the 8-bit image: median time and PSNR of ``tvdenoise.denoise`` with its defaults against
   scikit-image's ``denoise_tv_chambolle`` (and ``denoise_tv_bregman`` for context), each
   of those at its best weight on that image;
b. time per iteration against the straightforward recipe (autograd + ``torch.optim.Adam``)
   and the RMS distance of both results to the exact minimiser;
c. peak resident memory above a baseline for each method of (a);
d. a large image in a clean subprocess: peak memory and total time of ``restore`` with its
   defaults, then the time per iteration of the solve alone at the weights it chose (all
   iterations run), and how that time compares with the machine's memory-bandwidth bound;
e. start-up: the wall time of the ``tvdenoise`` command on one 512x512 image against that
   of ``python -c "import torch"`` (the bar), and of the same import ended by ``os._exit``:
   the command skips the interpreter's teardown, which takes a large part of the import's
   time, so the second comparison shows the cost of the command's own work.

It prints a table and one ``BAR <name>: <measured> (target <x>) PASS|FAIL`` line per bar, and
records all it printed in ``benchmarks/RESULTS.md`` (section ``bench_speed``). The bars are
issue 5's, and issue 17's (marked so) for the default path against scikit-image and for
the cost of choosing the weight against the final solve.
The helpers at the top are shared with ``bench_batch.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tvdenoise
from tvdenoise.solver import DEFAULT_EPS

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import recording

SIGMA = 25.0  # on the 8-bit scale
SEED = 20240605
# Photographs that ship inside the scikit-image wheel (nothing is downloaded).
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "motorcycle",
)
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------
# Images, noise, quality
# ---------------------------------------------------------------------------------------


def photo(name: str) -> np.ndarray:
    """A bundled scikit-image photograph as ``(H, W, 3)`` uint8."""
    from skimage import data

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()


def fit_crop(image: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A ``height x width`` crop at a random place, enlarging the photo first if it is small."""
    from skimage.transform import rescale

    scale = max(height / image.shape[0], width / image.shape[1])
    if scale > 1:
        image = rescale(image, scale * 1.001, channel_axis=-1, preserve_range=True)
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    top = int(rng.integers(0, image.shape[0] - height + 1))
    left = int(rng.integers(0, image.shape[1] - width + 1))
    return np.ascontiguousarray(image[top : top + height, left : left + width])


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of ``sigma`` grey levels on an 8-bit image, clipped and quantised."""
    noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)


def to_unit(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 on [0, 1]."""
    return image.astype(np.float32) / np.float32(255)


def psnr(restored: np.ndarray, clean: np.ndarray) -> float:
    """PSNR in dB of two images on the [0, 1] scale."""
    error = np.mean((np.asarray(restored, np.float64) - np.asarray(clean, np.float64)) ** 2)
    return float(10 * math.log10(1.0 / error))


def hwc_to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def tensor_to_hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------


def best_weight(
    score: Callable[[float], float], lo: float, hi: float, coarse: int = 9, fine: int = 4
) -> tuple[float, float]:
    """Maximise ``score(weight)``: a log-spaced grid, then a finer one around its best point.

    Returns ``(weight, score)``; warns on stderr when the best point is an end of the range.
    """
    grid = [float(w) for w in np.geomspace(lo, hi, coarse)]
    scores = {w: score(w) for w in grid}
    i = max(range(len(grid)), key=lambda k: scores[grid[k]])
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    for w in np.geomspace(left, right, fine + 2)[1:-1]:
        scores[float(w)] = score(float(w))
    best = max(scores, key=lambda w: scores[w])
    if best in (grid[0], grid[-1]):
        print(f"warning: best weight {best:.4g} is at the end of [{lo}, {hi}]", file=sys.stderr)
    return best, scores[best]


def auto_weight_supported() -> bool:
    """Whether this tvdenoise accepts ``weight="auto"`` (tried on a tiny image)."""
    probe = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    try:
        tvdenoise.denoise(probe, weight="auto", max_iter=1)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return False
    return True


def restore_info(x: torch.Tensor, weight: float | str) -> tuple[torch.Tensor, float, int]:
    """Restored ``(B, C, H, W)`` images, the weight used and the iterations run.

    Uses ``tvdenoise.restore`` (automatic weight, tiling) where the package has it, else the
    bare solver ``tvdenoise.solve``.
    """
    run = getattr(tvdenoise, "restore", tvdenoise.solve)
    result = run(x, weight)
    return result.restored, float(result.weights[0]), int(result.iterations.max())


def auto_weight_of(x: torch.Tensor) -> float | None:
    """The weight ``weight="auto"`` picks for ``x``, or None where it is not supported."""
    try:
        return restore_info(x, "auto")[1]
    except (TypeError, ValueError, RuntimeError):
        return None


def ours_weight_grid(noisy: np.ndarray, clean: np.ndarray, around: float, coarse: int) -> float:
    """The weight that maximises the PSNR of ``tvdenoise.denoise`` on one image."""
    x = hwc_to_tensor(noisy)

    def score(w: float) -> float:
        return psnr(tensor_to_hwc(tvdenoise.denoise(x, w)), clean)

    return best_weight(score, around / 2, around * 2, coarse=max(coarse // 2, 3), fine=3)[0]


def skimage_chambolle(image: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(image, weight=weight, channel_axis=-1)


def skimage_bregman(image: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_bregman

    return denoise_tv_bregman(image, weight=weight, isotropic=True, channel_axis=-1)


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after one warm-up run."""
    return median_times([fn], repeat)[0]


def median_times(fns: Sequence[Callable[[], object]], repeat: int) -> list[float]:
    """Median wall time of each of ``fns`` over ``repeat`` rounds after one warm-up run
    of each: every round runs all of them, so that a change of the machine's speed falls
    on all alike and their ratios hold."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, taken in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            taken.append(time.perf_counter() - start)
    return [statistics.median(taken) for taken in times]


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so that the baseline RSS holds no free
    memory that ``fn`` could reuse without its peak showing."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None).malloc_trim(0)


def peak_above_baseline_mb(fn: Callable[[], object]) -> float | None:
    """Peak resident memory of ``fn()`` above the RSS just before it, in MiB (None if unknown)."""
    gc.collect()
    _release_free_heap()
    if not reset_peak_rss():
        return None
    base = _status_kb("VmRSS")
    result = fn()
    peak = _status_kb("VmHWM")
    del result
    if base is None or peak is None:
        return None
    return (peak - base) / 1024


def bar(name: str, measured: float, target: str, ok: bool, unit: str = "") -> str:
    return f"BAR {name}: {measured:.3g}{unit} (target {target}) {'PASS' if ok else 'FAIL'}"


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def tvdenoise_command() -> list[str]:
    """The installed console script, or ``python -m tvdenoise`` where it is not on PATH."""
    exe = shutil.which("tvdenoise")
    return [exe] if exe else [sys.executable, "-m", "tvdenoise"]


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def load_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------------------------------
# a-c: one photograph in this process
# ---------------------------------------------------------------------------------------


def straightforward_recipe(
    f: torch.Tensor, weight: float, iters: int, lr: float = 0.01
) -> tuple[torch.Tensor, list[float]]:
    """Autograd through the loss and ``torch.optim.Adam``; returns the result and the times
    of blocks of iterations (seconds per iteration)."""
    u = f.clone().requires_grad_()
    optimiser = torch.optim.Adam([u], lr=lr)
    block = max(iters // 10, 1)
    per_iteration = []
    start = time.perf_counter()
    for k in range(1, iters + 1):
        optimiser.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(u, f) + weight * tvdenoise.total_variation(
            u, eps=DEFAULT_EPS
        )
        loss.backward()
        optimiser.step()
        if k % block == 0:
            now = time.perf_counter()
            per_iteration.append((now - start) / block)
            start = now
    return u.detach().clamp(0.0, 1.0), per_iteration


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sqrt(torch.mean((a.double() - b.double()) ** 2)))


def bench_photo(
    name: str, args: argparse.Namespace, auto: bool, with_recipe: bool
) -> tuple[list[list[object]], list[str], float]:
    """Sections a-c on one photograph; returns table rows, bar lines and our weight."""
    rng = np.random.default_rng([SEED, PHOTOS.index(name)])
    clean_u8 = fit_crop(photo(name), args.size, args.size, rng)
    noisy = to_unit(add_noise(clean_u8, SIGMA, rng))
    clean = to_unit(clean_u8)
    label = f"{name} {args.size}x{args.size}"
    print(f"\n== {label}, sigma {SIGMA:g}/255 ==", flush=True)

    s_cham, p_cham = best_weight(
        lambda w: psnr(skimage_chambolle(noisy, w), clean), 0.02, 0.5, coarse=args.grid
    )
    s_breg, p_breg = best_weight(
        lambda w: psnr(skimage_bregman(noisy, w), clean), 2.0, 100.0, coarse=args.grid
    )
    x = hwc_to_tensor(noisy)
    auto_weight = auto_weight_of(x) if auto else None
    if auto_weight is not None:
        weight_arg: float | str = "auto"
        weight = auto_weight
        how = "auto"
    else:
        weight = ours_weight_grid(noisy, clean, 2 * s_cham, args.grid)
        weight_arg = weight
        how = "best grid weight (weight='auto' not supported yet)"
    print(f"tvdenoise weight: {weight:.4g} ({how})")

    def ours() -> np.ndarray:
        t = torch.from_numpy(noisy).permute(2, 0, 1)
        return tensor_to_hwc(tvdenoise.denoise(t, weight=weight_arg))  # type: ignore[arg-type]

    _, _, iterations = restore_info(x, weight)
    p_ours = psnr(ours(), clean)

    # Interleaved: ours, the solver alone at the weight just used (what the iterations
    # cost, without the choice of the weight), and scikit-image's two.
    t_ours, t_solve, t_cham, t_breg = median_times(
        [
            ours,
            lambda: restore_info(x, weight),
            lambda: skimage_chambolle(noisy, s_cham),
            lambda: skimage_bregman(noisy, s_breg),
        ],
        args.repeat,
    )
    threads = torch.get_num_threads()
    if threads > 1:  # context: on a loaded machine, thread synchronisation can dominate
        torch.set_num_threads(1)
        t_ours_1 = median_time(ours, args.repeat)
        torch.set_num_threads(threads)
    m_ours = peak_above_baseline_mb(ours)
    m_cham = peak_above_baseline_mb(lambda: skimage_chambolle(noisy, s_cham))
    m_breg = peak_above_baseline_mb(lambda: skimage_bregman(noisy, s_breg))

    def mem(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f}"

    rows: list[list[object]] = [
        [label, "tvdenoise.denoise", f"{weight:.4g} ({how.split()[0]})", f"{t_ours:.3f}",
         f"{p_ours:.2f}", mem(m_ours)],
    ]  # fmt: skip
    if threads > 1:
        rows.append([label, "tvdenoise.denoise, 1 thread", "same", f"{t_ours_1:.3f}", "same", ""])
    rows += [
        [label, "skimage chambolle", f"{s_cham:.4g}", f"{t_cham:.3f}", f"{p_cham:.2f}",
         mem(m_cham)],
        [label, "skimage bregman (iso)", f"{s_breg:.4g}", f"{t_breg:.3f}", f"{p_breg:.2f}",
         mem(m_breg)],
    ]  # fmt: skip
    ratio = t_ours / t_cham
    # Choosing the weight (noise estimate, search, conversions) over the final solve.
    choice = max(t_ours - t_solve, 0.0) / t_solve
    bars = [
        bar(f"time_ratio_tvdenoise/skimage[{name}]", ratio, "<= 0.5", ratio <= 0.5),
        bar(f"time_ratio_default/skimage[{name}] (issue 17)", ratio, "<= 1", ratio <= 1.0),
        bar(f"weight_choice_over_final_solve[{name}] (issue 17)", choice, "<= 1", choice <= 1.0),
        bar(f"psnr_tvdenoise-skimage[{name}]", p_ours - p_cham, ">= 0", p_ours >= p_cham, " dB"),
        bar(
            f"time_ratio_fixed_weight/skimage[{name}]",
            t_solve / t_cham,
            "<= 0.3",
            t_solve / t_cham <= 0.3,
        ),
    ]
    print(table(rows, ["image", "method", "weight", "time s", "PSNR dB", "peak MiB"]))
    per_iter = t_solve / iterations
    print(
        f"tvdenoise: {iterations} iterations, solve at this fixed weight {t_solve:.3f} s "
        f"= {1e3 * per_iter:.2f} ms/iteration; choosing the weight "
        f"{'(auto) ' if weight_arg == 'auto' else ''}and conversions: "
        f"{max(t_ours - t_solve, 0.0):.3f} s"
    )

    if with_recipe:
        bars += bench_recipe(x, weight, args)
        if args.profile:
            profile_iterations(x, weight, args.profile)
    return rows, bars, weight


def bench_recipe(x: torch.Tensor, weight: float, args: argparse.Namespace) -> list[str]:
    """Section b: per-iteration time and distance to the exact minimiser, all three on the
    recipe's problem (joint colour TV; the default opponent colour is another problem)."""
    print(
        f"\n-- b. against the straightforward recipe ({args.recipe_iters} iterations, lr 0.01) --"
    )

    def ours_joint() -> tvdenoise.Restoration:
        return tvdenoise.restore(x, weight, color="joint")

    joint = ours_joint()
    ours = joint.restored[0]
    ours_per_iter = median_time(ours_joint, args.repeat) / int(joint.iterations.max())
    recipe, block_times = straightforward_recipe(x, weight, args.recipe_iters)
    recipe_per_iter = statistics.median(block_times)
    m_recipe = peak_above_baseline_mb(lambda: straightforward_recipe(x, weight, 5))
    start = time.perf_counter()
    exact, bound = tvdenoise.reference_denoise(
        x, weight, kind="isotropic", color="joint", eps=DEFAULT_EPS, rms_tol=args.ref_tol
    )
    t_ref = time.perf_counter() - start
    exact = exact.clamp(0.0, 1.0)  # the minimiser lies in [0, 1]; clipping only tidies rounding
    d_ours, d_recipe = rms(ours, exact), rms(recipe, exact)
    rows = [
        ["tvdenoise (color='joint')", f"{1e3 * ours_per_iter:.2f}", f"{d_ours:.2e}", ""],
        ["recipe (autograd + Adam)", f"{1e3 * recipe_per_iter:.2f}", f"{d_recipe:.2e}",
         "n/a" if m_recipe is None else f"{m_recipe:.0f}"],
    ]  # fmt: skip
    print(table(rows, ["method", "ms/iteration", "RMS to minimiser", "peak MiB"]))
    print(
        f"exact minimiser: reference_denoise in {t_ref:.1f} s, certified RMS bound "
        f"{float(bound.max()):.1e} (distances below it are not resolved)"
    )
    speedup = recipe_per_iter / ours_per_iter
    return [
        bar("per_iteration_speedup_vs_recipe", speedup, ">= 5x", speedup >= 5, "x"),
        bar(
            "rms_to_minimiser_tvdenoise/recipe",
            d_ours / d_recipe,
            "<= 1",
            d_ours <= d_recipe or d_ours <= float(bound.max()),
        ),
    ]


def profile_iterations(x: torch.Tensor, weight: float, iterations: int) -> None:
    """Where the time of the solver goes: torch.profiler over ``iterations`` iterations."""
    from torch.profiler import ProfilerActivity, profile

    tvdenoise.solve(x, weight, max_iter=iterations)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tvdenoise.solve(x, weight, max_iter=iterations, check_every=iterations)
    print(f"\n-- profile of solve(max_iter={iterations}), one energy check --")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


# ---------------------------------------------------------------------------------------
# d: a large image in a clean subprocess
# ---------------------------------------------------------------------------------------


def large_photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like mosaic: a 4 x 6 grid of resized, randomly flipped bundled photographs."""
    from skimage.transform import resize

    rows, cols = 4, 6
    tile_h, tile_w = -(-height // rows), -(-width // cols)
    tiles = {}
    for name in PHOTOS:
        resized = resize(photo(name), (tile_h, tile_w), preserve_range=True, anti_aliasing=True)
        tiles[name] = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    out = np.empty((rows * tile_h, cols * tile_w, 3), np.uint8)
    for r in range(rows):
        for c in range(cols):
            tile = tiles[PHOTOS[int(rng.integers(len(PHOTOS)))]]
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            if rng.random() < 0.5:
                tile = tile[::-1]
            out[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w] = tile
    out = out[:height, :width]
    for top in range(0, height, 256):  # noise in strips, to keep this process small
        out[top : top + 256] = add_noise(out[top : top + 256], SIGMA, rng)
    return out


def large_worker(path: str, weight: str) -> None:
    """Child process: denoise the image in ``path`` (.npy, uint8 HWC) with the public entry
    point (automatic tiling included where the package has it); print JSON."""
    u8 = np.load(path)
    h, w, c = u8.shape
    x = torch.empty(c, h, w)
    for channel in range(c):
        x[channel] = torch.from_numpy(u8[..., channel].astype(np.float32)).div_(255)
    del u8
    weight_arg = weight if weight == "auto" else float(weight)
    # First-call set-up (lazy imports, kernels) is not per-pixel memory: do it on a small image.
    restore_info(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)), weight_arg)
    try:
        from tvdenoise.tiling import auto_tile

        tile = auto_tile(x[None].shape, x.device, x.dtype)
    except ImportError:
        tile = None
    gc.collect()
    _release_free_heap()
    before = _status_kb("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    result = tvdenoise.restore(x[None], weight_arg)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    used_weight, iterations = float(result.weights[0]), int(result.iterations.max())
    chroma = result.chroma_weights
    del result
    gc.collect()
    # Time per iteration: the solve alone, at the weights just chosen (no weight search),
    # every tile running all the iterations (a tolerance no energy change reaches).
    start = time.perf_counter()
    solved = tvdenoise.restore(x[None], used_weight, chroma_weight=chroma, tol=1e-30)
    solve_seconds = time.perf_counter() - start
    solve_iterations = int(solved.iterations.max())
    del solved
    gc.collect()
    # The same with a third of the iterations: the slope between the two is the cost of one
    # iteration alone, the rest the solve's fixed cost (tiles cut, set up and stitched, the
    # final energy, the colour transforms).
    short_iterations = max(1, solve_iterations // 3)
    start = time.perf_counter()
    tvdenoise.restore(
        x[None], used_weight, chroma_weight=chroma, tol=1e-30, max_iter=short_iterations
    )
    short_seconds = time.perf_counter() - start
    gc.collect()
    # Copy bandwidth with arrays of the image's size: bytes read + bytes written per second.
    src, dst = torch.rand_like(x), torch.empty_like(x)
    dst.copy_(src)
    copies = []
    for _ in range(5):
        start_copy = time.perf_counter()
        dst.copy_(src)
        copies.append(time.perf_counter() - start_copy)
    copy_bw = 2 * x.nbytes / statistics.median(copies)
    print(
        json.dumps(
            {
                "before_kb": before,
                "peak_kb": peak,
                "seconds": seconds,
                "iterations": iterations,
                "solve_seconds": solve_seconds,
                "solve_iterations": solve_iterations,
                "short_seconds": short_seconds,
                "short_iterations": short_iterations,
                "weight": used_weight,
                "image_bytes": x.nbytes,
                "copy_bytes_per_s": copy_bw,
                "threads": torch.get_num_threads(),
                "tile": tile,
            }
        )
    )


def bare_torch_rss_kb() -> int:
    code = (
        "import torch\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmHWM:'): print(line.split()[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def bench_large(args: argparse.Namespace, weight: float, auto: bool) -> list[str]:
    width, height = (int(v) for v in args.large_size.lower().split("x"))
    print(f"\n== d. large image {width}x{height} RGB (subprocess) ==", flush=True)
    rng = np.random.default_rng([SEED, 99])
    image = large_photo(height, width, rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.npy"
        np.save(path, image)
        del image
        weight_arg = "auto" if auto else repr(weight)
        cmd = [sys.executable, __file__, "--_large-worker", str(path), weight_arg]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"large-image worker failed with exit code {out.returncode}")
    stats: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    bare = bare_torch_rss_kb()
    image_mb = stats["image_bytes"] / MIB
    above_bare = (stats["peak_kb"] - bare) / 1024
    solver = (stats["peak_kb"] - stats["before_kb"]) / 1024
    multiple = above_bare / image_mb
    per_iter = stats["solve_seconds"] / stats["solve_iterations"]
    marginal = (stats["solve_seconds"] - stats["short_seconds"]) / (
        stats["solve_iterations"] - stats["short_iterations"]
    )
    fixed = stats["solve_seconds"] - stats["solve_iterations"] * marginal
    arrays = 7  # read u, f, m, v; write u, m, v
    bound = arrays * stats["image_bytes"] / stats["copy_bytes_per_s"]
    rows = [
        ["weight", f"{stats['weight']:.4g}" + (" (auto)" if auto else "")],
        ["float32 image size", f"{image_mb:.0f} MiB"],
        ["bare `import torch` peak RSS", f"{bare / 1024:.0f} MiB"],
        ["peak RSS above bare torch", f"{above_bare:.0f} MiB = {multiple:.2f}x image"],
        ["  of which during the solve", f"{solver:.0f} MiB = {solver / image_mb:.2f}x image"],
        ["restore: iterations, total time", f"{stats['iterations']}, {stats['seconds']:.1f} s"],
        [
            "solve at that weight, all iterations",
            f"{stats['solve_iterations']}, {stats['solve_seconds']:.1f} s",
        ],
        ["time per iteration (of that solve)", f"{1e3 * per_iter:.0f} ms"],
        [
            f"  one iteration alone (vs {stats['short_iterations']} iterations)",
            f"{1e3 * marginal:.0f} ms; fixed cost {fixed:.1f} s",
        ],
        ["copy bandwidth (read+write)", f"{stats['copy_bytes_per_s'] / 1e9:.1f} GB/s"],
        [f"bound: {arrays} image-sized arrays / bandwidth", f"{1e3 * bound:.0f} ms"],
        ["time per iteration / bound", f"{per_iter / bound:.2f}x"],
        ["  one iteration alone / bound", f"{marginal / bound:.2f}x"],
        ["torch threads", stats["threads"]],
        ["tiles (automatic)", "none" if stats["tile"] is None else f"{stats['tile']} px"],
    ]
    print(table(rows, ["quantity", "value"]))
    ratio = per_iter / bound
    bars = [
        bar("large_peak_rss_over_image", multiple, "<= 10x", multiple <= 10, "x"),
        bar("large_iteration_time_over_bandwidth_bound", ratio, "<= 3x", ratio <= 3, "x"),
    ]
    if auto and stats["iterations"] == stats["solve_iterations"]:
        # The weight's choice on a large photograph: the restore beyond the solve alone,
        # both with the same iterations.
        choice = max(stats["seconds"] - stats["solve_seconds"], 0.0) / stats["solve_seconds"]
        name = f"weight_choice_over_final_solve[{width}x{height}] (issue 17)"
        bars.append(bar(name, choice, "<= 1", choice <= 1.0))
    return bars


# ---------------------------------------------------------------------------------------
# e: start-up
# ---------------------------------------------------------------------------------------


def wall_time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_startup(args: argparse.Namespace) -> list[str]:
    print("\n== e. start-up (subprocess wall time, median of 5) ==", flush=True)
    rng = np.random.default_rng([SEED, 7])
    image = add_noise(fit_crop(photo("astronaut"), 512, 512, rng), SIGMA, rng)
    command = tvdenoise_command()
    times: dict[str, list[float]] = {"cmd": [], "help": [], "torch": [], "bare": [], "pkg": []}
    bare_torch = "import os, torch; os._exit(0)"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "noisy.png"
        save_png(src, image)
        for i in range(5):  # interleaved, so that a change of load falls on all alike
            out = str(Path(tmp) / f"out{i}.png")
            times["cmd"].append(wall_time([*command, str(src), "-o", out]))
            times["help"].append(wall_time([*command, "--help"]))
            times["torch"].append(wall_time([sys.executable, "-c", "import torch"]))
            times["bare"].append(wall_time([sys.executable, "-c", bare_torch]))
            times["pkg"].append(wall_time([sys.executable, "-c", "import tvdenoise.cli"]))
    t_cmd, t_help, t_torch, t_bare, t_pkg = (statistics.median(times[k]) for k in times)
    rows: list[list[object]] = [
        ["tvdenoise noisy.png -o out.png (512x512)", f"{t_cmd:.2f}", "100%"],
        ["tvdenoise --help", f"{t_help:.2f}", f"{100 * t_help / t_cmd:.0f}%"],
        ['python -c "import torch"', f"{t_torch:.2f}", f"{100 * t_torch / t_cmd:.0f}%"],
        [f'python -c "{bare_torch}"', f"{t_bare:.2f}", f"{100 * t_bare / t_cmd:.0f}%"],
        ['python -c "import tvdenoise.cli"', f"{t_pkg:.2f}", f"{100 * t_pkg / t_cmd:.0f}%"],
    ]
    print(table(rows, ["command", "seconds", "share"]))
    beyond = t_cmd - t_torch
    print(f"the command beyond the import without its teardown: {t_cmd - t_bare:.2f} s")
    return [
        bar("startup_help_seconds", t_help, "<= 0.3 s", t_help <= 0.3, " s"),
        bar("startup_one_image_beyond_import_torch", beyond, "<= 0.5 s", beyond <= 0.5, " s"),
    ]


# ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="side of the photographs (512)")
    parser.add_argument(
        "--photos", nargs="+", default=["astronaut", "coffee"], choices=PHOTOS, metavar="NAME"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per method (5)")
    parser.add_argument("--grid", type=int, default=9, help="coarse grid points per search (9)")
    parser.add_argument("--recipe-iters", type=int, default=500, help="recipe iterations (500)")
    parser.add_argument(
        "--ref-tol", type=float, default=1e-4, help="RMS certificate of the exact solver (1e-4)"
    )
    parser.add_argument("--large", action="store_true", help="run section d (large image)")
    parser.add_argument("--large-size", default="6000x4000", help="WIDTHxHEIGHT (6000x4000)")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="profile N solver iterations"
    )
    parser.add_argument("--no-startup", action="store_true", help="skip section e")
    parser.add_argument("--all", action="store_true", help="every section, the large one too")
    parser.add_argument("--_large-worker", nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args._large_worker:
        large_worker(*args._large_worker)
        return
    with recording("bench_speed"):
        run(args)


def run(args: argparse.Namespace) -> None:
    """Every section asked for, printed; the BAR lines last."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"tvdenoise {tvdenoise.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, "
        f"load average {'n/a' if load is None else f'{load[0]:.2f}'}"
    )
    auto = auto_weight_supported()
    if not auto:
        print("weight='auto' is not supported by this tvdenoise: using its best grid weight")
    bars: list[str] = []
    weight = 0.0
    for i, name in enumerate(args.photos):
        _, photo_bars, w = bench_photo(name, args, auto, with_recipe=i == 0)
        bars += photo_bars
        weight = weight or w
    if args.large or args.all:
        bars += bench_large(args, weight, auto)
    if not args.no_startup:
        bars += bench_startup(args)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\nload average at the end: {'n/a' if load is None else f'{load[0]:.2f}'}")
    print("\n".join(bars))


if __name__ == "__main__":
    main()
