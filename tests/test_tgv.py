"""Second-order total generalised variation: operators, gradients, solvers, options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tvdenoise import denoise, restore
from tvdenoise.colour import from_opponent, to_opponent
from tvdenoise.fidelity import data_term
from tvdenoise.solver import Iteration, run_solver
from tvdenoise.tgv import TotalGeneralisedVariation, reference_tgv

from helpers import ATOL, add_noise, psnr, run_cli, write_image

EPS = 3e-3


def smooth_image(channels: int, *spatial: int, seed: int = 0) -> torch.Tensor:
    """A ``(C, *spatial)`` image in about [0.2, 0.8]: smooth shading plus one round edge."""
    gen = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*(torch.linspace(0, 1, n) for n in spatial), indexing="ij")
    slopes = torch.rand(channels, len(spatial), generator=gen) * 0.4 - 0.2
    shading = 0.5 + sum(slopes[:, a, None] * grids[a].reshape(1, -1) for a in range(len(spatial)))
    shading = shading.reshape(channels, *spatial) + 0.1 * torch.sin(3 * grids[-1] + 2 * grids[0])
    ball = (sum((g - 0.5) ** 2 for g in grids) < 0.06).float()
    return (shading + 0.15 * ball).clamp(0, 1)


def random_fields(shape: tuple[int, ...], count: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(count)]


@pytest.mark.parametrize(
    ("dims", "spacing"), [(2, None), (2, (1.5, 0.7)), (3, None), (3, (2.5, 1.0, 0.5))]
)
def test_symmetrised_gradient_adjoint_identity(
    dims: int, spacing: tuple[float, ...] | None
) -> None:
    reg = TotalGeneralisedVariation(spatial_dims=dims, spacing=spacing)
    shape = (2, 2, 5, 7) if dims == 2 else (1, 2, 5, 4, 6)
    w = random_fields(shape, dims, 1)
    q = random_fields(shape, len(reg.pairs), 2)
    sym = reg.symmetrised_gradient(w)
    lhs = sum(float(m * (e * p).sum()) for m, e, p in zip(reg.pair_weights(), sym, q, strict=True))
    rhs = -sum(float((a * b).sum()) for a, b in zip(w, reg.symmetrised_divergence(q), strict=True))
    assert abs(lhs - rhs) <= ATOL[torch.float64] * max(1.0, abs(lhs))


def test_symmetrised_gradient_of_a_linear_field() -> None:
    # w = (y, x) (a rotation-free field) has E w = [[1, 1], [1, 1]] away from the border.
    y, x = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
    reg = TotalGeneralisedVariation(spacing=(1.0, 2.0))
    eyy, eyx, exx = reg.symmetrised_gradient([y[None, None], x[None, None]])
    assert eyy[..., :-1, :].unique().tolist() == [1.0]
    assert exx[..., :, :-1].unique().tolist() == [0.5]  # d_x x = 1 / spacing
    assert eyx[..., :-1, :-1].unique().tolist() == [0.0]  # d_x y = d_y x = 0


@pytest.mark.parametrize("color", ["joint", "separate"])
@pytest.mark.parametrize("dims", [2, 3])
def test_gradcheck_and_hand_gradient(color: str, dims: int) -> None:
    shape = (1, 2, 4, 5) if dims == 2 else (1, 2, 3, 4, 3)
    spacing = (1.3, 0.8) if dims == 2 else (2.0, 1.0, 0.7)
    reg = TotalGeneralisedVariation(1.7, color, 0.05, dims, spacing)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(3)
    u = torch.rand(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    w = [0.3 * f for f in random_fields(shape, dims, 4)]
    w = [f.requires_grad_() for f in w]

    def value(u: torch.Tensor, *w: torch.Tensor) -> torch.Tensor:
        return reg.value(u, list(w))

    assert torch.autograd.gradcheck(value, (u, *w))
    auto = torch.autograd.grad(value(u, *w).sum(), (u, *w))
    hand_u, hand_w = reg.gradient(u.detach(), [f.detach() for f in w])
    for hand, expected in zip((hand_u, *hand_w), auto, strict=True):
        torch.testing.assert_close(hand, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("dims", "color"), [(2, "joint"), (2, "separate"), (3, "joint")])
def test_workspace_energy_and_gradient_are_the_energys(dims: int, color: str) -> None:
    shape = (2, 3, 6, 5) if dims == 2 else (1, 2, 4, 5, 3)
    reg = TotalGeneralisedVariation(2.5, color, 0.02, dims, None)  # type: ignore[arg-type]
    f = random_fields(shape, 1, 5)[0].sigmoid()
    u = random_fields(shape, 1, 6)[0].sigmoid()
    w = [0.2 * c for c in random_fields(shape, dims, 7)]
    weight = torch.tensor([0.3, 0.1][: shape[0]], dtype=torch.float64)
    half = (weight / 2).reshape(-1, *([1] * (len(shape) - 1)))
    ws = reg.workspace(f, half, data_term("gaussian"))
    x = ws.variables(u)
    for component, value in zip(ws.field(x), w, strict=True):
        component.copy_(value / ws.field_scale)
    n = f[0].numel()
    leaf = x.clone().requires_grad_()
    parts = ws.image(leaf), [c * ws.field_scale for c in ws.field(leaf)]
    expected = (parts[0] - f).square().flatten(1).mean(1) + weight * reg.value(*parts) / n
    assert torch.allclose(ws.energy(x), expected.detach(), rtol=1e-12)
    (grad,) = torch.autograd.grad(expected.sum(), leaf)
    torch.testing.assert_close(ws.gradient(x) * 2 / n, grad, rtol=0, atol=1e-14)
    # Again: the energy must not disturb the buffers the gradient relies on.
    assert torch.allclose(ws.energy(x), expected.detach(), rtol=1e-12)
    torch.testing.assert_close(ws.gradient(x) * 2 / n, grad, rtol=0, atol=1e-14)


def test_an_affine_image_costs_only_at_the_border() -> None:
    reg = TotalGeneralisedVariation(spacing=(1.0, 2.0))
    y, x = torch.meshgrid(torch.arange(7.0), torch.arange(9.0), indexing="ij")
    u = (0.3 * y + 0.2 * x)[None, None]
    # w = the slope: grad u - w is zero except on the last row/column, E w is zero.
    w = [torch.full_like(u, 0.3), torch.full_like(u, 0.1)]
    # Last row: (-0.3, 0) on 8 columns and (-0.3, -0.1) in the corner; last column (0, -0.1).
    border = 8 * 0.3 + math.hypot(0.3, 0.1) + 6 * 0.1
    assert float(reg.value(u, w)[0]) == pytest.approx(border, rel=1e-6)
    tv = TotalGeneralisedVariation(spacing=(1.0, 2.0)).first_order.value(u)
    assert float(tv[0]) > 5 * float(reg.value(u, w)[0])  # TV pays the slope everywhere


def test_reference_certificate_bounds_the_distance() -> None:
    noisy = add_noise(smooth_image(1, 15, 13), 0.1).double()
    loose, loose_bound = reference_tgv(noisy, 0.2, eps=EPS, rms_tol=1e-2)
    tight, tight_bound = reference_tgv(noisy, 0.2, eps=EPS, rms_tol=1e-5)
    assert float(tight_bound[0]) <= 1e-5 < float(loose_bound[0]) <= 1e-2
    distance = float((loose - tight).square().mean().sqrt())
    assert distance <= float(loose_bound[0]) + float(tight_bound[0])


def test_zero_weight_returns_the_data() -> None:
    noisy = add_noise(smooth_image(2, 11, 9), 0.1)
    assert torch.equal(denoise(noisy, 0.0, reg="tgv"), noisy)
    exact, bound = reference_tgv(noisy.double(), 0.0, eps=EPS)
    assert torch.allclose(exact, noisy.double()) and float(bound[0]) == 0.0


@pytest.mark.parametrize("channels", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_adam_reaches_the_certified_minimiser_at_the_automatic_weight(channels: int) -> None:
    noisy = add_noise(smooth_image(channels, 37, 31), 0.08)
    result = restore(noisy, reg="tgv", color="joint")
    weight = float(result.weights[0])
    assert weight > 0
    exact, bound = reference_tgv(noisy.double(), weight, eps=EPS, rms_tol=2e-4)
    assert float(bound[0]) <= 2e-4
    rms = float((result.restored[0].double() - exact.clamp(0, 1)).square().mean().sqrt())
    assert rms <= 2e-3


@pytest.mark.slow
def test_adam_reaches_the_certified_minimiser_in_three_dimensions() -> None:
    noisy = add_noise(smooth_image(1, 9, 15, 13), 0.08)
    spacing = (1.5, 1.0, 1.0)
    result = restore(noisy, reg="tgv", spatial_dims=3, spacing=spacing)
    weight = float(result.weights[0])
    exact, bound = reference_tgv(
        noisy.double(), weight, eps=EPS, rms_tol=2e-4, spatial_dims=3, spacing=spacing
    )
    assert float(bound[0]) <= 2e-4
    rms = float((result.restored[0].double() - exact.clamp(0, 1)).square().mean().sqrt())
    assert rms <= 2e-3


def test_three_dimensional_runs_match_the_reference_at_a_given_weight() -> None:
    noisy = add_noise(smooth_image(2, 7, 11, 9), 0.08)
    spacing = (2.0, 1.0, 1.0)
    result = run_solver(
        noisy[None],
        0.15,
        TotalGeneralisedVariation(eps=EPS, spatial_dims=3, spacing=spacing),
        data_term("gaussian"),
        Iteration(),
    )
    exact, bound = reference_tgv(
        noisy.double(), 0.15, eps=EPS, rms_tol=5e-4, spatial_dims=3, spacing=spacing
    )
    assert float(bound[0]) <= 5e-4
    rms = float((result.restored[0].double() - exact.clamp(0, 1)).square().mean().sqrt())
    assert rms <= 2e-3
    assert result.field is not None and result.field.shape == (1, 6, 7, 11, 9)


def test_a_smooth_ramp_has_no_staircase_and_tgv_beats_tv() -> None:
    x = torch.linspace(0, 1, 41).expand(1, 23, 41)
    clean = 0.2 + 0.6 * x
    noisy = add_noise(clean, 0.05)
    results = {reg: restore(noisy, reg=reg).restored[0] for reg in ("tv", "tgv")}
    flat = {}
    for reg, restored in results.items():
        steps = restored[0, :, 1:] - restored[0, :, :-1]  # the true slope is 0.015
        flat[reg] = float((steps.abs() < 1e-3).float().mean())
    assert flat["tgv"] < flat["tv"] / 2
    assert psnr(results["tgv"], clean) > psnr(results["tv"], clean) + 1.0


def test_colour_images_are_restored_in_the_opponent_space() -> None:
    """As for TV: RGB with Gaussian noise by default splits into a brightness and a colour
    problem, each the TGV solve of its own opponent channels at its own weight."""
    noisy = add_noise(smooth_image(3, 29, 23), 0.08).double()
    result = restore(noisy, 0.1, chroma_weight=0.3, reg="tgv")
    assert result.chroma_weights is not None
    reg, term = TotalGeneralisedVariation(eps=EPS), data_term("gaussian")
    opponent = to_opponent(noisy[None])
    alone = [
        run_solver(opponent[:, part].contiguous(), w, reg, term, Iteration(), clip=False).restored
        for part, w in ((slice(0, 1), 0.1), (slice(1, 3), 0.3))
    ]
    expected = from_opponent(torch.cat(alone, dim=1)).clamp(0, 1)
    assert torch.allclose(result.restored, expected, atol=1e-9)
    joint = restore(noisy, 0.1, reg="tgv", color="joint")
    assert float((joint.restored - result.restored).abs().max()) > 1e-3


def test_tiled_solve_matches_and_reports_the_energy() -> None:
    noisy = add_noise(smooth_image(2, 31, 27), 0.08)
    whole = restore(noisy, 0.1, reg="tgv", tile=0)
    tiled = restore(noisy, 0.1, reg="tgv", tile=16)
    assert float((whole.restored - tiled.restored).abs().max()) < 1e-3
    assert torch.allclose(whole.energy, tiled.energy, rtol=1e-3)


def test_batched_volume_keeps_shape_and_dtype() -> None:
    volume = add_noise(smooth_image(1, 5, 9, 11), 0.1).double()
    batch = torch.stack([volume, volume.flip(-1)])
    restored = denoise(batch, 0.1, reg="tgv", spatial_dims=3)
    assert restored.shape == batch.shape and restored.dtype == torch.float64
    one = denoise(batch[1], 0.1, reg="tgv", spatial_dims=3)
    torch.testing.assert_close(restored[1], one, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reg": "tgv2"}, "reg must be one of tv, tgv; got 'tgv2'"),
        ({"reg": "tgv", "tv": "anisotropic"}, "reg='tgv' is isotropic"),
        ({"reg": "tgv", "noise": "impulse"}, "reg='tgv' supports noise='gaussian' only"),
        ({"reg": "tgv", "noise": "poisson"}, "reg='tgv' supports noise='gaussian' only"),
        ({"reg": "tgv", "eps": 0.0}, "eps must be > 0"),
        ({"reg": "tgv", "color": "rgb"}, "color must be one of"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        denoise(torch.rand(1, 9, 9), 0.1, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("ratio", [0.0, -1.0, math.nan, math.inf])
def test_bad_ratio_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio must be a finite number > 0"):
        TotalGeneralisedVariation(ratio)


def test_wrong_field_counts_are_refused() -> None:
    reg = TotalGeneralisedVariation(spatial_dims=3)
    u = torch.zeros(1, 1, 3, 3, 3)
    with pytest.raises(ValueError, match="w needs 3 fields for spatial_dims=3, got 2"):
        reg.value(u, [u, u])
    with pytest.raises(ValueError, match="q needs 6 fields"):
        reg.symmetrised_divergence([u])


def test_cli_reg_tgv(tmp_path: Path) -> None:
    source = write_image(tmp_path / "in.png", mode="L", size=(23, 19))
    result = run_cli(source, "-o", tmp_path / "out.png", "--reg", "tgv", "--weight", "0.1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.png").exists()
    refused = run_cli(source, "-o", tmp_path / "x.png", "--reg", "tgv", "--noise", "impulse")
    assert refused.exit_code != 0
    assert "error: --reg tgv supports --noise gaussian" in refused.stderr
    assert not (tmp_path / "x.png").exists()


def test_missing_values_are_filled_from_their_surroundings() -> None:
    y, x = torch.meshgrid(torch.linspace(0, 1, 21), torch.linspace(0, 1, 19), indexing="ij")
    clean = (0.2 + 0.4 * x + 0.3 * y)[None]
    noisy = add_noise(clean, 0.05)
    mask = torch.zeros_like(noisy, dtype=torch.bool)
    mask[:, 8:13, 7:12] = True
    errors = {}
    for reg in ("tv", "tgv"):
        restored = denoise(noisy, 0.1, reg=reg, mask=mask)  # type: ignore[arg-type]
        assert bool(torch.isfinite(restored).all())
        errors[reg] = float((restored - clean)[mask].abs().mean())
    # TGV continues the slope into the hole, where TV leaves a flat patch.
    assert errors["tgv"] < 0.01 < errors["tv"]
