r"""Checks that tell a user whether to trust a result."""

from .coverage import Coverage, expected_coverage
from .mcmc import convergence

__all__ = ["Coverage", "convergence", "expected_coverage"]
