r"""MCMC on an amortized likelihood-to-evidence ratio."""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.multiprocessing as mp
from pyro.infer import HMC, MCMC, NUTS
from sbi.sbi_types import Shape
from sbi.utils import mcmc_transform, process_prior
from sbi.utils.torchutils import process_device
from torch import Tensor, nn
from torch.distributions import Distribution

from ..checked_posterior import CheckedPosterior, theta_dim
from ..diagnostics import check_chains, check_evidence, warn_problems
from ..diagnostics.mcmc import MIN_SUPERCHAINS
from ..samplers import VectorizedHMC, VectorizedMH, importance_resample
from ..samplers.smc import smc
from .target import FunctionRatio, PyroPotential, RatioPotential, Target, log_ratio

__all__ = ["METHODS", "RatioMCMCPosterior"]

Method = Literal[
    "hmc_vectorized", "mh_vectorized", "smc_vectorized", "hmc_pyro", "nuts_pyro"
]
METHODS: tuple[str, ...] = get_args(Method)
# "proposal" and "sir" are sbi's names: its proposal is the prior, and its SIR
# resamples prior draws weighted by the ratio, as "resample" does.
InitStrategy = Literal["resample", "prior", "proposal", "sir"]
INIT_STRATEGIES = {
    "resample": "resample",
    "sir": "resample",
    "prior": "prior",
    "proposal": "prior",
}
# The default chains: the vectorized kernels step 100 as one batch for about
# the time of one (the network's pass and Python's overhead hardly grow with the
# batch on a CPU) and pool them in the warmup; Pyro's kernels run a chain per
# process (or in turn, on fewer CPUs), so a handful.
NUM_CHAINS = 100
NUM_CHAINS_PYRO = 4
# The fewest draws each chain of a vectorized method keeps, however few are
# asked for: 10 steps after 200 of warmup cost 5 % more and give nested R-hat
# chains it can read (with 1 draw each, a chain's spread is one draw's and
# chains stuck in two modes escaped the warning); the draws returned are spread
# over the chains.
MIN_DRAWS_PER_CHAIN = 10
# The default thinning of random-walk Metropolis-Hastings.
MH_THIN = 20
# The chains of a superchain: they start from one point, so their spread
# measures how far they have forgotten it (nested R-hat, Margossian et al.,
# 2024). Two, not more, so that 100 chains start from 50 points, the modes'
# shares of the starts following the posterior's to 2 %.
SUPERCHAIN_SIZE = 2
# The most (candidate, observation) pairs the initialization sends the network
# at once in `sample_batched`.
INIT_ROWS_PER_CALL = 500_000
# SMC's fewest particles per observation, whatever the draws asked for: with
# 4,000, four unequal modes' shares in 2,000 draws came within 0.028 of their
# weights over 20 seeds (benchmarks/results/seeds-nested).
SMC_MIN_PARTICLES = 4_000
# SMC tempers each observation's particles in this many independent islands:
# the spread of their means is the run's own error, read as nested R-hat reads
# superchains (10: one degree of freedom in 9, above MIN_SUPERCHAINS).
SMC_ISLANDS = 10


class _Settings(NamedTuple):
    r"""What one run uses: the posterior's settings with a call's overrides."""

    method: str
    num_chains: int
    warmup_steps: int
    thin: int
    init_strategy: str | Distribution
    num_init_candidates: int
    mp_context: str


