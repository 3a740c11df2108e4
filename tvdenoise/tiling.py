"""Overlapping tiles, for images too large for the device's memory.

The solver is local: one iteration moves information by a pixel or two, and its influence
fades within a few dozen pixels. So an image can be cut into tiles, each tile widened by
``overlap`` pixels on every side, the widened tiles denoised as one batch, and only the
tiles' cores written back. With the default overlap of 32 pixels the stitched result
differs from the untiled one by less than 1e-5 (measured on 512x512 photographs with
128-pixel tiles), far below one 8-bit grey level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "auto_tile",
    "images_per_batch",
    "run_tiled",
    "tiles_per_batch",
]

DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 32
#: Tile size on CPU, solved one tile at a time: a widened 576x576 RGB tile's solver
#: buffers (about 9 arrays of 4 MB) stay in a CPU's last-level cache, where larger tiles,
#: or several at a time, stream every pass from main memory (benchmarks/RESULTS.md,
#: bench_speed's large image).
CPU_TILE = 512
#: Values in one CPU tile of an image: those of a ``CPU_TILE`` RGB tile, whatever the
#: number of channels, so that the tile's buffers take the same room in the cache.
CPU_TILE_VALUES = 3 * CPU_TILE * CPU_TILE
#: CPU runs cut an image into tiles once it holds more than this many tiles' values:
#: below that the overlap costs more than the cache saves.
CPU_TILES_ABOVE = 4
#: The smallest side of an automatic CPU tile (images with many channels): the overlap
#: on both sides then adds at most about half the tile's area.
CPU_TILE_MIN_SIDE = 256
#: Above this many values, CPU runs tile volumes too, to bound their memory.
CPU_TILE_THRESHOLD = 1 << 24
#: Tiles solved together on a GPU, where a larger batch keeps the device busy.
GPU_TILES_PER_BATCH = 4
#: Working buffers the solver holds per value (image, estimate, Adam moments, gradient,
#: differences, scratch), with a margin; used to decide whether a GPU can take an image.
BUFFERS_PER_VALUE = 12

#: Solves a batch of tiles ``(T, C, h, w)`` with one weight each ``(T,)``, the
#: ``index``-th of ``count`` batches; returns the restored tiles and the iterations each
#: used.
TileSolver = Callable[[Tensor, Tensor, int, int], tuple[Tensor, Tensor]]


def _windows(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """1-D tiling: (window start, window stop, core start, core stop) per tile."""
    spans = []
    for start in range(0, size, tile):
        stop = min(start + tile, size)
        spans.append((max(0, start - overlap), min(size, stop + overlap), start, stop))
    return spans


def auto_tile(shape: torch.Size, device: torch.device, dtype: torch.dtype) -> int | None:
    """The tile size to use for a ``(B, C, *spatial)`` batch on ``device``, or ``None``.

    On CPU, images of more than :data:`CPU_TILES_ABOVE` tiles' worth of values are cut
    into tiles of about :data:`CPU_TILE_VALUES` values each (a side of ``CPU_TILE``
    pixels for RGB, larger for fewer channels), and volumes above
    :data:`CPU_TILE_THRESHOLD` values into cubes of the cube root of the 2-D tile's area.
    On CUDA, those whose working set would not fit in the free device memory are tiled.
    """
    values = math.prod(shape[1:])
    spatial_dims = len(shape) - 2
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        itemsize = torch.finfo(dtype).bits // 8
        needed = BUFFERS_PER_VALUE * itemsize * values * shape[0]
        return _side(DEFAULT_TILE, spatial_dims) if needed > free else None
    if spatial_dims != 2:
        return _side(CPU_TILE, spatial_dims) if values > CPU_TILE_THRESHOLD else None
    if values <= CPU_TILES_ABOVE * CPU_TILE_VALUES:
        return None
    return max(CPU_TILE_MIN_SIDE, round(math.sqrt(CPU_TILE_VALUES / shape[1])))


def _side(tile: int, spatial_dims: int) -> int:
    """The side of a tile with as many samples as a ``tile x tile`` image tile."""
    return tile if spatial_dims == 2 else round((tile * tile) ** (1.0 / spatial_dims))


def tiles_per_batch(device: torch.device) -> int:
    """How many tiles :func:`run_tiled` should solve together on ``device``."""
    return 1 if device.type == "cpu" else GPU_TILES_PER_BATCH


def images_per_batch(shape: torch.Size, device: torch.device) -> int:
    """How many images of a ``(B, C, *spatial)`` batch to solve together on ``device``.

    On CPU, as many as one tile's values hold (at least one): the images are independent,
    and a group of them whose buffers stay in the cache is solved faster, one group after
    another, than the whole batch streaming every pass from main memory. Elsewhere, all.
    """
    if device.type != "cpu":
        return shape[0]
    return max(1, CPU_TILE_VALUES // max(1, math.prod(shape[1:])))


def run_tiled(
    noisy: Tensor,
    weights: Tensor,
    solve_tiles: TileSolver,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    tiles_per_batch: int = 4,
) -> tuple[Tensor, Tensor]:
    """Denoise ``noisy`` tile by tile and stitch the tiles' cores.

    Args:
        noisy: ``(B, C, *spatial)`` images or volumes; tiles are cut along every
            spatial axis.
        weights: ``(B,)`` weight per image; each tile uses its image's weight.
        solve_tiles: the solver for a batch of equally sized tiles.
        tile: core size of a tile, in pixels (>= 1).
        overlap: pixels each tile is widened by on every side (>= 0).
        tiles_per_batch: how many tiles are solved together (>= 1).

    Returns:
        ``(restored, iterations)``: ``(B, C, *spatial)`` and the most iterations any
        tile of each image used, ``(B,)``.
    """
    if tile < 1 or overlap < 0 or tiles_per_batch < 1:
        raise ValueError(
            f"tile must be >= 1, overlap >= 0 and tiles_per_batch >= 1; "
            f"got {tile}, {overlap}, {tiles_per_batch}"
        )
    b = noisy.shape[0]
    spatial = noisy.shape[2:]
    restored = torch.empty_like(noisy)
    iterations = torch.zeros(b, dtype=torch.long)
    # Group windows of equal shape so that they can share a batch.
    Window = tuple[tuple[int, int, int, int], ...]
    groups: dict[tuple[int, ...], list[tuple[int, Window]]] = {}
    for index in range(b):
        for window in product(*(_windows(n, tile, overlap) for n in spatial)):
            shape = tuple(span[1] - span[0] for span in window)
            groups.setdefault(shape, []).append((index, window))
    chunks = [
        members[first : first + tiles_per_batch]
        for members in groups.values()
        for first in range(0, len(members), tiles_per_batch)
    ]
    for index, chunk in enumerate(chunks):
        tiles = torch.stack([noisy[i][_spans(win, "window")] for i, win in chunk])
        out, used = solve_tiles(tiles, weights[[i for i, _ in chunk]], index, len(chunks))
        for (i, win), piece, n in zip(chunk, out, used.tolist(), strict=True):
            restored[i][_spans(win, "core")] = piece[_spans(win, "core in window")]
            iterations[i] = max(int(iterations[i]), n)
    return restored, iterations


def _spans(window: tuple[tuple[int, int, int, int], ...], part: str) -> tuple[slice, ...]:
    """Index of a ``(C, *spatial)`` image: the ``window``, its ``core``, or the core
    relative to the window (``"core in window"``)."""
    if part == "window":
        spans = [slice(start, stop) for start, stop, _, _ in window]
    elif part == "core":
        spans = [slice(c0, c1) for _, _, c0, c1 in window]
    else:
        spans = [slice(c0 - start, c1 - start) for start, _, c0, c1 in window]
    return (slice(None), *spans)
