"""The benchmark's tasks and their exact references."""

import pytest
import torch

from sbi_alfi.benchmark import METHODS, TASKS, make_task, run_method


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tasks_simulate_and_score_their_observations(name):
    task = make_task(name)
    theta_o, x_o = task.observation(seed=3)
    again = task.observation(seed=3)
    assert torch.equal(theta_o, again[0]) and torch.equal(x_o, again[1])
    theta = task.prior.sample((7,))
    assert task.simulator(theta).shape == (7, *x_o.shape)
    log_likelihood = task.log_likelihood(theta, x_o)
    assert log_likelihood.shape == (7,) and not torch.isnan(log_likelihood).any()


def test_sir_reference_matches_the_analytic_posterior(tmp_path):
    # gaussian_linear has both: the resampled reference must agree with it.
    task = make_task("gaussian_linear")
    _, x_o = task.observation(seed=0)
    analytic = task.posterior(x_o)
    torch.manual_seed(0)
    task.posterior = None
    task.num_proposals = 4_000_000
    draws = task.reference(x_o, num_samples=2_000, cache=tmp_path)
    assert torch.allclose(draws.mean(0), analytic.mean, atol=0.05)
    assert torch.allclose(draws.var(0), analytic.variance, rtol=0.15)
    cached = list(tmp_path.glob("gaussian_linear-*-2000.pt"))
    assert len(cached) == 1
    assert torch.equal(task.reference(x_o, num_samples=2_000, cache=tmp_path), draws)


def test_poisson_reference_matches_the_posterior_on_a_grid():
    task = make_task("poisson")
    _, x_o = task.observation(seed=1)
    torch.manual_seed(0)
    draws = task.reference(x_o, num_samples=2_000)
    low, high = task.prior.base_dist.low.item(), task.prior.base_dist.high.item()
    grid = torch.linspace(low, high, 20_001)[:, None]
    log_posterior = task.log_likelihood(grid, x_o)
    weights = (log_posterior - log_posterior.max()).exp()
    mean = (weights * grid[:, 0]).sum() / weights.sum()
    sd = ((weights * (grid[:, 0] - mean) ** 2).sum() / weights.sum()).sqrt()
    assert abs(draws.mean() - mean) < 4 * sd / 2_000**0.5
    assert abs(draws.std() / sd - 1) < 0.1


def test_unknown_task():
    with pytest.raises(ValueError, match="Unknown task 'lotka'"):
        make_task("lotka")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns_something_on_a_small_budget(method):
    task = make_task("gaussian_linear")
    _, x_o = task.observation(seed=0)
    run = run_method(method, task, num_simulations=1_000, x_o=x_o, num_samples=500)
    assert run.samples.shape == (500, 5) and run.num_simulations == 1_000
    assert run.train_seconds > 0 and run.sample_seconds > 0
    # The exact posterior mean is 0.8 x_o; the prior's is 0. With 1,000
    # simulations every method must land far closer to the former.
    exact = task.posterior(x_o).mean
    assert (run.samples.mean(0) - exact).norm() < 0.5 * exact.norm()
    with pytest.raises(ValueError, match="Unknown method 'abc'"):
        run_method("abc", task, 10, x_o)
