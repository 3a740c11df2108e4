"""The command under faults: signals, odd file names, and the options users get wrong.

Signals are sent to real processes (``python -m tvdenoise`` with this checkout first on
``PYTHONPATH``); the rest runs in-process through ``CliRunner``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from tvdenoise import batch, cli, plan, stop
from tvdenoise.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, app

from helpers import files_under, run_cli, write_image

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-iter", "6", "--weight", "0.1"]
POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and file names")


def _environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def _start(*args: str | os.PathLike[str], **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tvdenoise", *map(os.fspath, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environment(**env),
    )


def _slow_batch(folder: Path, count: int = 12) -> Path:
    """Images that take a few seconds in all, so that a signal lands mid-run."""
    for i in range(count):
        write_image(folder / f"{i:02d}.png", size=(192, 160), seed=i)
    return folder


# --------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------


@POSIX_ONLY
@pytest.mark.parametrize(
    ("signum", "code", "verb"),
    [
        (signal.SIGTERM, EXIT_TERMINATED, "terminated"),
        pytest.param(signal.SIGINT, EXIT_INTERRUPTED, "interrupted", marks=pytest.mark.slow),
    ],
)
def test_a_signal_mid_batch_keeps_finished_files_and_reports(
    tmp_path: Path, signum: int, code: int, verb: str
) -> None:
    out, report = tmp_path / "out", tmp_path / "run.json"
    args = ["--weight", "0.1", "--batch-size", "1", "--report", report]
    process = _start(_slow_batch(tmp_path / "in"), "-o", out, *args)
    assert process.stdout is not None
    first = process.stdout.readline()  # one file is written: the run is under way
    process.send_signal(signum)
    rest, errors = process.communicate(timeout=120)
    assert process.returncode == code, errors
    lines = errors.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{verb}: "), errors
    assert "not processed" in lines[0]
    written = [Path(p) for p in (first + rest).decode().splitlines()]
    assert files_under(out) == set(written)  # no temporary file left behind
    document = json.loads(report.read_text())
    assert document["interrupted"] is True
    assert document["summary"]["restored"] == len(written) < 12


def _command_loads_torch_lazily() -> bool:
    """Whether loading the command leaves PyTorch unloaded (the start-up of issue 17).

    The signals are set up before the command is loaded; PyTorch, loaded before that by
    an eager package, would leave its load outside their reach.
    """
    code = "import sys, tvdenoise.cli; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=_environment(),
    )
    return done.stdout.strip() == "False"


@POSIX_ONLY
@pytest.mark.parametrize("delay", [0.3, pytest.param(1.0, marks=pytest.mark.slow)])
def test_ctrl_c_while_modules_load_is_one_line_and_130(tmp_path: Path, delay: float) -> None:
    """Ctrl-C before the command has started its work: no traceback, never swallowed."""
    if not _command_loads_torch_lazily():
        pytest.skip("needs the package to load PyTorch lazily (issue 17's start-up)")
    args = ["--weight", "0.1", "--batch-size", "1"]  # lasts well beyond the delay
    process = _start(_slow_batch(tmp_path / "in"), "-o", tmp_path / "out", *args)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == EXIT_INTERRUPTED, errors
    lines = errors.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("error: interrupted", "interrupted: "))


def test_ctrl_c_while_planning_is_one_line_and_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(plan, "plan_jobs", interrupt)
    result = run_cli(write_image(tmp_path / "a.png"), "-o", tmp_path / "b.png", *FAST)
    assert result.exit_code == EXIT_INTERRUPTED
    assert result.stderr == "error: interrupted\n" and result.stdout == ""


def test_sigterm_mid_batch_in_process_is_143(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        write_image(tmp_path / "in" / f"{i}.png", seed=i)
    real = batch.restore
    calls = 0

    def solve(noisy: torch.Tensor, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise stop.Interrupted(signal.SIGTERM)
        return real(noisy, **kwargs)

    monkeypatch.setattr(batch, "restore", solve)
    result = run_cli(tmp_path / "in", "-o", tmp_path / "out", *FAST, "--batch-size", "1")
    assert result.exit_code == EXIT_TERMINATED
    assert result.stderr == "terminated: 1 restored, 0 skipped, 0 failed, 2 not processed\n"


def test_a_signal_swallowed_on_its_way_still_stops_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library that catches KeyboardInterrupt (say, around an import) cannot undo it."""
    monkeypatch.setattr(stop, "received", [signal.SIGINT])
    out = tmp_path / "out"
    result = run_cli(write_image(tmp_path / "in" / "a.png"), "-o", f"{out}/", *FAST)
    assert result.exit_code == EXIT_INTERRUPTED
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists()


