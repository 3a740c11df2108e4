"""The Dask backend: files on a local cluster, chunked arrays, large TIFFs chunked.

Every cluster here is started by the test on 127.0.0.1 (worker processes) and stopped by
it, through ``--workers`` or :class:`tvdenoise.dask.Cluster`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import torch

import tvdenoise

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
tifffile = pytest.importorskip("tifffile")
tvd = pytest.importorskip("tvdenoise.dask")

from tvdenoise.batch import Record, Settings, SolverSettings, process_file  # noqa: E402
from tvdenoise.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE  # noqa: E402
from tvdenoise.io import write_atomically  # noqa: E402
from tvdenoise.plan import Job  # noqa: E402

from helpers import add_noise, files_under, piecewise_image, run_cli, write_image  # noqa: E402

FAST = ["--max-iter", "30", "--device", "cpu"]
SETTINGS = Settings(solver=SolverSettings(weight=0.2, max_iter=30), device="cpu")


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """The address of a 2-worker local cluster shared by the tests that only use it."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    ) as cluster:
        yield str(cluster.scheduler_address)


def _records(report: Path) -> list[dict[str, Any]]:
    """The report's records without the times (which differ from run to run)."""
    records = json.loads(report.read_text())["records"]
    for record in records:
        del record["seconds"]
    return list(records)


