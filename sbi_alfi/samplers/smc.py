r"""Sequential Monte Carlo from the prior to the posterior, with adaptive
tempering, every particle one row of one batch."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .adaptation import group_mean, initial_scale
from .importance import systematic_resample
from .mh import random_walk_step
from .state import ChainState, LogDensity, checked

__all__ = [
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


class SMCState(NamedTuple):
    r"""`G` groups of `N` particles, group-major, each group tempering towards
    its own target :math:`p(\theta) L(\theta)^{\beta}`."""

    position: Tensor  #: `(G * N, D)`, equally weighted after each step
    log_likelihood: Tensor  #: :math:`\log L` at the particles, `(G * N,)`
    beta: Tensor  #: the groups' temperatures, `(G,)`
    log_evidence: Tensor  #: :math:`\log Z_\beta` estimated so far, `(G,)`
    scale: Tensor  #: the groups' random-walk scales, `(G,)`


class SMCInfo(NamedTuple):
    r"""What one tempering step did, per group."""

    ess: Tensor  #: of the incremental weights, as a fraction of `N`, `(G,)`
    acceptance_rate: Tensor  #: mean over the moves, `(G,)`
    num_moves: int  #: the Metropolis moves made


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
    log_prior: LogDensity,
    log_likelihood: LogDensity,
    num_groups: int,
    target_ess: float = 0.9,
    num_moves: int = 100,
    min_moves: int = 3,
    min_growth: float = 0.1,
) -> tuple[SMCState, SMCInfo]:
    r"""One step of adaptive tempered SMC for every group: the next temperature
    (:func:`next_temperature`), the evidence's increment
    :math:`\log \frac1N \sum_i L(\theta_i)^{\delta}`, systematic resampling by
    those weights, and random-walk Metropolis moves
    (:func:`~sbi_alfi.samplers.random_walk_step`) on the new tempered target,
    with the proposal's covariance the group's particle covariance and its
    scale adapted towards an acceptance of 0.234 from move to move. The moves
    go on (from `min_moves` to `num_moves`) until the particles' mean squared
    distance from their resampled positions grows by less than `min_growth`
    in a move, in every group.

    Arguments:
        state: The particles at their current temperatures.
        log_prior: :math:`\log p`, positions `(G * N, D)` to `(G * N,)`.
        log_likelihood: :math:`\log L`, the same shapes.
        num_groups: `G`.
        target_ess: The incremental weights' ESS aimed for, as a fraction.
        num_moves: The most Metropolis moves after resampling.
        min_moves: The fewest.
        min_growth: The relative growth of the mean squared jump below which
            the moves stop.

    Returns:
        The new state and the step's :class:`SMCInfo`.
    """
    total, dim = state.position.shape
    n = total // num_groups
    loglik = state.log_likelihood.reshape(num_groups, n)
    delta = next_temperature(loglik, state.beta, target_ess)
    log_w = _incremental(delta, loglik)
    log_evidence = state.log_evidence + log_w.logsumexp(-1) - math.log(n)
    ess = _ess_fraction(log_w)
    offsets = torch.arange(num_groups, device=loglik.device)[:, None] * n
    index = (systematic_resample(log_w, n) + offsets).reshape(-1)
    position = state.position[index]
    beta = (state.beta + delta).clamp(max=1)
    beta_rows = beta.repeat_interleave(n)

    def tempered(z: Tensor) -> Tensor:
        return log_prior(z) + beta_rows * log_likelihood(z)

    # The proposal's shape is the particles' spread: after resampling they are
    # draws of the new target, so their covariance is the target's (Chopin, 2002).
    centred = position.reshape(num_groups, n, dim)
    centred = centred - centred.mean(1, keepdim=True)
    covariance = centred.mT @ centred / max(n - 1, 1)
    jitter = 1e-9 * covariance.diagonal(0, -2, -1).mean(-1).clamp(min=1e-12)
    eye = torch.eye(dim, dtype=position.dtype, device=position.device)
    scale_tril = torch.linalg.cholesky(covariance + jitter[:, None, None] * eye)
    scale_tril = scale_tril.repeat_interleave(n, dim=0)
    chain = ChainState(position, checked(tempered, position))
    scale, accepted = state.scale, torch.zeros_like(state.scale)
    jump = torch.zeros_like(scale)
    moves = 0
    while moves < num_moves:
        chain, accept_prob = random_walk_step(
            chain, tempered, scale.repeat_interleave(n), scale_tril
        )
        moves += 1
        rate = group_mean(accept_prob, num_groups)
        accepted += rate
        # Robbins-Monro on the log-scale: a step of 1 per unit of missed rate.
        scale = (scale * (rate - _TARGET_ACCEPT).exp()).clamp(1e-4, 1e2)
        # Resampled copies of one particle must drift apart before the next
        # reweighting, else the modes' shares rest on few lineages: move until
        # the mean squared distance from the resampled positions grows by less
        # than `min_growth` in a move. (Chopin's `particles` stops on the mean
        # distance, AdaptiveMCMCSequence; the squared one stops later.)
        previous = jump
        jump = group_mean((chain.position - position).square().sum(-1), num_groups)
        if moves >= min_moves and bool((jump < (1 + min_growth) * previous).all()):
            break
    new = SMCState(
        chain.position,
        checked(log_likelihood, chain.position),
        beta,
        log_evidence,
        scale,
    )
    return new, SMCInfo(ess, accepted / max(moves, 1), moves)


class SMCResult(NamedTuple):
    r"""The particles of :func:`smc` and how they got there."""

    position: Tensor  #: `(G * N, D)`, equally weighted draws of each target
    log_evidence: Tensor  #: :math:`\log \int p(\theta) L(\theta) d\theta`, `(G,)`
    num_steps: Tensor  #: tempering steps each group took, `(G,)`
    acceptance_rate: Tensor  #: mean over all moves, `(G,)`
    min_ess: Tensor  #: the smallest incremental ESS fraction, `(G,)`
    num_moves: int  #: Metropolis moves in all, each one batched call


def smc(
    log_prior: LogDensity,
    log_likelihood: LogDensity,
    initial_position: Tensor,
    num_groups: int = 1,
    target_ess: float = 0.9,
    num_moves: int = 100,
    min_moves: int = 3,
    min_growth: float = 0.1,
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

    Every particle of every group is one row of the same calls to
    `log_prior` and `log_likelihood`. Neither `sbi` nor Pyro has SMC on a
    learned potential (Pyro's `SMCFilter` is for state-space models), hence
    this module.

    References:
        | Sequential Monte Carlo samplers (Del Moral et al., JRSS B 2006)
        | https://doi.org/10.1111/j.1467-9868.2006.00553.x

        | Inference for Lévy-driven stochastic volatility models via adaptive
        | sequential Monte Carlo (Jasra et al., Scand. J. Stat. 2011)
        | https://doi.org/10.1111/j.1467-9469.2010.00723.x

    Arguments:
        log_prior: :math:`\log p`, positions `(G * N, D)` to `(G * N,)`.
        log_likelihood: :math:`\log L`, group `g`'s for rows `g * N` to
            `(g + 1) * N - 1`; for a posterior of a ratio estimator, the
            log-ratio.
        initial_position: Draws of the prior, `(G * N, D)`, group-major.
        num_groups: `G`.
        target_ess: The incremental weights' ESS aimed for, as a fraction of `N`.
        num_moves: The most Metropolis moves per tempering step.
        min_moves: The fewest.
        min_growth: The moves stop when their mean squared jump from the
            resampled positions grows by less than this fraction in a move
            (:func:`tempered_step`).
        max_steps: The most tempering steps (a :class:`RuntimeError` beyond).
        show_progress_bar: Whether to show the temperature's progress.

    Returns:
        An :class:`SMCResult`.

    Example:
        >>> import torch
        >>> def log_prior(z):  # N(0, I)
        ...     return -0.5 * z.square().sum(-1)
        >>> def log_likelihood(z):  # x = 1 observed with noise sd 0.5
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
    with torch.no_grad():
        loglik = checked(log_likelihood, position)
    zeros = position.new_zeros(num_groups)
    state = SMCState(position, loglik, zeros, zeros, zeros + initial_scale(dim))
    steps = torch.zeros(num_groups, dtype=torch.long, device=position.device)
    accepted, min_ess = zeros.clone(), zeros + 1
    total_moves = 0
    bar = tqdm(total=1.0, desc="SMC temperature", disable=not show_progress_bar)
    while bool((state.beta < 1).any()):
        if int(steps.max()) >= max_steps:
            raise RuntimeError(
                f"SMC reached temperature {state.beta.min().item():.3g}, not 1, in "
                f"{max_steps} steps: raise `max_steps` or lower `target_ess`."
            )
        moving = state.beta < 1
        state, info = tempered_step(
            state,
            log_prior,
            log_likelihood,
            num_groups,
            target_ess,
            num_moves,
            min_moves,
            min_growth,
        )
        total_moves += info.num_moves
        steps += moving
        accepted += torch.where(moving, info.acceptance_rate, 0.0)
        min_ess = torch.where(moving, torch.minimum(min_ess, info.ess), min_ess)
        bar.update(state.beta.min().item() - bar.n)
    bar.close()
    return SMCResult(
        state.position,
        state.log_evidence,
        steps,
        accepted / steps.clamp(min=1),
        min_ess,
        total_moves,
    )
