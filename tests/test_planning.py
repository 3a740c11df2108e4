"""Batch planning on hostile trees and shared folders: symbolic links, leftovers of killed
runs, and two runs writing into one folder at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tvdenoise import batch
from tvdenoise.cli import EXIT_OK
from tvdenoise.io import OutputExistsError
from tvdenoise.plan import Plan, plan_jobs, remove_stale_temporaries

from helpers import files_under, run_cli, write_image

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-iter", "6", "--weight", "0.1"]
needs_symlinks = pytest.mark.skipif(os.name != "posix", reason="POSIX symbolic links")


def _inputs(plan: Plan, root: Path) -> list[str]:
    return [job.input.relative_to(root).as_posix() for job in plan.jobs]


def _plan_within(seconds: float, *args: Any, **kwargs: Any) -> Plan:
    """``plan_jobs`` on a thread, failing (not hanging) if it does not end in time."""
    result: list[Plan] = []
    worker = threading.Thread(target=lambda: result.append(plan_jobs(*args, **kwargs)))
    worker.daemon = True
    worker.start()
    worker.join(seconds)
    assert result, f"plan_jobs did not end within {seconds} s"
    return result[0]


# --------------------------------------------------------------------------------------
# Symbolic links
# --------------------------------------------------------------------------------------


@needs_symlinks
def test_a_link_loop_is_walked_once(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    for name in ["a.png", "sub/b.png"]:
        write_image(scans / name)
    (scans / "loop").symlink_to(scans, target_is_directory=True)
    plan = _plan_within(60, [str(scans / "**" / "*.png")], tmp_path / "out")
    assert _inputs(plan, scans) == ["a.png", "sub/b.png"]
    assert [j.output.relative_to(tmp_path).as_posix() for j in plan.jobs] == [
        "out/a.png",
        "out/sub/b.png",
    ]


@needs_symlinks
def test_many_link_loops_end(tmp_path: Path) -> None:
    """Loops into each other once grew without end (each path spelled a new way)."""
    scans = tmp_path / "scans"
    write_image(scans / "x" / "y" / "a.png")
    (scans / "x" / "up").symlink_to(scans, target_is_directory=True)
    (scans / "x" / "y" / "up").symlink_to(scans / "x", target_is_directory=True)
    (scans / "x" / "y" / "top").symlink_to(scans, target_is_directory=True)
    (scans / "x" / "self").symlink_to(scans / "x", target_is_directory=True)
    plan = _plan_within(60, [str(scans / "**")], tmp_path / "out")
    assert _inputs(plan, scans) == ["x/y/a.png"]


@needs_symlinks
def test_each_real_file_is_visited_once_under_its_own_name(tmp_path: Path) -> None:
    scans, elsewhere = tmp_path / "scans", tmp_path / "elsewhere"
    for path in [scans / "a.png", scans / "sub" / "b.png", elsewhere / "c.png"]:
        write_image(path)
    (scans / "alias").symlink_to(scans / "sub", target_is_directory=True)  # same depth
    (scans / "deep").mkdir()
    (scans / "deep" / "again").symlink_to(scans / "sub", target_is_directory=True)
    (scans / "ext").symlink_to(elsewhere, target_is_directory=True)  # outside: followed
    (scans / "link.png").symlink_to(scans / "a.png")
    plan = plan_jobs([str(scans / "**" / "*.png")], tmp_path / "out")
    assert _inputs(plan, scans) == ["a.png", "ext/c.png", "sub/b.png"]
    folder = plan_jobs([str(scans)], tmp_path / "out")
    assert _inputs(folder, scans) == ["a.png"]


def test_glob_semantics_are_kept(tmp_path: Path) -> None:
    for name in ["a.png", "b.jpg", ".hidden/c.png", "sub/.d.png", "sub/e.png", "sub/x/f.png"]:
        write_image(tmp_path / "scans" / name)
    scans = tmp_path / "scans"
    assert _inputs(plan_jobs([str(scans / "**")], tmp_path / "out"), scans) == [
        "a.png",
        "b.jpg",
        "sub/e.png",
        "sub/x/f.png",
    ]
    assert _inputs(plan_jobs([str(scans / "*" / "*.png")], tmp_path / "o"), scans) == ["sub/e.png"]
    assert _inputs(plan_jobs([str(scans / "s?b" / "**" / "[ef].png")], tmp_path / "o"), scans) == [
        "sub/e.png",
        "sub/x/f.png",
    ]
    assert _inputs(plan_jobs([str(scans / ".hidden" / "*.png")], tmp_path / "o"), scans) == [
        ".hidden/c.png"
    ]


# --------------------------------------------------------------------------------------
# Leftovers of killed runs
# --------------------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_stale_temporary_files_are_removed_and_mentioned(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a.png.x1y2_z3w.tmp"
    stale.write_bytes(b"half an image")
    _age(stale, 3600)
    current = out / ".c.tif.0a1b2c3d.tvdenoise-tmp"  # today's naming (any suffix)
    current.write_bytes(b"")
    _age(current, 3600)
    young = out / ".b.png.k9j8h7g6.tvdenoise-tmp"  # another run may be writing it now
    young.write_bytes(b"")
    report = tmp_path / ".run.json.abcdefgh.tmp"
    report.write_text("{")
    _age(report, 3600)
    foreign = [out / ".notes.txt.abcdefgh.tmp", out / "a.png.abcdefgh.tmp", out / ".a.png.tmp"]
    for path in foreign:  # not of our naming
        path.write_bytes(b"")
        _age(path, 3600)
    for name in ["a.png", "b.png"]:
        write_image(tmp_path / "in" / name)

    args = [tmp_path / "in", "-o", out, *FAST, "--report", tmp_path / "run.json"]
    result = run_cli(*args)
    assert result.exit_code == EXIT_OK, result.output
    assert result.stderr.splitlines()[:3] == [
        f"removed a temporary file left by an interrupted run: {report}",
        f"removed a temporary file left by an interrupted run: {stale}",
        f"removed a temporary file left by an interrupted run: {current}",
    ]
    assert not stale.exists() and not report.exists() and not current.exists()
    assert young.exists() and all(path.exists() for path in foreign)
    assert (out / "a.png").is_file() and (out / "b.png").is_file()


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_the_temporary_name_of_a_killed_write_is_recognised(tmp_path: Path) -> None:
    """The pattern matches what ``write_atomically`` really leaves behind on ``kill -9``."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from tvdenoise.io import write_atomically\n"
        "def write(fh):\n"
        "    fh.write(b'half'); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "write_atomically(Path(sys.argv[1]), write)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    target = tmp_path / "photo.tif"
    subprocess.run([sys.executable, "-c", code, target], env=env, timeout=120, check=False)
    (leftover,) = files_under(tmp_path)
    assert remove_stale_temporaries([tmp_path], older_than=3600) == []  # too young
    assert remove_stale_temporaries([tmp_path], older_than=0) == [leftover]
    assert files_under(tmp_path) == set()


