r"""Figures of the diagnostics: ROC curves of the ratio test, coverage curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from ..diagnostics import ROC, Coverage

__all__ = ["plot_coverage", "plot_roc"]


def plot_roc(roc: ROC, ax: Axes | None = None, max_curves: int = 10) -> Axes:
    r"""The weighted ROC curves of :func:`~sbi_alfi.diagnostics.ratio_roc_auc`, one
    per tested parameter (at most `max_curves`), against the diagonal of a
    classifier that cannot tell the classes apart (a correct ratio)."""
    ax = plt.gca() if ax is None else ax
    for i in range(min(len(roc.auc), max_curves)):
        ax.plot(
            roc.false_positive_rate[i],
            roc.true_positive_rate[i],
            lw=1,
            label=f"θ = {_format(roc.theta[i])}: AUC {roc.auc[i]:.3f}",
        )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance (exact ratio)")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_aspect("equal")
    ax.legend(fontsize=7)
    return ax


def plot_coverage(
    coverage: Coverage, ax: Axes | None = None, label: str | None = None
) -> Axes:
    r"""The expected coverage of :func:`~sbi_alfi.diagnostics.expected_coverage`
    with its binomial band, against the diagonal of a calibrated posterior: below
    it the posterior is overconfident, above it conservative."""
    ax = plt.gca() if ax is None else ax
    (line,) = ax.plot(coverage.levels, coverage.coverage, label=label)
    ax.fill_between(
        coverage.levels,
        coverage.lower,
        coverage.upper,
        alpha=0.3,
        color=line.get_color(),
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage")
    ax.set_aspect("equal")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return ax


def _format(theta) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in theta.tolist()) + ")"
