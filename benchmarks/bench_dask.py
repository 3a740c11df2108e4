"""The Dask backend against its bars (issue 14): identity, a killed worker, throughput, memory.

Run from the repository root (needs ``pip install -e ".[dask]"``)::

    python benchmarks/bench_dask.py                 # the bars as filed
    python benchmarks/bench_dask.py --quick         # a smoke run of every part

Four parts, each printing a ``BAR`` line:

1. Identity: ``--count`` noisy photographs (``--size``, RGB and gray, automatic weight) and
   one corrupt file, through the command line locally and with ``--workers 2`` (both as
   subprocesses). Every output must be byte-identical, the report records equal (times
   aside), and both runs exit 1 with all other files written.
2. A killed worker: the same folder (without the corrupt file) with ``--workers 2``; once a
   quarter of the outputs exist, one worker process is killed with SIGKILL. The run must
   exit 0 with every output byte-identical to the local run's.
3. Throughput at a fixed weight on 512x512 RGB images: one single-threaded worker against
   two, both clusters started beforehand and warmed up, timed alternately ``--repeat``
   times on the same files (median of each); the machine's load average is printed with
   it, since other work on a shared machine takes cores from the workers.
4. Memory: a float32 TIFF of ``--large-side`` pixels square (1.08 GB at 16400) restored
   chunk by chunk by two workers whose memory limit is ``--memory-limit`` (1 GB), with the
   automatic weight and ``--memory-max-iter`` iterations per chunk (memory does not depend
   on it; fewer make the part shorter on a busy machine). The peak resident memory of
   every worker process and of this process is sampled; the bar is that no worker is
   restarted (Dask restarts a worker that passes 95 % of its limit) and that the output is
   written whole.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tifffile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

import bench_speed as common  # noqa: E402  (shared helpers beside this file)
from results import record  # noqa: E402

from tvdenoise.batch import Record, Settings, SolverSettings  # noqa: E402
from tvdenoise.dask import Cluster  # noqa: E402
from tvdenoise.plan import Job  # noqa: E402

SIGMA = 25.0


def make_folder(folder: Path, count: int, size: int, seed: int, *, gray_every: int = 3) -> None:
    """``count`` noisy crops of the bundled photographs (every ``gray_every``-th gray)."""
    rng = np.random.default_rng(seed)
    photos = [common.photo(name) for name in common.PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = common.fit_crop(photos[i % len(photos)], size, size, rng)
        if gray_every and i % gray_every == 0:
            image = np.round(image.mean(axis=2, keepdims=True)).astype(np.uint8)
        noisy = common.add_noise(image, SIGMA, rng)
        common.save_png(
            folder / f"img{i:03d}.png", noisy.squeeze(2) if noisy.shape[2] == 1 else noisy
        )


def command(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "tvdenoise", *map(os.fspath, args)]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.fspath(ROOT)}


def records(report: Path) -> list[dict[str, Any]]:
    found = json.loads(report.read_text())["records"]
    for item in found:
        del item["seconds"]
        item["output"] = Path(item["output"]).name
    return list(found)


def same_files(a: Path, b: Path) -> tuple[int, int]:
    """(files in ``a``, of which byte-identical to ``b``'s of the same name)."""
    names = sorted(p.name for p in a.iterdir())
    same = sum((a / n).read_bytes() == (b / n).read_bytes() for n in names if (b / n).exists())
    return len(names), same


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def part_identity(work: Path, count: int, size: int) -> tuple[list[str], Path, bool]:
    scans = work / "scans"
    make_folder(scans, count, size, seed=1)
    broken = scans / "img000.png"
    (work / "broken").mkdir()
    (work / "broken" / "zz_broken.png").write_bytes(broken.read_bytes()[:2000])
    runs = {}
    for name, extra in [("local", []), ("cluster", ["--workers", "2"])]:
        start = time.perf_counter()
        done = subprocess.run(
            command(scans, work / "broken", "-o", work / name, "-q", "--report",
                    work / f"{name}.json", *extra),
            env=environment(), capture_output=True, text=True,
        )  # fmt: skip
        runs[name] = (done.returncode, time.perf_counter() - start, done.stderr)
    files, same = same_files(work / "cluster", work / "local")
    equal_records = records(work / "local.json") == records(work / "cluster.json")
    codes = (runs["local"][0], runs["cluster"][0])
    ok = files == count and same == count and equal_records and codes == (1, 1)
    lines = [
        f"identity: {count} images {size}x{size} + 1 corrupt, automatic weight",
        f"  local run {runs['local'][1]:.1f} s, --workers 2 {runs['cluster'][1]:.1f} s "
        "(start-up of the cluster included)",
        f"  outputs written {files}/{count}, byte-identical {same}/{count}, "
        f"records equal: {equal_records}, exit codes {codes}",
        f"BAR identity (>= 40 images, bit-identical, same records, exit 1 with a corrupt file):"
        f" {'PASS' if ok and count >= 40 else 'FAIL'}",
    ]
    return lines, work / "local", ok


def part_killed(work: Path, reference: Path, count: int) -> list[str]:
    out = work / "killed"
    process = subprocess.Popen(
        command(work / "scans", "-o", out, "-q", "--workers", "2"),
        env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    killed = None
    while process.poll() is None and killed is None:
        written = len(list(out.glob("*.png"))) if out.exists() else 0
        if written >= count // 4:
            workers = [
                child
                for child in psutil.Process(process.pid).children(recursive=True)
                if "spawn_main" in " ".join(child.cmdline())
            ]
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    _, stderr = process.communicate()
    files, same = same_files(out, reference)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    ok = killed is not None and process.returncode == 0 and same == count and not leftovers
    return [
        f"killed worker: pid {killed} killed with SIGKILL after {count // 4} outputs",
        f"  exit code {process.returncode}, outputs {files}/{count}, byte-identical to the "
        f"local run {same}/{count}, temporary files left {len(leftovers)}",
        f"  stderr: {' | '.join(stderr.strip().splitlines()[-3:])}",
        f"BAR killed worker (finishes, every output valid, exit 0): {'PASS' if ok else 'FAIL'}",
    ]


def part_throughput(work: Path, count: int, repeat: int) -> list[str]:
    folder = work / "throughput"
    make_folder(folder, count, 512, seed=2, gray_every=0)
    jobs = sorted(folder.glob("*.png"))
    settings = Settings(solver=SolverSettings(weight=0.2), device="cpu")
    times: dict[int, list[float]] = {1: [], 2: []}
    loads = [load()]
    with Cluster(workers=1) as one, Cluster(workers=2) as two:
        clusters = {1: one, 2: two}
        for n, cluster in clusters.items():  # warm-up: imports, first solves
            run_batch(cluster, jobs[:2], work / f"warm{n}", settings)
        for r in range(repeat):
            for n, cluster in clusters.items():
                times[n].append(run_batch(cluster, jobs, work / f"t{n}-{r}", settings))
            loads.append(load())
    one_s, two_s = statistics.median(times[1]), statistics.median(times[2])
    ratio = one_s / two_s
    return [
        f"throughput: {count} RGB images 512x512, weight 0.2, {repeat} alternating repeats",
        f"  1 worker: {count / one_s:.2f} images/s (median of {seconds(times[1])} s)",
        f"  2 workers: {count / two_s:.2f} images/s (median of {seconds(times[2])} s)",
        f"  load average (1/5/15 min) before and after each repeat: {'; '.join(loads)}",
        f"BAR 2 workers >= 1.6x one worker: {ratio:.2f}x {'PASS' if ratio >= 1.6 else 'FAIL'}",
    ]


def seconds(values: list[float]) -> str:
    return ", ".join(f"{t:.1f}" for t in values)


def run_batch(cluster: Cluster, inputs: list[Path], out: Path, settings: Settings) -> float:
    done: list[Record] = []
    start = time.perf_counter()
    cluster.run_jobs([Job(p, out / p.name) for p in inputs], settings, on_record=done.append)
    seconds = time.perf_counter() - start
    if any(r.status != "restored" for r in done) or len(done) != len(inputs):
        raise RuntimeError(f"a throughput run failed: {done}")
    return seconds


def make_large_tiff(path: Path, side: int, seed: int) -> None:
    """A float32 gray TIFF: smooth shapes plus Gaussian noise, written band by band."""
    rng = np.random.default_rng(seed)
    pixels = tifffile.memmap(path, shape=(side, side), dtype=np.float32, bigtiff=True)
    x = np.linspace(0, 12 * np.pi, side, dtype=np.float32)
    for top in range(0, side, 1024):
        rows = slice(top, min(side, top + 1024))
        y = np.linspace(0, 12 * np.pi, side, dtype=np.float32)[rows, None]
        clean = 0.5 + 0.3 * np.sign(np.sin(x[None, :]) * np.sin(y))
        noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(SIGMA / 255)
        pixels[rows] = np.clip(clean + noise, 0, 1)
    pixels.flush()
    del pixels


class PeakMemory:
    """Samples the resident memory of this process and of each of its child processes."""

    def __init__(self) -> None:
        self.own = 0
        self.children: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.own = max(self.own, me.memory_info().rss)
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                self.children[child.pid] = max(self.children.get(child.pid, 0), rss)
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def part_memory(work: Path, side: int, memory_limit: str, max_iter: int) -> list[str]:
    source = work / "large.tif"
    start = time.perf_counter()
    make_large_tiff(source, side, seed=3)
    made = time.perf_counter() - start
    size_gb = source.stat().st_size / 1e9
    out = work / "large_out.tif"
    done: list[Record] = []
    with Cluster(workers=2, memory_limit=memory_limit) as cluster:
        before = set(cluster.client.nthreads())
        limit = max(w["memory_limit"] for w in cluster.client.scheduler_info()["workers"].values())
        with PeakMemory() as peak:
            start = time.perf_counter()
            settings = Settings(solver=SolverSettings(max_iter=max_iter))
            cluster.run_jobs([Job(source, out)], settings, on_record=done.append)
            seconds = time.perf_counter() - start
        restarted = set(cluster.client.nthreads()) != before
    (result,) = done
    whole = False
    if out.exists():
        with tifffile.TiffFile(out) as tif:
            whole = tif.series[0].shape == (side, side)
        restored = tifffile.memmap(out, mode="r")
        sample = np.asarray(restored[side // 2 : side // 2 + 256, :256])
        whole = whole and bool(np.isfinite(sample).all()) and float(sample.std()) > 0
        del restored
    worker_peaks = sorted((rss for pid, rss in peak.children.items() if rss > 200e6), reverse=True)
    largest = worker_peaks[0] if worker_peaks else 0
    ok = result.status == "restored" and whole and not restarted and largest < limit
    lines = [
        f"memory: float32 TIFF {side}x{side} ({size_gb:.2f} GB, made in {made:.0f} s), "
        f"2 workers of {limit / 1e9:.2f} GB each, automatic weight, --max-iter {max_iter}",
        f"  {result.status} in {seconds:.0f} s, weight {result.weight}, sigma {result.sigma}/255"
        + (f" ({result.error})" if result.error else ""),
        f"  peak RSS of worker processes: {', '.join(f'{r / 1e9:.2f} GB' for r in worker_peaks)};"
        f" of this process {peak.own / 1e9:.2f} GB; a worker restarted: {restarted}",
        f"BAR file larger than a worker's memory limit, no worker out of memory: "
        f"{'PASS' if ok and size_gb > limit / 1e9 else 'FAIL'}",
    ]
    out.unlink(missing_ok=True)
    source.unlink()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="images of the identity part")
    parser.add_argument("--size", type=int, default=256, help="their side in pixels")
    parser.add_argument("--throughput-count", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--large-side", type=int, default=16400)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument(
        "--memory-max-iter", type=int, default=60, help="iterations per chunk (memory part)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the script")
    parser.add_argument("--parts", default="identity,killed,throughput,memory")
    args = parser.parse_args()
    if args.quick:
        args.count, args.throughput_count, args.repeat = 8, 4, 1
        args.large_side, args.memory_limit = 8200, "600MB"
    parts = args.parts.split(",")
    lines = [f"machine: {os.cpu_count()} cores, load average at start {load()}"]
    with tempfile.TemporaryDirectory(prefix="bench_dask_") as tmp:
        work = Path(tmp)
        if "identity" in parts or "killed" in parts:
            found, reference, _ = part_identity(work, args.count, args.size)
            lines += found
            if "killed" in parts:
                lines += part_killed(work, reference, args.count)
        if "throughput" in parts:
            lines += part_throughput(work, args.throughput_count, args.repeat)
        if "memory" in parts:
            lines += part_memory(work, args.large_side, args.memory_limit, args.memory_max_iter)
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        shown = " ".join(sys.argv[1:])
        command_line = f"python benchmarks/bench_dask.py {shown}".strip()
        record("bench_dask", f"```\n{text}\n```\nCommand: `{command_line}`")


if __name__ == "__main__":
    main()
