r"""The Poisson counting experiment of the ALFI paper."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Simulator

__all__ = ["Poisson"]


class Poisson(Simulator):
    r"""Counts with a Poisson rate parametrized by its logarithm.

    .. math:: \theta \sim \mathcal{U}(0.2, 7), \qquad
        x \mid \theta \sim \mathrm{Poisson}(e^\theta)

    The maximum-likelihood estimate from :math:`n` i.i.d. counts is
    :math:`\hat\theta = \log \bar{x}` (:math:`-\infty` when all counts are zero).

    References:
        | Recurrent machines for likelihood-free inference (Pesah et al., 2018)
        | https://arxiv.org/abs/1811.12932

    Arguments:
        low: The lower bound of the uniform prior on the log-rate.
        high: The upper bound of the uniform prior on the log-rate.
        device: The device of the prior and of the simulations.

    Example:
        >>> import torch
        >>> from sbi_alfi.simulators import Poisson
        >>> sim = Poisson()
        >>> theta = torch.tensor([[2.0]])
        >>> x = sim(theta.expand(500, 1))  # 500 counts at rate e^2
        >>> x.shape
        torch.Size([500, 1])
        >>> sim.mle(x)  # close to 2
        tensor([...])
    """

    names = ("theta",)
    labels = (r"$\theta = \log \lambda$",)
    x_shape = torch.Size((1,))

    def __init__(
        self, low: float = 0.2, high: float = 7.0, device: str | torch.device = "cpu"
    ):
        super().__init__([low], [high], device=device)

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.poisson(theta.exp(), generator=generator)

    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        theta, x = torch.broadcast_tensors(theta, x)
        counts = (x >= 0) & (x == x.round())
        x = torch.where(counts, x, torch.zeros_like(x))
        log_p = x * theta - theta.exp() - torch.lgamma(x + 1)
        return torch.where(counts, log_p, -torch.inf).squeeze(-1)

    def _mle(self, x: Tensor) -> Tensor:
        return x.mean(dim=-2).log()
