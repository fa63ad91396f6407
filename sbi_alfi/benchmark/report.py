r"""The results page of a benchmark: Markdown tables, plots, and the command and
machine that produced them."""

from __future__ import annotations

import math
import os
import platform
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib
import sbi
import torch
from matplotlib.figure import Figure

from .methods import METHODS
from .run import Result

__all__ = ["Paired", "machine", "paired", "write_report"]

#: How each method's output is labelled. ALFI's is not a posterior.
LABELS = {"alfi": "alfi †"}
FOOTNOTE = (
    "† ALFI's draws are those of its final Gaussian proposal "
    r"$q(\theta \mid \psi_T)$, not of a posterior, and its point estimate is the "
    "proposal's centre, not a posterior mean: its C2ST measures how far that "
    "Gaussian is from the posterior. It spends its budget on meta-training tasks "
    "and on the simulations of its inference on x_o, all counted."
)


def machine() -> str:
    r"""The CPU, cores, memory and software versions, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 2**20:.0f} GiB"
                break
    except OSError:
        memory = ""
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}; {platform.system()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}, sbi "
        f"{sbi.__version__}"
    )


def _group(results: Sequence[Result]) -> dict[tuple[str, str, int], list[Result]]:
    groups: dict[tuple[str, str, int], list[Result]] = defaultdict(list)
    for result in results:
        groups[result.task, result.method, result.budget].append(result)
    return groups


def _spread(values: list[float], digits: int = 3) -> str:
    r"""The mean, and the range over seeds when there are several; a dash for
    NaN (no reference)."""
    if any(math.isnan(value) for value in values):
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _order(results: Sequence[Result]) -> tuple[list[str], list[str], list[int]]:
    r"""Tasks in order of appearance, methods in the order of `METHODS` (others
    after them), budgets ascending."""
    rank = {method: i for i, method in enumerate(METHODS)}
    methods = dict.fromkeys(result.method for result in results)
    return (
        list(dict.fromkeys(result.task for result in results)),
        sorted(methods, key=lambda method: rank.get(method, len(rank))),
        sorted({result.budget for result in results}),
    )


def write_report(
    results: Sequence[Result],
    output: str | Path,
    command: str | None = None,
    notes: str | None = None,
    baseline: str | None = "nre_a_slice",
    margin: float = 0.01,
) -> Path:
    r"""Writes `RESULTS.md`, `c2st.png`, `rmse.png` and `seconds.png` to
    `output` and returns the page's path.

    Arguments:
        results: The benchmark's results.
        output: The folder.
        command: The command that produced them, quoted on the page.
        notes: Markdown shown under the command (how the run was set up).
        baseline: A method every other is compared with, seed by seed
            (:func:`paired`), when the results have it.
        margin: The C2ST by which a method may trail the baseline in a cell.
    """
    if not results:
        raise ValueError("There are no results to report.")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tasks, methods, budgets = _order(results)
    groups = _group(results)
    seeds = sorted({result.seed for result in results})

    lines = ["# Benchmark against sbi's methods", ""]
    if command is not None:
        lines += ["Produced by", "", "```bash", command, "```", ""]
    busy = sum(r.train_seconds + r.sample_seconds for r in results)
    lines += [
        f"on {machine()}. Training and sampling took {busy / 60:.0f} min in all; "
        "simulating and scoring add to that."
    ]
    if notes:
        lines += ["", notes.strip()]
    lines += [
        "",
        f"{len(tasks)} tasks × {len(methods)} methods × {len(budgets)} budgets × "
        f"{len(seeds)} seeds (seed s draws observation s of the task and seeds "
        "the method). C2ST: accuracy of a classifier (sbi's `c2st`, MLP) telling "
        "the method's draws from exact reference draws; 0.5 is perfect, 1.0 is "
        "disjoint. RMSE: of the point estimate (the posterior mean) to the true θ, "
        "in prior standard deviations, next to that of the exact posterior mean. "
        "Each cell is the mean over seeds, with their range.",
        "",
        "![C2ST](c2st.png)",
        "",
        "![RMSE](rmse.png)",
        "",
        "![seconds](seconds.png)",
        "",
    ]
    header = [f"{task} @ {budget:,}" for task in tasks for budget in budgets]
    if baseline in methods:
        lines += _paired_section(results, baseline, margin)
    for metric, title in (("c2st", "Mean C2ST"), ("rmse", "Mean RMSE")):
        lines += [f"## {title}", ""]
        lines += _table(
            ["method", *header],
            [
                [
                    LABELS.get(method, method),
                    *(
                        _cell(groups.get((task, method, budget)), metric)
                        for task in tasks
                        for budget in budgets
                    ),
                ]
                for method in methods
            ],
        )
        lines += [""]
    for task in tasks:
        reference = {r.seed: r.reference_rmse for r in results if r.task == task}
        exact = _spread(list(reference.values()))
        lines += [
            f"## {task}",
            "",
            f"RMSE of the exact posterior mean: {exact} (over the observations; – "
            "when the task has no reference).",
            "",
        ]
        rows = []
        for budget in budgets:
            for method in methods:
                runs = groups.get((task, method, budget))
                if runs is None:
                    continue
                rows.append(
                    [
                        LABELS.get(method, method),
                        f"{budget:,}",
                        _spread([r.c2st for r in runs]),
                        _spread([r.rmse for r in runs]),
                        f"{max(r.simulations for r in runs):,}",
                        _spread([r.train_seconds for r in runs], 1),
                        _spread([r.sample_seconds for r in runs], 1),
                    ]
                )
        lines += _table(
            [
                "method",
                "budget",
                "C2ST",
                "RMSE",
                "simulations used",
                "train s",
                "sample s",
            ],
            rows,
        )
        lines += [""]
    lines += [FOOTNOTE, ""]
    page = output / "RESULTS.md"
    page.write_text("\n".join(lines))
    _plot(results, output)
    return page


class Paired(NamedTuple):
    r"""One method against the baseline in one task-budget cell, over the seeds
    both ran."""

    task: str
    budget: int
    seeds: int
    difference: float  #: mean C2ST of the method minus the baseline's
    standard_error: float  #: of that mean, from the seed-to-seed spread


def paired(results: Sequence[Result], method: str, baseline: str) -> list[Paired]:
    r"""The C2ST of `method` minus `baseline`'s, cell by cell, over the seeds both
    ran: the seed fixes the observation and the simulations' seed, so the
    difference cancels what the observation alone makes hard. Cells with no
    common seed are left out; with one, the standard error is NaN."""
    by_key = {(r.task, r.method, r.budget, r.seed): r.c2st for r in results}
    cells = dict.fromkeys((r.task, r.budget) for r in results if r.method == method)
    out = []
    for task, budget in cells:
        differences = [
            value - by_key[task, baseline, budget, seed]
            for (t, m, b, seed), value in by_key.items()
            if (t, m, b) == (task, method, budget)
            and (task, baseline, budget, seed) in by_key
            and not math.isnan(value)
        ]
        n = len(differences)
        if n == 0:
            continue
        mean = sum(differences) / n
        se = math.nan
        if n > 1:
            variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
            se = math.sqrt(variance / n)
        out.append(Paired(task, budget, n, mean, se))
    return out


def _paired_section(
    results: Sequence[Result], baseline: str, margin: float
) -> list[str]:
    r"""Per method, its mean C2ST difference to `baseline` over the cells, and
    the cells where it trails by more than `margin`: on the mean, and beyond
    two standard errors of it (a lead or lag the seeds cannot explain)."""
    _, methods, _ = _order(results)
    rows, cells = [], {}
    for method in methods:
        if method == baseline:
            continue
        pairs = paired(results, method, baseline)
        if not pairs:
            continue
        cells[method] = pairs
        mean = sum(p.difference for p in pairs) / len(pairs)
        behind = [p for p in pairs if p.difference > margin]
        clearly = [p for p in behind if p.difference - 2 * p.standard_error > margin]
        ahead = [p for p in pairs if p.difference + 2 * p.standard_error < 0]
        rows.append(
            [
                LABELS.get(method, method),
                str(len(pairs)),
                f"{mean:+.3f}",
                str(sum(p.difference < 0 for p in pairs)),
                str(len(ahead)),
                f"{len(behind)}: "
                + (", ".join(f"{p.task} @ {p.budget:,}" for p in behind) or "none"),
                str(len(clearly)),
            ]
        )
    lines = [
        f"## Against {baseline}, seed by seed",
        "",
        f"C2ST of the method minus {baseline}'s, on the same observations and "
        "seeds (negative: the method is closer to the reference). *behind*: "
        f"cells where the mean difference exceeds {margin}; *clearly behind*: "
        "where it exceeds it by two standard errors of the mean over seeds; "
        "*clearly ahead*: where the difference is below 0 by two standard "
        "errors.",
        "",
    ]
    lines += _table(
        [
            "method",
            "cells",
            "mean difference",
            "ahead",
            "clearly ahead",
            "behind",
            "clearly behind",
        ],
        rows,
    )
    for method, pairs in cells.items():
        lines += ["", f"{LABELS.get(method, method)} minus {baseline}, per cell:", ""]
        lines += _table(
            ["task", "budget", "seeds", "difference", "standard error"],
            [
                [p.task, f"{p.budget:,}", str(p.seeds), f"{p.difference:+.3f}",
                 "–" if math.isnan(p.standard_error) else f"{p.standard_error:.3f}"]
                for p in pairs
            ],
        )  # fmt: skip
    return [*lines, ""]


def _cell(runs: list[Result] | None, name: str) -> str:
    r"""The mean over seeds alone; a dash for no runs or no reference."""
    if runs is None:
        return "–"
    return _spread([getattr(run, name) for run in runs]).split(" ")[0]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _plot(results: Sequence[Result], output: Path) -> None:
    r"""One panel per task, budget on the x-axis, a line per method through the
    mean over seeds and a dot per seed."""
    tasks, methods, budgets = _order(results)
    groups = _group(results)
    colours = matplotlib.colormaps["tab10"]
    metrics = {
        "c2st": "C2ST (0.5 is best)",
        "rmse": "RMSE / prior sd",
        "seconds": "train + sample seconds",
    }
    for metric, label in metrics.items():
        columns = min(len(tasks), 3)
        rows = math.ceil(len(tasks) / columns)
        # A bare Figure draws to files without pyplot, so importing this
        # module never switches a notebook's backend.
        figure = Figure(figsize=(4.2 * columns, 3.4 * rows))
        axes = figure.subplots(rows, columns, squeeze=False)
        for ax, task in zip(axes.flat, tasks, strict=False):
            for i, method in enumerate(methods):
                points = [
                    (budget, _value(run, metric))
                    for budget in budgets
                    for run in groups.get((task, method, budget), [])
                    if not math.isnan(_value(run, metric))  # no reference
                ]
                if not points:
                    continue
                x, y = zip(*points, strict=True)
                means = [
                    (b, sum(v for a, v in points if a == b) / x.count(b))
                    for b in budgets
                    if b in x
                ]
                ax.plot(
                    *zip(*means, strict=True),
                    "-o",
                    color=colours(i),
                    ms=4,
                    label=LABELS.get(method, method),
                )
                ax.plot(x, y, ".", color=colours(i), alpha=0.4)
            reference = {r.seed: r.reference_rmse for r in results if r.task == task}
            if metric == "rmse" and not math.isnan(sum(reference.values())):
                ax.axhline(
                    sum(reference.values()) / len(reference),
                    color="k",
                    ls="--",
                    lw=1,
                    label="exact posterior mean",
                )
            if metric == "c2st":
                ax.set_ylim(0.45, 1.02)
            if metric == "seconds" and ax.has_data():
                ax.set_yscale("log")
            if not ax.has_data():
                ax.text(0.5, 0.5, "no reference", ha="center", transform=ax.transAxes)
            else:
                ax.set_xscale("log")
            ax.set_title(task)
            ax.set_xlabel("simulations")
            ax.set_ylabel(label)
        for ax in axes.flat[len(tasks) :]:
            ax.axis("off")
        handles, names = axes.flat[0].get_legend_handles_labels()
        if names:
            figure.legend(
                handles,
                names,
                loc="lower center",
                ncol=min(len(names), 5),
                frameon=False,
            )
        legend_rows = math.ceil(len(names) / 5)
        figure.tight_layout(rect=(0, 0.09 * legend_rows / rows, 1, 1))
        figure.savefig(output / f"{metric}.png", dpi=110)


def _value(result: Result, metric: str) -> float:
    if metric == "seconds":
        return result.train_seconds + result.sample_seconds
    return getattr(result, metric)
