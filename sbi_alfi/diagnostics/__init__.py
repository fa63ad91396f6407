r"""Checks that tell a user whether to trust a result."""

from .mcmc import convergence

__all__ = ["convergence"]
