r"""Convergence statistics of MCMC chains."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from pyro.ops.stats import effective_sample_size, split_gelman_rubin
from torch import Tensor

__all__ = [
    "ChainCheck",
    "check_chains",
    "check_evidence",
    "convergence",
    "nested_ess",
    "nested_r_hat",
    "warn_problems",
]

# A run warns when its chains carry fewer effective draws than this fraction of
# the draws they return: an autocorrelation time above 10, or chains that have
# not forgotten their start or visit different modes. (Correct runs of the
# vectorized kernels on the tests' targets have 0.25-1 draws' worth per draw.)
ESS_FRACTION = 0.1
# Fewer superchains than this estimate the between-superchain variance too
# loosely (8 superchains: one degree of freedom in 7); the check then falls back
# to split R-hat and the bulk ESS, which long chains make reliable.
MIN_SUPERCHAINS = 8
# The classic threshold of split R-hat (Vehtari et al., 2021).
R_HAT_MAX = 1.01
# A ratio's evidence estimate E_prior[r(x | theta)] is 1 when the ratio is
# correct; beyond this factor either way it is a problem.
EVIDENCE_FACTOR = 2.0


def convergence(chains: Tensor) -> tuple[Tensor, Tensor]:
    r"""Split :math:`\hat R` and bulk effective sample size per parameter, from
    Pyro's estimators (`pyro.ops.stats`).

    Pyro's ESS divides by the integrated autocorrelation time :math:`\hat\tau`
    without a floor; on short, antithetic chains (HMC with acceptance near 1)
    :math:`\hat\tau` can come out near zero or negative, so the ESS explodes or
    turns negative. As Stan does, :math:`\hat\tau` is floored at
    :math:`1 / \log_{10} S`, so the ESS of :math:`S` draws is at most
    :math:`S \log_{10} S`. The sums run in double precision.

    Arguments:
        chains: Draws of shape `(C, S, *batch, D)`: chains first, then draws.

    Returns:
        :math:`\hat R` and the ESS, each of shape `(*batch, D)`; NaN when there
        are fewer than 4 draws per chain.

    Example:
        >>> import torch
        >>> r_hat, ess = convergence(torch.randn(4, 500, 2))
        >>> bool((r_hat < 1.01).all()), bool((ess > 1000).all())
        (True, True)
    """
    if chains.dim() < 3:
        raise ValueError(
            f"`chains` must have shape (C, S, *batch, D), got {tuple(chains.shape)}."
        )
    if chains.shape[1] < 4:
        nan = torch.full(chains.shape[2:], torch.nan, device=chains.device)
        return nan, nan.clone()
    draws = chains.shape[0] * chains.shape[1]
    chains = chains.double()
    r_hat = split_gelman_rubin(chains, chain_dim=0, sample_dim=1)
    tau = draws / effective_sample_size(chains, chain_dim=0, sample_dim=1)
    floor = 1 / math.log10(draws)
    tau = torch.where(tau > floor, tau, floor)  # negative or tiny: the floor
    return r_hat.float(), (draws / tau).float()


def nested_r_hat(chains: Tensor, superchain_size: int) -> Tensor:
    r"""Nested :math:`\hat R` (Margossian et al., 2024) of many short chains
    grouped in superchains, the chains of each started from one point.

    With :math:`K` superchains of :math:`M` chains of :math:`N` draws
    :math:`f_{nmk}`, chain means :math:`\bar f_{\cdot mk}`, superchain means
    :math:`\bar f_{\cdot\cdot k}` and their mean :math:`\bar f`:

    .. math:: \widehat{\mathfrak n R} = \sqrt{1 + \frac{\hat B_\nu}{\hat W_\nu}},
        \quad \hat B_\nu = \frac{1}{K - 1} \sum_k (\bar f_{\cdot\cdot k} -
        \bar f)^2, \quad \hat W_\nu = \frac1K \sum_k (\tilde B_k + \tilde W_k),

    where :math:`\tilde B_k` is the variance of superchain :math:`k`'s chain
    means (0 when :math:`M = 1`) and :math:`\tilde W_k` the mean of its chains'
    variances (0 when :math:`N = 1`). The chains of a superchain agree only
    once they have forgotten their shared start, and the superchains only once
    they have forgotten theirs and visit every mode: unlike split
    :math:`\hat R`, the within-superchain variance does not rest on the
    autocorrelation of a chain of a few draws. At stationarity
    :math:`1 / (\widehat{\mathfrak n R}^2 - 1)` estimates the effective draws
    of one superchain, so the statistic cannot come close to 1 on few draws:
    :math:`M N` independent draws per superchain give about
    :math:`\sqrt{1 + 1 / (M N)}`.

    Pyro has no nested :math:`\hat R` (its `split_gelman_rubin` is the classic
    one); this follows the paper's equations, as `posterior`'s `rhat_nested`
    (Stan) does.

    References:
        | Nested R-hat: Assessing the Convergence of Markov Chain Monte Carlo
        | When Running Many Short Chains (Margossian et al., Bayesian Analysis
        | 2024) https://doi.org/10.1214/24-BA1453

    Arguments:
        chains: Draws of shape `(C, N, *batch, D)`, superchain `k` being chains
            `k * M` to `(k + 1) * M - 1` for `M = superchain_size`.
        superchain_size: The chains :math:`M` of each superchain.

    Returns:
        Nested :math:`\hat R` of shape `(*batch, D)`.

    Example:
        >>> import torch
        >>> chains = torch.randn(400, 100, 2)  # 100 superchains of 4 chains
        >>> bool((nested_r_hat(chains, 4) < 1.01).all())
        True
        >>> chains[:200] += 3.0  # half the superchains stuck elsewhere
        >>> bool((nested_r_hat(chains, 4) > 1.1).all())
        True
    """
    if chains.dim() < 3:
        raise ValueError(
            f"`chains` must have shape (C, N, *batch, D), got {tuple(chains.shape)}."
        )
    num_chains = chains.shape[0]
    if (
        superchain_size < 1
        or num_chains % superchain_size
        or (num_chains // superchain_size < 2)
    ):
        raise ValueError(
            f"`superchain_size` must divide the {num_chains} chains into at least "
            f"2 superchains, got {superchain_size}."
        )
    x = chains.double().unflatten(0, (-1, superchain_size))  # (K, M, N, ...)
    chain_mean = x.mean(2)
    within_chain = x.var(2) if x.shape[2] > 1 else torch.zeros_like(chain_mean)
    between_chain = (
        chain_mean.var(1) if superchain_size > 1 else torch.zeros_like(chain_mean[:, 0])
    )
    between_superchain = chain_mean.mean(1).var(0)
    within_superchain = (between_chain + within_chain.mean(1)).mean(0)
    return (1 + between_superchain / within_superchain).sqrt().float()


def nested_ess(chains: Tensor, superchain_size: int) -> Tensor:
    r"""The effective number of draws of many short chains, from nested
    :math:`\hat R`: :math:`K / (\widehat{\mathfrak n R}^2 - 1)` for :math:`K`
    superchains.

    At stationarity :math:`\hat B_\nu / \hat W_\nu` is the variance of a
    superchain's mean over the posterior variance, the inverse of a
    superchain's effective draws (Margossian et al., 2024); unlike Pyro's ESS,
    it reads no autocorrelation off 10-draw chains, so it cannot credit them
    with independence. It is capped, as :func:`convergence`'s, at
    :math:`S \log_{10} S` for :math:`S` draws in all.

    Arguments:
        chains: Draws of shape `(C, N, *batch, D)`, superchains as in
            :func:`nested_r_hat`.
        superchain_size: The chains of each superchain.

    Returns:
        The effective draws, of shape `(*batch, D)`.

    Example:
        >>> import torch
        >>> ess = nested_ess(torch.randn(100, 10, 2), 2)  # 1,000 i.i.d. draws
        >>> bool((ess > 300).all())
        True
    """
    num_superchains = chains.shape[0] // max(superchain_size, 1)
    draws = chains.shape[0] * chains.shape[1]
    excess = nested_r_hat(chains, superchain_size).double().square() - 1
    cap = draws * max(math.log10(draws), 1.0)
    return (num_superchains / excess).clamp(max=cap).float()


class ChainCheck(NamedTuple):
    r"""What :func:`check_chains` found."""

    r_hat: Tensor  #: split R-hat, `(*batch, D)`
    ess: Tensor  #: Pyro's bulk ESS, floored as in :func:`convergence`
    nested_r_hat: Tensor | None  #: `None` with too few superchains
    nested_ess: Tensor | None  #: `None` with too few superchains
    problems: tuple[str, ...]  #: what a warning should say; empty when fine


def check_chains(
    chains: Tensor,
    superchain_size: int = 1,
    num_draws: int | None = None,
    divergences: Tensor | None = None,
) -> ChainCheck:
    r"""Whether MCMC chains can be trusted, by the statistic that fits their
    shape, with the numbers a warning should name.

    With at least `MIN_SUPERCHAINS` superchains (the chains of each started from
    one point), the run's effective draws are :func:`nested_ess`'s, so many
    10-draw chains are judged on what they know; with fewer, long chains are
    judged by split :math:`\hat R` (above 1.01) and the bulk ESS. Either way
    a run with fewer effective draws than `ESS_FRACTION` of `num_draws`, or
    with divergent transitions, is a problem.

    Arguments:
        chains: Draws of shape `(C, N, *batch, D)`.
        superchain_size: The chains of each superchain (1: each chain its own
            start).
        num_draws: The draws the ESS is set against (all `C N` when `None`).
        divergences: The divergent transitions per chain, if the kernel has any.

    Returns:
        The statistics and the problems found.

    Example:
        >>> import torch
        >>> check_chains(torch.randn(100, 10, 2), superchain_size=2).problems
        ()
        >>> stuck = torch.randn(100, 10, 2)
        >>> stuck[:50] += 5  # half the superchains in a mode the others miss
        >>> check_chains(stuck, superchain_size=2).problems[0][:13]
        'nested R-hat '
    """
    r_hat, ess = convergence(chains)
    num_draws = chains.shape[0] * chains.shape[1] if num_draws is None else num_draws
    num_superchains = chains.shape[0] // superchain_size
    problems = []
    n_r_hat = n_ess = None
    if num_superchains >= MIN_SUPERCHAINS:
        n_r_hat = nested_r_hat(chains, superchain_size)
        n_ess = nested_ess(chains, superchain_size)
        if (n_ess < ESS_FRACTION * num_draws).any():
            layout = (
                f"{num_superchains} superchains of {superchain_size} chains"
                if superchain_size > 1
                else f"{num_superchains} chains"
            )
            problems.append(
                f"nested R-hat up to {n_r_hat.max():.3f} over {layout}: about "
                f"{n_ess.min():.0f} effective draws of the {num_draws} drawn "
                f"(fewer than {ESS_FRACTION:.0%})"
            )
    else:
        if (r_hat > R_HAT_MAX).any():
            problems.append(f"split R-hat up to {r_hat.max():.3f} (> {R_HAT_MAX})")
        if (ess < ESS_FRACTION * num_draws).any():
            problems.append(
                f"bulk ESS down to {ess.min():.0f} of the {num_draws} drawn (fewer "
                f"than {ESS_FRACTION:.0%})"
            )
    if divergences is not None and divergences.sum() > 0:
        problems.append(f"{int(divergences.sum())} divergent transitions")
    return ChainCheck(r_hat, ess, n_r_hat, n_ess, tuple(problems))


def check_evidence(
    log_evidence: Tensor, factor: float = EVIDENCE_FACTOR
) -> tuple[str, ...]:
    r"""The problem, if any, with the evidence estimates :math:`\log
    \mathbb{E}_{p(\theta)}[\hat r(x_b \mid \theta)]` of `B` observations,
    `(B,)`: a correct ratio integrates to 1 over the prior, so an estimate
    beyond `factor` either way means the estimator is off there
    (overconfident or misspecified).

    Example:
        >>> import torch
        >>> check_evidence(torch.tensor([0.1, -0.2]))
        ()
        >>> check_evidence(torch.tensor([0.1, 1.5]))[0][:36]
        'the evidence E_prior[r(x|theta)] is '
    """
    off = log_evidence.abs() > math.log(factor)
    if not off.any():
        return ()
    b = int(off.nonzero()[0, 0])
    return (
        f"the evidence E_prior[r(x|theta)] is {log_evidence[b].exp().item():.3g} "
        f"for observation {b} ({int(off.sum())} of {len(off)} beyond a factor "
        f"{factor:g} of 1): a correct ratio integrates to 1 over the prior, so "
        "the estimator is off for these observations (overconfident or "
        "misspecified); check it with `ratio_normalization`",
    )


def warn_problems(
    problems: tuple[str, ...], subject: str, advice: str, stacklevel: int = 2
) -> None:
    r"""One warning that names every problem found, `"{subject}: {problems}.
    {advice}"`, or nothing when there is none."""
    if problems:
        warnings.warn(
            f"{subject}: " + "; ".join(problems) + f". {advice}",
            stacklevel=stacklevel + 1,
        )
