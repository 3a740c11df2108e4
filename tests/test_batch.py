"""Tests of batches: planning (globs, folders, collisions), batched solving, resuming,
failure isolation, reports and interruption."""

from __future__ import annotations

import inspect
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tvdenoise import batch
from tvdenoise.batch import Record, Settings, SolverSettings, process_file, run_jobs
from tvdenoise.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from tvdenoise.plan import Job, Plan, PlanError, plan_jobs

from helpers import files_under, opened, run_cli, write_image

FAST = ["--max-iter", "6", "--device", "cpu", "--weight", "0.1"]
FAST_SETTINGS = Settings(solver=SolverSettings(weight=0.1, max_iter=6), device="cpu")


def _outputs(plan: Plan, base: Path) -> list[str]:
    return [job.output.relative_to(base).as_posix() for job in plan.jobs]


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """scans/{a.png, b.png, notes.txt, .hidden.png, sub/c.png, sub/deeper/d.png}."""
    scans = tmp_path / "scans"
    for name in ["a.png", "b.png", ".hidden.png", "sub/c.png", "sub/deeper/d.png"]:
        write_image(scans / name)
    (scans / "notes.txt").write_text("not an image")
    return tmp_path


def test_glob_keeps_images_directly_matched(tree: Path) -> None:
    plan = plan_jobs([str(tree / "scans" / "*")], tree / "out")
    assert _outputs(plan, tree) == ["out/a.png", "out/b.png"]
    assert [job.input.name for job in plan.jobs] == ["a.png", "b.png"]
    assert not plan.single


def test_recursive_glob_mirrors_folders(tree: Path) -> None:
    plan = plan_jobs([str(tree / "scans" / "**" / "*.png")], tree / "out")
    assert _outputs(plan, tree) == [
        "out/a.png",
        "out/b.png",
        "out/sub/c.png",
        "out/sub/deeper/d.png",
    ]


def test_glob_relative_to_the_working_folder(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree / "scans")
    plan = plan_jobs(["*/*.png"], Path("out"))
    assert [(str(j.input), j.output.as_posix()) for j in plan.jobs] == [
        (os.path.join("sub", "c.png"), "out/sub/c.png")
    ]


def test_folder_takes_its_images_not_subfolders(tree: Path) -> None:
    plan = plan_jobs([str(tree / "scans")], tree / "out")
    assert _outputs(plan, tree) == ["out/a.png", "out/b.png"]


def test_shell_list_uses_file_names(tree: Path) -> None:
    files = [str(tree / "scans" / "sub" / "c.png"), str(tree / "scans" / "a.png")]
    plan = plan_jobs(files, tree / "out", suffix="_tv", fmt="JPG")
    assert _outputs(plan, tree) == ["out/c_tv.jpg", "out/a_tv.jpg"]


def test_one_file_to_a_file_is_single(tree: Path) -> None:
    plan = plan_jobs([str(tree / "scans" / "a.png")], tree / "x.png")
    assert plan.single and plan.jobs == (Job(tree / "scans" / "a.png", tree / "x.png"),)
    beside = plan_jobs([str(tree / "scans" / "a.png")], None)
    assert beside.single and beside.jobs[0].output == tree / "scans" / "a_denoised.png"
    into = plan_jobs([str(tree / "scans" / "a.png")], f"{tree / 'out'}/")
    assert not into.single and into.jobs[0].output == tree / "out" / "a.png"


def test_patterns_leave_out_the_output_folder(tree: Path) -> None:
    out = tree / "scans" / "clean"
    write_image(out / "a.png")  # a result of an earlier run
    plan = plan_jobs([str(tree / "scans" / "**" / "*.png")], out)
    assert [job.input.relative_to(tree).as_posix() for job in plan.jobs] == [
        "scans/a.png",
        "scans/b.png",
        "scans/sub/c.png",
        "scans/sub/deeper/d.png",
    ]
    write_image(tree / "x" / "clean" / "a.png")
    with pytest.raises(PlanError, match="inside the output folder"):
        plan_jobs([str(tree / "x" / "**" / "*.png")], tree / "x" / "clean")
    beside = plan_jobs([str(tree / "scans" / "*.png")], tree / "scans", suffix="_tv")
    assert _outputs(beside, tree) == ["scans/a_tv.png", "scans/b_tv.png"]


