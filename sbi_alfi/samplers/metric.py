r"""The Euclidean metric of Hamiltonian Monte Carlo: momenta, velocities and
kinetic energy from an inverse mass matrix, diagonal or dense, per chain."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["EuclideanMetric"]


class EuclideanMetric(NamedTuple):
    r"""The Gaussian kinetic energy :math:`K(r) = \frac12 r^\top M^{-1} r` of
    every chain, with momenta :math:`r \sim \mathcal N(0, M)`.

    Arguments:
        inverse_mass: :math:`M^{-1}` per chain, diagonal `(C, D)` or dense
            `(C, D, D)`.
    """

    inverse_mass: Tensor

    @property
    def dense(self) -> bool:
        return self.inverse_mass.dim() == 3

    def momentum(self, position: Tensor) -> Tensor:
        r"""Fresh momenta :math:`r \sim \mathcal N(0, M)`, `(C, D)`."""
        eps = torch.randn_like(position)
        if self.dense:  # r = L^{-T} eps with M^{-1} = L L^T has covariance M
            scale_tril = torch.linalg.cholesky(self.inverse_mass)
            return torch.linalg.solve_triangular(
                scale_tril.mT, eps[..., None], upper=True
            )[..., 0]
        return eps / self.inverse_mass.sqrt()

    def velocity(self, momentum: Tensor) -> Tensor:
        r""":math:`M^{-1} r`, the gradient of the kinetic energy, `(C, D)`."""
        if self.dense:
            return (self.inverse_mass @ momentum[..., None])[..., 0]
        return momentum * self.inverse_mass

    def kinetic_energy(self, momentum: Tensor) -> Tensor:
        r""":math:`\frac12 r^\top M^{-1} r`, `(C,)`."""
        return 0.5 * (momentum * self.velocity(momentum)).sum(-1)
