r"""Checks that tell a user whether to trust a result."""

from .coverage import Coverage, expected_coverage
from .mcmc import convergence
from .ratio import Normalization, ratio_normalization

__all__ = [
    "Coverage",
    "Normalization",
    "convergence",
    "expected_coverage",
    "ratio_normalization",
]
