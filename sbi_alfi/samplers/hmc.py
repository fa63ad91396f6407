r"""Hamiltonian Monte Carlo with all chains as one batch."""

from __future__ import annotations

from typing import Literal

import torch
from pyro.ops.integrator import velocity_verlet
from torch import Tensor

from .adaptation import PooledMoments, StepSizeAdaptation, warmup_windows
from .base import VectorizedKernel
from .state import ChainState, LogDensity, init_state

__all__ = ["VectorizedHMC", "hmc_step"]

# An energy error above this marks a divergent trajectory (Pyro's and Stan's value).
MAX_ENERGY_ERROR = 1000.0


def hmc_step(
    state: ChainState,
    log_density: LogDensity,
    step_size: Tensor,
    num_steps: int,
    inverse_mass: Tensor,
) -> tuple[ChainState, Tensor, Tensor]:
    r"""One HMC transition of every chain: momenta :math:`r \sim \mathcal{N}(0,
    M)`, `num_steps` leapfrog steps of per-chain sizes `step_size` (`(C,)`) by
    Pyro's velocity Verlet integrator, then a per-chain accept/reject on the energy
    :math:`H = -\log p(\theta) + \frac12 r^\top M^{-1} r`.

    Arguments:
        state: The chains' state, with gradients.
        log_density: Maps positions `(C, D)` to log-densities `(C,)`.
        step_size: The leapfrog step sizes, `(C,)`.
        num_steps: The number of leapfrog steps.
        inverse_mass: :math:`M^{-1}`, diagonal `(D,)` or dense `(D, D)`.

    Returns:
        The new state, the acceptance probabilities `(C,)` and the divergent
        trajectories `(C,)` (energy error above 1000 or not finite; rejected).
    """
    dense = inverse_mass.dim() == 2
    eps = torch.randn_like(state.position)
    if dense:  # r = L^{-T} eps with M^{-1} = L L^T has covariance M
        scale_tril = torch.linalg.cholesky(inverse_mass)
        momentum = torch.linalg.solve_triangular(scale_tril.mT, eps.mT, upper=True).mT
    else:
        momentum = eps / inverse_mass.sqrt()

    def kinetic_grad(r: dict[str, Tensor]) -> dict[str, Tensor]:
        v = r["theta"]
        return {"theta": v @ inverse_mass if dense else v * inverse_mass}

    def kinetic(v: Tensor) -> Tensor:
        return 0.5 * (v * kinetic_grad({"theta": v})["theta"]).sum(-1)

    last: dict[str, Tensor] = {}

    def potential(z: dict[str, Tensor]) -> Tensor:
        # The chains are independent: the gradient of the sum is each one's own.
        last["log_density"] = log_density(z["theta"])
        return -last["log_density"].sum()

    z, r, grads, _ = velocity_verlet(
        {"theta": state.position},
        {"theta": momentum},
        potential,
        kinetic_grad,
        step_size[:, None],
        num_steps,
        {"theta": -state.grad},
    )
    new_log_density = last["log_density"].detach()
    energy_old = -state.log_density + kinetic(momentum)
    energy_new = -new_log_density + kinetic(r["theta"])
    delta = energy_new - energy_old
    divergent = ~torch.isfinite(delta) | (delta > MAX_ENERGY_ERROR)
    log_alpha = torch.where(divergent, -torch.inf, -delta)
    accept = torch.rand_like(log_alpha).log() < log_alpha
    new = ChainState(
        torch.where(accept[:, None], z["theta"].detach(), state.position),
        torch.where(accept, new_log_density, state.log_density),
        torch.where(accept[:, None], -grads["theta"].detach(), state.grad),
    )
    return new, log_alpha.clamp(max=0).exp(), divergent


