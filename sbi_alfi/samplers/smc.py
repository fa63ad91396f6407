r"""Sequential Monte Carlo from the prior to the posterior, with adaptive
tempering, every particle one row of one batch."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal
from tqdm.auto import tqdm

from .accept import metropolis_accept
from .adaptation import group_mean, initial_scale
from .importance import systematic_resample
from .mh import random_walk_step
from .mixture import fit_gaussian_mixture
from .state import ChainState, checked

__all__ = [
    "GroupLogDensity",
    "SMCInfo",
    "SMCResult",
    "SMCState",
    "next_temperature",
    "smc",
    "tempered_step",
]

# Bisection steps of the next temperature: the increment to 2^-40 of the rest.
_BISECTION_STEPS = 40
# The tempered target's moves aim for this acceptance rate (random walk, Roberts
# et al., 1997), their scale adapted between moves.
_TARGET_ACCEPT = 0.234


#: Maps the particles of `k` groups, `(k * N, D)` group-major, and the groups'
#: indices `(k,)` to log-densities `(k * N,)`: each group may have its own
#: target (an observation), and only the groups still tempering are evaluated.
GroupLogDensity = Callable[[Tensor, Tensor], Tensor]


class SMCState(NamedTuple):
    r"""`G` groups of `N` particles, each group tempering towards its own
    target :math:`p(\theta) L(\theta)^{\beta}`."""

    position: Tensor  #: `(G, N, D)`, equally weighted after each step
    log_likelihood: Tensor  #: :math:`\log L` at the particles, `(G, N)`
    beta: Tensor  #: the groups' temperatures, `(G,)`
    log_evidence: Tensor  #: :math:`\log Z_\beta` estimated so far, `(G,)`
    scale: Tensor  #: the groups' random-walk scales, `(G,)`


class SMCInfo(NamedTuple):
    r"""What one tempering step did, per group."""

    ess: Tensor  #: of the incremental weights, as a fraction of `N`, `(G,)`
    acceptance_rate: Tensor  #: mean over the group's moves, `(G,)`
    num_moves: Tensor  #: the Metropolis moves each group made, `(G,)`
    num_calls: int  #: the batched calls the moves took


def _incremental(delta: Tensor, log_likelihood: Tensor) -> Tensor:
    r"""The incremental log-weights :math:`\delta_g \log L`, `(G, N)`; NaN
    (0 times :math:`-\infty`) is a zero weight."""
    return torch.nan_to_num(delta[:, None] * log_likelihood, nan=-torch.inf)


def _ess_fraction(log_weights: Tensor) -> Tensor:
    r"""The effective sample size :math:`(\sum w)^2 / \sum w^2` of each row of
    weights, as a fraction of the row's length."""
    log_ess = 2 * log_weights.logsumexp(-1) - (2 * log_weights).logsumexp(-1)
    return log_ess.exp() / log_weights.shape[-1]


def next_temperature(log_likelihood: Tensor, beta: Tensor, target_ess: float) -> Tensor:
    r"""The increments :math:`\delta` of each group's temperature such that the
    incremental weights :math:`w_i = L(\theta_i)^{\delta}` have an effective
    sample size :math:`(\sum w)^2 / \sum w^2` of `target_ess` times `N`, capped
    at :math:`1 - \beta`; by bisection, all groups at once.

    The ESS falls as :math:`\delta` grows, so the root is unique (Jasra et al.,
    2011).

    Arguments:
        log_likelihood: :math:`\log L` at the particles, `(G, N)`.
        beta: The current temperatures, `(G,)`.
        target_ess: The ESS aimed for, as a fraction of `N`, in (0, 1).

    Returns:
        :math:`\delta`, `(G,)`.
    """
    log_likelihood = log_likelihood.double()
    rest = (1 - beta).double().clamp(min=0)

    def ess_fraction(delta: Tensor) -> Tensor:
        return _ess_fraction(_incremental(delta, log_likelihood))

    done = ess_fraction(rest) >= target_ess
    low, high = torch.zeros_like(rest), rest
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        above = ess_fraction(middle) >= target_ess
        low = torch.where(above, middle, low)
        high = torch.where(above, high, middle)
    return torch.where(done, rest, low).to(beta.dtype)


