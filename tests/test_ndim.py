"""Total variation in n dimensions: volumes and time series through every solver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tvdenoise import (
    TVLoss,
    denoise,
    divergence,
    forward_differences,
    reference_denoise,
    restore,
    solve,
    total_variation,
    tv_gradient,
)
from tvdenoise.reference import reference_solve
from tvdenoise.tv import TotalVariation

from helpers import ATOL, psnr

VARIANTS = [("isotropic", "joint"), ("isotropic", "separate"), ("anisotropic", "joint")]


def piecewise_volume(
    channels: int, depth: int, height: int, width: int, *, seed: int = 0
) -> torch.Tensor:
    """A (C, D, H, W) volume in [0.2, 0.8]: a ball and a slab on a flat background."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.linspace(0, 1, depth).reshape(-1, 1, 1)
    y = torch.linspace(0, 1, height).reshape(1, -1, 1)
    x = torch.linspace(0, 1, width).reshape(1, 1, -1)
    levels = torch.rand(channels, 3, generator=gen) * 0.6 + 0.2
    ball = ((z - 0.5) ** 2 + (y - 0.5) ** 2 + (x - 0.4) ** 2 < 0.08).float()
    slab = (x > 0.75).float()
    base = levels[:, 0, None, None, None] * (1 - ball) * (1 - slab)
    inside = levels[:, 1, None, None, None] * ball * (1 - slab)
    return base + inside + levels[:, 2, None, None, None] * slab


