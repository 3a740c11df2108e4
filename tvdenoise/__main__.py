"""``python -m tvdenoise`` and the ``tvdenoise`` console script.

The signals are set up first, with nothing but the standard library loaded, and only then
the command and PyTorch are loaded: so Ctrl-C or SIGTERM at any moment, even while modules
load, ends in one line on stderr and exit code 130 or 143 (see :mod:`tvdenoise.stop`).

When the command is done, the process ends without the interpreter's teardown: once
PyTorch is loaded, finalising its modules takes longer than denoising a small image (the
start-up figures of ``benchmarks/bench_speed.py``). Everything a normal exit does that
anyone can observe still happens first: the outputs are already written and closed,
``atexit`` handlers run (Dask's, logging's) and stdout and stderr are flushed. Under a
profiler or tracer, or with threads still running, the exit is the ordinary one.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from . import stop


def main() -> None:
    """Set up the signals, then load and run the command, and end the process."""
    stop.install()
    try:
        from .cli import main as run

        run()
        code: str | int | None = 0
    except SystemExit as exc:
        code = exc.code
    except (KeyboardInterrupt, Exception) as exc:
        stopped = stop.stopped(exc)
        if stopped is None:
            raise
        stop.report(stopped)
        code = stopped.exit_code
    _end(code)


def _end(code: str | int | None) -> None:
    """Exit with ``code`` (``SystemExit``'s meaning), skipping the interpreter's teardown
    where nothing else is left to wait for."""
    kernel = sys.modules.get("tvdenoise.kernel")  # loaded with PyTorch, if at all
    if kernel is not None:
        kernel.release_threads()
    others = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon
    ]
    # Other threads are joined by the interpreter; a profiler or tracer (cProfile,
    # coverage) writes its results after the program returns: exit the ordinary way.
    if others or sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # a message, as sys.exit prints it
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: started without it (a closed descriptor)
                stream.flush()
    except OSError:  # a closed pipe: Python's own exit reports it
        sys.exit(status)
    os._exit(status)


if __name__ == "__main__":
    main()
