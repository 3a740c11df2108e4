"""The public edge: NumPy arrays, channel layouts and integer dtypes in, the same out."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from skimage import data

from tvdenoise import denoise
from tvdenoise.convert import ChannelAxis, check_value_range, to_working

from helpers import add_noise, piecewise_image


def _noisy_photo(height: int = 37, width: int = 31) -> npt.NDArray[np.uint8]:
    """An odd-sized crop of a photograph with Gaussian noise of 25 grey levels, uint8."""
    photo = data.astronaut()[100 : 100 + height, 200 : 200 + width].astype(np.float64)
    noise = np.random.default_rng(0).normal(0, 25, photo.shape)
    return np.clip(np.rint(photo + noise), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("weight", ["auto", 0.15])
def test_uint8_photo_array_equals_the_tensor_path_after_rounding(weight: Any) -> None:
    noisy = _noisy_photo()
    restored = denoise(noisy, weight)
    assert isinstance(restored, np.ndarray)
    assert restored.shape == noisy.shape and restored.dtype == np.uint8
    tensor = torch.from_numpy(noisy).permute(2, 0, 1).float() / 255
    expected = (denoise(tensor, weight) * 255).round().to(torch.uint8).permute(1, 2, 0)
    np.testing.assert_array_equal(restored, expected.numpy())
    assert np.abs(restored.astype(int) - noisy).mean() > 5  # it did denoise


def test_grey_and_16_bit_arrays_keep_their_shape_and_dtype() -> None:
    grey = _noisy_photo()[..., 0].astype(np.uint16) * 257  # 16-bit, full range
    restored = denoise(grey, 0.1)
    assert restored.shape == grey.shape and restored.dtype == np.uint16
    tensor = torch.from_numpy(grey.astype(np.float32) / 65535)[None]
    expected = (denoise(tensor, 0.1)[0] * 65535).round().numpy().astype(np.uint16)
    np.testing.assert_array_equal(restored, expected)


def test_integer_tensors_come_back_as_integer_tensors() -> None:
    noisy = torch.from_numpy(_noisy_photo()).permute(2, 0, 1).contiguous()
    restored = denoise(noisy, 0.1)
    assert restored.dtype == torch.uint8 and restored.shape == noisy.shape
    expected = (denoise(noisy.float() / 255, 0.1) * 255).round().to(torch.uint8)
    assert torch.equal(restored, expected)


def test_float_array_channels_last_equals_the_tensor_path() -> None:
    noisy = add_noise(piecewise_image(3, 29, 23, seed=1), 0.1, seed=2)
    restored = denoise(noisy.permute(1, 2, 0).numpy(), 0.2)
    assert isinstance(restored, np.ndarray) and restored.dtype == np.float32
    expected = denoise(noisy, 0.2).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(restored, expected)


def test_float_tensor_with_channel_axis_last_equals_channels_first() -> None:
    noisy = add_noise(piecewise_image(3, 29, 23, seed=3), 0.1, seed=4)
    last = denoise(noisy.permute(1, 2, 0), 0.2, channel_axis=-1)
    assert last.shape == (29, 23, 3)
    assert torch.equal(last, denoise(noisy, 0.2).permute(1, 2, 0))


def test_channels_last_tensor_is_not_taken_as_many_channels() -> None:
    """An (H, W, 3) tensor once became H channels of a W x 3 image, silently."""
    noisy = add_noise(piecewise_image(3, 40, 36, seed=5), 0.1, seed=6).permute(1, 2, 0)
    with pytest.raises(ValueError, match="channel_axis=-1"):
        denoise(noisy, 0.2)
    # Stating the layout is obeyed as it is.
    assert denoise(noisy, 0.2, channel_axis=0).shape == (40, 36, 3)


@pytest.mark.parametrize(
    "shape", [(3, 64, 64), (64, 64, 64), (2, 64, 64, 5)], ids=["chw", "volume", "batch"]
)
def test_arrays_whose_layout_cannot_be_guessed_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="channel_axis"):
        denoise(np.zeros(shape, dtype=np.float32), 0.1)


def test_float_images_on_another_scale_are_refused_not_clipped() -> None:
    photo = _noisy_photo().astype(np.float32)  # 0-255 as floats
    with pytest.raises(ValueError, match="divide by 255"):
        denoise(photo, 0.0)
    with pytest.raises(ValueError, match="from -5 to"):
        denoise(torch.full((1, 9, 9), -5.0), 0.1)


def test_unclipped_noise_a_little_outside_the_range_is_accepted() -> None:
    clean = piecewise_image(1, 31, 27, seed=7)
    noisy = clean + 0.25 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(8))
    assert float(noisy.min()) < -0.2 and float(noisy.max()) > 1.2
    assert denoise(noisy, 0.3).shape == clean.shape
    check_value_range(torch.tensor([-1.0, 2.0, float("nan")]))  # the bounds are allowed


def test_weight_zero_returns_an_integer_image_unchanged() -> None:
    noisy = _noisy_photo()
    np.testing.assert_array_equal(denoise(noisy, 0.0), noisy)
    signed = (noisy.astype(np.int16) - 128) * 200  # int16, negative values
    np.testing.assert_array_equal(denoise(signed, 0.0), signed)


@pytest.mark.parametrize(
    ("shape", "channel_axis", "spatial_dims", "working"),
    [
        ((7, 5), "auto", 2, (1, 1, 7, 5)),
        ((7, 5, 3), "auto", 2, (1, 3, 7, 5)),
        ((2, 7, 5, 3), -1, 2, (2, 3, 7, 5)),
        ((3, 7, 5), 0, 2, (1, 3, 7, 5)),
        ((7, 3, 5), 1, 2, (1, 3, 7, 5)),
        ((4, 7, 5), None, 2, (4, 1, 7, 5)),
        ((6, 7, 5), None, 3, (1, 1, 6, 7, 5)),
        ((6, 7, 5, 2), -1, 3, (1, 2, 6, 7, 5)),
        ((6, 7, 5, 2), "auto", 3, (1, 2, 6, 7, 5)),
        ((2, 6, 7, 5), None, 3, (2, 1, 6, 7, 5)),
    ],
)
def test_layouts_map_to_the_working_tensor_and_back(
    shape: tuple[int, ...], channel_axis: ChannelAxis, spatial_dims: int, working: tuple[int, ...]
) -> None:
    values = np.random.default_rng(9).integers(0, 256, size=shape, dtype=np.uint8)
    prepared = to_working(values, channel_axis=channel_axis, spatial_dims=spatial_dims)
    assert tuple(prepared.tensor.shape) == working
    assert prepared.tensor.is_contiguous()
    # The spatial axes keep their order: pixel (y, x) of channel c is where it was.
    np.testing.assert_array_equal(prepared.restore_layout(prepared.tensor), values)


def test_tensor_layouts_are_as_before_without_channel_axis() -> None:
    image = torch.rand(2, 3, 7, 5)
    assert to_working(image).tensor.data_ptr() == image.data_ptr()  # no copy
    assert tuple(to_working(image[0]).tensor.shape) == (1, 3, 7, 5)
    assert tuple(to_working(image[0, 0]).tensor.shape) == (1, 1, 7, 5)
    volume = torch.rand(3, 6, 7, 5)
    assert tuple(to_working(volume, spatial_dims=3).tensor.shape) == (1, 3, 6, 7, 5)


def test_arrays_torch_cannot_share_are_copied_quietly() -> None:
    base = np.linspace(0, 1, 7 * 5 * 3, dtype=np.float32).reshape(7, 5, 3)
    frozen = base.copy()
    frozen.flags.writeable = False
    for array in (frozen, base[::-1], base.astype(">f4")):
        prepared = to_working(array)
        np.testing.assert_array_equal(prepared.restore_layout(prepared.tensor), array)


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        ([[0.5, 0.5]], TypeError, "torch.Tensor or a numpy.ndarray, got list"),
        (np.zeros((5, 5), dtype=bool), TypeError, "real numbers"),
        (np.zeros((5, 5), dtype=np.complex64), TypeError, "real numbers"),
        (torch.zeros(5, 5, dtype=torch.bool), TypeError, "torch.bool"),
        (
            np.zeros((2, 2, 5, 5, 3), dtype=np.uint8),
            ValueError,
            r"\(B, H, W, C\) with spatial_dims=2",
        ),
        (np.zeros(5, dtype=np.uint8), ValueError, "got shape"),
    ],
)
def test_bad_images_name_what_is_allowed(image: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        denoise(image, 0.1)


@pytest.mark.parametrize(
    ("channel_axis", "error", "match"),
    [
        (3, ValueError, "out of range"),
        (True, TypeError, "channel_axis must be"),
        ("last", TypeError, "channel_axis must be"),
    ],
)
def test_bad_channel_axis(channel_axis: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        denoise(np.zeros((7, 5, 3), dtype=np.uint8), 0.1, channel_axis=channel_axis)


def test_spatial_dims_is_checked() -> None:
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        to_working(np.zeros((7, 5, 3, 2)), spatial_dims=4)


def test_a_volume_array_composes_channel_axis_with_spatial_dims() -> None:
    """(Z, Y, X) uint16 with channel_axis=None and spatial_dims=3: one 3-D solve."""
    gen = torch.Generator().manual_seed(11)
    clean = piecewise_image(1, 21, 19, seed=12).expand(9, 21, 19)  # a (Z, Y, X) stack
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    volume = (noisy * 65535).round().numpy().astype(np.uint16)
    restored = denoise(volume, 0.1, channel_axis=None, spatial_dims=3)
    assert restored.shape == (9, 21, 19) and restored.dtype == np.uint16
    tensor = torch.from_numpy(volume.astype(np.float32) / 65535)[None]
    expected = denoise(tensor, 0.1, spatial_dims=3)[0]
    np.testing.assert_array_equal(restored, (expected * 65535).round().numpy().astype(np.uint16))
    slices = denoise(volume, 0.1, channel_axis=None)  # a batch of 9 images instead
    assert not np.array_equal(slices, restored)


def test_a_mask_in_the_arrays_layout_marks_the_same_values() -> None:
    """A (H, W) mask for an (H, W, 3) uint8 photo: every channel of those pixels missing."""
    noisy = _noisy_photo()
    mask = np.zeros(noisy.shape[:2], dtype=bool)
    mask[10:14, 5:9] = True
    restored = denoise(noisy, 0.15, mask=mask)
    tensor = torch.from_numpy(noisy).permute(2, 0, 1).float() / 255
    expected = denoise(tensor, 0.15, mask=torch.from_numpy(mask)[None])
    expected_u8 = (expected * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(restored, expected_u8)
    assert not np.array_equal(restored, denoise(noisy, 0.15))  # the mask was used
    with pytest.raises(ValueError, match="mask must broadcast to the image's shape"):
        denoise(noisy, 0.15, mask=mask.T)
    with pytest.raises(TypeError, match="mask must be a boolean tensor or array"):
        denoise(noisy, 0.15, mask=mask.tolist())  # type: ignore[arg-type]
