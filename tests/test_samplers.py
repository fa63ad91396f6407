"""The vectorized MCMC kernels on targets with exact answers."""

import pytest
import torch
from pyro.infer import MCMC
from torch.distributions import MultivariateNormal

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
