"""The ``tvdenoise`` command: options, messages and exit codes around :mod:`tvdenoise.batch`.

This module parses and checks the command line, hands the work to :mod:`tvdenoise.batch`
and reports: progress bars and messages on stderr (messages through ``tqdm.write`` so bars
are not torn), the path of each file written on stdout. A user's mistake is one line,
``error: <what went wrong>: <path>``, never a traceback.

Exit codes: 0 all done, 1 some file failed, 2 a usage error (nothing was processed),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM, as job schedulers send it). Both signals
stop the run the same way at any moment: files finished so far are kept, the summary and
the report are written, and the last line on stderr says so; no traceback.

File names print whatever the terminal's encoding: on stdout a name that is not valid in
it is written as its original bytes (``surrogateescape``), so that it can be piped back
to other tools, else as ``\\N`` escapes; on stderr as ``\\x..`` escapes.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, cast, get_args

import typer
import typer.core

# Only light modules at import time: --help, --version and usage errors answer without
# loading PyTorch (or tqdm). The modules that do the work are imported where they are used.
from . import __version__, stop, threads
from .defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_ITER,
    DEFAULT_MAX_PIXELS,
    DEFAULT_QUALITY,
    DEFAULT_SUFFIX,
    DEFAULT_TOL,
    MAX_WEIGHT,
    MIN_TILE,
    ColorChoice,
    NoiseModel,
    RegulariserName,
    TVKind,
    check_device_name,
)

if TYPE_CHECKING:
    from torch import Tensor

    from .batch import IterationProgress, Record, Settings
    from .dask import Cluster
    from .plan import Job, Plan
    from .solver import Callback

EXIT_OK = 0
EXIT_FAILED = 1  # at least one file could not be read, denoised or written
EXIT_USAGE = 2  # bad options or file names; nothing was processed
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)

_HELP = f"""Restore noisy images by total-variation denoising.

INPUT is an image file, a folder (every supported image directly in it) or a glob
pattern, quoted so that tvdenoise expands it ('scans/*.png'; '**' matches any depth).

One file goes to -o FILE, or without -o beside the input as <stem>{DEFAULT_SUFFIX}<ext>;
an existing output is then refused unless --overwrite.

Several inputs, a folder or a glob need -o FOLDER (created if missing; a single file may
use one too). Outputs keep their paths under the folder or the glob's fixed part, and
existing outputs are skipped unless --overwrite, so a re-run finishes an interrupted
batch. Images of one size are denoised together, --batch-size at a time.

Stacks (multi-page TIFF, ImageJ and OME hyperstacks, animated GIF/WebP/PNG, .npy
volumes) are read whole and written back whole, in their own dtype (float32 stays
float32). --dims 3 denoises a stack as one volume, --dims 2 each 2-D slice, page or frame
alone. Default: 3 for files with a Z axis (z-stacks, volumes), 2 for everything else
(time series, pages, frames: coupling along time is --dims 3). The dims used per file are
in --report. Z spacing relative to the pixel size comes from the file (ImageJ, OME) or
--spacing.

The input is never overwritten. The path of each file written is printed on stdout;
progress, messages and errors go to stderr.

With --scheduler tcp://HOST:8786 each file is a task of a running Dask cluster;
--workers N starts N local worker processes instead (both need tvdenoise[dask]).

Exit codes: 0 done, 1 some file failed, 2 usage error (nothing processed), 130
interrupted by Ctrl-C, 143 terminated by SIGTERM (files finished so far are kept; the
summary and report are written).
"""


def _escape_for_stdout(exc: UnicodeError) -> tuple[str | bytes, int]:
    """Encoding errors on stdout: a file name's original bytes, else a ``\\N`` escape."""
    try:
        return codecs.lookup_error("surrogateescape")(exc)
    except UnicodeError:
        return codecs.backslashreplace_errors(exc)


codecs.register_error("tvdenoise.stdout", _escape_for_stdout)


def _tolerate_any_file_name() -> None:
    """Let stdout and stderr print names that are not valid in their encoding."""
    for stream, errors in ((sys.stdout, "tvdenoise.stdout"), (sys.stderr, "backslashreplace")):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors=errors)