class RatioMCMCPosterior(CheckedPosterior):
    r"""The posterior of an amortized likelihood-to-evidence ratio estimator
    :math:`\hat r(x \mid \theta) \approx p(x \mid \theta) / p(x)`, sampled by MCMC.

    For :math:`n` i.i.d. observations :math:`x_1 \dots x_n`,

    .. math:: \log p(\theta \mid x) = \sum_i \log \hat r(x_i \mid \theta)
        + \log p(\theta) + \text{const},

    sampled in the unconstrained space :math:`z = t(\theta)` of
    `sbi.utils.mcmc_transform`, with the log-Jacobian of :math:`t^{-1}` added, so
    no proposal falls outside the prior's support. The evidence cancels in every
    acceptance ratio (Hermans et al., 2020).

    Methods: `"smc_vectorized"` (default) tempers particles from the prior to
    the posterior (:func:`~sbi_alfi.samplers.smc.smc`), so resampling, not the
    initialization, weighs the modes of a multimodal posterior (it was chosen
    by effective draws per second on 4 tasks, `benchmarks/sampler_speed.py`:
    HMC's chains stuck in SLCP's modes, with 59 leapfrog steps a transition),
    and checks the ratio's normalization: its evidence estimate
    :math:`\mathbb{E}_{p(\theta)}[\hat r(x \mid \theta)]` is 1 for a correct
    ratio, and a run beyond a factor of 2 warns (for one observation; with
    i.i.d. rows the product of ratios need not integrate to 1);
    `"hmc_vectorized"` and `"mh_vectorized"` step all chains as one batch
    (:mod:`sbi_alfi.samplers`); `"hmc_pyro"` and `"nuts_pyro"` run Pyro's own
    kernels, one `pyro.infer.MCMC(num_chains=...)` per observation (chains in
    parallel processes when the CPUs allow, as `sbi` runs them), with their
    options exposed. After a run,
    `chains` holds the draws with their chain dimension and `diagnostics` the
    convergence statistics per parameter and the kernels' statistics per chain.
    The vectorized chains start in superchains of `SUPERCHAIN_SIZE` that share
    a resampled point, so nested :math:`\hat R` (Margossian et al., 2024) can
    tell chains that forgot their start from chains that did not, and reads
    many 10-draw chains as what they are: a run whose effective draws
    :math:`K / (\widehat{\mathfrak n R}^2 - 1)` over its :math:`K` superchains
    (SMC: over its islands; Pyro's few long chains: split :math:`\hat R` and
    bulk ESS) are fewer than a tenth of its draws, or with divergences, warns
    (:func:`~sbi_alfi.diagnostics.check_chains`). A potential that is NaN (or
    :math:`+\infty`) inside the prior's support raises a :class:`ValueError`
    naming the chain and :math:`\theta`, whatever the method: it is a broken
    estimator, not a rejection. (Only a diverging trajectory's overflow,
    beyond `Z_FAR` (1,000) in the unconstrained space, counts as zero density.)

    The calls of `sbi`'s `MCMCPosterior` work as they are: `sample` and
    `sample_batched` take its per-call overrides (`method`, `num_chains`,
    `warmup_steps`, `thin`, `init_strategy`, `init_strategy_parameters`),
    `set_mcmc_method` and `mcmc_method` switch the sampler, `map`, `potential`,
    `log_prob` (unnormalized, with `sbi`'s warnings), `set_default_x` and `to`
    behave as `sbi`'s.

    References:
        | Likelihood-free MCMC with Amortized Approximate Ratio Estimators
        | (Hermans et al., 2020) https://arxiv.org/abs/1903.04057

    Arguments:
        estimator: Any `sbi` ratio estimator (NRE_A, NRE_B, NRE_C, BNRE), any
            module mapping `(theta, x)` batches to log-ratios `(B,)` or `(B, 1)`,
            or a plain function `f(theta, x)` that does.
        prior: The prior.
        method: The sampler, one of `METHODS`.
        num_chains: The number of chains; when `None`, `NUM_CHAINS` (100) for
            the vectorized methods, `NUM_CHAINS_PYRO` (4) for Pyro's. A
            vectorized run keeps at least `MIN_DRAWS_PER_CHAIN` (10) draws per
            chain and returns the draws asked for, spread over the chains.
        warmup_steps: The warmup (adaptation) steps of every chain.
        thin: Keep one draw in `thin`; when `None`, 20 for `"mh_vectorized"`,
            whose random-walk draws are strongly autocorrelated (with 1, the
            benchmark's 5-D Gaussian posterior scored C2ST 0.73–0.78 against
            0.55 for HMC), and 1 for the gradient-based methods.
        init_strategy: `"resample"` (systematic resampling of prior draws
            weighted by the ratio, one batch for all chains; `sbi`'s `"sir"` is
            the same), `"prior"` (`sbi`'s `"proposal"`), or a distribution over
            :math:`\theta`.
        num_init_candidates: The number of prior draws to resample from
            (`sbi`'s `init_strategy_parameters={"num_candidate_samples": ...}`).
        kernel_kwargs: Options of the kernel: for `"hmc_vectorized"` those of
            :class:`~sbi_alfi.samplers.VectorizedHMC` (`step_size`, `num_steps`,
            `target_accept`, `mass_matrix`, `adapt_trajectory_length`,
            `max_num_steps`); for `"mh_vectorized"`
            `target_accept` and `proposal` (an independence proposal over
            :math:`z`); for `"smc_vectorized"` `num_particles` (at least
            `SMC_MIN_PARTICLES`, and the draws asked for), `target_ess`,
            `num_moves`, `min_moves`, `min_growth`, `max_steps` (of
            :func:`~sbi_alfi.samplers.smc.smc`; it ignores `num_chains`,
            `warmup_steps`, `thin` and `init_strategy`); for Pyro's kernels
            their own arguments (`step_size`, `target_accept_prob`,
            `full_mass`, `max_tree_depth`, `jit_compile`...).
        device: The device of the chains; the estimator's when `None`.
        show_progress_bars: Whether to show Pyro's progress bar.
        init_strategy_parameters: `sbi`'s: `{"num_candidate_samples": N}` sets
            `num_init_candidates`.
        num_workers: Accepted for `sbi`'s calls and unused: the vectorized
            chains run as one batch.
        mp_context: The multiprocessing context in which Pyro runs its chains
            in parallel when the CPUs allow, as `sbi`'s (`"fork"` when the
            estimator cannot be pickled).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from sbi.utils import BoxUniform
        >>> from sbi_alfi import RatioMCMCPosterior
        >>> class ExactRatio(nn.Module):  # log N(x; theta, 1), up to the evidence
        ...     def forward(self, theta, x):
        ...         return -0.5 * (x - theta).square().sum(-1)
        >>> prior = BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
        >>> posterior = RatioMCMCPosterior(ExactRatio(), prior,
        ...                                show_progress_bars=False)
        >>> posterior.sample((2000,), x=torch.zeros(1, 2)).shape
        torch.Size([2000, 2])
        >>> posterior.chains.shape  # SMC: (islands, particles per island, D)
        torch.Size([10, 400, 2])
        >>> posterior.sample((2000,), x=torch.zeros(1, 2), method="hmc_vectorized",
        ...                  num_chains=20, warmup_steps=50).shape
        torch.Size([2000, 2])
        >>> posterior.chains.shape  # (chains, draws per chain, D)
        torch.Size([20, 100, 2])
    """

    def __init__(
        self,
        estimator: nn.Module | Callable[[Tensor, Tensor], Tensor],
        prior: Distribution,
        method: Method = "smc_vectorized",
        num_chains: int | None = None,
        warmup_steps: int = 200,
        thin: int | None = None,
        init_strategy: InitStrategy | Distribution = "resample",
        num_init_candidates: int = 10_000,
        kernel_kwargs: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        show_progress_bars: bool = True,
        init_strategy_parameters: dict[str, Any] | None = None,
        num_workers: int = 1,
        mp_context: str = "spawn",
    ):
        if not isinstance(estimator, nn.Module):
            if not callable(estimator):
                raise ValueError(
                    "`estimator` must be a ratio estimator (a module) or a function "
                    f"f(theta, x) of log-ratios, got {type(estimator).__name__}."
                )
            estimator = FunctionRatio(estimator)
        prior, _, _ = process_prior(prior)  # log_prob is -inf off the support
        theta_shape = getattr(estimator, "theta_shape", None)  # sbi's estimators
        prior_shape = prior.event_shape or prior.sample().shape
        if theta_shape is not None and tuple(theta_shape) != tuple(prior_shape):
            raise ValueError(
                f"The ratio estimator takes theta of shape {tuple(theta_shape)}, but "
                f"the prior's theta has shape {tuple(prior_shape)}."
            )
        if device is None:
            parameter = next(iter(estimator.parameters()), None)
            device = parameter.device if parameter is not None else "cpu"
        self.estimator = estimator
        self.prior = prior
        self.method = method
        self.num_chains = num_chains
        self.warmup_steps = warmup_steps
        self._thin = thin
        self.init_strategy = init_strategy
        self.num_init_candidates = num_init_candidates
        self.kernel_kwargs = dict(kernel_kwargs or {})
        self.show_progress_bars = show_progress_bars
        self.mp_context = mp_context
        del num_workers  # sbi's, for its calls: see `sample`
        # The settings' checks, before any run; sbi's names translated.
        settings = self._settings(init_strategy_parameters=init_strategy_parameters)
        self.init_strategy = settings.init_strategy
        self.num_init_candidates = settings.num_init_candidates
        self.chains: Tensor | None = None
        self._sample_stats: dict[str, Tensor] = {}
        self.diagnostics: dict[str, Tensor] = {}
        self._build(process_device(device))

    def _build(self, device: str) -> None:
        r"""The potential and transform on `device` (`sbi`'s base class resets the
        default x, which is kept)."""
        x_o = getattr(self, "_x", None)
        potential = RatioPotential(self.estimator, self.prior, device=device)
        super().__init__(
            potential,
            theta_transform=mcmc_transform(self.prior, device=device),
            device=device,
        )
        if x_o is not None:
            self.set_default_x(x_o.to(device))

    # Settings, with sbi's names

    @property
    def thin(self) -> int:
        r"""The thinning of the current method (see the `thin` argument)."""
        return self._default_thin(self.method) if self._thin is None else self._thin

    @thin.setter
    def thin(self, thin: int | None) -> None:
        self._thin = thin

    @staticmethod
    def _default_thin(method: str) -> int:
        return MH_THIN if method == "mh_vectorized" else 1

    @property
    def mcmc_method(self) -> str:
        r"""The MCMC method, as `sbi`'s `MCMCPosterior.mcmc_method`."""
        return self.method

    @mcmc_method.setter
    def mcmc_method(self, method: Method) -> None:
        self.set_mcmc_method(method)

    def set_mcmc_method(self, method: Method) -> RatioMCMCPosterior:
        r"""Sets the MCMC method, one of `METHODS`; returns the posterior, for
        chaining (as `sbi`'s)."""
        self._settings(method=method)
        self.method = method
        return self

    def _settings(
        self,
        method: str | None = None,
        num_chains: int | None = None,
        warmup_steps: int | None = None,
        thin: int | None = None,
        init_strategy: str | Distribution | None = None,
        init_strategy_parameters: dict[str, Any] | None = None,
        mp_context: str | None = None,
    ) -> _Settings:
        r"""The posterior's settings with the given overrides, checked, with
        `sbi`'s names translated."""
        method = self.method if method is None else method
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
        num_chains = self.num_chains if num_chains is None else num_chains
        if num_chains is None:
            num_chains = NUM_CHAINS_PYRO if method.endswith("_pyro") else NUM_CHAINS
        warmup_steps = self.warmup_steps if warmup_steps is None else warmup_steps
        thin = self._thin if thin is None or thin == -1 else thin  # sbi's -1: default
        thin = self._default_thin(method) if thin is None else thin
        if num_chains < 1 or warmup_steps < 0 or thin < 1:
            raise ValueError(
                "Need `num_chains` >= 1, `warmup_steps` >= 0 and `thin` >= 1, got "
                f"{num_chains}, {warmup_steps} and {thin}."
            )
        init = self.init_strategy if init_strategy is None else init_strategy
        if not isinstance(init, Distribution):
            if init not in INIT_STRATEGIES:
                raise ValueError(
                    f"`init_strategy` must be one of {tuple(INIT_STRATEGIES)} or a "
                    f"distribution, got {init!r}."
                )
            init = INIT_STRATEGIES[init]
        parameters = dict(init_strategy_parameters or {})
        num_candidates = parameters.pop("num_candidate_samples", None)
        # sbi's other keys: its candidates' batches (here one batch) and device
        # (here the posterior's).
        unknown = set(parameters) - {"num_batches", "device"}
        if unknown:
            raise ValueError(
                "`init_strategy_parameters` takes `num_candidate_samples` (and "
                f"sbi's `num_batches`, `device`), got {sorted(unknown)}."
            )
        if num_candidates is None:
            num_candidates = self.num_init_candidates
        mp_context = self.mp_context if mp_context is None else mp_context
        return _Settings(
            method, num_chains, warmup_steps, thin, init, num_candidates, mp_context
        )

    def to(self, device: str | torch.device) -> RatioMCMCPosterior:
        r"""Moves the estimator, the prior, the transform and the default x to
        `device`, as `sbi`'s `MCMCPosterior.to`; returns the posterior."""
        device = process_device(device)  # sbi's clear error without CUDA
        self.estimator.to(device)
        if hasattr(self.prior, "to"):  # sbi's priors move; torch's do not
            self.prior.to(device)
        elif device != str(self._device):
            raise ValueError(
                f"The prior {type(self.prior).__name__} cannot be moved to {device}: "
                "build the posterior with a prior on that device."
            )
        self._build(device)
        return self

    # The target

    def log_density(self, z: Tensor) -> Tensor:
        r"""The posterior's log-density in the unconstrained space, `(C, D) -> (C,)`,
        Jacobian included, at the default x."""
        if z.dim() != 2 or z.shape[-1] != theta_dim(self.prior):
            raise ValueError(
                f"`z` must have shape (C, {theta_dim(self.prior)}), got "
                f"{tuple(z.shape)}."
            )
        return self._target()(z)

    def _target(self, x: Tensor | None = None, name_chains: bool = True) -> Target:
        r"""The log-density of the chains (:class:`~sbi_alfi.aalr.target.Target`)
        for the observations `x`, `(B, n, *x_shape)`: the default x when `None`."""
        if x is None:
            x = self._x_else_default_x(None)[None]
        return Target(self.estimator, self.prior, self.theta_transform, x, name_chains)

    def log_prob(
        self, theta: Tensor, x: Tensor | None = None, track_gradients: bool = False
    ) -> Tensor:
        r"""The unnormalized log-density, :meth:`potential`, with the warnings of
        `sbi`'s `MCMCPosterior.log_prob`: the evidence of a ratio is unknown.

        Arguments:
            theta: Parameters of shape `(*, D)`.
            x: The observation(s); the default x when `None`.
            track_gradients: Whether the result tracks gradients.

        Returns:
            The log-densities up to a constant, of shape `(*)`.
        """
        warnings.warn(
            "`.log_prob()` is deprecated for methods that can only evaluate the "
            "log-probability up to a normalizing constant. Use `.potential()` instead.",
            stacklevel=2,
        )
        warnings.warn("The log-probability is unnormalized!", stacklevel=2)
        return self.potential(theta, x=x, track_gradients=track_gradients)

    def _check_x(self, x: Tensor) -> Tensor:
        r"""`x` as `(n, *x_shape)` on the device, evaluated once by the
        estimator (with 2 prior draws) so that a shape it cannot take fails
        here, with a clear error, and not deep in a sampler; no side effect."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() == 0 or len(x) == 0:
            raise ValueError(
                "`x` must hold at least one observation, of shape (n, *x_shape), "
                f"got {tuple(x.shape)}."
            )
        if not torch.isfinite(x).all():
            bad = ~torch.isfinite(x.reshape(len(x), -1)).all(-1)
            raise ValueError(
                f"`x` has NaN or inf in {int(bad.sum())} of {len(x)} observations."
            )
        x_shape = getattr(self.estimator, "x_shape", None)  # sbi's estimators
        if x_shape is not None and tuple(x.shape[1:]) != tuple(x_shape):
            raise ValueError(
                f"The ratio estimator takes x of shape (n, {_shape(x_shape)}) "
                f"(n i.i.d. observations), got {tuple(x.shape)}."
            )
        x = x.to(self._device)
        theta = self.prior.sample((2,)).to(self._device)
        try:
            with torch.no_grad():
                value = log_ratio(self.estimator, theta[None], x[None])
        except Exception as error:
            raise ValueError(
                f"The ratio estimator cannot evaluate x of shape {tuple(x.shape)} "
                f"(observations, *x_shape) with theta of shape (N, "
                f"{theta.shape[-1]}): {error}"
            ) from error
        if value.shape != (1, 2):
            raise ValueError(
                f"The ratio estimator must return one log-ratio per (theta, x) pair; "
                f"for 2 parameters and x of shape {tuple(x.shape)} the log-ratios "
                f"have shape {tuple(value.shape[1:])}."
            )
        return x

    # Sampling

    def sample(
        self,
        sample_shape: Shape = (),
        x: Tensor | None = None,
        method: Method | None = None,
        thin: int | None = None,
        warmup_steps: int | None = None,
        num_chains: int | None = None,
        init_strategy: InitStrategy | Distribution | None = None,
        init_strategy_parameters: dict[str, Any] | None = None,
        num_workers: int | None = None,
        mp_context: str | None = None,
        show_progress_bars: bool | None = None,
    ) -> Tensor:
        r"""Draws from the posterior of `x` by MCMC, with `sbi`'s per-call
        overrides of the posterior's settings (this call only):
        :meth:`sample_batched` with one observation.

        Arguments:
            sample_shape: The shape of the draws.
            x: One observation `(*x_shape)` or `(1, *x_shape)`, or `n` i.i.d. ones
                `(n, *x_shape)`; the default x when `None`.
            method: Overrides the MCMC method.
            thin: Overrides the thinning (`sbi`'s -1: the method's default).
            warmup_steps: Overrides the warmup steps.
            num_chains: Overrides the number of chains.
            init_strategy: Overrides the initialization.
            init_strategy_parameters: `{"num_candidate_samples": N}` overrides
                `num_init_candidates`.
            num_workers: Accepted for `sbi`'s calls and unused: the vectorized
                chains run as one batch.
            mp_context: The multiprocessing context of Pyro's chains, as
                `sbi`'s (`"spawn"` when `None`).
            show_progress_bars: Overrides the posterior's setting.

        Returns:
            Draws of shape `(*sample_shape, D)`, taken from the chains in turn.
        """
        del num_workers
        run = self._settings(
            method, num_chains, warmup_steps, thin, init_strategy,
            init_strategy_parameters, mp_context,
        )  # fmt: skip
        sample_shape = self._check_sample_shape(sample_shape)
        x = self._x_else_default_x(x)
        draws = self._sample(run, math.prod(sample_shape), x[None], show_progress_bars)
        # One observation: its chains and statistics without the batch dimension.
        if self.chains is not None:
            self.chains = self.chains[0]
        self._sample_stats = {k: v[0] for k, v in self._sample_stats.items()}
        self.diagnostics = {
            k: v[0] if v.dim() else v for k, v in self.diagnostics.items()
        }
        return draws[:, 0].reshape(*sample_shape, draws.shape[-1])

    def sample_batched(
        self,
        sample_shape: Shape,
        x: Tensor,
        method: Method | None = None,
        thin: int | None = None,
        warmup_steps: int | None = None,
        num_chains: int | None = None,
        init_strategy: InitStrategy | Distribution | None = None,
        init_strategy_parameters: dict[str, Any] | None = None,
        num_workers: int | None = None,
        mp_context: str | None = None,
        show_progress_bars: bool | None = None,
    ) -> Tensor:
        r"""Draws from the posteriors of `B` observations, one each, at once: with the
        vectorized methods all `B x num_chains` chains step together, one network
        call per step; Pyro's kernels run observation after observation. The
        overrides are :meth:`sample`'s.

        Arguments:
            sample_shape: The shape of the draws for each observation.
            x: Observations of shape `(B, *x_shape)`.
            method: Overrides the MCMC method.
            thin: Overrides the thinning.
            warmup_steps: Overrides the warmup steps.
            num_chains: Overrides the number of chains per observation.
            init_strategy: Overrides the initialization.
            init_strategy_parameters: `{"num_candidate_samples": N}`.
            num_workers: Accepted for `sbi`'s calls and unused.
            mp_context: The multiprocessing context of Pyro's chains.
            show_progress_bars: Overrides the posterior's setting.

        Returns:
            Draws of shape `(*sample_shape, B, D)`; `chains` then has shape
            `(B, num_chains, draws per chain, D)` (SMC: `(B, islands,
            particles per island, D)`), and `diagnostics` the statistics per
            observation (`(B, D)` for R-hat and ESS) and per chain (`(B,
            num_chains)`).
        """
        del num_workers
        run = self._settings(
            method, num_chains, warmup_steps, thin, init_strategy,
            init_strategy_parameters, mp_context,
        )  # fmt: skip
        sample_shape = self._check_sample_shape(sample_shape)
        x = self._check_x(x)
        num_samples = math.prod(sample_shape)
        draws = self._sample(run, num_samples, x[:, None], show_progress_bars)
        return draws.reshape(*sample_shape, *draws.shape[1:])

    def _sample(
        self, run: _Settings, num_samples: int, x: Tensor, show: bool | None
    ) -> Tensor:
        r"""`num_samples` draws `(num_samples, B, D)` of the posteriors of `B`
        observations `x` of `n` i.i.d. rows each, `(B, n, *x_shape)`; sets
        `chains` and `diagnostics`, with the observations first."""
        show = self.show_progress_bars if show is None else show
        batch, dim = len(x), theta_dim(self.prior)
        self._sample_stats = {}
        if num_samples == 0:
            self.chains, self.diagnostics = None, {}
            return torch.zeros(0, batch, dim, device=self._device)
        if run.method == "smc_vectorized":
            draws = self._run_smc(num_samples, show, x)
            return draws.transpose(0, 1)
        per_chain = _draws_per_chain(run, num_samples)
        z_0 = self._initial_positions(run, x)  # (B * C, D), observation-major
        if run.method.endswith("_pyro"):
            z, kernel_diagnostics, stats = self._run_pyro(run, z_0, per_chain, show, x)
        else:
            z, kernel_diagnostics, stats = self._run_vectorized(
                run, z_0, per_chain, show, x
            )
        chains = self.theta_transform.inv(z).detach()
        chains = chains.reshape(batch, run.num_chains, per_chain, dim)
        self.chains = chains
        # Each kept draw's statistics, (B, C, S), for ArviZ.
        self._sample_stats = {
            name: value.reshape(batch, run.num_chains, per_chain)
            for name, value in stats.items()
        }
        self._diagnose(run, chains, kernel_diagnostics)
        draws = chains.permute(2, 1, 0, 3).reshape(-1, batch, dim)  # chains in turn
        return draws[:num_samples]

    def _initial_positions(self, run: _Settings, x: Tensor) -> Tensor:
        r"""The chains' starting points in the unconstrained space, `(B * C, D)`
        for the observations `x` `(B, n, *x_shape)`, chains grouped by
        observation, in superchains of :func:`_superchain_size` that share a
        point."""
        batch, size = len(x), _superchain_size(run)
        starts = run.num_chains // size  # per observation
        if isinstance(run.init_strategy, Distribution):
            theta = run.init_strategy.sample((batch * starts,))
        elif run.init_strategy == "prior":
            theta = self.prior.sample((batch * starts,))
        else:
            # The posterior over the prior: prior draws, shared by every
            # observation, weighted by the ratio, in chunks of observations x
            # candidates (1,000 x 10,000 in one call took 15 GB). Systematic, not
            # multinomial: the superchains' shares of the modes follow the
            # weights as closely as a whole number of them can.
            def log_weights(theta: Tensor) -> Tensor:
                theta = theta.to(self._device).expand(batch, *theta.shape)
                return log_ratio(self.estimator, theta, x)

            try:
                theta, _ = importance_resample(
                    log_weights,
                    self.prior,
                    starts,
                    num_proposals=run.num_init_candidates,
                    batch_size=max(1, INIT_ROWS_PER_CALL // (batch * x.shape[1])),
                    min_ess_ratio=0.0,
                    systematic=True,
                )
            except ValueError as error:
                reason = str(error)
                raise ValueError(
                    f"The chains cannot start: {reason[0].lower()}{reason[1:]} The "
                    "proposals are prior draws weighted by the ratio estimator, "
                    "target b is observation b: the estimator is broken or "
                    "untrained, or x lies where it was never trained."
                ) from error
            theta = theta.reshape(batch * starts, -1)
        # Superchain k of observation b: chains b * C + k * size + (0 .. size-1).
        theta = theta.repeat_interleave(size, dim=0)
        return self.theta_transform(theta.to(self._device)).detach()

    def _run_vectorized(
        self, run: _Settings, z_0: Tensor, per_chain: int, show: bool, x: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        kernel_class = VectorizedHMC if run.method == "hmc_vectorized" else VectorizedMH
        kernel = kernel_class(
            self._target(x), z_0, num_groups=len(x), **self.kernel_kwargs
        )
        mcmc = MCMC(
            kernel,
            num_samples=per_chain * run.thin,
            warmup_steps=run.warmup_steps,
            disable_progbar=not show,
        )
        mcmc.run()
        z = mcmc.get_samples()["theta"][:: run.thin]  # (S, B * C, D)
        stats = {k: v[:: run.thin].T for k, v in kernel.sample_stats().items()}
        return z.transpose(0, 1), kernel.diagnostics(), stats

    def _run_pyro(
        self, run: _Settings, z_0: Tensor, per_chain: int, show: bool, x: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        r"""Pyro's HMC or NUTS: for each observation one `pyro.infer.MCMC` of
        `num_chains` chains, which Pyro runs in parallel processes when the
        CPUs allow (in `mp_context`, as `sbi` does) and in turn otherwise."""
        kernel_class = NUTS if run.method == "nuts_pyro" else HMC
        chains, stats = [], {"acceptance_rate": [], "divergences": []}
        diverging = []
        for b, z_b in enumerate(z_0.reshape(len(x), run.num_chains, -1)):
            potential = PyroPotential(self._target(x[b : b + 1], name_chains=False))
            mcmc = MCMC(
                kernel_class(potential_fn=potential, **self.kernel_kwargs),
                num_samples=per_chain * run.thin,
                warmup_steps=run.warmup_steps,
                initial_params={"theta": z_b if run.num_chains > 1 else z_b[0]},
                num_chains=run.num_chains,
                mp_context=_mp_context(run, potential),
                disable_progbar=not show,
            )
            with warnings.catch_warnings():
                # Fewer CPUs than chains: Pyro draws them in turn, as intended.
                warnings.filterwarnings("ignore", "num_chains=", UserWarning)
                mcmc.run()
            z = mcmc.get_samples(group_by_chain=True)["theta"][:, :: run.thin]
            chains.append(z)  # (C, S, D)
            diagnostics = mcmc.diagnostics()
            names = [f"chain {c}" for c in range(run.num_chains)]
            stats["acceptance_rate"].append(
                [float(diagnostics["acceptance rate"][c]) for c in names]
            )
            stats["divergences"].append(
                [len(diagnostics["divergences"][c]) for c in names]
            )
            divergent = torch.zeros(run.num_chains, per_chain * run.thin, dtype=bool)
            for c, name in enumerate(names):
                divergent[c, diagnostics["divergences"][name]] = True
            diverging.append(divergent[:, :: run.thin])
        stats = {k: torch.tensor(v).reshape(-1) for k, v in stats.items()}
        return torch.cat(chains), stats, {"diverging": torch.cat(diverging)}

    def _run_smc(self, num_samples: int, show: bool, x: Tensor) -> Tensor:
        r"""`num_samples` draws `(B, num_samples, D)` by tempered SMC
        (:func:`~sbi_alfi.samplers.smc.smc`) from the prior to the posteriors of
        the observations `x` `(B, n, *x_shape)`, every particle of every
        observation in one batch. Each observation's particles temper in
        `SMC_ISLANDS` independent islands, so the spread of the islands' means
        measures the run's own error (:func:`~sbi_alfi.diagnostics.check_chains`
        with each island a chain); its diagnostics and evidence check (for
        observations of one row, not for i.i.d. rows) in `diagnostics`."""
        batch = len(x)
        options = dict(self.kernel_kwargs)
        islands = SMC_ISLANDS
        n = max(num_samples, options.pop("num_particles", SMC_MIN_PARTICLES))
        n = islands * math.ceil(n / islands)
        target = self._target(x)

        def log_prior(z: Tensor, groups: Tensor) -> Tensor:
            return target.log_prior(z)

        def log_ratio(z: Tensor, groups: Tensor) -> Tensor:
            # Group g is island g % islands of observation g // islands.
            return target.restrict(groups // islands).log_ratio(z)

        theta_0 = self.prior.sample((batch * n,)).to(self._device)
        result = smc(
            log_prior,
            log_ratio,
            self.theta_transform(theta_0).detach(),
            num_groups=batch * islands,  # observation-major
            show_progress_bar=show,
            **options,
        )
        particles = self.theta_transform.inv(result.position).detach()
        particles = particles.reshape(batch, islands, n // islands, -1)
        # Resampling leaves copies of a parent next to each other: each island's
        # particles in random order, and the draws taken across the islands.
        keep = torch.rand(particles.shape[:-1], device=particles.device).argsort(-1)
        particles = particles.gather(2, keep[..., None].expand_as(particles))
        # The islands as chains; their ESS set against the draws returned, as
        # the chains' is: the particles beyond them only lower the run's error.
        check = check_chains(particles.permute(1, 2, 0, 3), num_draws=num_samples)
        self.chains = particles

        def per_x(value: Tensor) -> Tensor:
            return value.reshape(batch, islands)

        # The islands' evidence estimates are unbiased: their mean is one.
        log_evidence = per_x(result.log_evidence).logsumexp(-1) - math.log(islands)
        self.diagnostics = {
            "nested_r_hat": check.nested_r_hat,
            "nested_ess": check.nested_ess,
            "log_evidence": log_evidence,
            "num_temperatures": per_x(result.num_steps).amax(-1),
            "acceptance_rate": per_x(result.acceptance_rate).mean(-1),
            "min_ess": per_x(result.min_ess).amin(-1),
            "num_moves": torch.tensor(result.num_moves),
        }
        warn_problems(
            check.problems,
            "SMC's islands disagree",
            "Consider more particles (kernel_kwargs={'num_particles': ...}) or a "
            "higher target_ess.",
            stacklevel=4,
        )
        # With i.i.d. rows the product of ratios need not integrate to 1.
        if x.shape[1] == 1:
            warn_problems(
                check_evidence(log_evidence),
                "SMC's ratio is not normalized",
                "Sampling went on; the draws follow the estimator's posterior.",
                stacklevel=4,
            )
        draws = particles.transpose(1, 2).reshape(batch, n, -1)  # islands in turn
        return draws[:, :num_samples]

    def _diagnose(
        self, run: _Settings, chains: Tensor, kernel_diagnostics: dict[str, Tensor]
    ) -> None:
        r"""The convergence statistics of `chains`, `(B, C, S, D)`
        (:func:`~sbi_alfi.diagnostics.check_chains`), with the kernels'
        per-chain statistics, `(B, C)`; warns when the run should not be
        trusted."""
        batch, num_chains = chains.shape[:2]
        per_chain = {
            k: v.reshape(batch, num_chains) if v.dim() == 1 else v
            for k, v in kernel_diagnostics.items()
        }
        check = check_chains(
            chains.permute(1, 2, 0, 3),
            _superchain_size(run),
            divergences=kernel_diagnostics.get("divergences"),
        )
        self.diagnostics = {"r_hat": check.r_hat, "ess": check.ess}
        if check.nested_r_hat is not None:
            self.diagnostics["nested_r_hat"] = check.nested_r_hat
            self.diagnostics["nested_ess"] = check.nested_ess
        self.diagnostics.update(per_chain)
        warn_problems(
            check.problems,
            f"MCMC ({run.method}) may not have converged",
            "Consider more warmup_steps or thinning, or, for a multimodal "
            "posterior, method='smc_vectorized'.",
            stacklevel=4,
        )

    def get_arviz_inference_data(self) -> Any:
        r"""The last run as an ArviZ `InferenceData` (`pip install
        'sbi-alfi[arviz]'`), for ArviZ's summaries and plots (`az.summary`,
        `az.plot_trace`...).

        Its `posterior` group holds one variable per parameter, `theta_0` ...
        `theta_{D-1}`, with dimensions `(chain, draw)`, and `(chain, draw,
        observation)` after `sample_batched`; SMC's islands are its chains and
        their particles its draws. Its `sample_stats` hold each kept draw's
        `acceptance_rate` (vectorized kernels), `diverging` (HMC and Pyro's
        kernels), `energy` and `n_steps` (HMC). ArviZ reads the statistics of
        long chains; for many short ones, `diagnostics["nested_r_hat"]` is the
        one to trust.

        Returns:
            An `arviz.InferenceData`.
        """
        try:
            import arviz as az
        except ImportError as error:
            raise ImportError(
                "`get_arviz_inference_data` needs ArviZ, an optional extra: "
                "pip install 'sbi-alfi[arviz]'."
            ) from error
        if self.chains is None:
            raise ValueError(
                "No run to convert: call `sample` or `sample_batched` first."
            )
        chains = self.chains.detach().cpu()
        batched = chains.dim() == 4
        if batched:  # (B, C, S, D) -> (C, S, B, D)
            chains = chains.permute(1, 2, 0, 3)
        posterior = {
            f"theta_{d}": chains[..., d].numpy() for d in range(chains.shape[-1])
        }
        stats = {}
        for name, value in self._sample_stats.items():
            value = value.detach().cpu()
            stats[name] = (value.permute(1, 2, 0) if batched else value).numpy()
        dims = {name: ["observation"] for name in [*posterior, *stats]}
        return az.from_dict(
            posterior=posterior,
            sample_stats=stats or None,
            dims=dims if batched else None,
        )

    def __repr__(self) -> str:
        return (
            f"RatioMCMCPosterior(method={self.method!r}, "
            f"num_chains={self._settings().num_chains}, "
            f"warmup_steps={self.warmup_steps}, thin={self.thin})"
        )

    def __str__(self) -> str:
        # sbi's wording, with what this posterior samples and how.
        return (
            f"Posterior p(θ|x) of type RatioMCMCPosterior, on the ratio estimator "
            f"{type(self.estimator).__name__}. It samples by MCMC ({self.method}, "
            f"{self._settings().num_chains} chains, {self.warmup_steps} warmup "
            "steps, thin "
            f"{self.thin}) with .sample() and evaluates the _unnormalized_ "
            "posterior density with .potential()."
        )


def _draws_per_chain(run: _Settings, num_samples: int) -> int:
    r"""The draws each chain keeps: enough for `num_samples` in all, and for the
    vectorized methods at least `MIN_DRAWS_PER_CHAIN`."""
    per_chain = math.ceil(num_samples / run.num_chains)
    return (
        per_chain
        if run.method.endswith("_pyro")
        else max(per_chain, MIN_DRAWS_PER_CHAIN)
    )


def _superchain_size(run: _Settings) -> int:
    r"""The chains per superchain: `SUPERCHAIN_SIZE` when the chains make enough
    superchains for nested R-hat, else 1 (each chain its own start). Pyro's
    few, long chains start apart, for split R-hat."""
    size = SUPERCHAIN_SIZE
    if (
        run.method.endswith("_pyro")
        or isinstance(run.init_strategy, Distribution)
        or run.num_chains % size
        or run.num_chains // size < MIN_SUPERCHAINS
    ):
        return 1
    return size


def _shape(shape) -> str:
    return ", ".join(str(n) for n in shape)


def _mp_context(run: _Settings, potential: PyroPotential) -> str:
    r"""The multiprocessing context for Pyro's chains: `run`'s (`sbi`'s
    `"spawn"` by default), which pickles the potential into each chain's
    process; `"fork"`, which does not, when the potential cannot be pickled
    (an estimator that is a function defined in a notebook) and Pyro would run
    the chains in parallel."""
    parallel = 1 < run.num_chains <= max(mp.cpu_count() - 1, 1)  # as Pyro decides
    if not parallel or run.mp_context == "fork":
        return run.mp_context
    try:
        pickle.dumps(potential)
    except Exception as error:
        if "fork" not in mp.get_all_start_methods():
            raise ValueError(
                f"Pyro runs the {run.num_chains} chains in parallel processes, "
                f"which needs a picklable ratio estimator ({error}); pass a module "
                "defined in an importable file, or num_chains=1."
            ) from error
        return "fork"
    return run.mp_context
