"""ALFI's inference settings on one meta-trained machine: simulations per step
and an average of the last steps' proposals, against the exact MLE.

    python benchmarks/alfi_inference_settings.py poisson gaussian laplace weinberg
    python benchmarks/alfi_inference_settings.py poisson --num-observations 100
    python benchmarks/alfi_inference_settings.py gaussian --max-num-epochs 24 \
        --output benchmarks/results/alfi_inference_24

Each problem's machine is meta-trained once with `alfi_paper.py`'s setting; the
same 200 (`--num-test`) held-out data sets are then inferred with six settings
of (M draws per step, K simulations per draw, the final proposal the average
of the last k proposals' (μ, log σ)):

- training: the meta-training's M and K, and ψ_T alone (k = 1);
- K / 2 and 2K: the default with half and twice its K;
- default: `ALFI.inference_settings()`, what `build_posterior()` runs;
- default's points by M: as many simulated points per step as the default,
  as more draws (M) of the training's K;
- k = 5: the default before it averaged 8 proposals, its final proposal the
  average of the last 5 (a third of the steps, at most 5);
- Gaussian: the default's settings, read out by the calibrated Gaussian.

With `--readout flow` (`ALFI.train(readout="flow")`), every setting but the
last reads out by the read-out flow; by default, all by the Gaussian.

The ratio of ALFI's mean (and median) squared error of E_q[θ] to the MLE's, per
parameter (Weinberg: the asymmetry A), is appended to results.csv in the output
folder and the table rewritten to its README.md.
"""

from __future__ import annotations

import argparse
import csv
import platform
from dataclasses import replace
from pathlib import Path

import torch
from alfi_paper import LEVELS, SETTINGS, coverage, run

from sbi_alfi.simulators import Weinberg

RESULTS = Path(__file__).parent / "results" / "alfi_inference"
VARIANTS = (
    "training",
    "K / 2",
    "default",
    "2K",
    "default's points by M",
    "k = 5",
    "Gaussian",
)
FIELDS = [
    "problem",
    "n",
    "seed",
    "parameter",
    "variant",
    "M",
    "K",
    "k",
    "mean_ratio",
    "median_ratio",
    "coverage",
    "training_seconds",
]


