"""Every figure of issue 17 on a CUDA device, in one run of a few minutes, as one table.

Run from the repository root on a machine with a CUDA GPU::

    python benchmarks/bench_gpu.py                 # the full set (well under five minutes)
    python benchmarks/bench_gpu.py --device cpu --megapixels 0.3 --size 128 --count 4
                                                   # a smoke run of the script itself

Without CUDA (and without ``--device``) it says so and exits with status 0, writing nothing.
Nothing is downloaded: the images are bundled scikit-image photographs, enlarged on the
device where a larger one is needed, with Gaussian noise of sigma = 25 on the 8-bit scale
added, rounded and clipped, from a fixed seed.

Rows (each the median of ``--repeat`` runs after a warm-up run that is not counted; *device
ms* from CUDA events around the call, so the time the GPU spent including any gaps where it
waited for Python to launch work; *wall ms* from the host clock after synchronising):

* a 12-megapixel RGB photograph (4000x3000) at a fixed weight, float32 (bar: <= 100 ms of
  device time), then with float16 and bfloat16 input (``PSNR`` against the clean image
  shows what the precision costs), and with the automatic weight (the default path);
* one 512x512 RGB image at a fixed weight and with the automatic weight;
* a batch of ``--count`` 512x512 RGB images as one ``(B, C, H, W)`` tensor, fixed and
  automatic weight: images per second, and the batch's time over one image's time (near
  1 where the images are processed together; near ``count`` where a per-image Python loop
  is left, the noise estimate included);
* the solver's time per iteration on the 12-megapixel image against the device's memory
  bandwidth bound (7 image-sized float32 arrays read or written per Adam iteration, at the
  copy bandwidth measured with ``dst.copy_(src)``).

The table is printed and, from a CUDA device, written to ``benchmarks/RESULTS.md`` (section
``bench_gpu``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import record

import tvdenoise  # this checkout's package, before any installed one

SIGMA = 25.0
SEED = 20240605
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
FIXED_WEIGHT = 0.2  # about the automatic weight of these photographs at sigma = 25
ARRAYS_PER_ITERATION = 7  # read u, f, m, v; write u, m, v


def bundled_photo(name: str) -> torch.Tensor:
    """A bundled scikit-image photograph as a ``(3, H, W)`` float32 tensor on [0, 1]."""
    from skimage import data

    image = getattr(data, name)()
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


def noisy_copy(clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """8-bit Gaussian noise of ``SIGMA`` grey levels: added, rounded, clipped."""
    noise = torch.randn(clean.shape, generator=generator, device=clean.device)
    return ((clean * 255 + SIGMA * noise).round().clamp(0, 255) / 255).contiguous()


def enlarged(photo: torch.Tensor, height: int, width: int, device: torch.device) -> torch.Tensor:
    """``photo`` resized to ``height x width`` on ``device`` and quantised to 8 bits."""
    big = torch.nn.functional.interpolate(
        photo[None].to(device), size=(height, width), mode="bicubic", align_corners=False
    )[0]
    return (big.clamp(0, 1) * 255).round() / 255


def crops(count: int, size: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """``count`` clean ``size x size`` RGB crops of the bundled photographs, ``(B, 3, S, S)``."""
    photos = [bundled_photo(name) for name in PHOTOS]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        if min(photo.shape[1:]) < size:
            photo = enlarged(photo, 2 * size, 2 * size, torch.device("cpu"))
        top = int(torch.randint(0, photo.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, photo.shape[2] - size + 1, (1,), generator=generator))
        crop = photo[:, top : top + size, left : left + size]
        out.append(crop.flip(-1) if i % 2 else crop)
    return torch.stack(out).to(device)


def psnr(restored: torch.Tensor, clean: torch.Tensor) -> float:
    error = torch.mean((restored.double() - clean.double()) ** 2).item()
    return 10 * math.log10(1 / error)


class Timer:
    """Median device and wall time of a call; CUDA events where the device is CUDA."""

    def __init__(self, device: torch.device, repeat: int) -> None:
        self.device, self.repeat = device, repeat

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, float, Any]:
        """Warm up once, then return (median device ms, median wall ms, last result)."""
        result = fn()
        self.sync()
        device_ms, wall_ms = [], []
        for _ in range(self.repeat):
            if self.device.type == "cuda":
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                self.sync()
                t0 = time.perf_counter()
                start.record()
                result = fn()
                end.record()
                self.sync()
                wall_ms.append(1e3 * (time.perf_counter() - t0))
                device_ms.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                result = fn()
                wall_ms.append(1e3 * (time.perf_counter() - t0))
                device_ms.append(wall_ms[-1])
        return statistics.median(device_ms), statistics.median(wall_ms), result


def copy_bandwidth(like: torch.Tensor, timer: Timer) -> float:
    """Bytes read + written per second by ``dst.copy_(src)`` on tensors like ``like``."""
    src, dst = torch.rand_like(like), torch.empty_like(like)
    device_ms, _, _ = timer(lambda: dst.copy_(src))
    return 2 * like.nbytes / (device_ms / 1e3)


def fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument(
        "--megapixels", type=float, default=12.0, help="size of the large image, 4:3 (12)"
    )
    parser.add_argument("--size", type=int, default=512, help="side of the small images (512)")
    parser.add_argument("--count", type=int, default=32, help="images in the batch (32)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per row (5)")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device is None and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; nothing measured (use --device cpu for a smoke run)")
        return
    device = torch.device(args.device or "cuda")
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"tvdenoise {tvdenoise.__version__}, torch {torch.__version__}, {name}", flush=True)
    generator = torch.Generator().manual_seed(SEED)
    timer = Timer(device, args.repeat)
    rows: list[list[str]] = []

    def row(what: str, device_ms: float, wall_ms: float | None, extra: dict[str, str]) -> None:
        rows.append(
            [
                what,
                fmt(device_ms),
                fmt(wall_ms),
                extra.get("weight", ""),
                extra.get("iterations", ""),
                extra.get("psnr", ""),
                extra.get("note", ""),
            ]
        )
        print(" | ".join(rows[-1]), flush=True)

    def info(result: tvdenoise.Restoration, clean: torch.Tensor) -> dict[str, str]:
        return {
            "weight": f"{float(result.weights.float().mean()):.3f}",
            "iterations": str(int(result.iterations.max())),
            "psnr": f"{psnr(result.restored.float(), clean.float()):.2f}",
        }

    # The large photograph.
    height = round(math.sqrt(args.megapixels * 1e6 * 3 / 4))
    width = round(height * 4 / 3)
    clean = enlarged(bundled_photo("astronaut"), height, width, device)
    noisy = noisy_copy(clean.cpu(), generator).to(device)
    mp = f"{height * width / 1e6:.1f} MP"
    fixed_ms = math.nan
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = noisy.to(dtype)
        dev, wall, result = timer(lambda x=x: tvdenoise.restore(x, FIXED_WEIGHT))
        label = str(dtype).removeprefix("torch.")
        extra = info(result, clean)
        extra["note"] = f"restored dtype {str(result.restored.dtype).removeprefix('torch.')}"
        if dtype is torch.float32:
            fixed_ms = dev
            iterations = int(result.iterations.max())
            extra["note"] = "bar <= 100 ms: " + ("PASS" if dev <= 100 else "FAIL")
        row(f"{mp} RGB, weight {FIXED_WEIGHT}, {label}", dev, wall, extra)
    dev, wall, result = timer(lambda: tvdenoise.restore(noisy))
    row(f"{mp} RGB, automatic weight", dev, wall, info(result, clean) | {"note": "default"})

    # Time per iteration against the bandwidth bound.
    bandwidth = copy_bandwidth(noisy, timer)
    bound_ms = 1e3 * ARRAYS_PER_ITERATION * noisy.nbytes / bandwidth
    per_iteration = fixed_ms / iterations
    row(
        f"{mp} RGB, per iteration",
        per_iteration,
        None,
        {
            "note": f"{per_iteration / bound_ms:.1f}x the bound of {bound_ms:.2f} ms "
            f"(copy {bandwidth / 1e9:.1f} GB/s)"
        },
    )

    # Small images: one, and a batch.
    clean_batch = crops(args.count, args.size, device, generator)
    noisy_batch = noisy_copy(clean_batch.cpu(), generator).to(device)
    one, one_clean = noisy_batch[:1], clean_batch[:1]
    size = f"{args.size}x{args.size}"
    single: dict[str, float] = {}
    for label, weight in (("weight 0.2", FIXED_WEIGHT), ("automatic weight", "auto")):
        dev, wall, result = timer(lambda w=weight: tvdenoise.restore(one, w))
        single[label] = dev
        row(f"1 x {size} RGB, {label}", dev, wall, info(result, one_clean))
    for label, weight in (("weight 0.2", FIXED_WEIGHT), ("automatic weight", "auto")):
        dev, wall, result = timer(lambda w=weight: tvdenoise.restore(noisy_batch, w))
        note = (
            f"{args.count / (dev / 1e3):.1f} images/s; batch / one image = "
            f"{dev / single[label]:.1f}"
        )
        row(
            f"{args.count} x {size} RGB, {label}",
            dev,
            wall,
            info(result, clean_batch) | {"note": note},
        )

    header = ["case", "device ms", "wall ms", "weight", "iterations", "PSNR dB", "note"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    dash = "  ".join("-" * w for w in widths)
    title = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    text = "\n".join([title, dash, *lines])
    seconds = time.perf_counter() - started
    print(f"\n{text}\n\n{name}; the whole run took {seconds:.0f} s")
    if not args.no_record and device.type == "cuda":  # a CPU run is a smoke test
        record(
            "bench_gpu",
            f"`python benchmarks/bench_gpu.py` on {name}, torch {torch.__version__} "
            f"({seconds:.0f} s in all).\n\n```\n{text}\n```",
        )


if __name__ == "__main__":
    main()
