r"""The state of a batch of Markov chains, kept apart from the kernels' steps (as in
blackjax): a step is a function of a state, and a kernel only adds adaptation."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ChainState", "LogDensity", "init_state"]

#: Maps positions of shape `(C, D)` to log-densities of shape `(C,)`.
LogDensity = Callable[[Tensor], Tensor]


class ChainState(NamedTuple):
    r"""Where `C` chains are: positions, their log-densities and, for gradient-based
    kernels, the gradients of the log-densities."""

    position: Tensor  #: `(C, D)`
    log_density: Tensor  #: `(C,)`
    grad: Tensor | None = None  #: `(C, D)`


def init_state(
    log_density: LogDensity, position: Tensor, grad: bool = False
) -> ChainState:
    r"""The state at `position` (shape `(C, D)`), with gradients when `grad`."""
    position = position.detach()
    if not grad:
        with torch.no_grad():
            return ChainState(position, checked(log_density, position))
    value, gradient = value_and_grad(log_density, position)
    return ChainState(position, value, gradient)


def value_and_grad(log_density: LogDensity, position: Tensor) -> tuple[Tensor, Tensor]:
    r"""Log-densities `(C,)` and their gradients `(C, D)` in one backward pass: the
    chains are independent, so the gradient of the sum is each chain's gradient."""
    with torch.enable_grad():
        position = position.detach().requires_grad_(True)
        value = checked(log_density, position)
        (gradient,) = torch.autograd.grad(value.sum(), position)
    return value.detach(), gradient.detach()


def checked(log_density: LogDensity, position: Tensor) -> Tensor:
    r"""Evaluates `log_density`, raising a :class:`ValueError` on NaN or
    :math:`+\infty`: in the unconstrained space every point is inside the support,
    so these are a broken potential, never a rejection. (:math:`-\infty`, zero
    density, is a legitimate rejection.)"""
    value = log_density(position)
    if value.shape != position.shape[:1]:
        raise ValueError(
            f"The log-density must map positions of shape {tuple(position.shape)} to "
            f"shape ({len(position)},), got {tuple(value.shape)}."
        )
    bad = torch.isnan(value) | torch.isposinf(value)
    if bad.any():
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"The potential returned {value[index].item()} at {int(bad.sum())} of "
            f"{len(value)} chains, e.g. at {position[index].tolist()} (unconstrained "
            "space); it must be finite or -inf."
        )
    return value
