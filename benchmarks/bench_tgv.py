"""Second-order TGV on the CPU: the compiled kernel against PyTorch's operations, and against TV.

Run from the repository root::

    python benchmarks/bench_tgv.py               # 512x512, 5 rounds (about two minutes)
    python benchmarks/bench_tgv.py --size 128 --repeat 1 --no-record   # a smoke run

Inputs, made here with a fixed seed: a 512x512 crop of scikit-image's ``astronaut`` (RGB)
and of its ``cell`` micrograph (grey, enlarged), and a grey volume of 48x160x160 voxels
(a lit box on a shaded background: ramps and edges), with Gaussian noise of sigma = 25
grey levels. For each, in-process and interleaved round by round (``median_times``):

- ``restore(reg="tgv")`` at a fixed weight through the compiled kernel, and through
  PyTorch's operations (the kernel switched off for the call, as ``TVDENOISE_KERNEL=0``
  does for a process);
- the same two with the automatic weight (the SURE search solves TGV too);
- ``restore()`` (TV) at the same fixed weight, for scale.

It prints the median times, the ratios kernel / PyTorch and TGV / TV, and the largest
difference between the two paths' results (rounding, magnified by Adam; both are within
the solver's tolerance of the minimiser), and records them in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_speed as common  # shared helpers beside this file
from results import recording

import tvdenoise
from tvdenoise import solver

WEIGHT = 0.1
SIGMA = 25.0


@contextlib.contextmanager
def pytorch_operations() -> Iterator[None]:
    """Solves inside take PyTorch's operations, not the compiled kernel."""
    kernel = solver._kernel
    solver._kernel = lambda *args: None  # type: ignore[assignment]
    try:
        yield
    finally:
        solver._kernel = kernel  # type: ignore[assignment]


def volume(depth: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A noisy grey volume ``(1, D, H, W)``: a shaded background, a brighter box whose
    shading runs the other way, Gaussian noise of ``SIGMA`` grey levels."""
    z, y, x = np.meshgrid(
        *(np.linspace(0.0, 1.0, n, dtype=np.float32) for n in (depth, size, size)), indexing="ij"
    )
    clean = 0.2 + 0.3 * x + 0.1 * z
    inside = (abs(z - 0.5) < 0.3) & (abs(y - 0.5) < 0.3) & (abs(x - 0.5) < 0.25)
    clean = np.where(inside, 0.9 - 0.3 * y, clean)
    noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(SIGMA / 255)
    return torch.from_numpy(np.clip(clean + noise, 0.0, 1.0)[None].astype(np.float32))


def inputs(size: int) -> list[tuple[str, torch.Tensor]]:
    """The noisy crops, ``(C, H, W)``, and the volume, ``(1, D, H, W)``, float32 on
    [0, 1]."""
    from skimage import data

    rng = np.random.default_rng(20261129)
    cell = np.repeat(data.cell()[..., None], 3, axis=-1)
    crops = {
        "astronaut": common.fit_crop(data.astronaut(), size, size, rng),
        "cell": common.fit_crop(cell, size, size, rng)[..., :1],
    }
    images = [
        (name, common.hwc_to_tensor(common.to_unit(common.add_noise(clean, SIGMA, rng))))
        for name, clean in crops.items()
    ]
    return [*images, ("volume", volume(max(8, size // 10), size * 5 // 16, rng))]


def bench(name: str, x: torch.Tensor, repeat: int) -> list[object]:
    dims = x.dim() - 1

    def tgv(weight: float | str) -> Callable[[], torch.Tensor]:
        return lambda: tvdenoise.restore(x, weight, reg="tgv", spatial_dims=dims).restored

    def without_kernel(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with pytorch_operations():
                return fn()

        return run

    fns = [
        lambda: tvdenoise.restore(x, WEIGHT, spatial_dims=dims).restored,
        tgv(WEIGHT),
        without_kernel(tgv(WEIGHT)),
        tgv("auto"),
        without_kernel(tgv("auto")),
    ]
    tv, fixed, fixed_torch, auto, auto_torch = common.median_times(fns, repeat)
    difference = float((fns[1]() - fns[2]()).abs().max())
    return [
        f"{name} {tuple(x.shape)}",
        f"{1e3 * tv:.0f}",
        f"{1e3 * fixed:.0f}",
        f"{1e3 * fixed_torch:.0f}",
        f"{fixed_torch / fixed:.2f}x",
        f"{fixed / tv:.1f}x",
        f"{1e3 * auto:.0f}",
        f"{1e3 * auto_torch:.0f}",
        f"{auto_torch / auto:.2f}x",
        f"{difference:.1e}",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="side of the crops (512)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"tvdenoise {tvdenoise.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), kernel built: "
        f"{tvdenoise.kernel.available()}, load average {load:.2f}"
    )
    print(f"sigma = {SIGMA:g} grey levels, fixed weight {WEIGHT}, medians of {args.repeat} rounds")
    rows = [bench(name, x, args.repeat) for name, x in inputs(args.size)]
    header = [
        "image",
        "TV fixed ms",
        "TGV fixed ms",
        "PyTorch ops ms",
        "kernel speed-up",
        "TGV / TV",
        "TGV auto ms",
        "PyTorch ops ms",
        "kernel speed-up",
        "max |difference|",
    ]
    print(common.table(rows, header))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.no_record:
        run(args)
        return
    with recording("bench_tgv"):
        run(args)


if __name__ == "__main__":
    main()
