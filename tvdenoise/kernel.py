"""The compiled CPU iteration of the Adam solver (``_kernel.c``), and where it applies.

An iteration of :mod:`tvdenoise.solver` in PyTorch is some twenty operations, each a pass
over image-sized arrays and, on several cores, a parallel region of its own. The compiled
kernel makes one pass per iteration, row by row, with the rows of the batch (the planes of
volumes) shared out between ``torch.get_num_threads()`` threads, on the threads of
PyTorch's OpenMP runtime where it is found: for images, the iterations between two energy
checks in one call and one parallel section (:meth:`FusedSteps.steps`), for volumes one
section per iteration. A batch of many images (the weight search's tiles) is shared out
whole, each thread making all the steps of an image while it is in that thread's cache;
narrow images of one weight are laid side by side for the steps, so that a row's fixed
cost is shared by more values. The stopping test, weights and everything else stay in
PyTorch; the kernel replaces :meth:`~tvdenoise.solver._Workspace.gradient` and Adam's step,
with the same arithmetic, and gives the energies (:meth:`FusedSteps.energy`) and the
opponent colour transforms (:func:`colour_transform`) in one pass each.

It applies to 2-D and 3-D total variation (any colour coupling and kind, with or without
spacing, with missing values or without) of float32 and float64 images and volumes on the
CPU, for the
data terms that declare a kernel form (:meth:`~tvdenoise.fidelity.DataTerm.kernel_form`:
Gaussian, impulse and Poisson noise), and to second-order TGV of images and volumes
(:class:`~tvdenoise.tgv.TGVWorkspace`: the image and its field, whose rows depend on the
same neighbours as TV's, so the same chunks and threads serve). Everything else,
and every machine where the kernel was not built (it is an optional part of the install),
takes PyTorch's operations; the tests check that both give the same iterates. Setting the
environment variable ``TVDENOISE_KERNEL=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import itertools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .solver import _Workspace
    from .tgv import TGVWorkspace

__all__ = ["FusedSteps", "available", "colour_transform", "energy", "release_threads"]

#: Values per thread, at least: below that one thread does all the work, since each more
#: thread costs a boundary row and a hand-off per iteration.
MIN_VALUES_PER_THREAD = 1 << 15
#: Parts of the rows per thread: a thread that the system slows down (other work on its
#: core, PyTorch's own threads still spinning after an operation) takes fewer of them.
CHUNKS_PER_THREAD = 4
#: Planes per part of a volume, at least.
MIN_PLANES_PER_CHUNK = 4
#: Images narrower than half this are laid side by side for the steps, those of one rate
#: and weight together, in rows of up to this many columns: each row costs the kernel a
#: fixed overhead besides its values (the weight search's 64-pixel tiles, for one).
SIDE_BY_SIDE_COLUMNS = 512

#: The codes of regularisers with a vector field (second-order TGV, joint and separate
#: colour: :meth:`~tvdenoise.tgv.TotalGeneralisedVariation.kernel_form`), whose chunks
#: need buffers of their own sizes.
_WITH_FIELD = frozenset({3, 4})


@dataclass(frozen=True)
class _Types:
    """The kernel in one floating-point type: its functions' suffix and its structures."""

    suffix: str
    params: type[ctypes.Structure]
    chunk: type[ctypes.Structure]
    chunk3: type[ctypes.Structure]


