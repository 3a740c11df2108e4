"""The separable filters against the convolution and pooling they stand in for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tvdenoise.filters import any_in_window, box_mean, immerkaer_residual

SHAPES = [(2, 1, 3, 3), (1, 1, 4, 9), (3, 1, 17, 10)]


@pytest.mark.parametrize("shape", SHAPES)
def test_residual_is_the_immerkaer_convolution(shape: tuple[int, int, int, int]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kernel = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]) / 6
    expected = F.conv2d(x, kernel.double().view(1, 1, 3, 3))
    assert torch.allclose(immerkaer_residual(x), expected, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [3, 5])
def test_box_mean_is_the_clipped_average_pool(shape: tuple[int, int, int, int], size: int) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)
    assert torch.allclose(box_mean(x, size), expected, atol=1e-12)


def test_box_mean_filters_each_plane_of_any_shape() -> None:
    x = torch.rand(2, 3, 4, 9, 11, generator=torch.Generator().manual_seed(3))
    planes = box_mean(x.reshape(24, 1, 9, 11), 5).reshape(x.shape)
    assert torch.equal(box_mean(x, 5), planes)


@pytest.mark.parametrize("shape", SHAPES)
def test_any_in_window_is_the_max_pool(shape: tuple[int, int, int, int]) -> None:
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(2)) > 0.9
    expected = F.max_pool2d(mask.double(), 3, stride=1) > 0
    assert torch.equal(any_in_window(mask), expected)
