"""Tests of TV in the opponent colour space: the transform, the exact split into a
brightness and a colour problem, the weights per component, the default and bad options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tvdenoise import denoise, restore, total_variation
from tvdenoise.colour import (
    CHROMA_GAIN,
    CHROMA_RATIO,
    from_opponent,
    opponent_matrix,
    opponent_weights,
    to_opponent,
)
from tvdenoise.fidelity import data_term
from tvdenoise.solver import DEFAULT_EPS, Iteration, run_solver
from tvdenoise.tv import TotalVariation

from helpers import ATOL, add_noise, psnr, run_cli, write_image


def _scene(height: int, width: int) -> torch.Tensor:
    """A (3, H, W) image whose structure is in brightness (a checker of blobs) and whose
    colour varies slowly (a gentle tint), as in photographs."""
    y = torch.linspace(0, 1, height).reshape(-1, 1)
    x = torch.linspace(0, 1, width).reshape(1, -1)
    bright = 0.35 + 0.3 * ((torch.sin(12 * x) * torch.cos(9 * y)) > 0).float()
    zero = 0 * x * y
    tint = torch.stack([0.08 * (x - 0.5) + zero, 0.06 * (y - 0.5) + zero, -0.07 * (x + y - 1)])
    return (bright + tint).clamp(0, 1)


def _mid_grey(seed: int, shape: tuple[int, ...] = (3, 23, 19)) -> torch.Tensor:
    """Values in [0.35, 0.65]: the restored images stay inside [0, 1], so nothing clips."""
    gen = torch.Generator().manual_seed(seed)
    return 0.35 + 0.3 * torch.rand(shape, generator=gen, dtype=torch.float64)


def test_opponent_matrix_is_orthonormal_with_brightness_first() -> None:
    o = opponent_matrix()
    assert torch.allclose(o @ o.T, torch.eye(3, dtype=torch.float64), atol=ATOL[torch.float64])
    # Grey has no colour: only the brightness row sees it.
    grey = o @ torch.ones(3, dtype=torch.float64)
    assert grey.tolist() == pytest.approx([3**0.5, 0.0, 0.0], abs=1e-12)


def test_round_trip_and_missing_values() -> None:
    x = _mid_grey(0, (2, 3, 9, 7))
    assert torch.allclose(from_opponent(to_opponent(x)), x, atol=ATOL[torch.float64])
    x[0, 1, 4, 2] = float("nan")
    y = to_opponent(x)
    assert bool(torch.isnan(y[0, :, 4, 2]).all())  # missing in one channel: in all three
    assert int(torch.isnan(y).sum()) == 3


def test_components_are_solved_apart() -> None:
    """The exact split: each opponent component is the solve of its own problem, and the
    other component's weight does not change it."""
    f = _mid_grey(1)
    reg, term = TotalVariation(eps=DEFAULT_EPS), data_term("gaussian")
    opponent = to_opponent(f[None])
    alone = [
        run_solver(opponent[:, part].contiguous(), w, reg, term, Iteration(), clip=False).restored
        for part, w in ((slice(0, 1), 0.05), (slice(1, 3), 0.2))
    ]
    result = to_opponent(restore(f, 0.05, chroma_weight=0.2, color="opponent").restored)
    assert torch.allclose(result[:, :1], alone[0], atol=1e-10)
    assert torch.allclose(result[:, 1:], alone[1], atol=1e-10)
    other = to_opponent(restore(f, 0.05, chroma_weight=0.4, color="opponent").restored)
    assert torch.allclose(other[:, :1], result[:, :1], atol=ATOL[torch.float64])
    assert not torch.allclose(other[:, 1:], result[:, 1:])


def test_energy_is_the_opponent_energy() -> None:
    f = _mid_grey(2)
    result = restore(f, 0.05, chroma_weight=0.2, color="opponent")
    u = result.restored
    parts = to_opponent(u)
    tv = 0.05 * total_variation(
        parts[:, :1], eps=DEFAULT_EPS, reduction="sum"
    ) + 0.2 * total_variation(parts[:, 1:], eps=DEFAULT_EPS, reduction="sum")
    expected = (u - f).square().mean() + tv / f.numel()
    assert float(result.energy[0]) == pytest.approx(float(expected), rel=1e-9)


def test_volumes_split_the_same_way() -> None:
    f = _mid_grey(8, (3, 5, 9, 8))
    reg, term = TotalVariation(eps=DEFAULT_EPS, spatial_dims=3), data_term("gaussian")
    brightness = to_opponent(f[None])[:, :1].contiguous()
    alone = run_solver(brightness, 0.05, reg, term, Iteration(), clip=False).restored
    result = denoise(f, 0.05, spatial_dims=3)  # opponent, the default for three channels
    assert torch.allclose(to_opponent(result[None])[:, :1], alone, atol=1e-10)


