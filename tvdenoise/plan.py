"""Planning a run: from what a user typed to ``(input, output)`` jobs, opening no image.

:func:`plan_jobs` turns file names, folders and quoted globs and the ``-o`` target into a
list of :class:`Job` pairs. It only looks at names. Everything that can be wrong before any
work starts (a glob matching nothing, two inputs mapping to one output, an output that would
land on an input) is raised here as :class:`PlanError`. :func:`check_outputs` and
:func:`check_report_path` look at the outputs, :func:`remove_stale_temporaries` at what a
killed run left. The work itself is :mod:`tvdenoise.batch`.

This module does not import PyTorch, so the command answers usage errors without it.

Example:
    >>> plan = plan_jobs(["scans/*.png"], Path("clean"))  # doctest: +SKIP
    >>> check_outputs(plan, overwrite=False)  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .defaults import DEFAULT_SUFFIX
from .io import SUPPORTED_SUFFIXES, check_output_path, is_temporary

__all__ = [
    "Job",
    "Plan",
    "PlanError",
    "check_outputs",
    "check_report_path",
    "output_folders",
    "path_key",
    "plan_jobs",
    "remove_stale_temporaries",
]

_GLOB_MAGIC = re.compile(r"[*?[]")

#: The temporary files earlier versions wrote: ``.<name>.<random>.tmp``
#: (:func:`tempfile.mkstemp`'s eight random letters, digits or underscores); today's are
#: named by :func:`tvdenoise.io.is_temporary`.
_LEGACY_TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp", re.ASCII)
#: A temporary file untouched for this long (seconds) was left by a run that was killed;
#: a run still writing one keeps touching it. Younger ones are left alone.
STALE_TEMPORARY_AGE = 15 * 60


class PlanError(ValueError):
    """The request cannot be carried out as given; nothing has been read or written.

    ``str(err)`` is one line, ``"<what went wrong>: <path>"`` (or just the first part when
    no single path is to blame).

    Attributes:
        reason: What went wrong.
        path: The path or pattern concerned, or ``None``.
    """

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else os.fspath(path)
        super().__init__(reason if self.path is None else f"{reason}: {self.path}")

    def __reduce__(self) -> tuple[type[PlanError], tuple[str, str | None]]:
        return (type(self), (self.reason, self.path))


@dataclass(frozen=True)
class Job:
    """One file to restore.

    Attributes:
        input: The noisy image.
        output: Where the restored image goes; never the same file as ``input``.
    """

    input: Path
    output: Path


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The jobs for a request, in a stable order.

    Attributes:
        jobs: One job per distinct input file.
        single: True when one named file goes to one named (or default) output file. Then
            an existing output is an error unless overwriting; otherwise it is skipped, so
            that re-running a batch finishes it.
    """

    jobs: tuple[Job, ...]
    single: bool


