r"""ALFI's path through the parameter plane."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Ellipse
from torch import Tensor

from ..simulators import Simulator

__all__ = ["plot_trajectory"]


def plot_trajectory(
    trajectory,
    simulator: Simulator | None = None,
    x_o: Tensor | None = None,
    theta_true: Tensor | None = None,
    dims: tuple[int, int] = (0, 1),
    resolution: int = 150,
    ax: Axes | None = None,
) -> Axes:
    r"""Draws the proposals :math:`\psi_0 \dots \psi_T` of one ALFI inference over a
    2-D parameter plane: their means joined in order and one-standard-deviation
    ellipses, over the exact log-likelihood of `x_o` where the simulator has one.

    Arguments:
        trajectory: An :class:`~sbi_alfi.alfi.Trajectory`, from
            `posterior.trajectory(x=x_o)`.
        simulator: Its prior's box sets the plane; its exact likelihood, with
            `x_o`, the contours.
        x_o: The observed data set, of shape `(n, *x_shape)`.
        theta_true: The parameter that generated `x_o`, marked by a star.
        dims: The two parameters to draw.
        resolution: Grid points per axis of the likelihood contours.
        ax: The axes to draw into; a new figure when `None`.

    Returns:
        The axes.
    """
    mean, std = trajectory.mean.detach().cpu(), trajectory.std.detach().cpu()
    if mean.shape[-1] <= max(dims):
        raise ValueError(
            f"`dims` {dims} do not fit parameters of size {mean.shape[-1]}."
        )
    i, j = dims
    ax = plt.figure().gca() if ax is None else ax
    if simulator is not None:
        low = simulator.prior.base_dist.low.cpu()
        high = simulator.prior.base_dist.high.cpu()
        ax.set_xlim(low[i], high[i])
        ax.set_ylim(low[j], high[j])
        ax.set_xlabel(simulator.labels[i])
        ax.set_ylabel(simulator.labels[j])
        if x_o is not None and simulator.theta_dim == 2:
            _likelihood_contours(simulator, x_o, low, high, resolution, ax)
    colors = plt.get_cmap("viridis")(torch.linspace(0, 1, len(mean)).numpy())
    ax.plot(mean[:, i], mean[:, j], color="white", linewidth=2.5, zorder=2)
    ax.plot(mean[:, i], mean[:, j], color="black", linewidth=1, zorder=3)
    for t, color in enumerate(colors):
        ax.add_patch(
            Ellipse(
                (mean[t, i], mean[t, j]),
                2 * std[t, i],
                2 * std[t, j],
                facecolor="none",
                edgecolor=color,
                linewidth=1.2,
                zorder=3,
            )
        )
    ax.scatter(mean[:, i], mean[:, j], c=colors, s=25, zorder=4, label=r"$\psi_t$")
    ax.annotate(
        r"$\psi_0$", (mean[0, i], mean[0, j]), textcoords="offset points", xytext=(5, 5)
    )
    if theta_true is not None:
        theta_true = theta_true.cpu()
        ax.scatter(
            theta_true[i],
            theta_true[j],
            marker="*",
            s=200,
            color="red",
            edgecolor="white",
            zorder=5,
            label=r"$\theta^*$",
        )
    ax.legend(loc="best", fontsize="small")
    return ax


def _likelihood_contours(simulator, x_o, low, high, resolution, ax) -> None:
    axes = [torch.linspace(low[k], high[k], resolution) for k in range(2)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="xy"), -1)
    try:
        log_l = simulator.log_likelihood(grid[..., None, :], x_o.cpu()).sum(-1)
    except NotImplementedError:
        return
    shifted = (log_l - log_l.max()).clamp(min=-30)
    contours = ax.contourf(*axes, shifted, levels=15, cmap="Greys_r", alpha=0.8)
    ax.figure.colorbar(contours, ax=ax, label="log-likelihood of $x_o$ (max = 0)")
