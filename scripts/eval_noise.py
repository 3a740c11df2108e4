"""Measure the impulse and Poisson noise models against the Gaussian one (issue 6).

For each photograph (a central 256x256 crop of a scikit-image sample, float in [0, 1]):

* salt-and-pepper noise: each value, independently, replaced with probability ``p`` by 0
  or 1 (equally likely), ``p`` in {10 %, 30 %};
* Poisson noise: ``clip(Poisson(peak * clean) / peak, 0, 1)`` with ``peak`` in {10, 30}
  photons at full scale (a file clips what exceeds full scale).

Each noisy image is restored with ``noise="gaussian"`` and with its own model
(``"impulse"`` / ``"poisson"``) over a geometric grid of weights (ratio 1.12, every weight
in one batched :func:`tvdenoise.solve` call with the default settings), and with the
model's automatic weight (:func:`tvdenoise.noise_weight.auto_weight_for_noise`; the peak is
estimated, not given). The table reports the best PSNR of each model, the difference, the
automatic weight's PSNR and its gap to the best. Calibration images (the rules were fitted
on them) are marked ``*``; the others are held out.

``--photons`` measures what ``noise="poisson"`` returns with its automatic settings
(:func:`tvdenoise.restore`: per image the Poisson model, the Gaussian one or the Gaussian
one on the Anscombe transform, whichever scores best on held-out photons; the peak
estimated) against the Gaussian model at its best weight, at 10 and 30 photons, and
records the table in ``benchmarks/RESULTS.md``. For reference it also gives the best
PSNR of the Poisson model and of the Anscombe estimator (at the true peak) over their
grids.

``--convergence`` instead prints the RMS distance of the Adam result (default settings)
to the certified minimiser (:func:`tvdenoise.reference.reference_solve`) on 64x64 crops,
at the automatic weights.

Usage::

    python scripts/eval_noise.py [--images astronaut,camera] [--seed 0] [--threads 1]
    python scripts/eval_noise.py --photons [--jobs 2]
    python scripts/eval_noise.py --convergence
"""

from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from skimage import data

from tvdenoise import restore, solve
from tvdenoise.anscombe import anscombe, inverse_anscombe
from tvdenoise.noise_weight import auto_weight_for_noise
from tvdenoise.reference import reference_solve

# The generated results file (benchmarks/RESULTS.md) and how to write it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from results import record, recording

CALIBRATION = ("astronaut", "camera", "coffee", "chelsea")
HELD_OUT = ("rocket", "brick", "cell", "coins")
CONDITIONS = (("impulse", 0.1), ("impulse", 0.3), ("poisson", 10.0), ("poisson", 30.0))
RATIO = 1.12
# Weight ranges searched, per (model used, noise simulated).
RANGES = {
    ("impulse", "impulse"): (0.2, 2.5),
    ("gaussian", "impulse"): (0.1, 2.5),
    ("poisson", "poisson"): (0.3, 5.0),
    ("gaussian", "poisson"): (0.05, 1.5),
    ("anscombe", "poisson"): (0.05, 1.5),
}


def load(name: str, size: int) -> torch.Tensor:
    """Central ``size`` x ``size`` crop of a bundled image, ``(C, H, W)`` float32 in [0, 1]."""
    array = np.asarray(getattr(data, name)())
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)[:3]
    _, h, w = array.shape
    top, left = (h - size) // 2, (w - size) // 2
    crop = np.ascontiguousarray(array[:, top : top + size, left : left + size])
    return torch.from_numpy(crop).to(torch.float32) / 255


