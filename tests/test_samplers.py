"""The vectorized MCMC kernels on targets with exact answers."""

import math

import pytest
import torch
from pyro.infer import MCMC
from torch.distributions import MultivariateNormal, Normal

from sbi_alfi.diagnostics import convergence, nested_r_hat
from sbi_alfi.samplers import VectorizedHMC, VectorizedMH, init_state

MEAN = torch.tensor([1.0, -2.0])
COV = torch.tensor([[4.0, 3.0], [3.0, 2.5]])  # correlation 0.95
TARGET = MultivariateNormal(MEAN, COV)

KERNELS = {
    "mh": (VectorizedMH, {}),
    "hmc-diag": (VectorizedHMC, {"mass_matrix": "diag", "num_steps": 5}),
    "hmc-dense": (VectorizedHMC, {"mass_matrix": "dense", "num_steps": 5}),
}


def run(kernel, num_samples=300, warmup_steps=300):
    mcmc = MCMC(
        kernel, num_samples=num_samples, warmup_steps=warmup_steps, disable_progbar=True
    )
    mcmc.run()
    return mcmc.get_samples()["theta"]  # (samples, chains, D)


def check_gaussian(figure, flat, target, mean_bound=0.1, cov_bound=0.15):
    """Draws against a Gaussian target: the mean error in units of each
    coordinate's sd and the covariance error relative to the variances; the
    negative control: the same draws against a target whose mean is moved by a
    third of an sd."""
    sd = target.covariance_matrix.diagonal().sqrt()
    scale = sd[:, None] * sd[None, :]
    figure.at_most(
        "|mean error| / sd", (flat.mean(0) - target.mean).abs() / sd, mean_bound
    )
    cov_error = (torch.cov(flat.T) - target.covariance_matrix).abs() / scale
    figure.at_most("|cov error| / (sd sd')", cov_error, cov_bound)
    figure.at_least(
        "|mean error| / sd",
        (flat.mean(0) - target.mean - sd / 3).abs() / sd,
        mean_bound,
        planted="target mean moved by sd / 3",
    )


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_sample_a_correlated_gaussian(name, figure):
    cls, kwargs = KERNELS[name]
    kernel = cls(TARGET.log_prob, 3 * torch.randn(100, 2), **kwargs)
    samples = run(kernel, num_samples=200, warmup_steps=200)
    assert samples.shape == (200, 100, 2)
    check_gaussian(figure, samples.reshape(-1, 2), TARGET)
    diagnostics = kernel.diagnostics()
    assert diagnostics["acceptance_rate"].shape == (100,)
    acceptance = diagnostics["acceptance_rate"]
    figure.at_least("mean acceptance", acceptance.mean(), 0.1)
    figure.at_most("mean acceptance", acceptance.mean(), 0.99)
    figure.at_least("lowest acceptance of a chain", acceptance, 0.02)
    assert diagnostics["step_size"].shape == (100,)


@pytest.mark.parametrize("name", ["mh", "hmc-dense"])
def test_groups_of_chains_adapt_to_their_own_targets(name, figure):
    # sample_batched's situation: blocks of chains, one posterior each, far apart
    # and of very different scales. Each block must get its own covariance.
    cls, kwargs = KERNELS[name]
    other = MultivariateNormal(torch.tensor([10.0, 0.0]), 0.01 * torch.eye(2))

    def log_density(theta):
        return torch.cat([TARGET.log_prob(theta[:50]), other.log_prob(theta[50:])])

    start = torch.cat([TARGET.sample((50,)), other.sample((50,))])
    # Negative control: one group for both targets, so that the covariance is
    # pooled over the two blocks.
    for num_groups in (2, 1):
        planted = "" if num_groups == 2 else "pooled over both targets"
        options = dict(kwargs)
        if planted and cls is VectorizedHMC:  # only its tuned covariance is read
            options.update(num_steps=1, max_num_steps=3)
        kernel = cls(log_density, start, num_groups=num_groups, **options)
        samples = run(kernel, num_samples=200, warmup_steps=200)
        if cls is VectorizedHMC:
            tuned = kernel.inverse_mass
        else:
            tuned = kernel.scale_tril @ kernel.scale_tril.mT
        tuned = tuned.expand(2, 2, 2)
        error = torch.stack(
            [
                (
                    (tuned[i] - t.covariance_matrix)
                    / t.covariance_matrix.diagonal().max()
                )
                .abs()
                .max()
                for i, t in enumerate([TARGET, other])
            ]
        )
        # Each group's step size is its own: its acceptance lies near the target
        # (dual averaging's final, averaged step size lands it a little above).
        acceptance = kernel.diagnostics()["acceptance_rate"].reshape(2, 50).mean(1)
        off_target = (acceptance - kernel.target_accept).abs()
        if planted:
            figure.at_least("|tuned cov error| / var", error, 0.5, planted=planted)
            figure.at_least(
                "|mean acceptance - target|", off_target.max(), 0.15, planted
            )
            continue
        # MH's covariance comes from 50 chains' strongly correlated steps in the
        # last window: off by 0.05-0.27 over the sweep. Pooled, it is off by 4.
        figure.at_most("|tuned cov error| / var", error, 0.5)
        for block, target in [(samples[:, :50], TARGET), (samples[:, 50:], other)]:
            check_gaussian(figure, block.reshape(-1, 2), target, 0.15, 0.2)
        figure.at_most("|mean acceptance - target|", off_target, 0.15)
    with pytest.raises(ValueError, match="`num_groups` must divide the 100 chains"):
        cls(log_density, start, num_groups=3)


