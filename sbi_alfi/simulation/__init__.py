r"""Running a simulator: over many workers (in this process, local processes,
a Dask cluster or Ray), in seeded chunks, resumable from disk, with failures
that say where they happened.

The methods' own calls go through :func:`checked_simulation`, whose errors name
the failing rows; :func:`simulate` and :func:`simulate_for_sbi` fan a
simulation out over an :class:`Engine` and keep it in a
:class:`SimulationStore`.
"""

from .checked import checked_simulation
from .engines import Dask, Engine, InProcess, Joblib, Ray, as_engine
from .simulate import (
    SimulationError,
    chunk_seed,
    simulate,
    simulate_batch,
    simulate_for_sbi,
)
from .store import SimulationStore

__all__ = [
    "Dask",
    "Engine",
    "InProcess",
    "Joblib",
    "Ray",
    "SimulationError",
    "SimulationStore",
    "as_engine",
    "checked_simulation",
    "chunk_seed",
    "simulate",
    "simulate_batch",
    "simulate_for_sbi",
]
