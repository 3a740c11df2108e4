"""The clipped-noise formulas of tvdenoise.clipping against sampling."""

from __future__ import annotations

import pytest
import torch

from tvdenoise.clipping import (
    censored_mean,
    clipped_count_mean,
    latent_rate,
    sample_clipped_counts,
    variance_share,
)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_variance_share_matches_sampling(sigma: float) -> None:
    clean = torch.tensor([-0.1, 0.0, 0.05, 0.5, 0.97], dtype=torch.float64)
    y = clean + sigma * torch.randn(200_000, 5, generator=_generator(1), dtype=torch.float64)
    f = y.clamp(0, 1)
    shares = variance_share(censored_mean(clean, sigma), sigma)
    assert shares == pytest.approx(f.var(0) / sigma**2, abs=0.01)
    # A mean below that of a clean 0 still has a share of its own (below 1/2 - 1/(2 pi)).
    assert float(shares[0]) < 0.33


def test_clipped_counts_match_the_poisson_law() -> None:
    peak = 10.0
    rates = torch.tensor([2.0, 8.0, 12.0], dtype=torch.float64)
    counts = torch.poisson(rates.expand(200_000, 3).contiguous(), generator=_generator(2))
    stored = (counts / peak).clamp(max=1)
    assert clipped_count_mean(rates, peak) == pytest.approx(stored.mean(0), abs=3e-3)
    inverted = latent_rate(clipped_count_mean(rates, peak), peak)
    assert inverted == pytest.approx([2.0, 8.0, peak], rel=1e-6)  # clean values <= 1
    # Counts drawn given the clipping follow the Poisson law above full scale.
    for column in (1, 2):
        above = counts[:, column][counts[:, column] >= peak]
        drawn = sample_clipped_counts(
            torch.full((50_000,), float(rates[column]), dtype=torch.float64), peak, _generator(3)
        )
        assert bool((drawn >= peak).all())
        assert float(drawn.mean()) == pytest.approx(float(above.mean()), abs=0.05)
        assert float(drawn.var()) == pytest.approx(float(above.var()), rel=0.05)


def test_latent_rate_stays_within_full_scale() -> None:
    ends = latent_rate(torch.tensor([0.0, 1.0], dtype=torch.float64), 10.0)
    assert ends.tolist() == pytest.approx([0.0, 10.0], abs=1e-9)