@torch.no_grad()
def tempered_step(
    state: SMCState,
    groups: Tensor,
    log_prior: GroupLogDensity,
    log_likelihood: GroupLogDensity,
    target_ess: float = 0.9,
    num_moves: int = 100,
    min_moves: int = 3,
    min_growth: float = 0.1,
    mixture_components: int = 8,
    refresh: float = 0.7,
) -> tuple[SMCState, SMCInfo]:
    r"""One step of adaptive tempered SMC for the groups of `state`: the next
    temperature (:func:`next_temperature`), the evidence's increment
    :math:`\log \frac1N \sum_i L(\theta_i)^{\delta}`, systematic resampling
    by those weights, and random-walk Metropolis moves
    (:func:`~sbi_alfi.samplers.random_walk_step`) on the new tempered target,
    with the proposal's covariance the group's particle covariance and its
    scale adapted towards an acceptance of 0.234 from move to move. Every
    other move is an independence Metropolis-Hastings move from a mixture of
    `mixture_components` Gaussians fitted to the group's resampled particles
    (:func:`~sbi_alfi.samplers.mixture.fit_gaussian_mixture`): it carries
    particles between modes in proportion to the target's mass there, which
    local moves cannot, so that the modes' shares do not drift from one
    resampling to the next. A group moves (from `min_moves` to `num_moves`
    times) until its particles' mean squared distance from their resampled
    positions grows by less than `min_growth` in a move and a `refresh`
    fraction of them has taken an independence move; the moves of the groups
    still moving are one batched call each, so no group waits on another.

    Arguments:
        state: The particles at their current temperatures, `G` groups.
        groups: The groups' indices `(G,)`, passed to the log-densities.
        log_prior: :math:`\log p` (:data:`GroupLogDensity`).
        log_likelihood: :math:`\log L`, the same.
        target_ess: The incremental weights' ESS aimed for, as a fraction.
        num_moves: The most Metropolis moves after resampling.
        min_moves: The fewest.
        min_growth: The relative growth of the mean squared jump below which
            a group stops moving.
        mixture_components: The Gaussians of the independence proposal; 0:
            random-walk moves only.
        refresh: The fraction of a group's particles that must have taken an
            independence move before it stops moving.

    Returns:
        The new state and the step's :class:`SMCInfo`.
    """
    num_groups, n, dim = state.position.shape
    delta = next_temperature(state.log_likelihood, state.beta, target_ess)
    log_w = _incremental(delta, state.log_likelihood)
    log_evidence = state.log_evidence + log_w.logsumexp(-1) - math.log(n)
    ess = _ess_fraction(log_w)
    index = systematic_resample(log_w, n)  # (G, N)
    resampled = state.position.gather(1, index[..., None].expand(-1, -1, dim))
    beta = (state.beta + delta).clamp(max=1)

    # The proposal's shape is the particles' spread: after resampling they are
    # draws of the new target, so their covariance is the target's (Chopin, 2002).
    centred = resampled - resampled.mean(1, keepdim=True)
    covariance = centred.mT @ centred / max(n - 1, 1)
    jitter = 1e-9 * covariance.diagonal(0, -2, -1).mean(-1).clamp(min=1e-12)
    eye = torch.eye(dim, dtype=resampled.dtype, device=resampled.device)
    scale_tril = torch.linalg.cholesky(covariance + jitter[:, None, None] * eye)

    def tempered(z: Tensor, some: Tensor) -> Tensor:
        rows = beta[some].repeat_interleave(n)
        return log_prior(z, groups[some]) + rows * log_likelihood(z, groups[some])

    mixture = None
    if mixture_components > 0:
        fitted = fit_gaussian_mixture(resampled, mixture_components)
        mixture = (
            fitted.mixture_distribution.logits,
            fitted.component_distribution.loc,
            fitted.component_distribution.scale_tril,
        )
    refreshed = torch.zeros(num_groups, n, dtype=torch.bool, device=resampled.device)
    everyone = torch.arange(num_groups, device=resampled.device)
    position = resampled.clone()
    log_density = checked(
        lambda z: tempered(z, everyone), position.reshape(-1, dim)
    ).reshape(num_groups, n)
    scale, accepted = state.scale.clone(), torch.zeros_like(state.scale)
    jump = torch.zeros_like(scale)
    moves = torch.zeros(num_groups, dtype=torch.long, device=scale.device)
    rw_moves = torch.zeros_like(moves)
    moving, calls = torch.ones_like(moves, dtype=torch.bool), 0
    while calls < num_moves and bool(moving.any()):
        some = moving.nonzero()[:, 0]
        chain = ChainState(
            position[some].reshape(-1, dim), log_density[some].reshape(-1)
        )
        target = partial(tempered, some=some)
        independence = mixture is not None and calls % 2 == 1
        if independence:
            logits, loc, tril = (field[some] for field in mixture)
            proposal = MixtureSameFamily(
                Categorical(logits=logits, validate_args=False),
                MultivariateNormal(loc, scale_tril=tril, validate_args=False),
                validate_args=False,
            )
            before = chain.position
            chain = _independence_move(chain, target, proposal, n)
            refreshed[some] |= (chain.position != before).any(-1).reshape(-1, n)
        else:
            chain, accept_prob = random_walk_step(
                chain,
                target,
                scale[some].repeat_interleave(n),
                scale_tril[some].repeat_interleave(n, dim=0),
            )
        position[some] = chain.position.reshape(-1, n, dim)
        log_density[some] = chain.log_density.reshape(-1, n)
        calls += 1
        moves[some] += 1
        if not independence:
            rate = group_mean(accept_prob, len(some))
            accepted[some] += rate
            rw_moves[some] += 1
            # Robbins-Monro on the log-scale: a step of 1 per unit of missed rate.
            scale[some] = (scale[some] * (rate - _TARGET_ACCEPT).exp()).clamp(1e-4, 1e2)
        # Resampled copies of one particle must drift apart before the next
        # reweighting, else the modes' shares rest on few lineages: move until
        # the mean squared distance from the resampled positions grows by less
        # than `min_growth` in a move. (Chopin's `particles` stops on the mean
        # distance, AdaptiveMCMCSequence; the squared one stops later.)
        new_jump = (position[some] - resampled[some]).square().sum(-1).mean(-1)
        still = (moves[some] < min_moves) | (new_jump >= (1 + min_growth) * jump[some])
        if mixture is not None:
            still |= refreshed[some].float().mean(-1) < refresh
        jump[some] = new_jump
        moving[some] = still
    new = SMCState(
        position,
        checked(lambda z: log_likelihood(z, groups), position.reshape(-1, dim)).reshape(
            num_groups, n
        ),
        beta,
        log_evidence,
        scale,
    )
    return new, SMCInfo(ess, accepted / rw_moves.clamp(min=1), moves, calls)


