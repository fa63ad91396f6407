r"""Expected coverage of highest-density credible regions."""

from __future__ import annotations

from typing import NamedTuple

import torch
from sbi.diagnostics import run_sbc
from scipy.stats import beta
from torch import Tensor

from ..checked_posterior import theta_dim

__all__ = ["Coverage", "expected_coverage"]


class Coverage(NamedTuple):
    r"""An expected-coverage curve: at each credibility `level`, the fraction of
    true parameters inside their highest-density region (`coverage`), with a
    Clopper–Pearson confidence band (`lower`, `upper`)."""

    levels: Tensor
    coverage: Tensor
    lower: Tensor
    upper: Tensor
    #: Per pair, the smallest credibility level whose region holds the truth.
    credibility: Tensor


def expected_coverage(
    posterior,
    theta: Tensor,
    x: Tensor,
    levels: Tensor | None = None,
    num_posterior_samples: int = 1_000,
    confidence: float = 0.95,
    show_progress_bar: bool = False,
) -> Coverage:
    r"""The expected coverage of the posterior's highest-density regions
    (Hermans et al., 2022): over pairs :math:`(\theta^*, x^*)` from the joint,

    .. math:: \mathrm{coverage}(1 - \alpha) = \mathbb{E}_{p(\theta^*, x^*)}
        \left[ \mathbb{1}\{\theta^* \in \Theta_{\hat p}(1 - \alpha \mid x^*)\}
        \right],

    where :math:`\Theta_{\hat p}(1 - \alpha \mid x)` is the smallest region of
    :math:`\hat p(\theta \mid x)`-mass :math:`1 - \alpha`. On the diagonal, the
    posterior is calibrated; below it, overconfident; above it, conservative.

    :math:`\theta^*` lies in the region of level :math:`\gamma` when fewer than a
    fraction :math:`\gamma` of posterior draws have a higher density. Only the
    ranking of densities matters, so the unnormalized `potential` of any `sbi`
    posterior serves; the ranks come from `sbi.diagnostics.run_sbc` (its
    sample-based expected coverage) and the draws from the posterior's
    `sample_batched`.

    References:
        | A Trust Crisis In Simulation-Based Inference? Your Posterior
        | Approximations Can Be Unfaithful (Hermans et al., 2022)
        | https://arxiv.org/abs/2110.06581

    Arguments:
        posterior: Any `sbi` posterior with `sample_batched` (or `sample`) and
            `potential`.
        theta: True parameters :math:`\theta^*`, `(N, D)`, drawn from the prior.
        x: Their observations :math:`x^*`, `(N, *x_shape)`.
        levels: The credibility levels, in (0, 1); 51 evenly spaced by default.
        num_posterior_samples: Posterior draws per observation.
        confidence: The confidence of the binomial band.
        show_progress_bar: Whether to show `sbi`'s progress bars.

    Returns:
        A :class:`Coverage`.

    Example:
        >>> import torch
        >>> from sbi.utils import BoxUniform
        >>> from sbi_alfi import RatioMCMCPosterior
        >>> class ExactRatio(torch.nn.Module):  # x ~ N(theta, 0.5^2)
        ...     def forward(self, theta, x):
        ...         return -2 * (x - theta).square().sum(-1)
        >>> prior = BoxUniform(-3 * torch.ones(1), 3 * torch.ones(1))
        >>> posterior = RatioMCMCPosterior(ExactRatio(), prior, "mh_vectorized",
        ...     num_chains=10, warmup_steps=100, show_progress_bars=False)
        >>> theta = prior.sample((100,))
        >>> x = theta + 0.5 * torch.randn_like(theta)
        >>> result = expected_coverage(posterior, theta, x, levels=[0.5, 0.9])
        >>> result.coverage  # close to the levels
        tensor([...])
    """
    theta = torch.as_tensor(theta, dtype=torch.float32)
    x = torch.as_tensor(x, dtype=torch.float32)
    if theta.dim() != 2 or len(theta) != len(x) or len(theta) == 0:
        raise ValueError(
            "`theta` and `x` must be N >= 1 pairs, of shapes (N, D) and "
            f"(N, *x_shape); got {tuple(theta.shape)} and {tuple(x.shape)}."
        )
    prior = getattr(posterior, "prior", None)
    if prior is None:
        prior = getattr(getattr(posterior, "potential_fn", None), "prior", None)
    if prior is not None and theta.shape[1] != theta_dim(prior):
        raise ValueError(
            f"`theta` must have shape (N, {theta_dim(prior)}), the posterior's "
            f"parameter dimension, got {tuple(theta.shape)}."
        )
    for name, value in (("theta", theta), ("x", x)):
        bad = ~torch.isfinite(value.reshape(len(value), -1)).all(-1)
        if bad.any():
            raise ValueError(
                f"`{name}` has NaN or inf in {int(bad.sum())} of {len(value)} pairs; "
                f"the first is pair {int(bad.nonzero()[0, 0])}."
            )
    if levels is None:
        levels = torch.linspace(0, 1, 51)[1:-1]
    levels = torch.as_tensor(levels, dtype=torch.float32)
    if ((levels <= 0) | (levels >= 1)).any():
        raise ValueError(f"`levels` must lie in (0, 1), got {levels.tolist()}.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence}.")

    def potential(draws: Tensor, x_i: Tensor) -> Tensor:
        return posterior.potential(draws, x=x_i)

    ranks, _ = run_sbc(
        theta,
        x,
        posterior,
        num_posterior_samples=num_posterior_samples,
        reduce_fns=potential,
        show_progress_bar=show_progress_bar,
    )
    # rank = the number of draws of lower density than θ*.
    credibility = 1 - ranks[:, 0] / num_posterior_samples
    inside = (credibility[None, :] <= levels[:, None]).sum(1).double()
    n = len(theta)
    alpha = 1 - confidence
    lower = torch.as_tensor(beta.ppf(alpha / 2, inside, n - inside + 1))
    upper = torch.as_tensor(beta.ppf(1 - alpha / 2, inside + 1, n - inside))
    return Coverage(
        levels,
        (inside / n).float(),
        torch.nan_to_num(lower, nan=0.0).float(),
        torch.nan_to_num(upper, nan=1.0).float(),
        credibility,
    )