def test_chees_stretches_the_trajectory_to_the_widest_scale(figure):
    # With an identity mass matrix the step size is bound by the narrow direction
    # (sd 1) and the trajectory must grow to cross the wide one (sd 20).
    wide = Normal(torch.zeros(2), torch.tensor([1.0, 20.0]))
    start = torch.randn(100, 2)
    lengths = {}
    for adapt in (True, False):  # the negative control: no ChEES
        kernel = VectorizedHMC(
            lambda theta: wide.log_prob(theta).sum(-1),
            start,
            num_steps=1,
            mass_matrix="identity",
            adapt_trajectory_length=adapt,
        )
        samples = run(kernel, num_samples=100, warmup_steps=300).reshape(-1, 2)
        lengths[adapt] = kernel.trajectory_length
        if adapt:
            sd_error = (samples.std(0) / wide.scale - 1).abs()
            figure.at_most("|sd ratio - 1|", sd_error, 0.1)
            diagnostics = kernel.diagnostics()
    figure.at_least("trajectory length", lengths[True], 5.0)
    figure.at_most("trajectory length", lengths[True], 60.0)
    figure.at_most(
        "trajectory length", lengths[False], 5.0, planted="no ChEES adaptation"
    )
    assert diagnostics["trajectory_length"].shape == (100,)
    assert diagnostics["num_steps"] > 3


def test_ess_of_antithetic_chains_is_floored_as_in_stan():
    # Draws that flip sign every step: Pyro's autocorrelation time is negative.
    signs = (-1.0) ** torch.arange(20)
    chains = (signs[None, :, None] * torch.randn(50, 1, 2)) + 0.01 * torch.randn(
        50, 20, 2
    )
    r_hat, ess = convergence(chains)
    assert r_hat.shape == ess.shape == (2,)
    draws = 50 * 20
    assert torch.allclose(ess, torch.tensor(draws * math.log10(draws)))
    assert convergence(torch.randn(3, 3, 2))[1].isnan().all()
    with pytest.raises(ValueError, match="must have shape"):
        convergence(torch.randn(10, 2))


def test_nested_r_hat_follows_the_papers_equations():
    chains = torch.randn(6, 5, 3, 2)  # 3 superchains of 2 chains, batch of 3
    expected = torch.empty(3, 2)
    for b in range(3):
        for d in range(2):
            f = chains[:, :, b, d].double().reshape(3, 2, 5)  # (k, m, n)
            means = f.mean(2)
            w_tilde = f.var(2).mean(1)  # within chains, per superchain
            b_tilde = means.var(1)  # between its chains
            b_nu = means.mean(1).var(0)
            w_nu = (w_tilde + b_tilde).mean()
            expected[b, d] = (1 + b_nu / w_nu).sqrt()
    assert torch.allclose(nested_r_hat(chains, 2), expected)
    # One chain per superchain (no between-chain term), one draw per chain (no
    # within-chain term): the terms that are left.
    single = chains[:, :1]
    means = single[:, 0].double().reshape(3, 2, 3, 2)
    b_nu, w_nu = means.mean(1).var(0), means.var(1).mean(0)
    assert torch.allclose(nested_r_hat(single, 2), (1 + b_nu / w_nu).sqrt().float())
    assert nested_r_hat(chains, 1).shape == (3, 2)
    for bad in (0, 4, 6):  # 0, not a divisor, a single superchain
        with pytest.raises(ValueError, match="at least 2 superchains"):
            nested_r_hat(chains, bad)
    with pytest.raises(ValueError, match="must have shape"):
        nested_r_hat(torch.randn(10, 2), 2)


def ar1_superchains(start: torch.Tensor, rho: float, warmup: int, draws: int):
    """AR(1) chains with N(0, 1) as stationary law, 4 per superchain, each
    superchain's chains started at its entry of `start`: (4K, draws, 1)."""
    x = start.repeat_interleave(4)[:, None]
    noise = (1 - rho**2) ** 0.5
    kept = []
    for step in range(warmup + draws):
        x = rho * x + noise * torch.randn_like(x)
        if step >= warmup:
            kept.append(x)
    return torch.stack(kept, 1)