def test_an_input_named_twice_is_done_once(tree: Path) -> None:
    a = str(tree / "scans" / "a.png")
    plan = plan_jobs([a, str(tree / "scans" / "*.png"), a], tree / "out")
    assert _outputs(plan, tree) == ["out/a.png", "out/b.png"]


def test_two_inputs_on_one_output_is_an_error(tree: Path) -> None:
    write_image(tree / "other" / "a.png")
    with pytest.raises(PlanError, match=r"would both be written to the same output") as err:
        plan_jobs([str(tree / "scans" / "a.png"), str(tree / "other" / "a.png")], tree / "out")
    assert str(err.value).endswith(os.path.join("out", "a.png"))
    write_image(tree / "scans" / "a.jpg")
    with pytest.raises(PlanError, match="same output"):
        plan_jobs([str(tree / "scans" / "a.*")], tree / "out", fmt="png")


def test_output_onto_an_input_is_an_error(tree: Path) -> None:
    with pytest.raises(PlanError, match="replace the input file"):
        plan_jobs([str(tree / "scans" / "*.png")], tree / "scans")


def test_pattern_matching_nothing_names_the_pattern(tree: Path) -> None:
    pattern = str(tree / "scans" / "*.tif")
    with pytest.raises(PlanError, match="no supported image files match") as err:
        plan_jobs([pattern], tree / "out")
    assert str(err.value).endswith(pattern)
    with pytest.raises(PlanError, match="no supported image files match"):
        plan_jobs([str(tree / "scans" / "*.txt")], tree / "out")  # matches, but no image


def test_several_inputs_need_an_output_folder(tree: Path) -> None:
    pattern = str(tree / "scans" / "*.png")
    with pytest.raises(PlanError, match="need -o to name the folder"):
        plan_jobs([pattern], None)
    with pytest.raises(PlanError, match="not an image file"):
        plan_jobs([pattern], tree / "clean.png")
    with pytest.raises(PlanError, match="not a file"):
        plan_jobs([pattern], tree / "scans" / "notes.txt")


# --------------------------------------------------------------------------------------
# Batches through the command
# --------------------------------------------------------------------------------------


def test_automatic_weight_is_reported_perwrite_image(tree: Path) -> None:
    report = tree / "run.json"
    args = [tree / "scans" / "*.png", "-o", tree / "out", "--max-iter", "6", "--sigma", "20"]
    result = run_cli(*args, "--report", report)
    assert result.exit_code == EXIT_OK, result.output
    document = json.loads(report.read_text())
    assert document["settings"]["weight"] == "auto"
    assert document["settings"]["sigma"] == pytest.approx(20 / 255)
    for record in document["records"]:
        assert record["sigma"] == pytest.approx(20.0)
        assert record["weight"] > 0


def test_glob_batch_writes_everything_and_reports(tree: Path) -> None:
    out = tree / "out"
    report = tree / "run.json"
    result = run_cli(tree / "scans" / "**" / "*.png", "-o", out, *FAST, "--report", report)
    assert result.exit_code == EXIT_OK, result.output
    expected = [out / "a.png", out / "b.png", out / "sub/c.png", out / "sub/deeper/d.png"]
    assert files_under(out) == set(expected)
    assert sorted(result.stdout.splitlines()) == sorted(str(p) for p in expected)
    assert result.stderr == "4 restored, 0 skipped, 0 failed\n"

    document = json.loads(report.read_text())
    assert document["settings"]["max_iter"] == 6
    assert document["settings"]["device"] == "cpu"
    assert document["settings"]["weight"] == pytest.approx(0.1)
    assert document["interrupted"] is False
    assert document["summary"] == {"restored": 4, "skipped": 0, "failed": 0, "not_processed": 0}
    records = document["records"]
    assert [Path(r["output"]) for r in records] == expected  # in input order
    for record in records:
        assert record["status"] == "restored" and record["error"] is None
        assert record["weight"] == pytest.approx(0.1)
        assert record["sigma"] is None
        assert record["iterations"] == 6
        assert record["energy"] > 0 and record["seconds"] >= 0
    assert [p.name for p in tree.iterdir() if p.name.endswith(".tmp")] == []


