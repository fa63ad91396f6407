"""RatioMCMCPosterior with exact log-ratios: every method against the analytic
posterior, diagnostics, bad input."""

import functools
import warnings

import pytest
import torch
from sbi.utils import BoxUniform
from sbi.utils.metrics import c2st
from torch import nn
from torch.distributions import MultivariateNormal, Normal

from sbi_alfi import RatioMCMCPosterior
from sbi_alfi.aalr import METHODS
from sbi_alfi.samplers import importance_resample
from sbi_alfi.simulators import SLCP

NOISE = 0.5  # x | theta ~ N(theta, NOISE^2 I)
X_O = torch.tensor([[2.0, -1.0], [2.6, -0.4], [2.3, -1.3]])  # 3 i.i.d. observations


class ExactRatio(nn.Module):
    """log p(x | theta), which differs from the log-ratio by log p(x): a constant
    that every acceptance ratio cancels."""

    def forward(self, theta, x):
        return Normal(theta, NOISE).log_prob(x).sum(-1)


slow = pytest.mark.slow


def reference(prior_name: str, num_samples: int = 2_000) -> torch.Tensor:
    """Exact draws. With the N(0, I) prior the posterior is the conjugate Gaussian;
    with the uniform prior it is the likelihood, N(mean of x, NOISE^2 / n), cut to
    the box (by rejection)."""
    n = len(X_O)
    if prior_name == "box":
        mean, variance = X_O.mean(0), NOISE**2 / n
    else:
        variance = 1 / (1 + n / NOISE**2)
        mean = variance * X_O.sum(0) / NOISE**2
    draws = MultivariateNormal(mean, variance * torch.eye(2)).sample((4 * num_samples,))
    if prior_name == "box":
        draws = draws[(draws.abs() <= 2.5).all(-1)]
    return draws[:num_samples]


def prior_of(name: str):
    if name == "box":
        return BoxUniform(-2.5 * torch.ones(2), 2.5 * torch.ones(2))
    return MultivariateNormal(torch.zeros(2), torch.eye(2))


SETTINGS = {
    "hmc_vectorized": {"num_chains": 100, "warmup_steps": 200},
    "mh_vectorized": {"num_chains": 40, "warmup_steps": 300, "thin": 5},
    "hmc_pyro": {
        "num_chains": 4,
        "warmup_steps": 200,
        "thin": 2,
        "kernel_kwargs": {"num_steps": 5},
    },
    "nuts_pyro": {
        "num_chains": 4,
        "warmup_steps": 200,
        "kernel_kwargs": {"max_tree_depth": 5},
    },
}


