r"""AALR: likelihood-free MCMC with amortized approximate likelihood ratios
(Hermans, Begy and Louppe, 2020)."""

from .posterior import METHODS, RatioMCMCPosterior

__all__ = ["METHODS", "RatioMCMCPosterior"]
