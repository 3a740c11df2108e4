"""Check the automatic weight against a grid search, on scikit-image's bundled photographs.

For every photograph (an 8-bit centre crop, ``--size`` pixels square) and noise level
``sigma`` in 8-bit levels, the noisy image is made the way an 8-bit camera file would be:
``noisy = clip(round(clean + N(0, sigma)), 0, 255) / 255`` (seeded). Then:

* ``auto``: :func:`tvdenoise.auto.auto_weight` (noise level estimated) and one solve;
* ``rule``: the same with ``method="rule"`` (no SURE refinement), for comparison;
* ``best``: the best fixed weight for that very image, from a grid search on PSNR against
  the clean image: weights ``sigma * 2**(k/2)``, ``k = -4..6``, then halving the step
  twice around the best (final ratio ``2**(1/8)``). For ``sigma = 0`` there is nothing to
  search; the row reports how much the auto weight changes the clean image.

All solves use the library defaults of :func:`tvdenoise.solve`. The table lists per image
and sigma: the estimated sigma (levels), the auto weight, PSNR of auto / rule / best, the
best weight, the gaps ``best - auto`` and ``best - rule`` and the noisy PSNR; then a
summary: max and mean gap over ``--sigmas`` > 0, the worst cases, the number of results
below the noisy PSNR and the smallest PSNR on the clean images.

Usage::

    python scripts/eval_auto_weight.py                      # isotropic, joint
    python scripts/eval_auto_weight.py --tv anisotropic
    python scripts/eval_auto_weight.py --color separate --images astronaut,coffee
    python scripts/eval_auto_weight.py --size 512 --sigmas 0,25
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage import data

from tvdenoise.auto import auto_weight
from tvdenoise.solver import solve

# The generated results file (benchmarks/RESULTS.md) and how to write it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from results import recording

IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "brick", "gravel")
EXTRA = ("grass", "cell")
SIGMAS = (0, 5, 10, 15, 25, 35, 50)


@dataclass
class Row:
    name: str
    channels: int
    sigma: int
    estimate: float
    weight: float
    psnr_auto: float
    psnr_rule: float
    psnr_best: float
    weight_best: float
    psnr_noisy: float
    seconds: float
    seconds_solve: float


def load(name: str, size: int) -> torch.Tensor:
    """Centre crop of a bundled image, float64 (C, H, W) in 8-bit levels."""
    array = np.asarray(getattr(data, name)())
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)[:3]
    h, w = array.shape[1:]
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    array = array[:, top : top + size, left : left + size]
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float64)


def add_noise(clean: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """8-bit noisy image on [0, 1]: noise added in levels, rounded, clipped."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    return ((clean + sigma * noise).round().clamp(0, 255) / 255).to(torch.float32)


