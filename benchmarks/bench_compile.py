"""One solver iteration, as the solver runs it and through ``torch.compile`` (issue 17).

Run from the repository root::

    python benchmarks/bench_compile.py                    # 512 and 2048 px RGB, 1 and all threads
    python benchmarks/bench_compile.py --sizes 256 --iterations 5   # a quick smoke run
    python benchmarks/bench_compile.py --sizes 512 --busy 2  # beside two CPU-bound processes

The solver's iteration (:class:`tvdenoise.solver._Workspace` gradient: differences,
normalisation, divergence and the data term in place, then PyTorch's fused Adam step) is
timed against the same iteration written as one function of ``(u, m, v)`` and compiled by
``torch.compile`` (Inductor, which fuses it into generated C++ loops): the compile time of
its first call, the time per iteration of both, and the largest difference between the two
after a few iterations from the same start (they compute the same step). Joint isotropic TV
on an RGB image, Gaussian data term. Sizes: 512 px, the solver's CPU tile, whose buffers
stay in the cache, and 2048 px, whose buffers do not. A hand-written fused kernel would need
a compiler on the user's machine at run time as well; it is not measured here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from tvdenoise.fidelity import data_term
from tvdenoise.solver import _ADAM_EPS, _BETA1, DEFAULT_EPS, _fused_step, _runs, _Workspace
from tvdenoise.tv import TotalVariation

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import record

WEIGHT = 0.1
# What each --busy process runs: a loop that keeps one CPU busy.
_SPIN = "while True: pass"


def _step(
    u: Tensor, f: Tensor, m: Tensor, v: Tensor, lr: Tensor, c1: Tensor, c2: Tensor, beta2: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The solver's iteration as one function: joint isotropic Huber TV, squared error."""
    half_weight = WEIGHT / 2
    dy = torch.nn.functional.pad(u[:, :, 1:] - u[:, :, :-1], (0, 0, 0, 1))
    dx = torch.nn.functional.pad(u[:, :, :, 1:] - u[:, :, :, :-1], (0, 1))
    norm = (dy * dy + dx * dx).sum(1, keepdim=True).clamp_min(DEFAULT_EPS**2).rsqrt()
    py, px = dy * (norm * half_weight), dx * (norm * half_weight)
    grad = (u - f) - py - px
    grad = grad + torch.nn.functional.pad(py[:, :, :-1], (0, 0, 1, 0))
    grad = grad + torch.nn.functional.pad(px[:, :, :, :-1], (1, 0))
    m = m * _BETA1 + (1 - _BETA1) * grad
    v = v * beta2 + (1 - beta2) * grad * grad
    u = u - lr * (m / c1) / (v.sqrt() / c2 + _ADAM_EPS)
    return u, m, v


class Eager:
    """The solver's own iteration, in place."""

    def __init__(self, f: Tensor) -> None:
        self.term = data_term("gaussian")
        reg = TotalVariation("isotropic", "joint", DEFAULT_EPS, 2, None)
        weights = torch.tensor([WEIGHT])
        self.ws = _Workspace(f, (weights / 2).reshape(1, 1, 1, 1), reg, self.term)
        self.u, self.m, self.v = f.clone(), torch.zeros_like(f), torch.zeros_like(f)
        self.runs = _runs(weights * self.term.schedule.lr_per_weight, torch.tensor([True]))
        self.k = 0

    def __call__(self) -> None:
        self.k += 1
        grad = self.ws.gradient(self.u)
        _fused_step(self.u, grad, self.m, self.v, self.k, self.runs, 1.0, self.term.schedule.beta2)


class Compiled:
    """The same iteration through ``torch.compile``; the first call compiles."""

    def __init__(self, f: Tensor) -> None:
        self.f = f
        self.beta2 = data_term("gaussian").schedule.beta2
        self.lr = WEIGHT * data_term("gaussian").schedule.lr_per_weight
        self.u, self.m, self.v = f.clone(), torch.zeros_like(f), torch.zeros_like(f)
        self.step = torch.compile(_step, fullgraph=True, dynamic=False)
        self.k = 0

    def __call__(self) -> None:
        self.k += 1
        c1 = torch.tensor(1 - _BETA1**self.k)
        c2 = torch.tensor((1 - self.beta2**self.k) ** 0.5)
        self.u, self.m, self.v = self.step(
            self.u, self.f, self.m, self.v, torch.tensor(self.lr), c1, c2, self.beta2
        )


def per_iteration(run: Callable[[], None], iterations: int) -> float:
    """Median seconds per iteration over blocks of iterations."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(iterations):
            run()
        times.append((time.perf_counter() - start) / iterations)
    return statistics.median(times)


def measure(size: int, threads: int, iterations: int) -> list[str]:
    torch.set_num_threads(threads)
    f = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    eager, compiled = Eager(f), Compiled(f)
    start = time.perf_counter()
    compiled()
    compile_s = time.perf_counter() - start
    for _ in range(4):
        eager()
    eager.k = 0
    eager.u.copy_(f), eager.m.zero_(), eager.v.zero_()
    compiled.k, compiled.u, compiled.m, compiled.v = 0, f.clone(), f * 0, f * 0
    for _ in range(5):
        eager(), compiled()
    difference = float((eager.u - compiled.u).abs().max())
    t_eager = per_iteration(eager, iterations)
    t_compiled = per_iteration(compiled, iterations)
    return [
        f"{size}x{size}x3",
        str(threads),
        f"{1e3 * t_eager:.2f}",
        f"{1e3 * t_compiled:.2f}",
        f"{t_eager / t_compiled:.2f}x",
        f"{compile_s:.1f}",
        f"{difference:.1e}",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--iterations", type=int, default=20, help="per timed block (20)")
    parser.add_argument(
        "--busy", type=int, default=0, help="CPU-bound processes spinning beside it (0)"
    )
    args = parser.parse_args(argv)
    spinners = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(args.busy)]
    try:
        measure_all(args, argv)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def measure_all(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    threads = sorted({1, torch.get_num_threads()})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = (
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.busy} CPU-bound processes "
        f"beside it, load average {load:.2f} at the start; one iteration of joint isotropic "
        "TV + squared error + Adam on an RGB image"
    )
    print(head, flush=True)
    header = ["image", "threads", "solver ms", "compiled ms", "solver/compiled", "compile s",
              "max difference"]  # fmt: skip
    rows = []
    for size in args.sizes:
        for n in threads:
            rows.append(measure(size, n, args.iterations))
            print(" | ".join(rows[-1]), flush=True)
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(row) + " |" for row in rows]
    )
    print(table)
    command = " ".join(["python", "benchmarks/bench_compile.py", *(argv or sys.argv[1:])])
    section = "bench_compile" + (f" --busy {args.busy}" if args.busy else "")
    record(section, f"{head}. `{command}`\n\n{table}")


if __name__ == "__main__":
    main()