def _independence_move(
    chain: ChainState, target, proposal: MixtureSameFamily, n: int
) -> ChainState:
    r"""One independence Metropolis-Hastings move of `k` groups of `n` chains,
    each group from its own mixture (`proposal`, batch shape `(k,)`)."""
    dim = chain.position.shape[-1]
    z = proposal.sample((n,)).transpose(0, 1).reshape(-1, dim)  # group-major

    def log_q(position: Tensor) -> Tensor:
        return proposal.log_prob(position.reshape(-1, n, dim).transpose(0, 1)).mT

    new = ChainState(z, checked(target, z))
    log_alpha = (
        new.log_density
        - chain.log_density
        + (log_q(chain.position) - log_q(z)).reshape(-1)
    )
    return metropolis_accept(chain, new, log_alpha)[0]


class SMCResult(NamedTuple):
    r"""The particles of :func:`smc` and how they got there."""

    position: Tensor  #: `(G * N, D)`, equally weighted draws of each target
    log_evidence: Tensor  #: :math:`\log \int p(\theta) L(\theta) d\theta`, `(G,)`
    num_steps: Tensor  #: tempering steps each group took, `(G,)`
    acceptance_rate: Tensor  #: mean over the steps' moves, `(G,)`
    min_ess: Tensor  #: the smallest incremental ESS fraction, `(G,)`
    num_moves: int  #: the batched calls of all the Metropolis moves


