"""ALFI's machine in parts: the Gauss–Newton step's weighting and what it matches."""

import pytest
import torch

from sbi_alfi.alfi.network import (
    CORRELATION_SHRINKAGE,
    RecurrentMachine,
    gauss_newton_step,
    local_indicators,
)

LEVELS = torch.arange(1, 10, dtype=torch.float64) / 10


def quantile_shares(seed, num_sets=4_000, num_draws=200, points=5_000, n=500):
    r"""Gauss–Newton steps on the shares of Laplace draws (b = 1) below their
    9 deciles, to first order: shares linear in the location with slopes the
    density there and multinomial noise, the proposal's scale the median's
    standard error, so that a step's variance in units of that scale is the
    median's efficiency over the step's (the median is the MLE)."""
    g = torch.Generator().manual_seed(seed)
    cov = torch.minimum(LEVELS[:, None], LEVELS) - LEVELS[:, None] * LEVELS
    noise = torch.linalg.cholesky(cov).T
    slope = torch.minimum(LEVELS, 1 - LEVELS) / n**0.5
    u = torch.randn(num_sets, num_draws, 1, generator=g, dtype=torch.float64)
    e = -slope * u + torch.randn(num_sets, num_draws, 9, generator=g).double() @ (
        noise / points**0.5
    )
    e_o = torch.randn(num_sets, 9, generator=g).double() @ noise / n**0.5
    sd = cov.diagonal().sqrt()
    correlation = (1 - CORRELATION_SHRINKAGE) * cov / sd[:, None] / sd
    correlation = correlation + CORRELATION_SHRINKAGE * torch.eye(9).double()
    return u, e, e_o, correlation.expand(num_sets, 9, 9)


def test_the_correlated_weighting_reaches_the_medians_efficiency(seed, figure):
    # Theory: 1.006 with the shrunk correlation, 1.24 weighting each share by
    # its own variance alone (20 seeds, benchmarks/results/seeds-alfi: at most
    # 1.05, and at least 1.20).
    u, e, e_o, correlation = quantile_shares(seed)
    delta, _ = gauss_newton_step(u, e, e_o, correlation)
    figure.at_most("variance over the median's", delta.square().mean(), 1.12)
    delta, _ = gauss_newton_step(u, e, e_o)
    figure.at_least(
        "variance over the median's",
        delta.square().mean(),
        1.12,
        planted="diagonal weighting",
    )


@pytest.mark.parametrize("pooling", ["mean", "mean_sd"])
def test_the_noise_correlation_of_pooled_gaussian_features(pooling, figure):
    # Means of Gaussian features correlate as the features do; their standard
    # deviations as the squares of those correlations, and not with the means.
    machine = RecurrentMachine(1, torch.Size([1]), pooling=pooling)
    rho = torch.tensor([[1.0, 0.8, -0.5], [0.8, 1.0, -0.2], [-0.5, -0.2, 1.0]])
    points = torch.randn(1, 400, 64, 3) @ torch.linalg.cholesky(rho).T * 3 + 1
    found = machine.noise_correlation(points)[0]
    eye = torch.eye(len(found))
    found = (found - eye) / (1 - CORRELATION_SHRINKAGE) + eye
    expected = rho if pooling == "mean" else torch.block_diag(rho, rho.square())
    figure.at_most("largest error of a correlation", (found - expected).abs(), 0.06)
    # Linear combinations of the pooled features (`match_features`): theirs,
    # from the influences' covariance (a standard deviation's has half the
    # variance of a mean's, for Gaussian features).
    projection = torch.randn(2, len(expected))
    found = machine.noise_correlation(points, projection=projection)[0]
    found = (found - eye[:2, :2]) / (1 - CORRELATION_SHRINKAGE) + eye[:2, :2]
    sd = torch.tensor([1.0, 1.0, 1.0, 0.5**0.5, 0.5**0.5, 0.5**0.5])[: len(expected)]
    cov = projection @ (sd[:, None] * expected * sd) @ projection.T
    expected = cov / cov.diagonal().sqrt()[:, None] / cov.diagonal().sqrt()
    figure.at_most("largest error of a correlation", (found - expected).abs(), 0.06)


def test_local_indicators():
    x = torch.randn(2, 20, 50, 1)
    x_o = torch.randn(2, 500, 1) * 3  # wider than the simulations
    below, below_o = local_indicators(x, x_o, 9)
    assert below.shape == (2, 20, 50, 9) and below_o.shape == (2, 500, 9)
    # The simulations' own quantiles: shares at the levels, up to interpolation.
    shares = below.mean((1, 2))
    assert torch.allclose(shares, LEVELS.float().expand(2, 9), atol=2e-3)
    # The wider observed data: more mass beyond the outer quantiles (a third,
    # 6 standard errors beyond 0.2).
    shares_o = below_o.mean(1)
    assert (shares_o[:, 0] > 0.2).all() and (shares_o[:, -1] < 0.8).all()
    # Ties count one half: a point mass lies half below each of its quantiles.
    tied, tied_o = local_indicators(torch.ones(1, 2, 3, 1), torch.ones(1, 4, 1), 9)
    assert (tied == 0.5).all() and (tied_o == 0.5).all()


def test_bad_matching_options():
    with pytest.raises(ValueError, match="`weighting` must be"):
        RecurrentMachine(1, torch.Size([1]), weighting="full")
    with pytest.raises(ValueError, match="`local_quantiles` must be an integer"):
        RecurrentMachine(1, torch.Size([1]), local_quantiles=-1)
    with pytest.raises(ValueError, match="`match_features` must be an integer"):
        RecurrentMachine(1, torch.Size([1]), match_features=2.5)


def test_pooling_a_constant_feature_has_a_finite_gradient():
    # A few equal Poisson counts give a feature no spread over the set: its
    # standard deviation's gradient must stay finite (it was NaN in 2 of 20
    # seeds of meta-training).
    machine = RecurrentMachine(1, torch.Size([1]))
    e = torch.ones(2, 10, 3, requires_grad=True)
    machine.pool(e).sum().backward()
    assert torch.isfinite(e.grad).all()
