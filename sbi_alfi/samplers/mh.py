r"""Metropolis–Hastings with all chains as one batch."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from .accept import metropolis_accept
from .adaptation import WindowedAdaptation, initial_scale
from .base import VectorizedKernel
from .state import ChainState, LogDensity, checked, init_state

__all__ = ["VectorizedMH", "independence_step", "random_walk_step"]


# Metropolis-Hastings needs no gradients: without no_grad, a network's log-density
# carried its autograd graph into the state, each step's graph holding the last's,
# and 40 observations' chains grew to 9 GB.
@torch.no_grad()
def random_walk_step(
    state: ChainState, log_density: LogDensity, scale: Tensor, scale_tril: Tensor
) -> tuple[ChainState, Tensor]:
    r"""One Gaussian random-walk Metropolis step of every chain,
    :math:`\theta' = \theta + s_c L_c \epsilon`, with per-chain scales `scale`
    (`(C,)`) and Cholesky factors `scale_tril` (`(C, D, D)`).

    Returns:
        The new state and the acceptance probabilities, `(C,)`.
    """
    eps = torch.randn_like(state.position)
    position = state.position + scale[:, None] * (scale_tril @ eps[..., None])[..., 0]
    proposal = ChainState(position, checked(log_density, position))
    return metropolis_accept(state, proposal, proposal.log_density - state.log_density)


@torch.no_grad()
def independence_step(
    state: ChainState, log_density: LogDensity, proposal: Distribution
) -> tuple[ChainState, Tensor]:
    r"""One independence Metropolis–Hastings step: :math:`\theta' \sim q` for every
    chain, accepted with probability :math:`\min(1, \frac{p(\theta') q(\theta)}
    {p(\theta) q(\theta')})`."""
    position = proposal.sample((len(state.position),))
    log_q = proposal.log_prob(position) - proposal.log_prob(state.position)
    new = ChainState(position, checked(log_density, position))
    return metropolis_accept(state, new, new.log_density - state.log_density - log_q)


class VectorizedMH(VectorizedKernel):
    r"""Metropolis–Hastings for `C` chains stepped together, as a Pyro
    :class:`~pyro.infer.mcmc.mcmc_kernel.MCMCKernel`.

    With the default random-walk proposal :math:`\theta' = \theta + s L
    \epsilon`, the warmup tunes the scale :math:`s` by dual averaging of the
    chains' mean acceptance probability towards `target_accept`, and :math:`L` to
    the Cholesky factor of the covariance pooled over the chains, in Stan's
    windows. With `num_groups` blocks of chains (one target each), each block is
    tuned on its own. With a `proposal` distribution :math:`q`
    (e.g. an ALFI posterior's Gaussian, in the same space), the kernel is an
    independence sampler and nothing is tuned.

    This is the sampler of the AALR paper, whose chains ran one at a time; here
    one batched log-density call serves every chain at each step.

    References:
        | Likelihood-free MCMC with Amortized Approximate Ratio Estimators
        | (Hermans et al., 2020) https://arxiv.org/abs/1903.04057

    Arguments:
        log_density: Maps positions `(C, D)` to log-densities `(C,)`.
        initial_position: The chains' starting points, `(C, D)`.
        proposal: An independence proposal; the adaptive random walk when `None`.
        target_accept: The acceptance probability the warmup aims for.
        num_groups: The number of blocks of chains with separate targets.

    Example:
        >>> import torch
        >>> from pyro.infer import MCMC
        >>> from sbi_alfi.samplers import VectorizedMH
        >>> def log_density(theta):
        ...     return -0.5 * theta.square().sum(-1)
        >>> kernel = VectorizedMH(log_density, torch.zeros(50, 2))
        >>> mcmc = MCMC(kernel, num_samples=200, warmup_steps=200, disable_progbar=True)
        >>> mcmc.run()
        >>> mcmc.get_samples()["theta"].shape  # (samples, chains, D)
        torch.Size([200, 50, 2])
    """

    def __init__(
        self,
        log_density: LogDensity,
        initial_position: Tensor,
        proposal: Distribution | None = None,
        target_accept: float = 0.234,
        num_groups: int = 1,
    ):
        super().__init__(log_density, initial_position, num_groups)
        self.proposal = proposal
        self.target_accept = target_accept

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        position = self._initial_position
        dim = position.shape[-1]
        self.state = init_state(self.log_density, position)
        self._start(warmup_steps)
        eye = torch.eye(dim, dtype=position.dtype, device=position.device)
        self.scale_tril = eye.expand(self.num_groups, dim, dim)
        self.scale = position.new_full((self.num_groups,), initial_scale(dim))
        self.adaptation = WindowedAdaptation(
            self.scale,
            self.target_accept,
            warmup_steps,
            covariance="pooled",
            adapt_step_size=self.proposal is None,
            # The optimal scale is relative to the covariance: a new covariance
            # restarts it from the optimum for a Gaussian.
            restart_step_size=initial_scale(dim),
        )

    def sample(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.proposal is not None:
            self.state, accept_prob = independence_step(
                self.state, self.log_density, self.proposal
            )
        else:
            self.state, accept_prob = random_walk_step(
                self.state,
                self.log_density,
                self._per_chain(self.scale),
                self._per_chain(self.scale_tril),
            )
        if self._count(accept_prob) and self.proposal is None:
            covariance = self.adaptation.update(self.state.position, accept_prob)
            self.scale = self.adaptation.step_size
            if covariance is not None:
                self.scale_tril = torch.linalg.cholesky(covariance)
        return {"theta": self.state.position}

    def logging(self) -> dict[str, float]:
        return {
            "acc. prob": round(self._last_accept_prob.mean().item(), 3),
            "scale": round(self.scale.mean().item(), 4),
        }

    def diagnostics(self) -> dict[str, Tensor]:
        r"""Per chain: the mean acceptance probability after warmup and the scale."""
        return {
            "acceptance_rate": self.acceptance_rate(),
            "step_size": self._per_chain(self.scale),
        }
