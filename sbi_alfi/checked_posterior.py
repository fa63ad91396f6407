r"""What the posteriors of both methods share on top of `sbi`'s."""

from __future__ import annotations

from sbi.inference.posteriors.base_posterior import NeuralPosterior
from torch import Tensor

__all__ = ["CheckedPosterior"]


class CheckedPosterior(NeuralPosterior):
    r"""An `sbi` posterior whose every `x`, passed or set as default, goes through
    the subclass's :meth:`_check_x` (shape and finiteness, with errors that name
    the problem) instead of `sbi`'s `process_x`."""

    def _check_x(self, x: Tensor) -> Tensor:
        raise NotImplementedError

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
