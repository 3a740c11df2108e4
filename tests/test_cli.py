"""Tests of the ``tvdenoise`` command for one image: results, options, every bad input.

Each bad input is checked for the exit code, exactly one ``error: ...`` line on stderr
naming the problem and the file, no traceback, and no file left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import Result

from tvdenoise import __version__, denoise
from tvdenoise.batch import resolve_device
from tvdenoise.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from tvdenoise.io import load_image

from helpers import files_under, opened, run_cli, write_image

WIDTH, HEIGHT = 24, 20
FAST = [
    "--max-iter",
    "6",
    "--weight",
    "0.1",
]  # fixed weight, few iterations: these tests are about the command, not the solver


def _assert_error(result: Result, code: int, *fragments: str) -> None:
    """One ``error:`` line on stderr containing ``fragments``; nothing on stdout."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit | None), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


# --------------------------------------------------------------------------------------
# What works
# --------------------------------------------------------------------------------------


def test_one_image_gives_the_library_result(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    out = tmp_path / "clean.png"
    result = run_cli(noisy, "-o", out, "--weight", "0.2", "--max-iter", "8", "--device", "cpu")
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout == f"{out}\n"  # the result, and nothing else, on stdout
    assert result.stderr == ""  # no bar: stderr is not a terminal here
    written, _ = opened(out)
    expected = denoise(load_image(noisy).data, 0.2, max_iter=8)
    expected_u8 = np.rint(expected.numpy().transpose(1, 2, 0) * 255)
    assert written.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(written.astype(np.int64) - expected_u8).max() <= 1
    assert not np.array_equal(written, opened(noisy)[0])


def test_default_output_goes_beside_the_input(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "photo.jpg")
    result = run_cli(noisy, *FAST)
    assert result.exit_code == EXIT_OK, result.output
    assert files_under(tmp_path) == {noisy, tmp_path / "photo_denoised.jpg"}
    assert result.stdout == f"{tmp_path / 'photo_denoised.jpg'}\n"


def test_suffix_and_format_shape_the_default_name(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "photo.png")
    result = run_cli(noisy, *FAST, "--suffix", "-tv", "--format", "TIF")
    assert result.exit_code == EXIT_OK, result.output
    assert (tmp_path / "photo-tv.tif").is_file()


def test_missing_output_folders_are_created(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png", mode="L")
    out = tmp_path / "a" / "b" / "clean.png"
    result = run_cli(noisy, "-o", out, *FAST)
    assert result.exit_code == EXIT_OK, result.output
    assert opened(out)[1] == "L"


def test_output_into_an_existing_folder(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    (tmp_path / "out").mkdir()
    result = run_cli(noisy, "-o", tmp_path / "out", *FAST)
    assert result.exit_code == EXIT_OK, result.output
    assert (tmp_path / "out" / "noisy.png").is_file()


def test_trailing_slash_names_a_new_folder(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    result = run_cli(noisy, "-o", f"{tmp_path / 'new'}/", *FAST)
    assert result.exit_code == EXIT_OK, result.output
    assert (tmp_path / "new" / "noisy.png").is_file()


def test_overwrite_replaces_an_existing_output(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    result = run_cli(noisy, "-o", out, *FAST, "--overwrite")
    assert result.exit_code == EXIT_OK, result.output
    assert opened(out)[0].shape[:2] == (HEIGHT, WIDTH)


def test_max_pixels_can_be_raised_or_lifted(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    assert run_cli(noisy, "-o", tmp_path / "a.png", *FAST, "--max-pixels", "480").exit_code == 0
    assert run_cli(noisy, "-o", tmp_path / "b.png", *FAST, "--max-pixels", "0").exit_code == 0


def test_verbose_reports_settings_iterations_and_time(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    result = run_cli(noisy, *FAST, "--verbose", "--weight", "0.3", "--tv", "anisotropic")
    assert result.exit_code == EXIT_OK, result.output
    assert "weight=0.3" in result.stderr and "tv=anisotropic" in result.stderr
    assert "6 iterations" in result.stderr
    assert "time:" in result.stderr
    assert result.stdout == f"{tmp_path / 'noisy_denoised.png'}\n"


def test_quiet_prints_no_messages(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    result = run_cli(noisy, *FAST, "--quiet")
    assert result.exit_code == EXIT_OK
    assert result.stderr == ""


def test_version() -> None:
    result = run_cli("--version")
    assert result.exit_code == EXIT_OK
    assert result.stdout == f"tvdenoise {__version__}\n"


def test_auto_device_is_one_that_exists() -> None:
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


# --------------------------------------------------------------------------------------
# Bad input: an error line, an exit code, nothing written
# --------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "nope.png", *FAST)
    _assert_error(result, EXIT_USAGE, "no such file", "nope.png")
    assert files_under(tmp_path) == set()


def test_folder_where_a_file_is_expected(tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    write_image(folder / "one.png")
    before = files_under(tmp_path)
    result = run_cli(folder, "-o", tmp_path / "clean.png", *FAST)
    _assert_error(result, EXIT_USAGE, "need -o to name a folder", "clean.png")
    assert files_under(tmp_path) == before


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is plain text, not a picture\n", "not an image"),
        (b"", "empty"),
        ("truncated", "truncated or corrupt"),
    ],
    ids=["not-an-image", "zero-bytes", "truncated"],
)
def test_unreadable_file(tmp_path: Path, content: bytes | str, reason: str) -> None:
    bad = tmp_path / "bad.png"
    if content == "truncated":
        whole = write_image(tmp_path / "whole.png", size=(64, 64)).read_bytes()
        (tmp_path / "whole.png").unlink()
        bad.write_bytes(whole[: len(whole) // 2])
    else:
        assert isinstance(content, bytes)
        bad.write_bytes(content)
    result = run_cli(bad, "-o", tmp_path / "out.png", *FAST)
    _assert_error(result, EXIT_FAILED, reason, "bad.png")
    assert files_under(tmp_path) == {bad}


def test_image_over_the_pixel_limit(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    result = run_cli(noisy, "-o", tmp_path / "out.png", *FAST, "--max-pixels", "479")
    _assert_error(result, EXIT_FAILED, "limit of 479", "--max-pixels", "noisy.png")
    assert files_under(tmp_path) == {noisy}


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--weight", "-0.1"),
        ("--weight", "nan"),
        ("--max-iter", "0"),
        ("--max-iter", "-3"),
        ("--tol", "0"),
        ("--tol", "-1e-3"),
        ("--lr", "0"),
        ("--quality", "101"),
        ("--batch-size", "0"),
        ("--max-pixels", "-1"),
        ("--tv", "total"),
        ("--color", "rgb"),
        ("--format", "pdf"),
        ("--dims", "4"),
        ("--spacing", "1,2"),
    ],
)
def test_bad_option_value(tmp_path: Path, option: str, value: str) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    result = run_cli(noisy, option, value)
    _assert_error(result, EXIT_USAGE, "invalid value", option)
    assert files_under(tmp_path) == {noisy}


def test_quiet_and_verbose_together(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    _assert_error(run_cli(noisy, "-q", "-v"), EXIT_USAGE, "--quiet and --verbose")
    assert files_under(tmp_path) == {noisy}


def test_missing_input_argument() -> None:
    _assert_error(run_cli(), EXIT_USAGE, "missing argument")


def test_unavailable_device(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    result = run_cli(noisy, "--device", missing)
    _assert_error(result, EXIT_USAGE, f"device '{missing}' is not available")
    _assert_error(run_cli(noisy, "--device", "tpu"), EXIT_USAGE, "unknown device 'tpu'")
    assert files_under(tmp_path) == {noisy}


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="permissions do not bind root"
)
def test_unwritable_output_folder(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = run_cli(noisy, "-o", locked / "out.png", *FAST)
    finally:
        locked.chmod(0o700)
    _assert_error(result, EXIT_USAGE, "permission denied", "locked")
    assert files_under(tmp_path) == {noisy}


def test_output_folder_blocked_by_a_file(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    (tmp_path / "blocker").write_bytes(b"x")
    result = run_cli(noisy, "-o", tmp_path / "blocker" / "out.png", *FAST)
    _assert_error(result, EXIT_USAGE, "a file is in the way", "blocker")
    assert files_under(tmp_path) == {noisy, tmp_path / "blocker"}


@pytest.mark.parametrize("name", ["out.pdf", "out.xyz", "out"])
def test_unknown_output_extension(tmp_path: Path, name: str) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    result = run_cli(noisy, "-o", tmp_path / name, *FAST)
    _assert_error(result, EXIT_USAGE, "cannot tell the output format", name)
    assert files_under(tmp_path) == {noisy}


def test_existing_output_without_overwrite(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    result = run_cli(noisy, "-o", out, *FAST)
    _assert_error(result, EXIT_USAGE, "output exists (use --overwrite)", "out.png")
    assert out.read_bytes() == b"keep me"
    assert files_under(tmp_path) == {noisy, out}


@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_output_is_the_input(tmp_path: Path, extra: list[str]) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    original = noisy.read_bytes()
    result = run_cli(noisy, "-o", tmp_path / "." / "noisy.png", *FAST, *extra)
    _assert_error(result, EXIT_USAGE, "input file", "noisy.png")
    assert noisy.read_bytes() == original
    assert files_under(tmp_path) == {noisy}


def test_empty_suffix_beside_the_input_is_refused(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    _assert_error(run_cli(noisy, "--suffix", "", *FAST), EXIT_USAGE, "input file", "noisy.png")


def test_format_with_a_named_output_file_is_refused(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    result = run_cli(noisy, "-o", tmp_path / "out.png", "--format", "jpg")
    _assert_error(result, EXIT_USAGE, "-o names the file", "out.png")


def test_report_path_that_is_a_folder(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    result = run_cli(noisy, *FAST, "--report", tmp_path)
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert files_under(tmp_path) == {noisy}


# --------------------------------------------------------------------------------------
# The installed command
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tvdenoise") is None, reason="console script not installed")
def test_installed_console_script(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    out = tmp_path / "out.png"
    root = Path(__file__).resolve().parents[1]  # this checkout, whatever is installed
    done = subprocess.run(
        ["tvdenoise", str(noisy), "-o", str(out), "--max-iter", "3", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": os.fspath(root)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{out}\n"
    assert opened(out)[0].shape[:2] == (HEIGHT, WIDTH)


def test_python_m_tvdenoise_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tvdenoise", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "--weight" in done.stdout
