"""The C library's memory allocator between one call and the next.

A denoising call allocates and frees tens of megabytes of temporaries for a photograph:
the solver's variable and moments, the noise estimate's patches, the weight search's
tiles. glibc's ``malloc`` serves a block above its *mmap threshold* with fresh pages
from the system and returns them when the block is freed, and hands the free space at the
top of its heap back to the system once that exceeds its *trim threshold*. Both start low
(128 KiB and 128 KiB) and rise only when a large block is freed, so from one call to the
next the temporaries keep coming as fresh pages, each zeroed and mapped by the kernel on
its first touch: a tenth or more of a call's time (``benchmarks/RESULTS.md``).

:func:`pin_malloc_thresholds` sets both at once to the values that glibc's own adaptive
rule gives them after it frees a block of 32 MiB: the mmap threshold at its most, 32 MiB,
and the trim threshold at twice that. The temporaries of a call then reuse the heap. A
block over 32 MiB (a large image's) still comes from the system and goes back to it, and
the heap keeps at most 64 MiB of free space beyond what it uses.

It is made when the package is imported, once, on Linux with glibc, unless the user has
chosen the allocator's behaviour: a ``MALLOC_*`` or ``GLIBC_TUNABLES`` malloc setting, an
allocator loaded by ``LD_PRELOAD`` (jemalloc, tcmalloc, mimalloc), or ``TVDENOISE_MALLOC=0``.
This module imports nothing heavy.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "pin_malloc_thresholds"]

#: glibc's largest adaptive mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Twice the mmap threshold, as glibc's adaptive rule sets it.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
# mallopt's parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _user_chose(environ: Mapping[str, str]) -> bool:
    """Whether the environment sets the allocator's behaviour, or turns this off."""
    return (
        environ.get("TVDENOISE_MALLOC") == "0"
        or any(name.startswith("MALLOC_") for name in environ)
        or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")
        or "alloc" in environ.get("LD_PRELOAD", "")
    )


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or ``None`` where the C library is not glibc."""
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        mallopt: Callable[[int, int], int] = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):
        return None
    return mallopt


def pin_malloc_thresholds(
    environ: Mapping[str, str] | None = None,
    mallopt: Callable[[int, int], int] | None = None,
) -> bool:
    """Pin glibc's mmap and trim thresholds at ``MMAP_THRESHOLD`` and ``TRIM_THRESHOLD``
    unless the user chose the allocator's behaviour (see the module docstring).

    Args:
        environ: the process environment.
        mallopt: glibc's ``mallopt`` (found in the running C library by default).

    Returns:
        Whether the thresholds were set.
    """
    if _user_chose(os.environ if environ is None else environ):
        return False
    setting = _glibc_mallopt() if mallopt is None else mallopt
    if setting is None:
        return False
    # mallopt returns 1 on success; setting either turns glibc's adaptive rule off.
    return bool(setting(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        setting(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
