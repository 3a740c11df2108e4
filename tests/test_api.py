"""The public entry points: automatic weight, tiles, banded energy."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from tvdenoise import denoise, restore, solve, tiling
from tvdenoise.fidelity import data_term
from tvdenoise.solver import DEFAULT_EPS, energy
from tvdenoise.tv import TotalVariation

from helpers import add_noise, piecewise_image, without_kernel

#: Tiled and untiled results may differ by at most this (issue bar: 1e-3 on [0, 1]).
SEAM_TOLERANCE = 1e-3


@pytest.mark.parametrize("noise", ["gaussian", "impulse", "poisson"])
def test_tiles_leave_no_seams(noise: str) -> None:
    noisy = add_noise(piecewise_image(3, 150, 131, seed=7), 0.1, seed=8)
    whole = restore(noisy, 0.2, noise=noise, tile=0)  # type: ignore[arg-type]
    tiled = restore(noisy, 0.2, noise=noise, tile=48)  # type: ignore[arg-type]
    assert float((whole.restored - tiled.restored).abs().max()) <= SEAM_TOLERANCE
    assert torch.allclose(whole.energy, tiled.energy, rtol=1e-3)


@pytest.mark.parametrize("noise", ["gaussian", "impulse", "poisson"])
def test_banded_energy_equals_the_solver_energy(noise: str) -> None:
    noisy = add_noise(piecewise_image(3, 45, 37, seed=9), 0.1, seed=10).unsqueeze(0).clamp(0, 1)
    gappy = noisy.clone()
    gappy[..., 5:9, 6:11] = math.nan
    for kind, color in [
        ("isotropic", "joint"),
        ("anisotropic", "joint"),
        ("isotropic", "separate"),
    ]:
        reg, term = TotalVariation(kind, color, DEFAULT_EPS), data_term(noise)  # type: ignore[arg-type]
        for data in (noisy, gappy):
            result = solve(data, 0.2, tv=kind, color=color, noise=noise)  # type: ignore[arg-type]
            with without_kernel():  # PyTorch's operations, slab by slab
                banded = energy(result.restored, data, result.weights, reg, term, slices=7)
                whole = energy(result.restored, data, result.weights, reg, term, slices=1000)
            summed = energy(result.restored, data, result.weights, reg, term)  # the kernel's
            assert torch.allclose(banded, whole, rtol=1e-5)
            assert torch.allclose(whole, result.energy, rtol=1e-5)
            assert torch.allclose(summed, whole, rtol=1e-5)


def test_automatic_weight_reports_the_noise_level() -> None:
    noisy = add_noise(piecewise_image(1, 64, 64, seed=11), 0.1, seed=12)
    result = restore(noisy, sigma=0.1)
    assert result.sigmas is not None and float(result.sigmas[0]) == pytest.approx(0.1)
    assert float(result.weights[0]) > 0
    fixed = restore(noisy, 0.2)
    assert fixed.sigmas is None and float(fixed.weights[0]) == pytest.approx(0.2)


def test_denoise_keeps_shape_and_dtype() -> None:
    noisy = add_noise(piecewise_image(3, 40, 33), 0.1).double()
    restored = denoise(noisy, 0.1)
    assert restored.shape == noisy.shape and restored.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": "big"}, "weight must be"),
        ({"weight": 0.2, "sigma": 0.1}, "needs weight='auto'"),
        ({"sigma": 0.1, "noise": "impulse"}, "applies to noise='gaussian'"),
        ({"weight": 0.2, "tile": -1}, "tile must be"),
        ({"weight": 0.2, "tile": 1}, "tile must be 0 \\(never tile\\) or >= 16 pixels, got 1"),
    ],
)
def test_bad_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        restore(torch.rand(1, 16, 16), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(1, 0, 0), (0, 5, 5), (2, 1, 0, 5), (1, 3, 4, 0)])
def test_images_without_samples_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="at least one channel and one sample along each"):
        restore(torch.rand(*shape), 0.1)
    assert restore(torch.rand(0, 1, 5, 5), 0.1).restored.shape == (0, 1, 5, 5)  # no images


def test_cpu_tiles_only_large_images_one_cache_sized_tile_at_a_time() -> None:
    cpu = torch.device("cpu")
    large = torch.Size([1, 3, 4000, 6000])
    assert tiling.auto_tile(large, cpu, torch.float32) == tiling.CPU_TILE
    assert tiling.auto_tile(torch.Size([1, 3, 512, 512]), cpu, torch.float32) is None
    assert tiling.auto_tile(torch.Size([1, 3, 1024, 1024]), cpu, torch.float32) is None
    assert tiling.auto_tile(torch.Size([1, 3, 1024, 1536]), cpu, torch.float32) == tiling.CPU_TILE
    assert tiling.tiles_per_batch(cpu) == 1


@pytest.mark.parametrize("channels", [1, 2, 3, 5, 200])
def test_cpu_tiles_hold_one_rgb_tiles_values_whatever_the_channels(channels: int) -> None:
    side = tiling.auto_tile(
        torch.Size([1, channels, 6000, 6000]), torch.device("cpu"), torch.float32
    )
    assert side is not None
    if side > tiling.CPU_TILE_MIN_SIDE:
        assert abs(channels * side * side / tiling.CPU_TILE_VALUES - 1) < 0.01
    else:  # many channels: the side stops at its floor
        assert side == tiling.CPU_TILE_MIN_SIDE
        assert channels * side * side > tiling.CPU_TILE_VALUES


@pytest.mark.parametrize("reg", ["tv", "tgv"])
def test_cpu_solves_a_batch_in_groups_of_images_with_the_same_results(
    reg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = torch.stack(
        [add_noise(piecewise_image(3, 40, 33, seed=s), 0.1, seed=s + 1) for s in range(5)]
    )
    weights = [0.1, 0.2, 0.15, 0.3, 0.25]
    whole = restore(images, weights, reg=reg, tol=1e-30)  # type: ignore[arg-type]
    monkeypatch.setattr(tiling, "CPU_TILE_VALUES", 2 * images[0].numel())
    assert tiling.images_per_batch(images.shape, torch.device("cpu")) == 2
    reported: list[int] = []
    grouped = restore(
        images,
        weights,
        reg=reg,  # type: ignore[arg-type]
        tol=1e-30,
        callback=lambda i, energy: reported.append(i),
    )
    torch.testing.assert_close(grouped.restored, whole.restored, atol=1e-6, rtol=0)
    torch.testing.assert_close(grouped.energy, whole.energy)
    assert torch.equal(grouped.iterations, whole.iterations)
    # Two opponent parts of three groups each: one progress, from the start to the end.
    assert reported == sorted(reported)
    assert reported[0] < 60 // 6 and reported[-1] == 60


def test_photon_noise_reports_one_progress_over_its_estimators(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tvdenoise import api

    chosen = api.poisson_estimators

    def mixed(*args: Any, **kwargs: Any) -> Any:  # each image another estimator
        choice = chosen(*args, **kwargs)
        return dataclasses.replace(choice, estimators=("poisson", "gaussian"), chroma_weights=None)

    monkeypatch.setattr(api, "poisson_estimators", mixed)
    g = torch.Generator().manual_seed(3)
    clean = torch.stack([piecewise_image(3, 40, 36, seed=s) for s in (4, 5)])
    noisy = torch.poisson(clean * 30, generator=g) / 30
    reported: list[int] = []
    result = restore(
        noisy,
        noise="poisson",
        peak=30,
        max_iter=20,
        tol=1e-30,
        callback=lambda i, e: reported.append(i),
    )
    assert result.noise_models == ("poisson", "gaussian")
    assert reported == sorted(reported)
    assert reported[-1] == 20


def test_tiled_solves_report_one_progress() -> None:
    noisy = add_noise(piecewise_image(1, 100, 90, seed=7), 0.1, seed=8)
    reported: list[int] = []
    restore(noisy, 0.2, tile=48, tol=1e-30, max_iter=20, callback=lambda i, e: reported.append(i))
    # 3 x 2 tiles, each reporting every 10 iterations: one progress from the start to the end.
    assert len(reported) == 12
    assert reported == sorted(reported)
    assert reported[0] < 10 and reported[-1] == 20
