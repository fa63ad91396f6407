r"""AALR: likelihood-free MCMC with amortized approximate likelihood ratios
(Hermans, Begy and Louppe, 2020)."""

from .classifiers import RatioEnsemble, smooth_classifier
from .inference import AALR
from .posterior import METHODS, RatioMCMCPosterior

__all__ = [
    "AALR",
    "METHODS",
    "RatioEnsemble",
    "RatioMCMCPosterior",
    "smooth_classifier",
]
