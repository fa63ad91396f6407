r"""Warmup adaptation shared by the vectorized kernels.

The chains form `G` equal, contiguous groups, each sampling its own target (one
group in `sample`, one per observation in `sample_batched`). Everything tuned —
step sizes, the covariance, the trajectory length — is pooled within a group:
averaged over its chains, an acceptance rate or a gradient is far less noisy than
one chain's, so the warmup can be short.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pyro.ops.dual_averaging import DualAveraging
from torch import Tensor

__all__ = [
    "PooledMoments",
    "StepSizeAdaptation",
    "TrajectoryLengthAdaptation",
    "WindowedAdaptation",
    "chees_gradient",
    "group_mean",
    "warmup_windows",
]


def group_mean(values: Tensor, groups: int) -> Tensor:
    r"""The mean over each group's chains: `(C, *)` to `(G, *)`."""
    return values.reshape(groups, -1, *values.shape[1:]).mean(1)


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
    r"""The mean and covariance of positions pooled over each group's chains and
    over steps, `(G, D, D)`, and the covariance within chains.

    Pyro's `WelfordCovariance` takes one sample at a time; the chains here give
    `C` at once, so the sums are accumulated as batches.
    """

    def __init__(self, groups: int, dim: int, dtype: torch.dtype, device):
        self.groups = groups
        self.count = 0
        self.steps = 0
        self.chain_sum: Tensor | float = 0.0  # (C, D) after an update
        self.chain_outer: Tensor | float = 0.0  # (C, D, D) after an update
        self.sum = torch.zeros(groups, dim, dtype=dtype, device=device)
        self.outer = torch.zeros(groups, dim, dim, dtype=dtype, device=device)

    def update(self, position: Tensor) -> None:
        self.steps += 1
        self.chain_sum = self.chain_sum + position
        self.chain_outer = self.chain_outer + position[:, :, None] * position[:, None]
        position = position.reshape(self.groups, -1, position.shape[-1])
        self.count += position.shape[1]
        self.sum += position.sum(1)
        self.outer += position.mT @ position

    def covariance(self, regularize: float = 1e-3) -> Tensor:
        r"""The covariances, shrunk towards a scaled identity as Stan does for
        small counts, so that they stay positive definite."""
        n = self.count
        mean = self.sum / n
        cov = (self.outer - n * mean[:, :, None] * mean[:, None, :]) / max(n - 1, 1)
        return _shrunk(cov, n, regularize)

    def within_covariance(self, regularize: float = 1e-3) -> Tensor:
        r"""The covariance of each chain's positions about its own mean,
        averaged over each group's chains, shrunk as :meth:`covariance`.

        It is what Stan adapts a chain's metric to, pooled: chains that sit in
        different modes do not inflate it with the distance between the modes,
        which shrinks the step size. (ChEES may still lengthen the
        trajectories of chains stuck in separate modes: on SLCP it did.)
        It keeps a `(D, D)` sum per chain.
        """
        t = self.steps
        mean = self.chain_sum / t
        scatter = self.chain_outer - t * mean[:, :, None] * mean[:, None, :]
        dim = mean.shape[-1]
        scatter = scatter.reshape(self.groups, -1, dim, dim).sum(1)
        n = self.count  # chains x steps per group
        cov = scatter / max(n - n // t, 1)  # (T - 1) per chain
        return _shrunk(cov, n, regularize)

    def chain_means(self) -> Tensor:
        r"""Each chain's own mean position, `(C, D)`."""
        return self.chain_sum / self.steps


def _shrunk(cov: Tensor, n: int, regularize: float) -> Tensor:
    shrink = n / (n + 5.0)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return shrink * cov + (1 - shrink) * regularize * eye


class StepSizeAdaptation:
    r"""Step sizes (one per group, `(G,)`) tuned by dual averaging (Hoffman and
    Gelman, 2014) towards a target acceptance probability. The groups' schemes run
    as one, since Pyro's :class:`~pyro.ops.dual_averaging.DualAveraging` is
    elementwise."""

    def __init__(self, step_size: Tensor, target_accept: float):
        self.target_accept = target_accept
        self.restart(step_size)

    def restart(self, step_size: Tensor) -> None:
        self.scheme = DualAveraging(prox_center=(10 * step_size).log())
        self.step_size = step_size

    def update(self, accept_prob: Tensor) -> Tensor:
        r"""One update from the groups' mean acceptance probabilities `(G,)`."""
        self.scheme.step(self.target_accept - accept_prob)
        log_step_size, _ = self.scheme.get_state()
        self.step_size = log_step_size.exp()
        return self.step_size

    def final(self) -> Tensor:
        _, log_step_size_avg = self.scheme.get_state()
        return log_step_size_avg.exp()


class WindowedAdaptation:
    r"""The warmup both vectorized kernels share: a step size (or a
    random-walk scale) per group, tuned by dual averaging of the group's mean
    acceptance probability (:class:`StepSizeAdaptation`), and a covariance per
    group, estimated from the positions in Stan's windows
    (:func:`warmup_windows`) with :class:`PooledMoments`. When a window closes
    the step size's adaptation restarts, since the metric it was tuned to has
    changed; at the end of the warmup the step size is the dual average.

    Arguments:
        step_size: The initial step sizes, `(G,)`.
        target_accept: The mean acceptance probability aimed for.
        warmup_steps: The warmup's length.
        covariance: `"pooled"` (positions pooled over a group's chains),
            `"within"` (each chain about its own mean, pooled: chains in
            different modes do not inflate it) or `None` (not adapted).
        adapt_step_size: Whether the step size is tuned.
        restart_step_size: The step size a window's close restarts from;
            the current one when `None`.
    """

    def __init__(
        self,
        step_size: Tensor,
        target_accept: float,
        warmup_steps: int,
        covariance: Literal["pooled", "within"] | None = "pooled",
        adapt_step_size: bool = True,
        restart_step_size: float | None = None,
    ):
        self.step_size = step_size
        self.step = StepSizeAdaptation(step_size, target_accept)
        self.warmup_steps = warmup_steps
        self.covariance = covariance
        self.adapt_step_size = adapt_step_size
        self.restart_step_size = restart_step_size
        self.windows = warmup_windows(warmup_steps) if covariance else []
        self.moments: PooledMoments | None = None
        self.center: Tensor | None = None  #: each chain's mean in the last window
        self.t = 0

    def update(self, position: Tensor, accept_prob: Tensor) -> Tensor | None:
        r"""One warmup step, from the chains' new positions `(C, D)` and
        acceptance probabilities `(C,)`; returns the new covariances
        `(G, D, D)` when a window closes, else `None`."""
        groups = len(self.step_size)
        if self.adapt_step_size:
            self.step_size = self.step.update(group_mean(accept_prob, groups))
        self.t += 1
        covariance = None
        if self.windows:
            if self.moments is None:
                self.moments = PooledMoments(
                    groups, position.shape[-1], position.dtype, position.device
                )
            self.moments.update(position)
            if self.t in self.windows:
                covariance = (
                    self.moments.within_covariance()
                    if self.covariance == "within"
                    else self.moments.covariance()
                )
                self.center = self.moments.chain_means()
                self.moments = None
                if self.adapt_step_size:
                    restart = self.step_size
                    if self.restart_step_size is not None:
                        restart = torch.full_like(restart, self.restart_step_size)
                    self.step.restart(restart)
        if self.t == self.warmup_steps and self.adapt_step_size:
            self.step_size = self.step.final()
        return covariance


def chees_gradient(
    position: Tensor,
    proposal: Tensor,
    velocity: Tensor,
    accept_prob: Tensor,
    trajectory_length: Tensor,
    groups: int,
    center: Tensor | None = None,
) -> Tensor:
    r"""The ChEES criterion's gradient with respect to the log trajectory length,
    one per group (Hoffman, Radul and Sountsov, 2021):

    .. math:: \frac{\partial}{\partial \log T} \frac14 \left(\|\theta' -
        \bar\theta'\|^2 - \|\theta - \bar\theta\|^2\right)^2 = \left(\|\theta' -
        \bar\theta'\|^2 - \|\theta - \bar\theta\|^2\right) (\theta' -
        \bar\theta')^\top v' \, t,

    from each chain's start :math:`\theta`, proposal :math:`\theta'`, final
    velocity :math:`v' = M^{-1} r'` and jittered length :math:`t`, averaged over
    the group's chains with the acceptance probabilities as weights.

    The means :math:`\bar\theta, \bar\theta'` are the group's, as in the paper,
    unless each chain's own `center` is given. On a multimodal target the chains
    sit in different modes, and distances to the group's mean reward
    trajectories that would cross between modes, which they cannot. Centering
    each chain on its own recent mean measures the spread of the mode it
    explores.

    Arguments:
        position, proposal, velocity: `(C, D)`.
        accept_prob, trajectory_length: `(C,)`.
        groups: The number of groups `G`.
        center: Each chain's center, `(C, D)`, or `None`.
    """
    finite = torch.isfinite(proposal).all(-1) & torch.isfinite(velocity).all(-1)
    weight = torch.where(finite, accept_prob, 0.0).reshape(groups, -1, 1)
    shape = (groups, -1, position.shape[-1])
    proposal = torch.where(finite[:, None], proposal, 0.0).reshape(shape)
    velocity = torch.where(finite[:, None], velocity, 0.0).reshape(proposal.shape)
    position = position.reshape(proposal.shape)
    weights_sum = weight.sum(1, keepdim=True).clamp(min=1e-12)
    if center is None:
        centered = position - position.mean(1, keepdim=True)
        proposal_mean = (weight * proposal).sum(1, keepdim=True) / weights_sum
        proposal_centered = proposal - proposal_mean
    else:
        centered = position - center.reshape(shape)
        proposal_centered = proposal - center.reshape(shape)
    change = proposal_centered.square().sum(-1) - centered.square().sum(-1)
    gradient = change * (proposal_centered * velocity).sum(-1)
    gradient = gradient * trajectory_length.reshape(groups, -1)
    return (weight.squeeze(-1) * gradient).sum(1) / weights_sum.reshape(groups)


class TrajectoryLengthAdaptation:
    r"""Trajectory lengths (one per group, `(G,)`) tuned by Adam ascent on the
    ChEES criterion (:func:`chees_gradient`), in log space. The length used after
    warmup is the geometric mean of the iterates since the last `restart`, which
    smooths out Adam's last steps.

    Arguments:
        trajectory_length: The initial lengths, `(G,)`.
        learning_rate: Adam's learning rate on :math:`\log T`.
    """

    def __init__(self, trajectory_length: Tensor, learning_rate: float = 0.05):
        # A leaf tensor stepped by torch's Adam: the gradient is computed by hand.
        self.log_length = trajectory_length.log().clone()
        self.optimizer = torch.optim.Adam(
            [self.log_length], lr=learning_rate, betas=(0.0, 0.95)
        )
        self.restart()

    def restart(self) -> None:
        self._sum = torch.zeros_like(self.log_length)
        self._count = 0

    def update(self, gradient: Tensor) -> Tensor:
        r"""One ascent step on the gradients `(G,)`; returns the new lengths."""
        self.log_length.grad = -torch.nan_to_num(gradient, nan=0.0)
        self.optimizer.step()
        self._sum += self.log_length
        self._count += 1
        return self.log_length.exp()

    def final(self) -> Tensor:
        if self._count == 0:
            return self.log_length.exp()
        return (self._sum / self._count).exp()


def initial_scale(dim: int) -> float:
    r"""The optimal random-walk scale for a standard Gaussian target (Roberts et
    al., 1997): :math:`2.38 / \sqrt{D}`."""
    return 2.38 / math.sqrt(dim)
