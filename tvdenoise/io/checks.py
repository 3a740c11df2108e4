"""Checks on an output path, made before any expensive work."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import ImageFileError
from .formats import format_for

__all__ = ["check_output_path", "same_file"]


def check_output_path(
    path: str | os.PathLike[str],
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
) -> Path:
    """Check that an image can be written at ``path``, before any expensive work.

    Args:
        path: Where the result will be written.
        inputs: The input files; the output may never be one of them, even with
            ``overwrite=True``.
        overwrite: Whether an existing (non-input) file may be replaced.

    Returns:
        ``path``, made absolute with symbolic links resolved.

    Raises:
        ImageFileError: The suffix is not a supported format, the path is one of
            ``inputs``, it exists and ``overwrite`` is false, it is a folder, or the
            folder it would go into cannot be created or written.

    Example:
        >>> check_output_path("out/clean.png", inputs=["noisy.png"])  # doctest: +SKIP
        PosixPath('/home/me/out/clean.png')
    """
    file = Path(path).expanduser().resolve()
    format_for(file)
    for source in inputs:
        if same_file(file, Path(source)):
            raise ImageFileError(
                "output is the input file, which is never overwritten (choose another output)",
                file,
            )
    if file.is_dir():
        raise ImageFileError("output is a folder, not a file", file)
    if file.exists() and not overwrite:
        raise ImageFileError("output exists (use --overwrite)", file)
    folder = file.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ImageFileError("cannot create the output folder, a file is in the way", folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImageFileError("permission denied, cannot write in the folder", folder)
    return file


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and different spellings included)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    resolved_a = os.path.normcase(a.expanduser().resolve())
    return resolved_a == os.path.normcase(b.expanduser().resolve())
