r"""A batched simulator run over many workers, in chunks with their own seeds,
so that the draws do not depend on the workers or the engine."""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checked import checked_simulation
from .engines import Engine, as_engine
from .store import SimulationStore

__all__ = ["SimulationError", "simulate", "simulate_batch", "simulate_for_sbi"]

InvalidX = Literal["raise", "exclude", "keep"]


class SimulationError(ValueError):
    r"""The simulator raised, returned the wrong shape, or returned NaN/inf."""


class _Failure(NamedTuple):
    r"""What a chunk's simulation did instead of returning `x`."""

    error: str  #: the exception's type and message
    rows: list[int] | None  #: the chunk's rows that raise on their own


def chunk_seed(seed: int, index: int) -> int:
    r"""The seed of chunk `index` of a run seeded with `seed`: NumPy's
    `SeedSequence` spawn key `(index,)`, so it depends on nothing but the two."""
    state = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1)
    return int(state[0])


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    r"""Torch's, NumPy's and Python's global generators seeded with `seed`, and
    restored after: in this process, a chunk leaves the caller's state as it
    was."""
    # The legacy global NumPy generator on purpose: it is the one simulators use.
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)  # noqa: NPY002
            random.setstate(python_state)


def _rows_that_raise(simulator: Callable, theta: Tensor) -> list[int]:
    rows = []
    for i in range(len(theta)):
        try:
            simulator(theta[i : i + 1])
        except Exception:
            rows.append(i)
    return rows


def run_chunk(simulator: Callable[[Tensor], Tensor], task: tuple[Tensor, int]) -> Any:
    r"""`simulator(theta)` under `seed`, for `task = (theta, seed)`: `x`, or a
    failure naming the error and the rows that raise alone (a batched
    simulator's error does not say which row caused it). Returns the error
    rather than raising it, so an engine never retries a simulator's own
    failure."""
    theta, seed = task
    with _seeded(seed):
        try:
            x = torch.as_tensor(simulator(theta))
        except Exception as error:
            return _Failure(
                f"{type(error).__name__}: {error}", _rows_that_raise(simulator, theta)
            )
    if x.dim() < 1 or len(x) != len(theta):
        return _Failure(
            f"returned shape {tuple(x.shape)} for {len(theta)} parameters, not "
            f"({len(theta)}, *x_shape)",
            None,
        )
    return x.detach().cpu()


def _check_theta(theta: Any) -> Tensor:
    if not isinstance(theta, Tensor) or theta.dim() != 2 or len(theta) == 0:
        shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta)
        raise ValueError(
            f"`theta` must be a tensor of shape (N, D), N > 0, got {shape}."
        )
    bad = ~torch.isfinite(theta).all(-1)
    if bad.any():
        rows = bad.nonzero()[:, 0]
        raise ValueError(
            f"`theta` has NaN or inf in {len(rows)} rows (the first: "
            f"{rows[:5].tolist()})."
        )
    return theta


def _describe_rows(rows: list[int], theta: Tensor, limit: int = 3) -> str:
    shown = "; ".join(f"row {i}: theta = {theta[i].tolist()}" for i in rows[:limit])
    more = f"; and {len(rows) - limit} more" if len(rows) > limit else ""
    return shown + more


def _failure_message(
    failures: dict[int, _Failure], theta: Tensor, chunk_size: int, num_chunks: int
) -> str:
    index, failure = min(failures.items())
    start = index * chunk_size
    stop = min(start + chunk_size, len(theta))
    where = f"chunk {index} (rows {start} to {stop - 1})"
    if failure.rows:
        alone = [start + r for r in failure.rows]
        culprits = f"; run alone, these raise: {_describe_rows(alone, theta)}"
    elif failure.rows is not None:
        culprits = f"; no row raises alone (theta[{start}] = {theta[start].tolist()})"
    else:
        culprits = ""
    others = sorted(failures)[1:]
    return (
        f"The simulator failed in {len(failures)} of {num_chunks} chunks. In "
        f"{where}: {failure.error}{culprits}."
        + (f" Also in chunks {others[:10]}." if others else "")
    )


def _resolve_seed(seed: int | None) -> int:
    r"""A root seed; without one, drawn from torch's generator, so that
    `torch.manual_seed` makes the run reproducible, as in `sbi`."""
    if seed is None:
        return int(torch.randint(2**62, ()).item())
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    return seed


