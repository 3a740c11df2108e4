"""The automatic weight of a batch: every image gets what it gets alone, and the batch
takes the Python-level steps of one image (the noise estimate, the SURE searches of grey,
joint, separate and opponent colour, the impulse hold-out search, the photon searches),
not one set per image."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import tvdenoise.auto as auto
import tvdenoise.noise_weight as noise_weight
import tvdenoise.sigma as sigma_module
from tvdenoise.auto import auto_weight
from tvdenoise.colour import opponent_weights
from tvdenoise.noise_weight import auto_weight_for_noise
from tvdenoise.sigma import estimate_sigma
from tvdenoise.solver import DEFAULT_EPS
from tvdenoise.tv import TotalVariation

from helpers import add_noise, piecewise_image, without_kernel

# Batch against one by one: the same computation, so the same float32 values; the
# tolerance only allows for a different summation order of a library.
RTOL = 1e-6
# Against the weights recorded before the search was batched (main at 4509aaf), on the
# PyTorch path where they were recorded (the compiled kernel rounds differently, and moves
# them by up to 0.3 %): the same up to rounding, which the parabola's vertex magnifies (a
# change in the order of the solver's float32 sums moved them by up to 6e-4); a wrong grid
# point is off by 26 %.
RECORDED_RTOL = 2e-3


def _images() -> torch.Tensor:
    """Four different (3, 37, 45) images: noisy (a few values clipped), dark and heavily
    clipped at 0, nearly clean (8-bit, noise 0.002), fine texture."""
    h, w = 37, 45
    y = torch.linspace(0, 1, h).reshape(-1, 1)
    x = torch.linspace(0, 1, w).reshape(1, -1)
    texture = (0.5 + 0.2 * torch.sin(40 * x) * torch.cos(31 * y)).expand(3, h, w)
    return torch.stack(
        [
            add_noise(piecewise_image(3, h, w, seed=1), 0.1, seed=11),
            add_noise(0.15 * piecewise_image(3, h, w, seed=2), 0.12, seed=12),
            (add_noise(piecewise_image(3, h, w, seed=3), 0.002, seed=13) * 255).round() / 255,
            add_noise(texture * torch.tensor([1.0, 0.9, 0.8]).reshape(3, 1, 1), 0.05, seed=14),
        ]
    )


def _one_by_one(
    choose: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor
) -> torch.Tensor:
    return torch.cat([choose(batch[i : i + 1]) for i in range(len(batch))])


def _assert_as_alone(choose: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> None:
    torch.testing.assert_close(choose(batch), _one_by_one(choose, batch), rtol=RTOL, atol=0)


def test_the_batch_covers_the_per_image_branches() -> None:
    rgb = _images()
    clipped = ((rgb <= 0) | (rgb >= 1)).flatten(1).float().mean(1)
    assert float(clipped[0]) > 0 and float(clipped[1]) > 0.2
    assert float(clipped[2]) == 0 and float(clipped[3]) == 0
    assert 255 * float(estimate_sigma(rgb[2])) < 1


@pytest.mark.parametrize("channels", [1, 3])
def test_noise_estimate_of_a_batch_equals_one_by_one(channels: int) -> None:
    batch = _images()[:, :channels]
    _assert_as_alone(estimate_sigma, batch)
    if channels == 3:
        recorded = [0.1028114, 0.1183146, 0.0022632, 0.0505447]
        assert estimate_sigma(batch).tolist() == pytest.approx(recorded, rel=RECORDED_RTOL)


def test_noise_estimate_in_chunks_on_cpu_equals_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _images()
    whole = estimate_sigma(batch)
    monkeypatch.setattr(sigma_module, "_CPU_PATCHES", 2 * 3 * 30 * 38)  # two images a chunk
    rounds = _count_calls(monkeypatch, sigma_module, "_estimate")
    torch.testing.assert_close(estimate_sigma(batch), whole, rtol=RTOL, atol=0)
    assert rounds[0] == 2


def test_search_in_groups_on_cpu_equals_one_group(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _images()
    reg = TotalVariation(eps=DEFAULT_EPS)
    joint, opponent = auto_weight(batch)[0], opponent_weights(batch, reg)[:2]
    monkeypatch.setattr(auto, "_CPU_SEARCH_VALUES", 2 * 3 * 37 * 45)  # two images a group
    searches = _count_calls(monkeypatch, auto, "refine_weights")
    torch.testing.assert_close(auto_weight(batch)[0], joint, rtol=RTOL, atol=0)
    assert searches[0] == 2
    for got, whole in zip(opponent_weights(batch, reg)[:2], opponent, strict=True):
        torch.testing.assert_close(got, whole, rtol=RTOL, atol=0)


def test_noise_estimate_keeps_the_per_image_cases() -> None:
    # No noise (0), nothing usable (all saturated: 0), a small image (the median residual),
    # and a dark one at high noise, in one batch, as alone.
    g = torch.Generator().manual_seed(3)
    flat = torch.full((2, 33, 35), 0.4)
    saturated = (torch.rand(2, 33, 35, generator=g) > 0.5).float()
    dark = (0.02 + 0.12 * torch.randn(2, 33, 35, generator=g)).clamp(0, 1)
    noisy = (0.5 + 0.04 * torch.randn(2, 33, 35, generator=g)).clamp(0, 1)
    batch = torch.stack([flat, saturated, dark, noisy])
    sigmas = estimate_sigma(batch)
    assert sigmas[:2].tolist() == [0.0, 0.0]
    assert float(sigmas[2]) == pytest.approx(0.12, rel=0.15)
    _assert_as_alone(estimate_sigma, batch)
    small = (0.5 + 0.05 * torch.randn(3, 3, 20, 21, generator=g)).clamp(0, 1)
    _assert_as_alone(estimate_sigma, small)


@pytest.mark.parametrize(
    ("tv", "color", "recorded"),
    [
        ("isotropic", "joint", [0.3461847, 0.5029241, 0.0060385, 0.0703925]),
        ("isotropic", "separate", [0.2389335, 0.2866929, 0.0038463, 0.0398474]),
        ("anisotropic", "joint", [0.1654261, 0.241887, 0.0036141, 0.0296179]),
    ],
)
def test_sure_weights_of_a_batch_equal_one_by_one(
    tv: str, color: str, recorded: list[float]
) -> None:
    def choose(x: torch.Tensor) -> torch.Tensor:
        return auto_weight(x, tv=tv, color=color)[0]  # type: ignore[arg-type]

    batch = _images()
    with without_kernel():
        assert choose(batch).tolist() == pytest.approx(recorded, rel=RECORDED_RTOL)
    weights = choose(batch)
    torch.testing.assert_close(weights, _one_by_one(choose, batch), rtol=RTOL, atol=0)


@pytest.mark.parametrize("tv", ["isotropic", "anisotropic"])
def test_grey_sure_weights_of_a_batch_equal_one_by_one(tv: str) -> None:
    def choose(x: torch.Tensor) -> torch.Tensor:
        return auto_weight(x, tv=tv)[0]  # type: ignore[arg-type]

    batch = _images()[:, :1].contiguous()
    if tv == "isotropic":
        recorded = [0.2127191, 0.3198938, 0.0039166, 0.0375727]
        with without_kernel():
            assert choose(batch).tolist() == pytest.approx(recorded, rel=RECORDED_RTOL)
    _assert_as_alone(choose, batch)


def test_given_noise_levels_with_a_zero_keep_the_zero_weight() -> None:
    batch = _images()
    levels = torch.tensor([0.1, 0.0, 0.12, 0.05])
    weights, _ = auto_weight(batch, sigma=levels)
    assert float(weights[1]) == 0.0
    alone = [float(auto_weight(batch[i], sigma=float(levels[i]))[0][0]) for i in range(4)]
    assert weights.tolist() == pytest.approx(alone, rel=RTOL)
    light, colour, _ = opponent_weights(batch, TotalVariation(eps=DEFAULT_EPS), sigma=levels)
    assert [float(light[1]), float(colour[1])] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("tv", "recorded"),
    [
        (
            "isotropic",
            [
                [0.1883593, 0.2054529, 0.0038114, 0.03184],
                [0.2537788, 0.2799287, 0.0055489, 0.2223965],
            ],
        ),
        (
            "anisotropic",
            [
                [0.1718151, 0.1631869, 0.0035795, 0.0209478],
                [0.1738396, 0.2343661, 0.0038433, 0.1375996],
            ],
        ),
    ],
)
def test_opponent_weights_of_a_batch_equal_one_by_one(tv: str, recorded: list[list[float]]) -> None:
    reg = TotalVariation(tv, "joint", DEFAULT_EPS)  # type: ignore[arg-type]
    batch = _images()
    with without_kernel():
        light, colour, _ = opponent_weights(batch, reg)
    assert light.tolist() == pytest.approx(recorded[0], rel=RECORDED_RTOL)
    assert colour.tolist() == pytest.approx(recorded[1], rel=RECORDED_RTOL)
    light, colour, _ = opponent_weights(batch, reg)
    alone = [opponent_weights(batch[i : i + 1], reg) for i in range(len(batch))]
    for got, part in ((light, 0), (colour, 1)):
        expected = torch.cat([weights[part] for weights in alone])
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=0)


def test_brightness_weights_alone_of_a_batch_equal_one_by_one() -> None:
    # The colour weight given: the colour result at its rule is solved apart for the
    # clipped images' targets.
    reg = TotalVariation(eps=DEFAULT_EPS)
    _assert_as_alone(lambda x: opponent_weights(x, reg, colour=False)[0], _images())


def test_an_image_with_missing_values_in_a_batch_gets_its_weights_alone() -> None:
    # Missing values (NaN) in one image only: the others are scored as without any.
    batch = _images()
    batch[1, :, 5:9, 10:20] = float("nan")
    reg = TotalVariation(eps=DEFAULT_EPS)
    _assert_as_alone(lambda x: auto_weight(x)[0], batch)
    _assert_as_alone(lambda x: opponent_weights(x, reg)[0], batch)
    _assert_as_alone(lambda x: opponent_weights(x, reg)[1], batch)


def test_volume_weights_of_a_batch_equal_one_by_one() -> None:
    g = torch.Generator().manual_seed(8)
    ramp = torch.linspace(0.2, 0.8, 9).reshape(1, 9, 1, 1).expand(1, 9, 24, 26)
    volumes = torch.stack([ramp, 0.6 * ramp.flip(1)])
    noisy = (
        volumes
        + torch.tensor([0.08, 0.15]).reshape(2, 1, 1, 1, 1)
        * torch.randn(volumes.shape, generator=g)
    ).clamp(0, 1)
    _assert_as_alone(lambda x: auto_weight(x, spatial_dims=3)[0], noisy)


def test_impulse_weights_of_a_batch_equal_one_by_one() -> None:
    g = torch.Generator().manual_seed(9)
    batch = _images()[:3, :1].clone()
    hit = torch.rand(batch.shape, generator=g)
    batch[hit < 0.04] = 0.0
    batch[hit > 0.96] = 1.0
    _assert_as_alone(lambda x: auto_weight_for_noise(x, "impulse"), batch)


def test_photon_choices_of_a_batch_equal_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bright image (a fifth of it clipped at full scale), a dark one and one with
    # missing values, at 10 photons: each gets the estimator and the weights it gets
    # alone, and the batch's searches solve together, not once per image.
    g = torch.Generator().manual_seed(21)
    scenes = [1.3 * piecewise_image(3, 37, 45, seed=s) for s in (1, 2, 3)]
    scenes[1] *= 0.15
    batch = torch.stack([(torch.poisson(s * 10, generator=g) / 10).clamp(0, 1) for s in scenes])
    batch[2, :, 3:9, 4:11] = float("nan")
    assert float((batch[0] >= 1).float().mean()) > 0.1
    reg = TotalVariation(eps=DEFAULT_EPS)
    solves = _count_calls(monkeypatch, noise_weight, "solve_pairs")

    def choose(x: torch.Tensor) -> noise_weight.PhotonChoice:
        return noise_weight.poisson_estimators(x, reg, peak=None, opponent=True)

    together, in_batch = choose(batch), solves[0]
    alone, one_by_one = [], 0
    for i in range(len(batch)):
        solves[0] = 0
        alone.append(choose(batch[i : i + 1]))
        one_by_one += solves[0]
    assert together.estimators == tuple(a.estimators[0] for a in alone)
    for field in ("weights", "peaks", "chroma_weights"):
        expected = torch.cat([getattr(a, field) for a in alone])
        torch.testing.assert_close(
            getattr(together, field), expected, rtol=RTOL, atol=0, equal_nan=True
        )
    assert in_batch < one_by_one


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    calls = [0]
    real = getattr(owner, name)

    def counted(*args: object, **kw: object) -> object:
        calls[0] += 1
        return real(*args, **kw)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_a_batch_takes_the_steps_of_its_slowest_image(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each round of the noise estimate and of the weight search runs once for the whole
    # batch: as many rounds as the image that needs the most, not their sum.
    batch = _images()
    rounds = _count_calls(monkeypatch, sigma_module, "_noise_variance")
    solves = _count_calls(monkeypatch, auto.ProbedSure, "solve")

    def steps(x: torch.Tensor) -> tuple[int, int]:
        rounds[0] = solves[0] = 0
        auto_weight(x)
        return rounds[0], solves[0]

    alone = [steps(batch[i : i + 1]) for i in range(len(batch))]
    assert steps(batch) == (max(r for r, _ in alone), max(s for _, s in alone))
    assert sum(s for _, s in alone) > max(s for _, s in alone)
