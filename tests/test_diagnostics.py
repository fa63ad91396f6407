"""Diagnostics of trust, on posteriors whose calibration is known."""

import pytest
import torch
from sbi.utils import BoxUniform
from torch import nn

from sbi_alfi import RatioMCMCPosterior
from sbi_alfi.diagnostics import expected_coverage

NOISE = 0.5  # x | theta ~ N(theta, NOISE^2)


class ScaledRatio(nn.Module):
    """The exact log-likelihood times `scale`: 1 is exact, 4 halves the
    posterior's width (overconfident), 0.25 doubles it (conservative)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, theta, x):
        return -0.5 * self.scale * ((x - theta) / NOISE).square().sum(-1)


def coverage_of(scale: float, num_pairs: int = 300):
    torch.manual_seed(0)
    prior = BoxUniform(-3 * torch.ones(1), 3 * torch.ones(1))
    posterior = RatioMCMCPosterior(
        ScaledRatio(scale),
        prior,
        method="mh_vectorized",
        num_chains=20,
        warmup_steps=100,
        thin=5,
        show_progress_bars=False,
    )
    theta = prior.sample((num_pairs,))
    x = theta + NOISE * torch.randn_like(theta)
    return expected_coverage(posterior, theta, x, num_posterior_samples=500)


def test_exact_posterior_covers_at_every_level():
    result = coverage_of(1.0)
    assert result.coverage.shape == result.levels.shape == (49,)
    assert (result.lower <= result.coverage).all()
    assert (result.coverage <= result.upper).all()
    # 300 pairs: the binomial sd is at most 0.03.
    assert (result.coverage - result.levels).abs().max() < 0.08
    assert result.credibility.shape == (300,)


@pytest.mark.parametrize("scale, side", [(4.0, "below"), (0.25, "above")])
def test_miscalibrated_posteriors_leave_the_diagonal(scale, side):
    result = coverage_of(scale)
    gap = result.coverage - result.levels
    # The exact curve: the region of level g is |theta - mean| < q_g sd / sqrt(scale),
    # with q_g the two-sided Gaussian quantile, so it holds the truth with
    # probability P(|Z| < q_g / sqrt(scale)) (the box's edges aside).
    normal = torch.distributions.Normal(0.0, 1.0)
    quantile = normal.icdf(0.5 + result.levels / 2)
    expected = 2 * normal.cdf(quantile / scale**0.5) - 1
    assert (result.coverage - expected).abs().max() < 0.1
    middle = gap[(result.levels >= 0.2) & (result.levels <= 0.9)]
    if side == "below":
        assert middle.max() < 0 and gap.min() < -0.2
    else:
        assert middle.min() > 0 and gap.max() > 0.2


def test_coverage_rejects_bad_input():
    posterior = RatioMCMCPosterior(
        ScaledRatio(), BoxUniform(-torch.ones(1), torch.ones(1))
    )
    with pytest.raises(ValueError, match="must be N pairs"):
        expected_coverage(posterior, torch.zeros(5, 1), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"`levels` must lie in \(0, 1\)"):
        expected_coverage(posterior, torch.zeros(5, 1), torch.zeros(5, 1), [0.5, 1])