def test_fixed_weights_per_component() -> None:
    f = _mid_grey(3, (2, 3, 17, 15)).float()
    ratio = restore(f, 0.1, color="opponent")
    assert ratio.weights.tolist() == pytest.approx([0.1, 0.1])
    assert ratio.chroma_weights is not None
    assert ratio.chroma_weights.tolist() == pytest.approx([0.1 * CHROMA_RATIO] * 2)
    given = restore(f, [0.1, 0.2], chroma_weight=[0.3, 0.0], color="opponent")
    assert given.chroma_weights is not None
    assert given.chroma_weights.tolist() == pytest.approx([0.3, 0.0])
    # Colour weight 0 keeps the data's colour exactly.
    colour = to_opponent(given.restored[1:])[:, 1:]
    assert torch.allclose(colour, to_opponent(f[1:])[:, 1:], atol=ATOL[torch.float32])


def test_opponent_beats_joint_on_a_colour_image() -> None:
    clean = _scene(41, 37)
    noisy = add_noise(clean, 0.1, seed=1)
    joint = restore(noisy, color="joint")
    opponent = restore(noisy)  # the default for RGB and Gaussian noise
    assert opponent.chroma_weights is not None
    # Slowly varying colour wants a much larger colour weight than brightness does.
    assert float(opponent.chroma_weights[0]) > 1.5 * float(opponent.weights[0])
    assert psnr(opponent.restored[0], clean) > psnr(joint.restored[0], clean) + 1.0


def test_automatic_weights_follow_each_component() -> None:
    """A grey image has no colour to keep: its colour weight is the largest searched;
    tinting it changes the brightness weight by no more than the search's resolution."""
    clean = _scene(41, 37)
    grey = clean.mean(0, keepdim=True).expand(3, -1, -1)
    noisy = add_noise(grey, 0.1, seed=4)
    light, colour, sigmas = opponent_weights(noisy[None], TotalVariation(eps=DEFAULT_EPS))
    rule_light, rule_colour, _ = opponent_weights(
        noisy[None], TotalVariation(eps=DEFAULT_EPS), method="rule"
    )
    assert float(colour[0]) >= float(rule_colour[0])
    assert float(light[0]) < float(colour[0])
    assert float(sigmas[0]) == pytest.approx(0.1, rel=0.15)
    assert rule_light.tolist() != light.tolist()  # SURE refined it


def test_default_colour_mode() -> None:
    rgb = _mid_grey(5).float()
    assert torch.equal(denoise(rgb, 0.1), denoise(rgb, 0.1, color="opponent"))
    for image in (rgb[:1], _mid_grey(6, (4, 23, 19)).float()):
        assert torch.equal(denoise(image, 0.1), denoise(image, 0.1, color="joint"))
    # Impulse and photon noise keep the joint RGB total variation.
    for noise in ("impulse", "poisson"):
        assert torch.equal(
            denoise(rgb, 0.5, noise=noise),  # type: ignore[arg-type]
            denoise(rgb, 0.5, noise=noise, color="joint"),  # type: ignore[arg-type]
        )


def test_partly_missing_pixels_keep_joint_by_default() -> None:
    rgb = _mid_grey(9).float()
    partly = rgb.clone()
    partly[1, 4, 5] = float("nan")  # one channel of one pixel
    assert torch.equal(denoise(partly, 0.1), denoise(partly, 0.1, color="joint"))
    # Asked for, opponent treats the pixel as missing in all three channels and fills it.
    assert not bool(torch.isnan(denoise(partly, 0.1, color="opponent")).any())
    whole = rgb.clone()
    whole[:, 4, 5] = float("nan")  # a whole pixel: opponent loses nothing
    restored = denoise(whole, 0.1)
    assert torch.equal(restored, denoise(whole, 0.1, color="opponent"))
    assert not bool(torch.isnan(restored).any())


def test_chroma_weight_ignored_where_auto_is_joint() -> None:
    grey = _mid_grey(7, (1, 23, 19)).float()
    assert torch.equal(denoise(grey, 0.1, chroma_weight=0.5), denoise(grey, 0.1))