class _Command(typer.core.TyperCommand):
    """Typer's command, with Click's usage errors shortened to one ``error:`` line."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        _tolerate_any_file_name()
        try:
            code = super().main(
                args,
                prog_name,
                complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except typer.TyperException as exc:  # bad option value, missing argument, ...
            message = exc.format_message().strip().rstrip(".")
            _print_error(f"{message[:1].lower()}{message[1:]} (see --help)")
            code = exc.exit_code
        except typer.Abort as exc:
            stopped = stop.stopped(exc)
            if stopped is None:
                _print_error("aborted")
                code = EXIT_FAILED
            else:
                stop.report(stopped)
                code = stopped.exit_code
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else EXIT_OK)

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        """Parse the command line; Ctrl-C meanwhile (option callbacks load modules) is one
        line and its code, not Typer's silent exit 130."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt as exc:
            stopped = stop.stopped(exc)
            assert stopped is not None
            stop.report(stopped)
            raise typer.Exit(stopped.exit_code) from None

    def invoke(self, ctx: Any) -> Any:
        """Run the command; a Ctrl-C or SIGTERM outside the batch is one line and its code."""
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.TyperException):
            raise  # the command's own exit, after its summary; a usage error
        except BaseException as exc:
            stopped = stop.stopped(exc)
            if stopped is None:
                raise
            stop.report(stopped)
            raise typer.Exit(stopped.exit_code) from None


app = typer.Typer(pretty_exceptions_enable=False, rich_markup_mode=None)


# --------------------------------------------------------------------------------------
# Option checks that Typer's declarations cannot express
# --------------------------------------------------------------------------------------


