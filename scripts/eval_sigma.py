"""Compare noise-level estimators on scikit-image's bundled photographs.

Each photograph (8-bit) gets noise the way an 8-bit camera file would:
``noisy = clip(round(clean + N(0, sigma)), 0, 255) / 255``, seeded. The script prints,
for every candidate, a table of estimates (in 8-bit levels) per image and sigma with the
relative error, then a summary: worst and mean relative error for 10 <= sigma <= 50
(with and without ``grass``, whose clean image already holds fine texture that reads as
about 8-12 levels of noise), the worst error at sigma = 5 and the largest estimate on the
clean images.

Candidates:

* ``immerkaer``: Immerkaer (1996), mean |I * M| * sqrt(pi/2) / 6 per channel, median of
  channels.
* ``immerkaer_sat``: the same, skipping pixels whose 3x3 neighbourhood holds a 0 or 1.
* ``haar_mad``: Donoho's MAD on the finest diagonal Haar detail, median |HH| / 0.6745.
* ``haar_mad_sat``: the same, skipping 2x2 cells that hold a 0 or 1.
* ``lap_mad_band``: the unit-norm Immerkaer residual, median |r| / 0.6745 over pixels whose
  local mean is 2 pilot sigmas inside (0, 1) (the clipping rule of ``estimate_sigma``).
* ``estimate_sigma``: the library's estimator (the spectrum of weakly textured 8x8
  patches away from clipping; see ``tvdenoise.sigma``). The previous library estimator,
  the 10th percentile of 8x8 block variances of the residual in the clipping band, is in
  the git history (before the patch-PCA commit), with its figures.

What it prints is also written to ``benchmarks/RESULTS.md`` (its ``eval_sigma`` section).

Usage::

    python scripts/eval_sigma.py [--images astronaut,camera] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data

from tvdenoise.sigma import estimate_sigma

# The generated results file (benchmarks/RESULTS.md) and how to write it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from results import recording

IMAGES = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "brick",
    "grass",
    "gravel",
    "moon",
    "text",
    "page",
    "coins",
    "clock",
    "colorwheel",
)
SIGMAS = (0, 5, 10, 15, 25, 35, 50)
BAR_SIGMAS = (10, 15, 25, 35, 50)
_LAP = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def load(name: str) -> torch.Tensor:
    """Bundled skimage image as a float64 tensor (C, H, W) in 8-bit levels."""
    array = np.asarray(getattr(data, name)())
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)[:3]
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float64)


def add_noise(clean: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """8-bit noisy image on [0, 1]: noise added in levels, rounded, clipped."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    return ((clean + sigma * noise).round().clamp(0, 255) / 255).to(torch.float32)


def _not_near_saturation(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    saturated = ((x <= 0) | (x >= 1)).to(torch.float32)[:, None]
    return (F.max_pool2d(saturated, size, stride=stride) == 0)[:, 0]


def immerkaer(x: torch.Tensor, skip_saturated: bool = False) -> float:
    """Immerkaer's fast estimator, (C, H, W) -> sigma; median over channels."""
    response = F.conv2d(x[:, None], _LAP.view(1, 1, 3, 3))[:, 0]
    keep = _not_near_saturation(x, 3, 1) if skip_saturated else torch.ones_like(response) > 0
    per_channel = [
        math.sqrt(math.pi / 2) / 6 * response[ch][keep[ch]].abs().mean().item()
        for ch in range(x.shape[0])
    ]
    return float(np.median(per_channel))


def haar_mad(x: torch.Tensor, skip_saturated: bool = False) -> float:
    """Donoho's MAD estimator on the finest diagonal Haar detail, pooled over channels."""
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    y = x[:, :h, :w]
    detail = (y[:, 0::2, 0::2] - y[:, 0::2, 1::2] - y[:, 1::2, 0::2] + y[:, 1::2, 1::2]) / 2
    if skip_saturated:
        detail = detail[_not_near_saturation(y, 2, 2)]
    return detail.abs().median().item() / 0.6745


def lap_mad_band(x: torch.Tensor) -> float:
    """Median |unit-norm Immerkaer residual| over pixels safely inside (0, 1)."""
    residual = F.conv2d(x[:, None], _LAP.view(1, 1, 3, 3) / 6)[:, 0]
    pilot = residual[_not_near_saturation(x, 3, 1)].abs().median().item() / 0.6745
    local = F.avg_pool2d(x[:, None], 5, stride=1, padding=2, count_include_pad=False)
    local = local[:, 0, 1:-1, 1:-1]
    keep = (local > 2 * pilot) & (local < 1 - 2 * pilot)
    return residual[keep].abs().median().item() / 0.6745


METHODS: dict[str, Callable[[torch.Tensor], float]] = {
    "immerkaer": immerkaer,
    "immerkaer_sat": lambda x: immerkaer(x, skip_saturated=True),
    "haar_mad": haar_mad,
    "haar_mad_sat": lambda x: haar_mad(x, skip_saturated=True),
    "lap_mad_band": lap_mad_band,
    "estimate_sigma": lambda x: float(estimate_sigma(x)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=",".join(IMAGES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.images.split(",")

    results: dict[str, dict[tuple[str, int], float]] = {m: {} for m in METHODS}
    for name in names:
        clean = load(name)
        for sigma in SIGMAS:
            noisy = add_noise(clean, sigma, args.seed)
            for method, estimator in METHODS.items():
                results[method][(name, sigma)] = 255 * estimator(noisy)

    def rel(method: str, name: str, sigma: int) -> float:
        return results[method][(name, sigma)] / sigma - 1

    for method in METHODS:
        print(f"\n## {method}: estimate in 8-bit levels (relative error)")
        print(f"{'image':>20} " + " ".join(f"{'s=' + str(s):>14}" for s in SIGMAS))
        for name in names:
            cells = []
            for s in SIGMAS:
                est = results[method][(name, s)]
                cells.append(
                    f"{est:6.2f}" + (f" ({100 * rel(method, name, s):+5.1f}%)" if s else " " * 9)
                )
            print(f"{name:>20} " + " ".join(f"{c:>14}" for c in cells))

    print("\n## summary (relative error, 10 <= sigma <= 50)")
    print(
        f"{'method':>16} {'max':>7} {'mean':>7} {'max*':>7} {'mean*':>7} "
        f"{'max@5':>7} {'max@5*':>7} {'clean max':>9} {'clean max*':>10}"
    )
    others = [n for n in names if n != "grass"]
    for method in METHODS:
        row: list[float] = []
        for subset in (names, others):
            errors = [abs(rel(method, n, s)) for n in subset for s in BAR_SIGMAS]
            row += [100 * max(errors), 100 * float(np.mean(errors))]
        at5 = [max(abs(rel(method, n, 5)) * 100 for n in subset) for subset in (names, others)]
        at0 = [max(results[method][(n, 0)] for n in subset) for subset in (names, others)]
        print(
            f"{method:>16} {row[0]:6.1f}% {row[1]:6.1f}% {row[2]:6.1f}% {row[3]:6.1f}% "
            f"{at5[0]:6.1f}% {at5[1]:6.1f}% {at0[0]:9.2f} {at0[1]:10.2f}"
        )
    print("(* = without grass; clean = estimate on the noise-free 8-bit image, in levels)")


if __name__ == "__main__":
    with recording(Path(__file__).stem):
        main()
