r"""sbi-alfi: ALFI and AALR for the `sbi` simulation-based inference library."""

from . import simulators
from .aalr import AALR, RatioMCMCPosterior
from .alfi import ALFI, ALFIPosterior

__version__ = "0.1.0.dev0"

__all__ = [
    "AALR",
    "ALFI",
    "ALFIPosterior",
    "RatioMCMCPosterior",
    "__version__",
    "simulators",
]