def _weight(value: str) -> str:
    """Accept ``auto`` or a finite number >= 0 (kept as text; see :func:`_weight_value`)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither 'auto' nor a number") from None
    _check_weight(number, value)
    return value


def _check_weight(number: float, text: str) -> None:
    if not (math.isfinite(number) and number >= 0):
        raise typer.BadParameter(f"{text} is not a number >= 0")
    if number > MAX_WEIGHT:
        raise typer.BadParameter(f"{text} is above the largest weight, {MAX_WEIGHT:g}")


def _chroma_weight(value: float | None) -> float | None:
    if value is not None:
        _check_weight(value, str(value))
    return value


def _sigma(value: float | None) -> float | None:
    if value is not None and not (0 <= value <= 255):
        raise typer.BadParameter(f"{value} is not a noise level between 0 and 255 grey levels")
    return value


def _weight_value(value: str) -> float | Literal["auto"]:
    return "auto" if value == "auto" else float(value)


def _non_negative(value: float | None) -> float | None:
    if value is not None and not (value >= 0 and math.isfinite(value)):
        raise typer.BadParameter(f"{value} is not a number >= 0")
    return value


def _positive(value: float | None) -> float | None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"{value} is not a number > 0")
    return value


def _choice(kind: Any) -> Callable[[str], str]:
    """A check of a value against the choices of a ``Literal`` type, for a callback."""
    allowed: tuple[str, ...] = get_args(kind)

    def check(value: str) -> str:
        text = value.strip().lower()
        if text not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return text

    return check


def _completion(kind: Any) -> Callable[[], list[str]]:
    """The choices of a ``Literal`` type, for shell completion."""
    return lambda: list(get_args(kind))


def _device(value: str) -> str:
    try:
        return check_device_name(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _tile(value: int | None) -> int | None:
    if value is not None and 0 < value < MIN_TILE:
        raise typer.BadParameter(f"{value} is below {MIN_TILE} pixels (0: never tile)")
    return value


def _output_format(value: str | None) -> str | None:
    if value is None:
        return None
    from .io import SUPPORTED_SUFFIXES

    suffix = "." + value.strip().lower().lstrip(".")
    if suffix not in SUPPORTED_SUFFIXES:
        allowed = ", ".join(sorted(s.lstrip(".") for s in SUPPORTED_SUFFIXES))
        raise typer.BadParameter(f"{value!r} is not one of {allowed}")
    return suffix


def _dims(value: str) -> str:
    """Accept ``auto``, ``2`` or ``3``."""
    text = value.strip().lower()
    if text not in ("auto", "2", "3"):
        raise typer.BadParameter(f"{value!r} is not one of auto, 2, 3")
    return text


def _spacing(value: str | None) -> str | None:
    """Accept ``DZ,DY,DX``: three numbers > 0 (kept as text; see :func:`_spacing_value`)."""
    if value is None:
        return None
    parts = value.replace(" ", "").split(",")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not three numbers DZ,DY,DX") from None
    if len(numbers) != 3 or not all(math.isfinite(n) and n > 0 for n in numbers):
        raise typer.BadParameter(f"{value!r} is not three numbers > 0 (DZ,DY,DX)")
    return value


def _spacing_value(value: str | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    dz, dy, dx = (float(part) for part in value.replace(" ", "").split(","))
    return dz, dy, dx


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"tvdenoise {__version__}")
        raise typer.Exit()


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


@app.command(
    name="tvdenoise",
    cls=_Command,
    help=_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def tvdenoise(
    inputs: Annotated[
        list[str],
        typer.Argument(metavar="INPUT", help="Image files, folders or quoted globs."),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Output file (one input) or folder (several, or ending in /).",
            show_default=False,
        ),
    ] = None,
    weight: Annotated[
        str,
        typer.Option(
            metavar="auto|W",
            callback=_weight,
            help=(
                "Regularisation weight >= 0, larger smooths more (ROF lambda = weight/2); "
                "auto: chosen per image from its estimated noise level."
            ),
        ),
    ] = "auto",
    sigma: Annotated[
        float | None,
        typer.Option(
            callback=_sigma,
            help=(
                "Gaussian noise std in grey levels of 0-255 (16-bit files: relative to full "
                "range; float and signed files: to their value range); sets the automatic "
                "weight instead of estimating the noise."
            ),
            show_default="estimated",
        ),
    ] = None,
    noise: Annotated[
        str,
        typer.Option(
            metavar="gaussian|impulse|poisson",
            callback=_choice(NoiseModel),
            autocompletion=_completion(NoiseModel),
            help=(
                "Noise model: gaussian (squared error), impulse (salt-and-pepper, dead "
                "pixels), poisson (photon counts)."
            ),
        ),
    ] = "gaussian",
    peak: Annotated[
        float | None,
        typer.Option(
            callback=_positive,
            help="Photons at full scale, for --noise poisson.",
            show_default="estimated",
        ),
    ] = None,
    tv: Annotated[
        str,
        typer.Option(
            metavar="isotropic|anisotropic",
            callback=_choice(TVKind),
            autocompletion=_completion(TVKind),
            help="Total variation variant.",
        ),
    ] = "isotropic",
    reg: Annotated[
        str,
        typer.Option(
            metavar="tv|tgv",
            callback=_choice(RegulariserName),
            autocompletion=_completion(RegulariserName),
            help=(
                "Regulariser: tv, or tgv (second-order total generalised variation: smooth "
                "shading without staircases, for micrographs; Gaussian noise only)."
            ),
        ),
    ] = "tv",
    color: Annotated[
        str,
        typer.Option(
            metavar="auto|opponent|joint|separate",
            callback=_choice(ColorChoice),
            autocompletion=_completion(ColorChoice),
            help=(
                "Colour coupling: opponent (brightness and colour apart, each its own "
                "weight), joint (one edge map for all channels), separate (each alone); "
                "auto: opponent for RGB with --noise gaussian, else joint."
            ),
        ),
    ] = "auto",
    chroma_weight: Annotated[
        float | None,
        typer.Option(
            callback=_chroma_weight,
            help="Colour weight for --color opponent (--weight is then the brightness one).",
            show_default="automatic, or 1.9 x --weight",
        ),
    ] = None,
    max_iter: Annotated[
        int, typer.Option(min=1, help="Most solver iterations per image.")
    ] = DEFAULT_MAX_ITER,
    tol: Annotated[
        float,
        typer.Option(callback=_positive, help="Stop once the relative energy change is below."),
    ] = DEFAULT_TOL,
    lr: Annotated[
        float | None,
        typer.Option(
            callback=_positive,
            help="Initial learning rate.",
            show_default="proportional to the weight",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            metavar="auto|cpu|cuda|cuda:N|mps",
            callback=_device,
            help="Where to compute; auto picks CUDA, then MPS, then the CPU.",
        ),
    ] = "auto",
    tile: Annotated[
        int | None,
        typer.Option(
            min=0,
            callback=_tile,
            help=f"Solve in overlapping tiles of this many pixels (>= {MIN_TILE}); 0 = never.",
            show_default="automatic for very large images",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Most images of one size denoised together.")
    ] = DEFAULT_BATCH_SIZE,
    quality: Annotated[
        int, typer.Option(min=1, max=100, help="JPEG and WebP quality.")
    ] = DEFAULT_QUALITY,
    suffix: Annotated[
        str | None,
        typer.Option(
            help="Added to the stem of output names.",
            show_default=f"none in a folder, {DEFAULT_SUFFIX} beside the input",
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="EXT",
            callback=_output_format,
            help="Extension of derived output names, e.g. png.",
            show_default="the input's",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs (never an input).")
    ] = False,
    dims: Annotated[
        str,
        typer.Option(
            metavar="auto|2|3",
            callback=_dims,
            help=(
                "3: a stack is one volume (TV across slices); 2: each slice, page or frame "
                "alone. auto: 3 for files with a Z axis (z-stacks, volumes), else 2 (time "
                "series, pages, frames)."
            ),
        ),
    ] = "auto",
    spacing: Annotated[
        str | None,
        typer.Option(
            metavar="DZ,DY,DX",
            callback=_spacing,
            help=(
                "Sample distances along z, y and x in any one unit (only ratios count), "
                "instead of the file's; a larger DZ couples slices less."
            ),
            show_default="from the file (ImageJ, OME), else 1,1,1",
        ),
    ] = None,
    max_pixels: Annotated[
        int,
        typer.Option(
            min=0,
            help="Refuse larger images, counting every slice of a stack (decompression "
            "bombs); 0 = no limit.",
        ),
    ] = DEFAULT_MAX_PIXELS,
    scheduler: Annotated[
        str | None,
        typer.Option(
            metavar="tcp://HOST:PORT",
            help="Run each file as a task of this Dask scheduler's cluster.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Run the files on a local Dask cluster of N single-threaded processes.",
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE.json",
            dir_okay=False,
            help="Write settings and one record per input as JSON, also when interrupted.",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or summary; errors only.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Print settings, iterations and times; per-batch bars."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    started = time.perf_counter()
    stop.check()
    if quiet and verbose:
        _fail("--quiet and --verbose exclude each other", EXIT_USAGE)
    if sigma is not None and weight != "auto":
        _fail("--sigma sets the automatic weight; it cannot go with --weight W", EXIT_USAGE)
    if sigma is not None and noise != "gaussian":
        _fail("--sigma applies to --noise gaussian only", EXIT_USAGE)
    if peak is not None and noise != "poisson":
        _fail("--peak applies to --noise poisson only", EXIT_USAGE)
    if reg == "tgv" and (noise != "gaussian" or tv != "isotropic"):
        _fail("--reg tgv supports --noise gaussian and --tv isotropic only", EXIT_USAGE)
    if color == "opponent" and noise != "gaussian":
        _fail("--color opponent needs --noise gaussian; use joint or separate", EXIT_USAGE)
    if chroma_weight is not None and color in ("joint", "separate"):
        _fail("--chroma-weight applies to --color opponent (or auto) only", EXIT_USAGE)
    if scheduler is not None and workers is not None:
        _fail("--scheduler and --workers exclude each other", EXIT_USAGE)
    # The command sets up threads only where it is the one that loads torch, never inside
    # a program that already uses torch (see tvdenoise.threads).
    owns_torch = "torch" not in sys.modules
    if owns_torch:
        threads.limit_spinning()
    # Planning reads names only and needs no PyTorch: mistakes in them are told at once.
    from .io import ImageFileError
    from .plan import (
        PlanError,
        check_outputs,
        check_report_path,
        output_folders,
        plan_jobs,
        remove_stale_temporaries,
    )

    try:
        plan = plan_jobs(inputs, output, suffix=suffix, fmt=fmt)
        check_outputs(plan, overwrite=overwrite)
        if report is not None:
            check_report_path(report, plan)
    except (PlanError, ImageFileError) as exc:
        _fail(str(exc), EXIT_USAGE)
    from .batch import Settings, SolverSettings, resolve_device, write_report

    on_cpu = False
    if scheduler is None:
        try:
            torch_device = resolve_device(device)
        except ValueError as exc:
            _fail(str(exc), EXIT_USAGE)
        device = str(torch_device)
        on_cpu = torch_device.type == "cpu"
    # else each worker of the cluster resolves it on its own machine (auto: its own GPU).
    folders = output_folders(plan) | ({report.absolute().parent} if report is not None else set())
    for leftover in remove_stale_temporaries(folders):
        if not quiet:
            _message(f"removed a temporary file left by an interrupted run: {leftover}")

    settings = Settings(
        solver=SolverSettings(
            weight=_weight_value(weight),
            sigma=None if sigma is None else sigma / 255,
            noise=cast(NoiseModel, noise),
            peak=peak,
            tile=tile,
            tv=cast(TVKind, tv),
            color=cast(ColorChoice, color),
            chroma_weight=chroma_weight,
            max_iter=max_iter,
            tol=tol,
            lr=lr,
            reg=cast(RegulariserName, reg),
        ),
        device=device,
        quality=quality,
        overwrite=overwrite,
        max_pixels=max_pixels or None,
        batch_size=batch_size,
        dims=None if dims == "auto" else int(dims),
        spacing=_spacing_value(spacing),
    )
    cpu_threads = _use_idle_cpus() if owns_torch and on_cpu else None
    if verbose:
        shown = " ".join(f"{k}={v}" for k, v in settings.to_dict().items())
        _message(f"settings: {shown}")
        if cpu_threads is not None:
            _message(f"threads: {cpu_threads}")
        _message(f"files: {len(plan.jobs)}")

    if scheduler is None and workers is None:
        records, stopped = _run(plan, settings, quiet=quiet, verbose=verbose)
    else:
        with _cluster(scheduler, workers) as cluster:
            if verbose:
                _message(f"cluster: {cluster.address}")
            records, stopped = _run(plan, settings, quiet=quiet, verbose=verbose, cluster=cluster)

    counts = {status: 0 for status in ("restored", "skipped", "failed")}
    for record in records:
        counts[record.status] += 1
    if stopped is not None or (not quiet and not plan.single):
        summary = ", ".join(f"{n} {status}" for status, n in counts.items())
        if stopped is not None:
            not_processed = len(plan.jobs) - len(records)
            summary = f"{stopped.verb}: {summary}, {not_processed} not processed"
        _message(summary)
    if verbose:
        _message(f"time: {time.perf_counter() - started:.2f} s")

    code = (
        stopped.exit_code if stopped is not None else EXIT_FAILED if counts["failed"] else EXIT_OK
    )
    if report is not None:
        try:
            write_report(report, settings, plan.jobs, records, interrupted=stopped is not None)
        except ImageFileError as exc:
            _print_error(f"cannot write the report: {exc}")
            code = code or EXIT_FAILED
    raise typer.Exit(code)


@contextlib.contextmanager
def _cluster(scheduler: str | None, workers: int | None) -> Iterator[Cluster]:
    """The Dask cluster of ``--scheduler``/``--workers`` while the block runs; exit 2 saying
    why when Dask is not installed or the cluster cannot be reached or started."""
    try:
        from .dask import Cluster, ClusterError
    except ImportError as exc:
        _fail(
            f'--scheduler and --workers need Dask ({exc}); pip install "tvdenoise[dask]"',
            EXIT_USAGE,
        )
    try:
        with Cluster(scheduler=scheduler, workers=workers) as cluster:
            yield cluster
    except ClusterError as exc:
        _fail(str(exc), EXIT_USAGE)


def _use_idle_cpus() -> int:
    """Run torch on no more CPU threads than there are idle CPUs; return the count."""
    import torch

    return threads.use_idle_cpus(torch.set_num_threads, torch.get_num_threads())


def _run(
    plan: Plan,
    settings: Settings,
    *,
    quiet: bool,
    verbose: bool,
    cluster: Cluster | None = None,
) -> tuple[list[Record], stop.Interrupted | None]:
    """Run the plan (on ``cluster`` if given) under progress bars; return the records and
    what stopped it, if any."""
    from tqdm import tqdm

    records: list[Record] = []
    # disable=None: tqdm shows a bar only when stderr is a terminal.
    auto: bool | None = True if quiet else None
    files = tqdm(
        total=len(plan.jobs),
        desc="files",
        unit="file",
        disable=True if plan.single else auto,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    bars = (
        None
        if quiet or cluster is not None or not (plan.single or verbose)
        else _iteration_bars(settings.solver.max_iter)
    )

    def on_record(record: Record) -> None:
        records.append(record)
        files.update(1)
        if record.status == "failed":
            _print_error(record.error or f"failed: {record.input}")
        elif record.status == "restored":
            _print_output(os.fspath(record.output))
            if verbose:
                _message(
                    f"restored {record.input} ({record.images} x {record.dims}-D): "
                    + ("" if record.iterations is None else f"{record.iterations} iterations, ")
                    + ("" if record.energy is None else f"loss {record.energy:.5g}, ")
                    + f"weight {record.weight:g}, "
                    + ("" if record.sigma is None else f"sigma {record.sigma:.3g}/255, ")
                    + f"{record.seconds:.2f} s"
                )
        elif verbose:
            _message(f"skipped {record.input}: output exists (use --overwrite): {record.output}")

    from .batch import run_jobs

    stopped: stop.Interrupted | None = None
    try:
        stop.check()
        if cluster is None:
            run_jobs(plan.jobs, settings, on_record=on_record, iteration_progress=bars)
        else:
            cluster.run_jobs(plan.jobs, settings, on_record=on_record)
    except KeyboardInterrupt as exc:
        stopped = stop.stopped(exc)
    finally:
        files.close()
    return records, stopped


def _print_output(name: str) -> None:
    """Print an output's name on stdout. Where whoever read stdout has gone (``| head``),
    the names go nowhere from then on and the files are still written: they are the
    command's work, the names only a report of it."""
    from tqdm import tqdm

    try:
        tqdm.write(name, file=sys.stdout)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _iteration_bars(max_iter: int) -> IterationProgress:
    """Progress over the solver's iterations for each batch, showing the loss."""
    from tqdm import tqdm

    @contextlib.contextmanager
    def bar(jobs: Sequence[Job]) -> Iterator[Callback]:
        name = jobs[0].input.name if len(jobs) == 1 else f"{len(jobs)} images"
        with tqdm(
            total=max_iter, desc=name, unit="it", leave=False, file=sys.stderr, disable=None
        ) as progress:

            def update(iteration: int, energy: Tensor) -> None:
                progress.set_postfix(loss=f"{float(energy.mean()):.5g}", refresh=False)
                progress.update(iteration - progress.n)

            yield update

    return bar


def _message(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def _print_error(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"error: {' '.join(text.split())}", file=sys.stderr)


def _fail(text: str, code: int) -> NoReturn:
    _print_error(text)
    raise typer.Exit(code)


def main() -> None:
    """Run the command (the ``tvdenoise`` console script calls this through
    :func:`tvdenoise.__main__.main`, which sets up the signals before loading this module).

    Ctrl-C and SIGTERM raise :class:`tvdenoise.stop.Interrupted` from here on, whatever is
    running: the batch stops cleanly, and anywhere else the command prints one line and
    exits with 130 or 143.
    """
    stop.install()
    try:
        app(prog_name="tvdenoise")
    except (KeyboardInterrupt, Exception) as exc:
        stopped = stop.stopped(exc)
        if stopped is None:
            raise
        stop.report(stopped)
        sys.exit(stopped.exit_code)
