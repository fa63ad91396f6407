r"""AALR: likelihood-free MCMC with amortized approximate likelihood ratios
(Hermans, Begy and Louppe, 2020)."""

from .inference import AALR, smooth_classifier
from .posterior import METHODS, RatioMCMCPosterior

__all__ = ["AALR", "METHODS", "RatioMCMCPosterior", "smooth_classifier"]
