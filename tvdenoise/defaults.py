"""The names of the choices and the default values that the command line shows.

The library modules that use these values import them from here, so each is defined once.
This module imports nothing but the standard library: the ``tvdenoise`` command declares
its options from it, and so answers ``--help``, ``--version`` and usage errors without
loading PyTorch (which takes longer to import than the rest of the command takes to run
on a small image).
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_ITER",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_QUALITY",
    "DEFAULT_SUFFIX",
    "DEFAULT_TOL",
    "MAX_WEIGHT",
    "MIN_TILE",
    "ColorChoice",
    "ColorMode",
    "NoiseModel",
    "RegulariserName",
    "TVKind",
    "check_device_name",
]

#: Total variation: ``isotropic`` (length of the gradient) or ``anisotropic`` (sum of the
#: absolute differences along each axis).
TVKind = Literal["isotropic", "anisotropic"]
#: Colour coupling: one gradient magnitude for all channels, or each channel alone.
ColorMode = Literal["joint", "separate"]
#: The colour choices of the command and of ``denoise``: ``auto`` (opponent for RGB with
#: Gaussian noise, else joint), ``opponent`` (brightness and colour apart), or a mode above.
ColorChoice = Literal["auto", "joint", "separate", "opponent"]
#: Data term: squared error, absolute error, or the Poisson log-likelihood.
NoiseModel = Literal["gaussian", "impulse", "poisson"]
#: The regularisers by name: total variation, or second-order total generalised variation.
RegulariserName = Literal["tv", "tgv"]

#: Largest weight accepted. With intensities on [0, 1] the minimiser is the image's mean
#: long before this; larger numbers overflow the solver's steps.
MAX_WEIGHT = 1e4
#: Most solver iterations per image.
DEFAULT_MAX_ITER = 60
#: The solver stops once the relative change of the energy is below this.
DEFAULT_TOL = 1e-4

#: Most positions (pixels, or voxels of a stack) :func:`tvdenoise.io.load_image` reads by
#: default; Pillow's own default for one image.
DEFAULT_MAX_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3
#: Smallest tile size (0, never tiling, aside): smaller tiles are mostly overlap, and so
#: many of them take minutes on an image that untiled takes a fraction of a second.
MIN_TILE = 16
#: Images stacked into one solver batch, at most.
DEFAULT_BATCH_SIZE = 8
#: JPEG and WebP quality of the written files.
DEFAULT_QUALITY = 95
#: Added to the name of an output written beside its input (``photo.png`` ->
#: ``photo_denoised.png``).
DEFAULT_SUFFIX = "_denoised"

#: The ``--device`` values. Whether the device is present is a question for PyTorch
#: (:func:`tvdenoise.batch.resolve_device`).
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_device_name(name: str) -> str:
    """``name`` in lower case if it is one of :data:`DEVICE_CHOICES`, else ValueError."""
    text = name.strip().lower()
    if _DEVICE_NAME.fullmatch(text) is None:
        raise ValueError(f"unknown device {name!r} (use {DEVICE_CHOICES})")
    return text
