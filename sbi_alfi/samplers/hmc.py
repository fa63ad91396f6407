r"""Hamiltonian Monte Carlo with all chains as one batch."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .accept import metropolis_accept
from .adaptation import (
    TrajectoryLengthAdaptation,
    WindowedAdaptation,
    chees_gradient,
)
from .base import VectorizedKernel
from .integrator import leapfrog
from .metric import EuclideanMetric
from .state import ChainState, LogDensity, init_state

__all__ = ["HMCInfo", "VectorizedHMC", "hmc_step"]

# An energy error above this marks a divergent trajectory (Pyro's and Stan's value).
MAX_ENERGY_ERROR = 1000.0


class HMCInfo(NamedTuple):
    r"""What one transition tells the adaptation, per chain."""

    accept_prob: Tensor  #: `(C,)`
    divergent: Tensor  #: `(C,)`, energy error above 1000 or not finite
    proposal: Tensor  #: the trajectory's end, `(C, D)`
    velocity: Tensor  #: :math:`M^{-1} r` at the end, `(C, D)`
    energy: Tensor  #: the Hamiltonian where each chain ends up, `(C,)`


def hmc_step(
    state: ChainState,
    log_density: LogDensity,
    step_size: Tensor,
    num_steps: Tensor,
    inverse_mass: Tensor,
) -> tuple[ChainState, HMCInfo]:
    r"""One HMC transition of every chain, built as blackjax builds its kernels
    from three parts: fresh momenta :math:`r \sim \mathcal{N}(0, M)` from the
    metric (:class:`~sbi_alfi.samplers.metric.EuclideanMetric`), `num_steps[c]`
    leapfrog steps of size `step_size[c]`
    (:func:`~sbi_alfi.samplers.integrator.leapfrog`), and a per-chain
    Metropolis accept (:func:`~sbi_alfi.samplers.accept.metropolis_accept`) on
    the energy :math:`H = -\log p(\theta) + \frac12 r^\top M^{-1} r`.

    Arguments:
        state: The chains' state, with gradients.
        log_density: Maps positions `(C, D)` to log-densities `(C,)`.
        step_size: The leapfrog step sizes, `(C,)`.
        num_steps: The numbers of leapfrog steps, `(C,)`.
        inverse_mass: :math:`M^{-1}` per chain, diagonal `(C, D)` or dense
            `(C, D, D)`.

    Returns:
        The new state and the transition's :class:`HMCInfo` (divergent
        trajectories are rejected).
    """
    metric = EuclideanMetric(inverse_mass)
    momentum = metric.momentum(state.position)
    end, end_momentum = leapfrog(
        state, momentum, log_density, metric, step_size, num_steps
    )
    energy_old = -state.log_density + metric.kinetic_energy(momentum)
    energy_new = -end.log_density + metric.kinetic_energy(end_momentum)
    delta = energy_new - energy_old
    divergent = ~torch.isfinite(delta) | (delta > MAX_ENERGY_ERROR)
    new, accept_prob = metropolis_accept(
        state, end, torch.where(divergent, -torch.inf, -delta)
    )
    velocity = metric.velocity(end_momentum)
    moved = (new.position != state.position).any(-1)
    energy = torch.where(moved, energy_new, energy_old)
    return new, HMCInfo(accept_prob, divergent, end.position, velocity, energy)


class VectorizedHMC(VectorizedKernel):
    r"""Hamiltonian Monte Carlo for `C` chains stepped together, as a Pyro
    :class:`~pyro.infer.mcmc.mcmc_kernel.MCMCKernel`, with ChEES adaptation of the
    trajectory length.

    The potential :math:`U(\theta) = -\log p(\theta)` and its gradient come from
    one batched call for all chains. The chains form `num_groups` equal blocks,
    each with its own target; within a block, the warmup pools its chains to tune

    - the step size :math:`\epsilon`, by dual averaging of the block's mean
      acceptance probability towards `target_accept`;
    - the inverse mass matrix :math:`M^{-1}` (diagonal or dense), in Stan's
      windows, to the block's pooled covariance;
    - the trajectory length :math:`T`, by Adam ascent on the ChEES criterion
      :math:`\frac14 \mathbb{E}[(\|\theta' - \mathbb{E}\theta\|^2 -
      \|\theta - \mathbb{E}\theta\|^2)^2]`, the change in squared distance
      from the mean that a transition makes (Hoffman et al., 2021).

    Each transition runs :math:`\lceil u T / \epsilon \rceil` leapfrog steps with
    :math:`u \in (0, 1]` from a scrambled Sobol sequence, shared by the chains;
    the jitter avoids the periodicities of a fixed length.

    References:
        | MCMC using Hamiltonian dynamics (Neal, 2011)
        | https://arxiv.org/abs/1206.1901

        | An Adaptive-MCMC Scheme for Setting Trajectory Lengths in Hamiltonian
        | Monte Carlo (Hoffman et al., 2021) https://proceedings.mlr.press/v130/hoffman21a

    Arguments:
        log_density: Maps positions `(C, D)` to log-densities `(C,)`, differentiable.
        initial_position: The chains' starting points, `(C, D)`.
        step_size: The initial leapfrog step size.
        num_steps: The initial trajectory length, in steps of `step_size`.
        target_accept: The acceptance probability the warmup aims for.
        mass_matrix: `"diag"` or `"dense"` adaptation of :math:`M^{-1}`, or
            `"identity"`.
        adapt_step_size: Whether the warmup tunes the step sizes.
        adapt_trajectory_length: Whether the warmup tunes the trajectory length.
        max_num_steps: The most leapfrog steps in one transition.
        num_groups: The number of blocks of chains with separate targets.

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
        adapt_step_size: bool = True,
        adapt_trajectory_length: bool = True,
        max_num_steps: int = 100,
        num_groups: int = 1,
    ):
        super().__init__(log_density, initial_position, num_groups)
        if mass_matrix not in ("diag", "dense", "identity"):
            raise ValueError(
                "`mass_matrix` must be 'diag', 'dense' or 'identity', got "
                f"{mass_matrix!r}."
            )
        if step_size <= 0 or not 1 <= num_steps <= max_num_steps:
            raise ValueError(
                "Need `step_size` > 0 and 1 <= `num_steps` <= `max_num_steps`, got "
                f"{step_size}, {num_steps} and {max_num_steps}."
            )
        if not 0 < target_accept < 1:
            raise ValueError(f"`target_accept` must be in (0, 1), got {target_accept}.")
        self.initial_step_size = step_size
        self.num_steps = num_steps
        self.target_accept = target_accept
        self.mass_matrix = mass_matrix
        self.adapt_step_size = adapt_step_size
        self.adapt_trajectory_length = adapt_trajectory_length
        self.max_num_steps = max_num_steps

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        position = self._initial_position
        num_chains, dim = position.shape
        groups = self.num_groups
        self.state = init_state(self.log_density, position, grad=True)
        self._start(warmup_steps)
        inverse_mass = position.new_ones(groups, dim)
        if self.mass_matrix == "dense":
            inverse_mass = torch.diag_embed(inverse_mass)
        self.inverse_mass = inverse_mass  # (G, D) or (G, D, D)
        self.step_size = position.new_full((groups,), self.initial_step_size)
        self.adaptation = WindowedAdaptation(
            self.step_size,
            self.target_accept,
            warmup_steps,
            # Within chains: on a multimodal target the spread between the
            # modes would shrink the step size.
            covariance=None if self.mass_matrix == "identity" else "within",
            adapt_step_size=self.adapt_step_size,
        )
        self.trajectory_length = self.step_size * self.num_steps
        self.length_adaptation = TrajectoryLengthAdaptation(self.trajectory_length)
        # The jitter comes from torch's generator, so a seeded run repeats.
        seed = int(torch.randint(2**31, ()))
        self._sobol = torch.quasirandom.SobolEngine(1, scramble=True, seed=seed)
        self._divergences = torch.zeros(
            num_chains, dtype=torch.long, device=position.device
        )
        self._leapfrog_steps = 0

    def sample(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        u = 1 - self._sobol.draw(1).item()  # in (0, 1]
        length = u * self.trajectory_length
        num_steps = (length / self.step_size).ceil().clamp(1, self.max_num_steps)
        previous = self.state
        steps = self._per_chain(num_steps.long())
        self.state, info = hmc_step(
            previous,
            self.log_density,
            self._per_chain(self.step_size),
            steps,
            self._per_chain(self.inverse_mass),
        )
        if self._count(
            info.accept_prob,
            diverging=info.divergent,
            energy=info.energy,
            n_steps=steps,
        ):
            self._adapt(previous, info, self._per_chain(num_steps * self.step_size))
        else:
            self._divergences += info.divergent
            self._leapfrog_steps += int(num_steps.max())
        return {"theta": self.state.position}

    def _adapt(self, previous: ChainState, info: HMCInfo, length: Tensor) -> None:
        if self.adapt_trajectory_length:
            gradient = chees_gradient(
                previous.position,
                info.proposal,
                info.velocity,
                info.accept_prob,
                length,
                self.num_groups,
                self.adaptation.center,  # each chain's mean in the last window
            )
            self.trajectory_length = self.length_adaptation.update(gradient)
        covariance = self.adaptation.update(self.state.position, info.accept_prob)
        self.step_size = self.adaptation.step_size
        if covariance is not None:
            self.inverse_mass = (
                covariance
                if self.mass_matrix == "dense"
                else covariance.diagonal(0, -2, -1)
            )
            self.length_adaptation.restart()
        if self.adaptation.t == self._warmup_steps and self.adapt_trajectory_length:
            self.trajectory_length = self.length_adaptation.final()

    def logging(self) -> dict[str, float]:
        return {
            "step size": round(self.step_size.mean().item(), 4),
            "length": round(self.trajectory_length.mean().item(), 3),
            "acc. prob": round(self._last_accept_prob.mean().item(), 3),
        }

    def diagnostics(self) -> dict[str, Tensor]:
        r"""Per chain, after warmup: the mean acceptance probability, the number of
        divergent transitions, the step size and the trajectory length; and the
        mean number of leapfrog steps per transition."""
        return {
            "acceptance_rate": self.acceptance_rate(),
            "divergences": self._divergences,
            "step_size": self._per_chain(self.step_size),
            "trajectory_length": self._per_chain(self.trajectory_length),
            "num_steps": torch.tensor(self._leapfrog_steps / max(self._num_sampled, 1)),
        }