def test_folder_batch(tree: Path) -> None:
    result = run_cli(tree / "scans", "-o", tree / "out", *FAST, "--format", "webp")
    assert result.exit_code == EXIT_OK, result.output
    assert files_under(tree / "out") == {tree / "out/a.webp", tree / "out/b.webp"}


def test_shell_list_batch(tree: Path) -> None:
    a, c = tree / "scans/a.png", tree / "scans/sub/c.png"
    result = run_cli(a, c, "-o", tree / "new" / "folder", *FAST)
    assert result.exit_code == EXIT_OK, result.output
    assert files_under(tree / "new") == {tree / "new/folder/a.png", tree / "new/folder/c.png"}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["scans/*.tif"], "no supported image files match the pattern: "),
        (["scans/a.png", "elsewhere/a.png"], "would both be written to the same output"),
        (["scans/a.png", "scans/missing.png"], "no such file: "),
    ],
    ids=["nothing-matched", "collision", "missing-file"],
)
def test_batch_usage_errors_write_nothing(tree: Path, inputs: list[str], message: str) -> None:
    write_image(tree / "elsewhere" / "a.png")
    before = files_under(tree)
    result = run_cli(*[tree / i for i in inputs], "-o", tree / "out", *FAST)
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
    assert files_under(tree) == before and not (tree / "out").exists()


def test_existing_outputs_are_skipped_unless_overwrite(tree: Path) -> None:
    out = tree / "out"
    pattern = tree / "scans" / "*.png"
    assert run_cli(pattern, "-o", out, *FAST).exit_code == EXIT_OK
    (out / "a.png").write_bytes(b"marker")  # a skipped file must stay as it is

    again = run_cli(pattern, "-o", out, *FAST, "--verbose")
    assert again.exit_code == EXIT_OK, again.output
    assert "0 restored, 2 skipped, 0 failed" in again.stderr
    assert again.stdout == ""
    assert (out / "a.png").read_bytes() == b"marker"

    forced = run_cli(pattern, "-o", out, *FAST, "--overwrite")
    assert forced.exit_code == EXIT_OK
    assert forced.stderr == "2 restored, 0 skipped, 0 failed\n"
    assert opened(out / "a.png")[0].shape == (20, 24, 3)


