r"""Where a simulation's chunks run: in this process, in local processes
(joblib), on a Dask cluster or on Ray.

An engine maps one function over a list of arguments and yields each result,
with its argument's index, as soon as it is done. A worker that is lost is the
engine's to retry: Dask's scheduler reschedules the tasks of a lost worker (up
to its `allowed-failures`), and Ray retries a task whose worker died (`max_retries`).
Nothing here retries by hand. A simulator's own exception is not a lost worker:
the chunk runner returns it as a value (:mod:`~sbi_alfi.simulation.simulate`),
so the engines never rerun a deterministic failure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["Dask", "Engine", "InProcess", "Joblib", "Ray", "as_engine"]


def _call(fn: Callable[[Any], Any], index: int, arg: Any) -> tuple[int, Any]:
    return index, fn(arg)


class Engine(ABC):
    r"""Maps a function over arguments somewhere, yielding results as they
    finish."""

    @abstractmethod
    def map_unordered(
        self, fn: Callable[[Any], Any], args: Sequence[Any]
    ) -> Iterator[tuple[int, Any]]:
        r"""`(i, fn(args[i]))` for every `i`, in the order they finish."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class InProcess(Engine):
    r"""Every chunk in this process, one after another (the default)."""

    def map_unordered(self, fn, args):
        for index, arg in enumerate(args):
            yield _call(fn, index, arg)


class Joblib(Engine):
    r"""Local worker processes through joblib's `loky` backend, as `sbi`'s
    `simulate_for_sbi(num_workers=...)` uses.

    Arguments:
        n_jobs: The worker processes (-1: one per CPU).
    """

    def __init__(self, n_jobs: int = -1):
        self.n_jobs = n_jobs

    def map_unordered(self, fn, args):
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=self.n_jobs, return_as="generator_unordered")
        yield from parallel(delayed(_call)(fn, i, arg) for i, arg in enumerate(args))

    def __repr__(self) -> str:
        return f"Joblib(n_jobs={self.n_jobs})"


class Dask(Engine):
    r"""The workers of a Dask cluster: a local one, or SLURM, PBS or Kubernetes
    through `dask-jobqueue` and its kin, whatever `client` is connected to.

    Each chunk is one task, the function pickled with it.

    Arguments:
        client: A `dask.distributed.Client`.
        retries: Dask's retries of a task that raised (the chunk runner does not
            raise for a simulator's error; a lost worker's tasks are rescheduled
            by the scheduler whatever this is).
    """

    def __init__(self, client: Any, retries: int = 0):
        self.client = client
        self.retries = retries

    def map_unordered(self, fn, args):
        from distributed import as_completed

        # An intermittent stall (the client waiting forever, every worker idle;
        # cause not found) is why the function travels with each task rather
        # than in a broadcast scatter first, and why the results are gathered
        # here rather than by `as_completed(..., with_results=True)`, whose own
        # gather has a report of waiting forever (dask/distributed#7331).
        futures = [
            self.client.submit(_call, fn, i, arg, pure=False, retries=self.retries)
            for i, arg in enumerate(args)
        ]
        try:
            for batch in as_completed(futures).batches():
                yield from self.client.gather(batch)
        finally:
            self.client.cancel(futures)

    def __repr__(self) -> str:
        return f"Dask({self.client!r})"


class Ray(Engine):
    r"""Ray's workers: the running Ray instance, or a local one started with
    `init_kwargs` (`ray.init`) when none runs.

    Arguments:
        max_retries: Ray's retries of a task whose worker died.
        init_kwargs: For `ray.init` when Ray is not initialized.
    """

    def __init__(self, max_retries: int = 3, **init_kwargs: Any):
        self.max_retries = max_retries
        self.init_kwargs = init_kwargs

    def map_unordered(self, fn, args):
        import ray

        if not ray.is_initialized():
            ray.init(**{"include_dashboard": False, **self.init_kwargs})
        remote = ray.remote(max_retries=self.max_retries)(_call)
        fn_ref = ray.put(fn)
        pending = [remote.remote(fn_ref, i, arg) for i, arg in enumerate(args)]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        finally:
            for ref in pending:
                ray.cancel(ref)

    def __repr__(self) -> str:
        return f"Ray(max_retries={self.max_retries})"


def _require(module: str, extra: str) -> None:
    try:
        __import__(module)
    except ImportError as error:
        raise ImportError(
            f"This engine needs {module}, an optional extra: "
            f"pip install 'sbi-alfi[{extra}]'."
        ) from error


def as_engine(engine: Engine | str | int | Any | None) -> Engine:
    r"""The engine a user's `engine` argument names.

    Arguments:
        engine: `None` or `"inline"` (this process), a number of local worker
            processes (joblib; 1 is this process), `"joblib"` (one per CPU), a
            `dask.distributed.Client`, `"dask"` (a new local Dask cluster),
            `"ray"`, or an :class:`Engine`.
    """
    if engine is None or engine == "inline":
        return InProcess()
    if isinstance(engine, Engine):
        return engine
    if isinstance(engine, bool):
        raise TypeError(f"`engine` must name an engine, got {engine!r}.")
    if isinstance(engine, int):
        if engine < 1:
            raise ValueError(
                f"`engine` as a number of workers must be >= 1, got {engine}."
            )
        return InProcess() if engine == 1 else Joblib(engine)
    if engine == "joblib":
        return Joblib()
    if engine == "dask":
        _require("distributed", "dask")
        from distributed import Client

        return Dask(Client(processes=True))
    if engine == "ray":
        _require("ray", "ray")
        return Ray()
    if type(engine).__module__.startswith("distributed") and hasattr(engine, "submit"):
        return Dask(engine)
    raise TypeError(
        "`engine` must be None, 'inline', a number of workers, 'joblib', 'dask', "
        f"'ray', a dask.distributed.Client or an Engine; got {engine!r}."
    )