def _types(real: type[ctypes.c_float] | type[ctypes.c_double], suffix: str) -> _Types:
    """The structures of ``_kernel_body.h`` with ``real`` as the C type ``real``."""

    class Params(ctypes.Structure):
        _fields_ = [
            ("tv", ctypes.c_int),
            ("data", ctypes.c_int),
            ("data_scale", real),
            ("eps", real),
            ("ih", real),
            ("iw", real),
            ("beta1", real),
            ("beta1c", real),
            ("beta2", real),
            ("beta2c", real),
            ("decay", ctypes.c_double),
            ("correction1", ctypes.c_double),
            ("first", ctypes.c_int),
            ("corr2", real),
            ("adam_eps", real),
            ("floor", real),
            ("ratio", real),
            ("field_step", real),
        ]

    # An image's solver variable, Adam's moments, data and observed mask.
    arrays = [(name, ctypes.c_void_p) for name in ("u", "m", "v", "f", "observed")]

    class Chunk(ctypes.Structure):
        _fields_ = [
            *arrays,
            ("C", ctypes.c_int),
            ("H", ctypes.c_int),
            ("W", ctypes.c_int),
            ("S", ctypes.c_int),
            ("r0", ctypes.c_int),
            ("r1", ctypes.c_int),
            ("half_weight", real),
            ("rate", ctypes.c_double),
            ("above", ctypes.c_void_p),
            ("last", ctypes.c_void_p),
            ("work", ctypes.c_void_p),
        ]

    class Chunk3(ctypes.Structure):
        _fields_ = [
            *arrays,
            ("C", ctypes.c_int),
            ("D", ctypes.c_int),
            ("H", ctypes.c_int),
            ("W", ctypes.c_int),
            ("z0", ctypes.c_int),
            ("z1", ctypes.c_int),
            ("half_weight", real),
            ("rate", ctypes.c_double),
            ("iz", real),
            ("before", ctypes.c_void_p),
            ("after", ctypes.c_void_p),
            ("work", ctypes.c_void_p),
        ]

    return _Types(suffix, Params, Chunk, Chunk3)


#: The kernel's types: it is built for float32 and float64.
_TYPES = {
    torch.float32: _types(ctypes.c_float, "f32"),
    torch.float64: _types(ctypes.c_double, "f64"),
}


