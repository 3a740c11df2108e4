"""Measure second-order TGV (``reg="tgv"``) against TV and scikit-image's Chambolle (issue 15).

Images: central ``--size`` crops of scikit-image's bundled samples, float in [0, 1], with
white Gaussian noise of ``sigma`` grey levels (of 255) added and the result clipped to
[0, 1] as an 8-bit file would be. Smooth scientific images: ``cell`` (phase-contrast
micrograph), ``immunohistochemistry`` (stained tissue, RGB), ``hubble_deep_field`` (RGB),
``moon``; photographs: ``astronaut``, ``camera``, ``coffee``.

For every image and noise level the table gives the PSNR (dB) of

* ``tv``: :func:`tvdenoise.restore` with its defaults (automatic weight by SURE);
* ``tgv``: the same with ``reg="tgv"`` (automatic first-order weight by SURE, the
  second-order weight ``DEFAULT_RATIO`` times it);
* ``skimage``: ``skimage.restoration.denoise_tv_chambolle`` on float32 input at its best
  weight (a golden-section search on ``log(weight)`` against the clean image, which a
  user never has; its default stopping tolerance);

and the bars of issue 15: ``tgv - tv >= +0.3 dB`` and ``tgv >= skimage`` on the
scientific images, ``tgv - tv >= -0.05 dB`` on the photographs.

``--ratios`` instead measures the ratio ``alpha0 / alpha1``: for each ratio, the PSNR at
that ratio's best first-order weight (a grid of ratio 2**(1/4) around the TV rule's weight),
averaged over the scientific images at sigma = 25; this chose ``DEFAULT_RATIO``.

Usage::

    python scripts/eval_tgv.py [--size 128] [--jobs 2] [--no-record]
    python scripts/eval_tgv.py --ratios
"""

from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from skimage.restoration import denoise_tv_chambolle

from tvdenoise import restore
from tvdenoise.auto import weight_for_sigma
from tvdenoise.fidelity import data_term
from tvdenoise.solver import DEFAULT_EPS, Iteration, run_solver
from tvdenoise.tgv import DEFAULT_RATIO, TotalGeneralisedVariation

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from eval_noise import load  # the same central crops of bundled images
from results import record

SCIENTIFIC = ("cell", "immunohistochemistry", "hubble_deep_field", "moon")
PHOTOGRAPHS = ("astronaut", "camera", "coffee")
SIGMAS = (15, 25, 50)
PHOTO_SIGMAS = (25,)
RATIOS = (1.0, 2.0, 3.0, 5.0, 8.0, 12.0)


