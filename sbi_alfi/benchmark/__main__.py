r"""`python -m sbi_alfi.benchmark`: methods x tasks x budgets x seeds to a CSV, a
Markdown page and plots.

Examples:
    A quick run (minutes)::

        python -m sbi_alfi.benchmark --tasks gaussian_linear --budgets 1000 \
            --seeds 0 --methods npe aalr_hmc_vectorized alfi

    The full run (hours), resumable: rerun the same command after a stop::

        python -m sbi_alfi.benchmark --output benchmarks/results/comparison
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .methods import METHODS
from .report import write_report
from .run import run_benchmark
from .tasks import TASKS


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sbi_alfi.benchmark",
        description=(
            "Compare sbi-alfi's methods with sbi's on tasks with exact reference "
            "posteriors. Results go to OUTPUT: results.csv (one row per run, "
            "resumed by a rerun), RESULTS.md and plots."
        ),
    )
    parser.add_argument("--output", default="benchmark-results", help="the folder")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=list(TASKS),
        choices=list(TASKS),
        metavar="TASK",
        help=f"the tasks (default: all of {', '.join(TASKS)})",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=list(METHODS),
        metavar="METHOD",
        help=f"the methods (default: all of {', '.join(METHODS)})",
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=int,
        default=[1_000, 10_000],
        help="simulation budgets (default: 1000 10000)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1], help="seeds (default: 0 1)"
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=2_000,
        help="posterior draws per run and per reference (default: 2000)",
    )
    parser.add_argument(
        "--cache",
        default=None,
        help="the folder of cached references (default: OUTPUT/references)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar and no warnings"
    )
    parser.add_argument(
        "--engine",
        default=None,
        help="where the training simulations run: a number of local processes, "
        "'joblib', 'dask' (a local cluster) or 'ray' (default: this process)",
    )
    parser.add_argument(
        "--notes",
        default=None,
        help="a Markdown file whose text the page shows under the command",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    with warnings.catch_warnings():
        if args.quiet:
            warnings.simplefilter("ignore")
        results = run_benchmark(
            args.output,
            tasks=args.tasks,
            methods=args.methods,
            budgets=args.budgets,
            seeds=args.seeds,
            num_samples=args.num_samples,
            cache=args.cache,
            show_progress_bars=not args.quiet,
            engine=int(args.engine) if (args.engine or "").isdigit() else args.engine,
        )
    page = write_report(
        results,
        args.output,
        command=shlex.join(["python", "-m", "sbi_alfi.benchmark", *argv]),
        notes=None if args.notes is None else Path(args.notes).read_text(),
    )
    print(f"Wrote {page} and the results and plots beside it.")


if __name__ == "__main__":
    main()
