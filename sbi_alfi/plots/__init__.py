r"""Figures a person would rather look at than numbers."""

from .data import plot_data_fit, plot_identified_quantity
from .diagnostics import plot_coverage, plot_roc
from .trajectory import plot_trajectory

__all__ = [
    "plot_coverage",
    "plot_data_fit",
    "plot_identified_quantity",
    "plot_roc",
    "plot_trajectory",
]
