"""The Adam solver against the exact reference and its basic properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tvdenoise import denoise, reference_denoise, solve, solver, total_variation
from tvdenoise.fidelity import data_term, fidelity
from tvdenoise.solver import DEFAULT_EPS, Iteration, run_solver
from tvdenoise.tgv import TotalGeneralisedVariation
from tvdenoise.tv import TotalVariation

from helpers import add_noise, piecewise_image, psnr

VARIANTS = list(itertools.product(["isotropic", "anisotropic"], ["joint", "separate"]))

#: The convergence bar of the defaults, on the [0, 1] scale and in dB.
RMS_TO_MINIMISER = 2e-3
PSNR_TO_MINIMISER = 0.05


def test_weight_zero_returns_the_input() -> None:
    noisy = add_noise(piecewise_image(3, 37, 31), 0.1)
    assert torch.equal(denoise(noisy, 0.0), noisy)


@pytest.mark.parametrize(("kind", "color"), VARIANTS)
@pytest.mark.parametrize("sigma", [0.06, 0.2])
def test_defaults_reach_the_exact_minimiser(kind: str, color: str, sigma: float) -> None:
    clean = piecewise_image(3, 37, 31, seed=1)
    noisy = add_noise(clean, sigma, seed=2)
    # Anisotropic and per-channel TV are larger for the same image: the README advises
    # about 0.7 times the weight, and so does this test.
    weight = 2 * sigma * (1.0 if (kind, color) == ("isotropic", "joint") else 0.7)
    options = {"kind": kind, "color": color}
    exact, bound = reference_denoise(
        noisy.double(), weight, eps=DEFAULT_EPS, rms_tol=1e-5, **options
    )  # type: ignore[arg-type]
    assert float(bound.max()) <= 1e-5
    exact = exact.float().clamp(0, 1)
    restored = denoise(noisy, weight, tv=kind, color=color)  # type: ignore[arg-type]
    rms = float(((restored - exact) ** 2).mean().sqrt())
    assert rms <= RMS_TO_MINIMISER
    assert abs(psnr(restored, clean) - psnr(exact, clean)) <= PSNR_TO_MINIMISER
    assert psnr(restored, clean) > psnr(noisy, clean) + 3


@pytest.mark.slow  # an independent reference, but seconds of solving: CI's slow step
def test_reference_agrees_with_scikit_image_chambolle() -> None:
    restoration = pytest.importorskip("skimage.restoration")
    noisy = add_noise(piecewise_image(3, 37, 31, seed=3), 0.1, seed=4).double()
    ours, _ = reference_denoise(noisy, 0.2, color="separate", rms_tol=1e-4)
    theirs = restoration.denoise_tv_chambolle(
        noisy.permute(1, 2, 0).numpy(), weight=0.1, eps=1e-8, max_num_iter=5000, channel_axis=-1
    )
    diff = ours.permute(1, 2, 0).numpy() - theirs
    assert float((diff**2).mean() ** 0.5) < 1e-3


def test_batched_equals_one_by_one() -> None:
    images = torch.stack(
        [add_noise(piecewise_image(3, 37, 31, seed=s), 0.1, seed=s) for s in range(3)]
    )
    weights = torch.tensor([0.1, 0.2, 0.3])
    batch = solve(images, weights)
    for i in range(3):
        single = solve(images[i], float(weights[i]))
        assert torch.allclose(batch.restored[i], single.restored[0], atol=1e-6)
        assert int(batch.iterations[i]) == int(single.iterations[0])


@pytest.mark.parametrize("tol", [1e-30, 1e-4])
def test_fused_and_batched_adam_steps_agree(tol: float, monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.stack(
        [add_noise(piecewise_image(3, 29, 23, seed=s), 0.1, seed=s) for s in range(3)]
    ).double()
    # Two images share a weight: one run of two images and a run of one. With tol 1e-4
    # images stop at different iterations (the batched step's learning rate 0 freezes them).
    weights = [0.2, 0.2, 0.3]
    fused = solve(images, weights, tol=tol)
    monkeypatch.setattr(solver, "_fused_per_run", lambda u, runs: False)
    batched = solve(images, weights, tol=tol)
    assert torch.allclose(fused.restored, batched.restored, atol=1e-10)
    assert torch.allclose(fused.energy, batched.energy, rtol=1e-10)
    assert torch.equal(fused.iterations, batched.iterations)
    if tol > 1e-30:
        assert len(set(fused.iterations.tolist())) > 1


@pytest.mark.parametrize(("kind", "color"), VARIANTS)
@pytest.mark.parametrize("noise", ["gaussian", "impulse", "poisson"])
def test_workspace_energy_is_the_energy(kind: str, color: str, noise: str) -> None:
    f = add_noise(piecewise_image(3, 19, 14), 0.1).double()[None]
    u = add_noise(f[0], 0.05, seed=3)[None].clamp_min(0.01)
    weight = torch.tensor([0.3], dtype=torch.float64)
    reg = TotalVariation(kind, color, 1e-2)  # type: ignore[arg-type]
    ws = solver._Workspace(f, (weight / 2).reshape(1, 1, 1, 1), reg, data_term(noise))
    tv = total_variation(u, kind=kind, color=color, eps=1e-2, reduction="per_image")  # type: ignore[arg-type]
    data = fidelity(u.square() if noise == "poisson" else u, f, noise=noise, reduction="per_image")  # type: ignore[arg-type]
    assert torch.allclose(ws.energy(u), data + weight * tv, rtol=1e-12)
    # Twice in a row: the energy must not disturb the buffers the next call relies on.
    assert torch.allclose(ws.energy(u), data + weight * tv, rtol=1e-12)


def test_shapes_and_dtypes_are_kept() -> None:
    noisy = add_noise(piecewise_image(1, 20, 17), 0.1).double()
    restored = denoise(noisy, 0.1)
    assert restored.shape == noisy.shape and restored.dtype == torch.float64
    assert float(restored.min()) >= 0 and float(restored.max()) <= 1


def test_stops_early_when_converged() -> None:
    noisy = add_noise(piecewise_image(1, 20, 17), 0.01)
    result = solve(noisy, 0.001, max_iter=500, tol=1e-3)
    assert int(result.iterations[0]) < 500
    energies: list[float] = []
    solve(noisy, 0.05, max_iter=40, callback=lambda k, e: energies.append(float(e[0])))
    assert len(energies) == 4 and energies[-1] < energies[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": -0.1}, "weight must be"),
        ({"weight": float("nan")}, "weight must be"),
        ({"max_iter": 0}, "max_iter must be"),
        ({"tol": 0.0}, "tol must be"),
        ({"lr": -1.0}, "lr must be"),
        ({"tv": "l0"}, "tv must be one of"),
        ({"color": "hsv"}, "color must be one of"),
        ({"eps": float("inf")}, "eps must be a finite number"),
    ],
)
def test_bad_options(kwargs: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"weight": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        denoise(torch.rand(1, 8, 8), **options)  # type: ignore[arg-type]


def test_the_adam_solver_needs_a_huber_radius() -> None:
    # A hand-built regulariser defaults to the exact TV (eps = 0), the reference solvers'.
    exact = TotalVariation()
    with pytest.raises(ValueError, match=r"eps must be > 0 for the Adam solver, got 0\.0"):
        run_solver(torch.rand(1, 1, 8, 8), 0.1, exact, data_term("gaussian"), Iteration())


def test_max_iter_is_a_whole_number() -> None:
    with pytest.raises(TypeError, match=r"max_iter must be an integer >= 1, got 2\.5"):
        denoise(torch.rand(1, 8, 8), 0.1, max_iter=2.5)  # type: ignore[arg-type]
    restored = denoise(torch.rand(1, 8, 8), 0.1, max_iter=np.int64(3))  # type: ignore[arg-type]
    assert restored.shape == (1, 8, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    noisy = add_noise(piecewise_image(3, 37, 31), 0.1)
    on_cpu = denoise(noisy, 0.2)
    on_gpu = denoise(noisy.cuda(), 0.2)
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-4)


@pytest.mark.parametrize("reg", ["tv", "tgv"])
def test_a_solve_without_energies_runs_every_iteration(reg: str) -> None:
    """``Iteration(energy=False)`` (the weight searches' solves): the iterations of a run
    whose stopping test never stops it, with the same images, and NaN energies."""
    noisy = add_noise(piecewise_image(3, 29, 23, seed=3), 0.1, seed=4)[None]
    tv = TotalVariation("isotropic", "joint", DEFAULT_EPS, 2, None)
    regulariser = (
        tv if reg == "tv" else TotalGeneralisedVariation(2.0, "joint", DEFAULT_EPS, 2, None)
    )
    never = Iteration(25, 1e-30, check_every=25)
    quiet = Iteration(25, energy=False)
    checked = run_solver(noisy, 0.1, regulariser, data_term("gaussian"), never)
    unchecked = run_solver(noisy, 0.1, regulariser, data_term("gaussian"), quiet)
    assert torch.equal(unchecked.restored, checked.restored)
    assert unchecked.iterations.tolist() == [25]
    assert bool(torch.isnan(unchecked.energy).all())
