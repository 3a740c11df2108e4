"""Measure opponent-space colour TV against today's joint RGB TV (issue 15, part 1).

For each colour photograph bundled with scikit-image (a central ``--size`` crop, float in
[0, 1]) and each noise level sigma in {10, 25, 50} grey levels, the noisy image is
``round(clip(255 * clean + sigma * n, 0, 255)) / 255`` (8-bit, clipped). It is restored

* with ``color="joint"`` at its automatic weight (the default before opponent colour),
* with ``color="opponent"`` at its automatic weights (SURE per component),
* with ``color="opponent"`` at the best pair of weights: by the exact split, the best
  brightness weight and the best colour weight are each found on their own 1-D grid
  (ratio ``2**(1/4)``, refined by a parabola through the best three points) by the error
  of that component in the opponent space; the pair's PSNR is measured after the
  transform back and the clip to [0, 1].

The table gives the PSNRs, the gain of opponent-auto over joint-auto and the gap of the
automatic weights to the best pair; the summary gives the bars of issue 15, the medians of
the best weights over sigma (the rules ``BRIGHTNESS_GAIN`` and ``CHROMA_GAIN`` of
:mod:`tvdenoise.colour`) and the median ratio of the best colour weight to the best
brightness weight (``CHROMA_RATIO``). The results go to ``benchmarks/RESULTS.md``.

Usage::

    python scripts/eval_colour.py [--images astronaut,coffee] [--size 256] [--jobs 3]
"""

from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from tvdenoise import restore
from tvdenoise.auto import _vertex, solve_at_weights
from tvdenoise.colour import CHROMA, LIGHT, from_opponent, to_opponent
from tvdenoise.tv import TotalVariation

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from eval_noise import load  # the same central crops of bundled images
from results import record

IMAGES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
)
SIGMAS = (10, 25, 50)
RATIO = 2.0 ** (1.0 / 4.0)
# Grids of weight / sigma searched for the best pair.
BRIGHTNESS_RANGE = (0.6, 3.4)
COLOUR_RANGE = (1.2, 13.6)
SEED = 0


