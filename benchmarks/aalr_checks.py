"""AALR's default on problems a user brings, beside sbi's NRE_A + slice sampling.

    python benchmarks/aalr_checks.py [--seeds 0 1] [--output DIR]

Three checks, each with AALR's defaults (`AALR(prior)`, `build_posterior()`) and
`sbi`'s `NRE_A` + `slice_np_vectorized` trained on the same simulations:

- Calibration (AALR only): the expected coverage of the posterior's
  highest-density regions on the 5-D Gaussian linear model (10,000
  simulations; 300 pairs from the joint), whose exact posterior is calibrated
  by construction. Reported: the largest gap from the diagonal, and the
  coverage at the 50, 80 and 95 % levels.
- `sbi`'s Gaussian-mixture toy problem: θ ~ U(-10, 10)², x ~ ½ N(θ, I) + ½
  N(θ, 0.01 I), 3,000 simulations; the exact posterior of x_o = 0 has a
  standard deviation of 0.711 per coordinate.
- A user's simulator: an Ornstein–Uhlenbeck process dX = κ(μ − X)dt + 0.5 dW
  (100 Euler steps of 0.1 from X₀ = 0), summarized by 10 statistics, with
  (κ, μ) ~ U([0.2, 3] × [-2, 2]); 3,000 simulations. No exact posterior:
  reported is the posterior standard deviation over the prior's (well below 1
  is learning) and the error of the posterior mean to the true θ.

`seconds` counts from the start of training: training, then the sampling of
each observation in turn. Writes `results.csv`, `README.md` and `coverage.png`
to DIR.
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from sbi.inference import NRE_A
from sbi.utils import BoxUniform

from sbi_alfi import AALR
from sbi_alfi.benchmark import make_task
from sbi_alfi.benchmark.report import machine
from sbi_alfi.diagnostics import expected_coverage

RESULTS = Path(__file__).parent / "results" / "aalr_checks"
METHODS = ("aalr", "nre_a_slice")


def train(method: str, prior, theta, x):
    """The method's posterior, trained on `(theta, x)`."""
    if method == "aalr":
        inference = AALR(prior, show_progress_bars=False)
        inference.append_simulations(theta, x).train()
        return inference.build_posterior(mcmc_parameters={"show_progress_bars": False})
    inference = NRE_A(prior, show_progress_bars=False)
    inference.append_simulations(theta, x).train()
    return inference.build_posterior(
        sample_with="mcmc", mcmc_method="slice_np_vectorized"
    )


def coverage_rows(seed: int) -> tuple[list[dict], dict]:
    task = make_task("gaussian_linear")
    torch.manual_seed(seed)
    theta = task.prior.sample((10_000,))
    x = task.simulator(theta)
    theta_star = task.prior.sample((300,))
    x_star = task.simulator(theta_star)
    rows, curves = [], {}
    # AALR's alone: sbi's slice sampler would run 300 observations one by one.
    for method in METHODS[:1]:
        torch.manual_seed(seed)
        start = time.perf_counter()
        posterior = train(method, task.prior, theta, x)
        coverage = expected_coverage(posterior, theta_star, x_star)
        seconds = time.perf_counter() - start
        curves[method] = coverage
        gap = (coverage.coverage - coverage.levels).abs().max().item()
        at = {
            f"coverage_{round(100 * p)}": coverage.coverage[
                (coverage.levels - p).abs().argmin()
            ].item()
            for p in (0.5, 0.8, 0.95)
        }
        rows.append(
            {
                "check": "coverage",
                "seed": seed,
                "method": method,
                "max_gap": gap,
                "seconds": seconds,
                **at,
            }
        )
    return rows, curves


def mixture_simulator(theta: torch.Tensor) -> torch.Tensor:
    scale = torch.where(torch.rand(len(theta), 1) < 0.5, 1.0, 0.1)
    return theta + scale * torch.randn_like(theta)