@pytest.mark.parametrize(
    ("image", "options", "message"),
    [
        ((1, 9, 9), {"color": "opponent"}, "color='opponent' needs 3 channels"),
        ((4, 9, 9), {"color": "opponent"}, "got 4"),
        ((3, 9, 9), {"color": "opponent", "noise": "impulse"}, "needs noise='gaussian'"),
        ((3, 9, 9), {"color": "opponent", "noise": "poisson"}, "noise='poisson'"),
        ((3, 9, 9), {"color": "joint", "chroma_weight": 0.2}, "chroma_weight applies"),
        ((3, 9, 9), {"color": "separate", "chroma_weight": 0.2}, "chroma_weight applies"),
        ((3, 9, 9), {"chroma_weight": -0.2}, "chroma_weight must be"),
        ((3, 9, 9), {"chroma_weight": float("nan")}, "chroma_weight must be"),
        ((2, 3, 9, 9), {"chroma_weight": [0.1, 0.2, 0.3]}, "chroma_weight must be one"),
        ((3, 9, 9), {"color": "hsv"}, "color must be one of auto, joint"),
    ],
)
def test_bad_options(image: tuple[int, ...], options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        denoise(torch.full(image, 0.5), 0.1, **options)  # type: ignore[arg-type]


def test_cli_opponent_and_chroma_weight(tmp_path: Path) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    out = tmp_path / "out.png"
    result = run_cli(noisy, "-o", out, "--color", "opponent", "--weight", "0.1", "--max-iter", "6")
    assert result.exit_code == 0, result.output
    assert out.exists()
    again = tmp_path / "again.png"
    result = run_cli(noisy, "-o", again, "--weight", "0.1", "--chroma-weight", "0.3")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--color", "joint", "--chroma-weight", "0.3"], "--chroma-weight applies"),
        (["--color", "opponent", "--noise", "poisson"], "--color opponent needs"),
        (["--chroma-weight", "-1"], "--chroma-weight"),
    ],
)
def test_cli_bad_colour_options(tmp_path: Path, options: list[str], message: str) -> None:
    noisy = write_image(tmp_path / "noisy.png")
    result = run_cli(noisy, "-o", tmp_path / "out.png", *options)
    assert result.exit_code != 0
    assert message in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_automatic_weights_alone_equal_in_a_batch() -> None:
    clean = torch.stack([_scene(40, 44), _scene(40, 44).flip(-1)])
    noisy = torch.stack([add_noise(clean[0], 0.08, seed=6), add_noise(clean[1], 0.15, seed=7)])
    reg = TotalVariation(eps=DEFAULT_EPS)
    light, colour, sigmas = opponent_weights(noisy, reg)
    for i in range(2):
        alone = opponent_weights(noisy[i : i + 1], reg)
        assert [float(a[0]) for a in alone] == pytest.approx(
            [float(light[i]), float(colour[i]), float(sigmas[i])], rel=1e-6
        )


def test_clipped_image_search_solves_every_weight_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The clipping targets come from both components' candidates at their rules: no
    # other solve, and no weight of a component solved twice.
    import tvdenoise.auto as auto
    import tvdenoise.colour as colour

    noisy = add_noise(_scene(36, 40) * 1.6 - 0.3, 0.12, seed=8)
    assert bool((noisy == 0).any() and (noisy == 1).any())
    solved: list[tuple[int, int, float]] = []
    real = auto.solve_pairs

    def noted(groups: torch.Tensor, weights: torch.Tensor, *args: object, **kw: object) -> object:
        solved.extend((groups.shape[1], groups.shape[2], w) for w in weights.tolist())
        return real(groups, weights, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(auto, "solve_pairs", noted)
    monkeypatch.setattr(colour, "solve_pairs", noted)
    opponent_weights(noisy[None], TotalVariation(eps=DEFAULT_EPS), sigma=0.12)
    assert {count for count, _, _ in solved} == {1 + colour._PROBES}
    for channels in (1, 2):
        weights = [w for _, c, w in solved if c == channels]
        assert len(weights) >= 3 and len(set(weights)) == len(weights)


def test_automatic_weights_close_to_the_best_pair() -> None:
    # Against the best weights of each component on a grid (ratio 2**(1/4)), judged by
    # the error of the RGB result.
    clean = _scene(48, 52)
    noisy = add_noise(clean, 0.1, seed=9)
    light, colour, _ = opponent_weights(noisy[None], TotalVariation(eps=DEFAULT_EPS), sigma=0.1)

    def quality(w_light: float, w_colour: float) -> float:
        restored = restore(noisy, w_light, chroma_weight=w_colour, color="opponent").restored
        return psnr(restored[0], clean)

    grid = [0.1 * 2.0 ** (k / 4) for k in range(-6, 12)]
    best_light = max(grid, key=lambda w: quality(w, float(colour[0])))
    best_colour = max(grid, key=lambda w: quality(best_light, w))
    best = quality(best_light, best_colour)
    assert quality(float(light[0]), float(colour[0])) > best - 0.1


def test_brightness_weight_alone_matches_the_full_search_on_a_clipped_image() -> None:
    # With the colour weight given, the colour result at its rule is still needed for the
    # clipped values' targets (solved alone then); the brightness weight is the same.
    noisy = add_noise(_scene(36, 40) * 1.6 - 0.3, 0.12, seed=10)
    assert bool((noisy == 0).any() and (noisy == 1).any())
    reg = TotalVariation(eps=DEFAULT_EPS)
    light, colour, _ = opponent_weights(noisy[None], reg, sigma=0.12)
    alone, rule_colour, _ = opponent_weights(noisy[None], reg, sigma=0.12, colour=False)
    assert float(alone[0]) == pytest.approx(float(light[0]), rel=0.01)
    assert float(rule_colour[0]) == pytest.approx(CHROMA_GAIN * 0.12, rel=1e-6)
    assert float(colour[0]) != float(rule_colour[0])
