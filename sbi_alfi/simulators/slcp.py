r"""The simple-likelihood, complex-posterior benchmark of the AALR paper."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from .base import Simulator

__all__ = ["SLCP"]

NUM_DRAWS = 4


class SLCP(Simulator):
    r"""Four i.i.d. draws of a 2-D Gaussian whose moments depend non-linearly on
    five parameters: a tractable likelihood with a complex, multimodal posterior.

    .. math::
        \theta \sim \mathcal{U}(-3, 3)^5, \qquad
        m = (\theta_1, \theta_2), \quad s_1 = \theta_3^2, \quad s_2 = \theta_4^2,
        \quad \rho = \tanh \theta_5, \\
        \Sigma = \begin{pmatrix} s_1^2 & \rho s_1 s_2 \\
            \rho s_1 s_2 & s_2^2 \end{pmatrix}, \qquad
        x = (x_1, \dots, x_4), \quad x_j \sim \mathcal{N}(m, \Sigma),

    flattened to :math:`x \in \mathbb{R}^8`. The likelihood is Gaussian and exact.
    The MLE from :math:`n` observations (:math:`4n` points) is closed-form up to the
    signs of :math:`\theta_3, \theta_4`, which the data cannot tell; :meth:`mle`
    returns the representative with both positive.

    References:
        | Likelihood-free MCMC with Amortized Approximate Ratio Estimators
        | (Hermans et al., 2020) https://arxiv.org/abs/1903.04057

    Arguments:
        low: The lower bound of the uniform prior, for every parameter.
        high: The upper bound of the uniform prior, for every parameter.
        device: The device of the prior and of the simulations.

    Example:
        >>> import torch
        >>> from sbi_alfi.simulators import SLCP
        >>> sim = SLCP()
        >>> x_o = sim(sim.theta_true.unsqueeze(0))
        >>> x_o.shape
        torch.Size([1, 8])
        >>> sim.log_likelihood(sim.prior.sample((3,)), x_o).shape
        torch.Size([3])
    """

    names = tuple(f"theta_{i}" for i in range(1, 6))
    labels = tuple(rf"$\theta_{i}$" for i in range(1, 6))
    x_shape = torch.Size((2 * NUM_DRAWS,))

    def __init__(
        self, low: float = -3.0, high: float = 3.0, device: str | torch.device = "cpu"
    ):
        super().__init__([low] * 5, [high] * 5, device=device)

    @property
    def theta_true(self) -> Tensor:
        r"""The parameter at which the AALR paper simulates its observation."""
        return torch.tensor([0.7, -2.9, -1.0, -0.9, 0.6], device=self.device)

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        mean, scale_tril = _moments(theta)
        z = torch.randn(
            (*theta.shape[:-1], NUM_DRAWS, 2, 1),
            generator=generator,
            dtype=theta.dtype,
            device=theta.device,
        )
        x = mean.unsqueeze(-2) + (scale_tril.unsqueeze(-3) @ z).squeeze(-1)
        return x.flatten(-2)

    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        mean, scale_tril = _moments(theta)
        # θ3 = 0 or θ4 = 0 (inside the prior) makes Σ singular: the data then lie
        # on a line, which x does not, so the density is 0, where torch's
        # log-density of a singular factor is NaN.
        singular = (scale_tril.diagonal(dim1=-2, dim2=-1) == 0).any(-1)
        eye = torch.eye(2, dtype=scale_tril.dtype, device=scale_tril.device)
        scale_tril = torch.where(singular[..., None, None], eye, scale_tril)
        normal = MultivariateNormal(
            mean.unsqueeze(-2), scale_tril=scale_tril.unsqueeze(-3), validate_args=False
        )
        log_p = normal.log_prob(x.unflatten(-1, (NUM_DRAWS, 2))).sum(-1)
        return torch.where(singular, -torch.inf, log_p)

    def _mle(self, x: Tensor) -> Tensor:
        points = x.unflatten(-1, (NUM_DRAWS, 2)).flatten(-3, -2)  # (*, 4n, 2)
        mean = points.mean(-2)
        centred = points - mean.unsqueeze(-2)
        cov = centred.mT @ centred / points.shape[-2]
        var1, var2, cov12 = cov[..., 0, 0], cov[..., 1, 1], cov[..., 0, 1]
        rho = cov12 / (var1 * var2).sqrt()
        return torch.stack(
            [mean[..., 0], mean[..., 1], var1**0.25, var2**0.25, rho.atanh()], -1
        )


def _moments(theta: Tensor) -> tuple[Tensor, Tensor]:
    r"""The mean :math:`m`, of shape `(*, 2)`, and the Cholesky factor of
    :math:`\Sigma`, of shape `(*, 2, 2)`."""
    s1, s2 = theta[..., 2].square(), theta[..., 3].square()
    rho = theta[..., 4].tanh()
    # sqrt(1 - tanh^2) = 1 / cosh: the subtraction is 0 in float32 from |θ5| ≈ 9
    # (a singular Σ, NaN densities), the quotient stays positive up to |θ5| ≈ 89.
    sech = 1 / theta[..., 4].cosh()
    zero = torch.zeros_like(s1)
    scale_tril = torch.stack(
        [
            torch.stack([s1, zero], -1),
            torch.stack([rho * s2, sech * s2], -1),
        ],
        -2,
    )
    return theta[..., :2], scale_tril
