r"""The read-out flow: the shape of ALFI's posterior around its final Gaussian."""

from __future__ import annotations

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import AffineTransform, Distribution, TransformedDistribution
from tqdm.auto import tqdm

__all__ = ["ReadoutFlow"]


class ReadoutFlow(nn.Module):
    r"""A conditional normalizing flow over the standardized residual of ALFI's
    final Gaussian proposal :math:`\psi = (\mu, \log \sigma)`:

    .. math:: u = \frac{z - \mu}{\sigma}, \qquad
        q(z \mid \psi) = r_\phi\!\left(\frac{z - \mu}{\sigma} \,\middle|\,
        \psi\right) \prod_d \sigma_d^{-1},

    fitted by the NLL of :math:`u^* = (t(\theta^*) - \mu) / \sigma` over tasks
    :math:`(\theta^*, x^*)` run through the machine (:meth:`fit`). The machine
    locates and scales the posterior; the flow only learns its shape in those
    units, which is the same whether the posterior is 1e-3 of the prior wide or
    1/3. A diagonal Gaussian over :math:`z` cannot follow a curved posterior:
    Weinberg's data identify one function of its two parameters, and the best
    diagonal Gaussian reads it at 1.16 times the MLE's squared error at
    n = 500, where this flow, given the same Gaussians, reads it at 0.99
    (both in `benchmarks/alfi_flow_readout.py`). Fitted on contexts noisier than
    those it reads, it is less accurate: on contexts as noisy as
    meta-training's rollouts, 1.67 in the same benchmark (see
    :meth:`~sbi_alfi.alfi.inference.ALFI.train`'s `readout` for the
    machine's own).

    The flow is `zuko`'s neural spline flow (Durkan et al., 2019), which `sbi`
    builds its density estimators on; written here are only the
    standardization around :math:`\psi` and :meth:`fit`'s plain NLL loop
    (`zuko` has no trainer, and `sbi`'s train its own estimators on its own
    data).

    References:
        | Neural Spline Flows (Durkan et al., 2019)
        | https://arxiv.org/abs/1906.04032

    Arguments:
        theta_dim: The number :math:`D` of parameters.
        hidden_features: The width of the flow's two hidden layers.
        num_transforms: The number of spline transforms.

    Example:
        >>> import torch
        >>> from sbi_alfi.alfi.readout import ReadoutFlow
        >>> flow = ReadoutFlow(theta_dim=2)
        >>> psi = torch.zeros(5, 4)  # five standard Gaussians
        >>> flow(psi).sample((10,)).shape
        torch.Size([10, 5, 2])
        >>> flow(psi).log_prob(torch.zeros(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self, theta_dim: int, hidden_features: int = 64, num_transforms: int = 3
    ):
        super().__init__()
        self.theta_dim = theta_dim
        self.flow = zuko.flows.NSF(
            theta_dim,
            2 * theta_dim,
            transforms=num_transforms,
            hidden_features=[hidden_features, hidden_features],
        )

    def forward(self, psi: Tensor) -> Distribution:
        r"""The distributions :math:`q(z \mid \psi)` for `psi` of shape `(*, 2D)`."""
        mu, log_sigma = psi.chunk(2, dim=-1)
        return TransformedDistribution(
            self.flow(psi), [AffineTransform(mu, log_sigma.exp(), event_dim=1)]
        )

    def fit(
        self,
        psi: Tensor,
        z: Tensor,
        num_steps: int = 1_000,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        show_progress_bars: bool = False,
    ) -> float:
        r"""Fits the flow by the NLL of :math:`z` under :math:`q(z \mid \psi)`,
        with Adam annealed by a cosine over `num_steps` steps of random batches.

        Arguments:
            psi: The final proposals of the tasks, `(N, 2D)`.
            z: Their standardized true parameters :math:`t(\theta^*)`, `(N, D)`.
            num_steps: The number of optimizer steps.
            batch_size: The tasks per step.
            learning_rate: Adam's initial learning rate.
            show_progress_bars: Whether to show a progress bar.

        Returns:
            The mean NLL of :math:`u^*` over the last 10 % of the steps.
        """
        if psi.shape[:-1] != z.shape[:-1] or psi.shape[-1] != 2 * z.shape[-1]:
            raise ValueError(
                f"`psi` must be (N, 2D) and `z` (N, D), got {tuple(psi.shape)} "
                f"and {tuple(z.shape)}."
            )
        psi = psi.detach()
        mu, log_sigma = psi.chunk(2, dim=-1)
        u = ((z - mu) / log_sigma.exp()).detach()
        optimizer = torch.optim.Adam(self.flow.parameters(), lr=learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, num_steps)
        losses = []
        self.train()
        steps = tqdm(
            range(num_steps),
            desc="Fitting the read-out",
            disable=not show_progress_bars,
        )
        for _ in steps:
            batch = torch.randint(len(u), (min(batch_size, len(u)),), device=u.device)
            loss = -self.flow(psi[batch]).log_prob(u[batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        self.eval()
        tail = losses[-max(1, num_steps // 10) :]
        return sum(tail) / len(tail)