def targets(problem, sim, theta, x, draws):
    r"""Per reported parameter (Weinberg: the asymmetry A): ALFI's draws
    `(S, B)`, θ* `(B,)` and the MLE `(B,)`."""
    if problem == "weinberg":
        a = Weinberg.asymmetry
        return {"A": (a(draws), a(theta), sim.asymmetry_mle(x))}
    mle = sim.mle(x)
    return {
        name: (draws[..., d], theta[:, d], mle[:, d])
        for d, name in enumerate(sim.names)
    }


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
    parser.add_argument(
        "--readout",
        choices=["gaussian", "flow"],
        default="gaussian",
        help="train(readout=...): the default posterior's read-out (with "
        "another --output: the table names it)",
    )
    parser.add_argument(
        "--num-test",
        type=int,
        default=200,
        help="held-out data sets (with another --output: the table states it)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="infer with these settings only (the others' cells stay empty)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "results.csv"
    for problem in args.problems:
        setting = replace(
            SETTINGS[problem],
            num_observations=args.num_observations,
            readout=args.readout,
        )
        if args.max_num_epochs:
            setting = replace(setting, max_num_epochs=args.max_num_epochs)
        result = run(problem, setting, args.num_test, args.seed)
        sim, posterior, theta, x = (
            result[k] for k in ("sim", "posterior", "theta", "x")
        )
        m, k, a = (
            posterior.num_proposal_samples,
            posterior.num_simulations_per_sample,
            posterior.num_averaged_steps,
        )
        default_readout = posterior.readout
        reads_flow = default_readout == "flow"
        settings = {
            "Gaussian": (m, k, a),
            "training": (
                setting.num_proposal_samples,
                setting.num_simulations_per_sample,
                1,
            ),
            "K / 2": (m, -(-k // 2), a),
            "default": (m, k, a),
            "2K": (m, 2 * k, a),
            # The previous default: fewer of the last proposals averaged.
            "k = 5": (m, k, min(5, -(-posterior.num_steps // 3))),
            # As many points per step as the default, but as more draws of the
            # training's K points each: the noise of each draw's embedding is
            # then the one the machine was trained on.
            "default's points by M": (
                -(-m * k // setting.num_simulations_per_sample),
                setting.num_simulations_per_sample,
                a,
            ),
        }
        new = []
        # With the Gaussian read-out as the default, "Gaussian" repeats it.
        for variant in [v for v in args.variants if v != "Gaussian" or reads_flow]:
            m, k, a = settings[variant]
            posterior.readout = "gaussian" if variant == "Gaussian" else default_readout
            posterior.num_proposal_samples = m
            posterior.num_simulations_per_sample = k
            posterior.num_averaged_steps = a
            torch.manual_seed(args.seed + 1)
            draws = posterior.sample_batched((1_000,), x)
            found = targets(problem, sim, theta, x, draws)
            for name, (d, t, mle) in found.items():
                se, se_mle = (d.mean(0) - t).square(), (mle - t).square()
                covered = coverage(d.unsqueeze(-1), t.unsqueeze(-1))[0]
                new.append(
                    {
                        "problem": problem,
                        "n": str(args.num_observations),
                        "seed": str(args.seed),
                        "parameter": name,
                        "variant": variant,
                        "M": str(m),
                        "K": str(k),
                        "k": str(a),
                        "mean_ratio": f"{se.mean() / se_mle.mean():.3f}",
                        "median_ratio": f"{se.median() / se_mle.median():.3f}",
                        "coverage": "/".join(f"{c:.2f}" for c in covered),
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
    variants = args.variants if args.variants != list(VARIANTS) else None
    write(rows, args.output, args.max_num_epochs, args.num_test, args.readout, variants)


def write(
    rows: list[dict],
    output: Path,
    max_num_epochs: int | None = None,
    num_test: int = 200,
    readout: str = "gaussian",
    variants: list[str] | None = None,
) -> None:
    keys = sorted({(r["problem"], r["n"], r["seed"], r["parameter"]) for r in rows})
    lines = [
        "# ALFI's inference settings",
        "",
        "`python benchmarks/alfi_inference_settings.py <problems> "
        "[--num-observations N] [--seed S]"
        + (f" --max-num-epochs {max_num_epochs}" if max_num_epochs else "")
        + (f" --num-test {num_test}" if num_test != 200 else "")
        + (f" --readout {readout}" if readout != "gaussian" else "")
        + (" --variants " + " ".join(f"'{v}'" for v in variants) if variants else "")
        + "`, on "
        f"{platform.machine()}, torch {torch.__version__}. Each cell: ALFI's mean "
        "squared error of E_q[θ] over the MLE's (median's ratio in brackets), "
        f"{num_test:,} held-out data sets, one meta-trained machine per row's "
        "problem, n and seed. Settings (M draws per step, K simulations per draw, "
        "the last k proposals averaged): training, the meta-training's M and K "
        "with ψ_T alone; default, `build_posterior()`'s (its M, K, k in the "
        "column); K / 2 and 2K, the default with half and twice its K; "
        "default's points by M, its M K points as more draws of the training's "
        "K; k = 5, the default averaging its last 5 proposals (the default before "
        "it averaged 8); Gaussian, the default's settings read out by the "
        "calibrated Gaussian (with `--readout flow`, the others read out by the "
        "flow). Coverage: the "
        "share of θ* inside the default posterior's central intervals "
        "(quantiles of its draws).",
        "",
        "| problem | n | seed | parameter | training s | default M, K, k | "
        + " | ".join(VARIANTS)
        + " | default's coverage at "
        + "/".join(f"{level:.0%}" for level in LEVELS)
        + " |",
        "| --- | --- | --- | --- | --- | --- |" + " --- |" * (len(VARIANTS) + 1),
    ]
    for key in keys:
        cells, default, covered = [], "—", "—"
        for variant in VARIANTS:
            found = [
                r
                for r in rows
                if (r["problem"], r["n"], r["seed"], r["parameter"]) == key
                and r["variant"] == variant
            ]
            if not found:  # added after the row was measured, or not run
                cells.append("—")
                continue
            (row,) = found
            if variant == "default":
                default = f"{row['M']}, {row['K']}, {row['k']}"
                covered = row["coverage"]
            cells.append(
                f"{float(row['mean_ratio']):.2f} ({float(row['median_ratio']):.2f})"
            )
        seconds = row["training_seconds"]
        lines.append(
            f"| {' | '.join(key)} | {seconds} | {default} | {' | '.join(cells)} "
            f"| {covered} |"
        )
    lines += across_seeds(rows)
    (output / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def across_seeds(rows: list[dict]) -> list[str]:
    r"""The default setting's ratios at each seed (each seed meta-trains its
    own machine and draws its own held-out data sets) and their average, for
    the rows measured at more than one seed."""
    groups: dict[tuple[str, str, str], dict[str, list[dict]]] = {}
    for r in rows:
        key = (r["problem"], r["n"], r["parameter"])
        groups.setdefault(key, {}).setdefault(r["variant"], []).append(r)
    groups = {k: v for k, v in sorted(groups.items()) if len(v.get("default", [])) > 1}
    if not groups:
        return []
    # Beside the default: the Gaussian read-out where measured (`--readout
    # flow`), else k = 5, the default before 8 proposals were averaged.
    compared = "Gaussian" if any(r["variant"] == "Gaussian" for r in rows) else "k = 5"
    previous = {
        "Gaussian": "the calibrated Gaussian read-out",
        "k = 5": "k = 5 (the previous default)",
    }[compared]
    lines = [
        "",
        "## The default across seeds",
        "",
        "Each seed meta-trains its own machine and draws its own held-out data "
        "sets: the spread is the default's, not one machine's. The last column "
        f"averages {previous} over the same seeds' machines and data sets.",
        "",
        "| problem | n | parameter | seeds | mean ratio per seed | average | "
        f"median ratio per seed | average | {compared}'s average |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, variants in groups.items():
        group = sorted(variants["default"], key=lambda r: int(r["seed"]))
        cells = []
        for field in ("mean_ratio", "median_ratio"):
            values = [float(r[field]) for r in group]
            cells.append(", ".join(f"{v:.2f}" for v in values))
            cells.append(f"{sum(values) / len(values):.2f}")
        measured = {r["seed"] for r in group}
        other = [r for r in variants.get(compared, []) if r["seed"] in measured]
        if len(other) == len(group):
            mean, median = (
                sum(float(r[field]) for r in other) / len(other)
                for field in ("mean_ratio", "median_ratio")
            )
            cells.append(f"{mean:.2f} ({median:.2f})")
        else:
            cells.append("—")
        seeds = ", ".join(r["seed"] for r in group)
        lines.append(f"| {' | '.join(key)} | {seeds} | {' | '.join(cells)} |")
    return lines


if __name__ == "__main__":
    main()