def plan_jobs(
    inputs: Sequence[str],
    output: str | os.PathLike[str] | None,
    *,
    suffix: str | None = None,
    fmt: str | None = None,
) -> Plan:
    """Expand inputs into jobs and name their outputs; opens no image.

    Each input is an existing file, a folder (every supported image directly in it), or a
    glob pattern (``*``, ``?``, ``[...]``; ``**`` matches any depth), expanded here so that
    quoted patterns work. Globs and folders keep only files with a supported suffix; hidden
    files are left out, and so are files inside an ``output`` folder that lies below the
    folder or the pattern's root (earlier results).

    Output names: an input keeps its path relative to its root (the folder, the literal
    part of the glob, or the file's own folder), under the ``output`` folder, with
    ``suffix`` added to the stem and the extension replaced by ``fmt`` if given. Several
    inputs, a folder or a glob need ``output`` to be a folder (created later if missing).
    One file may go to a named file; without ``output`` it goes beside the input as
    ``<stem><suffix><ext>``, ``suffix`` defaulting to :data:`DEFAULT_SUFFIX`.

    Args:
        inputs: What the user named, in order.
        output: The ``-o`` value, or ``None``; a trailing slash marks a folder.
        suffix: Added to each output stem; default ``""`` in a folder, ``"_denoised"``
            beside the input.
        fmt: Output extension such as ``".png"`` (the input's own when ``None``).

    Returns:
        The plan; inputs named twice are kept once.

    Raises:
        PlanError: A file does not exist, a pattern or folder holds no image, ``output``
            is not a folder where one is needed, ``fmt`` names no writable format, two
            inputs map to one output, or an output would replace an input.
    """
    if not inputs:
        raise PlanError("no input given")
    if fmt is not None:
        fmt = _normalise_format(fmt)
    sources: list[tuple[Path, Path, Path | None]] = []  # (file, path under root, root)
    several = len(inputs) > 1
    for text in inputs:
        found, root = _expand(text)
        several = several or root is not None
        sources.extend((file, relative, root) for file, relative in found)

    folder: Path | None = None
    target: Path | None = None
    needs_folder = "several inputs, a folder or a pattern need -o to name"
    if output is not None:
        as_text = os.fspath(output)
        target = Path(os.path.expanduser(as_text))
        if target.is_dir() or as_text.endswith(("/", os.sep)):
            folder = target
        elif several:
            if target.exists():
                raise PlanError(f"{needs_folder} a folder, not a file", target)
            if target.suffix.lower() in SUPPORTED_SUFFIXES:
                raise PlanError(f"{needs_folder} a folder, not an image file", target)
            folder = target
    elif several:
        raise PlanError(f"{needs_folder} the folder for the results")

    if folder is not None:
        # A pattern or folder whose tree holds the output folder never picks up earlier
        # results from inside it ('scans/**/*.png' -o scans/clean).
        sources = [
            (file, relative, root)
            for file, relative, root in sources
            if root is None or not (_below(folder, root) and _below(file, folder))
        ]
        if not sources:
            raise PlanError("every matching file is inside the output folder", folder)
    jobs: list[Job] = []
    for file, relative, _ in sources:
        if folder is not None:
            destination = folder / _renamed(relative, suffix or "", fmt)
        elif target is not None:
            if fmt is not None or suffix is not None:
                raise PlanError(
                    "--suffix and --format shape derived output names; -o names the file",
                    target,
                )
            destination = target
        else:
            name = _renamed(Path(file.name), _or(suffix, DEFAULT_SUFFIX), fmt)
            destination = file.parent / name
        jobs.append(Job(file, destination))
    return Plan(_without_conflicts(jobs), single=not several and folder is None)


def check_outputs(plan: Plan, *, overwrite: bool) -> None:
    """Check every output can be written, before any work (see :func:`check_output_path`).

    In a single-file plan an existing output is refused unless ``overwrite``; in a batch
    it is allowed here, as :func:`run_jobs` skips it.

    Raises:
        tvdenoise.io.ImageFileError: An output has an unknown suffix, is its input, is a
            folder, exists (single file, without ``overwrite``), or its folder cannot be
            created or written.
    """
    for job in plan.jobs:
        check_output_path(job.output, inputs=[job.input], overwrite=overwrite or not plan.single)


def check_report_path(path: Path, plan: Plan) -> None:
    """Check that a report can be written at ``path``, before any work.

    Raises:
        PlanError: ``path`` is a folder or one of the plan's images, or the folder it would
            go into cannot be created or written.
    """
    if path.is_dir():
        raise PlanError("the report must be a file, not a folder", path)
    key = path_key(path)
    if any(key in (path_key(job.input), path_key(job.output)) for job in plan.jobs):
        raise PlanError("the report would replace an image of this run", path)
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PlanError("permission denied, cannot write the report in the folder", folder)


def output_folders(plan: Plan) -> set[Path]:
    """The folders the plan writes into (absolute; some may not exist yet)."""
    return {job.output.absolute().parent for job in plan.jobs}