def simulate(
    simulator: Callable[[Tensor], Tensor],
    theta: Tensor,
    chunk_size: int = 100,
    seed: int | None = None,
    engine: Engine | str | int | Any | None = None,
    store: SimulationStore | str | os.PathLike | None = None,
    invalid_x: InvalidX = "raise",
    show_progress_bar: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Runs a batched simulator on `theta`, `(N, D)`, in chunks of `chunk_size`
    rows spread over an engine's workers.

    Chunk :math:`i` runs under its own seed, derived from `seed` and :math:`i`
    alone (:func:`chunk_seed`), with torch's, NumPy's and Python's generators
    seeded: the simulations are the same, bit for bit, in this process, on 2
    local processes, on a Dask cluster or on Ray. `theta` is moved to the CPU
    before it is shipped; `x` comes back on `theta`'s device.

    With a `store`, each chunk is written to disk as soon as it is done, and a
    rerun with the same store, `theta`, `chunk_size` and `seed` simulates only
    the chunks it lacks: a run killed at any point loses the chunks in flight,
    no more. A worker that is lost is retried by the engine (Dask reschedules
    it, Ray reruns it).

    A simulator that raises, in any chunk, gives one :class:`SimulationError`
    after every other chunk is done (and stored): it names the chunk, its rows,
    the error, and the rows that raise when run alone with their parameters.
    Simulations with NaN or inf in `x` raise the same way, unless `invalid_x`
    is `"exclude"` (dropped, with a warning that counts them, as `sbi`'s
    `exclude_invalid_x`) or `"keep"`.

    Arguments:
        simulator: Maps parameters `(n, D)` to simulations `(n, *x_shape)`
            (wrap a simulator of one θ with `sbi`'s `process_simulator`). Sent to
            the workers by pickle (cloudpickle for Dask, Ray and joblib).
        theta: The parameters, `(N, D)`.
        chunk_size: The rows of a chunk: one call of `simulator`, one task.
        seed: The root seed; without one, drawn from torch's global generator.
        engine: Where the chunks run: `None` (this process), a number of local
            processes (joblib), `"joblib"`, a `dask.distributed.Client`,
            `"dask"`, `"ray"`, or an :class:`~sbi_alfi.simulation.Engine`.
        store: A :class:`SimulationStore` or its folder, to keep chunks on disk
            and resume.
        invalid_x: What to do with NaN/inf simulations: `"raise"`, `"exclude"`
            or `"keep"`.
        show_progress_bar: Whether to count the simulations done.

    Returns:
        `theta` and `x`, without the excluded rows.

    Example:
        >>> import torch
        >>> from sbi_alfi.simulation import simulate
        >>> def simulator(theta):
        ...     return theta + torch.randn_like(theta)
        >>> theta = torch.zeros(1_000, 2)
        >>> _, x = simulate(simulator, theta, seed=0, show_progress_bar=False)
        >>> _, y = simulate(simulator, theta, seed=0, engine=2, show_progress_bar=False)
        >>> torch.equal(x, y)
        True
    """
    theta = _check_theta(theta)
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 1
    ):
        raise ValueError(
            f"`chunk_size` must be a positive integer, got {chunk_size!r}."
        )
    if invalid_x not in ("raise", "exclude", "keep"):
        raise ValueError(
            f"`invalid_x` must be 'raise', 'exclude' or 'keep', got {invalid_x!r}."
        )
    seed = _resolve_seed(seed)
    engine = as_engine(engine)
    cpu = theta.detach().cpu()
    num_chunks = -(-len(cpu) // chunk_size)
    if store is not None and not isinstance(store, SimulationStore):
        store = SimulationStore(store)
    done: dict[int, Tensor] = {}
    todo = list(range(num_chunks))
    if store is not None:
        store.open(cpu, chunk_size, seed)
        todo = store.missing()
    tasks = [
        (cpu[i * chunk_size : (i + 1) * chunk_size], chunk_seed(seed, i)) for i in todo
    ]
    failures: dict[int, _Failure] = {}
    bar = tqdm(
        total=len(cpu),
        initial=len(cpu) - sum(len(t) for t, _ in tasks),
        desc=f"Simulating in {num_chunks} chunks",
        disable=not show_progress_bar,
    )
    with bar:
        for k, result in engine.map_unordered(partial(run_chunk, simulator), tasks):
            index = todo[k]
            if isinstance(result, _Failure):
                failures[index] = result
                continue
            if store is not None:
                store.write(index, result)
            else:
                done[index] = result
            bar.update(len(result))
    if failures:
        message = _failure_message(failures, cpu, chunk_size, num_chunks)
        if store is not None:
            message += f" The {num_chunks - len(failures)} other chunks are in {store}."
        raise SimulationError(message)
    chunks = (
        store.read(range(num_chunks))
        if store is not None
        else [done[i] for i in range(num_chunks)]
    )
    shapes = sorted({tuple(chunk.shape[1:]) for chunk in chunks})
    if len(shapes) > 1:
        raise SimulationError(f"The chunks' simulations differ in shape: {shapes}.")
    x = torch.cat(chunks)
    valid = torch.isfinite(x.reshape(len(x), -1)).all(-1)
    if not valid.all() and invalid_x != "keep":
        rows = (~valid).nonzero()[:, 0].tolist()
        if invalid_x == "raise":
            chunks = sorted({r // chunk_size for r in rows})
            raise SimulationError(
                f"The simulator returned NaN or inf in {len(rows)} of {len(x)} "
                f"simulations, in chunks {chunks[:10]}: {_describe_rows(rows, cpu)}. "
                "Pass invalid_x='exclude' to drop them (as sbi's "
                "exclude_invalid_x=True)."
            )
        warnings.warn(
            f"Excluded {len(rows)} of {len(x)} simulations with NaN or inf in x.",
            UserWarning,
            stacklevel=2,
        )
        theta, x = theta[valid.to(theta.device)], x[valid]
    return theta, x.to(theta.device)


def simulate_batch(
    simulator: Callable[[Tensor], Tensor],
    theta: Tensor,
    engine: Engine | str | int | Any | None = None,
    chunk_size: int = 100,
    invalid_x: InvalidX = "raise",
) -> Tensor:
    r"""`x` for parameters `theta` `(N, D)`, the way the package's methods
    simulate: with `engine=None` one call in this process
    (:func:`~sbi_alfi.simulation.checked_simulation` when `invalid_x` is
    `"raise"`), else :func:`simulate` over `engine` in chunks of `chunk_size`,
    seeded from torch's generator, so the draws are the same on every engine
    (not those of `None`)."""
    if engine is None:
        if invalid_x == "raise":
            return checked_simulation(simulator, theta)
        return simulator(theta)
    _, x = simulate(
        simulator,
        theta,
        chunk_size=chunk_size,
        engine=engine,
        invalid_x=invalid_x,
        show_progress_bar=False,
    )
    return x


def simulate_for_sbi(
    simulator: Callable[[Tensor], Tensor],
    proposal: Any,
    num_simulations: int,
    num_workers: int = 1,
    simulation_batch_size: int | None = 1,
    seed: int | None = None,
    show_progress_bar: bool = True,
    engine: Engine | str | Any | None = None,
    store: SimulationStore | str | os.PathLike | None = None,
    invalid_x: InvalidX = "keep",
) -> tuple[Tensor, Tensor]:
    r"""`sbi`'s `simulate_for_sbi`, with its arguments and return values, that
    can also run on a Dask cluster or on Ray and keep its chunks on disk.

    Draws `num_simulations` parameters from `proposal` (after
    `torch.manual_seed(seed)` when `seed` is given) and simulates them with
    :func:`simulate`, in chunks of `simulation_batch_size`, on `engine`, or,
    when it is `None`, on `num_workers` local processes as `sbi` does. NaN/inf
    simulations are kept, as `sbi` keeps them for `append_simulations` to
    exclude.

    Arguments:
        simulator: Maps parameters `(n, D)` to simulations `(n, *x_shape)`.
        proposal: Anything with `.sample((n,))`: the prior, or a posterior.
        num_simulations: How many.
        num_workers: Local worker processes, when `engine` is `None`.
        simulation_batch_size: The rows of each chunk (`None`: one chunk).
        seed: Seeds the parameters' draw and the chunks.
        show_progress_bar: Whether to count the simulations done.
        engine: As in :func:`simulate`; overrides `num_workers`.
        store: As in :func:`simulate`.
        invalid_x: As in :func:`simulate`.

    Returns:
        `theta` `(num_simulations, D)` and `x` `(num_simulations, *x_shape)`.

    Example:
        >>> import torch
        >>> from sbi.utils import BoxUniform
        >>> from sbi_alfi.simulation import simulate_for_sbi
        >>> prior = BoxUniform(torch.zeros(2), torch.ones(2))
        >>> theta, x = simulate_for_sbi(lambda t: t + 0.1 * torch.randn_like(t),
        ...     prior, 500, simulation_batch_size=100, seed=0,
        ...     show_progress_bar=False)
        >>> theta.shape, x.shape
        (torch.Size([500, 2]), torch.Size([500, 2]))
    """
    if isinstance(num_simulations, bool) or not isinstance(num_simulations, int):
        raise ValueError(
            f"`num_simulations` must be an integer, got {num_simulations!r}."
        )
    if num_simulations < 1:
        raise ValueError(f"`num_simulations` must be positive, got {num_simulations}.")
    if seed is None:
        theta = proposal.sample((num_simulations,))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            theta = proposal.sample((num_simulations,))
    return simulate(
        simulator,
        theta.reshape(num_simulations, -1),
        chunk_size=num_simulations
        if simulation_batch_size is None
        else simulation_batch_size,
        seed=seed,
        engine=num_workers if engine is None else engine,
        store=store,
        invalid_x=invalid_x,
        show_progress_bar=show_progress_bar,
    )