def psnr(restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of a batch, peak 1."""
    mse = (restored.to(torch.float64) - clean).square().flatten(1).mean(1)
    return -10 * torch.log10(mse)


def run(noisy: torch.Tensor, weights: list[float], args: argparse.Namespace) -> torch.Tensor:
    """Restored copies of ``noisy``, one per weight, ``(K, C, H, W)``."""
    batch = noisy.expand(len(weights), *noisy.shape).contiguous()
    result = solve(batch, torch.tensor(weights), tv=args.tv, color=args.color)
    return result.restored


def grid_search(
    noisy: torch.Tensor, clean: torch.Tensor, sigma: float, args: argparse.Namespace
) -> tuple[float, float]:
    """Best (psnr, weight) over ``sigma * 2**(k/2)`` refined twice to ratio ``2**(1/8)``."""
    scores: dict[float, float] = {}

    def score(ratios: list[float]) -> None:
        new = [r for r in ratios if r not in scores]
        if new:
            values = psnr(run(noisy, [r * sigma for r in new], args), clean)
            scores.update(zip(new, values.tolist(), strict=True))

    score([2 ** (k / 2) for k in range(-4, 7)])
    for step in (2 ** (1 / 4), 2 ** (1 / 8)):
        best = max(scores, key=scores.__getitem__)
        score([best / step, best * step])
    best = max(scores, key=scores.__getitem__)
    return scores[best], best * sigma


def evaluate(name: str, sigma: int, args: argparse.Namespace) -> Row:
    clean8 = load(name, args.size)
    clean = clean8 / 255
    noisy = add_noise(clean8, sigma, args.seed)
    start = time.perf_counter()
    weights, sigmas = auto_weight(noisy, tv=args.tv, color=args.color)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    restored = run(noisy, [float(weights[0])], args)
    seconds_solve = time.perf_counter() - start
    rule, _ = auto_weight(noisy, tv=args.tv, color=args.color, method="rule")
    p_auto = float(psnr(restored, clean[None])[0])
    p_rule = float(psnr(run(noisy, [float(rule[0])], args), clean[None])[0])
    if sigma > 0:
        p_best, w_best = grid_search(noisy, clean[None], sigma / 255, args)
    else:
        p_best, w_best = float("inf"), 0.0
    return Row(
        name,
        clean8.shape[0],
        sigma,
        255 * float(sigmas[0]),
        float(weights[0]),
        p_auto,
        p_rule,
        p_best,
        w_best,
        float(psnr(noisy[None], clean[None])[0]),
        seconds,
        seconds_solve,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=",".join(IMAGES), help="comma-separated names")
    parser.add_argument("--extra", action="store_true", help=f"add {', '.join(EXTRA)}")
    parser.add_argument("--sigmas", default=",".join(map(str, SIGMAS)), help="8-bit levels")
    parser.add_argument("--size", type=int, default=256, help="crop side in pixels")
    parser.add_argument("--tv", choices=("isotropic", "anisotropic"), default="isotropic")
    parser.add_argument("--color", choices=("joint", "separate"), default="joint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.images.split(",") + (list(EXTRA) if args.extra else [])
    sigmas = [int(s) for s in args.sigmas.split(",")]

    print(f"# tv={args.tv} color={args.color} size={args.size} seed={args.seed}")
    header = (
        f"{'image':>10} {'C':>1} {'sigma':>5} {'est':>6} {'w_auto':>7} {'auto':>6} "
        f"{'rule':>6} {'best':>6} {'w_best':>7} {'gap':>5} {'gap_r':>5} {'noisy':>6} "
        f"{'t_auto':>6} {'t_solve':>7}"
    )
    print(header)
    rows: list[Row] = []
    for name in names:
        for sigma in sigmas:
            row = evaluate(name, sigma, args)
            rows.append(row)
            gap = row.psnr_best - row.psnr_auto if sigma else float("nan")
            gap_r = row.psnr_best - row.psnr_rule if sigma else float("nan")
            best = f"{row.psnr_best:6.2f}" if sigma else f"{'-':>6}"
            print(
                f"{row.name:>10} {row.channels:>1} {sigma:>5} {row.estimate:6.2f} "
                f"{row.weight:7.4f} {row.psnr_auto:6.2f} {row.psnr_rule:6.2f} {best} "
                f"{row.weight_best:7.4f} {gap:5.2f} {gap_r:5.2f} {row.psnr_noisy:6.2f} "
                f"{row.seconds:6.2f} {row.seconds_solve:7.2f}",
                flush=True,
            )

    noisy_rows = [r for r in rows if r.sigma > 0]
    clean_rows = [r for r in rows if r.sigma == 0]
    print("\n## summary")
    for label, attr in (("auto (SURE)", "psnr_auto"), ("rule only", "psnr_rule")):
        if not noisy_rows:
            break
        gaps = [r.psnr_best - getattr(r, attr) for r in noisy_rows]
        worst = sorted(zip(gaps, noisy_rows, strict=True), key=lambda g: -g[0])[:3]
        below = sum(getattr(r, attr) < r.psnr_noisy for r in noisy_rows)
        print(
            f"{label:>12}: max gap {max(gaps):.3f} dB, mean gap {np.mean(gaps):.3f} dB, "
            f"below noisy {below}/{len(noisy_rows)}; worst: "
            + ", ".join(f"{r.name}@{r.sigma} {g:.2f}" for g, r in worst)
        )
    if clean_rows:
        low = min(clean_rows, key=lambda r: r.psnr_auto)
        print(
            f"{'clean':>12}: min PSNR vs original {low.psnr_auto:.2f} dB ({low.name}, "
            f"est {low.estimate:.2f}/255)"
        )
    if noisy_rows:
        ratios = [r.weight_best / (r.sigma / 255) for r in noisy_rows]
        print(
            f"{'best w/sigma':>12}: median {np.median(ratios):.3f} "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}); compare the rule's gain"
        )
    t_auto = np.array([r.seconds for r in rows])
    t_solve = np.array([r.seconds_solve for r in rows])
    print(
        f"{'time':>12}: auto_weight {t_auto.mean():.2f} s mean ({t_auto.max():.2f} max), "
        f"one solve {t_solve.mean():.3f} s mean; ratio {t_auto.sum() / t_solve.sum():.1f}x"
    )


if __name__ == "__main__":
    with recording(Path(__file__).stem):
        main()
