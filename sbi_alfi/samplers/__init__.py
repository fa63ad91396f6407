r"""MCMC kernels that step all chains as one batch, with the Pyro `MCMCKernel`
interface (`setup`, `sample`, `logging`, `diagnostics`), so they run under
`pyro.infer.MCMC`. Each kernel is a step function of a :class:`ChainState` plus
warmup adaptation, kept apart as in blackjax."""

from .hmc import VectorizedHMC, hmc_step
from .importance import importance_resample, systematic_resample
from .mh import VectorizedMH, independence_step, random_walk_step
from .state import ChainState, init_state

__all__ = [
    "ChainState",
    "VectorizedHMC",
    "VectorizedMH",
    "hmc_step",
    "importance_resample",
    "independence_step",
    "init_state",
    "random_walk_step",
    "systematic_resample",
]
