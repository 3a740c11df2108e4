"""Start-up: what answers without PyTorch, the package's lazy names, the command's threads.

``tvdenoise --help``, ``--version`` and usage errors must not import torch (it takes longer
to import than the rest of the command takes to run on a small image). Each case runs in a
fresh interpreter, which then reports whether ``torch`` was imported and the threads that
the command left it with. The time all this takes is measured by the benchmarks
(``bench_speed.py`` start-up, ``bench_busy.py``), not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import tvdenoise
from tvdenoise import threads

from helpers import run_cli, write_image

ROOT = Path(__file__).resolve().parents[1]

# Runs the command in-process the way the console script or ``python -m`` does. The
# command ends the process itself, after running the ``atexit`` handlers: one prints the
# heavy modules that were imported, torch's thread count and the OpenMP spin setting, as
# JSON on the last line of stderr. The exit code is the process's.
_PROBE = """
import atexit, json, os, runpy, sys
how, args = sys.argv[1], sys.argv[2:]
sys.argv = ["tvdenoise", *args]

def report():
    heavy = sorted(m for m in ("torch", "numpy", "PIL", "tqdm", "tifffile") if m in sys.modules)
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    report = {"heavy": heavy, "threads": threads, "spin": os.environ.get("GOMP_SPINCOUNT")}
    print(json.dumps(report), file=sys.stderr)

atexit.register(report)
if how == "module":
    runpy.run_module("tvdenoise", run_name="__main__", alter_sys=True)
else:
    from tvdenoise.__main__ import main
    main()
"""


def _environ(**env: str) -> dict[str, str]:
    """This process's environment with only the OpenMP settings in ``env``."""
    own = (*threads.WAIT_SETTINGS, *threads.THREAD_SETTINGS)
    environ = {name: value for name, value in os.environ.items() if name not in own}
    environ |= env
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return environ


def _default_threads() -> int:
    """torch's thread count in a fresh interpreter with no OpenMP settings (this process's
    may have been started with some)."""
    code = "import torch; print(torch.get_num_threads())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_environ()
    )
    return int(done.stdout)


def _run_probe(
    how: str, *args: str, cwd: Path = ROOT, **env: str
) -> tuple[dict[str, Any], str, str]:
    """Run the command in a fresh interpreter with only the OpenMP settings in ``env``;
    return its report, stdout and the rest of stderr."""
    environ = _environ(**env)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, how, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=environ,
    )
    *messages, report = done.stderr.splitlines()
    return json.loads(report) | {"code": done.returncode}, done.stdout, "\n".join(messages)


def _probe(how: str, *args: str, cwd: Path = ROOT) -> tuple[int, list[str], str, str]:
    report, stdout, stderr = _run_probe(how, *args, cwd=cwd)
    return report["code"], report["heavy"], stdout, stderr


