"""Ctrl-C and SIGTERM for the command: one way to stop, at any moment.

Job schedulers stop a job with SIGTERM, people with Ctrl-C (SIGINT). Both become
:class:`Interrupted`, a ``KeyboardInterrupt``, so that code which stops cleanly on Ctrl-C
(:func:`tvdenoise.batch.run_jobs` writes what is finished) does the same on SIGTERM, and
the command exits with ``128 + signal`` (130, 143) after one line on stderr.

This module imports only the standard library: the entry point installs the handlers
with it *before* loading anything else, so that a signal while PyTorch loads is handled
too. A signal is also remembered, so that one swallowed on its way (a library's broad
``except`` around an import, a module left half loaded) still stops the command.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

__all__ = ["Interrupted", "check", "install", "received", "report", "stopped"]

#: The signals this process received since :func:`install`, oldest first.
received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: stop, keep what is finished, report, exit ``128 + signal``.

    Attributes:
        exit_code: 130 for SIGINT, 143 for SIGTERM.
        verb: ``"interrupted"`` or ``"terminated"``, for messages.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum
        self.verb = "terminated" if signum == signal.SIGTERM else "interrupted"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    received.append(signum)
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _on_signal)


def stopped(exc: BaseException | None) -> Interrupted | None:
    """The interruption ``exc`` stands for, if any.

    A plain ``KeyboardInterrupt`` is Ctrl-C; an exception that wraps one (Click's
    ``Abort``) is looked through; and after a received signal any error counts as it (a
    signal inside an import can surface as an ``ImportError`` of a half-loaded module).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, Interrupted):
            return exc
        if isinstance(exc, KeyboardInterrupt):
            return Interrupted(signal.SIGINT)
        exc = exc.__cause__ or exc.__context__
    return Interrupted(received[-1]) if received else None


def check() -> None:
    """Raise the interruption of a signal that was received but swallowed on its way."""
    if received:
        raise Interrupted(received[-1])


def report(interruption: Interrupted) -> None:
    """Print the one line that says the command stopped (plain stderr: nothing to load)."""
    sys.stderr.write(f"error: {interruption.verb}\n")
    sys.stderr.flush()
