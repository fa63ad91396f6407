r"""The run of ALFI's machine on data sets: one rollout for training and inference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from sbi.sbi_types import TorchTransform
from torch import Tensor
from torch.distributions import Distribution

from ..simulation import Engine, simulate_batch
from .network import RecurrentMachine, unroll

__all__ = ["Z_MAX", "rollout", "simulate_standardized"]

# Standardized parameters are clamped here before they go back to the parameter
# space: beyond, the sigmoid of a bounded prior saturates in float32.
Z_MAX = 15.0


def simulate_standardized(
    simulator: Callable[[Tensor], Tensor],
    theta_transform: TorchTransform,
    z: Tensor,
    device: torch.device,
    engine: Engine | Any | None = None,
    simulation_batch_size: int = 100,
) -> Tensor:
    r"""Simulates at standardized parameters `z` of shape `(N, D)`: every parameter
    handed to the simulator lies in the prior's support by construction. One
    fan-out over `engine` (:func:`simulate_batch`) per call."""
    theta = theta_transform.inv(z.clamp(-Z_MAX, Z_MAX))
    x = simulate_batch(simulator, theta, engine, simulation_batch_size)
    return x.to(device=device, dtype=torch.float32)


def rollout(
    machine: RecurrentMachine,
    x: Tensor,
    prior: Distribution,
    theta_transform: TorchTransform,
    simulate: Callable[[Tensor], Tensor],
    initial_scale: float,
    num_steps: int,
    num_proposal_samples: int,
    num_simulations_per_sample: int,
) -> Tensor:
    r"""The proposals :math:`\psi_0 \dots \psi_T` of the machine for data sets `x`
    of shape `(B, n, *x_shape)`, of shape `(T + 1, B, 2D)`
    (:func:`~sbi_alfi.alfi.network.unroll`), from :math:`\mu_0` drawn from the
    prior (unused by a learned first proposal); `simulate` maps standardized
    parameters to data (:func:`simulate_standardized`). Meta-training and the
    posterior both run it, so the machine is trained on the run it is used in."""
    mu_0 = theta_transform(prior.sample((len(x),)).to(x.device))
    return unroll(
        machine,
        x,
        simulate,
        mu_0.clamp(-Z_MAX, Z_MAX),
        initial_scale,
        num_steps,
        num_proposal_samples,
        num_simulations_per_sample,
    )
