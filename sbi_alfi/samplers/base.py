r"""What the vectorized kernels share: Pyro's kernel interface over `C` chains."""

from __future__ import annotations

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from torch import Tensor

from .state import ChainState, LogDensity

__all__ = ["VectorizedKernel"]


class VectorizedKernel(MCMCKernel):
    r"""A Pyro :class:`~pyro.infer.mcmc.mcmc_kernel.MCMCKernel` whose one site,
    `"theta"`, holds `C` chains of shape `(C, D)`, stepped together.

    Arguments:
        log_density: Maps positions `(C, D)` to log-densities `(C,)`.
        initial_position: The chains' starting points, `(C, D)`.
        num_groups: The chains form this many equal, contiguous blocks, each with
            its own target (e.g. one per observation); the warmup pools the
            chains of a block.
    """

    def __init__(
        self, log_density: LogDensity, initial_position: Tensor, num_groups: int = 1
    ):
        if initial_position.dim() != 2:
            raise ValueError(
                "`initial_position` must have shape (num_chains, D), got "
                f"{tuple(initial_position.shape)}."
            )
        if num_groups < 1 or len(initial_position) % num_groups:
            raise ValueError(
                f"`num_groups` must divide the {len(initial_position)} chains, got "
                f"{num_groups}."
            )
        self.num_groups = num_groups
        self.log_density = log_density
        self._initial_position = initial_position
        self.transforms: dict = {}  # the chains already live where they are sampled
        self.state: ChainState | None = None

    def _start(self, warmup_steps: int) -> None:
        r"""Resets the transition count and the acceptance bookkeeping."""
        num_chains = len(self._initial_position)
        self._warmup_steps = warmup_steps
        self._t = 0
        self._accepted = self._initial_position.new_zeros(num_chains)
        self._num_sampled = 0
        self._last_accept_prob = self._initial_position.new_ones(num_chains)
        self._stats: dict[str, list[Tensor]] = {}

    def _count(self, accept_prob: Tensor, **stats: Tensor) -> bool:
        r"""Records a transition's acceptance probabilities `(C,)` and, after
        warmup, its per-chain `stats` (ArviZ's names); returns whether it was
        a warmup transition (which the mean acceptance leaves out)."""
        self._last_accept_prob = accept_prob
        warmup = self._t < self._warmup_steps
        if not warmup:
            self._accepted += accept_prob
            self._num_sampled += 1
            for name, value in {"acceptance_rate": accept_prob, **stats}.items():
                self._stats.setdefault(name, []).append(value)
        self._t += 1
        return warmup

    def sample_stats(self) -> dict[str, Tensor]:
        r"""Each transition's statistics after warmup, `(S, C)` per name, in
        ArviZ's names (`acceptance_rate`, and for HMC `diverging`, `energy`,
        `n_steps`)."""
        return {name: torch.stack(values) for name, values in self._stats.items()}

    def acceptance_rate(self) -> Tensor:
        r"""Each chain's mean acceptance probability after warmup, `(C,)`."""
        return self._accepted / max(self._num_sampled, 1)

    def _per_chain(self, values: Tensor) -> Tensor:
        r"""Each group's value `(G, *)` repeated for its chains, `(C, *)`."""
        per_group = len(self._initial_position) // self.num_groups
        return values.repeat_interleave(per_group, dim=0)

    @property
    def initial_params(self) -> dict[str, Tensor]:
        return {"theta": self._initial_position}

    @initial_params.setter
    def initial_params(self, params: dict[str, Tensor]) -> None:
        self._initial_position = params["theta"]