def add_noise(clean: torch.Tensor, noise: str, level: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if noise == "impulse":
        hit = torch.rand(clean.shape, generator=gen) < level
        value = (torch.rand(clean.shape, generator=gen) < 0.5).to(clean.dtype)
        return torch.where(hit, value, clean)
    counts = torch.poisson(clean.double() * level, generator=gen)
    return (counts / level).clamp(0, 1).to(torch.float32)


def psnr(restored: torch.Tensor, clean: torch.Tensor) -> float:
    return float(-10 * torch.log10((restored - clean).square().mean()))


def grid(low: float, high: float) -> torch.Tensor:
    n = math.ceil(math.log(high / low) / math.log(RATIO)) + 1
    return low * RATIO ** torch.arange(n, dtype=torch.float64)


def sweep(noisy: torch.Tensor, clean: torch.Tensor, model: str, sim: str) -> tuple[float, float]:
    """Best (weight, PSNR) of ``model`` over its grid."""
    weights = grid(*RANGES[(model, sim)]).to(torch.float32)
    batch = noisy.expand(len(weights), -1, -1, -1)
    restored = solve(batch, weights, noise=model).restored  # type: ignore[arg-type]
    scores = [psnr(r, clean) for r in restored]
    best = int(np.argmax(scores))
    return float(weights[best]), scores[best]


def default_colour_sweep(noisy: torch.Tensor, clean: torch.Tensor) -> float:
    """Best PSNR of ``noise="gaussian"`` with its default colour (opponent for RGB, the
    colour weight the default ratio times the brightness weight) over the weight grid."""
    weights = grid(*RANGES[("gaussian", "poisson")]).to(torch.float32)
    batch = noisy.expand(len(weights), -1, -1, -1)
    restored = restore(batch, weights, noise="gaussian").restored
    return max(psnr(r, clean) for r in restored)


def anscombe_sweep(noisy: torch.Tensor, clean: torch.Tensor, peak: float) -> float:
    """Best PSNR of the Gaussian model on the Anscombe transform (at the true ``peak``)."""
    weights = grid(*RANGES[("anscombe", "poisson")]).to(torch.float32)
    z = anscombe(noisy, peak).expand(len(weights), -1, -1, -1)
    solved = solve(z, weights).restored  # clipped at 1, where z is at most 1 anyway
    return max(psnr(inverse_anscombe(u, peak).clamp(0, 1), clean) for u in solved)


def table(names: list[str], seed: int) -> None:
    print(
        f"{'image':<11} {'noise':<14} {'gauss w':>7} {'gauss':>6} {'model w':>7} "
        f"{'model':>6} {'diff':>6} {'auto w':>6} {'auto':>6} {'gap':>5}"
    )
    gaps: dict[str, list[float]] = {}
    diffs: dict[str, list[float]] = {}
    for name in names:
        clean = load(name, 256)
        for sim, level in CONDITIONS:
            noisy = add_noise(clean, sim, level, seed)
            wg, pg = sweep(noisy, clean, "gaussian", sim)
            wm, pm = sweep(noisy, clean, sim, sim)
            auto = auto_weight_for_noise(noisy, sim)  # type: ignore[arg-type]
            pa = psnr(solve(noisy, auto, noise=sim).restored[0], clean)  # type: ignore[arg-type]
            label = f"{sim} {level:g}" + (" %" if sim == "impulse" else " ph")
            if sim == "impulse":
                label = f"s&p {100 * level:g} %"
            key = label
            gaps.setdefault(key, []).append(pm - pa)
            diffs.setdefault(key, []).append(pm - pg)
            mark = "*" if name in CALIBRATION else " "
            print(
                f"{name + mark:<11} {label:<14} {wg:7.3f} {pg:6.2f} {wm:7.3f} {pm:6.2f} "
                f"{pm - pg:+6.2f} {float(auto[0]):6.3f} {pa:6.2f} {pm - pa:5.2f}",
                flush=True,
            )
    print("\nsummary: model best - gaussian best (min, mean); auto gap to best (max, mean)")
    for key in diffs:
        d, g = diffs[key], gaps[key]
        print(
            f"  {key:<14} diff min {min(d):+.2f} mean {np.mean(d):+.2f}   "
            f"auto gap max {max(g):.2f} mean {np.mean(g):.2f}"
        )


def photon_case(
    name: str, peak: float, seed: int
) -> tuple[float, float, float, str, float, float, float]:
    """Gaussian model at its best weight, and ``noise="poisson"`` at its automatic
    settings: (best Gaussian weight, its PSNR, the automatic PSNR, the estimator chosen,
    the Poisson model's best PSNR, the Anscombe estimator's best PSNR, the Gaussian
    model's best PSNR with the default colour, opponent for RGB)."""
    torch.set_num_threads(1)
    clean = load(name, 256)
    noisy = add_noise(clean, "poisson", peak, seed)
    wg, pg = sweep(noisy, clean, "gaussian", "poisson")
    po = default_colour_sweep(noisy, clean) if clean.shape[0] == 3 else pg
    _, pm = sweep(noisy, clean, "poisson", "poisson")
    pa = anscombe_sweep(noisy, clean, peak)
    result = restore(noisy, noise="poisson")
    assert result.noise_models is not None
    return wg, pg, psnr(result.restored[0], clean), result.noise_models[0], pm, pa, po


def photons(names: list[str], seed: int, jobs: int) -> None:
    header = (
        "| image | photons | gaussian best (joint) | gaussian best (default colour) "
        "| poisson best | anscombe best | poisson auto | estimator chosen "
        "| auto - gaussian best |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows = [header]
    print(header, flush=True)
    margins: list[float] = []
    cases = [(name, peak) for name in names for peak in (10.0, 30.0)]
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(photon_case, name, peak, seed) for name, peak in cases]
        for (name, peak), future in zip(cases, futures, strict=True):
            _, pg, pa, model, pm, pv, po = future.result()
            best = max(pg, po)  # the Gaussian model's best, in either colour mode
            margins.append(pa - best)
            row = (
                f"| {name} | {peak:g} | {pg:.2f} | {po:.2f} | {pm:.2f} | {pv:.2f} | {pa:.2f} "
                f"| {model} | {pa - best:+.2f} |"
            )
            rows.append(row)
            print(row, flush=True)
    bar = (
        f"BAR --noise poisson (automatic) >= --noise gaussian at its best weight on every "
        f"image: worst {min(margins):+.2f} dB, mean {np.mean(margins):+.2f} dB"
    )
    print(bar)
    intro = (
        "256x256 central crops, `clip(Poisson(peak * clean) / peak, 0, 1)`, seed "
        f"{seed}, peak estimated; PSNR in dB; best: over a weight grid (ratio {RATIO}), "
        "the Anscombe estimator at the true peak; the Gaussian model with joint colour and "
        "with its default colour (opponent for RGB, the colour weight 1.9 times the "
        "brightness weight; the same as joint for grey images), the better of the two is "
        "the bar's baseline. `python scripts/eval_noise.py --photons`"
    )
    record("eval_noise --photons", "\n".join([intro, "", *rows, "", "```", bar, "```"]))


def convergence(names: list[str], seed: int) -> None:
    print(f"{'image':<11} {'noise':<14} {'weight':>6} {'RMS to minimiser':>16}")
    for name in names:
        clean = load(name, 64)
        for sim, level in CONDITIONS:
            noisy = add_noise(clean, sim, level, seed)
            weight = float(auto_weight_for_noise(noisy, sim)[0])  # type: ignore[arg-type]
            exact, _ = reference_solve(noisy, weight, noise=sim, eps=1e-3, gap_tol=1e-9)
            adam = solve(noisy, weight, noise=sim, eps=1e-3).restored[0]  # type: ignore[arg-type]
            rms = float((adam - exact.clamp(0, 1)).square().mean().sqrt())
            print(f"{name:<11} {sim} {level:<8g} {weight:6.3f} {rms:16.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=",".join(CALIBRATION + HELD_OUT))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--convergence", action="store_true")
    parser.add_argument("--photons", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="cases measured at once (--photons)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.images.split(",")
    if args.convergence:
        convergence(names, args.seed)
    elif args.photons:
        photons(names, args.seed, args.jobs)
    else:
        table(names, args.seed)


if __name__ == "__main__":
    if "--photons" in sys.argv:
        main()  # records its own table, as the section "eval_noise --photons"
    else:
        convergence_only = "--convergence" in sys.argv
        with recording(Path(__file__).stem + ("_convergence" if convergence_only else "")):
            main()
