r"""A Laplace distribution with unknown location and scale."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Laplace as LaplaceDistribution

from .base import LocationScale

__all__ = ["Laplace"]


class Laplace(LocationScale):
    r"""Draws from a Laplace distribution of unknown location and scale: heavier
    tails than the Gaussian, and a maximum-likelihood estimate of the location
    that is a median, not a mean.

    .. math:: \theta = (\mu, b) \sim \mathcal{U}([-5, 5] \times [0.5, 3]),
        \qquad p(x \mid \theta) = \frac{1}{2b} e^{-|x - \mu| / b}

    The maximum-likelihood estimate from :math:`n` i.i.d. draws is the sample
    median :math:`\hat\mu` (for even :math:`n`, any point between the two middle
    draws; the midpoint here) and the mean absolute deviation from it,
    :math:`\hat b = \frac{1}{n} \sum_i |x_i - \hat\mu|`.

    Arguments:
        low: The lower bounds of the uniform prior on :math:`(\mu, b)`.
        high: The upper bounds of the uniform prior on :math:`(\mu, b)`.
        device: The device of the prior and of the simulations.

    Example:
        >>> import torch
        >>> from sbi_alfi.simulators import Laplace
        >>> sim = Laplace()
        >>> x = sim(torch.tensor([1.0, 2.0]).expand(1000, 2))
        >>> sim.mle(x)  # close to (1, 2)
        tensor([...])
    """

    names = ("mu", "b")
    labels = (r"$\mu$", r"$b$")

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        # A random sign times an exponential draw, from uniforms, so that an
        # explicit generator drives it (torch's Laplace sampler takes none);
        # -log1p(-u) is finite for u in [0, 1), where inversion of the Laplace's
        # CDF reaches log(0) at float precision.
        u = torch.rand(
            (*theta.shape[:-1], 2),
            generator=generator,
            dtype=theta.dtype,
            device=theta.device,
        )
        sign = torch.where(u[..., 1] < 0.5, -1.0, 1.0).to(theta.dtype)
        x = theta[..., 0] - theta[..., 1] * sign * torch.log1p(-u[..., 0])
        return x.unsqueeze(-1)

    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        laplace = LaplaceDistribution(theta[..., 0], theta[..., 1], validate_args=False)
        return laplace.log_prob(x[..., 0])

    def _mle(self, x: Tensor) -> Tensor:
        x = x[..., 0].sort(-1).values
        n = x.shape[-1]
        mu = (x[..., (n - 1) // 2] + x[..., n // 2]) / 2
        b = (x - mu[..., None]).abs().mean(-1)
        return torch.stack([mu, b], dim=-1)
