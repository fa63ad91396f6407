r"""Runs methods x tasks x budgets x seeds and scores every run against the exact
reference, one row per run in a CSV that a later call resumes."""

from __future__ import annotations

import copy
import csv
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from sbi.utils.metrics import c2st
from tqdm.auto import tqdm

from .methods import METHODS, run_method
from .tasks import TASKS, Task, _sbibm_module, make_task

__all__ = ["Result", "read_results", "run_benchmark"]


@dataclass
class Result:
    r"""The scores of one method on one task, budget and seed."""

    task: str
    method: str
    budget: int  #: the simulations the method may spend
    seed: int  #: of the observation, the simulations, the training and sampling
    simulations: int  #: the simulations it spent, inference included
    c2st: float  #: classifier two-sample test accuracy against the reference
    rmse: float  #: of the point estimate to the true θ, in prior standard deviations
    reference_rmse: float  #: of the exact posterior mean, the same way
    train_seconds: float
    sample_seconds: float

    @property
    def key(self) -> tuple[str, str, int, int]:
        return self.task, self.method, self.budget, self.seed


def read_results(path: str | Path) -> list[Result]:
    r"""The results in the CSV at `path`; none if it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    types = {field.name: field.type for field in fields(Result)}
    cast = {"str": str, "int": int, "float": float}
    with path.open(newline="") as file:
        return [
            Result(**{name: cast[types[name]](value) for name, value in row.items()})
            for row in csv.DictReader(file)
        ]


def rmse(estimate: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor) -> float:
    r"""The root mean square over parameters of `(estimate - theta) / scale`."""
    return ((estimate - theta) / scale).square().mean().sqrt().item()


def prior_scale(task: Task, num_draws: int = 100_000) -> torch.Tensor:
    r"""The prior's standard deviation of each parameter, from `num_draws`."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return task.prior.sample((num_draws,)).std(0)


def run_benchmark(
    output: str | Path,
    tasks: Sequence[str | Task] = tuple(TASKS),
    methods: Sequence[str] = tuple(METHODS),
    budgets: Sequence[int] = (1_000, 10_000),
    seeds: Sequence[int] = (0, 1),
    num_samples: int = 2_000,
    cache: str | Path | None = None,
    show_progress_bars: bool = True,
    engine: Any = None,
) -> list[Result]:
    r"""Runs every method on every task, budget and seed, and appends each run's
    :class:`Result` to `output/results.csv` as soon as it is scored. Runs already
    in that file are skipped, so an interrupted benchmark resumes where it
    stopped. A run that raises is reported and left out, so that a rerun tries
    it again.

    Seed `s` draws the task's observation `s` (:meth:`Task.observation`) and
    seeds the method's simulations, training and sampling; the reference of each
    observation is computed once and cached in `cache`.

    Arguments:
        output: The folder of `results.csv`.
        tasks: Names in `TASKS` (those of `sbibm`, `sbibm_*`, need it
            installed: `make benchmark-install`), or :class:`Task` objects (your
            own simulator; without a likelihood or analytic posterior, C2ST is
            NaN).
        methods: Names in `METHODS`.
        budgets: Simulation budgets.
        seeds: Seeds.
        num_samples: The posterior draws of each method and of the reference.
        cache: The folder of the cached references; `output/references` when
            `None`.
        show_progress_bars: Whether to show a progress bar over the runs.
        engine: Where the methods' training simulations run (:attr:`Task.engine`):
            `None`, this process; any engine of
            :func:`sbi_alfi.simulation.simulate`. ALFI's meta-training counts
            its simulations as it goes and stays in this process.

    Returns:
        The results of the runs asked for, old and new.
    """
    by_name = {task.name: task for task in tasks if isinstance(task, Task)}
    tasks = [task.name if isinstance(task, Task) else task for task in tasks]
    for name, known, given in (
        ("task", {**TASKS, **by_name}, tasks),
        ("method", METHODS, methods),
    ):
        unknown = [item for item in given if item not in known]
        if unknown:
            raise ValueError(f"Unknown {name}s {unknown}; they are {sorted(known)}.")
    if any(budget < 1 for budget in budgets) or not seeds or num_samples < 10:
        raise ValueError(
            "Need budgets >= 1, at least one seed and `num_samples` >= 10, got "
            f"{list(budgets)}, {list(seeds)} and {num_samples}."
        )
    if any(name.startswith("sbibm_") for name in tasks if name not in by_name):
        _sbibm_module()  # a clear error before any run when sbibm is missing
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    cache = output / "references" if cache is None else Path(cache)
    path = output / "results.csv"
    done = {result.key: result for result in read_results(path)}
    todo = [
        key
        for key in itertools.product(tasks, methods, budgets, seeds)
        if key not in done
    ]
    loaded: dict[str, tuple[Task, torch.Tensor]] = {}
    bar = tqdm(todo, desc="Benchmark", disable=not show_progress_bars)
    for name, method, budget, seed in bar:
        bar.set_postfix_str(f"{name} {method} {budget} seed {seed}")
        if name not in loaded:
            task = by_name[name] if name in by_name else make_task(name)
            task = copy.copy(task)  # the caller's task keeps its engine
            task.engine = engine
            loaded[name] = task, prior_scale(task)
        task, scale = loaded[name]
        theta_o, x_o = task.observation(seed)
        reference = None
        try:
            if task.has_reference:
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    reference = task.reference(x_o, num_samples, cache=cache)
            run = run_method(method, task, budget, x_o, num_samples, seed=seed)
            score = math.nan
            if reference is not None:
                score = c2st(run.samples, reference, seed=seed, classifier="mlp")
                score = score.item()
        except Exception as error:  # one failure must not end an overnight run
            tqdm.write(f"{name} {method} {budget} seed {seed} failed: {error!r}")
            continue
        result = Result(
            task=name,
            method=method,
            budget=budget,
            seed=seed,
            simulations=run.num_simulations,
            c2st=score,
            rmse=rmse(run.estimate, theta_o, scale),
            reference_rmse=math.nan
            if reference is None
            else rmse(reference.mean(0), theta_o, scale),
            train_seconds=run.train_seconds,
            sample_seconds=run.sample_seconds,
        )
        _append(path, result)
        done[result.key] = result
    wanted = set(itertools.product(tasks, methods, budgets, seeds))
    return [result for key, result in done.items() if key in wanted]


def _append(path: Path, result: Result) -> None:
    new = not path.exists()
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(
            file, fieldnames=[field.name for field in fields(Result)]
        )
        if new:
            writer.writeheader()
        writer.writerow(asdict(result))
