"""Many files through the solver: batching, prefetching, records and reports.

The work on a plan (:mod:`tvdenoise.plan`, which turns what a user typed into
``(input, output)`` jobs without opening an image):

* :func:`process_file` restores one job and returns a :class:`Record`; it is a plain,
  picklable function of ``(Job, Settings)`` that a cluster engine can map over jobs.
* :func:`run_jobs` does the same for a whole plan on one machine, faster: files are read
  and written by worker threads while the solver runs, and images of the same shape are
  stacked into one ``(B, C, H, W)`` batch for :func:`tvdenoise.restore`. A stack (pages,
  frames, slices) is read whole and cut into 2-D images or 3-D volumes
  (:mod:`tvdenoise.io.layout`), which are batched the same way and put back together
  before the file is written. Both give the same pixels.

Failures of single files (unreadable, corrupt, unwritable) never raise; they come back as
records with ``status == "failed"`` and a one-line ``error``.

Example:
    >>> plan = plan_jobs(["scans/*.png"], Path("clean"))  # doctest: +SKIP
    >>> check_outputs(plan, overwrite=False)  # doctest: +SKIP
    >>> run_jobs(plan.jobs, Settings(), on_record=print)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .api import restore
from .defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_QUALITY,
    DEFAULT_SUFFIX,
    ColorChoice,
    RegulariserName,
    check_device_name,
)
from .fidelity import NoiseModel
from .io import (
    DEFAULT_MAX_PIXELS,
    ImageFileError,
    LoadedImage,
    OutputExistsError,
    load_image,
    save_image,
    write_atomically,
)
from .io.layout import Prepared, choose_layout, prepare
from .plan import Job, path_key
from .solver import DEFAULT_MAX_ITER, DEFAULT_TOL, Callback
from .tv import TVKind

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_QUALITY",
    "DEFAULT_SUFFIX",
    "IterationProgress",
    "Record",
    "Settings",
    "SolverSettings",
    "Status",
    "process_file",
    "resolve_device",
    "run_jobs",
    "write_report",
]

Status = Literal["restored", "skipped", "failed"]

#: Given the jobs of one solver batch, a context manager that yields the callback
#: :func:`~tvdenoise.solver.solve` calls at each energy check (or ``None``).
IterationProgress = Callable[[Sequence["Job"]], AbstractContextManager[Callback | None]]


# --------------------------------------------------------------------------------------
# Settings, jobs and records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolverSettings:
    """Keyword arguments of :func:`tvdenoise.restore`, passed through unchanged.

    A new solver option needs a field here (with the solver's default) and an option in the
    command line; nothing in between has to change.

    Attributes:
        weight: Regularisation weight (>= 0), or ``"auto"`` to choose it per image from
            its noise level; see :func:`tvdenoise.denoise`.
        sigma: Gaussian noise level on the [0, 1] scale for the automatic weight;
            ``None`` estimates it per image.
        noise: ``"gaussian"``, ``"impulse"`` or ``"poisson"``.
        peak: Photons at full scale for Poisson noise; ``None`` estimates it.
        tile: Tile size in pixels; ``None`` decides automatically, ``0`` never tiles.
        tv: ``"isotropic"`` or ``"anisotropic"``.
        color: ``"auto"``, ``"joint"``, ``"separate"`` or ``"opponent"``.
        chroma_weight: Colour weight for ``"opponent"``; ``None`` chooses it.
        max_iter: Most iterations per image.
        tol: Relative energy change at which an image stops.
        lr: Initial learning rate; ``None`` lets the solver choose from the weight.
        reg: ``"tv"`` or ``"tgv"`` (second-order total generalised variation).
    """

    weight: float | Literal["auto"] = "auto"
    sigma: float | None = None
    noise: NoiseModel = "gaussian"
    peak: float | None = None
    tile: int | None = None
    tv: TVKind = "isotropic"
    color: ColorChoice = "auto"
    chroma_weight: float | None = None
    max_iter: int = DEFAULT_MAX_ITER
    tol: float = DEFAULT_TOL
    lr: float | None = None
    reg: RegulariserName = "tv"

    def kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments for :func:`~tvdenoise.restore`."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Settings:
    """Everything that decides how a job is done, apart from its file names.

    Attributes:
        solver: Options handed to the solver as they are.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``; see
            :func:`resolve_device`.
        quality: JPEG and WebP quality of the outputs, 1 to 100.
        overwrite: Replace existing outputs instead of skipping them.
        max_pixels: Refuse images with more pixels than this; ``None`` for no limit.
        batch_size: Most images of one shape denoised together by :func:`run_jobs`.
        dims: 2 (every slice, page or frame of a stack alone) or 3 (a stack as one
            volume); ``None`` chooses per file: 3 for files with a Z axis, else 2 (see
            :mod:`tvdenoise.io.layout`).
        spacing: ``(dz, dy, dx)`` sample distances overriding the files' own; ``None``
            takes them from each file.
    """

    solver: SolverSettings = field(default_factory=SolverSettings)
    device: str = "auto"
    quality: int = DEFAULT_QUALITY
    overwrite: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    batch_size: int = DEFAULT_BATCH_SIZE
    dims: int | None = None
    spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be between 1 and 100, got {self.quality}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1 or None, got {self.max_pixels}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.dims not in (None, 2, 3):
            raise ValueError(f"dims must be 2, 3 or None, got {self.dims!r}")
        if self.spacing is not None and (
            len(self.spacing) != 3 or not all(s > 0 for s in self.spacing)
        ):
            raise ValueError(f"spacing must be three numbers > 0, got {self.spacing!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as one flat JSON-ready mapping (solver options first)."""
        outer = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del outer["solver"]
        outer["dims"] = "auto" if self.dims is None else self.dims
        outer["spacing"] = "file" if self.spacing is None else list(self.spacing)
        return {**self.solver.kwargs(), **outer}


@dataclass(frozen=True)
class Record:
    """What became of one job.

    Attributes:
        input: The input file.
        output: The output file (written only when ``status == "restored"``).
        status: ``"restored"``, ``"skipped"`` (the output existed, or another run wrote it
            meanwhile) or ``"failed"``.
        error: For a failure, one line ``"<what went wrong>: <path>"``; else ``None``.
        weight: The weight the solver used (for a stack cut into several solver images,
            their mean).
        sigma: The Gaussian noise level (on the 0-255 scale) the automatic weight was
            chosen for, estimated or given (mean over a stack's solver images); ``None``
            for a fixed weight or other noise.
        iterations: Iterations the solver ran for this image (the most of a stack's).
        energy: The final energy (loss) of this image (mean over a stack's).
        dims: Spatial dimensions the file was denoised in: 2 (each 2-D image alone) or
            3 (volumes).
        spacing: The sample distances given to the solver per spatial axis, relative
            to X.
        images: How many 2-D images or volumes the file was cut into.
        seconds: Wall time spent on this file: reading, its share of a batched solve,
            writing.
    """

    input: Path
    output: Path
    status: Status
    error: str | None = None
    weight: float | None = None
    sigma: float | None = None
    iterations: int | None = None
    energy: float | None = None
    seconds: float = 0.0
    dims: int | None = None
    spacing: tuple[float, ...] | None = None
    images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping, paths as strings."""
        values = dataclasses.asdict(self)
        values["input"] = os.fspath(self.input)
        values["output"] = os.fspath(self.output)
        if self.spacing is not None:
            values["spacing"] = list(self.spacing)
        return values


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``--device`` value, checked to be present.

    Args:
        name: ``"auto"`` (CUDA if present, else MPS if present, else CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Returns:
        The device.

    Raises:
        ValueError: The name is not one of the above, or the device is not available.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    text = check_device_name(name)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(text)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} is not available (PyTorch finds no CUDA device)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {name!r} is not available (PyTorch finds {count} CUDA device"
                f"{'' if count == 1 else 's'}, numbered from 0)"
            )
        return device
    if not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} is not available (PyTorch finds no MPS device)")
    return device


# --------------------------------------------------------------------------------------
# Doing the work
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Loaded:
    job: Job
    image: LoadedImage
    prepared: Prepared
    seconds: float

    @property
    def key(self) -> tuple[Any, ...]:
        """Files whose solver images share this key can be denoised in one batch."""
        return (*self.prepared.noisy.shape[1:], *self.prepared.layout.spacing)

    @property
    def count(self) -> int:
        return int(self.prepared.noisy.shape[0])


@dataclass(frozen=True, eq=False)
class _Solved:
    loaded: _Loaded
    restored: torch.Tensor
    weight: float
    sigma: float | None
    iterations: int
    energy: float
    seconds: float


def _failed(job: Job, error: str, seconds: float) -> Record:
    return Record(job.input, job.output, "failed", error=error, seconds=seconds)


def _read(job: Job, settings: Settings) -> _Loaded | Record:
    """Load a job's input and cut it into solver images, or say why not (output already
    there, unreadable file)."""
    start = time.perf_counter()
    if not settings.overwrite and os.path.lexists(job.output):
        return Record(job.input, job.output, "skipped")
    try:
        image = load_image(job.input, max_pixels=settings.max_pixels)
        layout = choose_layout(image, dims=settings.dims, spacing=settings.spacing)
        prepared = prepare(image, layout)
    except ImageFileError as exc:
        return _failed(job, str(exc), time.perf_counter() - start)
    except Exception as exc:  # one odd file must not stop a batch
        error = f"cannot read the image ({type(exc).__name__}: {exc}): {job.input}"
        return _failed(job, " ".join(error.split()), time.perf_counter() - start)
    return _Loaded(job, image, prepared, time.perf_counter() - start)


def _layout_kwargs(loaded: _Loaded) -> dict[str, Any]:
    """The solver's ``spatial_dims`` and ``spacing`` for a file's layout."""
    layout = loaded.prepared.layout
    kwargs: dict[str, Any] = {}
    if layout.dims != 2:
        kwargs["spatial_dims"] = layout.dims
    if any(s != 1.0 for s in layout.spacing):
        kwargs["spacing"] = layout.spacing
    return kwargs


def _solve(
    group: Sequence[_Loaded],
    settings: Settings,
    device: torch.device,
    progress: IterationProgress | None,
) -> list[_Solved] | list[Record]:
    """Denoise the solver images of files that share a key together, ``batch_size`` at a
    time; a solver failure fails the whole group."""
    start = time.perf_counter()
    jobs = [item.job for item in group]
    size = settings.batch_size
    try:
        noisy = torch.cat([item.prepared.noisy for item in group])
        layout = _layout_kwargs(group[0])
        parts = []
        for first in range(0, noisy.shape[0], size):
            chunk = noisy[first : first + size].to(device)
            with progress(jobs) if progress is not None else contextlib.nullcontext() as callback:
                result = restore(chunk, **settings.solver.kwargs(), **layout, callback=callback)
            parts.append(result)
        restored = torch.cat([part.restored.cpu() for part in parts])
        weights = torch.cat([part.weights.cpu().reshape(-1) for part in parts])
        sigmas = (None if any(part.sigmas is None for part in parts)
                  else torch.cat([part.sigmas.cpu().reshape(-1) for part in parts]))  # type: ignore[union-attr]  # fmt: skip
        iterations = torch.cat([part.iterations.cpu().reshape(-1) for part in parts])
        energy = torch.cat([part.energy.cpu().reshape(-1) for part in parts])
    except (RuntimeError, ValueError) as exc:  # out of memory, a broken device, NaN input
        seconds = time.perf_counter() - start
        message = " ".join(str(exc).split()) or type(exc).__name__
        return [
            _failed(item.job, f"denoising failed ({message}): {item.job.input}", seconds)
            for item in group
        ]
    total = sum(item.count for item in group)
    solved: list[_Solved] = []
    first = 0
    for item in group:
        part = slice(first, first + item.count)
        first += item.count
        solved.append(
            _Solved(
                item,
                restored[part],
                _single(weights[part].mean()),
                None if sigmas is None else _single(sigmas[part].mean() * 255),
                int(iterations[part].max()),
                _single(energy[part].mean()),
                item.seconds + (time.perf_counter() - start) * item.count / total,
            )
        )
    return solved


def _single(value: torch.Tensor) -> float:
    """A float32 number as the shortest decimal that reads back as it (0.1, not 0.10000000149)."""
    return float(f"{float(value):.7g}")


def _write(solved: _Solved, settings: Settings) -> Record:
    """Save a restored image atomically and describe the result."""
    start = time.perf_counter()
    loaded = solved.loaded
    job = loaded.job
    try:
        restored = loaded.prepared.restore(loaded.image, solved.restored)
        save_image(job.output, restored, quality=settings.quality, overwrite=settings.overwrite)
    except OutputExistsError:  # created meanwhile by another run: not ours to replace
        return Record(job.input, job.output, "skipped")
    except ImageFileError as exc:
        return _failed(job, str(exc), solved.seconds + time.perf_counter() - start)
    except Exception as exc:  # one odd file must not stop a batch
        error = f"cannot write the image ({type(exc).__name__}: {exc}): {job.output}"
        return _failed(job, " ".join(error.split()), solved.seconds)
    layout = loaded.prepared.layout
    return Record(
        job.input,
        job.output,
        "restored",
        weight=solved.weight,
        sigma=solved.sigma,
        iterations=solved.iterations,
        energy=solved.energy,
        seconds=solved.seconds + time.perf_counter() - start,
        dims=layout.dims,
        spacing=layout.spacing,
        images=loaded.count,
    )


def process_file(job: Job, settings: Settings) -> Record:
    """Restore one file: read, denoise, write. Never raises for a bad file.

    A plain function of picklable arguments, so that a cluster engine can map it over
    jobs (``client.map(process_file, jobs, settings=settings)``). It gives the same pixels
    as :func:`run_jobs`.

    Args:
        job: The input and output file.
        settings: How to denoise and write.

    Returns:
        The record of what happened.

    Raises:
        ValueError: ``settings.device`` is unknown or not available.
    """
    loaded = _read(job, settings)
    if isinstance(loaded, Record):
        return loaded
    solved = _solve([loaded], settings, resolve_device(settings.device), None)[0]
    if isinstance(solved, Record):
        return solved
    return _write(solved, settings)


def run_jobs(
    jobs: Sequence[Job],
    settings: Settings,
    *,
    on_record: Callable[[Record], None],
    iteration_progress: IterationProgress | None = None,
) -> None:
    """Restore many files, stacking images of one shape into batches.

    Reading runs ahead on two threads and writing behind on two, while the solver runs
    on the calling thread. Loaded files wait in a window of ``2 * batch_size``: files whose
    solver images (2-D images, or the slices or volumes of a stack) share a shape and
    spacing form a group, solved ``batch_size`` images at a time as soon as it holds that
    many; when the window is full, the group holding the oldest waiting file is solved as
    it is. So memory holds at most about ``3 * batch_size`` files whatever their number.

    On an exception (such as ``KeyboardInterrupt``) reading stops, the images already
    restored are still written (each write is atomic) and reported, and the exception
    propagates.

    Args:
        jobs: What to do, e.g. ``plan_jobs(...).jobs``.
        settings: How to denoise and write.
        on_record: Called on the calling thread with each record as it is settled (not
            necessarily in job order).
        iteration_progress: Given the jobs of each solver batch, returns a context manager
            yielding the solver's callback, e.g. to drive a progress bar.

    Raises:
        ValueError: ``settings.device`` is unknown or not available.
    """
    device = resolve_device(settings.device)
    window = 2 * settings.batch_size
    pending = iter(jobs)
    reads: deque[Future[_Loaded | Record]] = deque()
    writes: deque[Future[Record]] = deque()
    groups: dict[tuple[Any, ...], list[_Loaded]] = {}  # insertion order = age
    readers = ThreadPoolExecutor(2, thread_name_prefix="tvdenoise-read")
    # Two writers, so that a batch's files are encoded two at a time: the last batch's
    # files do not queue behind one thread while the solver, finished, leaves cores idle.
    writer = ThreadPoolExecutor(2, thread_name_prefix="tvdenoise-write")

    def waiting() -> int:
        return sum(len(group) for group in groups.values())

    def read_ahead() -> None:
        room = window - len(reads) - waiting()
        for job in _take(pending, room):
            reads.append(readers.submit(_read, job, settings))

    def settle_writes(keep: int) -> None:
        while writes and (len(writes) > keep or writes[0].done()):
            on_record(writes.popleft().result())

    def solve_group(key: tuple[Any, ...]) -> None:
        group = groups.pop(key)
        read_ahead()  # the next files load while this group is solved
        for item in _solve(group, settings, device, iteration_progress):
            if isinstance(item, Record):
                on_record(item)
            else:
                writes.append(writer.submit(_write, item, settings))
        settle_writes(keep=settings.batch_size)

    try:
        read_ahead()
        while reads:
            item = reads.popleft().result()
            if isinstance(item, Record):
                on_record(item)
            else:
                group = groups.setdefault(item.key, [])
                group.append(item)
                if sum(member.count for member in group) >= settings.batch_size:
                    solve_group(item.key)
                elif waiting() >= window:
                    solve_group(next(iter(groups)))
            settle_writes(keep=settings.batch_size)
            read_ahead()
        while groups:
            solve_group(next(iter(groups)))
        settle_writes(keep=0)
    except BaseException:
        readers.shutdown(wait=True, cancel_futures=True)
        for future in writes:
            with contextlib.suppress(Exception):
                on_record(future.result())
        raise
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)


def _take(items: Iterator[Job], count: int) -> list[Job]:
    taken: list[Job] = []
    while len(taken) < count:
        item = next(items, None)
        if item is None:
            break
        taken.append(item)
    return taken


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def write_report(
    path: Path,
    settings: Settings,
    jobs: Sequence[Job],
    records: Sequence[Record],
    *,
    interrupted: bool = False,
) -> None:
    """Write a JSON report atomically (temporary file in the same folder, then rename).

    The report holds the settings, a count per status, whether the run was interrupted,
    and one record per settled job in the order of ``jobs`` (jobs never reached when
    interrupted are counted as ``"not_processed"`` and have no record).

    Args:
        path: The report file; missing folders are created, an existing file replaced.
        settings: The settings of the run.
        jobs: The jobs of the run, to order the records.
        records: The records received so far.
        interrupted: Whether the run was stopped before its end.

    Raises:
        ImageFileError: The report cannot be written.
    """
    order = {path_key(job.input): i for i, job in enumerate(jobs)}
    ordered = sorted(records, key=lambda r: order.get(path_key(r.input), len(order)))
    counts = {status: 0 for status in ("restored", "skipped", "failed")}
    for record in records:
        counts[record.status] += 1
    counts["not_processed"] = max(0, len(jobs) - len(records))
    document = {
        "settings": settings.to_dict(),
        "interrupted": interrupted,
        "summary": counts,
        "records": [record.to_dict() for record in ordered],
    }
    text = json.dumps(document, indent=2) + "\n"
    write_atomically(path, lambda fh: fh.write(text.encode("utf-8")), overwrite=True)
