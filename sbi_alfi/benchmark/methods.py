r"""The methods a benchmark compares, each run the same way: spend a budget of
simulations, then draw from the posterior of one observation."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from sbi.inference import NLE, NPE, NRE_A
from torch import Tensor

from ..aalr import AALR
from ..alfi import ALFI
from .tasks import Task

__all__ = ["METHODS", "Run", "alfi_schedule", "run_method"]


class Run(NamedTuple):
    r"""What one method produced on one observation."""

    samples: Tensor  #: posterior draws, `(num_samples, D)`
    estimate: Tensor  #: the point estimate, `(D,)`: the draws' mean; ALFI's map
    num_simulations: int  #: every simulation the method made, inference included
    train_seconds: float
    sample_seconds: float


def _sbi(cls, **posterior_kwargs) -> Callable:
    def run(task: Task, num_simulations: int, x_o: Tensor, num_samples: int):
        theta, x = task.simulate(num_simulations)
        inference = cls(task.prior, show_progress_bars=False)
        start = time.perf_counter()
        inference.append_simulations(theta, x).train()
        posterior = inference.build_posterior(**posterior_kwargs)
        trained = time.perf_counter()
        samples = posterior.sample((num_samples,), x=x_o, show_progress_bars=False)
        end = time.perf_counter()
        return samples, samples.mean(0), num_simulations, trained - start, end - trained

    return run


# The last AALR ratios trained, keyed by their simulations: the AALR samplers of
# one task, budget and seed run on the same estimator, as in the AALR paper's
# comparison of samplers, and its training is paid (and timed) once.
_trained_ratio: dict[tuple, tuple] = {}
_KEPT_RATIOS = 8


def _aalr(
    method: str, iid: bool = False, classifier: str | None = None, **posterior_kwargs
) -> Callable:
    r"""AALR with `classifier` (its default when `None`) and `method`; with
    `iid`, on a data-set task (:attr:`Task.num_points` > 1), the factorized
    route: the ratio of one point, learned from every point of the simulated
    data sets, summed over the points of `x_o`. On a task of one point, both
    routes are the same."""

    def run(task: Task, num_simulations: int, x_o: Tensor, num_samples: int):
        theta, x = task.simulate(num_simulations)
        factorized = iid and task.num_points > 1
        if factorized:  # the observations are flattened data sets
            x, x_o = (
                x.reshape(len(x), task.num_points, -1),
                x_o.reshape(task.num_points, -1),
            )
        else:
            x_o = x_o[None]
        digest = hashlib.sha1(x.cpu().numpy().tobytes()).hexdigest()
        key = (task.name, digest, factorized, classifier)
        if key not in _trained_ratio:
            inference = AALR(
                task.prior, classifier=classifier, show_progress_bars=False
            )
            start = time.perf_counter()
            inference.append_simulations(theta, x, iid=factorized).train()
            if len(_trained_ratio) >= _KEPT_RATIOS:
                del _trained_ratio[next(iter(_trained_ratio))]
            _trained_ratio[key] = inference, time.perf_counter() - start
        inference, train_seconds = _trained_ratio[key]
        start = time.perf_counter()
        posterior = inference.build_posterior(
            mcmc_method=method,
            mcmc_parameters={"show_progress_bars": False, **posterior_kwargs},
        )
        samples = posterior.sample((num_samples,), x=x_o)
        end = time.perf_counter()
        return samples, samples.mean(0), num_simulations, train_seconds, end - start

    return run


class _Counted:
    r"""A point simulator that counts the points it simulates."""

    def __init__(self, simulator: Callable[[Tensor], Tensor]):
        self.simulator = simulator
        self.num_points = 0

    def __call__(self, theta: Tensor) -> Tensor:
        self.num_points += len(theta)
        return self.simulator(theta).flatten(1)


#: ALFI's recurrent steps T and draws per step M in the benchmark; each draw
#: simulates one observation (K = the task's points). Fewer than the paper's, so
#: that a budget buys more tasks.
ALFI_STEPS, ALFI_DRAWS, ALFI_EPOCHS = 5, 4, 2


def alfi_schedule(num_simulations: int) -> int:
    r"""The number of meta-training tasks ALFI can afford on a budget.

    A task costs its observation plus, in each of `ALFI_EPOCHS` epochs (its
    validation included), `ALFI_STEPS` x `ALFI_DRAWS` simulated observations; the
    inference on x_o costs one more unroll, and `sbi`'s `process_simulator`
    probes the simulator with 2 + 3 points (at most 5 observations).
    """
    per_unroll = ALFI_STEPS * ALFI_DRAWS
    per_task = 1 + ALFI_EPOCHS * per_unroll
    num_tasks = (num_simulations - per_unroll - 5) // per_task
    if num_tasks < 10:
        raise ValueError(
            f"ALFI needs a budget of at least {10 * per_task + per_unroll + 5} "
            f"simulations (10 tasks), got {num_simulations}."
        )
    return num_tasks


def _alfi(task: Task, num_simulations: int, x_o: Tensor, num_samples: int):
    r"""Meta-trains ALFI within the budget, counting every simulated point, and
    runs it on x_o. Its draws are those of its final Gaussian proposal, not of a
    posterior."""
    simulator = _Counted(task.point_simulator)
    inference = ALFI(
        task.prior,
        simulator,
        num_steps=ALFI_STEPS,
        num_proposal_samples=ALFI_DRAWS,
        num_simulations_per_sample=task.num_points,
        # The paper's step: the Gauss-Newton machine's posterior simulates
        # 10 n points per step and calibrates on them, which `alfi_schedule`'s
        # budget does not count; the committed results ran this machine.
        machine_kwargs={"gauss_newton": False},
        show_progress_bars=False,
    )
    start = time.perf_counter()
    inference.train(
        num_tasks=alfi_schedule(num_simulations),
        num_observations=task.num_points,
        training_batch_size=8,
        max_num_epochs=ALFI_EPOCHS,
        learning_rate_schedule="cosine",
    )
    posterior = inference.build_posterior()
    trained = time.perf_counter()
    data_set = x_o.reshape(task.num_points, -1)
    samples = posterior.sample((num_samples,), x=data_set)
    estimate = posterior.map(x=data_set)
    end = time.perf_counter()
    used = -(-simulator.num_points // task.num_points)
    return samples, estimate, used, trained - start, end - trained


#: Each method's runner: `(task, num_simulations, x_o, num_samples)` to the
#: draws, the point estimate, the simulations used, and the training and
#: sampling seconds.
METHODS: dict[str, Callable] = {
    "npe": _sbi(NPE),
    "nre_a_slice": _sbi(NRE_A, sample_with="mcmc", mcmc_method="slice_np_vectorized"),
    "nle_slice": _sbi(NLE, sample_with="mcmc", mcmc_method="slice_np_vectorized"),
    "aalr_hmc_vectorized": _aalr("hmc_vectorized"),
    "aalr_mh_vectorized": _aalr("mh_vectorized"),
    "aalr_smc_vectorized": _aalr("smc_vectorized"),
    # The factorized route on the data-set tasks (gaussian, poisson, weinberg).
    "aalr_iid_hmc_vectorized": _aalr("hmc_vectorized", iid=True),
    # AALR's HMC on sbi's default classifier (NRE_A's ReLU network, 50 wide):
    # the sampler against nre_a_slice on the same network.
    "aalr_relu_hmc_vectorized": _aalr("hmc_vectorized", classifier="resnet"),
    # 4 chains for Pyro's kernels, as Pyro's examples use.
    "aalr_nuts_pyro": _aalr("nuts_pyro", num_chains=4),
    "aalr_hmc_pyro": _aalr("hmc_pyro", num_chains=4),
    "alfi": _alfi,
}


def run_method(
    method: str,
    task: Task,
    num_simulations: int,
    x_o: Tensor,
    num_samples: int = 2_000,
    seed: int = 0,
) -> Run:
    r"""Runs `method` on a budget of `num_simulations` and draws `num_samples`
    from its posterior of `x_o`, all under `seed`.

    Every method but ALFI simulates `num_simulations` pairs from the prior and
    trains on them; ALFI spends the budget on meta-training tasks and the
    simulations of its inference (:func:`alfi_schedule`).

    Arguments:
        method: One of `METHODS`.
        task: The task.
        num_simulations: The simulation budget, in observations.
        x_o: The observation, `(*x_shape)`.
        num_samples: The posterior draws.
        seed: The torch seed of the simulations, the training and the sampling.

    Returns:
        A :class:`Run`.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; the methods are {list(METHODS)}.")
    # NumPy's global generator too: sbi's vectorized slice sampler draws from it
    # (np.random itself), and unseeded it carried the history of earlier runs in
    # the process (the same run's C2ST moved by 0.01).
    numpy_state = np.random.get_state()  # noqa: NPY002
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            np.random.seed(seed)  # noqa: NPY002
            samples, estimate, used, train, sample = METHODS[method](
                task, num_simulations, x_o, num_samples
            )
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
    return Run(
        samples.detach().reshape(num_samples, -1),
        estimate.detach().reshape(-1),
        used,
        train,
        sample,
    )