# --------------------------------------------------------------------------------------
# File names in any encoding
# --------------------------------------------------------------------------------------


@POSIX_ONLY
def test_a_command_started_without_stdout_writes_its_file(tmp_path: Path) -> None:
    # `tvdenoise in.png -o out.png >&-`: Python starts with sys.stdout None.
    noisy, out = write_image(tmp_path / "in.png"), tmp_path / "out.png"
    words = [sys.executable, "-m", "tvdenoise", noisy, "-o", out, *FAST]
    script = "exec " + " ".join(shlex.quote(os.fspath(word)) for word in words) + " >&-"
    done = subprocess.run(
        ["sh", "-c", script], capture_output=True, env=_environment(), timeout=120, check=False
    )
    assert (done.returncode, done.stderr) == (EXIT_OK, b"")
    assert out.exists()


@POSIX_ONLY
def test_a_reader_that_leaves_early_stops_the_names_not_the_work(tmp_path: Path) -> None:
    # `tvdenoise ... | head -1`: after the first name the pipe is closed; the command
    # still writes every file, and ends as it would have with the names read.
    out = tmp_path / "out"
    process = _start(_slow_batch(tmp_path / "in", 4), "-o", out, *FAST, "--batch-size", "1")
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()
    with process.stderr:
        errors = process.stderr.read()
    assert process.wait(timeout=120) == EXIT_OK, errors
    assert Path(first.decode().strip()).parent == out
    assert len(files_under(out)) == 4
    assert errors.decode().splitlines() == ["4 restored, 0 skipped, 0 failed"]


@POSIX_ONLY
def test_a_file_name_that_is_not_utf8_prints_and_reports(tmp_path: Path) -> None:
    name = b"caf\xe9.png"  # Latin-1, not valid UTF-8
    folder = tmp_path / "in"
    folder.mkdir()
    try:
        source = folder / os.fsdecode(name)
        write_image(source)
    except (UnicodeEncodeError, OSError):
        pytest.skip("the file system refuses names that are not UTF-8")
    write_image(folder / "z.png")
    (folder / os.fsdecode(b"bad\xe9.png")).write_bytes(b"not an image")
    out, report = tmp_path / "out", tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "tvdenoise", folder, "-o", out, *FAST, "--report", report],
        capture_output=True,
        timeout=120,
        check=False,
        env=_environment(PYTHONIOENCODING="utf-8"),
    )
    assert done.returncode == 1, done.stderr  # the corrupt file fails, the others go on
    assert os.fsencode(out) + b"/" + name + b"\n" in done.stdout  # the name's own bytes
    errors = done.stderr.decode("ascii")  # escaped on stderr
    assert "Traceback" not in errors and "bad\\udce9.png" in errors
    assert errors.splitlines()[-1] == "2 restored, 0 skipped, 1 failed"
    document = json.loads(report.read_text())
    outputs = {os.fsencode(record["output"]) for record in document["records"]}
    assert os.fsencode(out / os.fsdecode(name)) in outputs


