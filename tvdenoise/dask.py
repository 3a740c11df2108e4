"""Scale out on Dask: folders across a dask.distributed cluster, arrays larger than memory.

An optional part of tvdenoise (``pip install "tvdenoise[dask]"``); the rest of the package
never imports it, and the command line only when given ``--scheduler`` or ``--workers``.

Two jobs:

* :func:`denoise` restores a ``dask.array`` of images or volumes chunk by chunk. Each
  chunk is widened by :data:`tvdenoise.tiling.DEFAULT_OVERLAP` samples on every spatial side
  (``map_overlap``), solved alone and trimmed back, exactly as
  :func:`tvdenoise.tiling.run_tiled` treats tiles, so that no seam shows. The weight is
  one number for the whole array: given, or chosen once by :func:`choose_weight` from a
  few windows spread over the array, never per chunk (a chunk of sky and a chunk of
  texture would otherwise be smoothed differently, and the seams would show after all).
* :class:`Cluster` runs the command line's batches on a cluster: an existing one
  (``scheduler="tcp://host:8786"``) or local worker processes (``workers=N``). Each file is
  one task, :func:`tvdenoise.batch.process_file`, so the outputs and records are those of
  a local run. A TIFF with more than :data:`CHUNKED_MIN_VALUES` values is instead read,
  restored and written chunk by chunk by all workers together, so that no process ever
  holds the whole image.

Workers open the files by their paths: workers on other machines need the same file
system, as any Dask cluster that reads files does.

Example:
    >>> import dask.array as da
    >>> noisy = da.random.random((2000, 3000), chunks=1000).astype("float32")
    >>> restored = denoise(noisy, 0.1)  # lazy; .compute() or .to_zarr(...) runs it
    >>> restored.shape, restored.chunks == noisy.chunks
    ((2000, 3000), True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, cast

import dask
import dask.array as da
import numpy as np
import numpy.typing as npt
import tifffile
import torch
import zarr
from distributed import Client, Future, LocalCluster, as_completed
from distributed.comm.addressing import parse_address, parse_host_port

from .api import restore
from .auto import auto_weight, noise_levels
from .batch import Record, Settings, process_file
from .colour import opponent_weights, partly_missing, resolve_color
from .defaults import ColorChoice
from .fidelity import NOISE_MODELS, NoiseModel
from .io import TEMPORARY_SUFFIX, ImageFileError, Scaling
from .noise_weight import auto_weight_for_noise
from .plan import Job
from .solver import DEFAULT_EPS, DEFAULT_MAX_ITER, DEFAULT_TOL
from .tiling import DEFAULT_OVERLAP
from .tv import ColorMode, TotalVariation, TVKind

__all__ = [
    "CHUNK",
    "CHUNKED_MIN_VALUES",
    "RETRIES",
    "ChosenWeight",
    "Cluster",
    "ClusterError",
    "choose_weight",
    "denoise",
]

#: Times a file's task is run again after it raised (a worker that dies is handled by the
#: scheduler itself: its tasks move to other workers, up to ``allowed-failures`` times).
RETRIES = 2
#: Files whose TIFF image holds more values than this (``H * W * C``) are restored chunk
#: by chunk across the cluster instead of by one task: 64 Mi values, 256 MB as float32,
#: and about twelve times that in solver buffers.
CHUNKED_MIN_VALUES = 1 << 26
#: Side of the chunks of such a file: each widened chunk's solver buffers stay near
#: 170 MB for RGB, well inside a worker's memory.
CHUNK = 1024
#: Windows of the array from which :func:`choose_weight` chooses the weight, and their
#: side for images and for volumes.
SAMPLES = 8
SAMPLE_SIDE = {2: 512, 3: 128}
#: Files waiting at the scheduler per worker thread; more are sent as files finish, so a
#: million files do not become a million tasks at once.
_QUEUED_PER_THREAD = 4
_CONNECT_TIMEOUT_S = 10

_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_FULL_SCALE = frozenset({np.dtype(np.uint8), np.dtype(np.uint16)})
_FLOATS = frozenset({np.dtype(np.float32), np.dtype(np.float64)})


class ChosenWeight(NamedTuple):
    """What :func:`choose_weight` chose for a whole array.

    Attributes:
        weight: The weight; with opponent colour, the brightness weight.
        sigma: For Gaussian noise, the noise level it was chosen for; else ``None``.
        color: The colour mode it was chosen for: ``"joint"``, ``"separate"`` or
            ``"opponent"`` (``"auto"`` resolved).
        chroma_weight: With opponent colour, the colour weight; else ``None``.
    """

    weight: float
    sigma: float | None
    color: ColorChoice
    chroma_weight: float | None = None


class ClusterError(RuntimeError):
    """No cluster to run on: the scheduler cannot be reached, or local workers do not start.

    ``str(err)`` is one line, ``"<what went wrong>: <address>"``.
    """


# --------------------------------------------------------------------------------------
# Arrays larger than memory
# --------------------------------------------------------------------------------------


_LAYOUTS = {2: "(H, W), (C, H, W) or (B, C, H, W)", 3: "(D, H, W), (C, D, H, W) or (B, C, D, H, W)"}


def _as_batch(array: da.Array, spatial_dims: int) -> da.Array:
    """An image or volume array as a ``(B, C, *spatial)`` view, checked."""
    if not isinstance(array, da.Array):
        raise TypeError(f"array must be a dask.array.Array, got {type(array).__name__}")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"array must hold floating-point values in [0, 1], got dtype {array.dtype} "
            "(divide integers by their full scale first)"
        )
    if spatial_dims not in _LAYOUTS:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if not spatial_dims <= array.ndim <= spatial_dims + 2:
        raise ValueError(
            f"array must have shape {_LAYOUTS[spatial_dims]} for spatial_dims={spatial_dims}, "
            f"got {array.shape}"
        )
    lead = (1,) * (spatial_dims + 2 - array.ndim)
    batch: da.Array = array.reshape(lead + array.shape)
    return batch


def _windows(batch: da.Array, count: int, side: int) -> da.Array:
    """Up to ``count`` windows of ``side`` samples a side (less along a shorter axis),
    evenly spread over the images of a ``(B, C, *spatial)`` array: ``(S, C, *window)``."""
    b, sizes = batch.shape[0], batch.shape[2:]
    widths = [min(side, n) for n in sizes]
    rooms = [n // w for n, w in zip(sizes, widths, strict=True)]
    per_axis = [1] * len(sizes)
    grown = True
    while grown:  # one more position along each axis in turn, while there is room
        grown = False
        for axis, room in enumerate(rooms):
            more = math.prod(per_axis) // per_axis[axis] * (per_axis[axis] + 1)
            if per_axis[axis] < room and more <= count:
                per_axis[axis] += 1
                grown = True
    starts = [
        [round(k * (n - w) / max(m - 1, 1)) for k in range(m)]
        for n, w, m in zip(sizes, widths, per_axis, strict=True)
    ]
    places = list(itertools.product(*starts))
    picked = []
    for k, place in enumerate(places):
        window = (slice(s, s + w) for s, w in zip(place, widths, strict=True))
        picked.append(batch[(k * b // len(places), slice(None), *window)])
    windows: da.Array = da.stack(picked)
    return windows


def choose_weight(
    array: da.Array,
    *,
    spatial_dims: int = 2,
    spacing: Sequence[float] | None = None,
    sigma: float | None = None,
    noise: NoiseModel = "gaussian",
    peak: float | None = None,
    tv: TVKind = "isotropic",
    color: ColorChoice = "auto",
    eps: float = DEFAULT_EPS,
    samples: int = SAMPLES,
) -> ChosenWeight:
    """One automatic weight for a whole dask array, from a few windows spread over it.

    ``samples`` windows are read (only they are computed): squares of up to
    ``SAMPLE_SIDE[2]`` pixels, or cubes of up to ``SAMPLE_SIDE[3]`` voxels. For Gaussian
    noise the noise level is the median of the windows' estimates unless given; each
    window then gets the library's automatic weight for that level
    (:func:`tvdenoise.auto.auto_weight`: the rule refined by SURE), and the median of
    those is the weight. Impulse and Poisson noise take the median of
    :func:`tvdenoise.noise_weight.auto_weight_for_noise` over the windows. The medians keep
    a window of flat background or of pure texture from deciding for the whole array.
    With opponent colour (the default for RGB and Gaussian noise, as in
    :func:`tvdenoise.denoise`) the brightness and the colour weight are chosen each so
    (:func:`tvdenoise.colour.opponent_weights`).

    Args:
        array: floats in [0, 1], laid out as for :func:`denoise`.
        spatial_dims, spacing: the spatial axes, as in :func:`tvdenoise.denoise`.
        sigma: Gaussian noise level on the [0, 1] scale, or ``None`` to estimate it.
        noise, peak, tv, color, eps: as in :func:`tvdenoise.denoise`.
        samples: How many windows to read, >= 1.

    Returns:
        A :class:`ChosenWeight`: ``(weight, sigma, color, chroma_weight)``.

    Raises:
        TypeError: ``array`` is not a floating-point dask array.
        ValueError: A wrong shape, ``samples < 1``, ``sigma`` with a noise model other than
            Gaussian, or what the library's automatic weight refuses (an array under 8x8
            pixels, a negative ``sigma``, an unknown ``tv`` or ``color``, a bad
            ``spacing``).
    """
    batch = _as_batch(array, spatial_dims)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {', '.join(NOISE_MODELS)}, got {noise!r}")
    if sigma is not None and noise != "gaussian":
        raise ValueError(f"sigma applies to noise='gaussian' only, got noise={noise!r}")
    picked = _windows(batch, samples, SAMPLE_SIDE[spatial_dims])
    windows = torch.from_numpy(np.ascontiguousarray(picked))
    axes: dict[str, Any] = {
        "spatial_dims": spatial_dims,
        "spacing": None if spacing is None else tuple(spacing),
    }
    resolved = resolve_color(color, windows.shape[1], noise, partly=partly_missing(windows))
    reg = TotalVariation(tv, "joint", eps, spatial_dims, axes["spacing"])
    if noise == "gaussian" and sigma is None:
        sigma = float(noise_levels(reg.batch(windows, "array"), None).median())
    if resolved == "opponent":
        light, chroma, _ = opponent_weights(windows, reg, sigma=sigma)
        return ChosenWeight(float(light.median()), sigma, "opponent", float(chroma.median()))
    mode: ColorMode = "separate" if resolved == "separate" else "joint"
    if noise == "gaussian":
        weights, _ = auto_weight(windows, sigma=sigma, tv=tv, color=mode, eps=eps, **axes)
        return ChosenWeight(float(weights.median()), sigma, mode)
    weights = auto_weight_for_noise(windows, noise, peak=peak, tv=tv, color=mode, **axes)
    return ChosenWeight(float(weights.median()), None, mode)


def _restore_block(block: npt.NDArray[Any], weight: float, options: dict[str, Any]) -> Any:
    """One widened ``(B, C, *spatial)`` chunk through :func:`tvdenoise.restore`, untiled."""
    noisy = torch.from_numpy(np.ascontiguousarray(block))
    return restore(noisy, weight, tile=0, **options).restored.numpy()


def denoise(
    array: da.Array,
    weight: float | Literal["auto"] = "auto",
    *,
    spatial_dims: int = 2,
    spacing: Sequence[float] | None = None,
    sigma: float | None = None,
    noise: NoiseModel = "gaussian",
    peak: float | None = None,
    tv: TVKind = "isotropic",
    color: ColorChoice = "auto",
    chroma_weight: float | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    lr: float | None = None,
    eps: float = DEFAULT_EPS,
    overlap: int = DEFAULT_OVERLAP,
) -> da.Array:
    """Total-variation denoising of a dask array of images or volumes, chunk by chunk; lazy.

    The energy and options are those of :func:`tvdenoise.denoise`. Each chunk is widened
    by ``overlap`` samples on every side along each spatial axis (not past the array's
    edge), solved with one weight for the whole array, and trimmed back; only a chunk and
    its margins are ever in memory. The channel axis is gathered into one chunk (colour
    TV couples the channels). Chunks of 1024 to 4096 pixels a side (128 to 512
    voxels for volumes) keep the overlap's extra work small; chunks under ``overlap`` are
    merged by Dask.

    Args:
        array: floats in [0, 1] as a ``dask.array`` (e.g. ``da.from_zarr(...)``):
            ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` images, or with
            ``spatial_dims=3`` ``(D, H, W)``, ``(C, D, H, W)`` or ``(B, C, D, H, W)``
            volumes.
        weight: Regularisation weight ``>= 0``, or ``"auto"``: chosen once for the whole
            array by :func:`choose_weight`, which reads a few windows at call time.
        spatial_dims: 2 (images) or 3 (volumes or time series), as in
            :func:`tvdenoise.denoise`.
        spacing: Sample distance per spatial axis, as in :func:`tvdenoise.denoise`.
        sigma: Gaussian noise level on the [0, 1] scale for the automatic weight.
        noise, peak, tv, color, chroma_weight, max_iter, tol, lr, eps: as in
            :func:`tvdenoise.denoise` (the colour mode is decided once for the array; with
            ``"auto"`` and the automatic weight, from the windows that choose it).
        overlap: Margin in samples solved around each chunk and then dropped.

    Returns:
        The restored array, lazy, with the shape, chunks and dtype of ``array``, clipped
        to [0, 1].

    Raises:
        TypeError: ``array`` is not a floating-point dask array.
        ValueError: A wrong shape or ``spatial_dims``, a weight that is neither
            ``"auto"`` nor a finite number ``>= 0``, ``overlap < 0``, or an automatic
            weight that cannot be chosen (see :func:`choose_weight`).

    Example:
        >>> noisy = da.random.random((600, 500), chunks=256).astype("float32")
        >>> denoise(noisy, 0.1).compute().shape
        (600, 500)
    """
    batch = _as_batch(array, spatial_dims)
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    axes: dict[str, Any] = {
        "spatial_dims": spatial_dims,
        "spacing": None if spacing is None else tuple(spacing),
    }
    if isinstance(weight, str):
        if weight != "auto":
            raise ValueError(f"weight must be a number >= 0 or 'auto', got {weight!r}")
        choice = choose_weight(
            batch, sigma=sigma, noise=noise, peak=peak, tv=tv, color=color, eps=eps, **axes
        )
        chosen, mode = choice.weight, choice.color
        if chroma_weight is None:
            chroma_weight = choice.chroma_weight
    else:
        if sigma is not None:
            raise ValueError("sigma sets the automatic weight; it needs weight='auto'")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0 or 'auto', got {weight}")
        chosen = float(weight)
        mode = cast(ColorChoice, resolve_color(color, batch.shape[1], noise))
    if chroma_weight is not None and mode != "opponent":
        raise ValueError(f"chroma_weight applies to color='opponent' only; got color={mode!r}")
    options = {
        "noise": noise,
        "peak": peak,
        "tv": tv,
        "color": mode,
        "chroma_weight": chroma_weight,
        "max_iter": max_iter,
        "tol": tol,
        "lr": lr,
        "eps": eps,
        **axes,
    }
    whole_channels = batch.rechunk({1: -1})
    restored = whole_channels.map_overlap(
        _restore_block,
        depth={0: 0, 1: 0, **{axis: overlap for axis in range(2, batch.ndim)}},
        boundary="none",
        trim=True,
        dtype=array.dtype,
        meta=np.empty((0,) * batch.ndim, dtype=array.dtype),
        weight=chosen,
        options=options,
    )
    result: da.Array = restored.rechunk(batch.chunks).reshape(array.shape)
    return result


# --------------------------------------------------------------------------------------
# Files larger than memory: TIFF regions read and written by the workers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TiffImage:
    """The one image of a TIFF file as a lazily indexed array (for ``da.from_array``):
    each region is read on the worker that asks for it. Uncompressed contiguous samples
    are memory-mapped, so only the region's rows are read (such a file is often a single
    strip, which a Zarr store would decode whole for every region); others are decoded
    strip by strip or tile by tile through tifffile's Zarr store. Pickles as its path."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    mappable: bool

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, region: tuple[slice, ...]) -> npt.NDArray[Any]:
        if self.mappable:
            pixels = tifffile.memmap(self.path, mode="r")
            values = np.array(pixels[region])
            del pixels
            return values
        with tifffile.TiffFile(self.path) as tif:
            store = tif.aszarr()
            values = np.asarray(zarr.open_array(store, mode="r")[region])
            store.close()
        return values

    def __dask_tokenize__(self) -> tuple[str, float, tuple[int, ...]]:
        return (self.path, os.stat(self.path).st_mtime, self.shape)


@dataclass(frozen=True)
class _TiffRegions:
    """An uncompressed TIFF made by ``tifffile.memmap``, as a target for ``da.store``:
    each worker writes its chunk in place, so no chunk travels back to the client."""

    path: str

    def __setitem__(self, region: tuple[slice, ...], values: npt.NDArray[Any]) -> None:
        pixels = tifffile.memmap(self.path, mode="r+")
        pixels[region] = values
        pixels.flush()
        del pixels


@dataclass(frozen=True)
class _Layout:
    """What a large TIFF holds: ``(H, W)`` or ``(H, W, C)`` samples of one dtype, and
    whether they lie uncompressed in one block of the file."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    mappable: bool


def _large_tiff(job: Job, settings: Settings, min_values: int) -> _Layout | None:
    """The layout of a job's input if it is to be restored chunk by chunk: a TIFF, written
    to a TIFF, holding one gray or RGB 2-D image of 8- or 16-bit integers or floats with
    more than ``min_values`` values, with no ``dims=3``, ``spacing`` or ``reg="tgv"``
    asked for (chunks are solved with TV). ``None``
    otherwise, also for a file that cannot be parsed (its task then says what is wrong)."""
    if settings.dims == 3 or settings.spacing is not None or settings.solver.reg != "tv":
        return None
    if job.input.suffix.lower() not in _TIFF_SUFFIXES:
        return None
    if job.output.suffix.lower() not in _TIFF_SUFFIXES:
        return None
    if not settings.overwrite and os.path.lexists(job.output):
        return None  # skipped by its task, as in a local run
    try:
        # A file under 1/64 byte per value would be compressed beyond what images allow;
        # the size test spares the client from parsing every small TIFF of a batch.
        if job.input.stat().st_size * 64 < min_values:
            return None
        with tifffile.TiffFile(job.input) as tif:
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
            mappable = series.dataoffset is not None
    except Exception:  # not for this path; the file's own task reports it
        return None
    if axes not in ("YX", "YXS") or (axes == "YXS" and shape[-1] not in (1, 3)):
        return None
    if dtype not in _FULL_SCALE and dtype not in _FLOATS:
        return None
    if math.prod(shape) <= min_values:
        return None
    return _Layout(shape, dtype, mappable)


def _scaling(source: da.Array, dtype: np.dtype[Any]) -> Scaling:
    """The file's map to [0, 1] by :class:`tvdenoise.io.Scaling`'s rule: the full range of
    8- and 16-bit integers, the finite values' own range for floats (one pass over the
    file, chunk by chunk)."""
    if dtype in _FULL_SCALE:
        return Scaling(0.0, float(np.iinfo(dtype).max), dtype)
    finite = da.where(da.isfinite(source), source, np.nan)
    low, high = (float(v) for v in da.compute(da.nanmin(finite), da.nanmax(finite)))
    if not (math.isfinite(low) and math.isfinite(high)):
        return Scaling(0.0, 1.0, dtype)
    return Scaling(low, high - low if high > low else 1.0, dtype)


def _name_into_place(temporary: Path, output: Path, *, overwrite: bool) -> bool:
    """Give a finished temporary file its name; ``False`` if another run made the output
    meanwhile (it is never replaced without ``overwrite``)."""
    if overwrite:
        os.replace(temporary, output)
        return True
    try:
        os.link(temporary, output)  # fails, atomically, where the output exists
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


def _chunked_record(
    job: Job, layout: _Layout, settings: Settings, client: Client, chunk: int
) -> Record:
    """Restore one large TIFF chunk by chunk across the cluster and write it atomically.

    Samples map to [0, 1] and back as in a local run (:class:`tvdenoise.io.Scaling`); NaN
    samples of a float file are missing data, filled by the solver and written back as
    NaN. The output is an uncompressed TIFF of the input's dtype (BigTIFF when large) made
    under a temporary name in the output folder, filled by the workers region by region,
    and named once complete. ICC profile and EXIF are not carried over.
    """
    started = time.perf_counter()
    solver = settings.solver
    temporary: Path | None = None
    try:
        chunks = (chunk, chunk, *layout.shape[2:])
        source = da.from_array(
            _TiffImage(os.fspath(job.input), layout.shape, layout.dtype, layout.mappable),
            chunks=chunks,
            asarray=True,
            fancy=False,
            meta=np.empty((0,) * len(layout.shape), dtype=layout.dtype),
        )
        scaling = _scaling(source, layout.dtype)
        if layout.dtype.itemsize <= 2:  # exact in float32, as Scaling.to_unit does it
            values = source.astype(np.float32) / np.float32(scaling.scale)
        else:
            values = ((source.astype(np.float64) - scaling.offset) / scaling.scale).astype(
                np.float32
            )
        planes = values[None] if values.ndim == 2 else da.moveaxis(values, -1, 0)
        sigma: float | None = None
        color, chroma_weight = solver.color, solver.chroma_weight
        if solver.weight == "auto":
            choice = choose_weight(
                planes,
                sigma=solver.sigma,
                noise=solver.noise,
                peak=solver.peak,
                tv=solver.tv,
                color=color,
            )
            weight, sigma, color = choice.weight, choice.sigma, choice.color
            if chroma_weight is None:
                chroma_weight = choice.chroma_weight
        else:
            weight = solver.weight
        restored = denoise(
            planes,
            weight,
            noise=solver.noise,
            peak=solver.peak,
            tv=solver.tv,
            color=color,
            chroma_weight=chroma_weight,
            max_iter=solver.max_iter,
            tol=solver.tol,
            lr=solver.lr,
        )
        unit = restored[0] if values.ndim == 2 else da.moveaxis(restored, 0, -1)
        wide = unit.astype(np.float64) * scaling.scale + scaling.offset
        if layout.dtype in _FULL_SCALE:
            top = np.iinfo(layout.dtype).max
            result = da.clip(da.rint(wide), 0, top).astype(layout.dtype)
        else:
            result = da.where(da.isnan(source), source, wide.astype(layout.dtype))
        result = result.rechunk(chunks)

        job.output.parent.mkdir(parents=True, exist_ok=True)
        temporary = job.output.parent / (
            f".{job.output.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
        )
        tifffile.memmap(
            temporary,
            shape=layout.shape,
            dtype=layout.dtype,
            photometric="rgb" if layout.shape[2:] == (3,) else "minisblack",
            bigtiff=math.prod(layout.shape) * layout.dtype.itemsize > 2**31,
        ).flush()
        target: Any = _TiffRegions(os.fspath(temporary))  # any object with __setitem__
        stored = da.store(result, target, lock=False, compute=False)
        future = client.compute(stored)
        try:
            future.result()
        except BaseException:
            client.cancel([future])
            raise
        named = _name_into_place(temporary, job.output, overwrite=settings.overwrite)
        temporary = None
        if not named:
            return Record(job.input, job.output, "skipped")  # written meanwhile
    except (ImageFileError, OSError, ValueError, RuntimeError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        return Record(
            job.input,
            job.output,
            "failed",
            error=f"chunked denoising failed ({message}): {job.input}",
            seconds=time.perf_counter() - started,
        )
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    return Record(
        job.input,
        job.output,
        "restored",
        weight=_single(weight),
        sigma=None if sigma is None else _single(sigma * 255),
        seconds=time.perf_counter() - started,
        dims=2,
        spacing=(1.0, 1.0),
        images=1,
    )


def _single(value: float) -> float:
    """A float32 number as the shortest decimal that reads back as it."""
    return float(f"{float(np.float32(value)):.7g}")


# --------------------------------------------------------------------------------------
# Batches on a cluster
# --------------------------------------------------------------------------------------


def _process_file(job: Job, settings: Settings, since: float) -> Record:
    """A file's task: :func:`tvdenoise.batch.process_file` on one torch thread, since a
    worker runs one task per thread of its own (two single-threaded workers on two cores
    would otherwise run four solver threads).

    An output last written after ``since`` (the start of the run) is this run's own: an
    earlier attempt of this task wrote it, and its worker died before the record came
    back. It is written again (the same pixels) rather than skipped, so that the record
    is the one a local run gives.
    """
    torch.set_num_threads(1)
    if not settings.overwrite:
        with contextlib.suppress(OSError):
            if job.output.stat().st_mtime >= since:
                settings = dataclasses.replace(settings, overwrite=True)
    return process_file(job, settings)


def _settled(future: Future[Record], job: Job) -> Record:
    """The record a file's task returned, or a failed record if the task itself failed
    (its workers kept dying, it raised after its retries, the cluster went away)."""
    try:
        record = future.result()
    except Exception as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        return Record(
            job.input, job.output, "failed", error=f"the task failed ({message}): {job.input}"
        )
    if not isinstance(record, Record):
        raise TypeError(f"a file's task returned {type(record).__name__}, not a Record")
    return record


class Cluster:
    """A dask.distributed client for the command line's batches, used as a context manager.

    With ``scheduler``, connects to a running cluster (started with ``dask scheduler`` and
    ``dask worker tcp://HOST:8786``); with ``workers``, starts that many single-threaded
    worker processes on 127.0.0.1 and stops them on exit. Leaving the block also removes
    the temporary files of outputs that a worker killed mid-write, or a run stopped by
    Ctrl-C, left behind (completed outputs are renamed into place atomically, so an output
    is never half written).

    Example:
        >>> with Cluster(workers=2) as cluster:  # doctest: +SKIP
        ...     cluster.run_jobs(plan.jobs, Settings(), on_record=print)
    """

    def __init__(
        self,
        *,
        scheduler: str | None = None,
        workers: int | None = None,
        memory_limit: str | int | None = "auto",
    ) -> None:
        """Describe the cluster; nothing starts before ``with``.

        Args:
            scheduler: Address of a running scheduler, e.g. ``"tcp://10.0.0.5:8786"``.
            workers: Number of local single-threaded worker processes to start.
            memory_limit: Memory limit of each local worker (Dask's ``memory_limit``:
                ``"auto"`` shares the machine's memory, ``"2GB"``, bytes, or ``None``).

        Raises:
            ValueError: Neither or both of ``scheduler`` and ``workers``, or
                ``workers < 1``.
        """
        if (scheduler is None) == (workers is None):
            raise ValueError("give exactly one of scheduler and workers")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.scheduler = scheduler
        self.workers = workers
        self.memory_limit = memory_limit
        self._local: LocalCluster | None = None
        self._client: Client | None = None
        self._outputs: list[Path] = []
        self._started = time.time()
        self._untidy = False

    @property
    def client(self) -> Client:
        """The connected client."""
        if self._client is None:
            raise RuntimeError("the cluster is not started; use it in a with block")
        return self._client

    @property
    def address(self) -> str:
        """The scheduler's address."""
        if self._local is not None:
            return str(self._local.scheduler_address)
        return str(self.scheduler)

    def __enter__(self) -> Cluster:
        """Connect, or start the local workers.

        Raises:
            ClusterError: The scheduler cannot be reached, or the workers do not start.
        """
        self._started = time.time()
        if self.scheduler is not None:
            try:
                # A malformed address is told at once: a Client given one fails only after
                # its connection timeout, and then again when it is collected.
                _, location = parse_address(self.scheduler)
                _host, port = parse_host_port(location)
                if not 0 < port < 65536:
                    raise ValueError(f"port {port} is not between 1 and 65535")
                self._client = Client(
                    self.scheduler, timeout=_CONNECT_TIMEOUT_S, set_as_default=False
                )
            except (OSError, ValueError, TypeError) as exc:
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise ClusterError(
                    f"cannot connect to the Dask scheduler ({reason}): {self.scheduler}"
                ) from None
            return self
        try:
            self._local = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",  # any free port: no clash with a running cluster
                memory_limit=self.memory_limit,
                silence_logs=logging.ERROR,
            )
            self._client = Client(self._local, set_as_default=False)
        except (OSError, ValueError, RuntimeError) as exc:
            self._close()
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ClusterError(
                f"cannot start {self.workers} local Dask workers ({reason})"
            ) from None
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._untidy = self._untidy or error is not None
        self._close()
        if self._untidy:
            self._remove_temporaries()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._local is not None:
            self._local.close()
            self._local = None

    def _remove_temporaries(self) -> None:
        """Delete the temporary files of outputs (``.<output name>.*.tvdenoise-tmp``)
        made during this run: the leftovers of writes whose worker was killed."""
        for output in self._outputs:
            with contextlib.suppress(OSError):
                for leftover in output.parent.glob(
                    f".{glob.escape(output.name)}.*{TEMPORARY_SUFFIX}"
                ):
                    with contextlib.suppress(OSError):
                        if leftover.stat().st_mtime >= self._started - 1:
                            leftover.unlink()

    def _worker_names(self) -> set[str]:
        return set(self.client.nthreads())

    def run_jobs(
        self,
        jobs: Sequence[Job],
        settings: Settings,
        *,
        on_record: Callable[[Record], None],
        chunked_min_values: int | None = None,
        chunk: int = CHUNK,
    ) -> None:
        """Restore files on the cluster; the cluster's counterpart of
        :func:`tvdenoise.batch.run_jobs`, giving the same outputs and records.

        Each file is one task (files are not stacked into batches, so the results do not
        depend on which files share a worker), sent as earlier ones finish; a task that
        raises is run again up to :data:`RETRIES` times, and a file whose worker dies
        moves to another worker. Large TIFFs (more than ``chunked_min_values`` values,
        default :data:`CHUNKED_MIN_VALUES`) come after the other files, one at a time,
        each chunked across all workers.

        On an exception (such as ``KeyboardInterrupt``) the files not yet finished are
        cancelled and the exception propagates.

        Args:
            jobs: What to do, e.g. ``plan_jobs(...).jobs``.
            settings: How to denoise and write; ``settings.device`` is used on the
                workers, and ``batch_size`` does not apply.
            on_record: Called on this thread with each record as its file finishes.
            chunked_min_values: Values above which a TIFF is chunked.
            chunk: Chunk side in pixels for those.
        """
        threshold = CHUNKED_MIN_VALUES if chunked_min_values is None else chunked_min_values
        since = time.time()
        client = self.client
        self._outputs.extend(job.output for job in jobs)
        workers_before = self._worker_names()
        chunked: list[tuple[Job, _Layout]] = []
        whole: list[Job] = []
        for job in jobs:
            layout = _large_tiff(job, settings, threshold)
            if layout is None:
                whole.append(job)
            else:
                chunked.append((job, layout))

        waiting = iter(whole)
        running: dict[Future[Record], Job] = {}
        finished = as_completed(loop=client.loop)

        def send(count: int) -> None:
            for job in itertools.islice(waiting, count):
                future = client.submit(
                    _process_file, job, settings, since, pure=False, retries=RETRIES
                )
                running[future] = job
                finished.add(future)

        try:
            send(max(16, _QUEUED_PER_THREAD * sum(client.nthreads().values())))
            for future in finished:
                on_record(_settled(future, running.pop(future)))
                future.release()
                send(1)
            for job, layout in chunked:
                with dask.config.set(scheduler=client):
                    on_record(_chunked_record(job, layout, settings, client, chunk))
        except BaseException:
            self._untidy = True
            client.cancel(list(running))
            raise
        finally:
            with contextlib.suppress(Exception):
                if self._worker_names() != workers_before:
                    self._untidy = True