def add_noise(clean: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noisy = 255 * clean + sigma * torch.randn(clean.shape, generator=gen)
    return noisy.clamp(0, 255).round() / 255


def psnr(restored: torch.Tensor, clean: torch.Tensor) -> float:
    return float(-10 * torch.log10((restored.double() - clean.double()).square().mean()))


def grid(low: float, high: float) -> list[float]:
    n = math.ceil(math.log(high / low) / math.log(RATIO)) + 1
    return [low * RATIO**k for k in range(n)]


def best_pair(noisy: torch.Tensor, clean: torch.Tensor, sigma: float) -> tuple[float, float, float]:
    """The best (brightness weight, colour weight) by the two 1-D grids, and its PSNR."""
    f, x = to_opponent(noisy[None]), to_opponent(clean[None]).double()
    reg = TotalVariation(eps=3e-3)
    chosen: list[tuple[float, torch.Tensor]] = []
    for channels, (low, high) in ((LIGHT, BRIGHTNESS_RANGE), (CHROMA, COLOUR_RANGE)):
        part, target = f[:, channels].contiguous(), x[0, channels]
        weights = grid(low * sigma, high * sigma)
        solved = solve_at_weights(part, weights, reg, clip=False)[:, 0]
        errors = (solved - target).square().flatten(1).sum(1)
        k = int(errors.argmin())
        if k in (0, len(weights) - 1):
            print(f"  note: best weight at the edge of the grid ({channels})", flush=True)
        best = (float(errors[k]), weights[k], solved[k])
        if 0 < k < len(weights) - 1:
            # The parabola through the best three points, in log(weight).
            weight = weights[k] * RATIO ** float(_vertex(*errors[k - 1 : k + 2]))
            refined = solve_at_weights(part, [weight], reg, clip=False)[0, 0]
            error = float((refined - target).square().sum())
            best = min(best, (error, weight, refined), key=lambda item: item[0])
        chosen.append(best[1:])
    both = torch.cat([chosen[0][1], chosen[1][1]]).to(torch.float32)[None]
    restored = from_opponent(both).clamp(0, 1)[0]
    return chosen[0][0], chosen[1][0], psnr(restored, clean)


def measure(name: str, level: int, size: int, threads: int) -> dict[str, float]:
    """One photograph at one noise level: the PSNRs and weights of the table."""
    torch.set_num_threads(threads)
    clean = load(name, size)
    sigma = level / 255
    noisy = add_noise(clean, level, SEED)
    joint = restore(noisy, color="joint")
    opp = restore(noisy, color="opponent")
    assert opp.chroma_weights is not None
    w_l, w_c, p_best = best_pair(noisy, clean, sigma)
    return {
        "joint": psnr(joint.restored[0], clean),
        "opponent": psnr(opp.restored[0], clean),
        "best": p_best,
        "auto_l": float(opp.weights[0]),
        "auto_c": float(opp.chroma_weights[0]),
        "best_l": w_l,
        "best_c": w_c,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=",".join(IMAGES))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--jobs", type=int, default=1, help="conditions measured at once")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    header = (
        "| image | sigma | joint auto | opponent auto | gain | best pair | gap "
        "| w_L auto / best | w_C auto / best |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows = [header]
    print(header, flush=True)
    gains: list[float] = []
    gaps: list[float] = []
    gains_by_sigma: dict[int, list[float]] = {}
    light_gain, colour_gain, ratio = [], [], []
    conditions = [(name, level) for name in args.images.split(",") for level in SIGMAS]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(measure, name, level, args.size, args.threads) for name, level in conditions
        ]
        for (name, level), future in zip(conditions, futures, strict=True):
            m = future.result()
            sigma = level / 255
            gain = m["opponent"] - m["joint"]
            gains.append(gain)
            gains_by_sigma.setdefault(level, []).append(gain)
            gaps.append(m["best"] - m["opponent"])
            light_gain.append(m["best_l"] / sigma)
            colour_gain.append(m["best_c"] / sigma)
            ratio.append(m["best_c"] / m["best_l"])
            row = (
                f"| {name} | {level} | {m['joint']:.2f} | {m['opponent']:.2f} | {gain:+.2f} "
                f"| {m['best']:.2f} | {m['best'] - m['opponent']:.2f} "
                f"| {m['auto_l']:.3f} / {m['best_l']:.3f} "
                f"| {m['auto_c']:.3f} / {m['best_c']:.3f} |"
            )
            rows.append(row)
            print(row, flush=True)
    per_sigma = ", ".join(
        f"sigma {s}: {np.mean(g):+.2f} dB" for s, g in sorted(gains_by_sigma.items())
    )
    summary = [
        "```",
        f"BAR mean gain of opponent auto over joint auto >= +0.7 dB: {np.mean(gains):+.2f} dB "
        f"({per_sigma})",
        f"BAR no image loses >= 0.1 dB: worst gain {min(gains):+.2f} dB",
        f"BAR automatic weights within 0.2 dB of the best pair: worst gap {max(gaps):.2f} dB "
        f"(mean {np.mean(gaps):.2f})",
        f"median best w_L / sigma {np.median(light_gain):.2f}, "
        f"w_C / sigma {np.median(colour_gain):.2f}, w_C / w_L {np.median(ratio):.2f} "
        f"(range {min(ratio):.2f}-{max(ratio):.2f})",
        "```",
    ]
    print("\n".join(summary))
    if not args.no_record:
        intro = (
            f"{args.size}x{args.size} central crops, 8-bit Gaussian noise (clipped), seed "
            f"{SEED}; PSNR in dB. `python scripts/eval_colour.py`"
        )
        record("eval_colour", "\n".join([intro, "", *rows, "", *summary]))


if __name__ == "__main__":
    main()
