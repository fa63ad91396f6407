r"""The leapfrog integrator of Hamiltonian Monte Carlo, with a number of steps
per chain."""

from __future__ import annotations

import torch
from pyro.ops.integrator import velocity_verlet
from torch import Tensor

from .metric import EuclideanMetric
from .state import ChainState, LogDensity, checked

__all__ = ["leapfrog"]


def leapfrog(
    state: ChainState,
    momentum: Tensor,
    log_density: LogDensity,
    metric: EuclideanMetric,
    step_size: Tensor,
    num_steps: Tensor,
) -> tuple[ChainState, Tensor]:
    r"""`num_steps[c]` leapfrog steps of size `step_size[c]` for every chain `c`,
    by Pyro's velocity Verlet integrator, one batched call of `log_density` per
    step.

    Chains with fewer steps than the longest stand still for the rest (their
    step size becomes 0), so every chain is one row of the same calls.

    Arguments:
        state: The chains' state, with gradients.
        momentum: Their momenta, `(C, D)`.
        log_density: Maps positions `(C, D)` to log-densities `(C,)`.
        metric: The kinetic energy.
        step_size: The step sizes, `(C,)`.
        num_steps: The numbers of steps, `(C,)`.

    Returns:
        The state at the trajectory's end (a chain that left the reals has
        log-density :math:`-\infty`) and the momenta there.
    """
    last: dict[str, Tensor] = {}

    def potential(z: dict[str, Tensor]) -> Tensor:
        # A diverging trajectory can leave the reals; its density is zero (the
        # chain is rejected) and the log-density never sees it. At a finite
        # position, NaN is a broken potential, as in every kernel: it raises.
        position = z["theta"]
        finite = torch.isfinite(position).all(-1)
        value = checked(log_density, torch.where(finite[:, None], position, 0.0))
        last["log_density"] = torch.where(finite, value, -torch.inf)
        # The chains are independent: the gradient of the sum is each one's own.
        return -last["log_density"].sum()

    def kinetic_grad(r: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"theta": metric.velocity(r["theta"])}

    z, r, grads = {"theta": state.position}, {"theta": momentum}, {"theta": -state.grad}
    last["log_density"] = state.log_density
    for k in range(int(num_steps.max())):
        moving = torch.where(num_steps > k, step_size, 0.0)
        z, r, grads, _ = velocity_verlet(
            z, r, potential, kinetic_grad, moving[:, None], 1, grads
        )
    end = ChainState(
        z["theta"].detach(), last["log_density"].detach(), -grads["theta"].detach()
    )
    return end, r["theta"].detach()
