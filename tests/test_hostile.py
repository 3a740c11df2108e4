"""Hostile and broken files through the command: one ``error:`` line, a non-zero exit, no
output file and nothing else on stderr (issue 13).

The files are made by ``scripts/make_hostile_files.py`` (small versions) in a temporary
folder. Each runs in-process for the exit code and message; one subprocess runs them all
as a batch so that anything a C library prints on the real stderr would show.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tvdenoise.cli import EXIT_FAILED
from tvdenoise.io import ImageFileError, load_image, save_image

from helpers import files_under, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_hostile_files", ROOT / "scripts" / "make_hostile_files.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOSTILE = _script()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    HOSTILE.make_all(folder)
    return folder


@pytest.mark.parametrize("name", sorted(HOSTILE.CASES))
def test_each_hostile_file_is_refused_in_one_line(hostile: Path, tmp_path: Path, name: str) -> None:
    source = hostile / name
    out = tmp_path / "out" / name
    result = run_cli(source, "-o", out, "--weight", "0.1", "--max-iter", "3", "--device", "cpu")
    assert result.exit_code == EXIT_FAILED, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and lines[0].endswith(f": {source}"), lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert files_under(tmp_path) == set()


def test_hostile_batch_prints_only_error_lines(hostile: Path, tmp_path: Path) -> None:
    """A real process: nothing but our error lines reaches file descriptor 2."""
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tvdenoise",
            os.fspath(hostile),
            "-o",
            os.fspath(out),
            "-q",
            "--weight",
            "0.1",
            "--max-iter",
            "3",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.fspath(ROOT)},
    )
    assert done.returncode == EXIT_FAILED, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == len(HOSTILE.CASES), done.stderr
    assert all(line.startswith("error: ") for line in lines), done.stderr
    named = {line.rsplit(": ", 1)[-1] for line in lines}
    assert named == {os.fspath(hostile / name) for name in HOSTILE.CASES}
    assert done.stdout == ""
    assert not out.exists() or files_under(out) == set()


def _png_with_chunk(kind: bytes, payload: bytes, size: int = 16) -> bytes:
    rows = b"".join(b"\x00" + bytes(range(size)) for _ in range(size))
    return HOSTILE._png(
        size,
        size,
        8,
        0,
        HOSTILE._chunk(kind, payload),
        HOSTILE._chunk(b"IDAT", zlib.compress(rows)),
    )


def test_damaged_exif_is_dropped_and_the_pixels_kept(tmp_path: Path) -> None:
    source = tmp_path / "loops.png"
    source.write_bytes(_png_with_chunk(b"eXIf", HOSTILE.exif_with_loops()))
    image = load_image(source)
    assert image.samples.shape == (16, 16)
    np.testing.assert_array_equal(image.samples[0], np.arange(16))
    save_image(tmp_path / "out.png", image)
    assert load_image(tmp_path / "out.png").samples.shape == (16, 16)


def test_png_data_longer_than_the_header_says_is_refused(tmp_path: Path) -> None:
    rows = b"".join(b"\x00" + bytes(range(16)) for _ in range(17))  # one row too many
    source = tmp_path / "long.png"
    source.write_bytes(HOSTILE._png(16, 16, 8, 0, HOSTILE._chunk(b"IDAT", zlib.compress(rows))))
    with pytest.raises(ImageFileError, match="longer than the header says"):
        load_image(source)


def test_every_case_of_the_issue_is_covered() -> None:
    names = set(HOSTILE.CASES)
    for needed in (
        "png16_idat_bomb",
        "png16_one_paeth_row",
        "tiff_absurd_dims",
        "tiff_rows_per_strip_zero",
        "tiff_missing_width",
        "png8_short_data",
        "png_iccp_bomb",
        "png_ztxt_bomb",
        "png_exif_bomb",
        "tiff_ifd_loop",
        "tiff_huge_strip_count",
    ):
        assert any(name.startswith(needed) for name in names), needed
