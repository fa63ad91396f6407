r"""Convergence statistics of MCMC chains."""

from __future__ import annotations

import math

import torch
from pyro.ops.stats import effective_sample_size, split_gelman_rubin
from torch import Tensor

__all__ = ["convergence"]


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
