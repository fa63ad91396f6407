r"""Run the statistical tests under many seeds and tabulate how close each of their
figures came to its bound.

Every test marked `statistical` (those using the `figure` fixture of
`conftest.py`, and the doctests) runs once per seed, `pytest --seed-offset s`,
with its figures appended to a JSON-lines file. The table gives, per test and
figure, the bound, the worst and median figure over the seeds, the margin of the
worst to the bound, the seed-to-seed standard deviation and how many seeds
failed. Rows with a planted defect are the negative controls: figures that must
land beyond the bound of the check they control.

    python benchmarks/seed_sweep.py                      # 20 seeds, 2 at a time
    python benchmarks/seed_sweep.py --env ATEN_CPU_CAPABILITY=default \
        --output benchmarks/results/seeds-default-isa

A finished seed is not run again: rerun the command to resume after a stop.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from sbi_alfi.benchmark.report import machine

ROOT = Path(__file__).resolve().parents[1]
KEY = ("test", "figure", "planted", "op", "bound")


def run_seed(seed: int, runs: Path, env: dict[str, str], args) -> dict:
    r"""One pytest run of the statistical tests under `seed`; its summary."""
    summary_path = runs / f"seed-{seed}.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    figures = runs / f"figures-{seed}.jsonl"
    junit = runs / f"junit-{seed}.xml"
    figures.unlink(missing_ok=True)  # a run killed half-way starts again
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        args.marker,
        "-p",
        "no:cacheprovider",
        "-q",
        f"--seed-offset={seed}",
        f"--figures={figures}",
        f"--junitxml={junit}",
        *args.pytest_args,
    ]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    summary = {
        "seed": seed,
        "returncode": done.returncode,
        "failed": failed_tests(junit),
        "tail": done.stdout[-2000:],
    }
    if done.returncode not in (0, 1):  # 1: tests failed; otherwise pytest broke
        raise RuntimeError(f"pytest under seed {seed} ended with:\n{done.stdout}")
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def failed_tests(junit: Path) -> list[str]:
    r"""The ids of the tests that failed or erred, from pytest's JUnit XML."""
    failed = []
    for case in ElementTree.parse(junit).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    return failed


def read_figures(runs: Path, seeds: list[int]) -> list[dict]:
    rows = []
    for seed in seeds:
        with (runs / f"figures-{seed}.jsonl").open() as file:
            rows.extend(json.loads(line) for line in file)
    return rows


def tabulate(rows: list[dict]) -> list[dict]:
    r"""Per (test, figure, control, bound): the worst and median figure, the
    margin of the worst to the bound, the spread and the failures."""
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in KEY)].append(row["value"])
    table = []
    for (test, figure, planted, op, bound), values in groups.items():
        passing = [v <= bound if op == "<=" else v >= bound for v in values]
        worst = max(values) if op == "<=" else min(values)
        median = statistics.median(values)
        # A planted defect can give an infinite figure (nested R-hat of chains
        # that never moved): the spread is that of the finite ones.
        finite = [v for v in values if math.isfinite(v)]
        sd = statistics.stdev(finite) if len(finite) > 1 else math.nan
        margin = bound - worst if op == "<=" else worst - bound
        distance = bound - median if op == "<=" else median - bound
        table.append(
            {
                "test": test,
                "figure": figure,
                "planted": planted,
                "op": op,
                "bound": bound,
                "seeds": len(values),
                "worst": worst,
                "median": median,
                "margin": margin,
                "sd": sd,
                "z": distance / sd if sd > 0 else math.inf,
                "failures": passing.count(False),
            }
        )
    return table


def cell(text: str) -> str:
    return text.replace("|", "\\|")  # figures like |mean error| in a table


def number(value: float) -> str:
    if math.isinf(value):
        return "—"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.2e}"