class VectorizedHMC(VectorizedKernel):
    r"""Hamiltonian Monte Carlo for `C` chains stepped together, as a Pyro
    :class:`~pyro.infer.mcmc.mcmc_kernel.MCMCKernel`.

    The potential :math:`U(\theta) = -\log p(\theta)` and its gradient come from
    one batched call for all chains. During warmup each chain's step size is
    tuned by dual averaging towards `target_accept`, and the inverse mass matrix
    :math:`M^{-1}` (diagonal or dense) is set, in Stan's windows, to the
    covariance pooled over all chains. The trajectory length
    :math:`L = \epsilon \times` `num_steps` is jittered by drawing each chain's
    step size uniformly in :math:`[(1 - j) \epsilon, (1 + j) \epsilon]` at every
    transition, which avoids the periodicities of a fixed length.

    References:
        | MCMC using Hamiltonian dynamics (Neal, 2011)
        | https://arxiv.org/abs/1206.1901

    Arguments:
        log_density: Maps positions `(C, D)` to log-densities `(C,)`, differentiable.
        initial_position: The chains' starting points, `(C, D)`.
        step_size: The initial leapfrog step size.
        num_steps: The number of leapfrog steps per transition.
        target_accept: The acceptance probability the warmup aims for.
        mass_matrix: `"diag"` or `"dense"` adaptation of :math:`M^{-1}`, or
            `"identity"`.
        jitter: The relative jitter :math:`j` of the step sizes.
        adapt_step_size: Whether the warmup tunes the step sizes.

    Example:
        >>> import torch
        >>> from pyro.infer import MCMC
        >>> from sbi_alfi.samplers import VectorizedHMC
        >>> def log_density(theta):
        ...     return -0.5 * theta.square().sum(-1)
        >>> kernel = VectorizedHMC(log_density, torch.zeros(50, 2))
        >>> mcmc = MCMC(kernel, num_samples=100, warmup_steps=100, disable_progbar=True)
        >>> mcmc.run()
        >>> mcmc.get_samples()["theta"].shape  # (samples, chains, D)
        torch.Size([100, 50, 2])
    """

    def __init__(
        self,
        log_density: LogDensity,
        initial_position: Tensor,
        step_size: float = 0.1,
        num_steps: int = 10,
        target_accept: float = 0.8,
        mass_matrix: Literal["diag", "dense", "identity"] = "diag",
        jitter: float = 0.2,
        adapt_step_size: bool = True,
    ):
        super().__init__(log_density, initial_position)
        if mass_matrix not in ("diag", "dense", "identity"):
            raise ValueError(
                "`mass_matrix` must be 'diag', 'dense' or 'identity', got "
                f"{mass_matrix!r}."
            )
        if step_size <= 0 or num_steps < 1 or not 0 <= jitter < 1:
            raise ValueError(
                "Need `step_size` > 0, `num_steps` >= 1 and 0 <= `jitter` < 1, got "
                f"{step_size}, {num_steps} and {jitter}."
            )
        self.initial_step_size = step_size
        self.num_steps = num_steps
        self.target_accept = target_accept
        self.mass_matrix = mass_matrix
        self.jitter = jitter
        self.adapt_step_size = adapt_step_size

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        position = self._initial_position
        num_chains, dim = position.shape
        self.state = init_state(self.log_density, position, grad=True)
        self._warmup_steps = warmup_steps
        self._windows = (
            warmup_windows(warmup_steps) if self.mass_matrix != "identity" else []
        )
        self._t = 0
        self.inverse_mass = torch.ones(
            dim, dtype=position.dtype, device=position.device
        )
        if self.mass_matrix == "dense":
            self.inverse_mass = torch.diag(self.inverse_mass)
        step_size = position.new_full((num_chains,), self.initial_step_size)
        self.adaptation = StepSizeAdaptation(step_size, self.target_accept)
        self.step_size = step_size
        self._moments = PooledMoments(dim, position.dtype, position.device)
        self._accepted = position.new_zeros(num_chains)
        self._divergences = torch.zeros(
            num_chains, dtype=torch.long, device=position.device
        )
        self._num_sampled = 0
        self._last_accept_prob = position.new_ones(num_chains)

    def sample(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        jitter = 1 + self.jitter * (2 * torch.rand_like(self.step_size) - 1)
        self.state, accept_prob, divergent = hmc_step(
            self.state,
            self.log_density,
            self.step_size * jitter,
            self.num_steps,
            self.inverse_mass,
        )
        self._last_accept_prob = accept_prob
        if self._t < self._warmup_steps:
            self._adapt(accept_prob)
        else:
            self._accepted += accept_prob
            self._divergences += divergent
            self._num_sampled += 1
        self._t += 1
        return {"theta": self.state.position}

    def _adapt(self, accept_prob: Tensor) -> None:
        if self.adapt_step_size:
            self.step_size = self.adaptation.update(accept_prob)
        t = self._t + 1
        if self._windows:
            self._moments.update(self.state.position)
            if t in self._windows:
                cov = self._moments.covariance()
                self.inverse_mass = (
                    cov if self.mass_matrix == "dense" else cov.diagonal()
                )
                self._moments = PooledMoments(len(cov), cov.dtype, cov.device)
                if self.adapt_step_size:
                    self.adaptation.restart(self.step_size)
        if t == self._warmup_steps and self.adapt_step_size:
            self.step_size = self.adaptation.final()

    def logging(self) -> dict[str, float]:
        return {
            "step size": round(self.step_size.mean().item(), 4),
            "acc. prob": round(self._last_accept_prob.mean().item(), 3),
        }

    def diagnostics(self) -> dict[str, Tensor]:
        r"""Per chain, after warmup: the mean acceptance probability, the number of
        divergent transitions and the step size."""
        return {
            "acceptance_rate": self._accepted / max(self._num_sampled, 1),
            "divergences": self._divergences,
            "step_size": self.step_size,
        }
