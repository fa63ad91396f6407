r"""The Metropolis–Hastings accept step every kernel ends with."""

from __future__ import annotations

import torch
from torch import Tensor

from .state import ChainState

__all__ = ["metropolis_accept"]


def metropolis_accept(
    state: ChainState, proposal: ChainState, log_alpha: Tensor
) -> tuple[ChainState, Tensor]:
    r"""Moves chain `c` to `proposal` with probability :math:`\min(1,
    e^{\log \alpha_c})`, else keeps it where it is; all chains at once.

    A NaN :math:`\log \alpha` (e.g. :math:`-\infty` minus :math:`-\infty`, a
    chain and its proposal both at zero density) is a rejection.

    Arguments:
        state: Where the chains are.
        proposal: Where they are proposed to go, with the same fields filled.
        log_alpha: The log acceptance ratios, `(C,)`.

    Returns:
        The new state and the acceptance probabilities, `(C,)`.
    """
    log_alpha = torch.nan_to_num(log_alpha, nan=-torch.inf)
    accept = torch.rand_like(log_alpha).log() < log_alpha
    grad = None
    if state.grad is not None:
        grad = torch.where(accept[:, None], proposal.grad, state.grad)
    new = ChainState(
        torch.where(accept[:, None], proposal.position, state.position),
        torch.where(accept, proposal.log_density, state.log_density),
        grad,
    )
    return new, log_alpha.clamp(max=0).exp()
