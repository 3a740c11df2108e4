"""Throughput on a folder of images: the ``tvdenoise`` command against scikit-image (issue 3).

Run from the repository root::

    python benchmarks/bench_batch.py                       # 32 RGB images of 512x512
    python benchmarks/bench_batch.py --count 4 --size 128  # a quick smoke run

It writes ``--count`` noisy RGB PNGs (Gaussian noise, sigma = 25 on the 8-bit scale, added to
crops of several bundled scikit-image photographs) into a temporary folder, then

* runs the ``tvdenoise`` command on the folder twice (a subprocess, default settings and
  ``--batch-size``), timing it from start to exit, Python and torch start-up included: with
  the automatic weight, and with a fixed ``--weight``, its best on the first image;
* runs, in this Python process, a per-file loop of scikit-image's ``denoise_tv_chambolle``
  (read the PNG, denoise at its best weight for this noise level, write a PNG), the best
  weight being found beforehand by a grid search on the first image (not timed);

and prints images/s of each, the ratios and the mean PSNR of the written 8-bit outputs
against the clean crops, with one ``BAR`` line per bar, and records the table in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_speed as common  # shared helpers beside this file
from results import record


def make_images(
    folder: Path, count: int, size: int, sigma: float, seed: int
) -> dict[str, np.ndarray]:
    """Write ``count`` noisy PNGs into ``folder``; return the clean crops by file name."""
    rng = np.random.default_rng(seed)
    photos = [common.photo(name) for name in common.PHOTOS]
    clean = {}
    for i in range(count):
        image = common.fit_crop(photos[i % len(photos)], size, size, rng)
        if rng.random() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
        name = f"img{i:03d}.png"
        common.save_png(folder / name, common.add_noise(image, sigma, rng))
        clean[name] = image
    return clean


def mean_psnr(folder: Path, clean: dict[str, np.ndarray]) -> float:
    scores = []
    for name, reference in clean.items():
        restored = common.to_unit(common.load_png(folder / name))
        scores.append(common.psnr(restored, common.to_unit(reference)))
    return float(np.mean(scores))


def skimage_loop(src: Path, dst: Path, weight: float) -> float:
    """Load, denoise and save every PNG in ``src``, one by one; returns the seconds taken."""
    start = time.perf_counter()
    for path in sorted(src.glob("*.png")):
        noisy = common.to_unit(common.load_png(path))
        restored = common.skimage_chambolle(noisy, weight)
        common.save_png(dst / path.name, np.clip(np.round(restored * 255), 0, 255).astype(np.uint8))
    return time.perf_counter() - start


def best_cli_weight(noisy: np.ndarray, clean: np.ndarray) -> float:
    """The command's best fixed weight on one image (a grid search on PSNR), as
    scikit-image gets its own."""
    s_cham = common.best_weight(
        lambda w: common.psnr(common.skimage_chambolle(noisy, w), clean), 0.02, 0.5, coarse=7
    )[0]
    return common.ours_weight_grid(noisy, clean, 2 * s_cham, 7)


def run_cli(src: Path, dst: Path, extra: list[str]) -> float:
    """Run the command on the folder; returns its wall time in seconds."""
    cmd = [*common.tvdenoise_command(), str(src), "-o", f"{dst}{os.sep}", "-q", *extra]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        raise SystemExit(f"{' '.join(cmd)} exited with {out.returncode}")
    return seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=32, help="number of images (32)")
    parser.add_argument("--size", type=int, default=512, help="side of each image (512)")
    parser.add_argument("--sigma", type=float, default=common.SIGMA, help="noise, 8-bit scale")
    parser.add_argument("--seed", type=int, default=common.SEED)
    parser.add_argument("--batch-size", type=int, help="passed to tvdenoise (its default)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each; median (1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = (
        f"{args.count} RGB images {args.size}x{args.size}, sigma {args.sigma:g}/255; torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, "
        f"load average {load:.2f} at the start"
    )
    print(head, flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "noisy"
        src.mkdir()
        clean = make_images(src, args.count, args.size, args.sigma, args.seed)
        first = sorted(clean)[0]
        noisy0 = common.to_unit(common.load_png(src / first))
        clean0 = common.to_unit(clean[first])

        s_weight, _ = common.best_weight(
            lambda w: common.psnr(common.skimage_chambolle(noisy0, w), clean0), 0.02, 0.5
        )
        weight = best_cli_weight(noisy0, clean0)
        print(f"best weights on {first}: skimage {s_weight:.4g}, tvdenoise {weight:.4g}")
        batch = [] if args.batch_size is None else ["--batch-size", str(args.batch_size)]
        variants = {
            "auto": ["--weight", "auto", *batch],
            "fixed": ["--weight", f"{weight:.6g}", *batch],
        }
        times: dict[str, list[float]] = {name: [] for name in [*variants, "skimage"]}
        psnrs: dict[str, float] = {}
        for i in range(args.repeat):  # interleaved, so that a change of load hits all
            for name, extra in variants.items():
                dst = tmp / f"{name}{i}"
                times[name].append(run_cli(src, dst, extra))
                psnrs[name] = mean_psnr(dst, clean)
            sk_dst = tmp / f"skimage{i}"
            sk_dst.mkdir()
            times["skimage"].append(skimage_loop(src, sk_dst, s_weight))
            psnrs["skimage"] = mean_psnr(sk_dst, clean)

    rate = {name: args.count / statistics.median(t) for name, t in times.items()}
    labels = {
        "auto": "tvdenoise --weight auto (command)",
        "fixed": f"tvdenoise --weight {weight:.4g} (command)",
        "skimage": f"skimage chambolle float32, weight {s_weight:.4g} (loop)",
    }
    rows = [
        [labels[name], f"{statistics.median(times[name]):.2f}", f"{rate[name]:.2f}",
         f"{rate[name] / rate['skimage']:.2f}x", f"{psnrs[name]:.2f}"]
        for name in labels
    ]  # fmt: skip
    text = common.table(rows, ["method", "seconds", "images/s", "vs skimage", "mean PSNR dB"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    auto, fixed = rate["auto"] / rate["skimage"], rate["fixed"] / rate["skimage"]
    bars = [
        common.bar("batch_fixed_images_per_s/skimage", fixed, ">= 3x", fixed >= 3, "x"),
        common.bar("batch_auto_images_per_s/skimage", auto, ">= 1x", auto >= 1, "x"),
        common.bar(
            "batch_mean_psnr_auto-skimage",
            psnrs["auto"] - psnrs["skimage"],
            ">= 0",
            psnrs["auto"] >= psnrs["skimage"],
            " dB",
        ),
    ]
    report = "\n".join([text, f"load average at the end: {load:.2f}", *bars])
    print(report)
    record(
        "bench_batch",
        f"{head}; median of {args.repeat} interleaved runs. "
        f"`python benchmarks/bench_batch.py {' '.join(argv or sys.argv[1:])}`\n\n"
        f"```\n{report}\n```",
    )


if __name__ == "__main__":
    main()
