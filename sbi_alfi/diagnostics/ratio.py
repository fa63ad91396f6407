r"""Checks of a likelihood-to-evidence ratio estimator."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["Normalization", "ratio_normalization"]


class Normalization(NamedTuple):
    r"""A Monte Carlo estimate and its standard error."""

    value: float
    standard_error: float


@torch.no_grad()
def ratio_normalization(
    estimator: Callable[[Tensor, Tensor], Tensor],
    prior: Distribution,
    simulator: Callable[[Tensor], Tensor],
    num_simulations: int = 10_000,
    batch_size: int = 10_000,
) -> Normalization:
    r"""The Monte Carlo estimate of

    .. math:: \mathbb{E}_{p(\theta) p(x)} \left[ \hat r(x \mid \theta) \right]
        = \int p(\theta) \, p(x) \, \frac{\hat p(x \mid \theta)}{p(x)}
        \, \mathrm{d}x \, \mathrm{d}\theta,

    which is 1 when :math:`\hat r = p(x \mid \theta) / p(x)`: each
    :math:`\hat p(x \mid \theta)` must integrate to 1 (Hermans et al., 2020).
    Pairs are independent: :math:`\theta \sim p(\theta)` and :math:`x` simulated
    from another prior draw.

    Arguments:
        estimator: Maps `(theta, x)` batches to log-ratios `(B,)` or `(B, 1)`.
        prior: The prior.
        simulator: Maps `theta` `(B, D)` to `x` `(B, *x_shape)`.
        num_simulations: The number of pairs.
        batch_size: The pairs the estimator sees at once.

    Returns:
        The estimate and its standard error.

    Example:
        >>> import torch
        >>> from torch.distributions import MultivariateNormal, Normal
        >>> prior = MultivariateNormal(torch.zeros(1), torch.eye(1))
        >>> def simulator(theta):
        ...     return theta + torch.randn_like(theta)
        >>> def exact(theta, x):  # log N(x; theta, 1) - log N(x; 0, 2)
        ...     return (Normal(theta, 1).log_prob(x)
        ...             - Normal(0, 2**0.5).log_prob(x)).sum(-1)
        >>> value, error = ratio_normalization(exact, prior, simulator)
        >>> abs(value - 1) < 3 * error
        True
    """
    if num_simulations < 2:
        raise ValueError(
            f"`num_simulations` must be at least 2, got {num_simulations}."
        )
    theta = prior.sample((num_simulations,))
    x = simulator(prior.sample((num_simulations,)))
    if len(x) != num_simulations:
        raise ValueError(
            f"The simulator returned {len(x)} rows for {num_simulations} parameters."
        )
    log_ratio = torch.cat(
        [
            estimator(t, x_b).reshape(len(t))
            for t, x_b in zip(theta.split(batch_size), x.split(batch_size), strict=True)
        ]
    ).double()
    if torch.isnan(log_ratio).any():
        raise ValueError("The ratio estimator returned NaN.")
    ratio = log_ratio.exp()
    return Normalization(
        ratio.mean().item(), ratio.std().item() / math.sqrt(num_simulations)
    )
