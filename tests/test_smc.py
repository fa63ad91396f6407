"""Tempered SMC: exact draws and evidence on a Gaussian, the weights of unequal
modes, the evidence check of a learned ratio, and bad arguments."""

import math
import re
import warnings

import pytest
import torch
from sbi.utils import BoxUniform
from sbi.utils.metrics import c2st
from torch.distributions import MultivariateNormal, Normal

from sbi_alfi import RatioMCMCPosterior
from sbi_alfi.samplers.smc import next_temperature, smc

DIM, NOISE = 3, 0.5
X_O = torch.tensor([1.0, -0.5, 2.0])


def log_prior(z, groups=None):
    return MultivariateNormal(torch.zeros(DIM), torch.eye(DIM)).log_prob(z)


def log_likelihood(z, groups=None):
    return Normal(z, NOISE).log_prob(X_O).sum(-1)


def test_smc_draws_a_gaussian_posterior_and_its_evidence(figure):
    # Conjugate: the posterior is N(v x / s^2, v I), v = 1 / (1 + 1 / s^2), and
    # the evidence N(x; 0, (1 + s^2) I). Over 20 seeds: C2ST at most 0.508, the
    # log-evidence within 0.06; without moves (resampled prior draws alone) C2ST
    # at least 0.617 (benchmarks/results/seeds-smc).
    variance = 1 / (1 + 1 / NOISE**2)
    exact = MultivariateNormal(variance * X_O / NOISE**2, variance * torch.eye(DIM))
    log_evidence = MultivariateNormal(
        torch.zeros(DIM), (1 + NOISE**2) * torch.eye(DIM)
    ).log_prob(X_O)
    result = smc(log_prior, log_likelihood, torch.randn(4_000, DIM))
    assert result.position.shape == (4_000, DIM)
    assert result.num_steps.item() > 1 and 0.1 < result.acceptance_rate.item() < 0.5
    draws = result.position[torch.randperm(4_000)[:2_000]]
    truth = exact.sample((2_000,))
    figure.at_most("c2st", c2st(draws, truth, classifier="mlp"), 0.55)
    figure.at_most(
        "|log evidence error|", (result.log_evidence - log_evidence).abs(), 0.15
    )
    still = smc(log_prior, log_likelihood, torch.randn(4_000, DIM), 1, 0.9, 0, 0)
    draws = still.position[torch.randperm(4_000)[:2_000]]
    figure.at_least("c2st", c2st(draws, truth, classifier="mlp"), 0.55, "no moves")


CENTRES = torch.tensor([[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]])


def mixture_ratio(weights):
    """The log-likelihood of a planted four-mode mixture in [-3, 3]^2, with the
    uniform prior's evidence (1/36) divided out, so that it integrates to 1."""

    def log_ratio(theta, x):
        log_p = Normal(CENTRES[:, None], 0.15).log_prob(theta[None]).sum(-1)
        return (log_p + weights.log()[:, None]).logsumexp(0) + math.log(36)

    return log_ratio


def shares(draws):
    nearest = (draws[:, None] - CENTRES[None]).norm(dim=-1).argmin(1)
    return nearest.bincount(minlength=4) / len(draws)


