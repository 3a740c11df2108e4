"""Make the README's before/after picture from a sample image.

    python scripts/make_readme_figure.py

Writes ``sample_images/before_after.png``: the noisy sample, the tvdenoise result with
the default settings (automatic weight), and the clean reference, side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from tvdenoise import denoise
from tvdenoise.io import load_image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="astronaut", help="sample image stem")
    parser.add_argument("--out", type=Path, default=SAMPLES / "before_after.png")
    args = parser.parse_args()
    noisy = load_image(SAMPLES / f"{args.name}_noisy_sigma25.png").data
    clean = load_image(SAMPLES / f"{args.name}_clean.png").data
    restored = denoise(noisy, "auto")
    gap = torch.ones(noisy.shape[0], noisy.shape[1], 8)
    panel = torch.cat([noisy, gap, restored, gap, clean], dim=2)
    to_pil(panel).save(args.out, optimize=True)
    print(f"noisy {psnr(noisy, clean):.2f} dB, restored {psnr(restored, clean):.2f} dB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
