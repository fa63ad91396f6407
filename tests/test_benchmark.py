"""The benchmark: its tasks and their exact references, the method runners and
the command."""

import csv
import math
import subprocess
import sys

import pytest
import torch

from sbi_alfi.benchmark import (
    METHODS,
    TASKS,
    Task,
    make_task,
    read_results,
    run_benchmark,
    run_method,
    write_report,
)
from sbi_alfi.benchmark.methods import alfi_schedule

OWN_TASKS = sorted(name for name in TASKS if not name.startswith("sbibm_"))
SBIBM_TASKS = sorted(set(TASKS) - set(OWN_TASKS))


@pytest.mark.parametrize("name", OWN_TASKS)
def test_tasks_simulate_and_score_their_observations(name, seed):
    task = make_task(name)
    theta_o, x_o = task.observation(seed=seed + 3)
    again = task.observation(seed=seed + 3)
    assert torch.equal(theta_o, again[0]) and torch.equal(x_o, again[1])
    theta = task.prior.sample((7,))
    assert task.simulator(theta).shape == (7, *x_o.shape)
    log_likelihood = task.log_likelihood(theta, x_o)
    assert log_likelihood.shape == (7,) and not torch.isnan(log_likelihood).any()


def check_reference(figure, draws, analytic):
    """Draws against the analytic posterior: the mean error in standard errors
    and the variance ratio; the negative control moves the mean by a fifth of
    an sd (9 standard errors of 2,000 draws)."""
    sd = analytic.variance.sqrt()
    standard_error = sd / len(draws) ** 0.5
    z = (draws.mean(0) - analytic.mean).abs() / standard_error
    figure.at_most("|mean error| / se", z, 4.5)
    # 2,000 draws: each variance ratio's sd is 0.03; five coordinates.
    variance_error = (draws.var(0) / analytic.variance - 1).abs()
    figure.at_most("|variance ratio - 1|", variance_error, 0.2)
    moved = (draws.mean(0) - analytic.mean - sd / 5).abs() / standard_error
    figure.at_least("|mean error| / se", moved, 4.5, planted="mean moved by sd / 5")


def test_sir_reference_matches_the_analytic_posterior(tmp_path, seed, figure):
    # gaussian_linear has both: the resampled reference must agree with it.
    task = make_task("gaussian_linear")
    _, x_o = task.observation(seed=seed)
    analytic = task.posterior(x_o)
    task.posterior = None
    task.num_proposals = 4_000_000
    draws = task.reference(x_o, num_samples=2_000, cache=tmp_path)
    check_reference(figure, draws, analytic)
    cached = list(tmp_path.glob("gaussian_linear-*-2000.pt"))
    assert len(cached) == 1
    assert torch.equal(task.reference(x_o, num_samples=2_000, cache=tmp_path), draws)


def test_narrow_posterior_gets_adaptive_defensive_passes(monkeypatch, seed, figure):
    # Too few prior draws for 2,000 resampled ones: the reference must come from
    # the kernel-density rounds, and still match the analytic posterior.
    from sbi_alfi.benchmark import tasks

    task = make_task("gaussian_linear")
    _, x_o = task.observation(seed=seed)
    analytic = task.posterior(x_o)
    task.posterior = None
    # 30,000 prior draws: an ESS of 20,000 would need an efficiency of 2/3, and
    # this posterior gives prior draws less than 1/2.
    task.num_proposals = 30_000
    passes = []
    original = tasks.importance_resample

    def recorded(log_density, proposal, *args, **kwargs):
        passes.append(type(proposal).__name__)
        return original(log_density, proposal, *args, **kwargs)

    monkeypatch.setattr(tasks, "importance_resample", recorded)
    draws = task.reference(x_o, num_samples=2_000)
    assert passes[0] == "MultivariateNormal" and len(passes) >= 2
    assert set(passes[1:]) == {"_Defensive"}
    check_reference(figure, draws, analytic)


