r"""A Gaussian with unknown mean and standard deviation."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Normal

from .base import LocationScale

__all__ = ["Gaussian"]


class Gaussian(LocationScale):
    r"""Draws from a normal distribution of unknown location and scale.

    .. math:: \theta = (\mu, \sigma) \sim \mathcal{U}([-5, 5] \times [0.5, 3]),
        \qquad x \mid \theta \sim \mathcal{N}(\mu, \sigma^2)

    The maximum-likelihood estimate from :math:`n` i.i.d. draws is the sample mean
    :math:`\hat\mu = \bar{x}` and the (biased) sample standard deviation
    :math:`\hat\sigma = \sqrt{\frac{1}{n} \sum_i (x_i - \bar{x})^2}`.

    Arguments:
        low: The lower bounds of the uniform prior on :math:`(\mu, \sigma)`.
        high: The upper bounds of the uniform prior on :math:`(\mu, \sigma)`.
        device: The device of the prior and of the simulations.

    Example:
        >>> import torch
        >>> from sbi_alfi.simulators import Gaussian
        >>> sim = Gaussian()
        >>> x = sim(torch.tensor([1.0, 2.0]).expand(1000, 2))
        >>> sim.mle(x)  # close to (1, 2)
        tensor([...])
    """

    names = ("mu", "sigma")
    labels = (r"$\mu$", r"$\sigma$")

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn(
            theta.shape[:-1],
            generator=generator,
            dtype=theta.dtype,
            device=theta.device,
        )
        return (theta[..., 0] + theta[..., 1] * noise).unsqueeze(-1)

    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        normal = Normal(theta[..., 0], theta[..., 1], validate_args=False)
        return normal.log_prob(x[..., 0])

    def _mle(self, x: Tensor) -> Tensor:
        x = x[..., 0]
        return torch.stack([x.mean(-1), x.std(-1, correction=0)], dim=-1)
