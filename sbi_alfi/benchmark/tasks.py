r"""Benchmark tasks: a prior, a simulator of one observation per parameter, the
exact likelihood of an observation, and exact reference posterior draws."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sbi.utils import BoxUniform
from sbi.utils.sbiutils import within_support
from torch import Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    MixtureSameFamily,
    MultivariateNormal,
)

from ..samplers import importance_resample
from ..simulation import simulate_batch
from ..simulators import SLCP, Gaussian, Poisson, Weinberg
from ..simulators.base import Simulator

__all__ = ["TASKS", "SbibmTask", "Task", "make_task", "sbibm_task"]

# The rows of a chunk when a task simulates on an engine: the benchmark's
# simulators are batched and fast, so a chunk is a worker's share of a budget.
SIMULATION_CHUNK_SIZE = 1_000


@dataclass
class Task:
    r"""A benchmark problem with a trustworthy reference.

    The reference posterior of an observation is exact: analytic where the
    posterior is (`posterior`), otherwise prior draws resampled by the exact
    likelihood (:func:`~sbi_alfi.samplers.importance_resample`), whose weights'
    effective sample size is checked to be at least 10× the draws. No Markov
    chain's mixing is involved, so the reference cannot share a sampler's bias.
    A task with neither (a simulator whose likelihood is unknown) has no
    reference: a benchmark then scores the point estimates only.

    Arguments:
        name: The task's name.
        prior: The prior.
        simulator: Maps `theta` `(B, D)` to observations `(B, *x_shape)`.
        log_likelihood: Maps `theta` `(B, D)` and one observation to `(B,)`,
            if the likelihood is known.
        num_proposals: The prior draws resampled for a reference.
        posterior: The analytic posterior of an observation, if there is one.
        point_simulator: Maps `theta` `(B, D)` to one point each, when an
            observation is a data set of `num_points` i.i.d. points given
            :math:`\theta` (what ALFI takes); `simulator` itself when `None`.
        num_points: The points in one observation.
        engine: Where the methods' training simulations run: `None` (this
            process), or an engine of :func:`sbi_alfi.simulation.simulate` (a
            number of local processes, a `dask.distributed.Client`, `"ray"`),
            in chunks seeded from torch's generator, so a run draws the same
            simulations on every engine (not those of `None`).

    Example:
        >>> import torch
        >>> from sbi.utils import BoxUniform
        >>> from torch.distributions import Normal
        >>> task = Task(
        ...     "shift",
        ...     BoxUniform(-torch.ones(1), torch.ones(1)),
        ...     simulator=lambda theta: theta + 0.1 * torch.randn_like(theta),
        ...     log_likelihood=lambda theta, x: Normal(theta, 0.1).log_prob(x).sum(-1),
        ... )
        >>> theta_o, x_o = task.observation(seed=0)
        >>> task.reference(x_o, num_samples=100).shape
        torch.Size([100, 1])
    """

    name: str
    prior: Distribution
    simulator: Callable[[Tensor], Tensor]
    log_likelihood: Callable[[Tensor, Tensor], Tensor] | None = None
    num_proposals: int = 1_000_000
    posterior: Callable[[Tensor], Distribution] | None = None
    point_simulator: Callable[[Tensor], Tensor] | None = None
    num_points: int = 1
    engine: Any = None

    def simulate(self, num_simulations: int) -> tuple[Tensor, Tensor]:
        r"""`num_simulations` pairs from the prior and the simulator, on
        :attr:`engine`."""
        theta = self.prior.sample((num_simulations,))
        # NaN/inf kept on every engine: the methods deal with them as sbi's do.
        x = simulate_batch(
            self.simulator, theta, self.engine, SIMULATION_CHUNK_SIZE, "keep"
        )
        return theta, x

    def __post_init__(self):
        if self.point_simulator is None:
            self.point_simulator = self.simulator

    @property
    def has_reference(self) -> bool:
        r"""Whether the task can give reference posterior draws."""
        return self.posterior is not None or self.log_likelihood is not None

    def data_set(self, theta: Tensor) -> Tensor:
        r"""Observations at `theta` `(B, D)` as data sets, `(B, num_points,
        *point_shape)`: the form ALFI takes."""
        shape = (len(theta), self.num_points, theta.shape[-1])
        return self.point_simulator(theta[:, None].expand(shape))

    def observation(self, seed: int) -> tuple[Tensor, Tensor]:
        r"""A true parameter from the prior and its observation, `(D,)` and
        `(*x_shape)`, the same for the same `seed`."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            theta = self.prior.sample((1,))
            return theta[0], self.simulator(theta)[0]

    def reference(
        self,
        x_o: Tensor,
        num_samples: int = 2_000,
        cache: Path | None = None,
        proposal: Distribution | None = None,
    ) -> Tensor:
        r"""Exact posterior draws for `x_o`, `(num_samples, D)`; loaded from, or
        saved to, the folder `cache` when given (keyed by the task, `x_o` and the
        number of draws). `proposal`, with `sample` and `log_prob`, replaces the
        prior as the first importance pass's proposal: any proposal whose support
        holds the posterior's gives exact draws, a closer one gives them sooner."""
        path = None
        if cache is not None:
            key = hashlib.sha1(x_o.cpu().numpy().tobytes()).hexdigest()[:16]
            path = Path(cache) / f"{self.name}-{key}-{num_samples}.pt"
            if path.exists():
                return torch.load(path)
        if self.posterior is not None:
            draws = self.posterior(x_o).sample((num_samples,))
        elif self.log_likelihood is None:
            raise ValueError(
                f"Task {self.name!r} has neither an analytic `posterior` nor a "
                "`log_likelihood`, so it has no reference."
            )
        else:
            draws = self._resample(x_o, num_samples, proposal)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(draws, path)
        return draws

    def _resample(
        self, x_o: Tensor, num_samples: int, proposal: Distribution | None = None
    ) -> Tensor:
        r"""Prior draws resampled by the likelihood. When the posterior is too
        narrow for that, adaptive importance sampling (Cappé et al., 2004): each
        round's proposal is a kernel density of the last round's draws, mixed
        with the prior (Hesterberg's defensive mixture), until the weights' ESS
        is 10x the draws. Every round is exact importance sampling, so the final
        draws are as exact as the first pass's would have been. The first kernel
        round draws a quarter of `num_proposals`; later ones as many as the last
        round's efficiency needs for the target ESS (up to `MAX_GROWTH` times
        `num_proposals`, or `MIN_ROUND` if more)."""

        def log_density(theta: Tensor) -> Tensor:
            inside = within_support(self.prior, theta)
            log_p = self.log_likelihood(theta, x_o) + self.prior.log_prob(theta)
            return torch.where(inside, log_p, -torch.inf)

        proposal = self.prior if proposal is None else proposal
        num_proposals = self.num_proposals
        for _ in range(MAX_ROUNDS):
            # Gumbel top-k draws come in order, so any first m are m draws.
            draws, ess = importance_resample(
                log_density,
                proposal,
                num_samples,
                num_proposals=num_proposals,
                batch_size=500_000,
                min_ess_ratio=0,
            )
            if ess >= 10 * num_samples:
                return draws
            most = max(MAX_GROWTH * self.num_proposals, MIN_ROUND)
            if isinstance(proposal, _Defensive):
                # Draw what the last round's efficiency needs for the target ESS,
                # with a margin, but at most 4 times the last round: a density on
                # better centres is often far more efficient (SLCP: ESS 653, then
                # 23,292 from as many draws), and 80M draws through 200 kernels
                # took half an hour.
                needed = int(1.5 * 10 * num_samples * num_proposals / max(ess, 1.0))
                grown = min(needed, GROWTH_PER_ROUND * num_proposals)
                num_proposals = min(max(num_proposals, grown), most)
            else:
                num_proposals = max(self.num_proposals // 4, MIN_ROUND)
            centres = draws[: min(NUM_KERNELS, max(10, int(ess / 5)))]
            proposal = _Defensive(centres, self.prior)
        raise ValueError(
            f"The reference of task {self.name!r} reached an importance ESS of "
            f"only {ess:.0f} for {num_samples} draws after {MAX_ROUNDS} rounds; "
            "raise `num_proposals`."
        )


# The rounds of adaptive importance sampling, at most, the fewest proposals of a
# kernel-density round, and how far past `num_proposals` a round sized by the
# last one's efficiency may go. A prior pass with a tiny ESS gives the first
# kernel density few centres and a poor efficiency, and each round's centres
# grow with the last one's ESS: for one SLCP observation in the seed sweep of
# the tests, the ESS went 42, 33, 813, 12,420 in four rounds of at most
# `num_proposals`, short of the 20,000 asked for.
MAX_ROUNDS = 6
MIN_ROUND = 100_000
MAX_GROWTH = 4
GROWTH_PER_ROUND = 4
# The kernels of a proposal: few, since every proposal's density sums them.
NUM_KERNELS = 200


class _Defensive:
    r"""The mixture :math:`q = w\,\mathrm{KDE} + (1 - w)\,p(\theta)` of Gaussian
    kernels at `centres` (Scott's bandwidth times their covariance) and the prior.
    Its density is computed in chunks, since every point meets every kernel."""

    def __init__(self, centres: Tensor, prior: Distribution, weight: float = 0.9):
        n, d = centres.shape
        bandwidth = n ** (-1 / (d + 4))
        covariance = bandwidth**2 * torch.cov(centres.T).reshape(d, d)
        scale_tril, info = torch.linalg.cholesky_ex(covariance + 1e-9 * torch.eye(d))
        if info != 0:
            # Fewer distinct centres than dimensions (a first pass of tiny ESS
            # resamples a handful of points): a floor of the prior's spread per
            # dimension keeps every kernel a density.
            spread = torch.cov(prior.sample((1_000,)).T).reshape(d, d).diagonal()
            floor = torch.diag(1e-4 * spread + 1e-9)
            scale_tril = torch.linalg.cholesky(covariance + floor)
        self.scale_tril = scale_tril
        self.centres = centres
        # torch's mixture for the density; its `sample` would draw every kernel
        # for every point, so `sample` below picks one kernel per point instead.
        self.kde = MixtureSameFamily(
            Categorical(logits=torch.zeros(n)),
            MultivariateNormal(centres, scale_tril=self.scale_tril),
        )
        self.prior = prior
        self.log_weights = torch.tensor([weight, 1 - weight]).log()

    def sample(self, sample_shape: torch.Size) -> Tensor:
        (num,) = sample_shape
        theta = self.prior.sample((num,))
        kernel = torch.rand(num) < self.log_weights[0].exp()
        centres = self.centres[torch.randint(len(self.centres), (int(kernel.sum()),))]
        theta[kernel] = centres + torch.randn_like(centres) @ self.scale_tril.T
        return theta

    def log_prob(self, theta: Tensor) -> Tensor:
        return torch.cat([self._log_prob(chunk) for chunk in theta.split(20_000)])

    def _log_prob(self, theta: Tensor) -> Tensor:
        log_kde = self.kde.log_prob(theta)
        inside = within_support(self.prior, theta)
        log_prior = torch.where(inside, self.prior.log_prob(theta), -torch.inf)
        return torch.logaddexp(
            self.log_weights[0] + log_kde, self.log_weights[1] + log_prior
        )


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

    def simulator(theta: Tensor) -> Tensor:
        return sim(theta[:, None].expand(len(theta), num_points, -1)).flatten(1)

    def log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
        points = x_o.reshape(num_points, *sim.x_shape)
        return sim.log_likelihood(theta[:, None], points).sum(-1)

    return Task(
        name,
        sim.prior,
        simulator,
        log_likelihood,
        num_proposals=10_000_000,
        point_simulator=sim,
        num_points=num_points,
    )


@dataclass
class SbibmTask(Task):
    r"""A task of `sbibm` (Lueckmann et al., 2021), the field's standard
    benchmark: its prior, simulator, ten observations and their reference
    posterior draws (10,000 each, shipped with `sbibm`). Seed `s` takes
    observation `s mod 10 + 1`. `sbibm` declares stale pins (`sbi<0.22`), so it
    is installed without its dependencies, for benchmarks only
    (`make benchmark-install`).

    References:
        | Benchmarking Simulation-Based Inference
        | (Lueckmann et al., 2021) https://arxiv.org/abs/2101.04653
    """

    sbibm_name: str = ""

    @property
    def has_reference(self) -> bool:
        return True

    def _index(self, seed: int) -> int:
        return seed % self._sbibm.num_observations + 1

    def observation(self, seed: int) -> tuple[Tensor, Tensor]:
        index = self._index(seed)
        theta = self._sbibm.get_true_parameters(num_observation=index)
        return theta[0], self._sbibm.get_observation(num_observation=index)[0]

    def reference(
        self, x_o: Tensor, num_samples: int = 2_000, cache: Path | None = None
    ) -> Tensor:
        for index in range(1, self._sbibm.num_observations + 1):
            if torch.equal(self._sbibm.get_observation(num_observation=index)[0], x_o):
                draws = self._sbibm.get_reference_posterior_samples(index)
                if num_samples > len(draws):
                    raise ValueError(
                        f"sbibm's {self.sbibm_name} has {len(draws)} reference draws, "
                        f"{num_samples} were asked for."
                    )
                return draws[:num_samples]
        raise ValueError(f"`x_o` is none of sbibm's {self.sbibm_name} observations.")

    @property
    def _sbibm(self):
        return _sbibm_module().get_task(self.sbibm_name)


def _sbibm_module():
    try:
        import sbibm
    except ImportError as error:
        raise ImportError(
            "The sbibm tasks need sbibm, installed for benchmarks only: run "
            "`make benchmark-install` (or `pip install --no-deps sbibm pandas`)."
        ) from error
    return sbibm


def sbibm_task(name: str) -> SbibmTask:
    r"""`sbibm`'s task `name` (e.g. `"two_moons"`) as the task `sbibm_<name>`,
    with its box prior as `sbi`'s `BoxUniform`."""
    task = _sbibm_module().get_task(name)
    prior = BoxUniform(task.prior_params["low"], task.prior_params["high"])
    simulator = task.get_simulator()
    return SbibmTask(
        f"sbibm_{name}", prior, lambda theta: simulator(theta), sbibm_name=name
    )


TASKS: dict[str, Callable[[], Task]] = {
    "gaussian_linear": gaussian_linear,
    "slcp": slcp,
    "weinberg": lambda: data_set_task("weinberg", Weinberg(), 20),
    "poisson": lambda: data_set_task("poisson", Poisson(), 20),
    "gaussian": lambda: data_set_task("gaussian", Gaussian(), 20),
    "sbibm_two_moons": lambda: sbibm_task("two_moons"),
    "sbibm_slcp": lambda: sbibm_task("slcp"),
    "sbibm_gaussian_linear_uniform": lambda: sbibm_task("gaussian_linear_uniform"),
}


def make_task(name: str) -> Task:
    r"""The task called `name`, one of `TASKS`."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; the tasks are {sorted(TASKS)}.")
    return TASKS[name]()