def noisy_image(clean: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (clean + sigma / 255 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)


def psnr(restored: torch.Tensor, clean: torch.Tensor) -> float:
    return float(-10 * torch.log10((restored.float() - clean).square().mean()))


def skimage_best(noisy: torch.Tensor, clean: torch.Tensor) -> float:
    """Best PSNR of ``denoise_tv_chambolle`` over its weight (golden section in log)."""
    array = noisy.numpy().astype(np.float32)
    axis = None if array.shape[0] == 1 else 0
    image = array[0] if axis is None else array

    def score(log_weight: float) -> float:
        out = denoise_tv_chambolle(image, weight=math.exp(log_weight), channel_axis=axis)
        out = out[None] if axis is None else out
        return psnr(torch.from_numpy(np.asarray(out, dtype=np.float32)), clean)

    low, high = math.log(0.005), math.log(1.0)
    golden = (math.sqrt(5) - 1) / 2
    a, b = high - golden * (high - low), low + golden * (high - low)
    fa, fb = score(a), score(b)
    for _ in range(24):
        if fa > fb:
            high, b, fb = b, a, fa
            a = high - golden * (high - low)
            fa = score(a)
        else:
            low, a, fa = a, b, fb
            b = low + golden * (high - low)
            fb = score(b)
    return max(fa, fb)


def case(args: tuple[str, int, int, int]) -> tuple[str, int, float, float, float, float]:
    name, sigma, size, seed = args
    torch.set_num_threads(1)
    clean = load(name, size)
    noisy = noisy_image(clean, sigma, seed)
    tv = psnr(restore(noisy).restored[0], clean)
    tgv = psnr(restore(noisy, reg="tgv").restored[0], clean)
    joint = psnr(restore(noisy, reg="tgv", color="joint").restored[0], clean)
    return name, sigma, tv, tgv, skimage_best(noisy, clean), joint


def ratio_case(args: tuple[str, int, int]) -> list[float]:
    """Best PSNR over the first-order weight, per ratio in ``RATIOS``."""
    name, size, seed = args
    torch.set_num_threads(1)
    clean = load(name, size)
    noisy = noisy_image(clean, 25, seed)
    start = float(weight_for_sigma(25 / 255, channels=clean.shape[0]))
    weights = [start * 2 ** (k / 4) for k in range(-3, 4)]
    best = []
    for ratio in RATIOS:
        reg = TotalGeneralisedVariation(ratio, "joint", DEFAULT_EPS, 2)
        batch = noisy[None].expand(len(weights), *noisy.shape).contiguous()
        out = run_solver(batch, weights, reg, data_term("gaussian"), Iteration()).restored
        best.append(max(psnr(u, clean) for u in out))
    return best


def table(size: int, seed: int, jobs: int) -> str:
    cases = [(n, s, size, seed) for n in SCIENTIFIC for s in SIGMAS]
    cases += [(n, s, size, seed) for n in PHOTOGRAPHS for s in PHOTO_SIGMAS]
    with ProcessPoolExecutor(jobs) as pool:
        rows = list(pool.map(case, cases))
    lines = [
        f"TGV (reg='tgv', ratio {DEFAULT_RATIO:g}) against TV and scikit-image, PSNR in dB, "
        f"{size}x{size} central crops, Gaussian noise (sigma in grey levels of 255), seed "
        f"{seed}; automatic weights for tv and tgv (default colour: opponent for RGB), the "
        "best weight for skimage; the last column is TGV with joint RGB colour.",
        "",
        "| image | sigma | tv (auto) | tgv (auto) | skimage (best) | tgv - tv | tgv - skimage "
        "| bar met | tgv joint (auto) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, sigma, tv, tgv, sk, joint in rows:
        scientific = name in SCIENTIFIC
        met = (tgv - tv >= 0.3 and tgv >= sk) if scientific else tgv - tv >= -0.05
        kind = "" if scientific else " (photo)"
        lines.append(
            f"| {name}{kind} | {sigma} | {tv:.2f} | {tgv:.2f} | {sk:.2f} | {tgv - tv:+.2f} "
            f"| {tgv - sk:+.2f} | {'yes' if met else 'no'} | {joint:.2f} |"
        )
    sci = [r for r in rows if r[0] in SCIENTIFIC]
    photo = [r for r in rows if r[0] not in SCIENTIFIC]
    lines += [
        "",
        f"Scientific images: tgv - tv mean {np.mean([r[3] - r[2] for r in sci]):+.2f} dB "
        f"(min {min(r[3] - r[2] for r in sci):+.2f}); tgv - skimage mean "
        f"{np.mean([r[3] - r[4] for r in sci]):+.2f} dB (min "
        f"{min(r[3] - r[4] for r in sci):+.2f}). Photographs: tgv - tv min "
        f"{min(r[3] - r[2] for r in photo):+.2f} dB.",
    ]
    return "\n".join(lines)


def ratios(size: int, seed: int, jobs: int) -> str:
    with ProcessPoolExecutor(jobs) as pool:
        rows = list(pool.map(ratio_case, [(n, size, seed) for n in SCIENTIFIC]))
    head = " | ".join(f"{r:g}" for r in RATIOS)
    lines = [
        f"TGV ratio alpha0 / alpha1: PSNR (dB) at each ratio's best first-order weight, "
        f"sigma = 25, {size}x{size} crops.",
        "",
        f"| image | {head} |",
        "|---|" + "---|" * len(RATIOS),
    ]
    for name, values in zip(SCIENTIFIC, rows, strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    means = np.mean(rows, axis=0)
    lines.append("| mean | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--ratios", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.ratios:
        text = ratios(args.size, args.seed, args.jobs)
        name = "eval_tgv --ratios"
    else:
        text = table(args.size, args.seed, args.jobs)
        name = "eval_tgv"
    print(text)
    if not args.no_record:
        record(name, text)


if __name__ == "__main__":
    main()
