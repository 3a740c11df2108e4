"""tvdenoise: total-variation image denoising in PyTorch.

Library entry points (tensors in, tensors out):

* :func:`denoise` — restore a ``(C, H, W)`` or ``(B, C, H, W)`` image in [0, 1], or a
  volume / time series ``(C, D, H, W)`` / ``(B, C, D, H, W)`` with ``spatial_dims=3``;
* :func:`restore` — the same, returning weights, noise levels, iterations, energies;
* :func:`solve` — the Adam solver for given weights;
* :func:`total_variation` / :class:`TVLoss` — differentiable TV for training loops;
* :func:`estimate_sigma` — the noise level of an image;
* :func:`reference_denoise` — an exact (duality-gap certified) solver for checking.

The entry points are loaded on first use (PEP 562), so that ``import tvdenoise`` and the
command's ``--help`` do not import PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import memory as _memory

if TYPE_CHECKING:
    from .api import Restoration, denoise, restore
    from .reference import reference_denoise
    from .sigma import estimate_sigma
    from .solver import DenoiseResult, solve
    from .tv import TVLoss, divergence, forward_differences, total_variation, tv_gradient

__all__ = [
    "DenoiseResult",
    "Restoration",
    "TVLoss",
    "denoise",
    "divergence",
    "estimate_sigma",
    "forward_differences",
    "reference_denoise",
    "restore",
    "solve",
    "total_variation",
    "tv_gradient",
]
__version__ = "0.1.0"

# The temporaries of each call reuse the C library's heap rather than fresh pages from the
# system (tvdenoise.memory), unless the user chose the allocator's behaviour.
_memory.pin_malloc_thresholds()

#: The module of each public name.
_MODULES = {
    "DenoiseResult": "solver",
    "Restoration": "api",
    "TVLoss": "tv",
    "denoise": "api",
    "divergence": "tv",
    "estimate_sigma": "sigma",
    "forward_differences": "tv",
    "reference_denoise": "reference",
    "restore": "api",
    "solve": "solver",
    "total_variation": "tv",
    "tv_gradient": "tv",
}


def __getattr__(name: str) -> Any:
    """Import the module of a public name on first use and keep the name here."""
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
