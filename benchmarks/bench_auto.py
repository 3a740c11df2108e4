"""What the automatic weight costs on the default path (issue 17), side by side in one run.

On a 512x512 RGB photograph with Gaussian noise of 25/255 added to the 8-bit image (the
crop and noise of ``bench_speed.py`` section a) it times, interleaved round by round so
that the load of the machine hits every method alike:

* ``default``: ``tvdenoise.denoise`` with its defaults (automatic weight, opponent colour);
* ``search``: choosing the weights alone (the noise estimate and the SURE searches of
  :func:`tvdenoise.colour.opponent_weights`);
* ``solve``: ``tvdenoise.denoise`` at the chosen weights, given;
* ``skimage``: scikit-image's ``denoise_tv_chambolle`` on float32 input at its best weight
  for this image (found on the clean image).

It prints the medians, the PSNRs and two ``BAR`` lines: the search against the final solve
(``<= 1.0``) and the default path against scikit-image (``<= 1.0`` at better PSNR). The
table goes to ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/bench_auto.py [--photo astronaut] [--repeat 7] [--threads 1] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from bench_speed import (
    PHOTOS,
    SEED,
    SIGMA,
    add_noise,
    bar,
    best_weight,
    fit_crop,
    photo,
    psnr,
    skimage_chambolle,
    to_unit,
)
from results import record

import tvdenoise
from tvdenoise.colour import opponent_weights
from tvdenoise.solver import DEFAULT_EPS
from tvdenoise.tv import TotalVariation

SIZE = 512


def interleaved(methods: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median wall time of every method, run once each per round (after a warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for round_ in range(repeat + 1):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="astronaut", choices=PHOTOS)
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (7)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument("--no-record", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng([SEED, PHOTOS.index(args.photo)])
    clean_u8 = fit_crop(photo(args.photo), SIZE, SIZE, rng)
    noisy = to_unit(add_noise(clean_u8, SIGMA, rng))
    clean = to_unit(clean_u8)
    x = torch.from_numpy(noisy).permute(2, 0, 1).contiguous()

    def hwc(image: torch.Tensor) -> np.ndarray:
        return image.permute(1, 2, 0).numpy()

    # The settings of the default path (the Huber radius of the total variation included).
    reg = TotalVariation(eps=DEFAULT_EPS)
    chosen = tvdenoise.restore(x)
    assert chosen.chroma_weights is not None  # the default for RGB: opponent colour
    w_light, w_colour = float(chosen.weights[0]), float(chosen.chroma_weights[0])
    s_cham, p_cham = best_weight(lambda w: psnr(skimage_chambolle(noisy, w), clean), 0.02, 0.5)
    p_default = psnr(hwc(tvdenoise.denoise(x)), clean)

    times = interleaved(
        {
            "default": lambda: tvdenoise.denoise(x),
            "search": lambda: opponent_weights(x[None], reg),
            "solve": lambda: tvdenoise.denoise(x, weight=w_light, chroma_weight=w_colour),
            "skimage": lambda: skimage_chambolle(noisy, s_cham),
        },
        args.repeat,
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    search_ratio = times["search"] / times["solve"]
    default_ratio = times["default"] / times["skimage"]
    lines = [
        f"{args.photo} {SIZE}x{SIZE} RGB, sigma {SIGMA:g}/255; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load:.2f}; median of "
        f"{args.repeat} interleaved rounds",
        "",
        "| method | weight | time s | PSNR dB |",
        "|---|---|---|---|",
        f"| tvdenoise.denoise, defaults | auto: {w_light:.4g} / {w_colour:.4g} "
        f"| {times['default']:.3f} | {p_default:.2f} |",
        f"| weight search alone (noise estimate + SURE) | | {times['search']:.3f} | |",
        f"| tvdenoise.denoise at those weights | {w_light:.4g} / {w_colour:.4g} "
        f"| {times['solve']:.3f} | |",
        f"| skimage chambolle, float32 | best {s_cham:.4g} | {times['skimage']:.3f} "
        f"| {p_cham:.2f} |",
        "",
        "```",
        bar("search/solve", search_ratio, "<= 1.0", search_ratio <= 1.0),
        bar(
            "default/skimage",
            default_ratio,
            "<= 1.0 at better PSNR",
            default_ratio <= 1.0 and p_default > p_cham,
        )
        + f" (PSNR {p_default - p_cham:+.2f} dB)",
        "```",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record("bench_auto", text + "\n\n`python benchmarks/bench_auto.py`")


if __name__ == "__main__":
    main()
