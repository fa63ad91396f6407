r"""Checks that tell a user whether to trust a result."""

from .coverage import Coverage, expected_coverage
from .mcmc import (
    ChainCheck,
    check_chains,
    check_evidence,
    convergence,
    nested_ess,
    nested_r_hat,
    warn_problems,
)
from .ratio import ROC, Normalization, ratio_normalization, ratio_roc_auc

__all__ = [
    "ROC",
    "ChainCheck",
    "Coverage",
    "Normalization",
    "check_chains",
    "check_evidence",
    "convergence",
    "expected_coverage",
    "nested_ess",
    "nested_r_hat",
    "ratio_normalization",
    "ratio_roc_auc",
    "warn_problems",
]
