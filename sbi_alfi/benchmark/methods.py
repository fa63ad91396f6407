r"""The methods a benchmark compares, each run the same way: train on a budget of
simulations, then draw from the posterior of one observation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from sbi.inference import NLE, NPE, NRE_A
from torch import Tensor

from ..aalr import AALR
from .tasks import Task

__all__ = ["METHODS", "Run", "run_method"]


class Run(NamedTuple):
    r"""What one method produced on one observation."""

    samples: Tensor  #: posterior draws, `(num_samples, D)`
    num_simulations: int  #: every simulation the method made, inference included
    train_seconds: float
    sample_seconds: float


def _sbi(cls, **posterior_kwargs) -> Callable:
    def run(task: Task, theta: Tensor, x: Tensor, x_o: Tensor, num_samples: int):
        inference = cls(task.prior, show_progress_bars=False)
        start = time.perf_counter()
        inference.append_simulations(theta, x).train()
        posterior = inference.build_posterior(**posterior_kwargs)
        trained = time.perf_counter()
        samples = posterior.sample((num_samples,), x=x_o, show_progress_bars=False)
        return samples, trained - start, time.perf_counter() - trained

    return run


def _aalr(method: str) -> Callable:
    def run(task: Task, theta: Tensor, x: Tensor, x_o: Tensor, num_samples: int):
        inference = AALR(task.prior, show_progress_bars=False)
        start = time.perf_counter()
        inference.append_simulations(theta, x).train()
        posterior = inference.build_posterior(method=method, show_progress_bars=False)
        trained = time.perf_counter()
        samples = posterior.sample((num_samples,), x=x_o[None])
        return samples, trained - start, time.perf_counter() - trained

    return run


#: Each method's runner: `(task, theta, x, x_o, num_samples)` to the draws and the
#: training and sampling seconds.
METHODS: dict[str, Callable] = {
    "npe": _sbi(NPE),
    "nre_a_slice": _sbi(NRE_A, sample_with="mcmc", mcmc_method="slice_np_vectorized"),
    "nle_slice": _sbi(NLE, sample_with="mcmc", mcmc_method="slice_np_vectorized"),
    "aalr_hmc_vectorized": _aalr("hmc_vectorized"),
    "aalr_mh_vectorized": _aalr("mh_vectorized"),
}


def run_method(
    method: str,
    task: Task,
    num_simulations: int,
    x_o: Tensor,
    num_samples: int = 2_000,
    seed: int = 0,
) -> Run:
    r"""Simulates `num_simulations` pairs from the prior, trains `method` on them
    and draws `num_samples` from its posterior of `x_o`, all under `seed`.

    Arguments:
        method: One of `METHODS`.
        task: The task.
        num_simulations: The simulation budget.
        x_o: The observation, `(*x_shape)`.
        num_samples: The posterior draws.
        seed: The torch seed of the simulations, the training and the sampling.

    Returns:
        A :class:`Run`.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; the methods are {list(METHODS)}.")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        theta = task.prior.sample((num_simulations,))
        x = task.simulator(theta)
        samples, train, sample = METHODS[method](task, theta, x, x_o, num_samples)
    return Run(
        samples.detach().reshape(num_samples, -1), num_simulations, train, sample
    )
