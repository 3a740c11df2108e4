"""The registry: which module reads and writes which file suffix.

Readers are chosen by the file's first bytes (a PNG named ``.tif`` is still read as PNG);
writers by the output's suffix.
"""

from __future__ import annotations

from pathlib import Path

from . import npy, pillow, png, tiff
from .errors import ImageFileError
from .image import FileFormat

__all__ = ["FORMATS", "SUPPORTED_SUFFIXES", "format_for", "reader_for"]

#: Every format, in the order the README lists them.
FORMATS: tuple[FileFormat, ...] = (*png.FORMATS, *tiff.FORMATS, *pillow.FORMATS, *npy.FORMATS)

_BY_SUFFIX = {suffix: fmt for fmt in FORMATS for suffix in fmt.suffixes}
_BY_NAME = {fmt.name: fmt for fmt in FORMATS}

#: Lower-case file suffixes that can be both read and written.
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_BY_SUFFIX)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def format_for(file: Path) -> FileFormat:
    """The format an output path is written in, from its suffix.

    Raises:
        ImageFileError: The suffix is not one of :data:`SUPPORTED_SUFFIXES`.
    """
    suffix = file.suffix.lower()
    if suffix not in _BY_SUFFIX:
        allowed = " ".join(sorted(SUPPORTED_SUFFIXES))
        shown = f"{suffix!r}" if suffix else "no suffix"
        raise ImageFileError(
            f"cannot tell the output format from {shown} (use one of {allowed})", file
        )
    return _BY_SUFFIX[suffix]


def reader_for(head: bytes) -> FileFormat | None:
    """The format whose reader takes a file starting with ``head``; ``None`` leaves the
    file to Pillow (JPEG, WebP, GIF, BMP and whatever else it recognises)."""
    if head.startswith(png.SIGNATURE):
        return _BY_NAME["PNG"]
    if head[:4] in _TIFF_MAGIC:
        return _BY_NAME["TIFF"]
    if head.startswith(npy.MAGIC):
        return _BY_NAME["NPY"]
    return None
