r"""The simulators of the ALFI and AALR papers, batched and with exact likelihoods
where they are tractable.

Every simulator has the same shape: `sim.prior` is a torch distribution that
`sbi.utils.process_prior` accepts as is, `sim(theta)` maps parameters of shape
`(*, D)` to one observation per row, `sim.log_likelihood(theta, x)` is the exact
log-density where tractable and `sim.mle(x)` the closed-form maximum-likelihood
estimate where one exists.
"""

from .base import Simulator
from .gaussian import Gaussian
from .laplace import Laplace
from .poisson import Poisson
from .slcp import SLCP
from .weinberg import Weinberg

__all__ = ["SLCP", "Gaussian", "Laplace", "Poisson", "Simulator", "Weinberg"]