# --------------------------------------------------------------------------------------
# What answers without torch
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["script", "module"])
def test_help_and_version_load_neither_torch_nor_numpy(how: str) -> None:
    code, heavy, stdout, _ = _probe(how, "--help")
    assert code == 0
    assert "Usage:" in stdout and "--weight" in stdout and "--max-iter" in stdout
    assert heavy == []
    code, heavy, stdout, _ = _probe(how, "--version")
    assert (code, stdout) == (0, f"tvdenoise {tvdenoise.__version__}\n")
    assert heavy == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bogus", "x.png"], "no such option: --bogus"),
        ([], "missing argument"),
        (["x.png", "--weight", "-1"], "-1 is not a number >= 0"),
        (["x.png", "--tv", "cubic"], "'cubic' is not one of"),
        (["x.png", "--max-iter", "0"], "--max-iter"),
        (["x.png", "-q", "-v"], "--quiet and --verbose exclude each other"),
        (["x.png", "--sigma", "10", "--weight", "0.1"], "--sigma sets the automatic weight"),
        (["x.png", "--weight", "1e30"], "1e30 is above the largest weight, 10000"),
        (["x.png", "--chroma-weight", "2e4"], "above the largest weight"),
        (["x.png", "--sigma", "300"], "300.0 is not a noise level between 0 and 255"),
    ],
)
def test_usage_errors_answer_without_torch(tmp_path: Path, args: list[str], fragment: str) -> None:
    code, heavy, stdout, stderr = _probe("script", *args, cwd=tmp_path)
    assert code == 2, stderr
    assert stdout == ""
    assert stderr.startswith("error: ") and fragment in stderr, stderr
    assert "torch" not in heavy and "numpy" not in heavy
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["missing.png"], "no such file: missing.png"),
        (["noisy.png", "--format", "xyz"], "'xyz' is not one of"),
        (["noisy.png", "--device", "tpu"], "unknown device 'tpu'"),
        (["noisy.png", "-o", "noisy.png"], "would replace the input file"),
        (["noisy.png", "-o", "taken.png"], "taken.png"),
        (["noisy.png", "-o", "out.md"], "cannot tell the output format"),
    ],
)
def test_mistakes_in_file_names_answer_without_torch(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    """Planning reads names only: these are told before PyTorch is loaded."""
    noisy = write_image(tmp_path / "noisy.png")
    taken = write_image(tmp_path / "taken.png")
    code, heavy, stdout, stderr = _probe("script", *args, cwd=tmp_path)
    assert code == 2, stderr
    assert stdout == ""
    assert stderr.startswith("error: ") and fragment in stderr, stderr
    assert "torch" not in heavy
    assert set(tmp_path.iterdir()) == {noisy, taken}


def test_public_names_resolve_to_their_modules() -> None:
    from tvdenoise import api, reference, sigma, solver, tv

    assert tvdenoise.denoise is api.denoise
    assert tvdenoise.restore is api.restore
    assert tvdenoise.Restoration is api.Restoration
    assert tvdenoise.solve is solver.solve
    assert tvdenoise.DenoiseResult is solver.DenoiseResult
    assert tvdenoise.reference_denoise is reference.reference_denoise
    assert tvdenoise.estimate_sigma is sigma.estimate_sigma
    for name in ("TVLoss", "divergence", "forward_differences", "total_variation", "tv_gradient"):
        assert getattr(tvdenoise, name) is getattr(tv, name)
    assert set(tvdenoise.__all__) <= set(dir(tvdenoise))
    namespace: dict[str, object] = {}
    exec("from tvdenoise import *", namespace)
    assert {name for name in namespace if not name.startswith("__")} == set(tvdenoise.__all__)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'denoize'"):
        _ = tvdenoise.denoize
    assert not hasattr(tvdenoise, "denoize")


# --------------------------------------------------------------------------------------
# Threads on a shared machine
# --------------------------------------------------------------------------------------


def test_limit_spinning_only_where_the_user_chose_nothing() -> None:
    env: dict[str, str] = {}
    assert threads.limit_spinning(env)
    assert env == {"GOMP_SPINCOUNT": str(threads.SPIN_COUNT)}
    for name, value in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "300000")]:
        env = {name: value}
        assert not threads.limit_spinning(env)
        assert env == {name: value}