def ou_simulator(theta: torch.Tensor) -> torch.Tensor:
    """10 summaries of an Euler-discretized Ornstein–Uhlenbeck path."""
    kappa, mu = theta[:, :1], theta[:, 1:]
    dt, steps = 0.1, 100
    path = [torch.zeros(len(theta), 1)]
    for _ in range(steps):
        noise = 0.5 * dt**0.5 * torch.randn(len(theta), 1)
        path.append(path[-1] + kappa * (mu - path[-1]) * dt + noise)
    xs = torch.cat(path[1:], 1)
    centred = xs - xs.mean(1, keepdim=True)
    var = centred.square().mean(1)

    def acf(lag: int) -> torch.Tensor:
        return (centred[:, lag:] * centred[:, :-lag]).mean(1) / var

    quantiles = torch.quantile(xs, torch.tensor([0.1, 0.5, 0.9]), dim=1).T
    stats = [xs.mean(1), var.sqrt(), acf(1), acf(2), acf(5), xs[:, -1], xs[:, 49]]
    return torch.cat([torch.stack(stats, 1), quantiles], 1)


def spread_rows(name: str, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    if name == "mixture":
        prior = BoxUniform(-10 * torch.ones(2), 10 * torch.ones(2))
        simulator, observations = mixture_simulator, [torch.zeros(1, 2)]
        truths, exact_sd = [None], torch.full((2,), 0.5**0.5 * (1 + 0.01) ** 0.5)
    else:
        prior = BoxUniform(torch.tensor([0.2, -2.0]), torch.tensor([3.0, 2.0]))
        simulator, exact_sd = ou_simulator, None
        truths = [prior.sample((1,)) for _ in range(3)]
        observations = [simulator(t) for t in truths]
    theta = prior.sample((3_000,))
    x = simulator(theta)
    prior_sd = prior.sample((100_000,)).std(0)
    rows = []
    for method in METHODS:
        torch.manual_seed(seed)
        start = time.perf_counter()
        posterior = train(method, prior, theta, x)
        for i, (theta_o, x_o) in enumerate(zip(truths, observations, strict=True)):
            draws = posterior.sample((2_000,), x=x_o, show_progress_bars=False)
            sd = draws.std(0)
            row = {"check": name, "seed": seed, "observation": i, "method": method}
            for j in range(sd.numel()):
                row[f"sd_ratio_{j}"] = (sd[j] / prior_sd[j]).item()
                if exact_sd is not None:
                    row[f"sd_over_exact_{j}"] = (sd[j] / exact_sd[j]).item()
                if theta_o is not None:
                    error = (draws.mean(0)[j] - theta_o[0, j]).abs() / prior_sd[j]
                    row[f"error_{j}"] = error.item()
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
    return rows


def write_page(rows: list[dict], curves: dict, output: Path) -> Path:
    def fmt(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = [
        "# AALR's default on a user's problems",
        "",
        "Produced by `python benchmarks/aalr_checks.py`; the script's docstring "
        f"says what each check is. Machine: {machine()}.",
        "",
    ]
    for check, title in [
        ("coverage", "Expected coverage, 5-D Gaussian linear (calibrated: gap 0)"),
        ("mixture", "sbi's Gaussian mixture, x_o = 0 (exact sd ratio: 1)"),
        ("ou", "Ornstein–Uhlenbeck, (κ, μ) (prior sd ratio 1: nothing learned)"),
    ]:
        subset = [r for r in rows if r["check"] == check]
        if not subset:
            continue
        keys = [k for k in subset[0] if k != "check"]
        lines += [f"## {title}", "", "| " + " | ".join(keys) + " |"]
        lines.append("| --- " * len(keys) + "|")
        lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in subset]
        lines.append("")
    lines.append("![coverage](coverage.png)")
    page = output / "README.md"
    page.write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 4))
    for ax, (label, coverage) in zip(
        [axes] if len(curves) == 1 else axes, curves.items(), strict=True
    ):
        ax.fill_between(coverage.levels, coverage.lower, coverage.upper, alpha=0.3)
        ax.plot(coverage.levels, coverage.coverage, label="coverage")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(title=label, xlabel="credibility level", ylabel="expected coverage")
    fig.tight_layout()
    fig.savefig(output / "coverage.png", dpi=100)
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    args.output.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    for seed in args.seeds:
        new, seed_curves = coverage_rows(seed)
        curves.update({f"{m}, seed {seed}": c for m, c in seed_curves.items()})
        for name in ("mixture", "ou"):
            new += spread_rows(name, seed)
        for row in new:
            print(row, flush=True)
        rows += new
    keys = sorted({k for r in rows for k in r})
    with (args.output / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, keys)
        writer.writeheader()
        writer.writerows(rows)
    print(write_page(rows, curves, args.output))


if __name__ == "__main__":
    main()
