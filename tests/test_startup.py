"""Start-up: what answers without PyTorch, and the package's lazily loaded names.

``tvdenoise --help``, ``--version`` and usage errors must not import torch (it takes longer
to import than the rest of the command takes to run on a small image). Each case runs in a
fresh interpreter, which then reports whether ``torch`` was imported; the time it takes is
measured by ``benchmarks/bench_speed.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tvdenoise

ROOT = Path(__file__).resolve().parents[1]

# Runs the command in-process the way the console script or ``python -m`` does, then
# prints the exit code and the heavy modules that were imported, as JSON on stderr.
_PROBE = """
import json, runpy, sys
how, args = sys.argv[1], sys.argv[2:]
sys.argv = ["tvdenoise", *args]
try:
    if how == "module":
        runpy.run_module("tvdenoise", run_name="__main__", alter_sys=True)
    else:
        from tvdenoise.cli import main
        main()
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "numpy", "PIL", "tqdm") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def _probe(how: str, *args: str, cwd: Path = ROOT) -> tuple[int, list[str], str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, how, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=env,
    )
    *messages, report = done.stderr.splitlines()
    result = json.loads(report)
    return result["code"], result["heavy"], done.stdout, "\n".join(messages)


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
    ],
)
def test_usage_errors_answer_without_torch(tmp_path: Path, args: list[str], fragment: str) -> None:
    code, heavy, stdout, stderr = _probe("script", *args, cwd=tmp_path)
    assert code == 2, stderr
    assert stdout == ""
    assert stderr.startswith("error: ") and fragment in stderr, stderr
    assert "torch" not in heavy and "numpy" not in heavy
    assert list(tmp_path.iterdir()) == []


def test_work_does_import_torch(tmp_path: Path) -> None:
    """The probe can see torch: a run that does work imports it."""
    code, heavy, _, stderr = _probe("script", "missing.png", cwd=tmp_path)
    assert code == 2, stderr
    assert "missing.png" in stderr
    assert "torch" in heavy


def test_public_names_load_on_first_use() -> None:
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
        _ = tvdenoise.denoize  # type: ignore[attr-defined]
    assert not hasattr(tvdenoise, "denoize")