# --------------------------------------------------------------------------------------
# Two runs, one output folder
# --------------------------------------------------------------------------------------


def test_an_output_written_meanwhile_by_another_run_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ["a.png", "b.png"]:
        write_image(tmp_path / "in" / name)
    real = batch.save_image

    def racing(path: Path, *args: Any, **kwargs: Any) -> None:
        if Path(path).name == "b.png":  # the other run got there first
            raise OutputExistsError("output was created by someone else", path)
        real(path, *args, **kwargs)

    monkeypatch.setattr(batch, "save_image", racing)
    report = tmp_path / "run.json"
    result = run_cli(tmp_path / "in", "-o", tmp_path / "out", *FAST, "--report", report)
    assert result.exit_code == EXIT_OK, result.output
    assert result.stderr == "1 restored, 1 skipped, 0 failed\n"
    records = json.loads(report.read_text())["records"]
    assert [(Path(r["input"]).name, r["status"]) for r in records] == [
        ("a.png", "restored"),
        ("b.png", "skipped"),
    ]


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="hard links / rename without replacing")
def test_two_runs_on_one_folder_write_each_output_once(tmp_path: Path) -> None:
    for i in range(40):
        write_image(tmp_path / "in" / f"{i:02d}.png", size=(96, 80), seed=i)
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tvdenoise",
                tmp_path / "in",
                "-o",
                tmp_path / "out",
                *FAST,
                "--batch-size",
                "1",
                "--report",
                tmp_path / f"run{k}.json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for k in range(2)
    ]
    done = [run.communicate(timeout=600) for run in runs]
    for run, (_, errors) in zip(runs, done, strict=True):
        assert run.returncode == EXIT_OK, errors
    written = [line for stdout, _ in done for line in stdout.decode().splitlines()]
    assert sorted(written) == sorted(set(written))  # no output written twice
    assert {Path(p) for p in written} == files_under(tmp_path / "out")
    assert len(written) == 40
    summaries = [json.loads((tmp_path / f"run{k}.json").read_text())["summary"] for k in range(2)]
    assert sum(s["restored"] for s in summaries) == 40
    assert all(s["restored"] + s["skipped"] == 40 and s["failed"] == 0 for s in summaries)