def remove_stale_temporaries(
    folders: Iterable[Path], *, older_than: float = STALE_TEMPORARY_AGE
) -> list[Path]:
    """Remove the temporary files an earlier, killed run left in ``folders``.

    Only files named as :func:`tvdenoise.io.write_atomically` names its temporary files
    (:func:`tvdenoise.io.is_temporary`; or as earlier versions did, ``.<name>.<8
    characters>.tmp`` for an image or a JSON report) and untouched for ``older_than``
    seconds are removed: a younger one may belong to a run that is still writing it.
    Folders that do not exist are passed over.

    Args:
        folders: Where to look (not below them).
        older_than: The age in seconds (of the last modification) from which a temporary
            file is taken as left over.

    Returns:
        The files removed, sorted.
    """
    removed: list[Path] = []
    now = time.time()
    for folder in sorted(set(folders)):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if not _is_our_temporary(entry.name):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                    continue
                os.unlink(entry.path)
            except OSError:
                continue  # gone meanwhile, or not ours to remove
            removed.append(Path(entry.path))
    return sorted(removed)


def _is_our_temporary(name: str) -> bool:
    if is_temporary(name):
        return True
    legacy = _LEGACY_TEMPORARY_NAME.fullmatch(name)
    return legacy is not None and (
        Path(legacy["name"]).suffix.lower() in (*SUPPORTED_SUFFIXES, ".json")
    )


def _or(value: str | None, default: str) -> str:
    return default if value is None else value


def _normalise_format(fmt: str) -> str:
    suffix = "." + fmt.strip().lower().lstrip(".")
    if suffix not in SUPPORTED_SUFFIXES:
        allowed = ", ".join(sorted(s.lstrip(".") for s in SUPPORTED_SUFFIXES))
        raise PlanError(f"unknown output format {fmt!r} (use one of {allowed})")
    return suffix


def _renamed(relative: Path, suffix: str, fmt: str | None) -> Path:
    return relative.with_name(relative.stem + suffix + (fmt or relative.suffix))


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_SUFFIXES and not path.name.startswith(".")


def _expand(text: str) -> tuple[list[tuple[Path, Path]], Path | None]:
    """Files named by one input, each with its path under its root; and that root for a
    folder or pattern (which makes the request a batch), ``None`` for a named file."""
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        try:
            entries = sorted(path.iterdir())
        except OSError as exc:
            raise PlanError(f"cannot list the folder ({exc.strerror or exc})", path) from None
        files = [(p, Path(p.name)) for p in _once(entries) if _is_image_name(p) and p.is_file()]
        if not files:
            raise PlanError("no supported image files in the folder", path)
        return files, path
    if path.exists() or not _GLOB_MAGIC.search(text):
        if not path.exists():
            raise PlanError("no such file", path)
        return [(path, Path(path.name))], None

    parts = path.parts
    literal = 0
    while literal < len(parts) - 1 and not _GLOB_MAGIC.search(parts[literal]):
        literal += 1
    root = Path(*parts[:literal]) if literal else Path()
    matches = sorted(_glob_files(root, parts[literal:]))
    files = [(m, m.relative_to(root)) for m in matches if _is_image_name(m)]
    if not files:
        raise PlanError("no supported image files match the pattern", text)
    return files, root


def _glob_files(root: Path, pattern: Sequence[str]) -> list[Path]:
    """Files under ``root`` whose path below it matches ``pattern``, each real file once.

    ``pattern`` holds one glob per path component, ``**`` for any number of folders, with
    the semantics of :func:`glob.glob` (``recursive=True``): wildcards do not match hidden
    names. Unlike :func:`glob.glob`, folders are walked breadth first and each real folder
    is entered once, so a symbolic-link loop ends and a linked folder is reached under its
    shortest name (its own name before a link's at one depth); a file reachable under
    several names is kept once, likewise.
    """
    recursive = "**" in pattern
    found: list[Path] = []
    seen_files: set[tuple[int, int]] = set()
    seen_folders: set[tuple[int, int]] = set()
    queue: deque[tuple[Path, tuple[str, ...]]] = deque([(root, ())])
    while queue:
        folder, below = queue.popleft()
        try:
            identity = _identity(folder)
            if identity in seen_folders:
                continue
            seen_folders.add(identity)
            with os.scandir(folder) as scan:
                # Real files and folders before links to them, so each keeps its own name.
                entries = sorted(scan, key=lambda entry: (entry.is_symlink(), entry.name))
        except OSError:
            continue  # unreadable or vanished: glob.glob skips it too
        for entry in entries:
            names = (*below, entry.name)
            path = folder / entry.name
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir and _may_hold_matches(pattern, names, recursive):
                queue.append((path, names))
            elif is_file and _glob_match(pattern, names):
                try:
                    identity = _identity(path)
                except OSError:
                    continue
                if identity not in seen_files:
                    seen_files.add(identity)
                    found.append(path)
    return found


