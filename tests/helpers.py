"""Shared test helpers: tolerances per dtype (kept here, in one place), seeded images,
running the command in-process and reading back what it wrote."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from typer.testing import CliRunner, Result

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
