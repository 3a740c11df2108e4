"""Finite differences and total variation: exact identities and autograd."""

from __future__ import annotations

import itertools

import pytest
import torch

from tvdenoise import TVLoss, divergence, forward_differences, total_variation, tv_gradient

from helpers import ATOL

VARIANTS = list(itertools.product(["isotropic", "anisotropic"], ["joint", "separate"]))


def sketch_tv(x: torch.Tensor, weight: float) -> torch.Tensor:
    """The original formula: sum of |vertical| and |horizontal| differences / (B*C*H*W)."""
    b, c, h, w = x.shape
    vertical = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().sum()
    horizontal = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum()
    return weight * (vertical + horizontal) / (b * c * h * w)


def test_anisotropic_mean_is_the_original_formula() -> None:
    x = torch.rand(2, 3, 37, 31, generator=torch.Generator().manual_seed(1))
    got = total_variation(x, kind="anisotropic", weight=0.7)
    assert torch.allclose(got, sketch_tv(x, 0.7), rtol=1e-6, atol=0)
    assert torch.allclose(TVLoss(0.7, kind="anisotropic")(x), got)


def test_isotropic_variants_by_hand() -> None:
    x = torch.tensor([[[0.0, 3.0], [4.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # (2, 2, 2)
    # Channel 0: pixel (0,0) has dy=4, dx=3 -> 5; pixel (0,1) dy=-3 -> 3; (1,0) dx=-4 -> 4.
    separate = total_variation(x, kind="isotropic", color="separate", reduction="sum")
    assert float(separate) == pytest.approx(12.0)
    x[1] = x[0]
    joint = total_variation(x, kind="isotropic", color="joint", reduction="sum")
    assert float(joint) == pytest.approx(12.0 * 2**0.5)
    assert float(total_variation(x, reduction="mean")) == pytest.approx(12.0 * 2**0.5 / 8)


@pytest.mark.parametrize(("kind", "color"), VARIANTS)
def test_constant_image_has_zero_tv(kind: str, color: str) -> None:
    x = torch.full((2, 3, 9, 7), 0.37)
    assert float(total_variation(x, kind=kind, color=color)) == 0.0  # type: ignore[arg-type]
    grad = tv_gradient(x, kind=kind, color=color, eps=1e-3)  # type: ignore[arg-type]
    assert float(grad.abs().max()) == 0.0


def test_joint_equals_separate_for_one_channel() -> None:
    x = torch.rand(2, 1, 13, 11, generator=torch.Generator().manual_seed(2))
    joint = total_variation(x, color="joint", reduction="per_image")
    separate = total_variation(x, color="separate", reduction="per_image")
    assert torch.equal(joint, separate)
    assert joint.shape == (2,)
    assert total_variation(x[0], reduction="per_image").shape == ()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adjoint_identity(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(2, 3, 37, 31, generator=gen, dtype=dtype)
    py = torch.randn(2, 3, 37, 31, generator=gen, dtype=dtype)
    px = torch.randn(2, 3, 37, 31, generator=gen, dtype=dtype)
    dy, dx = forward_differences(u)
    lhs = (dy * py).sum() + (dx * px).sum()
    rhs = -(u * divergence(py, px)).sum()
    assert abs(float(lhs - rhs)) <= ATOL[dtype] * float(lhs.abs() + 1) * 100


def test_neumann_boundary() -> None:
    u = torch.rand(1, 5, 4)
    dy, dx = forward_differences(u)
    assert float(dy[..., -1, :].abs().max()) == 0.0
    assert float(dx[..., :, -1].abs().max()) == 0.0


@pytest.mark.parametrize(("kind", "color"), VARIANTS)
def test_gradcheck_smoothed(kind: str, color: str) -> None:
    x = torch.rand(1, 2, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: total_variation(t, kind=kind, color=color, eps=0.05),  # type: ignore[arg-type]
        (x,),
    )


@pytest.mark.parametrize(("kind", "color"), VARIANTS)
def test_hand_gradient_matches_autograd(kind: str, color: str) -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 37, 31, generator=gen, dtype=torch.float64, requires_grad=True)
    for eps in (1e-3, 0.1):
        value = total_variation(x, kind=kind, color=color, eps=eps, reduction="sum")  # type: ignore[arg-type]
        (auto,) = torch.autograd.grad(value, x)
        hand = tv_gradient(x.detach(), kind=kind, color=color, eps=eps)  # type: ignore[arg-type]
        assert torch.allclose(hand, auto, atol=1e-10, rtol=1e-9)


def test_exact_tv_autograd_is_finite_on_flat_areas() -> None:
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    x[:, :, :, 4:] = 1.0
    x.requires_grad_(True)
    total_variation(x).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_huber_bounds_exact_tv() -> None:
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    exact = float(total_variation(x, reduction="sum"))
    smooth = float(total_variation(x, eps=0.01, reduction="sum"))
    assert exact - 16 * 16 * 0.01 / 2 - 1e-3 <= smooth <= exact


def test_tvloss_in_a_training_loop() -> None:
    gen = torch.Generator().manual_seed(6)
    target = torch.rand(1, 3, 16, 16, generator=gen)
    param = torch.nn.Parameter(target.clone())
    opt = torch.optim.SGD([param], lr=0.5)
    loss_fn = TVLoss(weight=1.0)
    before = float(loss_fn(param).detach())
    for _ in range(5):
        opt.zero_grad()
        loss_fn(param).backward()
        opt.step()
    assert float(loss_fn(param).detach()) < before
    assert "isotropic" in repr(loss_fn)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"kind": "l1"}, ValueError),
        ({"color": "rgb"}, ValueError),
        ({"reduction": "max"}, ValueError),
        ({"eps": -1.0}, ValueError),
    ],
)
def test_bad_options(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error, match="must be"):
        total_variation(torch.rand(1, 4, 4), **kwargs)  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        total_variation(torch.ones(1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        total_variation(torch.rand(4, 4))