def smc(
    log_prior: GroupLogDensity,
    log_likelihood: GroupLogDensity,
    initial_position: Tensor,
    num_groups: int = 1,
    target_ess: float = 0.9,
    num_moves: int = 100,
    min_moves: int = 3,
    min_growth: float = 0.1,
    mixture_components: int = 8,
    refresh: float = 0.7,
    max_steps: int = 500,
    show_progress_bar: bool = False,
) -> SMCResult:
    r"""Adaptive tempered sequential Monte Carlo (Del Moral et al., 2006; Jasra
    et al., 2011): particles drawn from the prior :math:`p` move through
    :math:`\pi_\beta \propto p \, L^{\beta}` from :math:`\beta = 0` to 1, each
    temperature chosen so that the reweighting keeps an ESS of `target_ess`
    (:func:`tempered_step`). Resampling moves particles between modes in
    proportion to their mass, which no local chain does, so a multimodal
    posterior gets its modes' weights right; and the product of the mean
    incremental weights estimates the evidence
    :math:`Z = \mathbb{E}_{p}[L]`.

    The particles form `G` groups, each with its own target (e.g. one per
    observation) and its own temperatures. Every particle of every group still
    tempering (or moving) is one row of the same calls to `log_prior` and
    `log_likelihood`; a group that reached :math:`\beta = 1` (or stopped
    moving) drops out of them, so no group waits on another: many
    observations at once cost what they would one by one, in fewer calls.
    Neither `sbi` nor Pyro has SMC on a learned potential (Pyro's `SMCFilter`
    is for state-space models), hence this module.

    References:
        | Sequential Monte Carlo samplers (Del Moral et al., JRSS B 2006)
        | https://doi.org/10.1111/j.1467-9868.2006.00553.x

        | Inference for Lévy-driven stochastic volatility models via adaptive
        | sequential Monte Carlo (Jasra et al., Scand. J. Stat. 2011)
        | https://doi.org/10.1111/j.1467-9469.2010.00723.x

    Arguments:
        log_prior: :math:`\log p` of the particles of the groups given
            (:data:`GroupLogDensity`: `f(z, groups)`, `z` of shape
            `(k * N, D)` group-major for the `k` groups `groups`).
        log_likelihood: :math:`\log L`, the same; for a posterior of a ratio
            estimator, the log-ratio of each group's observation.
        initial_position: Draws of the prior, `(G * N, D)`, group-major.
        num_groups: `G`.
        target_ess: The incremental weights' ESS aimed for, as a fraction of `N`.
        num_moves: The most Metropolis moves per tempering step.
        min_moves: The fewest.
        min_growth: A group stops moving when its particles' mean squared jump
            from the resampled positions grows by less than this fraction in a
            move (:func:`tempered_step`).
        mixture_components: The Gaussians of the independence moves'
            proposal (:func:`tempered_step`); 0: random-walk moves only.
        refresh: The fraction of particles that must take an independence
            move at each temperature.
        max_steps: The most tempering steps (a :class:`RuntimeError` beyond).
        show_progress_bar: Whether to show the temperature's progress.

    Returns:
        An :class:`SMCResult`.

    Example:
        >>> import torch
        >>> def log_prior(z, groups):  # N(0, I), every group's
        ...     return -0.5 * z.square().sum(-1)
        >>> def log_likelihood(z, groups):  # x = 1 observed with noise sd 0.5
        ...     return -2 * (z - 1).square().sum(-1)
        >>> result = smc(log_prior, log_likelihood, torch.randn(2_000, 2))
        >>> result.position.mean(0)  # the posterior mean: 0.8
        tensor([...])
    """
    if not 0 < target_ess < 1 or not 0 <= min_moves <= num_moves or max_steps < 1:
        raise ValueError(
            "Need 0 < `target_ess` < 1, 0 <= `min_moves` <= `num_moves` and "
            f"`max_steps` >= 1, got {target_ess}, {min_moves}, {num_moves} and "
            f"{max_steps}."
        )
    total, dim = initial_position.shape
    if total % num_groups or total // num_groups < 2:
        raise ValueError(
            f"`initial_position` must hold at least 2 particles for each of the "
            f"{num_groups} groups, as many for each, got {total}."
        )
    position = initial_position.detach()
    groups = torch.arange(num_groups, device=position.device)
    with torch.no_grad():
        loglik = checked(lambda z: log_likelihood(z, groups), position)
    zeros = position.new_zeros(num_groups)
    # The fields are updated in place, group by group: each its own tensor.
    state = SMCState(
        position.reshape(num_groups, -1, dim).clone(),
        loglik.reshape(num_groups, -1),
        zeros.clone(),
        zeros.clone(),
        zeros + initial_scale(dim),
    )
    steps = torch.zeros(num_groups, dtype=torch.long, device=position.device)
    accepted, min_ess = zeros.clone(), zeros + 1
    total_calls = 0
    bar = tqdm(total=1.0, desc="SMC temperature", disable=not show_progress_bar)
    while bool((state.beta < 1).any()):
        if int(steps.max()) >= max_steps:
            raise RuntimeError(
                f"SMC reached temperature {state.beta.min().item():.3g}, not 1, in "
                f"{max_steps} steps: raise `max_steps` or lower `target_ess`."
            )
        active = (state.beta < 1).nonzero()[:, 0]
        part, info = tempered_step(
            SMCState(*(field[active] for field in state)),
            active,
            log_prior,
            log_likelihood,
            target_ess,
            num_moves,
            min_moves,
            min_growth,
            mixture_components,
            refresh,
        )
        for field, value in zip(state, part, strict=True):
            field[active] = value
        total_calls += info.num_calls
        steps[active] += 1
        accepted[active] += info.acceptance_rate
        min_ess[active] = torch.minimum(min_ess[active], info.ess)
        bar.update(state.beta.min().item() - bar.n)
    bar.close()
    return SMCResult(
        state.position.reshape(total, dim),
        state.log_evidence,
        steps,
        accepted / steps.clamp(min=1),
        min_ess,
        total_calls,
    )