def test_a_reference_from_a_given_proposal(monkeypatch, seed, figure):
    # A proposal near the posterior (twice its variance: an efficiency of 0.49
    # in 5-D) reaches the ESS check (20,000) from 100,000 draws in one pass.
    from torch.distributions import MultivariateNormal

    from sbi_alfi.benchmark import tasks

    task = make_task("gaussian_linear")
    _, x_o = task.observation(seed=seed)
    analytic = task.posterior(x_o)
    task.posterior, task.num_proposals = None, 100_000
    passes = []
    original = tasks.importance_resample

    def recorded(log_density, proposal, *args, **kwargs):
        passes.append(proposal)
        return original(log_density, proposal, *args, **kwargs)

    monkeypatch.setattr(tasks, "importance_resample", recorded)
    near = MultivariateNormal(analytic.mean, 2 * analytic.covariance_matrix)
    draws = task.reference(x_o, num_samples=2_000, proposal=near)
    assert passes == [near]
    check_reference(figure, draws, analytic)


def test_a_kernel_density_of_fewer_distinct_centres_than_dimensions():
    # A first pass of tiny ESS resamples a handful of distinct points: in 10-D,
    # 10 centres of 3 distinct values have a singular covariance.
    from sbi.utils import BoxUniform

    from sbi_alfi.benchmark.tasks import _Defensive

    prior = BoxUniform(-torch.ones(10), torch.ones(10))
    centres = prior.sample((3,))[torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])]
    proposal = _Defensive(centres, prior)
    theta = proposal.sample((1_000,))
    assert theta.shape == (1_000, 10)
    assert proposal.log_prob(theta).isfinite().all()


def test_poisson_reference_matches_the_posterior_on_a_grid(seed, figure):
    task = make_task("poisson")
    _, x_o = task.observation(seed=seed + 1)
    draws = task.reference(x_o, num_samples=2_000)
    low, high = task.prior.base_dist.low.item(), task.prior.base_dist.high.item()
    grid = torch.linspace(low, high, 20_001)[:, None]
    log_posterior = task.log_likelihood(grid, x_o)
    weights = (log_posterior - log_posterior.max()).exp()
    mean = (weights * grid[:, 0]).sum() / weights.sum()
    sd = ((weights * (grid[:, 0] - mean) ** 2).sum() / weights.sum()).sqrt()
    standard_error = sd / 2_000**0.5
    figure.at_most("|mean error| / se", abs(draws.mean() - mean) / standard_error, 4.5)
    figure.at_most("|sd ratio - 1|", abs(draws.std() / sd - 1), 0.1)
    moved = abs(draws.mean() - mean - sd / 5) / standard_error
    figure.at_least("|mean error| / se", moved, 4.5, planted="mean moved by sd / 5")


def test_unknown_task():
    with pytest.raises(ValueError, match="Unknown task 'lotka'"):
        make_task("lotka")


# Pyro's kernels run their chains in turn on 2 CPUs: half a minute each.
POSTERIOR_METHODS = [
    pytest.param(method, marks=pytest.mark.slow) if "pyro" in method else method
    for method in METHODS
    if method != "alfi"
]


@pytest.mark.parametrize("method", POSTERIOR_METHODS)
def test_every_method_learns_something_on_a_small_budget(method, seed, figure):
    task = make_task("gaussian_linear")
    _, x_o = task.observation(seed=seed)
    run = run_method(
        method, task, num_simulations=1_000, x_o=x_o, num_samples=500, seed=seed
    )
    assert run.samples.shape == (500, 5) and run.num_simulations == 1_000
    assert torch.equal(run.estimate, run.samples.mean(0))
    assert run.train_seconds > 0 and run.sample_seconds > 0
    # The exact posterior mean is 0.8 x_o; the prior's is 0. With 1,000
    # simulations every method must land far closer to the former.
    exact = task.posterior(x_o).mean
    error = (run.samples.mean(0) - exact).norm() / exact.norm()
    figure.at_most("|mean - exact mean| / |exact mean|", error, 0.5)
    # Negative control: the prior's mean, 0, is as far as the exact mean's norm.
    prior_error = (task.prior.sample((500,)).mean(0) - exact).norm() / exact.norm()
    figure.at_least(
        "|mean - exact mean| / |exact mean|", prior_error, 0.5, planted="prior draws"
    )
    with pytest.raises(ValueError, match="Unknown method 'abc'"):
        run_method("abc", task, 10, x_o)