def test_busy_tasks_reads_the_runnable_count(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("3.12 2.50 1.00 5/321 4567\n")
    assert threads.busy_tasks(samples=2, interval=0, path=loadavg) == 4  # the caller is one
    loadavg.write_text("0.00 0.00 0.00 1/80 12\n")
    assert threads.busy_tasks(samples=1, path=loadavg) == 0
    loadavg.write_text("garbage\n")
    assert threads.busy_tasks(samples=1, path=loadavg) is None
    assert threads.busy_tasks(samples=1, path=tmp_path / "missing") is None


def test_idle_cpus() -> None:
    assert threads.idle_cpus(0, 4) == 4
    assert threads.idle_cpus(3, 4) == 1
    assert threads.idle_cpus(9, 4) == 1  # never fewer than one
    assert threads.idle_cpus(None, 4) is None


def test_use_idle_cpus_lowers_but_never_raises_and_respects_the_user() -> None:
    cpus = os.cpu_count() or 1
    calls: list[int] = []
    # Every CPU busy: one thread.
    assert threads.use_idle_cpus(calls.append, 4, environ={}, busy=lambda: cpus) == 1
    assert calls == [1]
    # More idle CPUs than threads: the count stays.
    assert threads.use_idle_cpus(calls.append, 1, environ={}, busy=lambda: 0) == 1
    # Unknown load, or the user's own setting: nothing changes.
    assert threads.use_idle_cpus(calls.append, 4, environ={}, busy=lambda: None) == 4
    for name in threads.THREAD_SETTINGS:
        assert threads.use_idle_cpus(calls.append, 4, environ={name: "4"}, busy=lambda: cpus) == 4
    assert calls == [1]


@contextmanager
def _spinning(count: int) -> Iterator[None]:
    """``count`` processes that keep CPUs busy."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


def _fast_args(image: Path) -> list[str]:
    return [str(image), "--weight", "0.1", "--max-iter", "3", "--device", "cpu", "-q"]


# The command on the kernel's own threads (as where no OpenMP runtime is found), with an
# object whose finaliser reports the interpreter's teardown, which the command skips.
_OWN_THREADS = """
import sys
import tvdenoise.kernel

tvdenoise.kernel._openmp_parallel = lambda: None

class Teardown:
    def __del__(self):
        sys.stderr.write("teardown")

sentinel = Teardown()
sys.argv = ["tvdenoise", *sys.argv[1:]]
from tvdenoise.__main__ import main
main()
"""


def test_the_kernels_own_threads_do_not_hold_up_the_exit(tmp_path: Path) -> None:
    image = write_image(tmp_path / "in.png", size=(256, 256))
    args = [*_fast_args(image), "-o", str(tmp_path / "out.png")]
    done = subprocess.run(
        [sys.executable, "-c", _OWN_THREADS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_environ(OMP_NUM_THREADS="2"),
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.png").exists()
    assert "teardown" not in done.stderr


def test_command_limits_spinning_unless_the_user_set_a_policy(tmp_path: Path) -> None:
    args = _fast_args(write_image(tmp_path / "in.png"))
    report, _, stderr = _run_probe("script", *args, "-o", str(tmp_path / "a.png"))
    assert report["code"] == 0, stderr
    assert "torch" in report["heavy"]  # the probe sees torch where the command loads it
    assert report["spin"] == str(threads.SPIN_COUNT)
    assert 1 <= report["threads"] <= _default_threads()
    report, _, stderr = _run_probe(
        "script", *args, "-o", str(tmp_path / "b.png"), OMP_WAIT_POLICY="PASSIVE"
    )
    assert report["code"] == 0, stderr
    assert report["spin"] is None


def test_tifffile_loads_only_for_tiff_files(tmp_path: Path) -> None:
    png = write_image(tmp_path / "in.png")
    report, _, stderr = _run_probe("script", *_fast_args(png), "-o", str(tmp_path / "a.png"))
    assert report["code"] == 0, stderr
    assert "tifffile" not in report["heavy"]
    report, _, stderr = _run_probe("script", *_fast_args(png), "-o", str(tmp_path / "a.tif"))
    assert report["code"] == 0, stderr
    assert "tifffile" in report["heavy"]


@pytest.mark.slow
@pytest.mark.skipif(
    not 2 <= (os.cpu_count() or 1) <= 8, reason="needs 2-8 CPUs, to keep them all busy"
)
def test_command_uses_one_thread_when_every_cpu_is_busy_unless_told(tmp_path: Path) -> None:
    args = _fast_args(write_image(tmp_path / "in.png"))
    with _spinning(os.cpu_count() or 1):
        busy, _, stderr = _run_probe("script", *args, "-o", str(tmp_path / "a.png"))
        told, _, stderr_told = _run_probe(
            "script", *args, "-o", str(tmp_path / "b.png"), OMP_NUM_THREADS="2"
        )
    assert busy["code"] == 0, stderr
    assert busy["threads"] == 1
    assert told["code"] == 0, stderr_told
    assert told["threads"] == 2


def test_command_inside_a_program_leaves_its_threads_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run where torch is loaded already (here, pytest): no thread or environment change."""
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("99.0 99.0 99.0 200/300 4567\n")  # every CPU looks busy
    monkeypatch.setattr(threads, "_LOADAVG", loadavg)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    before = torch.get_num_threads()
    image = write_image(tmp_path / "in.png")
    result = run_cli(image, "-o", tmp_path / "out.png", "--weight", "0.1", "--max-iter", "3")
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == before
    assert "GOMP_SPINCOUNT" not in os.environ
