r"""The shape shared by every simulator of the package."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sbi.utils import BoxUniform
from sbi.utils.sbiutils import within_support
from torch import Tensor

__all__ = ["LocationScale", "Simulator"]


class Simulator:
    r"""Base class of a stochastic simulator :math:`x \sim p(x \mid \theta)` with a
    box prior :math:`p(\theta)`.

    A subclass states `names` and `labels` (plain and LaTeX, one per parameter)
    and `x_shape` (one observation), and implements :meth:`_simulate`; where the
    model is tractable it also implements :meth:`_log_likelihood` and :meth:`_mle`
    (a closed-form MLE). The public methods check their input before any work is
    done and raise a :class:`ValueError` that names the problem.

    Everything is batched: `theta` of shape `(*, D)` gives `x` of shape
    `(*, *x_shape)`, one independent observation per row, and the randomness comes
    from the global torch seed or from an explicit `torch.Generator`.

    Arguments:
        low: The lower bounds of the uniform prior, of shape `(D,)`.
        high: The upper bounds of the uniform prior, of shape `(D,)`.
        device: The device of the prior and of the simulations, as in `sbi`.
    """

    names: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    x_shape: torch.Size = torch.Size((1,))

    def __init__(
        self,
        low: Sequence[float] | Tensor,
        high: Sequence[float] | Tensor,
        device: str | torch.device = "cpu",
    ):
        low = torch.as_tensor(low, dtype=torch.float32)
        high = torch.as_tensor(high, dtype=torch.float32)
        if low.shape != (len(self.names),) or high.shape != low.shape:
            raise ValueError(
                f"`low` and `high` must both have shape ({len(self.names)},), "
                f"got {tuple(low.shape)} and {tuple(high.shape)}."
            )
        if not (low < high).all():
            raise ValueError(f"`low` must lie below `high`, got {low} and {high}.")
        self.device = torch.device(device)
        self.prior = BoxUniform(low, high, device=str(self.device))

    @property
    def theta_dim(self) -> int:
        r"""The number :math:`D` of parameters."""
        return len(self.names)

    def __call__(
        self, theta: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Simulates one observation per row of `theta`.

        Arguments:
            theta: The parameters, of shape `(*, D)`, inside the prior's support.
            generator: A random number generator on `theta`'s device; the global
                torch seed when `None`.

        Returns:
            The observations, of shape `(*, *x_shape)`.
        """
        theta = self.check_theta(theta, support=True)
        return self._simulate(theta, generator)

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        r"""Draws `x` for checked `theta` of shape `(*, D)`."""
        raise NotImplementedError

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""The exact :math:`\log p(x \mid \theta)`, broadcast over batch dimensions.

        The density is zero (the result :math:`-\infty`) where `x` lies outside the
        model's support. For a data set of `n` points at `B` parameters, sum over
        the data axis: `sim.log_likelihood(theta[:, None], x).sum(-1)` with `theta`
        of shape `(B, D)` and `x` of shape `(n, *x_shape)`.

        Arguments:
            theta: The parameters, of shape `(*, D)`.
            x: The observations, of shape `(*, *x_shape)`.

        Returns:
            The log-likelihoods, of the broadcast batch shape `(*)`.
        """
        theta = self.check_theta(theta, support=False)
        x = self.check_x(x)
        return self._log_likelihood(theta, x)

    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""The exact log-likelihood for checked `theta` and `x`."""
        raise NotImplementedError(f"{type(self).__name__} has no tractable likelihood.")

    def mle(self, x: Tensor) -> Tensor:
        r"""The maximum-likelihood estimate of :math:`\theta` from i.i.d. data.

        Arguments:
            x: One or more data sets, of shape `(*, n, *x_shape)` with `n >= 1`.

        Returns:
            The estimates, of shape `(*, D)`.
        """
        x = self.check_x(x)
        if x.dim() < len(self.x_shape) + 1:
            raise ValueError(
                f"`x` must be a data set of shape (*, n, {_shape(self.x_shape)}), "
                f"got {tuple(x.shape)}."
            )
        if x.shape[-len(self.x_shape) - 1] == 0:
            raise ValueError("`x` must hold at least one observation per data set.")
        return self._mle(x)

    def _mle(self, x: Tensor) -> Tensor:
        r"""The closed-form MLE for checked data sets `x`, `(*, n, *x_shape)`."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form MLE.")

    def check_theta(self, theta: Tensor, support: bool = True) -> Tensor:
        r"""Returns `theta` as a float tensor of shape `(*, D)`, or raises a
        :class:`ValueError` naming what is wrong with it."""
        theta = torch.as_tensor(theta)
        if not theta.is_floating_point():
            theta = theta.to(torch.float32)
        d = self.theta_dim
        if theta.dim() == 0 or theta.shape[-1] != d:
            raise ValueError(
                f"`theta` must have shape (*, {d}), one row of "
                f"({', '.join(self.names)}) per simulation, got {tuple(theta.shape)}."
            )
        rows = theta.reshape(-1, d)
        _raise_on_rows(~torch.isfinite(rows).all(-1), rows, "`theta` has NaN or inf")
        if support:
            low, high = self.prior.base_dist.low, self.prior.base_dist.high
            _raise_on_rows(
                ~within_support(self.prior, rows.to(low)).to(rows.device),
                rows,
                f"`theta` lies outside the prior's support [{_fmt(low)}, {_fmt(high)}]",
            )
        return theta

    def check_x(self, x: Tensor) -> Tensor:
        r"""Returns `x` as a float tensor of shape `(*, *x_shape)`, or raises a
        :class:`ValueError` naming what is wrong with it."""
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.float32)
        k = len(self.x_shape)
        if x.dim() < k or x.shape[x.dim() - k :] != self.x_shape:
            raise ValueError(
                f"`x` must have shape (*, {_shape(self.x_shape)}), "
                f"got {tuple(x.shape)}."
            )
        rows = x.reshape(-1, self.x_shape.numel())
        _raise_on_rows(~torch.isfinite(rows).all(-1), rows, "`x` has NaN or inf")
        return x

    def __repr__(self) -> str:
        low, high = self.prior.base_dist.low, self.prior.base_dist.high
        return (
            f"{type(self).__name__}(low={_fmt(low)}, high={_fmt(high)}, "
            f"device={str(self.device)!r})"
        )


def _raise_on_rows(bad: Tensor, rows: Tensor, what: str) -> None:
    if bad.any():
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{what} in {int(bad.sum())} of {len(rows)} rows; "
            f"the first is row {index}: {_fmt(rows[index])}."
        )


def _fmt(values: Tensor) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values.tolist()) + "]"


def _shape(shape: torch.Size) -> str:
    return ", ".join(map(str, shape))


class LocationScale(Simulator):
    r"""A simulator of i.i.d. draws from a location-scale family, with a box
    prior on :math:`(\text{location}, \text{scale})`, by default
    :math:`[-5, 5] \times [0.5, 3]`; the scale's lower bound must be positive.

    Arguments:
        low: The lower bounds of the uniform prior on (location, scale).
        high: The upper bounds of the uniform prior on (location, scale).
        device: The device of the prior and of the simulations.
    """

    x_shape = torch.Size((1,))

    def __init__(
        self,
        low: tuple[float, float] = (-5.0, 0.5),
        high: tuple[float, float] = (5.0, 3.0),
        device: str | torch.device = "cpu",
    ):
        super().__init__(low, high, device=device)
        if self.prior.base_dist.low[1] <= 0:
            raise ValueError(
                f"The prior on {self.names[1]} must be positive, got low={low}."
            )