def write_report(table, summaries, output: Path, args, env) -> Path:
    checks = [row for row in table if not row["planted"]]
    controls = [row for row in table if row["planted"]]
    failing = sorted({test for s in summaries for test in s["failed"]})
    lines = [
        "# Seed sweep of the statistical tests",
        "",
        "Produced by:",
        "",
        "```",
        shlex.join(["python", "benchmarks/seed_sweep.py", *sys.argv[1:]]),
        "```",
        "",
        f"- Seeds: {args.first} to {args.first + args.seeds - 1} "
        f"(`pytest -m '{args.marker}' --seed-offset s`).",
        f"- Machine: {machine()}; one torch thread per run, torch's "
        f"{cpu_capability(env)} CPU kernels.",
        f"- Environment set: {', '.join(args.env) or 'none'}.",
        f"- Date: {datetime.date.today().isoformat()}.",
        f"- Figures: {len(checks)} checks and {len(controls)} negative controls, "
        f"{sum(row['seeds'] for row in table)} values in all "
        "([figures.csv](figures.csv)).",
        f"- Tests that failed under some seed: {len(failing)}"
        + ("." if not failing else ":"),
        *[
            f"  - `{test}`: seeds "
            + ", ".join(str(s["seed"]) for s in summaries if test in s["failed"])
            for test in failing
        ],
        "",
        "How to read it. *worst* is the figure of the seed that came closest to "
        "the bound (or went past it); *margin* is how far that worst seed stayed "
        "inside (negative: it failed); *sd* is the spread of the figure over the "
        "seeds and *z* the distance from the median to the bound in those sds. "
        "A test that checks the figure on several targets (or parameters) in one "
        "run gives several values per seed. "
        "A p-value check (bound 0.001) fails with probability 0.001 by "
        "construction when the sampler is exact, whatever its z. A negative "
        "control carries the planted defect; it passes when its figure lands "
        "beyond the bound of the check it controls, so that the check fails on "
        "that defect.",
        "",
        "The tightest checks, each seed a dot (0 is the bound, 1 the median):",
        "",
        "![margins](margins.png)",
        "",
    ]
    for title, rows in (("Checks", checks), ("Negative controls", controls)):
        lines += [
            f"## {title}",
            "",
            "| test | figure | planted defect | bound | worst | median | margin "
            "| sd | z | fails / values |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in sorted(rows, key=lambda r: (r["test"], r["figure"])):
            test = row["test"].removeprefix("tests/")
            lines.append(
                f"| `{cell(test)}` | {cell(row['figure'])} | {row['planted']} "
                f"| {row['op']} {number(row['bound'])} | {number(row['worst'])} "
                f"| {number(row['median'])} | {number(row['margin'])} "
                f"| {number(row['sd'])} | {number(row['z'])} "
                f"| {row['failures']}/{row['seeds']} |"
            )
        lines.append("")
    page = output / "README.md"
    page.write_text("\n".join(lines))
    return page


def plot_margins(table, rows_by_key, output: Path, num_rows: int = 40) -> None:
    r"""A dot per seed for the `num_rows` checks whose median lies closest to the
    bound (in seed sds), on a scale where the bound is 0 and the median 1."""
    from matplotlib.figure import Figure

    checks = [r for r in table if not r["planted"] and math.isfinite(r["z"])]
    checks = sorted(checks, key=lambda r: r["z"])[:num_rows]
    figure = Figure(figsize=(8, 0.22 * len(checks) + 1.2))
    ax = figure.subplots()
    for i, row in enumerate(checks):
        values = rows_by_key[tuple(row[k] for k in KEY)]
        scale = row["median"] - row["bound"]
        x = [(v - row["bound"]) / scale for v in values]
        ax.plot(x, [i] * len(x), "o", ms=3, alpha=0.6, color="C0")
    ax.axvline(0, color="C3", lw=1, label="bound")
    ax.axvline(1, color="0.6", lw=0.8, ls="--", label="median")
    labels = [
        f"{r['test'].split('::')[-1][:55]}: {r['figure']} (z {r['z']:.1f})"
        for r in checks
    ]
    ax.set_yticks(range(len(checks)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("(figure − bound) / (median − bound)")
    ax.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(output / "margins.png", dpi=130)


def cpu_capability(env: dict[str, str]) -> str:
    r"""The SIMD code path torch takes in the runs' environment."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="How many seeds.")
    parser.add_argument("--first", type=int, default=0, help="The first seed.")
    parser.add_argument("--jobs", type=int, default=2, help="Seeds run at once.")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks/results/seeds"
    )
    parser.add_argument(
        "--marker",
        default="statistical and not slow",
        help="The tests to run, as a pytest -m expression.",
    )
    parser.add_argument(
        "--env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="Environment variables of the runs, e.g. ATEN_CPU_CAPABILITY=default.",
    )
    parser.add_argument(
        "pytest_args", nargs="*", help="Further pytest arguments, after --."
    )
    args = parser.parse_args(argv)
    output = args.output
    runs = output / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(item.split("=", 1) for item in args.env)
    seeds = list(range(args.first, args.first + args.seeds))
    with ThreadPoolExecutor(args.jobs) as pool:
        summaries = list(
            tqdm(
                pool.map(lambda s: run_seed(s, runs, env, args), seeds),
                total=len(seeds),
                desc="Seeds",
            )
        )
    rows = read_figures(runs, seeds)
    with (output / "figures.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, [*KEY, "seed", "value"])
        writer.writeheader()
        writer.writerows(rows)
    table = tabulate(rows)
    rows_by_key = defaultdict(list)
    for row in rows:
        rows_by_key[tuple(row[k] for k in KEY)].append(row["value"])
    plot_margins(table, rows_by_key, output)
    page = write_report(table, summaries, output, args, env)
    print(f"{page}: {len(table)} figures over {len(seeds)} seeds")
    return page


if __name__ == "__main__":
    main()
