r"""Data-space figures: simulated data against the exact model and observations."""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from torch import Tensor

from ..simulators import Simulator

__all__ = ["plot_data_fit", "plot_identified_quantity"]


def plot_data_fit(
    simulator: Simulator,
    theta: Tensor,
    x_o: Tensor | None = None,
    num_samples: int = 10_000,
    ax: Axes | None = None,
    label: str | None = None,
    discrete: bool | None = None,
) -> Axes:
    r"""Histogram of data simulated at `theta`, with the exact density over it where
    the simulator has one, and the observed data `x_o` beside it.

    Arguments:
        simulator: A simulator with one-dimensional observations.
        theta: One parameter, of shape `(D,)`.
        x_o: Observed data, of shape `(n, 1)`, drawn as a second histogram.
        num_samples: The number of simulations at `theta`.
        ax: The axes to draw into; a new figure when `None`.
        label: The legend entry of the simulated data.
        discrete: Whether `x` is integer-valued (bars on integers); guessed from the
            simulated data when `None`.

    Returns:
        The axes.
    """
    if simulator.x_shape != (1,):
        raise ValueError(
            f"`plot_data_fit` draws one-dimensional data, got x_shape "
            f"{tuple(simulator.x_shape)}."
        )
    theta = simulator.check_theta(theta)
    if theta.shape != (simulator.theta_dim,):
        raise ValueError(
            f"`theta` must be one parameter of shape ({simulator.theta_dim},), "
            f"got {tuple(theta.shape)}."
        )
    ax = plt.figure().gca() if ax is None else ax
    x = simulator(theta.expand(num_samples, -1))[:, 0].cpu()
    if discrete is None:
        discrete = bool(torch.all(x == x.round()))
    if label is None:
        label = "simulated at " + format_theta(simulator, theta)

    if discrete:
        low, high = int(x.min()), int(x.max())
        bins = torch.arange(low, high + 2) - 0.5
        grid = torch.arange(low, high + 1, dtype=torch.float32)
    else:
        bins = torch.linspace(float(x.min()), float(x.max()), 51)
        grid = torch.linspace(float(x.min()), float(x.max()), 401)
    ax.hist(x, bins=bins.tolist(), density=True, alpha=0.45, label=label)
    if x_o is not None:
        ax.hist(
            torch.as_tensor(x_o)[:, 0].cpu(),
            bins=bins.tolist(),
            density=True,
            histtype="step",
            color="black",
            linewidth=1.5,
            label=f"observed (n = {len(x_o)})",
        )
    try:
        density = simulator.log_likelihood(theta.cpu(), grid[:, None]).exp()
    except NotImplementedError:
        pass
    else:
        style = {"marker": ".", "linestyle": "none"} if discrete else {}
        label = "exact pmf" if discrete else "exact density"
        ax.plot(grid, density, color="C3", label=label, **style)
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    return ax


def plot_identified_quantity(
    simulator: Simulator,
    quantity: Callable[[Tensor], Tensor],
    resolution: int = 200,
    ax: Axes | None = None,
    label: str = "",
) -> Axes:
    r"""Filled contours of a function of a 2-D parameter over the prior's box, e.g.
    Weinberg's asymmetry :math:`A(E_b, G_F)`, the only quantity the data identify.

    Arguments:
        simulator: A simulator with two parameters.
        quantity: Maps parameters of shape `(*, 2)` to values of shape `(*)`.
        resolution: Grid points per axis.
        ax: The axes to draw into; a new figure when `None`.
        label: The colour bar's label.

    Returns:
        The axes.
    """
    if simulator.theta_dim != 2:
        raise ValueError(
            f"The simulator must have 2 parameters, not {simulator.theta_dim}."
        )
    ax = plt.figure().gca() if ax is None else ax
    low, high = (
        simulator.prior.base_dist.low.cpu(),
        simulator.prior.base_dist.high.cpu(),
    )
    axes = [torch.linspace(low[i], high[i], resolution) for i in range(2)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="xy"), -1)
    contours = ax.contourf(*axes, quantity(grid), levels=20, cmap="coolwarm")
    ax.figure.colorbar(contours, ax=ax, label=label)
    ax.set_xlabel(simulator.labels[0])
    ax.set_ylabel(simulator.labels[1])
    return ax


def format_theta(simulator: Simulator, theta: Tensor) -> str:
    r"""`theta` of shape `(D,)` as `name = value, ...`."""
    return ", ".join(
        f"{name} = {value:.3g}"
        for name, value in zip(simulator.names, theta.tolist(), strict=True)
    )
