"""The compiled CPU iteration (tvdenoise/_kernel.c) against PyTorch's operations.

The solver's other tests run through the kernel wherever it applies (TV and TGV of images
and volumes, float32 and float64, on the CPU), those against the certified solvers
included; these check that it takes the same steps as the PyTorch path it replaces, on
odd sizes, batches cut between threads, and every variant it covers, and that it stays
out of the cases it does not cover.
"""

from __future__ import annotations

import math
import os
import platform
from typing import Any

import pytest
import torch

from tvdenoise import colour, kernel, solver
from tvdenoise.fidelity import DataTerm, data_term
from tvdenoise.solver import DEFAULT_EPS
from tvdenoise.tgv import TotalGeneralisedVariation
from tvdenoise.tv import TotalVariation

from helpers import add_noise, piecewise_image, without_kernel

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="the kernel is not built")

VARIANTS: list[dict[str, Any]] = [
    {},
    {"color": "separate"},
    {"tv": "anisotropic"},
    {"spacing": (1.0, 2.5)},
    {"noise": "impulse"},
    {"tv": "anisotropic", "color": "separate", "spacing": (0.5, 1.0)},
    {"missing": 0.2},
    {"missing": 0.2, "noise": "impulse"},
    {"noise": "poisson"},
    {"missing": 0.2, "noise": "poisson", "tv": "anisotropic"},
]
# Second-order TGV (images only, Gaussian noise).
TGV_VARIANTS: list[dict[str, Any]] = [
    {"reg": "tgv"},
    {"reg": "tgv", "color": "separate"},
    {"reg": "tgv", "spacing": (1.0, 2.5)},
    {"reg": "tgv", "missing": 0.2, "color": "separate", "spacing": (0.5, 1.0)},
]
# Odd sizes, a single row, a single column, images whose rows are cut between threads,
# four channels (one, two and three are unrolled in the kernel, more take its general loop),
# and more images than parts (each a part whole, all its steps made by one thread).
SHAPES = [
    (1, 3, 37, 31),
    (2, 1, 1, 9),
    (1, 2, 40, 1),
    (3, 3, 29, 41),
    (2, 1, 90, 17),
    (1, 4, 23, 19),
    (13, 2, 9, 7),
]
# Volumes: odd sizes, a single plane, a single row per plane, a single column, and volumes
# whose planes are cut between threads (every plane a part of its own in the tests).
VOLUME_SHAPES = [
    (1, 1, 5, 7, 9),
    (2, 3, 9, 6, 5),
    (1, 2, 1, 8, 7),
    (1, 2, 13, 1, 4),
    (2, 1, 17, 3, 1),
]


def _every_row_a_part(monkeypatch: pytest.MonkeyPatch, threads: int = 3) -> None:
    """Cut the batch into one part per row (plane of a volume), shared by ``threads``
    threads: every cut between parts is exercised, even on small images."""
    monkeypatch.setattr(kernel, "MIN_VALUES_PER_THREAD", 1)
    monkeypatch.setattr(kernel, "MIN_PLANES_PER_CHUNK", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)


