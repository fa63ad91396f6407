r"""What the posteriors of both methods share on top of `sbi`'s."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["CheckedPosterior", "theta_dim"]


def theta_dim(prior: Distribution) -> int:
    r"""The number of parameters of a prior over vectors :math:`\theta`."""
    shape = prior.event_shape or prior.sample().shape
    return int(torch.Size(shape).numel())


class CheckedPosterior(NeuralPosterior):
    r"""An `sbi` posterior whose every `x`, passed or set as default, goes through
    the subclass's :meth:`_check_x` (shape and finiteness, with errors that name
    the problem) instead of `sbi`'s `process_x`, and whose every :math:`\theta`
    (of `potential`, `log_prob`, `map`'s initial values) goes through
    :meth:`_check_theta`. A subclass sets `self.prior`."""

    prior: Distribution

    def _check_x(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _check_theta(self, theta: Tensor, name: str = "theta") -> Tensor:
        r"""`theta` as a float tensor of shape `(*, D)` on the device, or a
        :class:`ValueError` that names its shape and the expected dimension `D`
        (or its NaN). Points outside the prior's support are legitimate: their
        density is zero."""
        theta = torch.as_tensor(theta, dtype=torch.float32).to(self._device)
        dim = theta_dim(self.prior)
        if theta.dim() == 0 or theta.shape[-1] != dim:
            raise ValueError(
                f"`{name}` must have shape (*, {dim}), the prior's {dim} "
                f"parameter{'s' if dim > 1 else ''} last, got {tuple(theta.shape)}."
            )
        nan = torch.isnan(theta.reshape(-1, dim)).any(-1)
        if nan.any():
            raise ValueError(
                f"`{name}` has NaN in {int(nan.sum())} of {len(nan)} parameter vectors."
            )
        return theta

    @staticmethod
    def _check_sample_shape(sample_shape: Any) -> torch.Size:
        r"""`sample_shape` (or an int) as a `torch.Size`, or a :class:`ValueError`."""
        shape = (sample_shape,) if isinstance(sample_shape, Integral) else sample_shape
        try:
            valid = all(isinstance(n, Integral) and n >= 0 for n in shape)
        except TypeError:
            valid = False
        if not valid:
            raise ValueError(
                "`sample_shape` must be a shape of non-negative integers, e.g. "
                f"(1000,), got {sample_shape!r}."
            )
        return torch.Size(int(n) for n in shape)

    def _x_else_default_x(self, x: Tensor | None) -> Tensor:
        if x is not None:
            return self._check_x(x)
        if self.default_x is None:
            raise ValueError(
                "Pass `x`, or set a default with `posterior.set_default_x(x_o)`."
            )
        return self.default_x

    def set_default_x(self, x: Tensor) -> CheckedPosterior:
        r"""Sets the `x` used when none is passed; returns the posterior, for
        chaining."""
        self._x = self._check_x(x)
        self._map = None
        return self

    def potential(
        self, theta: Tensor, x: Tensor | None = None, track_gradients: bool = False
    ) -> Tensor:
        r"""The unnormalized log-density of :math:`\theta` under the posterior of
        `x` (the default x when `None`), as `sbi`'s `potential`.

        Arguments:
            theta: Parameters of shape `(*, D)`.
            x: The observation(s); the default x when `None`.
            track_gradients: Whether the result tracks gradients.

        Returns:
            The potentials, of shape `(*)`.
        """
        theta = self._check_theta(theta)
        batch_shape = theta.shape[:-1]
        if theta.numel() == 0:
            self._x_else_default_x(x)  # the x checks still apply
            return theta.new_zeros(batch_shape)
        flat = theta.reshape(-1, theta.shape[-1])
        value = super().potential(flat, x=x, track_gradients=track_gradients)
        return value.reshape(batch_shape)

    def _calculate_map(self, *args: Any, init_method: Any = "posterior", **kwargs):
        # `sbi` passes a tensor of initial values straight to its optimizer and
        # raises a bare ValueError for an unknown string.
        if isinstance(init_method, str):
            if init_method != "posterior":
                raise ValueError(
                    "`init_method` must be 'posterior' or a tensor of initial "
                    f"parameters of shape (N, D), got {init_method!r}."
                )
        else:
            init_method = self._check_theta(init_method, "init_method")
            init_method = init_method.reshape(-1, init_method.shape[-1])
        return super()._calculate_map(*args, init_method=init_method, **kwargs)
