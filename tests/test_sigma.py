"""Tests for tvdenoise.sigma.estimate_sigma."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tvdenoise.sigma import MIN_SIZE, estimate_sigma

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def piecewise_constant(channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Random rectangles of constant intensity in [0.2, 0.8]: flat areas and sharp edges."""
    gen = _generator(seed)
    image = torch.full((channels, height, width), 0.5)
    for _ in range(12):
        top, left = (int(v) for v in torch.randint(0, min(height, width) - 4, (2,), generator=gen))
        size = int(torch.randint(4, min(height, width) // 2, (1,), generator=gen))
        level = 0.2 + 0.6 * torch.rand(channels, 1, 1, generator=gen)
        image[:, top : top + size, left : left + size] = level
    return image


def add_8bit_noise(clean: torch.Tensor, sigma_levels: float, seed: int) -> torch.Tensor:
    """Noise added in 8-bit levels to an image on [0, 1], then rounded and clipped."""
    noise = torch.randn(clean.shape, generator=_generator(seed), dtype=torch.float64)
    levels = (clean.to(torch.float64) * 255).round() + sigma_levels * noise
    return (levels.round().clamp(0, 255) / 255).to(torch.float32)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
@pytest.mark.parametrize(("channels", "height", "width"), [(1, 97, 83), (3, 64, 70)])
def test_piecewise_constant_within_10_percent(
    sigma: float, channels: int, height: int, width: int
) -> None:
    clean = piecewise_constant(channels, height, width, seed=1)
    noise = torch.randn(clean.shape, generator=_generator(2))
    estimate = float(estimate_sigma(clean + sigma * noise))
    assert estimate == pytest.approx(sigma, rel=0.10)


def test_pure_noise_calibration() -> None:
    # On plain white noise the estimate must be unbiased.
    noise = 0.5 + 0.05 * torch.randn(1, 512, 512, generator=_generator(3))
    assert float(estimate_sigma(noise)) == pytest.approx(0.05, rel=0.03)


@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_photograph_sigma_25_within_15_percent(name: str) -> None:
    data = pytest.importorskip("skimage.data")
    array = np.asarray(getattr(data, name)(), dtype=np.float32) / 255
    clean = torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    noisy = add_8bit_noise(clean, 25, seed=4)
    assert 255 * float(estimate_sigma(noisy)) == pytest.approx(25, rel=0.15)


def test_clean_photograph_gives_small_estimate() -> None:
    data = pytest.importorskip("skimage.data")
    clean = torch.from_numpy(np.asarray(data.astronaut(), dtype=np.float32) / 255)
    assert 255 * float(estimate_sigma(clean.permute(2, 0, 1))) < 3


def test_half_saturated_image_is_not_fooled_by_clipping() -> None:
    # Left half white (255): noise there is clipped away on one side. Right half a smooth
    # ramp. An estimator that uses the clipped half reads far too low.
    height, width = 96, 128
    ramp = torch.linspace(0.3, 0.7, width // 2).expand(height, width // 2)
    clean = torch.cat([torch.ones(height, width // 2), ramp], dim=1)[None]
    sigma_levels = 30
    noisy = add_8bit_noise(clean, sigma_levels, seed=5)
    assert (noisy == 1).float().mean() > 0.25  # the test image really is clipped
    assert 255 * float(estimate_sigma(noisy)) == pytest.approx(sigma_levels, rel=0.10)


@pytest.mark.parametrize("sigma_levels", [25, 50])
def test_dark_image_estimate_models_the_clipped_noise(sigma_levels: int) -> None:
    # A dark field (10 levels) with a few mid-grey squares: at 50 levels no 8x8 patch
    # escapes a clipped value and most of the image loses part of its noise to the
    # clipping at 0, so ignoring the clipped areas is not possible and using them
    # without a model reads the noise 15-20 % low.
    clean = 10 / 255 + 0.3 * (piecewise_constant(1, 128, 128, seed=6) > 0.65)
    noisy = add_8bit_noise(clean, sigma_levels, seed=7)
    assert (noisy == 0).float().mean() > 0.25
    assert 255 * float(estimate_sigma(noisy)) == pytest.approx(sigma_levels, rel=0.05)


def test_sixteen_bit_noise_under_strong_structure() -> None:
    # Two 16-bit levels of noise on a full-range ramp: the structure's eigenvalues are
    # 1e5 times the noise's, which float32 products of the patches cannot resolve.
    g = _generator(8)
    ramp = torch.linspace(0, 1, 256).expand(1, 256, 256)
    noisy = (ramp + 3e-5 * torch.randn(ramp.shape, generator=g)).clamp(0, 1)
    assert float(estimate_sigma(noisy)) == pytest.approx(3e-5, rel=0.05)


def test_batched_equals_one_by_one() -> None:
    images = [
        add_8bit_noise(piecewise_constant(3, 40, 45, seed=s), sigma_levels=s * 10, seed=s)
        for s in (1, 2, 3)
    ]
    batched = estimate_sigma(torch.stack(images))
    one_by_one = torch.stack([estimate_sigma(image) for image in images])
    torch.testing.assert_close(batched, one_by_one)


@pytest.mark.parametrize("device", DEVICES)
def test_shape_dtype_device_contract(device: str) -> None:
    image = torch.rand(3, 20, 21, generator=_generator(6)).to(device)
    single = estimate_sigma(image)
    batched = estimate_sigma(image.expand(2, -1, -1, -1))
    assert single.shape == ()
    assert batched.shape == (2,)
    for result in (single, batched):
        assert result.dtype == torch.float32
        assert result.device == image.device
    torch.testing.assert_close(batched, single.expand(2))


def test_float64_input_accepted() -> None:
    image = piecewise_constant(1, 50, 50, seed=7) + 0.05 * torch.randn(
        1, 50, 50, generator=_generator(8)
    )
    result = estimate_sigma(image.to(torch.float64))
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, estimate_sigma(image))


@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
def test_constant_image_gives_zero(value: float) -> None:
    result = estimate_sigma(torch.full((3, 32, 33), value))
    assert not torch.isnan(result)
    assert float(result) < 1e-6


def test_minimum_size_accepted() -> None:
    image = 0.5 + 0.1 * torch.randn(1, MIN_SIZE, MIN_SIZE, generator=_generator(9))
    assert 0.0 < float(estimate_sigma(image)) < 0.3


@pytest.mark.parametrize(
    "shape", [(1, MIN_SIZE, MIN_SIZE), (2, 1, MIN_SIZE, MIN_SIZE), (3, 41, 37)]
)
def test_the_image_is_left_as_it_was(shape: tuple[int, ...]) -> None:
    # Where one window covers a plane, its patches are a view of the image.
    image = 0.5 + 0.1 * torch.randn(shape, generator=_generator(13))
    before = image.clone()
    estimate_sigma(image)
    assert torch.equal(image, before)


def test_missing_values_are_left_out() -> None:
    clean = piecewise_constant(3, 96, 96, seed=16)
    noisy = add_8bit_noise(clean, 20, seed=17)
    holed = noisy.clone()
    holed[:, 30:50, 10:40] = math.nan
    holed[1, 70, 80] = math.nan
    expected = float(estimate_sigma(noisy))
    assert float(estimate_sigma(holed)) == pytest.approx(expected, rel=0.05)
    batch = estimate_sigma(torch.stack([holed, noisy]))
    assert batch.tolist() == pytest.approx([float(estimate_sigma(holed)), expected], rel=1e-6)


def test_quarter_means_are_those_of_average_pooling() -> None:
    from tvdenoise import sigma as module

    planes = torch.rand(6, 1, 45, 52, generator=_generator(14))  # 2 images of 3 channels
    p, half, stride = module._PATCH, module._PATCH // 2, 3
    patches = F.unfold(planes, p, stride=stride)
    rows, cols = (45 - p) // stride + 1, (52 - p) // stride + 1
    pooled = [
        F.avg_pool2d(planes[..., dy:, dx:], half, stride=stride)[..., :rows, :cols]
        for dy in (0, half)
        for dx in (0, half)
    ]
    expected = torch.stack([q.reshape(2, -1) for q in pooled], dim=1)
    assert torch.equal(module._quarter_means(patches, 2), expected)


def test_sums_carried_to_another_set_of_patches_are_its_sums() -> None:
    from tvdenoise import sigma as module

    g = _generator(15)
    values = torch.randn(3, 400, 64, generator=g, dtype=torch.float64)
    first = torch.rand(3, 400, generator=g) < torch.tensor([[0.2], [0.5], [0.9]])
    few = first ^ (torch.rand(3, 400, generator=g) < 0.05)  # carried: a few change
    many = ~few  # summed afresh: most change
    sums = module._Sums.over(values, first)
    for keep in (few, many):
        sums = sums.carried_to(values, keep)
        kept = values * keep.unsqueeze(2)
        torch.testing.assert_close(sums.gram, kept.transpose(1, 2) @ values)
        torch.testing.assert_close(sums.total, kept.sum(dim=1))
        assert torch.equal(sums.kept, keep)


@pytest.mark.parametrize("shape", [(1, MIN_SIZE - 1, 50), (3, 50, MIN_SIZE - 1), (2, 1, 4, 4)])
def test_too_small_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=f"at least {MIN_SIZE}x{MIN_SIZE}"):
        estimate_sigma(torch.rand(shape))


@pytest.mark.parametrize("shape", [(32, 32), (1, 1, 1, 32, 32)])
def test_wrong_rank_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(B, C, H, W\)"):
        estimate_sigma(torch.rand(shape))


def test_integer_image_raises() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        estimate_sigma(torch.zeros(1, 16, 16, dtype=torch.uint8))


def test_estimate_grows_with_noise() -> None:
    clean = piecewise_constant(1, 64, 64, seed=10)
    noise = torch.randn(clean.shape, generator=_generator(11))
    estimates = [float(estimate_sigma(clean + s * noise)) for s in (0.01, 0.03, 0.09)]
    assert estimates[0] < estimates[1] < estimates[2]


def test_texture_constant_is_the_white_noise_percentile() -> None:
    from tvdenoise import sigma as module

    noise = torch.randn(1, 1, 1602, 1602, generator=_generator(12))
    p = module._PATCH
    dx = (noise[..., :, 1:] - noise[..., :, :-1]).square()
    dy = (noise[..., 1:, :] - noise[..., :-1, :]).square()
    texture = F.avg_pool2d(dx, (p, p - 1), stride=2) + F.avg_pool2d(dy, (p - 1, p), stride=2)
    measured = float(torch.quantile(texture.flatten()[: 1 << 24], 0.99))
    assert measured == pytest.approx(module._TEXTURE_QUANTILE, rel=0.02)


@pytest.mark.parametrize(("name", "sigma"), [("grass", 10), ("gravel", 10)])
def test_fine_texture_is_not_read_as_noise(name: str, sigma: int) -> None:
    # The hardest textures of the bundled photographs (the previous estimator, a
    # percentile of residual variances, read +42 % and +13 % here).
    data = pytest.importorskip("skimage.data")
    clean = torch.from_numpy(np.asarray(getattr(data, name)(), dtype=np.float32)[None] / 255)
    noisy = add_8bit_noise(clean, sigma, seed=5)
    assert 255 * float(estimate_sigma(noisy)) == pytest.approx(sigma, rel=0.15)


def test_large_images_are_estimated_from_bands_spread_over_the_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tvdenoise import sigma as module

    clean = piecewise_constant(3, 600, 300, seed=13)
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=_generator(14))
    whole = float(estimate_sigma(noisy))
    monkeypatch.setattr(module, "_MAX_SAMPLED_VALUES", 200_000)
    bands = module._bands(600, 3 * 300)
    assert 1 < len(bands) < 600 // module._SAMPLE_ROWS
    assert bands[0][0] == 0 and bands[-1][1] == 576  # top to bottom
    assert float(estimate_sigma(noisy)) == pytest.approx(whole, rel=0.05)