def _declare(lib: ctypes.CDLL, types: _Types, counter: type[ctypes._Pointer[ctypes.c_int]]) -> None:
    """The argument types of the kernel's functions in one floating-point type."""
    chunks, chunks3 = ctypes.POINTER(types.chunk), ctypes.POINTER(types.chunk3)
    params = ctypes.POINTER(types.params)
    region = (ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
    signatures: dict[str, list[type[ctypes._CData]]] = {
        "tvd_boundaries": [ctypes.c_int, chunks, params],
        "tvd_step": [ctypes.c_int, chunks, params, counter],
        "tvd_energy": [ctypes.c_int, chunks, params, ctypes.c_void_p, counter],
        "tvd_boundaries3": [ctypes.c_int, chunks3, params],
        "tvd_step3": [ctypes.c_int, chunks3, params, counter],
        "tvd_energy3": [ctypes.c_int, chunks3, params, ctypes.c_void_p, counter],
        "tvd_step_parallel": [*region, params],
        "tvd_colour": [
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_longlong,
            ctypes.c_longlong,
            ctypes.c_void_p,
            ctypes.c_int,
        ],
        "tvd_steps": [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            chunks,
            ctypes.c_int,
            chunks,
            params,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_double,
            ctypes.c_double,
            ctypes.c_double,
            counter,
        ],
        "tvd_energy_parallel": [*region, params, ctypes.c_void_p],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, f"{name}_{types.suffix}")
        function.argtypes = argtypes
        function.restype = None


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The built kernel beside this module, or ``None`` where it was not built."""
    if os.environ.get("TVDENOISE_KERNEL", "1") == "0":
        return None
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_kernel{suffix}"
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
            except OSError:
                return None
            counter = ctypes.POINTER(ctypes.c_int)
            for types in _TYPES.values():
                _declare(lib, types, counter)
            for name in (
                "tvd_work_size",
                "tvd_flux_size",
                "tvd_tgv_work_size",
                "tvd_tgv_flux_size",
            ):
                fn = getattr(lib, name)
                fn.argtypes = [ctypes.c_int, ctypes.c_int]
                fn.restype = ctypes.c_size_t
            for name in ("tvd_work_size3", "tvd_tgv_work_size3"):
                fn = getattr(lib, name)
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
                fn.restype = ctypes.c_size_t
            return lib
    return None


def available() -> bool:
    """Whether the compiled kernel is built and turned on."""
    return _library() is not None


#: The OpenMP runtimes whose ``GOMP_parallel`` the kernel can run its threads on.
_OPENMP_RUNTIMES = ("libgomp", "libomp", "libiomp5")


@lru_cache(maxsize=1)
def _openmp_runtime() -> tuple[int, int | None] | None:
    """The addresses of ``GOMP_parallel`` and ``GOMP_barrier`` (``None`` where the runtime
    lacks it) in the OpenMP runtime that PyTorch loaded, or ``None``.

    The kernel runs its threads in a parallel region of that runtime, on PyTorch's own
    threads: after each operation these spin for a while waiting for the next region, and
    threads of the kernel's own would have to compete with them for the cores. The runtime
    is found among the libraries this process has mapped (Linux); elsewhere, or where
    PyTorch was built without OpenMP, the kernel starts threads of its own.
    """
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return None
    loaded = {line.split()[-1] for line in maps.read_text().splitlines() if "/" in line}
    # PyTorch's own first (torch/lib, torch.libs), where another library brought a second.
    for path in sorted(loaded, key=lambda path: ("torch" not in path, path)):
        if Path(path).name.startswith(_OPENMP_RUNTIMES):
            try:
                runtime = ctypes.CDLL(path)
                parallel = ctypes.cast(runtime.GOMP_parallel, ctypes.c_void_p).value
            except (OSError, AttributeError):
                continue
            barrier = getattr(runtime, "GOMP_barrier", None)
            if parallel is not None:
                address = None if barrier is None else ctypes.cast(barrier, ctypes.c_void_p).value
                return parallel, address
    return None


def _openmp_parallel() -> int | None:
    """The address of the runtime's ``GOMP_parallel`` (:func:`_openmp_runtime`), or ``None``."""
    runtime = _openmp_runtime()
    return None if runtime is None else runtime[0]


def _openmp_barrier() -> int | None:
    """The address of the runtime's ``GOMP_barrier`` (:func:`_openmp_runtime`), or ``None``."""
    runtime = _openmp_runtime()
    return None if runtime is None else runtime[1]


def _threads_for(values: int) -> int:
    """Threads for ``values`` values: ``torch.get_num_threads()``, fewer where each would
    have less than ``MIN_VALUES_PER_THREAD``."""
    return max(1, min(torch.get_num_threads(), values // MIN_VALUES_PER_THREAD))


#: The kernel's own threads (where no OpenMP runtime was found), by their number.
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="tvdenoise")
    return _POOLS[workers]


def release_threads() -> None:
    """End the kernel's own threads, where it made any (they are made again when needed):
    the command does this when it is done, so that its process ends without waiting."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown()


def _image_addresses(x: Tensor | None, count: int) -> list[int | None]:
    """The address of each of the first ``count`` images of the batch ``x`` (``None`` for
    each where there is no tensor), without a view per image."""
    if x is None:
        return [None] * count
    base, step = x.data_ptr(), x.stride(0) * x.element_size()
    return [base + i * step for i in range(count)]


def _ranges(images: int, length: int, threads: int, volume: bool) -> list[tuple[int, int, int]]:
    """The parts of a batch of ``images`` images of ``length`` rows (planes of volumes)
    for ``threads`` threads: ``(image, first row, rows)``, the images' rows one after
    another cut into CHUNKS_PER_THREAD parts per thread and at the images' ends, so that
    threads take parts as they finish others. A volume's part holds at least
    MIN_PLANES_PER_CHUNK planes: each costs two plane copies and the flux of one more
    plane. Images as many as the parts (the weight search's tiles) are parts whole: a
    thread then makes all the steps of its image at once (:meth:`FusedSteps.steps`)."""
    total = images * length
    parts = threads * CHUNKS_PER_THREAD if threads > 1 else 1
    if volume:
        parts = max(1, min(parts, total // MIN_PLANES_PER_CHUNK))
    elif images >= parts:
        parts = 1
    cuts = sorted(
        {round(total * t / parts) for t in range(parts + 1)}
        | {i * length for i in range(images + 1)}
    )
    return [
        (start // length, start % length, stop - start) for start, stop in itertools.pairwise(cuts)
    ]


class _SideBySide:
    """Narrow images of a 2-D batch laid side by side for the kernel's steps: the active
    images, consecutive in the batch, in groups of ``k`` (at most ``SIDE_BY_SIDE_COLUMNS //
    W``) of one weight and learning rate, each group one image ``(C, H, k W)`` cut every
    ``W`` columns. The kernel gives it the same bits as the images apart: across a cut
    there is no difference, as at an image's last column."""

    def __init__(self, arrays: tuple[Tensor | None, ...], first: int, count: int, k: int) -> None:
        self.first, self.groups, self.k = first, count // k, k
        self._arrays = arrays
        self._wide = [None if x is None else self._new(x) for x in arrays]
        # The data and the observed mask stay as they are through the solve.
        for index in (3, 4):
            self._copy(index, into_wide=True)

    @classmethod
    def of(
        cls,
        arrays: tuple[Tensor | None, ...],
        images: list[int],
        settings: list[tuple[float, float]],
        width: int,
    ) -> _SideBySide | None:
        """The layout for the ``images`` (active, in order) of the batch ``arrays`` (``u,
        m, v, f, observed``) with ``settings[i]`` (half weight, rate), or ``None`` where
        there is none: fewer than two images to a group, active images that are not
        consecutive, or runs of one setting that no group size divides."""
        most = SIDE_BY_SIDE_COLUMNS // width
        if most < 2 or len(images) < 2 or arrays[1] is None:
            return None
        if images != list(range(images[0], images[-1] + 1)):
            return None
        runs = [len(list(run)) for _, run in itertools.groupby(images, key=settings.__getitem__)]
        k = next((k for k in range(most, 1, -1) if all(n % k == 0 for n in runs)), 1)
        return None if k < 2 else cls(arrays, images[0], len(images), k)

    def _new(self, x: Tensor) -> Tensor:
        c, h, w = x.shape[1:]
        return x.new_empty((self.groups, c, h, self.k * w))

    def _copy(self, index: int, *, into_wide: bool) -> None:
        x, wide = self._arrays[index], self._wide[index]
        if x is None or wide is None:
            return
        c, h, w = x.shape[1:]
        images = x[self.first : self.first + self.groups * self.k]
        # (G, k, C, H, W) as (G, C, H, k, W)
        apart = images.view(self.groups, self.k, c, h, w).permute(0, 2, 3, 1, 4)
        side = wide.view(apart.shape)
        if into_wide:
            side.copy_(apart)
        else:
            apart.copy_(side)

    def addresses(self) -> list[tuple[int | None, ...]]:
        """The arrays' addresses of every group, as :func:`_image_addresses` gives them."""
        columns = [_image_addresses(wide, self.groups) for wide in self._wide]
        return list(zip(*columns, strict=True))

    def gather(self, moments: bool) -> None:
        """The solver variable (and Adam's moments with ``moments``) into the layout."""
        for index in (0, 1, 2) if moments else (0,):
            self._copy(index, into_wide=True)

    def scatter(self) -> None:
        """The solver variable and Adam's moments back to the images."""
        for index in (0, 1, 2):
            self._copy(index, into_wide=False)


class FusedSteps:
    """Adam's steps of one solve through the kernel, the batch's rows (images) or planes
    (volumes) cut among threads.

    Made by :meth:`plan` where the kernel applies; :meth:`step` then replaces the
    gradient and the Adam step of one iteration, on the solver's own tensors.
    """

    def __init__(
        self,
        lib: ctypes.CDLL,
        ws: _Workspace | TGVWorkspace,
        u: Tensor,
        m: Tensor | None,
        v: Tensor | None,
        params: ctypes.Structure,
        betas: tuple[float, float],
        rates: list[float],
        active: list[bool],
    ) -> None:
        self._lib = lib
        self._params = params
        self._betas = betas
        self._volume = u.dim() == 5
        types = _TYPES[u.dtype]
        self._suffix = types.suffix
        # TGV's variable holds the image's C channels and a field: C is the image's.
        b, _, *spatial = u.shape
        c = ws.f.shape[1]
        self._tgv = params.tv in _WITH_FIELD
        half_weights = ws.half_weight.reshape(-1).tolist()
        images = [i for i in range(b) if active[i]]
        values = len(images) * math.prod(u.shape[1:])
        self._threads = _threads_for(values)
        self._buffers_kept: list[Tensor] = []
        self._like = u
        arrays = (u, m, v, ws.f, ws.observed)
        pointers = list(zip(*(_image_addresses(x, b) for x in arrays), strict=True))
        ranges = [
            (images[position], start, count)
            for position, start, count in _ranges(
                len(images), spatial[0], self._threads, self._volume
            )
        ]
        owners = [image for image, _, _ in ranges]
        if self._volume:
            d, h, w = spatial
            iz = 1.0 if ws.inverse_spacing[0] is None else ws.inverse_spacing[0]
            work_size = (lib.tvd_tgv_work_size3 if self._tgv else lib.tvd_work_size3)(c, h, w)
            chunks3 = []
            works = self._buffers(work_size, len(ranges))
            for (image, z0, count), work in zip(ranges, works, strict=True):
                part = types.chunk3(*pointers[image], c, d, h, w, z0, z0 + count)
                part.half_weight, part.rate, part.iz = half_weights[image], rates[image], iz
                part.work = work
                chunks3.append(part)
            # A part that starts inside a volume reads a copy of the plane before it; the
            # part before it, a copy of its first plane.
            for previous, part in itertools.pairwise(chunks3):
                if part.z0 > 0:
                    # All the variable's channels: a TGV volume's field too.
                    part.before, previous.after = self._buffers(u.shape[1] * h * w, 2)
            self._chunks: ctypes.Array[ctypes.Structure] = (types.chunk3 * len(chunks3))(*chunks3)
            self._side: _SideBySide | None = None
        else:
            h, w = spatial
            settings = [(half_weights[i], rates[i]) for i in range(b)]
            # Each image apart (for the energies, and the steps one at a time): made when
            # first needed, as the weight search's solves need none.
            self._apart_layout = (types, pointers, settings, (c, h, w), [w] * b, ranges)
            # For the steps, narrow images side by side (the energies read each image).
            self._side = _SideBySide.of(arrays, images, settings, w)
            side = self._side
            if side is not None:
                self._side_chunks, self._side_boundaries = self._image_chunks(
                    types,
                    side.addresses(),
                    [settings[side.first + g * side.k] for g in range(side.groups)],
                    (c, h, w),
                    [side.k * w] * side.groups,
                    _ranges(side.groups, h, self._threads, False),
                )
        self._values = math.prod(ws.f.shape[1:])
        self._count = len(ranges)
        self._sums = torch.zeros(2 * len(ranges), dtype=torch.float64)
        self._owners = owners
        self._images = images
        self._image_index = torch.tensor(images)
        self._weights = [2 * half_weights[i] for i in images]
        self._keep = (u, m, v, ws.f, ws.observed)
        self._moments = m is not None and v is not None

    @functools.cached_property
    def _apart(
        self,
    ) -> tuple[ctypes.Array[ctypes.Structure], tuple[int, ctypes.Array[ctypes.Structure]]]:
        """The chunks of the images each apart, and those that start inside an image."""
        return self._image_chunks(*self._apart_layout)

    @property
    def _parts(self) -> ctypes.Array[ctypes.Structure]:
        """The chunks of the images (volumes) each apart."""
        return self._chunks if self._volume else self._apart[0]

    def _image_chunks(
        self,
        types: _Types,
        pointers: list[tuple[int | None, ...]],
        settings: list[tuple[float, float]],
        shape: tuple[int, int, int],
        widths: list[int],
        ranges: list[tuple[int, int, int]],
    ) -> tuple[ctypes.Array[ctypes.Structure], tuple[int, ctypes.Array[ctypes.Structure]]]:
        """The chunks of ``ranges`` (image, first row, rows) of images ``(C, H, width)``
        whose arrays start at ``pointers[image]``, each with half its weight and its
        learning rate ``settings[image]``, cut every ``W`` columns (``shape = (C, H,
        W)``); and the chunks that start inside an image, with their count."""
        c, h, w = shape
        widest = max(widths[image] for image, _, _ in ranges)
        kind = "tgv_" if self._tgv else ""
        work_size = getattr(self._lib, f"tvd_{kind}work_size")(c, widest)
        works = self._buffers(work_size, len(ranges))
        chunks = []
        for (image, r, count), work in zip(ranges, works, strict=True):
            chunk = types.chunk(*pointers[image], c, h, widths[image], w, r, r + count)
            chunk.half_weight, chunk.rate = settings[image]
            chunk.work = work
            chunks.append(chunk)
        # A chunk that starts inside an image shares the flux of the row above it with
        # the chunk that ends there, its predecessor.
        boundaries: list[ctypes.Structure] = []
        flux_size = getattr(self._lib, f"tvd_{kind}flux_size")(c, widest)
        for before, chunk in itertools.pairwise(chunks):
            if chunk.r0 > 0:
                chunk.above = before.last = self._buffers(flux_size)[0]
                boundaries.append(chunk)
        return (types.chunk * len(chunks))(*chunks), (
            len(boundaries),
            (types.chunk * max(1, len(boundaries)))(*boundaries),
        )

    def _buffers(self, size: int, count: int = 1) -> list[int]:
        """The addresses of ``count`` new buffers of ``size`` values of the solver's type,
        in one allocation kept with the plan, each starting on a 64-byte line."""
        like = self._like
        step = -(-size * like.element_size() // 64) * 64
        buffer = like.new_empty(count * step // like.element_size())
        self._buffers_kept.append(buffer)
        return [buffer.data_ptr() + k * step for k in range(count)]

    @classmethod
    def plan(
        cls,
        ws: _Workspace | TGVWorkspace,
        u: Tensor,
        m: Tensor | None,
        v: Tensor | None,
        rates: Tensor,
        active: Tensor,
        beta1: float,
        beta2: float,
        adam_eps: float,
    ) -> FusedSteps | None:
        """The kernel's steps for this solve, or ``None`` where the kernel does not apply.
        Without Adam's moments ``m`` and ``v`` the plan gives energies only."""
        lib = _library()
        form = ws.term.kernel_form()
        reg = ws.reg
        if (
            lib is None
            or form is None
            or u.device.type != "cpu"
            or u.dtype not in _TYPES
            or not (u.is_contiguous() and ws.f.is_contiguous())
            or ws.f.dtype != u.dtype
            or not (ws.observed is None or ws.observed.is_contiguous())
            or not (ws.observed is None or ws.observed.dtype == u.dtype)
            or math.prod(u.shape[1:]) >= 1 << 31
        ):
            return None
        tv, ratio, field_step = reg.kernel_form()
        ih, iw = (1.0 if s is None else s for s in ws.inverse_spacing[-2:])
        params = _TYPES[u.dtype].params(tv, form[0], form[1], reg.eps, ih, iw)
        params.beta1, params.beta1c = beta1, 1 - beta1
        params.beta2, params.beta2c = beta2, 1 - beta2
        params.adam_eps = adam_eps
        params.floor = 0.0 if ws.term.floor is None else ws.term.floor
        params.ratio, params.field_step = ratio, field_step
        return cls(lib, ws, u, m, v, params, (beta1, beta2), rates.tolist(), active.tolist())

    def _run(self, name: str, *args: object) -> None:
        """The kernel's ``name`` (``tvd_step`` or ``tvd_energy``) with ``(count, chunks,
        *args)`` on this plan's threads, which share out the chunks: on the OpenMP runtime's
        threads where it was found, else on threads of the kernel's own."""
        parallel = _openmp_parallel() if self._threads > 1 else None
        if parallel is not None:
            run = getattr(self._lib, f"{name}_parallel_{self._suffix}")
            run(parallel, self._threads, self._volume, self._count, self._parts, *args)
            return
        kind = f"{name}3" if self._volume else name
        function: Callable[..., None] = getattr(self._lib, f"{kind}_{self._suffix}")
        counter = ctypes.c_int(0)
        call = (self._count, self._parts, *args, ctypes.byref(counter))
        extra = self._threads - 1
        pending = [_pool(extra).submit(function, *call) for _ in range(extra)]
        function(*call)
        for job in pending:
            job.result()

    def energy(self, previous: Tensor) -> Tensor:
        """The energy per image, as :meth:`~tvdenoise.solver._Workspace.energy` gives it;
        images outside this plan (stopped) keep their ``previous`` value."""
        self._run("tvd_energy", ctypes.byref(self._params), self._sums.data_ptr())
        sums = self._sums.tolist()
        tv = [0.0] * len(previous)
        fidelity = [0.0] * len(previous)
        for k, image in enumerate(self._owners):  # in the chunks' order
            tv[image] += sums[2 * k]
            fidelity[image] += sums[2 * k + 1]
        values = [
            (fidelity[i] + weight * tv[i]) / self._values
            for i, weight in zip(self._images, self._weights, strict=True)
        ]
        if len(values) == len(previous):
            return torch.tensor(values, dtype=previous.dtype)
        energy = previous.clone()
        energy[self._image_index] = torch.tensor(values, dtype=previous.dtype)
        return energy

    def steps(self, first: int, last: int, decay: float) -> None:
        """Adam's steps ``first`` to ``last`` (from 1), the learning rates of step ``k``
        times ``decay ** (k - 1)``: for images, in one call of the kernel on its threads
        (OpenMP's, or the calling one alone), which take whole images and make all their
        steps, or, where images are cut into parts, wait for each other between steps;
        else (a volume, threads of the kernel's own, or parts without the runtime's
        ``GOMP_barrier``) one :meth:`step` after another."""
        if not self._moments:
            raise ValueError("a plan without Adam's moments gives energies only")
        parallel = _openmp_parallel() if self._threads > 1 else None
        barrier = _openmp_barrier() if parallel is not None else None
        if not self._volume:
            side = self._side
            chunks, (count, boundaries) = (
                self._apart if side is None else (self._side_chunks, self._side_boundaries)
            )
            # One call where the threads can meet between steps, or need not: whole
            # images, each thread making all the steps of its own.
            meet = barrier is not None or count == 0
            if self._threads == 1 or (parallel is not None and meet):
                if side is not None:
                    side.gather(moments=first > 1)
                counters = (ctypes.c_int * (2 * (last - first + 1)))()
                getattr(self._lib, f"tvd_steps_{self._suffix}")(
                    parallel,
                    barrier,
                    self._threads,
                    len(chunks),
                    chunks,
                    count,
                    boundaries,
                    ctypes.byref(self._params),
                    first,
                    last,
                    decay,
                    *self._betas,
                    counters,
                )
                if side is not None:
                    side.scatter()
                return
        for k in range(first, last + 1):
            self.step(k, decay ** (k - 1))

    def step(self, k: int, decay: float) -> None:
        """Adam's ``k``-th step (from 1), with the learning rates times ``decay``."""
        if not self._moments:
            raise ValueError("a plan without Adam's moments gives energies only")
        p = self._params
        p.decay = decay
        p.correction1 = 1 - self._betas[0] ** k
        p.corr2 = math.sqrt(1 - self._betas[1] ** k)
        p.first = k == 1
        params = ctypes.byref(p)
        if self._volume:
            getattr(self._lib, f"tvd_boundaries3_{self._suffix}")(self._count, self._parts, params)
        else:
            count, chunks = self._apart[1]
            if count:
                getattr(self._lib, f"tvd_boundaries_{self._suffix}")(count, chunks, params)
        self._run("tvd_step", params)


def energy(ws: _Workspace, u: Tensor) -> Tensor | None:
    """The energy per image of the solver variable ``u``, as
    :meth:`~tvdenoise.solver._Workspace.energy` gives it, summed row by row by the kernel
    (no image-sized temporaries); ``None`` where the kernel does not apply."""
    everyone = torch.ones(len(u), dtype=torch.bool)
    rates = torch.zeros(len(u), dtype=torch.float64)
    plan = FusedSteps.plan(ws, u, None, None, rates, everyone, 0.0, 0.0, 0.0)
    return None if plan is None else plan.energy(u.new_zeros(len(u)))


def colour_transform(matrix: Tensor, x: Tensor) -> Tensor | None:
    """``out[:, o] = (m[o, 0] x[:, 0] + m[o, 1] x[:, 1]) + m[o, 2] x[:, 2]`` for a ``3 x 3``
    ``matrix`` and a ``(B, 3, *spatial)`` batch, in one pass over the pixels (shared by
    ``torch.get_num_threads()`` threads of PyTorch's OpenMP runtime for a large batch);
    ``None`` where the kernel does not apply (another device or type, a tensor that is not
    contiguous or that autograd follows)."""
    lib = _library()
    if (
        lib is None
        or x.device.type != "cpu"
        or x.dtype not in _TYPES
        or not x.is_contiguous()
        or x.requires_grad
        or x.dim() < 2
        or x.shape[1] != 3
    ):
        return None
    m = matrix.to("cpu", x.dtype).contiguous()
    out = torch.empty_like(x)
    n = math.prod(x.shape[2:])
    threads = _threads_for(x.numel())
    parallel = _openmp_parallel() if threads > 1 else None
    parts = threads * CHUNKS_PER_THREAD if parallel is not None else 1
    function = getattr(lib, f"tvd_colour_{_TYPES[x.dtype].suffix}")
    function(parallel, threads, x.data_ptr(), out.data_ptr(), x.shape[0], n, m.data_ptr(), parts)
    return out
