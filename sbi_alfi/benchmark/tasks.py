r"""Benchmark tasks: a prior, a simulator of one observation per parameter, the
exact likelihood of an observation, and exact reference posterior draws."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.distributions import Distribution, MultivariateNormal

from ..samplers import importance_resample
from ..simulators import SLCP, Gaussian, Poisson, Weinberg
from ..simulators.base import Simulator

__all__ = ["TASKS", "Task", "make_task"]


@dataclass
class Task:
    r"""A benchmark problem with a trustworthy reference.

    The reference posterior of an observation is exact: analytic where the
    posterior is (`posterior`), otherwise prior draws resampled by the exact
    likelihood (:func:`~sbi_alfi.samplers.importance_resample`), whose weights'
    effective sample size is checked to be at least 10× the draws. No Markov
    chain's mixing is involved, so the reference cannot share a sampler's bias.

    Arguments:
        name: The task's name.
        prior: The prior.
        simulator: Maps `theta` `(B, D)` to observations `(B, *x_shape)`.
        log_likelihood: Maps `theta` `(B, D)` and one observation to `(B,)`.
        num_proposals: The prior draws resampled for a reference.
        posterior: The analytic posterior of an observation, if there is one.
        data_set: The simulator's data-set form, `(B, n, *point_shape)`, for
            methods that take data sets (ALFI), if observations are data sets.
    """

    name: str
    prior: Distribution
    simulator: Callable[[Tensor], Tensor]
    log_likelihood: Callable[[Tensor, Tensor], Tensor]
    num_proposals: int = 1_000_000
    posterior: Callable[[Tensor], Distribution] | None = None
    data_set: Callable[[Tensor], Tensor] | None = None

    def observation(self, seed: int) -> tuple[Tensor, Tensor]:
        r"""A true parameter from the prior and its observation, `(D,)` and
        `(*x_shape)`, the same for the same `seed`."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            theta = self.prior.sample((1,))
            return theta[0], self.simulator(theta)[0]

    def reference(
        self, x_o: Tensor, num_samples: int = 2_000, cache: Path | None = None
    ) -> Tensor:
        r"""Exact posterior draws for `x_o`, `(num_samples, D)`; loaded from, or
        saved to, the folder `cache` when given (keyed by the task, `x_o` and the
        number of draws)."""
        path = None
        if cache is not None:
            key = hashlib.sha1(x_o.cpu().numpy().tobytes()).hexdigest()[:16]
            path = Path(cache) / f"{self.name}-{key}-{num_samples}.pt"
            if path.exists():
                return torch.load(path)
        if self.posterior is not None:
            draws = self.posterior(x_o).sample((num_samples,))
        else:

            def log_density(theta: Tensor) -> Tensor:
                return self.log_likelihood(theta, x_o) + self.prior.log_prob(theta)

            draws, _ = importance_resample(
                log_density,
                self.prior,
                num_samples,
                num_proposals=self.num_proposals,
                batch_size=500_000,
            )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(draws, path)
        return draws


def gaussian_linear(dim: int = 5, noise: float = 0.5) -> Task:
    r""":math:`\theta \sim \mathcal{N}(0, I)`, :math:`x \mid \theta \sim
    \mathcal{N}(\theta, \sigma^2 I)`: the posterior is the conjugate Gaussian."""
    prior = MultivariateNormal(torch.zeros(dim), torch.eye(dim))
    variance = 1 / (1 + 1 / noise**2)

    def simulator(theta: Tensor) -> Tensor:
        return theta + noise * torch.randn_like(theta)

    def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
        return torch.distributions.Normal(theta, noise).log_prob(x_o).sum(-1)

    def posterior(x_o: Tensor) -> Distribution:
        return MultivariateNormal(variance * x_o / noise**2, variance * torch.eye(dim))

    return Task(
        "gaussian_linear", prior, simulator, log_likelihood, posterior=posterior
    )


def slcp() -> Task:
    r"""The AALR paper's tractable problem: 4 draws of a 2-D Gaussian whose mean
    and covariance are functions of :math:`\theta \in [-3, 3]^5`; four modes."""
    sim = SLCP()

    def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
        return sim.log_likelihood(theta, x_o)

    return Task("slcp", sim.prior, sim, log_likelihood, num_proposals=20_000_000)


def data_set_task(name: str, sim: Simulator, num_points: int) -> Task:
    r"""An observation is a data set of `num_points` i.i.d. draws of `sim` (the
    ALFI paper's setting), flattened to a vector `(num_points * point_size,)`."""

    def data_set(theta: Tensor) -> Tensor:
        shape = (len(theta), num_points, theta.shape[-1])
        return sim(theta[:, None].expand(shape))

    def simulator(theta: Tensor) -> Tensor:
        return data_set(theta).reshape(len(theta), -1)

    def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
        points = x_o.reshape(num_points, *sim.x_shape)
        return sim.log_likelihood(theta[:, None], points).sum(-1)

    return Task(
        name,
        sim.prior,
        simulator,
        log_likelihood,
        num_proposals=10_000_000,
        data_set=data_set,
    )


TASKS: dict[str, Callable[[], Task]] = {
    "gaussian_linear": gaussian_linear,
    "slcp": slcp,
    "weinberg": lambda: data_set_task("weinberg", Weinberg(), 20),
    "poisson": lambda: data_set_task("poisson", Poisson(), 20),
    "gaussian": lambda: data_set_task("gaussian", Gaussian(), 20),
}


def make_task(name: str) -> Task:
    r"""The task called `name`, one of `TASKS`."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; the tasks are {sorted(TASKS)}.")
    return TASKS[name]()
