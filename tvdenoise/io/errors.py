"""The error every reader and writer raises, and a guard that keeps the codecs quiet.

A file a user names can be broken or hostile. Whatever goes wrong inside Pillow, tifffile
or imagecodecs reaches the caller as one :class:`ImageFileError` whose text is one line,
and nothing else reaches the terminal: the libraries' warnings and log messages are caught
while a file is read or written (:func:`quiet`), and the reader decides whether what they
said makes the file unreadable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ImageFileError", "OutputExistsError", "first_line", "os_reason", "quiet"]


class ImageFileError(Exception):
    """A file could not be read or written.

    ``str(err)`` is one line, ``"<what went wrong>: <path>"``, fit to show a user as is.

    Attributes:
        path: The file (or folder) concerned.
        reason: What went wrong, without the path.
    """

    path: Path
    reason: str

    def __init__(self, reason: str, path: str | os.PathLike[str]) -> None:
        self.reason = " ".join(reason.split())
        self.path = Path(path)
        super().__init__(f"{self.reason}: {self.path}")

    def __reduce__(self) -> tuple[type[ImageFileError], tuple[str, Path]]:
        return (type(self), (self.reason, self.path))


class OutputExistsError(ImageFileError):
    """The output file exists (or appeared while it was being written) and may not be
    replaced; a batch counts its job as skipped, not failed."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text, or its type's name if it has none."""
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


def os_reason(exc: OSError) -> str:
    """An ``OSError``'s reason in lower case, without the file name."""
    return (exc.strerror or str(exc)).lower()


# --------------------------------------------------------------------------------------
# Keeping third-party messages off the terminal
# --------------------------------------------------------------------------------------

_CAPTURE = threading.local()
_LOGGERS = ("tifffile", "imagecodecs", "PIL")


class _Capture(logging.Filter):
    """Takes the records of the codec libraries' loggers while this thread is in
    :func:`quiet`, so that Python's last-resort handler never prints them."""

    def filter(self, record: logging.LogRecord) -> bool:
        records: list[logging.LogRecord] | None = getattr(_CAPTURE, "records", None)
        if records is None:
            return True
        records.append(record)
        return False


_FILTER = _Capture()
for _name in _LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)


@contextlib.contextmanager
def quiet() -> Iterator[list[logging.LogRecord]]:
    """Silence the codecs' warnings and log records for the duration; yield the records.

    Log records of ``tifffile``, ``imagecodecs`` and ``PIL`` made on this thread are
    collected in the yielded list instead of printed; Python warnings are ignored (they
    only repeat what an exception or a record says). Calls nest.
    """
    outer: list[logging.LogRecord] | None = getattr(_CAPTURE, "records", None)
    records: list[logging.LogRecord] = []
    _CAPTURE.records = records
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield records
    finally:
        _CAPTURE.records = outer
        if outer is not None:
            outer.extend(records)
