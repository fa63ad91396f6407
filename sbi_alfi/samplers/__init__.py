r"""MCMC kernels that step all chains as one batch, with the Pyro `MCMCKernel`
interface (`setup`, `sample`, `logging`, `diagnostics`), so they run under
`pyro.infer.MCMC`. Each kernel is a step function of a :class:`ChainState` plus
warmup adaptation, kept apart as in blackjax; :func:`smc` tempers particles from
the prior to the posterior with those steps as its moves."""

from .hmc import VectorizedHMC, hmc_step
from .importance import DefensiveProposal, importance_resample, systematic_resample
from .mh import VectorizedMH, independence_step, random_walk_step
from .smc import SMCResult, smc, tempered_step
from .state import ChainState, init_state

__all__ = [
    "ChainState",
    "DefensiveProposal",
    "SMCResult",
    "VectorizedHMC",
    "VectorizedMH",
    "hmc_step",
    "importance_resample",
    "independence_step",
    "init_state",
    "random_walk_step",
    "smc",
    "systematic_resample",
    "tempered_step",
]
