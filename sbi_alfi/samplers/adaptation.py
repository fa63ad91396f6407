r"""Warmup adaptation shared by the vectorized kernels: per-chain step sizes by
dual averaging (Pyro's), and a covariance pooled over all chains."""

from __future__ import annotations

import math

import torch
from pyro.ops.dual_averaging import DualAveraging
from torch import Tensor

__all__ = ["PooledMoments", "StepSizeAdaptation", "warmup_windows"]


def warmup_windows(warmup_steps: int) -> list[int]:
    r"""The warmup steps after which the pooled covariance is updated (and the step
    sizes' adaptation restarted), as in Stan: a first stretch adapts only the step
    size, then windows of growing length estimate the covariance, and a last
    stretch (15 %) tunes the step size to the final covariance."""
    if warmup_steps < 20:
        return []
    ends = [0.3, 0.55, 0.85]
    return sorted({int(f * warmup_steps) for f in ends})


class PooledMoments:
    r"""The mean and covariance of positions pooled over chains and steps.

    Pyro's `WelfordCovariance` takes one sample at a time; the chains here give
    `C` at once, so the sums are accumulated as batches.
    """

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device):
        self.count = 0
        self.sum = torch.zeros(dim, dtype=dtype, device=device)
        self.outer = torch.zeros(dim, dim, dtype=dtype, device=device)

    def update(self, position: Tensor) -> None:
        self.count += len(position)
        self.sum += position.sum(0)
        self.outer += position.mT @ position

    def covariance(self, regularize: float = 1e-3) -> Tensor:
        r"""The covariance, shrunk towards a scaled identity as Stan does for small
        counts, so that it stays positive definite."""
        n = self.count
        mean = self.sum / n
        cov = (self.outer - n * torch.outer(mean, mean)) / max(n - 1, 1)
        shrink = n / (n + 5.0)
        eye = torch.eye(len(mean), dtype=cov.dtype, device=cov.device)
        return shrink * cov + (1 - shrink) * regularize * eye


class StepSizeAdaptation:
    r"""Per-chain step sizes tuned by dual averaging (Hoffman and Gelman, 2014)
    towards a target acceptance probability; the `C` chains' schemes run as one,
    since Pyro's :class:`~pyro.ops.dual_averaging.DualAveraging` is elementwise."""

    def __init__(self, step_size: Tensor, target_accept: float):
        self.target_accept = target_accept
        self.restart(step_size)

    def restart(self, step_size: Tensor) -> None:
        self.scheme = DualAveraging(prox_center=(10 * step_size).log())
        self.step_size = step_size

    def update(self, accept_prob: Tensor) -> Tensor:
        self.scheme.step(self.target_accept - accept_prob)
        log_step_size, _ = self.scheme.get_state()
        self.step_size = log_step_size.exp()
        return self.step_size

    def final(self) -> Tensor:
        _, log_step_size_avg = self.scheme.get_state()
        return log_step_size_avg.exp()


def initial_scale(dim: int) -> float:
    r"""The optimal random-walk scale for a standard Gaussian target (Roberts et
    al., 1997): :math:`2.38 / \sqrt{D}`."""
    return 2.38 / math.sqrt(dim)
