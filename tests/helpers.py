"""Shared test helpers: tolerances per dtype (kept here, in one place), seeded images,
running the command in-process and reading back what it wrote."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from tvdenoise import solver
from tvdenoise.cli import app

#: Absolute tolerances for exact identities, per dtype (one place for all tests).
ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def piecewise_image(channels: int, height: int, width: int, *, seed: int = 0) -> torch.Tensor:
    """A (C, H, W) image in [0.2, 0.8] with a few flat regions and straight and round edges."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height).reshape(-1, 1)
    x = torch.linspace(0, 1, width).reshape(1, -1)
    levels = torch.rand(channels, 3, generator=gen) * 0.6 + 0.2
    disc = ((y - 0.5) ** 2 + (x - 0.4) ** 2 < 0.08).float()
    band = (x > 0.7).float()
    base = levels[:, 0, None, None] * (1 - disc) * (1 - band)
    return base + levels[:, 1, None, None] * disc * (1 - band) + levels[:, 2, None, None] * band


def add_noise(clean: torch.Tensor, sigma: float, *, seed: int = 0) -> torch.Tensor:
    """Clean + Gaussian noise of std ``sigma`` (on the [0, 1] scale), clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
    return (clean + sigma * noise).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images on [0, 1]."""
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def opened(path: Path) -> tuple[npt.NDArray[Any], str]:
    """The pixels and mode of an image file (closed again at once)."""
    with Image.open(path) as im:
        return np.asarray(im), im.mode


def run_cli(*args: str | os.PathLike[str]) -> Result:
    """Run the ``tvdenoise`` command in-process with these arguments."""
    return CliRunner().invoke(app, [os.fspath(a) for a in args])


def write_image(
    path: Path, *, mode: str = "RGB", size: tuple[int, int] = (24, 20), seed: int = 0
) -> Path:
    """Write a small seeded noisy image (creating folders) and return its path."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        values = rng.integers(0, 65536, size=(size[1], size[0]), dtype=np.uint16)
        Image.frombytes("I;16", size, values.astype("<u2").tobytes()).save(path)
        return path
    bands = len(Image.new(mode, (1, 1)).getbands())
    values = rng.integers(0, 256, size=(size[1], size[0], bands), dtype=np.uint8)
    Image.fromarray(values.squeeze(2) if bands == 1 else values, mode).save(path)
    return path


def files_under(folder: Path) -> set[Path]:
    """Every file under ``folder``, temporary and hidden ones included."""
    return {p for p in folder.rglob("*") if p.is_file()}


@contextmanager
def without_kernel() -> Iterator[None]:
    """Solves inside take PyTorch's operations, not the compiled kernel (tvdenoise.kernel):
    for figures recorded on that path, which rounding (magnified by Adam and by the weight
    search's parabolas) sets apart from the kernel's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(solver, "_kernel", lambda *args: None)
        patch.setattr(solver, "kernel_energy", lambda *args: None)
        yield