def noisy_volume(channels: int, depth: int, height: int, width: int, sigma: float, seed: int = 1):
    clean = piecewise_volume(channels, depth, height, width, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    noisy = (clean + sigma * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    return clean, noisy


def test_unit_spacing_is_exactly_the_default() -> None:
    _, noisy = noisy_volume(1, 7, 19, 23, 0.1)
    plain = denoise(noisy, 0.15, spatial_dims=3)
    unit = denoise(noisy, 0.15, spatial_dims=3, spacing=(1, 1, 1))
    assert torch.equal(plain, unit)
    image = noisy[:, 3]
    assert torch.equal(denoise(image, 0.15), denoise(image, 0.15, spacing=(1.0, 1.0)))


@pytest.mark.parametrize("spacing", [None, (2.5, 1.0, 0.5)])
def test_adjoint_identity_in_three_dimensions(spacing: tuple[float, ...] | None) -> None:
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(2, 2, 5, 7, 6, generator=gen, dtype=torch.float64)
    p = [torch.randn(u.shape, generator=gen, dtype=torch.float64) for _ in range(3)]
    grads = forward_differences(u, spatial_dims=3, spacing=spacing)
    lhs = sum(float((g * q).sum()) for g, q in zip(grads, p, strict=True))
    rhs = -float((u * divergence(*p, spacing=spacing)).sum())
    assert abs(lhs - rhs) <= ATOL[torch.float64] * max(1.0, abs(lhs))


def test_spacing_divides_the_differences() -> None:
    u = torch.arange(24.0).reshape(1, 2, 3, 4)
    dz, dy, dx = forward_differences(u, spatial_dims=3, spacing=(4.0, 2.0, 1.0))
    assert dz[0, 0].unique().tolist() == [3.0] and float(dz[0, 1].abs().sum()) == 0.0
    assert dy[0, 0, 0].unique().tolist() == [2.0] and dx[0, 0, 0, :3].tolist() == [1.0] * 3


@pytest.mark.parametrize(("kind", "color"), VARIANTS)
def test_gradcheck_and_hand_gradient_in_three_dimensions(kind: str, color: str) -> None:
    gen = torch.Generator().manual_seed(5)
    u = torch.rand(1, 2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    options = {"kind": kind, "color": color, "eps": 0.05, "spatial_dims": 3}

    def tv(x: torch.Tensor) -> torch.Tensor:
        return total_variation(x, reduction="sum", spacing=(2.0, 1.0, 0.7), **options)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(tv, (u,))
    (auto,) = torch.autograd.grad(tv(u), u)
    hand = tv_gradient(u.detach(), spacing=(2.0, 1.0, 0.7), **options)  # type: ignore[arg-type]
    torch.testing.assert_close(hand, auto, rtol=0, atol=1e-12)


def test_constant_volume_has_zero_tv_and_a_step_costs_its_area() -> None:
    volume = torch.full((1, 5, 6, 7), 0.3)
    assert float(total_variation(volume, spatial_dims=3)) == 0.0
    volume[:, 2:] = 0.8
    # One step of 0.5 across a 6 x 7 plane, with a z-spacing of 2.
    loss = TVLoss(spatial_dims=3, spacing=(2.0, 1.0, 1.0), reduction="sum")
    assert float(loss(volume)) == pytest.approx(0.5 / 2.0 * 6 * 7)


@pytest.mark.parametrize("kind", ["isotropic", "anisotropic"])
def test_adam_reaches_the_certified_minimiser_in_three_dimensions(kind: str) -> None:
    _, noisy = noisy_volume(1, 9, 21, 17, 0.1)
    weight = 0.2
    result = solve(noisy, weight, tv=kind, spatial_dims=3, spacing=(1.5, 1.0, 1.0))  # type: ignore[arg-type]
    exact, bound = reference_denoise(
        noisy.double(),
        weight,
        kind=kind,  # type: ignore[arg-type]
        eps=3e-3,
        spatial_dims=3,
        spacing=(1.5, 1.0, 1.0),
        rms_tol=1e-5,
    )
    assert float(bound.max()) <= 1e-5
    rms = float((result.restored[0].double() - exact.clamp(0, 1)).square().mean().sqrt())
    assert rms < 2e-3


@pytest.mark.parametrize("noise", ["impulse", "poisson"])
def test_other_noise_models_reach_their_certified_minimiser_in_three_dimensions(
    noise: str,
) -> None:
    _, noisy = noisy_volume(1, 6, 15, 13, 0.05, seed=2)
    weight = 0.3
    result = solve(noisy, weight, noise=noise, spatial_dims=3, max_iter=300, tol=1e-9)  # type: ignore[arg-type]
    exact, gap = reference_solve(
        noisy.double(), weight, noise=noise, eps=3e-3, spatial_dims=3, gap_tol=1e-9
    )
    assert float(gap.max()) <= 1e-9
    rms = float((result.restored[0].double() - exact.clamp(0, 1)).square().mean().sqrt())
    assert rms < 5e-3


def test_a_volume_beats_its_slices_on_a_piecewise_constant_scene() -> None:
    # Each at its best weight of a grid: the volume couples every voxel to more
    # neighbours, so its best weight is smaller.
    clean, noisy = noisy_volume(1, 16, 32, 32, 0.15)
    grid = (0.075, 0.11, 0.15, 0.22, 0.3, 0.45)
    volume = max(psnr(denoise(noisy, w, spatial_dims=3), clean) for w in grid)
    as_images = noisy.transpose(0, 1)  # each slice an image
    slices = max(psnr(denoise(as_images, w).transpose(0, 1), clean) for w in grid)
    assert volume > slices + 1.0


def test_weak_coupling_along_an_axis_approaches_slice_by_slice() -> None:
    _, noisy = noisy_volume(1, 5, 20, 18, 0.1)
    uncoupled = denoise(noisy, 0.2, spatial_dims=3, spacing=(1e6, 1.0, 1.0))
    slices = denoise(noisy.transpose(0, 1), 0.2).transpose(0, 1)
    torch.testing.assert_close(uncoupled, slices, rtol=0, atol=1e-4)


def test_tiles_in_three_dimensions_match_the_untiled_result() -> None:
    _, noisy = noisy_volume(1, 30, 33, 31, 0.1)
    whole = restore(noisy, 0.2, spatial_dims=3, tile=0)
    tiled = restore(noisy, 0.2, spatial_dims=3, tile=16)
    assert float((whole.restored - tiled.restored).abs().max()) < 1e-3
    torch.testing.assert_close(tiled.energy, whole.energy, rtol=1e-4, atol=0)


def test_batch_of_volumes_equals_one_by_one() -> None:
    _, a = noisy_volume(2, 6, 16, 18, 0.1, seed=3)
    _, b = noisy_volume(2, 6, 16, 18, 0.05, seed=4)
    together = restore(torch.stack([a, b]), "auto", spatial_dims=3)
    alone = [restore(x, "auto", spatial_dims=3) for x in (a, b)]
    torch.testing.assert_close(together.weights, torch.cat([r.weights for r in alone]))
    for i, r in enumerate(alone):
        torch.testing.assert_close(together.restored[i], r.restored[0])


def test_automatic_weight_in_three_dimensions_estimates_the_noise_and_helps() -> None:
    clean, noisy = noisy_volume(1, 24, 48, 48, 0.08, seed=5)
    result = restore(noisy, "auto", spatial_dims=3)
    assert result.sigmas is not None
    assert float(result.sigmas[0]) == pytest.approx(0.08, rel=0.1)
    # Within a small margin of the best weight on a grid, and far above the noisy data.
    grid = [psnr(denoise(noisy, w, spatial_dims=3), clean) for w in (0.05, 0.1, 0.15, 0.2, 0.3)]
    assert psnr(result.restored[0], clean) > max(grid) - 0.3
    assert psnr(result.restored[0], clean) > psnr(noisy, clean) + 6


@pytest.mark.parametrize("noise", ["impulse", "poisson"])
def test_automatic_weight_of_other_noise_models_in_three_dimensions(noise: str) -> None:
    clean = piecewise_volume(1, 10, 32, 32, seed=6)
    gen = torch.Generator().manual_seed(7)
    if noise == "impulse":
        hit = torch.rand(clean.shape, generator=gen) < 0.1
        noisy = torch.where(hit, (torch.rand(clean.shape, generator=gen) < 0.5).float(), clean)
    else:
        noisy = (torch.poisson(clean * 30.0, generator=gen) / 30.0).clamp(0, 1)
    restored = denoise(noisy, "auto", noise=noise, spatial_dims=3)  # type: ignore[arg-type]
    assert psnr(restored, clean) > psnr(noisy, clean) + 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
        ({"spatial_dims": 3, "spacing": (1.0, 1.0)}, "one value per spatial axis"),
        ({"spatial_dims": 3, "spacing": (1.0, 0.0, 1.0)}, "spacing must be finite numbers > 0"),
        ({"spatial_dims": 2, "spacing": (1.0, float("nan"))}, "spacing must be finite"),
    ],
)
def test_bad_dimension_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        denoise(torch.rand(1, 4, 9, 9), 0.1, **kwargs)  # type: ignore[arg-type]


def test_wrong_shape_for_the_dimensions_names_them() -> None:
    with pytest.raises(
        ValueError, match=r"\(C, D, H, W\) or \(B, C, D, H, W\) with spatial_dims=3"
    ):
        denoise(torch.rand(9, 9), 0.1, spatial_dims=3)


def test_the_regulariser_object_validates_once() -> None:
    reg = TotalVariation(spatial_dims=3, spacing=(1, 1, 1))
    assert reg.spacing is None and reg.axes == (-3, -2, -1)
    with pytest.raises(ValueError, match="kind must be one of"):
        TotalVariation(kind="l0")  # type: ignore[arg-type]


def _scattered_nan(image: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    hit = torch.rand(image.shape[-2:], generator=gen) < fraction
    return image.masked_fill(hit, float("nan"))


def _noisy(clean: torch.Tensor, noise: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if noise == "impulse":
        hit = torch.rand(clean.shape, generator=gen) < 0.1
        return torch.where(hit, (torch.rand(clean.shape, generator=gen) < 0.5).float(), clean)
    if noise == "poisson":
        return (torch.poisson(clean * 30.0, generator=gen) / 30.0).clamp(0, 1)
    return (clean + 0.08 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)


def _photograph_crop(top: int, left: int, size: int = 96) -> torch.Tensor:
    path = Path(__file__).parents[1] / "sample_images" / "astronaut_clean.png"
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    crop = pixels[top : top + size, left : left + size]
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)


@pytest.mark.parametrize("name", ["astronaut", "camera", "cell"])
def test_scattered_missing_pixels_cost_little(name: str) -> None:
    # The bar: 5 % of an image's pixels missing (scattered), Gaussian noise, default
    # settings: within 0.5 dB of the same image without missing values.
    path = Path(__file__).parents[1] / "sample_images" / f"{name}_clean.png"
    with Image.open(path) as im:
        pixels = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)
    clean = pixels.permute(2, 0, 1) if pixels.dim() == 3 else pixels[None]
    noisy = _noisy(clean, "gaussian", 3)
    holes = denoise(_scattered_nan(noisy, 0.05, seed=10))
    assert not bool(torch.isnan(holes).any())
    assert psnr(holes, clean) > psnr(denoise(noisy), clean) - 0.5


@pytest.mark.parametrize("where", [(40, 150), (150, 60)])
@pytest.mark.parametrize("noise", ["impulse", "poisson"])
def test_missing_values_are_filled_for_other_noise_models(
    noise: str, where: tuple[int, int]
) -> None:
    # Textured 96x96 crops, whose data already lack 10 % (impulse) or are coarse
    # (photons): 5 % more missing costs up to 0.8 dB there. Joint colour for both: values
    # missing in some channels keep an RGB image out of the opponent space, which the
    # Anscombe estimator of photon noise uses on whole data.
    clean = _photograph_crop(*where)
    noisy = _noisy(clean, noise, where[0])
    options: dict[str, Any] = {"noise": noise, "color": "joint"}
    full = denoise(noisy, "auto", **options)
    holes = denoise(_scattered_nan(noisy, 0.05, seed=10), "auto", **options)
    assert not bool(torch.isnan(holes).any())
    assert psnr(holes, clean) > psnr(full, clean) - 0.8


def test_mask_marks_missing_values_like_nan() -> None:
    _, noisy = noisy_volume(1, 4, 24, 20, 0.1)
    mask = torch.zeros(24, 20, dtype=torch.bool)
    mask[5:9, 3:12] = True
    # A hole's data is ignored whatever it holds.
    poisoned = noisy.clone()
    poisoned[..., 5:9, 3:12] = 1.0
    by_mask = denoise(poisoned, 0.1, spatial_dims=3, mask=mask)
    by_nan = denoise(noisy.masked_fill(mask, float("nan")), 0.1, spatial_dims=3)
    torch.testing.assert_close(by_mask, by_nan, rtol=0, atol=0)
    assert float(by_mask[..., 5:9, 3:12].max()) < 0.95


def test_bad_missing_value_inputs() -> None:
    image = torch.rand(1, 12, 12)
    with pytest.raises(ValueError, match="infinite values"):
        denoise(image.index_fill(1, torch.tensor([3]), float("inf")), 0.1)
    with pytest.raises(ValueError, match="no observed value"):
        denoise(torch.full((1, 12, 12), float("nan")), 0.1)
    with pytest.raises(TypeError, match="mask must be a boolean tensor"):
        denoise(image, 0.1, mask=torch.zeros(12, 12))
    with pytest.raises(ValueError, match="mask must broadcast"):
        denoise(image, 0.1, mask=torch.zeros(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="weight must be <="):
        denoise(image, 1e30)


def test_empty_batches_and_inputs_that_require_grad() -> None:
    empty = torch.rand(0, 3, 8, 8)
    assert denoise(empty, 0.1).shape == (0, 3, 8, 8)
    assert denoise(empty).shape == (0, 3, 8, 8)
    assert denoise(torch.rand(0, 1, 4, 8, 8), spatial_dims=3).shape == (0, 1, 4, 8, 8)
    image = torch.rand(3, 16, 16, requires_grad=True)
    restored = denoise(image, 0.1)
    assert not restored.requires_grad
    torch.testing.assert_close(restored, denoise(image.detach(), 0.1))


@pytest.mark.parametrize("sigma", [100.0, -0.1, float("nan")])
def test_sigma_outside_the_intensity_scale_is_refused(sigma: float) -> None:
    with pytest.raises(ValueError, match=r"sigma must be a finite noise level in \[0, 1\]"):
        denoise(torch.rand(1, 16, 16), sigma=sigma)


def test_tiny_images_need_a_noise_level_only_to_estimate_it() -> None:
    tiny = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(1))
    assert denoise(tiny, sigma=0.1).shape == (3, 5, 6)
    with pytest.raises(ValueError, match="to estimate its noise, got 5x6; give sigma"):
        denoise(tiny)