def test_file_names_print_on_a_strict_utf8_stdout(tmp_path: Path) -> None:
    """In-process: the streams are switched to error handlers that cannot fail."""
    source = write_image(tmp_path / "in" / "x.png")
    target = tmp_path / "out" / "caf\udce9.png"  # a name decoded with surrogateescape
    result = CliRunner().invoke(app, [os.fspath(source), "-o", os.fspath(target), *FAST])
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout_bytes.endswith(b"caf\xe9.png\n")


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--noise", "gausian", "'gausian' is not one of gaussian, impulse, poisson"),
        ("--tv", "cubic", "'cubic' is not one of isotropic, anisotropic"),
        ("--color", "mixed", "'mixed' is not one of auto, joint, separate, opponent"),
        ("--tile", "1", "1 is below 16 pixels (0: never tile)"),
        ("--tile", "15", "15 is below 16 pixels (0: never tile)"),
    ],
)
def test_bad_choices_and_tiny_tiles_are_one_clean_line(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    result = run_cli(write_image(tmp_path / "a.png"), option, value, *FAST)
    assert result.exit_code == EXIT_USAGE
    assert result.stderr == f"error: invalid value for '{option}': {message} (see --help)\n"
    assert "Value error" not in result.stderr


@pytest.mark.parametrize("extra", [["--tile", "0"], ["--tile", "16"], ["--noise", "IMPULSE"]])
def test_smallest_tile_and_any_case_choices_work(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "b.png"
    result = run_cli(write_image(tmp_path / "a.png"), "-o", out, *FAST, *extra)
    assert result.exit_code == EXIT_OK, result.output
    assert out.is_file()


def test_short_help() -> None:
    result = run_cli("-h")
    assert result.exit_code == EXIT_OK
    assert result.stdout.startswith("Usage: ") and "-h, --help" in result.stdout


def test_completion_can_be_shown_and_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    shown = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="tvdenoise")
    assert shown.exit_code == EXIT_OK, shown.output
    assert "_TVDENOISE_COMPLETE=complete_bash" in shown.stdout
    installed = CliRunner().invoke(app, ["--install-completion", "bash"], prog_name="tvdenoise")
    assert installed.exit_code == EXIT_OK, installed.output
    assert (tmp_path / ".bash_completions" / "tvdenoise.sh").is_file()
    assert ".bash_completions/tvdenoise.sh" in (tmp_path / ".bashrc").read_text()


def test_completion_offers_the_choices_of_an_option() -> None:
    words = {"COMP_WORDS": "tvdenoise --noise ", "COMP_CWORD": "2"}
    env = {"_TVDENOISE_COMPLETE": "complete_bash", **words}
    result = CliRunner().invoke(app, [], prog_name="tvdenoise", env=env)
    assert result.stdout.split() == ["gaussian", "impulse", "poisson"]


def test_an_error_after_a_signal_counts_as_the_interruption(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signal inside an import can surface as an ImportError of a half-loaded module."""
    monkeypatch.setattr(stop, "received", [])
    assert stop.stopped(ImportError("partially initialized module")) is None
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("cannot load module more than once") from None
    except ImportError as exc:
        chained = exc
    interrupted = stop.stopped(chained)
    assert interrupted is not None and interrupted.exit_code == EXIT_INTERRUPTED
    monkeypatch.setattr(stop, "received", [signal.SIGTERM])
    late = stop.stopped(ImportError("partially initialized module"))
    assert late is not None and (late.exit_code, late.verb) == (EXIT_TERMINATED, "terminated")


def test_ctrl_c_while_options_are_parsed_is_one_line_and_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Option callbacks run while the command line is parsed (and may load modules); Typer
    alone would exit 130 there without a word, and 130 for SIGTERM too."""

    class Interrupting:
        def __contains__(self, item: object) -> bool:
            raise stop.Interrupted(signal.SIGTERM)

    from tvdenoise import io

    monkeypatch.setattr(io, "SUPPORTED_SUFFIXES", Interrupting())
    monkeypatch.setattr(cli, "SUPPORTED_SUFFIXES", Interrupting(), raising=False)
    result = run_cli(write_image(tmp_path / "a.png"), "--format", "png", *FAST)
    assert result.exit_code == EXIT_TERMINATED
    assert result.stderr == "error: terminated\n"