def _folder(root: Path, count: int) -> Path:
    """``count`` small images of odd sizes and modes (two of each size, to be batched
    together by a local run), and one corrupt file."""
    modes = ["RGB", "L", "RGBA"]
    for i in range(count):
        size = (37 + 2 * (i // 2), 31)
        write_image(root / f"im{i:02d}.png", mode=modes[i % 3], size=size, seed=i)
    whole = (root / "im00.png").read_bytes()
    (root / "broken.png").write_bytes(whole[: len(whole) // 2])
    return root


# --------------------------------------------------------------------------------------
# Files on a cluster
# --------------------------------------------------------------------------------------


def test_a_folder_on_two_workers_equals_the_local_run(tmp_path: Path) -> None:
    scans = _folder(tmp_path / "scans", 8)
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    one = run_cli(scans, "-o", local, *FAST, "--report", tmp_path / "local.json")
    two = run_cli(
        scans, "-o", cluster, *FAST, "--workers", "2", "--report", tmp_path / "cluster.json"
    )
    assert one.exit_code == two.exit_code == EXIT_FAILED  # the corrupt file
    assert two.stderr.splitlines()[-1] == "8 restored, 0 skipped, 1 failed"
    errors = [line for line in two.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith(str(scans / "broken.png"))
    names = sorted(p.name for p in files_under(local))
    assert len(names) == 8 and sorted(p.name for p in files_under(cluster)) == names
    for name in names:
        assert (cluster / name).read_bytes() == (local / name).read_bytes(), name
    assert sorted(two.stdout.split()) == sorted(str(cluster / n) for n in names)
    for a, b in zip(
        _records(tmp_path / "local.json"), _records(tmp_path / "cluster.json"), strict=True
    ):
        assert b == {**a, "output": a["output"].replace(str(local), str(cluster))}


def test_a_second_run_on_the_cluster_skips_finished_outputs(tmp_path: Path, scheduler: str) -> None:
    for i in range(4):
        write_image(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "out"
    assert run_cli(tmp_path / "in", "-o", out, *FAST, "--weight", "0.2").exit_code == EXIT_OK
    kept = (out / "1.png").read_bytes()
    (out / "0.png").unlink()
    (out / "3.png").unlink()
    result = run_cli(tmp_path / "in", "-o", out, *FAST, "--weight", "0.2", "--scheduler", scheduler)
    assert result.exit_code == EXIT_OK
    assert result.stderr.splitlines()[-1] == "2 restored, 2 skipped, 0 failed"
    assert (out / "1.png").read_bytes() == kept
    assert files_under(out) == {out / f"{i}.png" for i in range(4)}


def _crash_once_mid_write(job: Job, settings: Settings, since: float) -> Record:
    """A file task whose first attempt on ``c.png`` kills its worker halfway through
    writing the output (as a machine failure would), leaving a temporary file."""
    flag = job.output.parent / "crashed-once"
    if job.input.name == "c.png" and not flag.exists():
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()

        def half_then_die(handle: IO[bytes]) -> None:
            handle.write(b"\x89PNG half of an image")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        write_atomically(job.output, half_then_die)
    return tvd._process_file(job, settings, since)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_worker_killed_mid_write_is_replaced_and_its_file_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    jobs = []
    for seed, name in enumerate(names):
        jobs.append(Job(write_image(tmp_path / "in" / name, seed=seed), tmp_path / "out" / name))
    monkeypatch.setattr(tvd, "_process_file", _crash_once_mid_write)
    records: list[Record] = []
    with tvd.Cluster(workers=2) as cluster:
        cluster.run_jobs(jobs, SETTINGS, on_record=records.append)
    assert (tmp_path / "out" / "crashed-once").exists()  # the worker did die
    assert sorted(r.input.name for r in records if r.status == "restored") == names
    out = tmp_path / "out"
    assert files_under(out) == {out / n for n in names} | {out / "crashed-once"}
    for job in jobs:  # every output whole, and as a local run writes it
        alone = tmp_path / "alone" / job.output.name
        assert process_file(Job(job.input, alone), SETTINGS).status == "restored"
        assert job.output.read_bytes() == alone.read_bytes()


@pytest.mark.slow
def test_an_interrupted_run_cancels_the_rest_and_leaves_whole_files(tmp_path: Path) -> None:
    # More files than the cluster is sent at first (16): however fast the workers finish
    # what they were sent, the files after those are sent only as records arrive.
    jobs = [
        Job(write_image(tmp_path / "in" / f"{i}.png", seed=i), tmp_path / "out" / f"{i}.png")
        for i in range(40)
    ]
    records: list[Record] = []

    def stop_after_two(record: Record) -> None:
        records.append(record)
        if len(records) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), tvd.Cluster(workers=2) as cluster:
        cluster.run_jobs(jobs, SETTINGS, on_record=stop_after_two)
    written = files_under(tmp_path / "out")
    assert len(written) < len(jobs)  # the rest was cancelled
    for path in written:  # no temporary file, and every output complete
        assert path.suffix == ".png" and not path.name.startswith(".")
        alone = tmp_path / "alone" / path.name
        process_file(Job(tmp_path / "in" / path.name, alone), SETTINGS)
        assert path.read_bytes() == alone.read_bytes()


def test_without_dask_the_cluster_options_are_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tmp_path / "a.png")
    monkeypatch.delitem(sys.modules, "tvdenoise.dask")
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    for option in (["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:8786"]):
        result = run_cli(tmp_path / "a.png", "-o", tmp_path / "out.png", *option)
        assert result.exit_code == EXIT_USAGE
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith("error: --scheduler and --workers need Dask (")
        assert result.stderr.endswith('pip install "tvdenoise[dask]"\n')
        assert not (tmp_path / "out.png").exists()


def test_cluster_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image(tmp_path / "a.png")
    both = run_cli(tmp_path / "a.png", "--workers", "1", "--scheduler", "tcp://127.0.0.1:8786")
    assert both.exit_code == EXIT_USAGE
    assert both.stderr == "error: --scheduler and --workers exclude each other\n"
    for address, reason in (("foo", "missing port number"), ("tcp://h:99999", "port 99999")):
        malformed = run_cli(tmp_path / "a.png", "--scheduler", address)
        assert malformed.exit_code == EXIT_USAGE
        assert malformed.stderr.startswith(f"error: cannot connect to the Dask scheduler ({reason}")
        assert malformed.stderr.count("\n") == 1
    monkeypatch.setattr(tvd, "_CONNECT_TIMEOUT_S", 1)
    # Port 9 (discard) on the loopback address: nothing listens there in a test machine.
    nobody = run_cli(tmp_path / "a.png", "--scheduler", "tcp://127.0.0.1:9")
    assert nobody.exit_code == EXIT_USAGE
    assert nobody.stderr.startswith("error: cannot connect to the Dask scheduler (")
    assert nobody.stderr.endswith(": tcp://127.0.0.1:9\n") and nobody.stderr.count("\n") == 1
    assert not (tmp_path / "a_denoised.png").exists()
    assert run_cli(tmp_path / "a.png", "--workers", "0").exit_code == EXIT_USAGE


# --------------------------------------------------------------------------------------
# Chunked arrays
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_chunked_array_matches_the_whole_solve(channels: int) -> None:
    noisy = add_noise(piecewise_image(channels, 101, 87), 0.1, seed=channels)
    array = da.from_array(noisy.numpy(), chunks=(1, 45, 40))
    if channels == 1:
        array = array[0]
    colours = ["auto", "joint"] if channels == 3 else ["auto"]  # auto: opponent for RGB
    for color in colours:
        whole = tvdenoise.denoise(noisy, 0.2, max_iter=30, tile=0, color=color)
        restored = tvd.denoise(array, 0.2, max_iter=30, color=color)
        assert restored.shape == array.shape and restored.chunks == array.chunks
        with dask.config.set(scheduler="synchronous"):
            values = restored.compute()
        assert values.dtype == np.float32
        assert np.abs(values - whole.numpy().reshape(values.shape)).max() < 1e-3, color


def test_the_weight_is_chosen_once_for_all_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    noisy = add_noise(piecewise_image(1, 80, 120), 0.08, seed=4)
    array = da.from_array(noisy.numpy(), chunks=(1, 40, 40))
    used: list[float] = []
    real = tvd._restore_block

    def spy(block: Any, weight: float, options: dict[str, Any]) -> Any:
        used.append(weight)
        return real(block, weight, options)

    monkeypatch.setattr(tvd, "_restore_block", spy)
    with dask.config.set(scheduler="synchronous"):
        weight, sigma, color, chroma = tvd.choose_weight(array)
        tvd.denoise(array, max_iter=10).compute()
    assert (color, chroma) == ("joint", None)
    assert len(used) == 6 and set(used) == {weight}
    # Small enough to be one window: the library's own automatic choice for the image.
    whole = tvdenoise.restore(noisy, max_iter=10)
    assert whole.sigmas is not None
    assert sigma == pytest.approx(float(whole.sigmas[0]), rel=1e-6)
    assert weight == pytest.approx(float(whole.weights[0]), rel=1e-6)


def test_weight_from_windows_spread_over_the_array(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(5)
    noisy = 0.5 + 0.05 * torch.randn((1, 300, 280), generator=gen)
    array = da.from_array(noisy.numpy(), chunks=(1, 100, 100))
    read: list[tuple[int, ...]] = []
    real = tvd._windows

    def windows(batch: Any, count: int, size: int) -> Any:
        picked = real(batch, count, size)
        read.append(picked.shape)
        return picked

    monkeypatch.setattr(tvd, "_windows", windows)
    monkeypatch.setitem(tvd.SAMPLE_SIDE, 2, 64)
    with dask.config.set(scheduler="synchronous"):
        weight, sigma, _, _ = tvd.choose_weight(array, samples=4)
        given, kept, _, _ = tvd.choose_weight(array, sigma=0.05, samples=4)
        impulse, none, _, _ = tvd.choose_weight(array, noise="impulse", samples=2)
    assert read == [(4, 1, 64, 64), (4, 1, 64, 64), (2, 1, 64, 64)]
    assert sigma == pytest.approx(0.05, rel=0.05) and kept == 0.05
    assert weight > 0 and given > 0
    assert none is None and impulse >= 0


def test_colour_arrays_get_the_opponent_weights_of_the_library() -> None:
    """RGB with Gaussian noise: brightness and colour weights chosen apart, as
    :func:`tvdenoise.restore` chooses them for an array small enough to be one window."""
    noisy = add_noise(piecewise_image(3, 90, 110), 0.08, seed=6)
    array = da.from_array(noisy.numpy(), chunks=(3, 45, 55))
    with dask.config.set(scheduler="synchronous"):
        choice = tvd.choose_weight(array)
        joint = tvd.choose_weight(array, color="joint")
        impulse = tvd.choose_weight(array, noise="impulse")
    whole = tvdenoise.restore(noisy, max_iter=10)
    assert whole.chroma_weights is not None and choice.color == "opponent"
    assert choice.weight == pytest.approx(float(whole.weights[0]), rel=1e-6)
    assert choice.chroma_weight == pytest.approx(float(whole.chroma_weights[0]), rel=1e-6)
    assert (joint.color, joint.chroma_weight) == ("joint", None)
    assert (impulse.color, impulse.chroma_weight) == ("joint", None)
    with pytest.raises(ValueError, match="chroma_weight applies to color='opponent' only"):
        tvd.denoise(array, 0.1, color="joint", chroma_weight=0.2)


def test_chunked_volume_matches_the_whole_solve() -> None:
    gen = torch.Generator().manual_seed(7)
    depth = torch.arange(72).reshape(-1, 1, 1)
    slab = piecewise_image(1, 41, 43, seed=7) * torch.where(depth < 30, 1.0, 0.7)
    noisy = (slab + 0.1 * torch.randn(slab.shape, generator=gen)).clamp(0, 1)[None]
    axes: dict[str, Any] = {"spatial_dims": 3, "spacing": (2.0, 1.0, 1.0)}
    whole = tvdenoise.denoise(noisy, 0.2, max_iter=30, tile=0, **axes)
    volume = da.from_array(noisy[0].numpy(), chunks=(36, 41, 43))  # a seam across depth
    with dask.config.set(scheduler="synchronous"):
        values = tvd.denoise(volume, 0.2, max_iter=30, **axes).compute()
    assert np.abs(values - whole[0].numpy()).max() < 1e-3


def test_volume_windows_are_cubes_spread_over_it() -> None:
    volume = da.zeros((2, 1, 40, 50, 60), dtype=np.float32, chunks=20)
    assert tvd._windows(volume, 8, 16).shape == (8, 1, 16, 16, 16)
    assert tvd._windows(volume, 3, 16).shape == (2, 1, 16, 16, 16)  # up to 3: 2 x 1 x 1
    assert tvd._windows(volume, 8, 64).shape == (1, 1, 40, 50, 60)


@pytest.mark.parametrize(
    ("array", "kwargs", "error", "message"),
    [
        (np.zeros((8, 8), np.float32), {}, TypeError, "must be a dask.array.Array"),
        (da.zeros((8, 8), dtype=np.uint8), {}, TypeError, "floating-point values"),
        (da.zeros((8,), dtype=np.float32), {}, ValueError, "must have shape (H, W)"),
        (da.zeros((8, 8), dtype=np.float32), {"spatial_dims": 3}, ValueError, "(D, H, W)"),
        (da.zeros((8, 8), dtype=np.float32), {"spatial_dims": 1}, ValueError, "2 or 3"),
        (da.zeros((8, 8), dtype=np.float32), {"weight": -1.0}, ValueError, "finite number"),
        (da.zeros((8, 8), dtype=np.float32), {"weight": "big"}, ValueError, "'auto'"),
        (da.zeros((8, 8), dtype=np.float32), {"overlap": -1}, ValueError, "overlap"),
        (da.zeros((8, 8), dtype=np.float32), {"weight": 0.1, "sigma": 0.1}, ValueError, "sigma"),
    ],
)
def test_denoise_checks_its_arguments(
    array: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        tvd.denoise(array, **{"weight": 0.1, **kwargs})


# --------------------------------------------------------------------------------------
# A large TIFF through the command line, chunked across the workers
# --------------------------------------------------------------------------------------


def test_what_is_chunked(tmp_path: Path) -> None:
    """One large 2-D TIFF to a TIFF is chunked; with options that chunks do not solve
    (a volume, a spacing, TGV) the file is one task, restored whole."""
    source = tmp_path / "big.tif"
    tifffile.imwrite(source, np.zeros((120, 100), dtype=np.uint16))
    job = Job(source, tmp_path / "out.tif")
    assert tvd._large_tiff(job, Settings(), 10_000) is not None
    for settings in (
        Settings(dims=3),
        Settings(spacing=(1.0, 1.0, 1.0)),
        Settings(solver=SolverSettings(reg="tgv")),
    ):
        assert tvd._large_tiff(job, settings, 10_000) is None
    assert tvd._large_tiff(Job(source, tmp_path / "out.png"), Settings(), 10_000) is None


def test_large_tiffs_are_chunked_across_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheduler: str
) -> None:
    sources = tmp_path / "in"
    sources.mkdir()
    rgb = add_noise(piecewise_image(3, 201, 177), 0.1, seed=3).permute(1, 2, 0).numpy()
    tifffile.imwrite(
        sources / "rgb8.tif",
        np.round(rgb * 255).astype(np.uint8),
        photometric="rgb",
        compression="zlib",
        tile=(64, 64),
    )
    gray = add_noise(piecewise_image(1, 201, 177), 0.1, seed=1)[0].numpy()
    tifffile.imwrite(sources / "gray16.tif", np.round(gray * 65535).astype(np.uint16))
    counts = (gray * 3 + 1).astype(np.float32)  # floats map by their own range
    counts[5, 7] = np.nan  # a missing sample, written back as missing
    tifffile.imwrite(sources / "float.tif", counts)
    monkeypatch.setattr(tvd, "CHUNKED_MIN_VALUES", 10_000)
    monkeypatch.setattr(tvd, "CHUNK", 96)
    report = tmp_path / "run.json"
    out = tmp_path / "out"
    result = run_cli(
        sources, "-o", out, *FAST, "--weight", "0.2", "--scheduler", scheduler,
        "--report", report,
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.stderr
    names = ["float.tif", "gray16.tif", "rgb8.tif"]
    assert sorted(result.stdout.split()) == [str(out / name) for name in names]
    assert files_under(out) == {out / name for name in names}
    local = Settings(solver=SolverSettings(weight=0.2, max_iter=30), device="cpu")
    for record in json.loads(report.read_text())["records"]:
        assert record["status"] == "restored" and record["weight"] == 0.2
        assert record["iterations"] is None  # chunks stop on their own
        assert (record["dims"], record["images"]) == (2, 1)
    for name in names:  # within 1e-3 of the range of a local run's whole solve
        whole = tmp_path / "whole" / name
        assert process_file(Job(sources / name, whole), local).status == "restored"
        chunked, expected = tifffile.imread(out / name), tifffile.imread(whole)
        assert chunked.shape == expected.shape and chunked.dtype == expected.dtype
        assert np.array_equal(np.isnan(chunked), np.isnan(expected))
        if expected.dtype.kind == "f":
            tolerance = 1e-3 * 3
        else:  # after rounding to integers, one level of 8 bits
            tolerance = max(1, 1e-3 * np.iinfo(expected.dtype).max)
        difference = np.abs(chunked.astype(np.float64) - expected.astype(np.float64))
        assert np.nanmax(difference) <= tolerance, name