def _once(paths: Sequence[Path]) -> list[Path]:
    """``paths`` with each real file once, under its own name rather than a link's."""
    kept: set[int] = set()
    seen: set[tuple[int, int]] = set()
    for i in sorted(range(len(paths)), key=lambda i: (paths[i].is_symlink(), i)):
        try:
            identity = _identity(paths[i])
        except OSError:
            continue  # a broken link
        if identity not in seen:
            seen.add(identity)
            kept.add(i)
    return [paths[i] for i in sorted(kept)]


def _identity(path: Path) -> tuple[int, int]:
    """The device and inode of the file or folder ``path`` names (links followed)."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _may_hold_matches(pattern: Sequence[str], folders: tuple[str, ...], recursive: bool) -> bool:
    """Whether files below ``folders`` can match ``pattern`` (prunes the walk)."""
    return (recursive or len(folders) < len(pattern)) and _prefix_match(pattern, folders)


def _prefix_match(pattern: Sequence[str], folders: tuple[str, ...]) -> bool:
    """Whether ``folders`` can be the leading folders of a path matching ``pattern``."""
    if not folders:
        return True
    if not pattern:
        return False
    if pattern[0] == "**":
        return _prefix_match(pattern[1:], folders) or (
            _component_match("**", folders[0]) and _prefix_match(pattern, folders[1:])
        )
    return _component_match(pattern[0], folders[0]) and _prefix_match(pattern[1:], folders[1:])


def _glob_match(pattern: Sequence[str], names: tuple[str, ...]) -> bool:
    """Whether the path components ``names`` match ``pattern`` in full."""
    if not pattern:
        return not names
    if pattern[0] == "**":
        return _glob_match(pattern[1:], names) or (
            bool(names) and _component_match("**", names[0]) and _glob_match(pattern, names[1:])
        )
    return bool(names) and (
        _component_match(pattern[0], names[0]) and _glob_match(pattern[1:], names[1:])
    )


def _component_match(pattern: str, name: str) -> bool:
    """One path component against one glob, hidden names only by a pattern with a dot."""
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return pattern == "**" or fnmatch.fnmatch(name, pattern)


def path_key(path: Path) -> str:
    """A name that is equal for two spellings of one file."""
    return os.path.normcase(os.path.abspath(path))


def _below(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies strictly inside ``folder``."""
    return path_key(path).startswith(os.path.join(path_key(folder), ""))


def _without_conflicts(jobs: Sequence[Job]) -> tuple[Job, ...]:
    """Drop repeated inputs; refuse two inputs on one output or an output on an input."""
    kept: list[Job] = []
    by_output: dict[str, Job] = {}
    for job in jobs:
        other = by_output.get(path_key(job.output))
        if other is None:
            by_output[path_key(job.output)] = job
            kept.append(job)
        elif path_key(other.input) != path_key(job.input):
            raise PlanError(
                f"{other.input} and {job.input} would both be written to the same output "
                "(use --suffix or --format, or separate runs)",
                job.output,
            )
    inputs = {path_key(job.input): job for job in kept}
    for job in kept:
        victim = inputs.get(path_key(job.output))
        if victim is not None:
            raise PlanError(
                f"the output for {job.input} would replace the input file, which is never "
                "overwritten (choose another -o or --suffix)",
                job.output,
            )
    return tuple(kept)
