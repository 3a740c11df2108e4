"""The generated results file, ``benchmarks/RESULTS.md``: one section per benchmark script.

Every script under ``benchmarks/`` (and the evaluation scripts under ``scripts/``) ends by
calling :func:`record` with its name and the table it printed. The section of that script
in ``RESULTS.md`` is replaced by the new table, stamped with the date, the commit and the
machine, so measured figures live in one generated file instead of in docstrings, and the
README quotes them from there.

Usage from a script::

    from results import record   # benchmarks/ is on sys.path when a script there runs
    record("bench_speed", table_text)

or, to record everything a script prints (the evaluation scripts under ``scripts/``, which
put ``benchmarks/`` on ``sys.path`` themselves)::

    with recording("eval_sigma"):
        main()
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

RESULTS = Path(__file__).with_name("RESULTS.md")
_HEADER = (
    "# Measured results\n\n"
    "Generated: each section is rewritten by the script it names "
    "(`python benchmarks/<script>.py`, or `scripts/<script>.py`). Do not edit by hand.\n"
)


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _commit() -> str:
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def record(script: str, body: str, *, path: Path = RESULTS) -> None:
    """Replace the section of ``script`` in the results file with ``body``.

    Args:
        script: the script's name, e.g. ``"bench_speed"``; the section's heading.
        body: what the script measured (Markdown: a table, ``BAR`` lines in a code block).
        path: the results file.
    """
    stamp = f"{_dt.date.today().isoformat()}, commit {_commit()}, {_machine()}"
    section = f"## {script}\n\n_{stamp}_\n\n{body.strip()}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else _HEADER
    pattern = re.compile(rf"^## {re.escape(script)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


class _Tee(io.StringIO):
    """A text stream keeping a copy of what is written to ``stream``."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        super().write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def recording(script: str, *, path: Path = RESULTS) -> Iterator[None]:
    """Print as usual inside the block; then record all that was printed as ``script``'s
    section, headed by the command line that ran it. Nothing is recorded on an error."""
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield
    command = shlex.join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    # An indented code block: a printed "## heading" must not start a section of its own.
    printed = "\n".join(f"    {line}".rstrip() for line in tee.getvalue().rstrip().splitlines())
    record(script, f"`{command}`\n\n{printed}", path=path)
