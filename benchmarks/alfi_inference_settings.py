"""ALFI's inference settings on one meta-trained machine: draws per step and an
average of the last steps' proposals, against the exact MLE.

    python benchmarks/alfi_inference_settings.py poisson gaussian laplace weinberg
    python benchmarks/alfi_inference_settings.py poisson --num-observations 100
    python benchmarks/alfi_inference_settings.py gaussian --max-num-epochs 24 \
        --output benchmarks/results/alfi_inference_24

Each problem's machine is meta-trained once with `alfi_paper.py`'s setting; the
same 200 held-out data sets are then inferred with M draws per step (20 as in
training, 64 as the paper's inference) and with the final proposal replaced by
the average of the last k proposals' (μ, log σ) (k = 1 is ψ_T). The ratio of
ALFI's mean (and median) squared error of E_q[θ] to the MLE's, per parameter
(Weinberg: the asymmetry A), is appended to results/alfi_inference/results.csv
and the table rewritten to results/alfi_inference/README.md.
"""

from __future__ import annotations

import argparse
import csv
import platform
from dataclasses import replace
from pathlib import Path

import torch
from alfi_paper import SETTINGS, run

from sbi_alfi.alfi.network import gaussian_proposal
from sbi_alfi.alfi.rollout import Z_MAX
from sbi_alfi.simulators import Weinberg

RESULTS = Path(__file__).parent / "results" / "alfi_inference"
VARIANTS = [(m, k) for m in (20, 64) for k in (1, 3, 5)]
FIELDS = [
    "problem",
    "n",
    "seed",
    "parameter",
    "M",
    "k",
    "mean_ratio",
    "median_ratio",
    "training_seconds",
]


def errors(problem, sim, theta, x, draws):
    r"""ALFI's errors E_q[θ] - θ* and the MLE's, per parameter (Weinberg: of A)."""
    if problem == "weinberg":
        truth = Weinberg.asymmetry(theta)
        alfi = {"A": Weinberg.asymmetry(draws).mean(0) - truth}
        return alfi, {"A": sim.asymmetry_mle(x) - truth}
    mle, estimate = sim.mle(x), draws.mean(0)
    alfi = {name: estimate[:, d] - theta[:, d] for d, name in enumerate(sim.names)}
    return alfi, {name: mle[:, d] - theta[:, d] for d, name in enumerate(sim.names)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("problems", nargs="+", choices=list(SETTINGS))
    parser.add_argument("--num-observations", type=int, default=500)
    parser.add_argument(
        "--max-num-epochs",
        type=int,
        help="meta-train this many epochs instead of the setting's (with "
        "another --output: the table does not name it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "results.csv"
    for problem in args.problems:
        setting = replace(SETTINGS[problem], num_observations=args.num_observations)
        if args.max_num_epochs:
            setting = replace(setting, max_num_epochs=args.max_num_epochs)
        result = run(problem, setting, 200, args.seed)
        sim, posterior, theta, x = (
            result[k] for k in ("sim", "posterior", "theta", "x")
        )
        new = []
        for m, k in VARIANTS:
            posterior.num_proposal_samples = m
            torch.manual_seed(args.seed + 1)
            psi = posterior._psi(x)  # (T + 1, B, 2D), the same runs for every k
            q = gaussian_proposal(psi[-k:].mean(0), posterior.machine.scale_calibration)
            draws = posterior.theta_transform.inv(
                q.sample((1_000,)).clamp(-Z_MAX, Z_MAX)
            )
            alfi, mle = errors(problem, sim, theta, x, draws)
            for name in alfi:
                se, se_mle = alfi[name].square(), mle[name].square()
                new.append(
                    {
                        "problem": problem,
                        "n": str(args.num_observations),
                        "seed": str(args.seed),
                        "parameter": name,
                        "M": str(m),
                        "k": str(k),
                        "mean_ratio": f"{se.mean() / se_mle.mean():.3f}",
                        "median_ratio": f"{se.median() / se_mle.median():.3f}",
                        "training_seconds": (
                            f"{result['timing']['training_seconds']:.0f}"
                        ),
                    }
                )
        # Read just before writing: several runs may share the file.
        rows = list(csv.DictReader(path.open())) if path.exists() else []
        rows = [
            r
            for r in rows
            if (r["problem"], r["n"], r["seed"])
            != (problem, str(args.num_observations), str(args.seed))
        ] + new
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    write(rows, args.output, args.max_num_epochs)


def write(rows: list[dict], output: Path, max_num_epochs: int | None = None) -> None:
    keys = sorted({(r["problem"], r["n"], r["seed"], r["parameter"]) for r in rows})
    header = " | ".join(f"M = {m}, k = {k}" for m, k in VARIANTS)
    lines = [
        "# ALFI's inference settings",
        "",
        "`python benchmarks/alfi_inference_settings.py <problems> "
        "[--num-observations N] [--seed S]"
        + (f" --max-num-epochs {max_num_epochs}" if max_num_epochs else "")
        + "`, on "
        f"{platform.machine()}, torch {torch.__version__}. Each cell: ALFI's mean "
        "squared error of E_q[θ] over the MLE's (median's ratio in brackets), 200 "
        "held-out data sets, one meta-trained machine per row's problem, n and "
        "seed; M draws per step at inference (trained with 20), the final "
        "proposal the average of the last k (k = 1: ψ_T).",
        "",
        f"| problem | n | seed | parameter | training s | {header} |",
        "| --- | --- | --- | --- | --- |" + " --- |" * len(VARIANTS),
    ]
    for key in keys:
        cells, seconds = [], "–"  # rows written before the seconds were kept
        for m, k in VARIANTS:
            (row,) = [
                r
                for r in rows
                if (r["problem"], r["n"], r["seed"], r["parameter"]) == key
                and (r["M"], r["k"]) == (str(m), str(k))
            ]
            seconds = row.get("training_seconds") or seconds
            cells.append(
                f"{float(row['mean_ratio']):.2f} ({float(row['median_ratio']):.2f})"
            )
        lines.append(f"| {' | '.join(key)} | {seconds} | {' | '.join(cells)} |")
    (output / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