@pytest.mark.parametrize("prior_name", ["box", "gaussian"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_samples_the_exact_posterior(method, prior_name):
    torch.manual_seed(0)
    posterior = RatioMCMCPosterior(
        ExactRatio(),
        prior_of(prior_name),
        method=method,
        show_progress_bars=False,
        **SETTINGS[method],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the diagnostics are checked below
        samples = posterior.sample((2_000,), x=X_O)
    assert samples.shape == (2_000, 2)
    truth = reference(prior_name)
    if prior_name == "box":
        assert (samples.abs() <= 2.5).all()
    # sbibm's C2ST, with an MLP: sbi's default random forest memorizes the exact
    # repeats of rejected MCMC moves and scores them as a difference.
    assert c2st(samples, truth, classifier="mlp").item() <= 0.55
    chains = posterior.chains
    assert chains.shape[0] == SETTINGS[method]["num_chains"] and chains.shape[-1] == 2
    diagnostics = posterior.diagnostics
    assert diagnostics["r_hat"].shape == diagnostics["ess"].shape == (2,)
    assert (diagnostics["r_hat"] < 1.05).all()
    assert diagnostics["acceptance_rate"].shape == (chains.shape[0],)


class SLCPLikelihood(nn.Module):
    """SLCP's exact log-likelihood, standing in for the log-ratio."""

    simulator = SLCP()

    def forward(self, theta, x):
        return self.simulator.log_likelihood(theta, x)


@functools.cache
def slcp_problem(prior_name: str):
    """SLCP's prior (or a wide Gaussian one), an observation at θ_true, and 2,000
    exact posterior draws: prior draws resampled by the likelihood. Their
    effective number (checked inside) is over 20,000, so no Markov chain is
    involved in the reference."""
    simulator = SLCPLikelihood.simulator
    if prior_name == "box":
        prior = simulator.prior
        num_proposals = 10_000_000
    else:
        prior = MultivariateNormal(torch.zeros(5), 4 * torch.eye(5))
        num_proposals = 25_000_000
    torch.manual_seed(0)
    x_o = simulator(simulator.theta_true[None])

    def log_target(theta):
        return simulator.log_likelihood(theta, x_o) + prior.log_prob(theta)

    reference, _ = importance_resample(
        log_target, prior, 2_000, num_proposals=num_proposals, batch_size=500_000
    )
    return prior, x_o, reference


# The posterior has four modes (the signs of θ3 and θ4). A chain stays in its
# mode, so the initialization sets the modes' weights: it resamples a million
# prior draws, and Pyro's kernels need many chains.
SLCP_SETTINGS = {
    "hmc_vectorized": {
        "num_chains": 100,
        "warmup_steps": 200,
        "num_init_candidates": 1_000_000,
        "kernel_kwargs": {"max_num_steps": 20},
    },
    "mh_vectorized": {
        "num_chains": 100,
        "warmup_steps": 1000,
        "thin": 20,
        "num_init_candidates": 1_000_000,
    },
    "hmc_pyro": {
        "num_chains": 40,
        "warmup_steps": 100,
        "num_init_candidates": 1_000_000,
        "kernel_kwargs": {"num_steps": 10},
    },
    "nuts_pyro": {
        "num_chains": 40,
        "warmup_steps": 100,
        "num_init_candidates": 1_000_000,
        "kernel_kwargs": {"max_tree_depth": 6},
    },
}


@pytest.mark.parametrize("prior_name", ["box", "gaussian"])
@pytest.mark.parametrize(
    "method",
    [
        method if method.endswith("vectorized") else pytest.param(method, marks=slow)
        for method in METHODS
    ],
)
def test_every_method_samples_the_slcp_posterior(method, prior_name):
    prior, x_o, truth = slcp_problem(prior_name)
    torch.manual_seed(1)
    posterior = RatioMCMCPosterior(
        SLCPLikelihood(),
        prior,
        method=method,
        show_progress_bars=False,
        **SLCP_SETTINGS[method],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # R-hat is high across the modes
        samples = posterior.sample((2_000,), x=x_o)
    assert c2st(samples, truth, classifier="mlp").item() <= 0.55


def test_mh_defaults_thin_enough_for_an_accurate_posterior():
    # With every setting left at its default: 100 chains, 200 warmup steps and,
    # for random-walk MH, thin 20 (thin 1 gave 20 correlated draws per chain;
    # thin 10 gave a bulk ESS just under the draws asked for).
    torch.manual_seed(0)
    posterior = RatioMCMCPosterior(
        ExactRatio(), prior_of("gaussian"), "mh_vectorized", show_progress_bars=False
    )
    assert posterior.thin == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning either
        draws = posterior.sample((2_000,), x=X_O)
    assert c2st(draws, reference("gaussian"), classifier="mlp") <= 0.55


def test_a_short_run_warns_with_the_numbers():
    torch.manual_seed(0)
    posterior = RatioMCMCPosterior(
        ExactRatio(),
        prior_of("box"),
        num_chains=10,
        warmup_steps=5,
        init_strategy="prior",
        show_progress_bars=False,
    )
    with pytest.warns(UserWarning, match=r"bulk ESS down to \d+, below the 500 draws"):
        posterior.sample((500,), x=X_O)


def test_potential_and_default_x():
    posterior = RatioMCMCPosterior(
        ExactRatio(), prior_of("gaussian"), show_progress_bars=False
    )
    theta = torch.randn(5, 2)
    posterior.set_default_x(X_O)
    expected = ExactRatio()(theta[:, None], X_O).sum(-1) + prior_of(
        "gaussian"
    ).log_prob(theta)
    assert torch.allclose(posterior.potential(theta), expected, atol=1e-5)


def test_bad_input():
    prior = prior_of("box")
    with pytest.raises(ValueError, match="`method` must be one of"):
        RatioMCMCPosterior(ExactRatio(), prior, method="slice")
    with pytest.raises(ValueError, match="`num_chains` >= 1"):
        RatioMCMCPosterior(ExactRatio(), prior, num_chains=0)
    with pytest.raises(ValueError, match="`init_strategy` must be"):
        RatioMCMCPosterior(ExactRatio(), prior, init_strategy="sobol")
    posterior = RatioMCMCPosterior(ExactRatio(), prior, show_progress_bars=False)
    with pytest.raises(ValueError, match="NaN or inf in 1 of 3 observations"):
        posterior.sample(
            (10,), x=torch.tensor([[0.0, 0.0], [torch.nan, 1.0], [1.0, 1.0]])
        )
    with pytest.raises(ValueError, match=r"cannot evaluate x of shape \(2, 3\)"):
        posterior.sample((10,), x=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="set_default_x"):
        posterior.sample((10,))


def test_estimator_shapes_are_checked_against_the_prior_and_x():
    from sbi.neural_nets import classifier_nn

    net = classifier_nn("mlp")(torch.zeros(10, 3), torch.zeros(10, 4))  # θ 3, x 4
    with pytest.raises(ValueError, match=r"takes theta of shape \(3,\), but the prior"):
        RatioMCMCPosterior(net, prior_of("box"))
    prior = BoxUniform(-torch.ones(3), torch.ones(3))
    posterior = RatioMCMCPosterior(net, prior, show_progress_bars=False)
    with pytest.raises(ValueError, match=r"takes x of shape \(n, 4\).*got \(1, 2\)"):
        posterior.sample((10,), x=torch.zeros(1, 2))


# The AALR trainer


def test_aalr_learns_the_ratio_of_a_gaussian_model():
    from sbi_alfi import AALR

    torch.manual_seed(0)
    prior = BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
    theta = prior.sample((3_000,))
    x = theta + 0.3 * torch.randn_like(theta)
    inference = AALR(prior, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(max_num_epochs=40)
    activations = {type(m) for m in estimator.modules()}
    assert nn.SiLU in activations and nn.ReLU not in activations
    posterior = inference.build_posterior(num_chains=50, warmup_steps=200)
    x_o = torch.tensor([0.5, -0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = posterior.sample((2_000,), x=x_o)
    # The exact posterior is N(x_o, 0.3^2 I), barely cut by the box.
    assert torch.allclose(samples.mean(0), x_o, atol=0.1)
    assert ((samples.std(0) > 0.2) & (samples.std(0) < 0.42)).all()


def test_aalr_needs_training_first():
    from sbi_alfi import AALR

    with pytest.raises(ValueError, match="call `train\\(\\)` first"):
        AALR(prior_of("box")).build_posterior()


def test_sample_batched_runs_every_observation_at_once():
    torch.manual_seed(0)
    calls = []

    class CountingRatio(ExactRatio):
        def forward(self, theta, x):
            calls.append(len(theta))
            return super().forward(theta, x)

    x = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-1.5, 0.5]])
    posterior = RatioMCMCPosterior(
        CountingRatio(),
        prior_of("gaussian"),
        num_chains=50,
        warmup_steps=150,
        show_progress_bars=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = posterior.sample_batched((1_000,), x)
    assert samples.shape == (1_000, 3, 2)
    assert posterior.chains.shape == (3, 50, 20, 2)
    assert posterior.diagnostics["r_hat"].shape == (3, 2)
    # A shape check, one importance resampling for all, then every step one call
    # for the 3 x 50 chains.
    assert calls[:2] == [2 * 3, 3 * 10_000] and set(calls[2:]) == {3 * 50}
    # Each observation's exact posterior: N(x / (1 + NOISE^2), NOISE^2 / (1 + NOISE^2)).
    variance = NOISE**2 / (1 + NOISE**2)
    assert torch.allclose(samples.mean(0), x / (1 + NOISE**2), atol=0.08)
    assert torch.allclose(samples.var(0), torch.full((3, 2), variance), atol=0.05)