def test_smc_weighs_unequal_modes(figure):
    # Local chains keep the modes' shares their initialization gave them; SMC's
    # resampling moves particles between modes. Over 20 seeds every share was
    # within 0.028 of its weight (median 0.013), with the default 4,000
    # particles in 10 islands; with equal weights planted, 0.137 off at least
    # (benchmarks/results/seeds-nested).
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    prior = BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
    posterior = RatioMCMCPosterior(
        mixture_ratio(weights), prior, "smc_vectorized", show_progress_bars=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a correct ratio: no evidence warning
        draws = posterior.sample((2_000,), x=torch.zeros(2))
    assert draws.shape == (2_000, 2) and len(torch.unique(draws, dim=0)) > 1_900
    figure.at_most("|share - weight|", (shares(draws) - weights).abs(), 0.08)
    assert abs(posterior.diagnostics["log_evidence"].item()) < 0.1
    # The islands' ESS, set against the draws returned as the chains' is (the
    # warning fires below 10 %): 1.28 or more in the seed sweep
    # (benchmarks/results/seeds-mixture).
    ess = posterior.diagnostics["nested_ess"].min() / 2_000
    figure.at_least("islands' nested ESS / draws", ess, 0.1)
    # Negative control: no Metropolis moves, so resampling copies a few
    # particles over and over: all 4,000 particles returned are worth 35 to 182
    # draws (seeds 0-9 of the example's run), and the warning fires.
    stuck = RatioMCMCPosterior(
        mixture_ratio(weights),
        prior,
        "smc_vectorized",
        show_progress_bars=False,
        kernel_kwargs={"num_moves": 0, "min_moves": 0},
    )
    with pytest.warns(UserWarning, match="SMC's islands disagree: nested R-hat"):
        stuck.sample((4_000,), x=torch.zeros(2))
    ess = stuck.diagnostics["nested_ess"].min() / 4_000
    figure.at_most("islands' nested ESS / draws", ess, 0.1, "no moves")
    # Negative control: the modes' weights all 1/4.
    equal = RatioMCMCPosterior(
        mixture_ratio(torch.full((4,), 0.25)), prior, "smc_vectorized"
    )
    draws = equal.sample((2_000,), x=torch.zeros(2), show_progress_bars=False)
    planted = (shares(draws) - weights).abs().max()
    figure.at_least("|share - weight|", planted, 0.08, "equal weights")


class ScaledRatio(torch.nn.Module):
    """The exact log-ratio of x ~ N(theta, NOISE^2) under the N(0, I) prior,
    plus `offset`: a ratio `exp(offset)` times too large."""

    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.offset = offset

    def forward(self, theta, x):
        marginal = Normal(0.0, (1 + NOISE**2) ** 0.5).log_prob(x).sum(-1)
        return Normal(theta, NOISE).log_prob(x).sum(-1) - marginal + self.offset


def test_smc_checks_the_ratios_normalization():
    prior = MultivariateNormal(torch.zeros(DIM), torch.eye(DIM))
    posterior = RatioMCMCPosterior(ScaledRatio(), prior, "smc_vectorized")
    x = torch.stack([X_O, -X_O, torch.zeros(DIM)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        draws = posterior.sample_batched((100,), x=x, show_progress_bars=False)
    assert draws.shape == (100, 3, DIM)
    assert torch.allclose(draws.mean(0), 0.8 * x, atol=0.15)  # v / s^2 = 0.8
    log_evidence = posterior.diagnostics["log_evidence"]
    assert log_evidence.shape == (3,) and (log_evidence.abs() < 0.1).all()
    assert posterior.chains.shape == (3, 10, 400, DIM)  # 10 islands of 400
    # Three times too large: E_prior[r] = 3, beyond the factor of 2.
    scaled = RatioMCMCPosterior(ScaledRatio(math.log(3)), prior, "smc_vectorized")
    with pytest.warns(UserWarning, match=r"evidence E_prior\[r\(x\|theta\)\] is ") as w:
        scaled.sample((100,), x=X_O, show_progress_bars=False)
    said = float(re.search(r"is ([0-9.]+) for", str(w[0].message)).group(1))
    assert abs(said - 3) <= 0.2  # printed to one decimal
    assert abs(scaled.diagnostics["log_evidence"].item() - math.log(3)) < 0.1
    # Two i.i.d. rows: E_prior[r(x1) r(x2)] is not 1, nothing to check.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled.sample((100,), x=torch.stack([X_O, X_O]), show_progress_bars=False)


def test_the_next_temperature_keeps_the_ess_aimed_for():
    log_likelihood = torch.randn(2, 1_000) * torch.tensor([[1.0], [100.0]])
    beta = torch.tensor([0.0, 0.5])
    delta = next_temperature(log_likelihood, beta, 0.5)
    log_w = delta[:, None] * log_likelihood
    ess = (2 * log_w.logsumexp(-1) - (2 * log_w).logsumexp(-1)).exp() / 1_000
    assert torch.allclose(ess, torch.tensor([0.5, 0.5]), atol=1e-4)
    # A flat likelihood reaches 1 at once.
    flat = next_temperature(torch.zeros(2, 10), beta, 0.5)
    assert torch.equal(flat, torch.tensor([1.0, 0.5]))


def test_a_group_that_is_done_drops_out_of_the_calls(figure):
    # Group 0's likelihood is flat: it reaches temperature 1 at once, and its
    # particles are not evaluated again; group 1's is the conjugate Gaussian's.
    seen = []

    def grouped(z, groups):
        seen.append(groups.tolist())
        value = log_likelihood(z).reshape(len(groups), -1)
        return torch.where(groups[:, None] == 0, 0.0, value).reshape(-1)

    result = smc(log_prior, grouped, torch.randn(2 * 2_000, DIM), num_groups=2)
    assert result.num_steps.tolist()[0] == 1 and result.num_steps[1] > 1
    # Group 0 is in the calls of the first step only; group 1 goes on alone.
    last_0 = max(i for i, groups in enumerate(seen) if 0 in groups)
    assert seen[0] == [0, 1] and all(g == [1] for g in seen[last_0 + 1 :])
    assert len(seen) > 2 * (last_0 + 1)
    flat, peaked = result.position.reshape(2, 2_000, DIM)
    variance = 1 / (1 + 1 / NOISE**2)
    # Over 20 seeds: 0.065, 0.041 and 0.030 at most (benchmarks/results/seeds-review).
    figure.at_most("|prior's mean error|", flat.mean(0).abs(), 0.15)
    figure.at_most("|prior's sd error|", (flat.std(0) - 1).abs(), 0.1)
    error = (peaked.mean(0) - variance * X_O / NOISE**2).abs()
    figure.at_most("|posterior's mean error|", error, 0.05)


def test_smc_rejects_bad_arguments():
    start = torch.randn(100, DIM)
    with pytest.raises(ValueError, match="0 < `target_ess` < 1"):
        smc(log_prior, log_likelihood, start, target_ess=1.0)
    with pytest.raises(ValueError, match="at least 2 particles for each of the 3"):
        smc(log_prior, log_likelihood, start, num_groups=3)
    with pytest.raises(RuntimeError, match="raise `max_steps`"):
        smc(log_prior, lambda z, g: 1e4 * log_likelihood(z), start, max_steps=2)


def test_a_theta_rounded_onto_the_bound_is_zero_density_not_nan():
    # Far out in the unconstrained space (not beyond Z_FAR) the box's transform
    # rounds theta onto its bound, where the prior's log-density is -inf: a
    # rejection for every method. (SMC on weinberg met it: theta = [50.0, ...].)
    prior = BoxUniform(torch.tensor([40.0, 0.5]), torch.tensor([50.0, 1.5]))

    def log_ratio(theta, x):
        return -(theta - x).square().sum(-1)

    posterior = RatioMCMCPosterior(log_ratio, prior, "smc_vectorized")
    posterior.set_default_x(torch.tensor([45.0, 1.0]))
    z = torch.tensor([[30.0, 0.0], [0.0, 0.0]])
    assert posterior.theta_transform.inv(z)[0, 0] == 50.0
    target = posterior._target()
    assert target.log_prior(z)[0] == -torch.inf and target.log_ratio(z).isfinite().all()
    assert posterior.log_density(z)[0] == -torch.inf
