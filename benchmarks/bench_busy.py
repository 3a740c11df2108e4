"""The ``tvdenoise`` command on a busy machine: one image alone and beside CPU-bound processes.

Run from the repository root::

    python benchmarks/bench_busy.py                      # 512x512 RGB, 2 busy processes
    python benchmarks/bench_busy.py --repeat 2 --size 256   # a quick smoke run
    python benchmarks/bench_busy.py --variant OMP_NUM_THREADS=1 --variant OMP_WAIT_POLICY=PASSIVE

One noisy 512x512 RGB PNG (a crop of a bundled scikit-image photograph, Gaussian noise
sigma = 25 on the 8-bit scale) goes through the command of this checkout
(``python -m tvdenoise noisy.png -o out.png``, default settings: automatic weight), timed
from start to exit, once with nothing of ours running beside it ("alone") and once beside
``--busy`` processes that spin on the CPU ("loaded"). Each ``--variant`` adds environment
settings to the command (the first variant, ``default``, adds none); every round runs
every variant alone and loaded, interleaved, so that the load of other users of the machine
falls on all of them alike. The table gives the median over rounds and the median of the
per-round ratios loaded / alone. The machine's load average is printed at the start and the
end: the ratio, not the seconds, is the figure to compare between machines.

Bar (issue 17): with the default settings, loaded <= 2x alone.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_speed as common  # shared helpers beside this file
from results import record

ROOT = Path(__file__).resolve().parents[1]
# A CPU-bound process that ends by itself after ten minutes, should this script be killed.
_SPIN = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end:\n    pass\n"


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def run_command(src: Path, out: Path, extra_env: dict[str, str], args: Sequence[str]) -> float:
    """Wall time of one run of the command of this checkout."""
    env = {**os.environ, **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "tvdenoise", str(src), "-o", str(out), "-q", *args]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def loaded_run(
    busy: int, src: Path, out: Path, extra_env: dict[str, str], args: Sequence[str]
) -> float:
    """The same run beside ``busy`` processes spinning on the CPU."""
    spinners = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(busy)]
    try:
        time.sleep(0.3)  # let them start spinning
        return run_command(src, out, extra_env, args)
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


def parse_variant(text: str) -> dict[str, str]:
    """``NAME=VALUE[,NAME=VALUE...]`` -> environment settings."""
    settings = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--variant takes NAME=VALUE[,NAME=VALUE...], got {text!r}")
        settings[name.strip()] = value.strip()
    return settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="side of the image (512)")
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside it (2)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (5)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=VALUE[,...]",
        help="environment settings to compare with the default (repeatable)",
    )
    parser.add_argument(
        "--command-args", default="", help="extra options for the command, e.g. '--weight 0.2'"
    )
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    variants = {"default": {}} | {v: parse_variant(v) for v in args.variant}
    command_args = args.command_args.split()
    start_load = load_average()
    print(
        f"{os.cpu_count()} CPUs, {args.busy} busy processes, {args.size}x{args.size} RGB, "
        f"{args.repeat} rounds; load average at the start {start_load}",
        flush=True,
    )
    rng = np.random.default_rng([common.SEED, 17])
    image = common.add_noise(
        common.fit_crop(common.photo("astronaut"), args.size, args.size, rng), common.SIGMA, rng
    )
    alone: dict[str, list[float]] = {name: [] for name in variants}
    loaded: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "noisy.png", Path(tmp) / "out.png"
        common.save_png(src, image)
        run_command(src, out, {}, command_args)  # warm the file cache
        for round_ in range(args.repeat):
            for name, env in variants.items():
                alone[name].append(run_command(src, out, env, command_args))
                loaded[name].append(loaded_run(args.busy, src, out, env, command_args))
            print(
                f"round {round_ + 1}: "
                + ", ".join(
                    f"{name} {alone[name][-1]:.2f}/{loaded[name][-1]:.2f} s" for name in variants
                )
                + f" (alone/loaded; load average {load_average()})",
                flush=True,
            )
    rows = []
    for name in variants:
        ratios = [b / a for a, b in zip(alone[name], loaded[name], strict=True)]
        rows.append(
            [
                name,
                f"{statistics.median(alone[name]):.2f}",
                f"{statistics.median(loaded[name]):.2f}",
                f"{statistics.median(ratios):.2f}x",
                f"{min(ratios):.2f}-{max(ratios):.2f}",
            ]
        )
    header = ["variant", "alone s", "loaded s", "loaded/alone", "range"]
    text = common.table(rows, header)
    ratio = statistics.median(
        b / a for a, b in zip(alone["default"], loaded["default"], strict=True)
    )
    bar = common.bar("busy_loaded_over_alone", ratio, "<= 2x", ratio <= 2, "x")
    end_load = load_average()
    print(f"\n{text}\nload average at the end {end_load}\n{bar}")
    if not args.no_record:
        command = "python benchmarks/bench_busy.py" + "".join(
            f" --variant {v}" for v in args.variant
        )
        record(
            "bench_busy",
            f"`{command}`: {args.size}x{args.size} RGB through the command, alone and beside "
            f"{args.busy} CPU-bound processes, {args.repeat} interleaved rounds, load average "
            f"{start_load} at the start and {end_load} at the end.\n\n"
            f"```\n{text}\n{bar}\n```",
        )


if __name__ == "__main__":
    main()
