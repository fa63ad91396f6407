"""The vectorized MCMC kernels on targets with exact answers."""

import math

import pytest
import torch
from pyro.infer import MCMC
from torch.distributions import MultivariateNormal, Normal

from sbi_alfi.diagnostics import convergence
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


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_sample_a_correlated_gaussian(name):
    cls, kwargs = KERNELS[name]
    torch.manual_seed(0)
    kernel = cls(TARGET.log_prob, 3 * torch.randn(100, 2), **kwargs)
    samples = run(kernel, num_samples=200, warmup_steps=200)
    assert samples.shape == (200, 100, 2)
    flat = samples.reshape(-1, 2)
    # 20,000 correlated draws: Monte Carlo errors are a few hundredths.
    assert torch.allclose(flat.mean(0), MEAN, atol=0.1)
    assert torch.allclose(torch.cov(flat.T), COV, atol=0.3)
    diagnostics = kernel.diagnostics()
    assert diagnostics["acceptance_rate"].shape == (100,)
    assert 0.1 < diagnostics["acceptance_rate"].mean() < 0.99
    assert (diagnostics["acceptance_rate"] > 0.02).all()
    assert diagnostics["step_size"].shape == (100,)


@pytest.mark.parametrize("name", ["mh", "hmc-dense"])
def test_groups_of_chains_adapt_to_their_own_targets(name):
    # sample_batched's situation: blocks of chains, one posterior each, far apart
    # and of very different scales. Each block must get its own covariance.
    cls, kwargs = KERNELS[name]
    other = MultivariateNormal(torch.tensor([10.0, 0.0]), 0.01 * torch.eye(2))

    def log_density(theta):
        return torch.cat([TARGET.log_prob(theta[:50]), other.log_prob(theta[50:])])

    torch.manual_seed(0)
    start = torch.cat([TARGET.sample((50,)), other.sample((50,))])
    kernel = cls(log_density, start, num_groups=2, **kwargs)
    samples = run(kernel, num_samples=200, warmup_steps=200)
    for block, target in [(samples[:, :50], TARGET), (samples[:, 50:], other)]:
        flat = block.reshape(-1, 2)
        scale = target.covariance_matrix.diagonal().sqrt()
        assert torch.allclose(flat.mean(0), target.mean, atol=0.1 * scale.max())
        assert torch.allclose(
            torch.cov(flat.T), target.covariance_matrix, rtol=0.15, atol=1e-3
        )
    if cls is VectorizedHMC:
        tuned = kernel.inverse_mass
    else:
        tuned = kernel.scale_tril @ kernel.scale_tril.mT
    assert torch.allclose(tuned[0], TARGET.covariance_matrix, rtol=0.2, atol=0.1)
    assert torch.allclose(tuned[1], other.covariance_matrix, rtol=0.2, atol=1e-3)
    acceptance = kernel.diagnostics()["acceptance_rate"].reshape(2, 50).mean(1)
    assert torch.allclose(acceptance, torch.tensor(kernel.target_accept), atol=0.1)
    with pytest.raises(ValueError, match="`num_groups` must divide the 100 chains"):
        cls(log_density, start, num_groups=3)


def test_chees_stretches_the_trajectory_to_the_widest_scale():
    # With an identity mass matrix the step size is bound by the narrow direction
    # (sd 1) and the trajectory must grow to cross the wide one (sd 20).
    wide = Normal(torch.zeros(2), torch.tensor([1.0, 20.0]))
    torch.manual_seed(0)
    kernel = VectorizedHMC(
        lambda theta: wide.log_prob(theta).sum(-1),
        torch.randn(100, 2),
        num_steps=1,
        mass_matrix="identity",
    )
    samples = run(kernel, num_samples=100, warmup_steps=300).reshape(-1, 2)
    assert 5 < kernel.trajectory_length.item() < 60
    assert torch.allclose(samples.std(0), wide.scale, rtol=0.1)
    diagnostics = kernel.diagnostics()
    assert diagnostics["trajectory_length"].shape == (100,)
    assert diagnostics["num_steps"] > 3


def test_ess_of_antithetic_chains_is_floored_as_in_stan():
    # Draws that flip sign every step: Pyro's autocorrelation time is negative.
    torch.manual_seed(0)
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


def test_mh_independence_proposal_is_exact():
    torch.manual_seed(0)
    proposal = MultivariateNormal(MEAN + 0.5, 2 * COV)
    kernel = VectorizedMH(TARGET.log_prob, proposal.sample((200,)), proposal=proposal)
    flat = run(kernel, num_samples=200, warmup_steps=10).reshape(-1, 2)
    assert torch.allclose(flat.mean(0), MEAN, atol=0.1)
    assert torch.allclose(torch.cov(flat.T), COV, atol=0.3)


def test_hmc_reports_divergences():
    torch.manual_seed(0)
    kernel = VectorizedHMC(
        TARGET.log_prob,
        torch.zeros(20, 2),
        step_size=10.0,
        adapt_step_size=False,
        mass_matrix="identity",
    )
    run(kernel, num_samples=20, warmup_steps=0)
    assert kernel.diagnostics()["divergences"].sum() > 0


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
