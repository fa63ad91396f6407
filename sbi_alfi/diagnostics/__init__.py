r"""Checks that tell a user whether to trust a result."""

from .coverage import Coverage, expected_coverage
from .mcmc import convergence, nested_r_hat
from .ratio import ROC, Normalization, ratio_normalization, ratio_roc_auc

__all__ = [
    "ROC",
    "Coverage",
    "Normalization",
    "convergence",
    "expected_coverage",
    "nested_r_hat",
    "ratio_normalization",
    "ratio_roc_auc",
]