def _data(
    shape: tuple[int, ...], dtype: torch.dtype = torch.float32, *, equal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random data of ``shape`` and a weight per image (with ``equal``, one weight
    for all: narrow images then go side by side for the steps)."""
    generator = torch.Generator().manual_seed(sum(shape))
    f = torch.rand(shape, generator=generator, dtype=dtype)
    if equal:
        return f, torch.full((shape[0],), 0.1, dtype=dtype)
    return f, torch.linspace(0.05, 0.2, shape[0], dtype=dtype)


def _for_shape(options: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    """``options`` for images or volumes of ``shape``: a volume's spacing gets its first
    axis too."""
    if len(shape) == 4 or "spacing" not in options:
        return options
    return {**options, "spacing": (0.7, *options["spacing"])}


@pytest.mark.skipif(
    os.environ.get("CI") != "true" or platform.machine() != "x86_64",
    reason="CI on x86-64 Linux builds the kernel; elsewhere it is optional",
)
def test_ci_builds_the_kernel() -> None:
    assert kernel.available()


def _model(
    options: dict[str, Any], dims: int
) -> tuple[TotalVariation | TotalGeneralisedVariation, DataTerm]:
    """The regulariser and data term of ``options`` (``"reg": "tgv"`` for TGV)."""
    if options.get("reg") == "tgv":
        color, spacing = options.get("color", "joint"), options.get("spacing")
        tgv = TotalGeneralisedVariation(
            color=color, eps=DEFAULT_EPS, spatial_dims=dims, spacing=spacing
        )
        return tgv, data_term("gaussian")
    return solver.model(
        options.get("tv", "isotropic"),
        options.get("color", "joint"),
        DEFAULT_EPS,
        dims,
        options.get("spacing"),
        options.get("noise", "gaussian"),
        None,
    )


def _steps(
    f: torch.Tensor,
    weights: torch.Tensor,
    options: dict[str, Any],
    count: int,
    fused: bool,
    together: bool = False,
) -> tuple[tuple[torch.Tensor, ...], Any, torch.Tensor]:
    """``count`` Adam steps from ``f`` by the kernel (with ``together``, in one call of
    :meth:`~tvdenoise.kernel.FusedSteps.steps`) or by PyTorch's operations: the solver
    variable and Adam's moments, the workspace, and the variable again."""
    dims = f.dim() - 2
    reg, term = _model(options, dims)
    half = (weights / 2).reshape(-1, *[1] * (f.dim() - 1))
    observed = None
    if "missing" in options:  # a fraction of the values missing
        generator = torch.Generator().manual_seed(5)
        observed = (torch.rand(f.shape, generator=generator) >= options["missing"]).to(f.dtype)
    ws = solver._workspace(f, half, reg, term, observed)
    u = f.clone()
    if isinstance(reg, TotalGeneralisedVariation):
        # A random field: from zero, many of its gradients are zero up to rounding, which
        # Adam's first steps turn into whole steps of either sign.
        generator = torch.Generator().manual_seed(7)
        field = 0.1 * torch.randn((len(f), dims * f.shape[1], *f.shape[2:]), generator=generator)
        u = ws.variables(torch.cat([f, field.to(f)], 1))
    m, v = torch.zeros_like(u), torch.zeros_like(u)
    rates = weights * term.schedule.lr_per_weight
    active = torch.ones(f.shape[0], dtype=torch.bool)
    steps = kernel.FusedSteps.plan(ws, u, m, v, rates, active, 0.8, term.schedule.beta2, 1e-8)
    runs = solver._runs(rates, active)
    if fused and together:
        assert steps is not None
        steps.steps(1, count, 0.97)
        return (u, m, v), ws, u
    for k in range(1, count + 1):
        if fused:
            assert steps is not None
            steps.step(k, 0.97 ** (k - 1))
        else:
            grad = ws.gradient(u)
            solver._fused_step(u, grad, m, v, k, runs, 0.97 ** (k - 1), term.schedule.beta2)
            if term.floor is not None:
                u.clamp_min_(term.floor)
    return (u, m, v), ws, u


@needs_kernel
@pytest.mark.parametrize("shape", [*SHAPES, *VOLUME_SHAPES])
@pytest.mark.parametrize("options", VARIANTS)
@pytest.mark.parametrize("threads", [1, 3])
def test_steps_match_pytorch(
    shape: tuple[int, ...], options: dict[str, Any], threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _every_row_a_part(monkeypatch, threads)
    f, weights = _data(shape)
    options = _for_shape(options, shape)
    ours, _, _ = _steps(f, weights, options, 4, fused=True)
    theirs, _, _ = _steps(f, weights, options, 4, fused=False)
    # Adam divides by the root of the squared gradients: where a gradient is near 0, one
    # rounding step apart becomes a few parts in a million of the step.
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("shape", [*SHAPES, *VOLUME_SHAPES[:2]])
@pytest.mark.parametrize(
    "options", [VARIANTS[0], VARIANTS[2], VARIANTS[7], VARIANTS[8], *TGV_VARIANTS[::3]]
)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("equal", [False, True])
def test_steps_in_one_call_are_the_steps_one_by_one(
    shape: tuple[int, ...],
    options: dict[str, Any],
    threads: int,
    dtype: torch.dtype,
    equal: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The steps between two energy checks in one call (the threads meeting between steps,
    each step's coefficients computed in C; with one weight for all, narrow images side
    by side) give the bits of one call per step (each image apart)."""
    _every_row_a_part(monkeypatch, threads)
    f, weights = _data(shape, dtype, equal=equal)
    options = _for_shape(options, shape)
    together, _, _ = _steps(f, weights, options, 5, fused=True, together=True)
    one_by_one, _, _ = _steps(f, weights, options, 5, fused=True)
    for a, b in zip(together, one_by_one, strict=True):
        assert torch.equal(a, b)


@needs_kernel
@pytest.mark.parametrize(("shape", "whole"), [(SHAPES[3], False), (SHAPES[6], True)])
def test_images_as_many_as_parts_are_parts_whole(
    shape: tuple[int, ...], whole: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of at least as many images as parts is cut only between images, so that a
    thread makes all the steps of an image at once; fewer images are cut into rows."""
    _every_row_a_part(monkeypatch)
    f, weights = _data(shape)
    _, ws, u = _steps(f, weights, {}, 0, fused=True)
    rates = weights * 0.2
    active = torch.ones(len(f), dtype=torch.bool)
    plan = kernel.FusedSteps.plan(ws, u, u.clone(), u.clone(), rates, active, 0.8, 0.9, 1e-8)
    assert plan is not None
    assert (plan._apart[1][0] == 0) == whole


@needs_kernel
@pytest.mark.parametrize(
    ("shape", "equal", "groups"),
    [
        (SHAPES[6], True, 1),  # 13 images of 7 columns: one group of 13
        ((12, 1, 5, 64), True, 2),  # at most 8 to a row of 512: two groups of 6
        ((4, 2, 6, 300), True, 0),  # wider than half a row: apart
        (SHAPES[6], False, 0),  # a weight each: apart
    ],
)
@pytest.mark.parametrize("options", [{}, {"reg": "tgv"}])
def test_narrow_images_of_one_weight_go_side_by_side(
    shape: tuple[int, ...],
    equal: bool,
    groups: int,
    options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Consecutive images of one weight, narrower than half SIDE_BY_SIDE_COLUMNS, are laid
    side by side in groups of a size that divides every run of one weight."""
    _every_row_a_part(monkeypatch)
    f, weights = _data(shape, equal=equal)
    _, ws, u = _steps(f, weights, options, 0, fused=True)
    rates = weights * 0.2
    active = torch.ones(len(f), dtype=torch.bool)
    plan = kernel.FusedSteps.plan(ws, u, u.clone(), u.clone(), rates, active, 0.8, 0.9, 1e-8)
    assert plan is not None
    assert (0 if plan._side is None else plan._side.groups) == groups


@needs_kernel
@pytest.mark.parametrize("shape", [(6, 2, 21, 33), (5, 1, 9, 1), (4, 1, 7, 2)])
@pytest.mark.parametrize("options", [*VARIANTS, *TGV_VARIANTS])
def test_a_batch_of_one_weight_is_solved_as_each_image_alone(
    shape: tuple[int, ...], options: dict[str, Any]
) -> None:
    """Narrow images of one weight (single columns too), solved side by side, give the bits
    of each alone; the kernel's own energy checks stop them at the same iterations."""
    f, _ = _data(shape)
    reg, term = _model(options, 2)
    if "missing" in options:
        generator = torch.Generator().manual_seed(5)
        f = f.masked_fill(torch.rand(f.shape, generator=generator) < options["missing"], math.nan)
    iteration = solver.Iteration(30, 1e-3, check_every=7)
    batch = solver.run_solver(f, 0.1, reg, term, iteration)
    for i in range(len(f)):
        alone = solver.run_solver(f[i : i + 1], 0.1, reg, term, iteration)
        assert torch.equal(batch.restored[i], alone.restored[0])
        assert torch.equal(batch.iterations[i], alone.iterations[0])


@needs_kernel
@pytest.mark.parametrize("shape", [SHAPES[3], SHAPES[6]])
@pytest.mark.parametrize("options", [{}, {"reg": "tgv"}])
def test_steps_without_the_runtimes_barrier_are_taken_one_by_one(
    shape: tuple[int, ...], options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OpenMP runtime without ``GOMP_barrier``: the steps of images cut into rows are
    made one call each, those of whole images in one call as before; the same bits."""
    _every_row_a_part(monkeypatch)
    f, weights = _data(shape)
    one_by_one, _, _ = _steps(f, weights, options, 5, fused=True)
    monkeypatch.setattr(kernel, "_openmp_barrier", lambda: None)
    together, _, _ = _steps(f, weights, options, 5, fused=True, together=True)
    for a, b in zip(together, one_by_one, strict=True):
        assert torch.equal(a, b)


@needs_kernel
@pytest.mark.parametrize("shape", [*SHAPES, *VOLUME_SHAPES])
@pytest.mark.parametrize("options", TGV_VARIANTS)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tgv_steps_match_pytorch(
    shape: tuple[int, ...],
    options: dict[str, Any],
    threads: int,
    dtype: torch.dtype,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TGV's steps (the image and its field, three times the channels) by the kernel, on
    images cut between threads, against TGVWorkspace.gradient and PyTorch's Adam; the
    steps in one call against one call per step; and the energies."""
    _every_row_a_part(monkeypatch, threads)
    f, weights = _data(shape, dtype)
    options = _for_shape(options, shape)
    ours, ws, x = _steps(f, weights, options, 4, fused=True)
    theirs, _, _ = _steps(f, weights, options, 4, fused=False)
    together, _, _ = _steps(f, weights, options, 4, fused=True, together=True)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b, c in zip(ours, theirs, together, strict=True):
        assert a.shape[1] == (len(shape) - 1) * shape[1]
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
        assert torch.equal(a, c)
    active = torch.ones(shape[0], dtype=torch.bool)
    plan = kernel.FusedSteps.plan(ws, x, None, None, weights, active, 0.8, 0.9, 1e-8)
    assert plan is not None
    energy = plan.energy(torch.zeros(shape[0], dtype=dtype))
    torch.testing.assert_close(energy, ws.energy(x), rtol=tolerance, atol=0)


@needs_kernel
@pytest.mark.parametrize("shape", [*SHAPES[:3], *VOLUME_SHAPES[:3]])
@pytest.mark.parametrize("options", VARIANTS)
def test_float64_steps_and_energy_match_pytorch(
    shape: tuple[int, ...], options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's float64 build, on images and volumes cut between threads."""
    _every_row_a_part(monkeypatch)
    f, weights = _data(shape, torch.float64)
    options = _for_shape(options, shape)
    ours, ws, u = _steps(f, weights, options, 4, fused=True)
    theirs, _, _ = _steps(f, weights, options, 4, fused=False)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    active = torch.ones(shape[0], dtype=torch.bool)
    plan = kernel.FusedSteps.plan(ws, u, *ours[1:], weights, active, 0.8, 0.9, 1e-8)
    assert plan is not None
    energy = plan.energy(torch.zeros(shape[0], dtype=torch.float64))
    torch.testing.assert_close(energy, ws.energy(u), rtol=1e-13, atol=1e-15)


@needs_kernel
@pytest.mark.parametrize("shape", [*SHAPES, *VOLUME_SHAPES])
@pytest.mark.parametrize("options", VARIANTS)
def test_energy_matches_pytorch(
    shape: tuple[int, ...], options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _every_row_a_part(monkeypatch)
    f, weights = _data(shape)
    options = _for_shape(options, shape)
    _, ws, u = _steps(f, weights, options, 3, fused=True)
    # The last image stopped: it keeps the energy it had.
    previous = torch.full((shape[0],), -1.0)
    active = torch.ones(shape[0], dtype=torch.bool)
    active[-1] = shape[0] == 1
    plan = kernel.FusedSteps.plan(
        ws, u, torch.zeros_like(u), torch.zeros_like(u), weights, active, 0.8, 0.9, 1e-8
    )
    assert plan is not None
    expected = torch.where(active, ws.energy(u), previous)
    torch.testing.assert_close(plan.energy(previous), expected, rtol=2e-6, atol=1e-9)


@pytest.mark.skipif(
    os.environ.get("CI") != "true" or platform.system() != "Linux",
    reason="PyTorch's Linux builds load GNU OpenMP; elsewhere the kernel may use its own threads",
)
def test_kernel_finds_pytorchs_openmp_threads() -> None:
    assert kernel._openmp_parallel() is not None


@needs_kernel
@pytest.mark.parametrize(
    ("shape", "dtype", "options"),
    [
        ((2, 3, 45, 23), torch.float32, {}),
        ((2, 3, 45, 23), torch.float32, {"missing": 0.2, "noise": "impulse"}),
        ((2, 2, 9, 12, 7), torch.float64, {"noise": "poisson"}),
        ((2, 3, 45, 23), torch.float32, {"reg": "tgv"}),
        ((2, 2, 9, 12, 7), torch.float64, {"reg": "tgv", "color": "separate"}),
    ],
)
def test_openmp_and_own_threads_agree(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each part of the rows (planes) gives the same values whichever thread takes it: the
    steps and the energy on the OpenMP runtime's threads and on the kernel's own are equal."""
    _every_row_a_part(monkeypatch)
    f = torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    weights = torch.tensor([0.05, 0.15], dtype=dtype)
    results = []
    for parallel in (kernel._openmp_parallel(), None):
        monkeypatch.setattr(kernel, "_openmp_parallel", lambda parallel=parallel: parallel)
        state, ws, u = _steps(f, weights, options, 4, fused=True)
        active = torch.ones(2, dtype=torch.bool)
        plan = kernel.FusedSteps.plan(ws, u, *state[1:], weights, active, 0.8, 0.9, 1e-8)
        assert plan is not None
        results.append((*state, plan.energy(torch.zeros(2, dtype=torch.float64))))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@needs_kernel
@pytest.mark.parametrize("options", [*VARIANTS[:4], {"missing": 0.1}, {"noise": "poisson"}])
def test_solve_matches_pytorch(options: dict[str, Any]) -> None:
    """Whole solves of a batch whose images stop at different iterations (weight 0 stops
    at once) reach the same images."""
    clean = torch.stack([piecewise_image(3, 45, 38, seed=s) for s in range(3)])
    noisy = add_noise(clean, 0.1, seed=4).clamp_min(0.0)
    options = dict(options)
    if "missing" in options:
        generator = torch.Generator().manual_seed(6)
        noisy[torch.rand(noisy.shape, generator=generator) < options.pop("missing")] = torch.nan
    weights = torch.tensor([0.15, 0.0, 0.3])
    ours = solver.solve(noisy, weights, **options)
    with without_kernel():
        theirs = solver.solve(noisy, weights, **options)
    assert torch.equal(ours.iterations, theirs.iterations)
    torch.testing.assert_close(ours.restored, theirs.restored, rtol=0, atol=2e-4)
    torch.testing.assert_close(ours.energy, theirs.energy, rtol=1e-5, atol=0)


@needs_kernel
@pytest.mark.parametrize(
    "options",
    [{}, {"color": "separate", "spacing": (1.0, 2.0)}, {"spatial_dims": 3}],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tgv_solve_matches_pytorch(options: dict[str, Any], dtype: torch.dtype) -> None:
    """Whole TGV solves from a zero field, the images (volumes) stopping at different
    iterations, reach the same images and fields."""
    if options.get("spatial_dims") == 3:  # three stacks of 7 planes of 3 channels
        planes = [piecewise_image(3, 24, 21, seed=s) for s in range(7)]
        clean = torch.stack(planes, dim=1).expand(3, -1, -1, -1, -1).contiguous()
    else:
        clean = torch.stack([piecewise_image(3, 45, 38, seed=s) for s in range(3)])
    noisy = add_noise(clean, 0.1, seed=4).to(dtype)
    weights = torch.tensor([0.15, 0.0, 0.3], dtype=dtype)
    reg = TotalGeneralisedVariation(eps=DEFAULT_EPS, **options)
    iteration = solver.Iteration(solver.DEFAULT_MAX_ITER)
    ours = solver.run_solver(noisy, weights, reg, data_term("gaussian"), iteration)
    with without_kernel():
        theirs = solver.run_solver(noisy, weights, reg, data_term("gaussian"), iteration)
    assert torch.equal(ours.iterations, theirs.iterations)
    tolerance = 2e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(ours.restored, theirs.restored, rtol=0, atol=tolerance)
    assert ours.field is not None and theirs.field is not None
    torch.testing.assert_close(ours.field, theirs.field, rtol=0, atol=tolerance)
    torch.testing.assert_close(ours.energy, theirs.energy, rtol=1e-5, atol=0)


@needs_kernel
@pytest.mark.parametrize(
    "options", [{}, {"spacing": (2.0, 1.0, 1.0)}, {"tv": "anisotropic"}, {"noise": "poisson"}]
)
def test_volume_solve_matches_pytorch(options: dict[str, Any]) -> None:
    """Whole solves of a batch of stacks (two of them cut into parts) reach the same volumes."""
    clean = torch.stack([piecewise_image(2, 24, 21, seed=s) for s in range(3)], dim=1)
    noisy = add_noise(clean.expand(2, -1, -1, -1, -1).contiguous(), 0.1, seed=4).clamp_min(0.0)
    weights = torch.tensor([0.15, 0.3])
    ours = solver.solve(noisy, weights, spatial_dims=3, **options)
    with without_kernel():
        theirs = solver.solve(noisy, weights, spatial_dims=3, **options)
    assert torch.equal(ours.iterations, theirs.iterations)
    torch.testing.assert_close(ours.restored, theirs.restored, rtol=0, atol=2e-4)
    torch.testing.assert_close(ours.energy, theirs.energy, rtol=1e-5, atol=0)


def _plan(f: torch.Tensor, reg: TotalVariation, noise: str = "gaussian") -> object:
    term = data_term(noise)
    half = torch.full((f.shape[0], *[1] * (f.dim() - 1)), 0.05)
    ws = solver._Workspace(f, half, reg, term, None)
    u, m, v = f.clone(), torch.zeros_like(f), torch.zeros_like(f)
    rates = torch.full((f.shape[0],), 0.01)
    active = torch.ones(f.shape[0], dtype=torch.bool)
    return kernel.FusedSteps.plan(ws, u, m, v, rates, active, 0.8, 0.9, 1e-8)


@needs_kernel
def test_kernel_stays_out_of_what_it_does_not_cover() -> None:
    image = TotalVariation("isotropic", "joint", DEFAULT_EPS, 2, None)
    volume = TotalVariation("isotropic", "joint", DEFAULT_EPS, 3, None)
    f = torch.rand(1, 3, 8, 9)
    assert _plan(f, image) is not None
    assert _plan(torch.rand(1, 1, 4, 8, 9), volume) is not None
    assert _plan(f.double(), image) is not None
    assert _plan(f.half(), image) is None


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TVDENOISE_KERNEL", "0")
    kernel._library.cache_clear()
    try:
        assert not kernel.available()
        f = torch.rand(1, 3, 8, 9)
        assert _plan(f, TotalVariation("isotropic", "joint", DEFAULT_EPS, 2, None)) is None
    finally:
        monkeypatch.undo()
        kernel._library.cache_clear()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 3, 37, 41), (2, 3, 5, 6, 7)])
def test_colour_transform_is_pytorchs(
    dtype: torch.dtype, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's opponent colour transforms give the bits of PyTorch's operations in
    the same order, missing, infinite and negative-zero values included, with the values
    shared out between threads."""
    _every_row_a_part(monkeypatch)
    x = 3 * torch.randn(shape, generator=torch.Generator().manual_seed(6), dtype=dtype)
    flat = x.view(-1)
    flat[::97], flat[::101], flat[::103] = math.nan, math.inf, -0.0
    for matrix in (colour.opponent_matrix(dtype), colour.opponent_matrix(dtype).T):
        ours = colour._apply(matrix, x)
        with monkeypatch.context() as patch:
            patch.setattr(colour, "colour_transform", lambda matrix, x: None)
            theirs = colour._apply(matrix, x)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
