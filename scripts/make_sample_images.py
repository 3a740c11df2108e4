"""Make the small noisy/clean test photographs in ``sample_images/``.

Each image is a public-domain or CC0 photograph bundled inside the scikit-image package
(``skimage.data``; no download), shrunk by a 2 x 2 block mean to about 256 x 256 pixels.
For every image the script writes the clean reference ``<name>_clean.png`` and copies with
additive white Gaussian noise, ``<name>_noisy_sigma<S>.png``, where ``S`` is the noise standard
deviation on the 0-255 scale. Noise is drawn from ``numpy.random.default_rng(seed)`` with a
fixed seed per file, added to the stored clean integers, rounded to the nearest integer and
clipped to the dtype range, so two runs give byte-identical files (for the same NumPy, Pillow
and scikit-image versions).

What is made (provenance and licences in ``sample_images/README.md``):

* ``astronaut``: RGB, 8 bits per channel, 256 x 256; noise sigma 25 and sigma 50.
* ``camera``: grayscale, 8 bits, 256 x 256; noise sigma 25.
* ``cell``: grayscale, 16 bits, 256 x 192 (width x height), a microscopy image; the 2 x 2
  mean is scaled by 257 (255 -> 65535) and the noise by the same factor, so sigma 25 of 255
  is 6425 of 65535.

Needs scikit-image, which is in the ``test``/``dev`` extras, not a runtime dependency::

    pip install -e ".[dev]"
    python scripts/make_sample_images.py            # writes into sample_images/
    python scripts/make_sample_images.py --out /tmp/samples
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "sample_images"


@dataclass(frozen=True)
class Noisy:
    """One noisy copy: noise standard deviation on the 0-255 scale and its RNG seed."""

    sigma: int
    seed: int


@dataclass(frozen=True)
class Sample:
    """One sample image: how to get its clean pixels and which noisy copies to make."""

    name: str
    clean: Callable[[], NDArray[np.integer[Any]]]
    noisy: tuple[Noisy, ...]


def _block_mean(image: NDArray[np.integer[Any]]) -> NDArray[np.float64]:
    """Halve height and width by averaging 2 x 2 blocks; `image` is (H, W) or (H, W, C)."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    blocks = image[: 2 * h, : 2 * w].astype(np.float64)
    return blocks.reshape(h, 2, w, 2, *image.shape[2:]).mean(axis=(1, 3))


def _to_dtype(values: NDArray[np.float64], dtype: type[np.integer[Any]]) -> NDArray[Any]:
    """Round to the nearest integer (ties to even) and clip to the range of `dtype`."""
    top = np.iinfo(dtype).max
    return np.clip(np.rint(values), 0, top).astype(dtype)


def _astronaut() -> NDArray[np.uint8]:
    from skimage import data

    return _to_dtype(_block_mean(data.astronaut()), np.uint8)  # (512, 512, 3) -> (256, 256, 3)


def _camera() -> NDArray[np.uint8]:
    from skimage import data

    return _to_dtype(_block_mean(data.camera()), np.uint8)  # (512, 512) -> (256, 256)


def _cell() -> NDArray[np.uint16]:
    from skimage import data

    # (660, 550) -> rows 180:564, cols 38:550 around the cell -> (192, 256). The 2 x 2 mean
    # has quarter steps, so the 16-bit result holds levels an 8-bit image cannot.
    crop = data.cell()[180:564, 38:550]
    return _to_dtype(_block_mean(crop) * 257.0, np.uint16)


SAMPLES = (
    Sample("astronaut", _astronaut, (Noisy(sigma=25, seed=2501), Noisy(sigma=50, seed=5001))),
    Sample("camera", _camera, (Noisy(sigma=25, seed=2502),)),
    Sample("cell", _cell, (Noisy(sigma=25, seed=2503),)),
)


def add_noise(clean: NDArray[np.integer[Any]], sigma: float, seed: int) -> NDArray[Any]:
    """Add Gaussian noise of std `sigma` (0-255 scale) to `clean`, keeping its integer dtype.

    For 16-bit images the noise is scaled by 65535 / 255 = 257, the same relative level.
    """
    top = np.iinfo(clean.dtype).max
    scale = sigma * top / 255.0
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(clean.shape) * scale
    return _to_dtype(clean.astype(np.float64) + noise, clean.dtype.type)


def save_png(path: Path, image: NDArray[Any]) -> None:
    """Write `image` as PNG: uint8 (H, W) -> L, uint8 (H, W, 3) -> RGB, uint16 (H, W) -> I;16."""
    Image.fromarray(image).save(path, format="PNG", compress_level=9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT})",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    for sample in SAMPLES:
        clean = sample.clean()
        files = {f"{sample.name}_clean.png": clean}
        for n in sample.noisy:
            files[f"{sample.name}_noisy_sigma{n.sigma}.png"] = add_noise(clean, n.sigma, n.seed)
        for filename, image in files.items():
            path = out / filename
            save_png(path, image)
            print(f"{path}  {image.shape}  {image.dtype}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