def test_nested_r_hat_passes_a_converged_run_and_flags_two_failures(figure):
    # 25 superchains of 4 chains, started from one overdispersed point each
    # (sd 5 around a N(0, 1) target).
    start = 5 * torch.randn(25)
    # Converged: 200 warmup steps forget the start (0.5^200), then 100 draws
    # per chain, about 33 effective ones: nR-hat near sqrt(1 + 1/133). Over 20
    # seeds: at most 1.005; the planted failures at least 1.69 (too few steps)
    # and 1.79 (stuck) (benchmarks/results/seeds-smc).
    converged = ar1_superchains(start, rho=0.5, warmup=200, draws=100)
    figure.at_most("nested R-hat", nested_r_hat(converged, 4), 1.01)
    # Too few steps: after 10 of them, 0.95^10 = 60% of the start remains.
    short = ar1_superchains(start, rho=0.95, warmup=10, draws=20)
    figure.at_least("nested R-hat", nested_r_hat(short, 4), 1.01, "too few steps")
    # Stuck: converged draws, but half the superchains in a mode at +3 that the
    # others never visit (a bimodal target, each chain in its start's mode).
    stuck = converged.clone()
    stuck[:48] += 3.0
    figure.at_least("nested R-hat", nested_r_hat(stuck, 4), 1.01, "stuck in modes")


def test_systematic_resampling_draws_each_index_its_share():
    from sbi_alfi.samplers import systematic_resample

    weights = torch.rand(5, 7) ** 3  # five rows, uneven
    weights[2, 3] = 0.0  # never drawn
    index = systematic_resample(weights.log(), 1_000)
    assert index.shape == (5, 1_000)
    counts = torch.stack([row.bincount(minlength=7) for row in index])
    expected = 1_000 * weights / weights.sum(-1, keepdim=True)
    assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all()
    assert counts[2, 3] == 0


def test_mh_independence_proposal_is_exact(figure):
    proposal = MultivariateNormal(MEAN + 0.5, 2 * COV)
    kernel = VectorizedMH(TARGET.log_prob, proposal.sample((200,)), proposal=proposal)
    flat = run(kernel, num_samples=200, warmup_steps=10).reshape(-1, 2)
    check_gaussian(figure, flat, TARGET)


def test_hmc_reports_divergences(figure):
    counts, acceptance = {}, {}
    for step_size in (10.0, 0.1):  # the negative control: a stable step size
        kernel = VectorizedHMC(
            TARGET.log_prob,
            torch.zeros(20, 2),
            step_size=step_size,
            adapt_step_size=False,
            mass_matrix="identity",
        )
        run(kernel, num_samples=20, warmup_steps=0)
        counts[step_size] = kernel.diagnostics()["divergences"].sum()
        acceptance[step_size] = kernel.diagnostics()["acceptance_rate"].mean()
    figure.at_least("divergences", counts[10.0], 1)
    figure.at_most("divergences", counts[0.1], 0, planted="a stable step size")
    # ... and the acceptance check of the test above fails on the unstable one.
    figure.at_most(
        "mean acceptance", acceptance[10.0], 0.1, planted="step size 10, not adapted"
    )


def test_broken_potential_is_reported():
    def log_density(theta):
        return torch.where(theta[:, 0] > 0, torch.nan, -theta.square().sum(-1))

    message = r"returned nan at 1 of 3 chains, e\.g\. at \[1\.0"
    with pytest.raises(ValueError, match=message):
        init_state(log_density, torch.tensor([[-1.0, 0.0], [1.0, 0.0], [-2.0, 0.0]]))
    kernel = VectorizedMH(log_density, -torch.ones(50, 2))
    with pytest.raises(ValueError, match="returned nan"):
        run(kernel, num_samples=50, warmup_steps=50)


def test_bad_kernel_arguments():
    with pytest.raises(ValueError, match=r"must have shape \(num_chains, D\)"):
        VectorizedMH(TARGET.log_prob, torch.zeros(2))
    with pytest.raises(ValueError, match="`mass_matrix` must be"):
        VectorizedHMC(TARGET.log_prob, torch.zeros(4, 2), mass_matrix="full")
    with pytest.raises(ValueError, match="must map positions"):
        init_state(lambda theta: theta, torch.zeros(4, 2))


def test_metropolis_hastings_keeps_no_autograd_graph():
    # A network's log-density has parameters that require gradients; MH needs
    # none, and a graph kept in the state grew with every step (9 GB for the
    # chains of 40 observations).
    from sbi_alfi.samplers.mh import independence_step, random_walk_step

    weight = torch.ones(2, requires_grad=True)

    def log_density(theta):
        return -(weight * theta).square().sum(-1)

    state = init_state(log_density, torch.zeros(5, 2))
    scale, scale_tril = torch.ones(5), torch.eye(2).expand(5, 2, 2)
    state, accept = random_walk_step(state, log_density, scale, scale_tril)
    assert not state.log_density.requires_grad and not accept.requires_grad
    proposal = MultivariateNormal(torch.zeros(2), torch.eye(2))
    state, accept = independence_step(state, log_density, proposal)
    assert not state.log_density.requires_grad and not accept.requires_grad
