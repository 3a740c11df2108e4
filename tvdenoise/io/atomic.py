"""Atomic writes that never replace a file unless asked to.

A file is written under a temporary name of our own in its destination folder
(``.<name>.<random>.tvdenoise-tmp``, see :func:`is_temporary`) and given its final name
only once complete, so an interrupted run never leaves half a file under the final name.
The final name is created *without replacing* anything, in one atomic step: Linux's
``renameat2(..., RENAME_NOREPLACE)``, or else a hard link to the temporary file (which
fails if the name exists) followed by removing the temporary name; on file systems with
neither, an existence check followed by a rename, which leaves only a short race. If the
name appeared meanwhile (another process, a concurrent run), :class:`OutputExistsError` is
raised and the temporary file is removed. With ``overwrite=True`` the final name is
replaced atomically by ``os.replace``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import ImageFileError, OutputExistsError, first_line, os_reason

__all__ = ["TEMPORARY_SUFFIX", "is_temporary", "write_atomically"]

#: Every temporary file this package writes ends with this suffix.
TEMPORARY_SUFFIX = ".tvdenoise-tmp"

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named like a temporary file of :func:`write_atomically`."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)


def write_atomically(
    file: Path, write: Callable[[IO[bytes]], object], *, overwrite: bool = False
) -> None:
    """Write a file through a temporary file in its folder, then give it its name.

    An interrupted or failed ``write`` leaves no file behind; missing folders are created.

    Args:
        file: The destination.
        write: Writes the content to the binary handle it is given.
        overwrite: Replace an existing ``file``; otherwise an existing file, or one that
            appears while writing, is never touched.

    Raises:
        OutputExistsError: ``file`` exists (or appeared meanwhile) and ``overwrite`` is
            false.
        ImageFileError: The folder cannot be created or written, ``file`` is a folder,
            or ``write`` raised ``OSError``/``ValueError``.
    """
    if file.is_dir():
        raise ImageFileError("output is a folder, not a file", file)
    if not overwrite and os.path.lexists(file):
        raise OutputExistsError("output exists (use --overwrite)", file)
    folder = file.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageFileError(f"cannot create the folder ({os_reason(exc)})", folder) from None
    temporary = folder / f".{file.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
    try:
        fh = open(temporary, "xb")  # noqa: SIM115 - closed below, before the rename
    except OSError as exc:
        raise ImageFileError(f"cannot write in the folder ({os_reason(exc)})", folder) from None
    try:
        with fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temporary, _new_file_mode(file))
        if overwrite:
            os.replace(temporary, file)
        else:
            _rename_no_replace(temporary, file)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, FileExistsError):
            raise OutputExistsError(
                "output was created by someone else while this one was written", file
            ) from None
        if isinstance(exc, OSError | ValueError):
            raise ImageFileError(f"could not write ({first_line(exc)})", file) from exc
        raise


def _rename_no_replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` atomically, raising FileExistsError if it exists."""
    if _renameat2(source, target):
        return
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (
            errno.EPERM,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.EXDEV,
            errno.EMLINK,
            errno.ENOSYS,
        ):
            raise
        # No hard links here (FAT, some network and FUSE file systems).
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", os.fspath(target)) from None
        os.rename(source, target)
        return
    os.unlink(source)


def _load_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()


def _renameat2(source: Path, target: Path) -> bool:
    """``renameat2`` with ``RENAME_NOREPLACE``; False where the system lacks it."""
    if _RENAMEAT2 is None:
        return False
    result = _RENAMEAT2(
        _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # old kernel, or a file system without the flag: fall back
    raise OSError(code, os.strerror(code), os.fspath(target))


def _new_file_mode(file: Path) -> int:
    """The permission bits the output should get: the old file's, or 0o666 minus umask."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(file.stat().st_mode)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask
