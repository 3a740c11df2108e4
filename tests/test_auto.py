"""Tests for tvdenoise.auto: the weight rule and the SURE-refined automatic weight."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tvdenoise.auto as auto
from tvdenoise import tiling
from tvdenoise.auto import auto_weight, weight_for_sigma
from tvdenoise.clipping import censored_mean, censored_variance, latent_value
from tvdenoise.solver import DEFAULT_EPS, solve
from tvdenoise.tv import TotalVariation


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _photo(name: str, size: int) -> torch.Tensor:
    """Centre crop of a bundled scikit-image photograph, (C, H, W) in 8-bit levels."""
    data = pytest.importorskip("skimage.data")
    array = np.asarray(getattr(data, name)())
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)[:3]
    h, w = array.shape[1:]
    top, left = (h - size) // 2, (w - size) // 2
    crop = np.ascontiguousarray(array[:, top : top + size, left : left + size])
    return torch.from_numpy(crop).to(torch.float64)


def _noisy(levels: torch.Tensor, sigma_levels: float, seed: int) -> torch.Tensor:
    """8-bit noise: added in levels, rounded, clipped; returned on [0, 1] as float32."""
    noise = torch.randn(levels.shape, generator=_generator(seed), dtype=torch.float64)
    return ((levels + sigma_levels * noise).round().clamp(0, 255) / 255).to(torch.float32)


def _psnr(restored: torch.Tensor, clean: torch.Tensor) -> float:
    mse = (restored.to(torch.float64).reshape(clean.shape) - clean).square().mean()
    return float(-10 * torch.log10(mse))


def _cartoon(
    size: int,
    seed: int,
    *,
    levels: list[float] | None = None,
    background: float = 0.5,
    squares: int = 8,
) -> torch.Tensor:
    """Piecewise-constant image: flat squares and straight edges on a background, the
    squares at random levels in [0.25, 0.75] or at ``levels`` in turn."""
    gen = _generator(seed)
    image = torch.full((1, size, size), background)
    for k in range(squares):
        top, left = (int(v) for v in torch.randint(0, size - 8, (2,), generator=gen))
        side = int(torch.randint(8, size // 2, (1,), generator=gen))
        if levels is None:
            level = 0.25 + 0.5 * torch.rand(1, generator=gen)
        else:
            level = torch.tensor(levels[k % len(levels)])
        image[:, top : top + side, left : left + side] = level
    return image


# --- the rule ---------------------------------------------------------------------------


def test_rule_is_zero_at_zero_and_increasing_in_sigma() -> None:
    sigmas = torch.linspace(0, 0.3, 31)
    for tv in ("isotropic", "anisotropic"):
        for color in ("joint", "separate"):
            weights = weight_for_sigma(sigmas, tv=tv, color=color, channels=3)
            assert weights.shape == sigmas.shape
            assert float(weights[0]) == 0.0
            assert bool((weights.diff() > 0).all())


def test_rule_depends_on_tv_and_channels_as_documented() -> None:
    sigma = 0.1
    gray = float(weight_for_sigma(sigma))
    assert gray == pytest.approx(auto.ISOTROPIC_GAIN * sigma)
    joint = float(weight_for_sigma(sigma, color="joint", channels=3))
    assert joint == pytest.approx(gray * 3**auto.JOINT_EXPONENT)
    assert float(weight_for_sigma(sigma, color="separate", channels=3)) == pytest.approx(gray)
    aniso = [float(weight_for_sigma(sigma, tv="anisotropic", channels=c)) for c in (1, 3)]
    assert aniso[0] == aniso[1] < gray


@pytest.mark.parametrize("sigma", [-0.01, float("nan"), float("inf"), torch.tensor([0.1, -1.0])])
def test_rule_rejects_bad_sigma(sigma: float | torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"sigma must be a finite noise level in \[0, 1\]"):
        weight_for_sigma(sigma)


def test_rule_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="channels must be an integer >= 1"):
        weight_for_sigma(0.1, channels=0)
    with pytest.raises(ValueError, match="tv must be one of"):
        weight_for_sigma(0.1, tv="l1")  # type: ignore[arg-type]


# --- auto_weight ------------------------------------------------------------------------


def test_explicit_sigma_bypasses_the_estimator(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(image: torch.Tensor) -> torch.Tensor:
        raise AssertionError("estimate_sigma must not be called when sigma is given")

    monkeypatch.setattr(auto, "estimate_sigma", fail)
    noisy = torch.rand(2, 1, 32, 32, generator=_generator(0))
    weights, sigmas = auto_weight(noisy, sigma=torch.tensor([0.05, 0.1]), method="rule")
    assert sigmas.tolist() == pytest.approx([0.05, 0.1])
    assert weights.tolist() == pytest.approx(weight_for_sigma(sigmas).tolist())


def test_rule_method_uses_the_estimate() -> None:
    clean = _cartoon(64, seed=1)
    noisy = clean + 0.08 * torch.randn(clean.shape, generator=_generator(2))
    weights, sigmas = auto_weight(noisy, method="rule")
    assert weights.shape == sigmas.shape == (1,)
    assert float(sigmas[0]) == pytest.approx(0.08, rel=0.1)
    assert float(weights[0]) == pytest.approx(float(weight_for_sigma(sigmas[0])))


def test_zero_sigma_gives_zero_weight() -> None:
    noisy = torch.rand(3, 32, 32, generator=_generator(3))
    weights, _ = auto_weight(noisy, sigma=0.0)
    assert weights.tolist() == [0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigma": -0.1}, r"sigma must be a finite noise level in \[0, 1\]"),
        ({"sigma": [0.1, 0.2, 0.3]}, r"sigma must be one number or one per image \(2\)"),
        ({"method": "gcv"}, "method must be one of sure, rule"),
        ({"color": "rgb"}, "color must be one of"),
    ],
)
def test_auto_weight_errors(kwargs: dict[str, object], message: str) -> None:
    noisy = torch.rand(2, 1, 16, 16, generator=_generator(4))
    with pytest.raises(ValueError, match=message):
        auto_weight(noisy, **kwargs)  # type: ignore[arg-type]


def test_auto_weight_rejects_tiny_and_integer_images() -> None:
    with pytest.raises(ValueError, match="at least 8x8 pixels"):
        auto_weight(torch.rand(1, 5, 40))
    with pytest.raises(TypeError, match="floating-point"):
        auto_weight(torch.zeros(1, 16, 16, dtype=torch.uint8))


def test_batch_equals_one_by_one() -> None:
    gen = _generator(5)
    clean = torch.stack([_cartoon(48, seed=6), _cartoon(48, seed=7)])
    noisy = clean + torch.tensor([0.04, 0.12]).view(2, 1, 1, 1) * torch.randn(
        clean.shape, generator=gen
    )
    weights, sigmas = auto_weight(noisy)
    for i in range(2):
        alone_w, alone_s = auto_weight(noisy[i])
        assert float(alone_s[0]) == pytest.approx(float(sigmas[i]), rel=1e-6)
        assert float(alone_w[0]) == pytest.approx(float(weights[i]), rel=1e-6)
    assert float(weights[1]) > float(weights[0])


def test_sure_moves_the_weight_where_the_rule_is_wrong() -> None:
    # A piecewise-constant image wants far more smoothing than a photograph; the rule
    # cannot know that, SURE sees it.
    clean = _cartoon(96, seed=8)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=_generator(9))
    rule, _ = auto_weight(noisy, sigma=0.1, method="rule")
    sure, _ = auto_weight(noisy, sigma=0.1)
    assert float(sure[0]) > 1.3 * float(rule[0])
    psnr_rule = _psnr(solve(noisy, rule).restored, clean)
    psnr_sure = _psnr(solve(noisy, sure).restored, clean)
    assert psnr_sure > psnr_rule + 0.3


def test_photograph_sigma_25_close_to_the_best_weight() -> None:
    clean = _photo("camera", 128)
    noisy = _noisy(clean, 25, seed=0)
    weights, sigmas = auto_weight(noisy)
    assert 255 * float(sigmas[0]) == pytest.approx(25, rel=0.15)
    psnr_auto = _psnr(solve(noisy, weights).restored, clean / 255)
    grid = float(weights[0]) * 2.0 ** (torch.arange(-6, 7) / 4)
    batch = noisy.expand(len(grid), *noisy.shape).contiguous()
    restored = solve(batch, grid).restored.to(torch.float64)
    best = max(_psnr(r, clean / 255) for r in restored)
    noisy_psnr = _psnr(noisy, clean / 255)
    assert psnr_auto > noisy_psnr + 3
    assert psnr_auto >= best - 0.3


@pytest.mark.parametrize("name", ["camera", "astronaut"])
def test_clean_photograph_nearly_unchanged(name: str) -> None:
    clean = _photo(name, 128)
    image = (clean / 255).to(torch.float32)
    weights, sigmas = auto_weight(image)
    assert 255 * float(sigmas[0]) < 5
    restored = solve(image, weights).restored
    assert _psnr(restored, clean / 255) >= 40.0


def test_large_images_are_sampled_by_tiles() -> None:
    image = torch.arange(300 * 410, dtype=torch.float32).reshape(1, 1, 300, 410)
    tiles = auto.sample_tiles(image)
    assert tiles.shape == (1, auto._MAX_TILES, 1, auto._TILE, auto._TILE)
    # The grid reaches all four corners.
    assert float(tiles[0, 0, 0, 0, 0]) == float(image[0, 0, 0, 0])
    assert float(tiles[0, -1, 0, -1, -1]) == float(image[0, 0, -1, -1])
    # An image with no more pixels than the tiles hold is used whole.
    side = math.isqrt(auto._MAX_TILES * auto._TILE**2)
    small = torch.zeros(2, 3, side, side)
    assert auto.sample_tiles(small).shape == (2, 1, 3, side, side)


def test_large_image_weight_matches_its_scaled_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The weight is a per-pixel quantity: an image made of 2x2 copies of a noisy cartoon
    # (sampled by tiles, made small here to keep the test fast) gets about the weight of
    # the cartoon itself (solved whole).
    monkeypatch.setattr(auto, "_TILE", 32)
    monkeypatch.setattr(auto, "_MAX_TILES", 9)
    clean = _cartoon(80, seed=10)
    noisy = clean + 0.06 * torch.randn(clean.shape, generator=_generator(11))
    big = noisy.repeat(1, 2, 2)
    assert auto.sample_tiles(big[None]).shape == (1, 9, 1, 32, 32)
    small_w, _ = auto_weight(noisy, sigma=0.06)
    big_w, _ = auto_weight(big, sigma=0.06)
    assert float(big_w[0]) == pytest.approx(float(small_w[0]), rel=0.25)


# --- clipping -----------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.004, 0.02, 0.2, 1.0])
def test_latent_value_inverts_the_clipped_mean(sigma: float) -> None:
    clean = torch.linspace(0, 1, 1001, dtype=torch.float64) ** 3  # dense near 0
    mean = censored_mean(clean, sigma)
    assert bool((mean.diff() > 0).all())
    assert latent_value(mean, sigma) == pytest.approx(clean, abs=1e-12)
    # float32 in, float32 out, as precise as float32 allows
    single = latent_value(mean.to(torch.float32), sigma)
    assert single.dtype == torch.float32
    assert single.double() == pytest.approx(clean, abs=1e-6)


def test_latent_value_beyond_the_clipped_range_is_0_or_1() -> None:
    # The mean of a clipped clean 0 is above 0 and that of a clean 1 below 1: means
    # outside that range have no clean value, and get the nearer end.
    sigma = 0.1
    low, high = (float(censored_mean(torch.tensor(v), sigma)) for v in (0.0, 1.0))
    means = torch.tensor([-0.5, 0.0, low / 2, (high + 1) / 2, 1.0, 1.5])
    assert latent_value(means, sigma).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_censored_mean_and_clipped_targets_match_sampling() -> None:
    sigma = 0.2
    clean = torch.tensor([0.0, 0.1, 0.5, 0.95], dtype=torch.float64)
    y = clean + sigma * torch.randn(400_000, 4, generator=_generator(12), dtype=torch.float64)
    f = y.clamp(0, 1)
    assert censored_mean(clean, sigma) == pytest.approx(f.mean(0), abs=2e-3)
    assert censored_variance(clean, sigma) == pytest.approx(f.var(0), rel=0.01)
    # Each clipped value is replaced by the mean of the noisy values clipped like it.
    smoothed = censored_mean(clean, sigma).expand_as(f)
    targets = auto._clipped_targets(f[None], smoothed[None], torch.tensor([sigma]))[0]
    for column in range(4):
        for hit in (y[:, column] <= 0, y[:, column] >= 1):
            if int(hit.sum()) > 5000:
                expected = float(y[hit, column].mean())
                assert float(targets[hit, column].mean()) == pytest.approx(expected, abs=2e-3)
    unclipped = (f > 0) & (f < 1)
    assert bool((targets[unclipped] == f[unclipped]).all())


def test_sure_handles_heavily_clipped_images(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flat areas at 4 % and 96 % under noise 0.2 (51/255): about 40 % of the 8-bit
    # values clip. With the clipped values' expectations SURE finds the best weight;
    # taking the clipped values at face value it smooths too much.
    clean = _cartoon(96, seed=1, levels=[0.96, 0.5, 0.04], background=0.04, squares=10)
    noisy = _noisy(255 * clean.to(torch.float64), 0.2 * 255, seed=101)
    grid = 0.2 * 2.0 ** (torch.arange(-6, 10) / 4)
    batch = noisy.expand(len(grid), *noisy.shape).contiguous()
    best = max(_psnr(r, clean.to(torch.float64)) for r in solve(batch, grid).restored)

    def gap() -> float:
        weights, _ = auto_weight(noisy, sigma=0.2)
        return best - _psnr(solve(noisy, weights).restored, clean.to(torch.float64))

    assert gap() < 0.15
    monkeypatch.setattr(auto, "_clipped_targets", lambda f, smoothed, sigma: f)
    assert gap() > 0.2


def test_candidates_solved_in_chunks_equal_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    tiles = torch.rand(3, 2, 20, 17, generator=_generator(13))
    weights = [0.05, 0.1]
    whole = auto.solve_at_weights(tiles, weights, TotalVariation(eps=DEFAULT_EPS))
    monkeypatch.setattr(tiling, "CPU_TILE_VALUES", 2 * 20 * 17 * 2)  # two tiles a chunk
    assert tiling.images_per_batch(torch.Size([6, 2, 20, 17]), torch.device("cpu")) == 2
    chunked = auto.solve_at_weights(tiles, weights, TotalVariation(eps=DEFAULT_EPS))
    assert chunked.shape == (2, 3, 2, 20, 17)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_dark_image_gets_a_good_weight_from_the_estimated_noise() -> None:
    # A dark field (4 levels) with a few grey squares at noise 50/255: 40 % of the values
    # clip at 0, the noise estimate must model that, and SURE then runs on it (given
    # the noise 15 % low, as an estimate ignoring clipping reads it, SURE loses 1.3 dB).
    clean = _cartoon(96, seed=3, levels=[0.5, 0.3], background=4 / 255, squares=3)
    noisy = _noisy(255 * clean.to(torch.float64), 50, seed=14)
    grid = 0.3 * 2.0 ** (torch.arange(-4, 8) / 4)
    batch = noisy.expand(len(grid), *noisy.shape).contiguous()
    best = max(_psnr(r, clean.to(torch.float64)) for r in solve(batch, grid).restored)
    weights, sigmas = auto_weight(noisy)
    assert 255 * float(sigmas[0]) == pytest.approx(50, rel=0.05)
    assert best - _psnr(solve(noisy, weights).restored, clean.to(torch.float64)) < 0.3


def test_polish_finds_a_sharp_minimum_between_grid_points() -> None:
    # A cusp at ``target`` (as the impulse hold-out score has): the coarse parabola
    # misses it by 2-3 % of the weight; the finer second parabola by under 1 %. Four
    # images with their own cusps, searched together.
    targets = torch.tensor([0.83, 1.05, 1.17, 1.4], dtype=torch.float64)

    def risk(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (weights / targets[images]).log().abs().sqrt()

    rules = torch.ones(4)
    coarse = (auto.refine_weights(risk, rules) / targets).log().abs()
    polished = (auto.refine_weights(risk, rules, polish=True) / targets).log().abs()
    assert bool((polished < 0.01).all()) and bool((polished < 0.6 * coarse).all())


def _record_solves(
    monkeypatch: pytest.MonkeyPatch, *modules: object
) -> list[tuple[int, int, float]]:
    """Patch ``solve_pairs`` in ``modules`` to note (images solved together, channels,
    weight) of every (group, weight) pair solved."""
    solved: list[tuple[int, int, float]] = []
    real = auto.solve_pairs

    def noted(groups: torch.Tensor, weights: torch.Tensor, *args: object, **kw: object) -> object:
        solved.extend((groups.shape[1], groups.shape[2], w) for w in weights.tolist())
        return real(groups, weights, *args, **kw)  # type: ignore[arg-type]

    for module in modules:
        monkeypatch.setattr(module, "solve_pairs", noted)
    return solved


def test_clipped_image_search_solves_every_weight_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The clipped values' targets are read from the rule's candidate, which the search
    # solves anyway: no solve apart from the candidates (the image and its probed copies),
    # and no weight twice.
    clean = _cartoon(40, seed=12, levels=[0.02, 0.97], background=0.5)
    noisy = _noisy(255 * clean.to(torch.float64), 30, seed=3)
    assert bool((noisy == 0).any() and (noisy == 1).any())
    solved = _record_solves(monkeypatch, auto)
    auto_weight(noisy, sigma=30 / 255)
    assert len(solved) >= 3
    assert {count for count, _, _ in solved} == {1 + auto._PROBES}
    assert len({w for _, _, w in solved}) == len(solved)


def test_sure_scores_solves_once_the_targets_are_set() -> None:
    # Solving first and setting the targets later scores exactly as targets given at once.
    tiles = _noisy(255 * _cartoon(24, seed=4).to(torch.float64)[None], 20, seed=5)[None]
    sigma, reg = torch.tensor([20 / 255]), TotalVariation(eps=DEFAULT_EPS)
    probe = auto.probes(tiles[0], 2)

    def sure(targets: torch.Tensor | None) -> auto.ProbedSure:
        scored = torch.ones_like(tiles, dtype=torch.bool)
        return auto.ProbedSure(
            tiles,
            0.01 * float(sigma) * probe[None],
            probe.double() * auto.per_probe(scored, 2),
            sigma,
            reg,
            targets=targets,
            count=torch.tensor([tiles[0].numel()]),
            missing=None,
            clip=True,
            offset=-sigma.double().square(),
        )

    images, weights = torch.zeros(2, dtype=torch.long), torch.tensor([0.05, 0.08]).double()
    at_once = sure(tiles.double())(images, weights)
    later = sure(None)
    solved = later.solve(images, weights)
    later.set_targets(tiles.double())
    assert torch.equal(later.score(images, solved), at_once)
    # The risk at a weight is the residual and divergence terms of that weight's result.
    assert float(at_once[0]) != float(at_once[1])


def test_first_request_of_a_search_holds_every_rule() -> None:
    # A risk estimate reads the clipping targets from the results at the rules in the
    # first request (results_at_rules): every image's rule must be in it, exactly.
    targets = torch.tensor([0.5, 1.0, 1.6, 3.0], dtype=torch.float64)
    rules = torch.tensor([1.0, 0.7, 2.0, 1.0], dtype=torch.float64)
    asked: list[tuple[torch.Tensor, torch.Tensor]] = []

    def risk(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        asked.append((images, weights))
        return (weights / targets[images]).log().square()

    found = auto.refine_weights(risk, rules)
    images, weights = asked[0]
    solved = weights.reshape(-1, 1, 1) * torch.ones(len(weights), 2, 3)
    at_rules = auto.results_at_rules(images, weights, rules, solved, 1)
    assert at_rules[:, 0, 0].tolist() == rules.tolist()
    assert found[:3] == pytest.approx(targets[:3], rel=0.02)
    assert float(found[3]) == pytest.approx(2.0, rel=1e-12)  # the grid ends at rule * 2
    without = ~((images == 1) & (weights == rules[1]))
    with pytest.raises(RuntimeError, match="every image's rule"):
        auto.results_at_rules(images[without], weights[without], rules, solved[without], 1)