def test_a_corrupt_file_does_not_stop_the_batch(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    for name in ["a.png", "c.png", "d.png"]:
        write_image(scans / name)
    whole = (scans / "a.png").read_bytes()
    (scans / "b.png").write_bytes(whole[: len(whole) // 2])
    report = tmp_path / "report.json"
    result = run_cli(scans, "-o", tmp_path / "out", *FAST, "--report", report, "--batch-size", "2")
    assert result.exit_code == EXIT_FAILED
    assert files_under(tmp_path / "out") == {
        tmp_path / "out" / n for n in ["a.png", "c.png", "d.png"]
    }
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {_record(report, 'b.png')['error']}"]
    assert "truncated or corrupt" in errors[0] and errors[0].endswith(str(scans / "b.png"))
    assert result.stderr.splitlines()[-1] == "3 restored, 0 skipped, 1 failed"
    failed = _record(report, "b.png")
    assert failed["status"] == "failed" and failed["iterations"] is None


def _record(report: Path, name: str) -> dict[str, Any]:
    records = json.loads(report.read_text())["records"]
    (found,) = [r for r in records if Path(r["input"]).name == name]
    return dict(found)


def test_mixed_sizes_and_modes_in_one_batch(tmp_path: Path) -> None:
    cases = {
        "rgb.png": ("RGB", (24, 20)),
        "gray.png": ("L", (24, 20)),
        "rgba.png": ("RGBA", (24, 20)),
        "small.png": ("RGB", (17, 13)),
        "gray16.png": ("I;16", (24, 20)),
        "rgb2.png": ("RGB", (24, 20)),
        "photo.jpg": ("RGB", (24, 20)),
    }
    for seed, (name, (mode, size)) in enumerate(cases.items()):
        write_image(tmp_path / "in" / name, mode=mode, size=size, seed=seed)
    result = run_cli(tmp_path / "in", "-o", tmp_path / "out", *FAST, "--batch-size", "2")
    assert result.exit_code == EXIT_OK, result.output
    for name, (_, size) in cases.items():
        pixels, written_mode = opened(tmp_path / "out" / name)
        original, original_mode = opened(tmp_path / "in" / name)
        assert written_mode == original_mode
        assert pixels.shape == original.shape
        assert pixels.shape[:2] == (size[1], size[0])


def test_batched_and_one_by_one_give_the_same_pixels(tmp_path: Path) -> None:
    names = [f"img{i}.png" for i in range(5)]
    for seed, name in enumerate(names):
        write_image(tmp_path / "in" / name, seed=seed)
    common = [tmp_path / "in", "--max-iter", "30", "--tol", "1e-3", "--device", "cpu"]
    assert run_cli(*common, "-o", tmp_path / "batched", "--batch-size", "4").exit_code == 0
    assert run_cli(*common, "-o", tmp_path / "single", "--batch-size", "1").exit_code == 0
    settings = Settings(solver=SolverSettings(max_iter=30, tol=1e-3), device="cpu")
    for name in names:
        batched = opened(tmp_path / "batched" / name)[0].astype(np.int64)
        single = opened(tmp_path / "single" / name)[0].astype(np.int64)
        assert np.abs(batched - single).max() <= 1
        record = process_file(Job(tmp_path / "in" / name, tmp_path / "pf" / name), settings)
        assert record.status == "restored"
        alone = opened(tmp_path / "pf" / name)[0].astype(np.int64)
        assert np.abs(batched - alone).max() <= 1


def test_each_image_of_a_batch_keeps_its_own_stopping_test(tmp_path: Path) -> None:
    flat = tmp_path / "in" / "flat.png"
    flat.parent.mkdir()
    Image.new("RGB", (24, 20), (90, 120, 150)).save(flat)  # already a minimiser
    write_image(tmp_path / "in" / "noisy.png")
    records: list[Record] = []
    plan = plan_jobs([str(tmp_path / "in")], tmp_path / "out")
    # A fixed weight: with the automatic one the flat image gets weight 0 and no iteration.
    solver = SolverSettings(weight=0.1, max_iter=40, tol=1e-9)
    run_jobs(plan.jobs, Settings(solver=solver, device="cpu"), on_record=records.append)
    iterations = {r.input.name: r.iterations for r in records}
    assert iterations == {"flat.png": 10, "noisy.png": 40}  # energy checks every 10


# --------------------------------------------------------------------------------------
# The engine: grouping, bounded memory, picklable units of work
# --------------------------------------------------------------------------------------


class _SolveSpy:
    """Wraps the solver to record each batch and how many images had been read by then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[tuple[int, ...]] = []
        self.read = 0
        self.solved = 0
        self.most_in_memory = 0
        real_solve, real_load = batch.restore, batch.load_image

        def solve(noisy: torch.Tensor, **kwargs: Any) -> Any:
            self.batches.append(tuple(noisy.shape))
            self.most_in_memory = max(self.most_in_memory, self.read - self.solved)
            self.solved += noisy.shape[0]
            return real_solve(noisy, **kwargs)

        def load_image(path: Path, **kwargs: Any) -> Any:
            self.read += 1
            return real_load(path, **kwargs)

        monkeypatch.setattr(batch, "restore", solve)
        monkeypatch.setattr(batch, "load_image", load_image)


def test_batches_hold_one_shape_and_at_most_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = [(24, 20), (16, 12)] * 4 + [(24, 20)] * 3  # interleaved shapes
    for i, size in enumerate(sizes):
        write_image(tmp_path / "in" / f"{i:02d}.png", size=size, seed=i)
    spy = _SolveSpy(monkeypatch)
    plan = plan_jobs([str(tmp_path / "in")], tmp_path / "out")
    records: list[Record] = []
    run_jobs(
        plan.jobs,
        Settings(FAST_SETTINGS.solver, device="cpu", batch_size=3),
        on_record=records.append,
    )
    assert sorted(r.input.name for r in records) == sorted(j.input.name for j in plan.jobs)
    assert all(r.status == "restored" for r in records)
    assert all(b[0] <= 3 for b in spy.batches)
    assert sum(b[0] for b in spy.batches) == len(sizes)
    assert {b[2:] for b in spy.batches} == {(20, 24), (12, 16)}
    assert len(spy.batches) == 5  # 7 of one shape -> 3 + 3 + 1, 4 of the other -> 3 + 1


def test_memory_is_bounded_whatever_the_number_offiles_under(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(30):
        write_image(tmp_path / "in" / f"{i:02d}.png", size=(8, 6), seed=i)
    spy = _SolveSpy(monkeypatch)
    plan = plan_jobs([str(tmp_path / "in")], tmp_path / "out")
    settings = Settings(SolverSettings(max_iter=2), device="cpu", batch_size=2)
    run_jobs(plan.jobs, settings, on_record=lambda record: None)
    assert spy.read == 30
    assert spy.most_in_memory <= 3 * settings.batch_size


def test_units_of_work_pickle(tmp_path: Path) -> None:
    job = Job(write_image(tmp_path / "a.png"), tmp_path / "out" / "a.png")
    settings = Settings(SolverSettings(weight=0.2, max_iter=4), device="cpu")
    function, job2, settings2 = pickle.loads(pickle.dumps((process_file, job, settings)))
    record = function(job2, settings2)
    assert pickle.loads(pickle.dumps(record)) == record
    assert record.status == "restored" and record.weight == pytest.approx(0.2)
    assert record.to_dict()["output"] == str(job.output)
    skipped = process_file(job, settings)
    assert skipped.status == "skipped" and skipped.output == job.output
    error = PlanError("no such file", "x.png")
    assert str(pickle.loads(pickle.dumps(error))) == "no such file: x.png"


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Settings(batch_size=0)
    with pytest.raises(ValueError, match="quality"):
        Settings(quality=0)
    options = SolverSettings().kwargs()
    assert {"weight", "sigma", "noise", "peak", "tile", "tv", "color", "max_iter"} <= set(options)
    assert set(options) <= set(inspect.signature(batch.restore).parameters)


# --------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------


def test_interruption_keeps_finished_files_and_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        write_image(tmp_path / "in" / f"{i}.png", seed=i)
    real_solve = batch.restore
    calls = 0

    def solve(noisy: torch.Tensor, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return real_solve(noisy, **kwargs)

    monkeypatch.setattr(batch, "restore", solve)
    report = tmp_path / "run.json"
    out = tmp_path / "out"
    result = run_cli(tmp_path / "in", "-o", out, *FAST, "--batch-size", "1", "--report", report)
    assert result.exit_code == EXIT_INTERRUPTED
    assert result.stderr.splitlines()[-1] == (
        "interrupted: 2 restored, 0 skipped, 0 failed, 3 not processed"
    )
    assert files_under(out) == {out / "0.png", out / "1.png"}  # no partial or temporary file
    document = json.loads(report.read_text())
    assert document["interrupted"] is True
    assert document["summary"]["not_processed"] == 3
    assert [r["status"] for r in document["records"]] == ["restored", "restored"]

    monkeypatch.setattr(batch, "restore", real_solve)
    resumed = run_cli(tmp_path / "in", "-o", out, *FAST)
    assert resumed.exit_code == EXIT_OK
    assert resumed.stderr == "3 restored, 2 skipped, 0 failed\n"


def test_output_created_meanwhile_is_skipped_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = Job(write_image(tmp_path / "a.png"), tmp_path / "out" / "a.png")
    real_save = batch.save_image

    def racing_save(path: Path, *args: Any, **kwargs: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"another run's result")
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(batch, "save_image", racing_save)
    record = process_file(job, FAST_SETTINGS)
    assert record.status == "skipped"
    assert job.output.read_bytes() == b"another run's result"
    assert files_under(tmp_path / "out") == {job.output}


def test_report_records_dims_spacing_and_images(tmp_path: Path) -> None:
    import tifffile

    stack = np.random.default_rng(0).integers(0, 255, (3, 20, 24), dtype=np.uint8)
    source = tmp_path / "stack.tif"
    tifffile.imwrite(
        source,
        stack,
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"axes": "ZYX", "spacing": 0.2, "unit": "um"},
    )
    settings = Settings(FAST_SETTINGS.solver, device="cpu", dims=2)
    record = process_file(Job(source, tmp_path / "out.tif"), settings)
    assert record.status == "restored", record.error
    assert (record.dims, record.spacing, record.images) == (2, (1.0, 1.0), 3)
    assert record.to_dict()["spacing"] == [1.0, 1.0]
    assert settings.to_dict()["dims"] == 2 and settings.to_dict()["spacing"] == "file"
