"""``python -m tvdenoise`` and the ``tvdenoise`` console script.

The signals are set up first, with nothing but the standard library loaded, and only then
the command and PyTorch are loaded: so Ctrl-C or SIGTERM at any moment, even while modules
load, ends in one line on stderr and exit code 130 or 143 (see :mod:`tvdenoise.stop`).
"""

from __future__ import annotations

import sys

from . import stop


def main() -> None:
    """Set up the signals, then load and run the command."""
    stop.install()
    try:
        from .cli import main as run

        run()
    except (KeyboardInterrupt, Exception) as exc:
        stopped = stop.stopped(exc)
        if stopped is None:
            raise
        stop.report(stopped)
        sys.exit(stopped.exit_code)


if __name__ == "__main__":
    main()