def test_a_run_is_the_same_whatever_numpys_history(seed):
    # sbi's vectorized slice sampler draws from NumPy's global generator.
    import numpy as np

    task = make_task("gaussian_linear")
    _, x_o = task.observation(seed=seed)
    runs = []
    for history in (1, 2):
        np.random.seed(seed + history)  # noqa: NPY002
        run = run_method("nre_a_slice", task, 300, x_o, num_samples=40, seed=seed)
        runs.append(run.samples)
    assert torch.equal(*runs)


def test_the_factorized_route_trains_on_every_point(seed):
    from sbi_alfi.benchmark.methods import _trained_ratio

    task = make_task("poisson")  # a data set of 20 points per observation
    _, x_o = task.observation(seed=seed)
    run = run_method(
        "aalr_iid_hmc_vectorized", task, 50, x_o, num_samples=100, seed=seed
    )
    assert run.samples.shape == (100, 1) and run.num_simulations == 50
    ((inference, _),) = [
        trained for key, trained in _trained_ratio.items() if key[0] == "poisson"
    ]
    theta, x = inference.get_simulations()[:2]
    # one (theta, point) pair per point, each data set's theta repeated
    assert x.shape == (50 * 20, 1)
    assert torch.equal(theta[:20], theta[:1].expand(20, 1))


def test_alfi_spends_its_budget_and_counts_every_simulation(seed):
    task = make_task("poisson")  # a data set of 20 points per observation
    _, x_o = task.observation(seed=seed)
    run = run_method(
        "alfi", task, num_simulations=2_000, x_o=x_o, num_samples=300, seed=seed
    )
    # 48 tasks, each simulated once and unrolled in 2 epochs of 5 steps x 4
    # draws, plus the unroll on x_o, plus sbi's probe of 2 + 3 points; a draw
    # simulates a data set of 20 points, so only the probe is a fraction.
    assert alfi_schedule(2_000) == 48
    assert run.num_simulations == 48 * 41 + 20 + 1
    assert run.samples.shape == (300, 1) and run.estimate.shape == (1,)
    low, high = task.prior.base_dist.low, task.prior.base_dist.high
    assert ((run.samples > low) & (run.samples < high)).all()
    with pytest.raises(ValueError, match="at least 435 simulations"):
        run_method("alfi", task, num_simulations=400, x_o=x_o)


def test_benchmark_command_on_the_smallest_setting(tmp_path, monkeypatch, seed, figure):
    command = [
        sys.executable,
        "-m",
        "sbi_alfi.benchmark",
        "--output",
        str(tmp_path),
        "--tasks",
        "gaussian_linear",
        "--methods",
        "npe",
        "alfi",
        "--budgets",
        "500",
        "--seeds",
        str(seed),
        "--num-samples",
        "200",
        "--quiet",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with (tmp_path / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["task"], row["method"], row["budget"]) for row in rows] == [
        ("gaussian_linear", "npe", "500"),
        ("gaussian_linear", "alfi", "500"),
    ]
    for row in rows:
        assert 0 <= float(row["c2st"]) <= 1.0
        assert 0 < int(row["simulations"]) <= 500
        assert float(row["rmse"]) > 0 and float(row["reference_rmse"]) > 0
    # NPE at 500 simulations is close to the exact posterior; ALFI's Gaussian
    # after a few gradient steps is not, and the page says what it is.
    npe, alfi = (float(row["c2st"]) for row in rows)
    figure.at_most("c2st of npe", npe, 0.82)
    figure.at_least("c2st of npe", alfi, 0.82, planted="alfi's Gaussian instead")
    page = (tmp_path / "RESULTS.md").read_text()
    assert "python -m sbi_alfi.benchmark --output" in page
    assert "| npe | 500 |" in page and "| alfi † | 500 |" in page
    assert "not of a posterior" in page and " cores" in page
    for plot in ("c2st.png", "rmse.png", "seconds.png"):
        assert (tmp_path / plot).stat().st_size > 10_000
    assert len(list((tmp_path / "references").glob("gaussian_linear-*.pt"))) == 1

    # A rerun resumes: nothing is run again.
    from sbi_alfi.benchmark import run

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(run, "run_method", fail)
    results = run_benchmark(
        tmp_path,
        tasks=["gaussian_linear"],
        methods=["npe", "alfi"],
        budgets=[500],
        seeds=[seed],
        num_samples=200,
        show_progress_bars=False,
    )
    assert results == read_results(tmp_path / "results.csv")


