r"""A Gaussian mixture fitted to each group of particles, the proposal of SMC's
independence moves."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

__all__ = ["fit_gaussian_mixture"]

# Ridge on the components' covariances, relative to the group's mean variance:
# keeps a component that caught few particles invertible.
_RIDGE = 1e-3
# The components' covariances widened by this factor: an independence proposal
# must not be lighter-tailed than its target where the target has mass.
_WIDEN = 1.2
# The fewest points per parameter of a component (mean and covariance): fewer
# components where the points are few for the dimension. On sbibm's 10-D
# gaussian_linear_uniform (400 particles per island) SMC went from 2.6x sbi's
# slice sampler with 8 components to 12x with the 2 this allows; SLCP's 4 modes
# (5-D, 6 components) kept their shares (benchmarks/results/sampler_speed, mcmc).
_POINTS_PER_PARAMETER = 3


def fit_gaussian_mixture(
    z: Tensor, num_components: int, num_iterations: int = 15
) -> MixtureSameFamily:
    r"""A mixture of `num_components` Gaussians fitted by expectation-maximization
    to each group of points, all groups at once; fewer where the points are too
    few to fit that many (at least 3 points per parameter of a component,
    :math:`D + D (D + 1) / 2` of them).

    `scikit-learn`'s `GaussianMixture` fits one set of points at a time on NumPy;
    SMC needs one fit per group (observation and island) at every temperature, on
    the particles' device, hence this batched one. The means start at distinct
    random points of each group, the covariances at the group's covariance
    shrunk to the components' share of the volume.

    Arguments:
        z: Points `(G, N, D)`.
        num_components: The most components `K`.
        num_iterations: EM iterations.

    Returns:
        A mixture of batch shape `(G,)` and event shape `(D,)`.

    Example:
        >>> import torch
        >>> z = torch.cat([torch.randn(1, 500, 2) - 4, torch.randn(1, 500, 2) + 4], 1)
        >>> mixture = fit_gaussian_mixture(z, 2)
        >>> mixture.component_distribution.loc.abs().round()
        tensor([[[4., 4.],
                 [4., 4.]]])
    """
    groups, n, dim = z.shape
    parameters = dim + dim * (dim + 1) // 2
    k = max(1, min(num_components, n // (_POINTS_PER_PARAMETER * parameters)))
    start = torch.rand(groups, n, device=z.device).argsort(-1)[:, :k]
    loc = z.gather(1, start[..., None].expand(-1, -1, dim))  # (G, K, D)
    centred = z - z.mean(1, keepdim=True)
    covariance = centred.mT @ centred / max(n - 1, 1)
    eye = torch.eye(dim, dtype=z.dtype, device=z.device)
    ridge = _RIDGE * covariance.diagonal(0, -2, -1).mean(-1).clamp(min=1e-12)
    ridge = ridge[:, None, None, None] * eye
    cov = (covariance / k ** (2 / dim))[:, None] + ridge
    log_weight = z.new_full((groups, k), -math.log(k))
    for _ in range(num_iterations):
        components = MultivariateNormal(loc, cov, validate_args=False)
        # (N, G, 1, D) against the batch (G, K): (N, G, K), then (G, N, K).
        log_p = components.log_prob(z.transpose(0, 1)[:, :, None]).transpose(0, 1)
        log_p = log_p + log_weight[:, None]
        resp = (log_p - log_p.logsumexp(-1, keepdim=True)).exp()
        mass = resp.sum(1) + 1e-9  # (G, K)
        loc = resp.mT @ z / mass[..., None]
        diff = z[:, :, None, :] - loc[:, None]  # (G, N, K, D)
        weighted = resp[..., None] * diff
        cov = torch.einsum("gnki,gnkj->gkij", weighted, diff) / mass[..., None, None]
        cov = cov + ridge
        log_weight = (mass / n).log()
    # Unvalidated: the checks (a Cholesky factor per component) cost more
    # than the fit, and the ridge keeps the covariances positive definite.
    return MixtureSameFamily(
        Categorical(logits=log_weight, validate_args=False),
        MultivariateNormal(loc, _WIDEN * cov, validate_args=False),
        validate_args=False,
    )
