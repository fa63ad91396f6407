r"""ALFI: likelihood-free inference with a meta-learned recurrent proposal optimizer
(Pesah, Wehenkel and Louppe, 2018)."""

from .inference import ALFI
from .network import RecurrentMachine
from .posterior import ALFIPosterior, Trajectory
from .readout import ReadoutFlow

__all__ = ["ALFI", "ALFIPosterior", "ReadoutFlow", "RecurrentMachine", "Trajectory"]