def test_benchmark_rejects_bad_selections(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown tasks \['lotka'\]"):
        run_benchmark(tmp_path, tasks=["lotka"])
    with pytest.raises(ValueError, match=r"Unknown methods \['snpe'\]"):
        run_benchmark(tmp_path, methods=["snpe"])
    with pytest.raises(ValueError, match="budgets >= 1"):
        run_benchmark(tmp_path, budgets=[0])


def test_aalr_samplers_share_one_trained_ratio(seed):
    task = make_task("gaussian_linear")
    _, x_o = task.observation(seed=seed)
    runs = [
        run_method(method, task, 1_000, x_o, num_samples=200, seed=seed)
        for method in ("aalr_hmc_vectorized", "aalr_mh_vectorized")
    ]
    assert runs[0].train_seconds == runs[1].train_seconds
    other_seed = run_method(
        "aalr_mh_vectorized", task, 1_000, x_o, num_samples=200, seed=seed + 1
    )
    assert other_seed.train_seconds != runs[0].train_seconds


def test_a_task_without_likelihood_is_scored_by_rmse_only(tmp_path, seed):
    task = make_task("poisson")
    blind = Task("blind_poisson", prior=task.prior, simulator=task.simulator)
    _, x_o = blind.observation(seed=seed)
    with pytest.raises(ValueError, match="has neither an analytic `posterior`"):
        blind.reference(x_o)
    (result,) = run_benchmark(
        tmp_path,
        tasks=[blind],
        methods=["alfi"],
        budgets=[500],
        seeds=[seed],
        num_samples=100,
        show_progress_bars=False,
    )
    assert math.isnan(result.c2st) and math.isnan(result.reference_rmse)
    assert 0 < result.rmse < 10
    page = write_report([result], tmp_path).read_text()
    assert "| alfi † | 500 | – |" in page
    notes = "The classifier was chosen on benchmarks/results/classifiers."
    assert notes in write_report([result], tmp_path, notes=notes).read_text()


class FakeSbibmTask:
    """sbibm's task interface (what `SbibmTask` calls), on a 1-D shift model
    with three observations."""

    num_observations = 3

    def __init__(self):
        self.prior_params = {"low": -torch.ones(1), "high": torch.ones(1)}

    def get_simulator(self):
        return lambda theta: theta + 0.1 * torch.randn_like(theta)

    def get_true_parameters(self, num_observation):
        return torch.tensor([[0.1 * num_observation]])

    def get_observation(self, num_observation):
        return torch.tensor([[0.1 * num_observation + 0.01]])

    def get_reference_posterior_samples(self, num_observation):
        return torch.full((10_000, 1), 0.1 * num_observation)


def test_sbibm_tasks_give_sbibms_observations_and_references(monkeypatch):
    import types

    from sbi_alfi.benchmark import sbibm_task

    fake = types.SimpleNamespace(get_task=lambda name: FakeSbibmTask())
    monkeypatch.setitem(sys.modules, "sbibm", fake)
    task = sbibm_task("shift")
    assert task.name == "sbibm_shift" and task.has_reference
    assert torch.equal(task.prior.base_dist.low, -torch.ones(1))
    assert task.simulator(torch.zeros(5, 1)).shape == (5, 1)
    for seed, index in [(0, 1), (1, 2), (5, 3)]:  # seed s: observation s % 3 + 1
        theta_o, x_o = task.observation(seed)
        assert theta_o.shape == (1,) and x_o.shape == (1,)
        assert torch.allclose(theta_o, torch.tensor([0.1 * index]))
        reference = task.reference(x_o, num_samples=500)
        assert reference.shape == (500, 1)
        assert torch.allclose(reference, torch.tensor(0.1 * index))
    with pytest.raises(ValueError, match="none of sbibm's shift observations"):
        task.reference(torch.tensor([5.0]))
    with pytest.raises(ValueError, match="has 10000 reference draws, 20000 were"):
        task.reference(x_o, num_samples=20_000)


def test_sbibm_tasks_without_sbibm_say_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sbibm", None)  # import sbibm fails
    with pytest.raises(ImportError, match="make benchmark-install"):
        make_task("sbibm_two_moons")
    with pytest.raises(ImportError, match="make benchmark-install"):
        run_benchmark(tmp_path, tasks=["sbibm_two_moons"], methods=["npe"])


@pytest.mark.parametrize("name", SBIBM_TASKS)
def test_sbibm_tasks_when_installed(name):
    pytest.importorskip("sbibm")  # benchmark-only: `make benchmark-install`
    task = make_task(name)
    theta_o, x_o = task.observation(0)
    assert task.simulator(task.prior.sample((3,))).shape == (3, *x_o.shape)
    reference = task.reference(x_o, num_samples=1_000)
    assert reference.shape == (1_000, *theta_o.shape)
    assert torch.isfinite(task.prior.log_prob(reference)).all()  # in the prior


def test_the_page_pairs_each_method_with_the_baseline_seed_by_seed(tmp_path):
    from sbi_alfi.benchmark.report import paired
    from sbi_alfi.benchmark.run import Result

    def result(method, seed, c2st, task="gaussian", budget=1_000):
        return Result(task, method, budget, seed, budget, c2st, 0.1, 0.1, 1.0, 1.0)

    # Differences 0.02, 0.04, 0.03: mean 0.03, standard error 0.01/sqrt(3).
    results = [result("nre_a_slice", s, c) for s, c in enumerate([0.6, 0.7, 0.8])]
    results += [
        result("aalr_mh_vectorized", s, c) for s, c in enumerate([0.62, 0.74, 0.83])
    ]
    # A cell of one common seed (seed 5 has no baseline run) and one behind by
    # less than the margin.
    results += [
        result("nre_a_slice", 0, 0.70, budget=10_000),
        result("aalr_mh_vectorized", 0, 0.706, budget=10_000),
        result("aalr_mh_vectorized", 5, 0.99, budget=10_000),
    ]
    cells = paired(results, "aalr_mh_vectorized", "nre_a_slice")
    assert [(c.budget, c.seeds) for c in cells] == [(1_000, 3), (10_000, 1)]
    assert math.isclose(cells[0].difference, 0.03, abs_tol=1e-9)
    assert math.isclose(cells[0].standard_error, 0.01 / math.sqrt(3), rel_tol=1e-6)
    assert math.isclose(cells[1].difference, 0.006, abs_tol=1e-9)
    assert math.isnan(cells[1].standard_error)
    page = write_report(results, tmp_path).read_text()
    # Behind by 0.03 > 0.01 in one cell, and by more than 2 standard errors.
    assert (
        "| aalr_mh_vectorized | 2 | +0.018 | 0 | 0 | 1: gaussian @ 1,000 | 1 |" in page
    )
    assert "| gaussian | 1,000 | 3 | +0.030 | 0.006 |" in page
    assert "## Against" not in write_report(results[3:6], tmp_path).read_text()
