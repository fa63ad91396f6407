"""AALR's default on problems a user brings, beside sbi's NRE_A + slice sampling.

    python benchmarks/aalr_checks.py [--seeds 0 1] [--checks ...] [--pairs N]
        [--output DIR] [--report-only]

Three checks, each with AALR's defaults (`AALR(prior)`, `build_posterior()`) and
`sbi`'s `NRE_A` + `slice_np_vectorized` trained on the same simulations:

- Calibration (AALR only): the expected coverage of the posterior's
  highest-density regions on the 5-D Gaussian linear model (10,000
  simulations; `--pairs` pairs from the joint, 1,000 by default), whose exact
  posterior is calibrated by construction. Reported: the largest gap from the
  diagonal, and the coverage at the 50, 80 and 95 % levels. A finite set of
  pairs strays from the diagonal by itself (at 300 pairs, one binomial sd is
  0.029 at the 50 % level), so the exact posterior's coverage on the same
  pairs is reported beside AALR's (`exact`: its credibility is a chi-square
  quantile) as the noise floor, and the `pooled` rows join every seed's pairs.
- The same coverage of each network's own posterior (`networks`, no sampler:
  self-normalized importance sampling from the exact posterior widened twice),
  for AALR's default network (batches of 50), the same on `sbi`'s batches of
  200, and on those: NRE_A's (AALR with `classifier="resnet"`), the default
  network with BNRE's balancing penalty (strength 100) and an ensemble of 3
  (`--networks` picks), all trained on the coverage check's simulations:
  whether a miss is the ratio's or the sampler's, and what fixes it.
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
import json
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from sbi.inference import NRE_A
from sbi.utils import BoxUniform
from scipy.stats import chi2

from sbi_alfi import AALR
from sbi_alfi.benchmark import make_task
from sbi_alfi.benchmark.report import machine
from sbi_alfi.diagnostics import expected_coverage

RESULTS = Path(__file__).parent / "results" / "aalr_checks"
METHODS = ("aalr", "nre_a_slice")
#: AALR's sampled posteriors whose coverage the `coverage` check can measure:
#: name -> the sampler (`aalr`: HMC, the default until SMC replaced it).
AALR_SAMPLERS = {"aalr": "hmc_vectorized", "aalr_smc": "smc_vectorized"}
CHECKS = ("coverage", "networks", "mixture", "ou")
#: The page's first columns, in this order; `seconds` comes last.
COLUMNS = ("seed", "observation", "method", "pairs", "max_gap")
#: The networks whose own posteriors' coverage the `networks` check measures:
#: name -> (AALR's arguments, `train`'s arguments).
SBI_BATCH = {"training_batch_size": 200}  # sbi's default, AALR's former
NETWORKS = {
    "aalr_network": ({}, {}),
    # The same on sbi's batches of 200: AALR's default until they were measured
    # here.
    "aalr_batch200_network": ({}, SBI_BATCH),
    "nre_a_network": ({"classifier": "resnet"}, SBI_BATCH),
    "aalr_bnre_network": ({"regularization_strength": 100.0}, SBI_BATCH),
    "aalr_ensemble3_network": ({"ensemble_size": 3}, SBI_BATCH),
}


def train(method: str, prior, theta, x):
    """The method's posterior, trained on `(theta, x)`."""
    if method in AALR_SAMPLERS:
        inference = AALR(prior, show_progress_bars=False)
        inference.append_simulations(theta, x).train()
        return inference.build_posterior(
            mcmc_method=AALR_SAMPLERS[method],
            mcmc_parameters={"show_progress_bars": False},
        )
    inference = NRE_A(prior, show_progress_bars=False)
    inference.append_simulations(theta, x).train()
    return inference.build_posterior(
        sample_with="mcmc", mcmc_method="slice_np_vectorized"
    )


LEVELS = torch.linspace(0, 1, 51)[1:-1]


def coverage_row(
    seed, method: str, credibility: torch.Tensor, seconds, check: str = "coverage"
) -> dict:
    """The coverage figures of the per-pair `credibility` levels."""
    coverage = (credibility[None, :] <= LEVELS[:, None]).double().mean(1)
    at = {
        f"coverage_{round(100 * p)}": coverage[(LEVELS - p).abs().argmin()].item()
        for p in (0.5, 0.8, 0.95)
    }
    return {
        "check": check,
        "seed": seed,
        "method": method,
        "pairs": len(credibility),
        "max_gap": (coverage - LEVELS).abs().max().item(),
        "seconds": seconds,
        **at,
    }


def coverage_problem(seed: int, pairs: int):
    """The coverage check's task, simulations and pairs of `seed`."""
    task = make_task("gaussian_linear")
    torch.manual_seed(seed)
    theta = task.prior.sample((10_000,))
    x = task.simulator(theta)
    theta_star = task.prior.sample((pairs,))
    return task, theta, x, theta_star, task.simulator(theta_star)


def coverage_rows(seed: int, pairs: int, methods=("aalr",)) -> list[dict]:
    task, theta, x, theta_star, x_star = coverage_problem(seed, pairs)
    # The exact posterior is N(m, v I): θ*'s credibility is the chi-square
    # quantile of its squared Mahalanobis distance.
    exact = task.posterior(x_star)
    distance = (theta_star - exact.mean).square().sum(-1) / exact.variance[:, 0]
    credibility = torch.as_tensor(chi2.cdf(distance.numpy(), theta.shape[1]))
    rows = [coverage_row(seed, "exact", credibility.float(), 0.0)]
    # AALR's alone: sbi's slice sampler would run the observations one by one.
    for method in methods:
        torch.manual_seed(seed)
        start = time.perf_counter()
        posterior = train(method, task.prior, theta, x)
        coverage = expected_coverage(posterior, theta_star, x_star, levels=LEVELS)
        seconds = time.perf_counter() - start
        rows.append(coverage_row(seed, method, coverage.credibility, seconds))
        rows[-1]["credibility"] = coverage.credibility.tolist()
    rows[0]["credibility"] = credibility.tolist()
    return rows


@torch.no_grad()
def network_credibility(
    net, task, theta_star: torch.Tensor, x_star: torch.Tensor, num_draws: int = 4_000
) -> torch.Tensor:
    r"""Each pair's credibility under the network's own posterior,
    :math:`\hat p(\theta \mid x) \propto \hat r(x \mid \theta) p(\theta)`, with
    no Markov chain: the posterior mass of densities above :math:`\theta^*`'s,
    by self-normalized importance sampling from the exact posterior widened
    twice (the network's posterior lies close to it, so the weights stay even)."""
    exact = task.posterior(x_star)
    mean, sd = exact.mean, 2 * exact.variance.sqrt()
    levels = []
    for i in range(len(theta_star)):
        proposal = torch.distributions.Normal(mean[i], sd[i])
        draws = proposal.sample((num_draws,))
        points = torch.cat([draws, theta_star[i : i + 1]])
        log_density = net(points, x_star[i].expand(len(points), -1)).reshape(-1)
        log_density = log_density + task.prior.log_prob(points)
        weights = torch.softmax(
            log_density[:-1] - proposal.log_prob(draws).sum(-1), dim=0
        )
        levels.append(weights[log_density[:-1] > log_density[-1]].sum())
    return torch.stack(levels)


def network_rows(seed: int, pairs: int, networks=tuple(NETWORKS)) -> list[dict]:
    """The coverage of each of `networks`' own posteriors (names in
    `NETWORKS`), trained on the coverage check's simulations: the ratio's
    error, without the sampler's."""
    task, theta, x, theta_star, x_star = coverage_problem(seed, pairs)
    rows = []
    for method in networks:
        kwargs, train_kwargs = NETWORKS[method]
        torch.manual_seed(seed)
        start = time.perf_counter()
        inference = AALR(task.prior, show_progress_bars=False, **kwargs)
        net = inference.append_simulations(theta, x).train(**train_kwargs)
        net.eval()
        credibility = network_credibility(net, task, theta_star, x_star)
        seconds = time.perf_counter() - start
        rows.append(coverage_row(seed, method, credibility, seconds, "networks"))
        rows[-1]["credibility"] = credibility.tolist()
    return rows


def pooled_rows(rows: list[dict], credibility: dict[str, list]) -> list[dict]:
    """Per method, the coverage of every seed's pairs together (`credibility`
    maps "seed/method" to the levels of that run's pairs)."""
    pooled = []
    coverage = [r for r in rows if r["check"] in ("coverage", "networks")]
    for check, method in dict.fromkeys((r["check"], r["method"]) for r in coverage):
        subset = [
            r
            for r in coverage
            if r["method"] == method and f"{r['seed']}/{method}" in credibility
        ]
        if not subset:
            continue
        levels = [c for r in subset for c in credibility[f"{r['seed']}/{method}"]]
        seconds = sum(r["seconds"] for r in subset)
        pooled.append(
            coverage_row("pooled", method, torch.tensor(levels), seconds, check)
        )
    return pooled


def number(value: str) -> int | float | str:
    """A CSV field as the number it was written from, when it is one."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


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


def write_page(rows: list[dict], credibility: dict, output: Path) -> Path:
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
        ("networks", "The same, of each network's own posterior (no sampler)"),
        ("mixture", "sbi's Gaussian mixture, x_o = 0 (exact sd ratio: 1)"),
        ("ou", "Ornstein–Uhlenbeck, (κ, μ) (prior sd ratio 1: nothing learned)"),
    ]:
        subset = [r for r in rows if r["check"] == check]
        if not subset:
            continue
        present = dict.fromkeys(k for r in subset for k in r if k != "check")
        first = [k for k in COLUMNS if k in present]
        keys = first + [k for k in present if k not in first and k != "seconds"]
        keys += ["seconds"] if "seconds" in present else []
        lines += [f"## {title}", "", "| " + " | ".join(keys) + " |"]
        lines.append("| --- " * len(keys) + "|")
        lines += [
            "| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in subset
        ]
        lines.append("")
    lines.append("![coverage](coverage.png)")
    page = output / "README.md"
    page.write_text("\n".join(lines) + "\n")
    # Coverage minus level, each seed thin, all seeds' pairs together thick: the
    # exact posterior's curves show how far a calibrated one strays.
    methods = list(dict.fromkeys(key.split("/")[1] for key in credibility))
    cols = min(3, len(methods))
    grid = -(-len(methods) // cols)
    fig, axes = plt.subplots(grid, cols, figsize=(4 * cols, 3.5 * grid), squeeze=False)
    for ax in axes.flat[len(methods) :]:
        ax.axis("off")
    for ax, method in zip(axes.flat, methods, strict=False):
        runs = {k: v for k, v in credibility.items() if k.endswith(f"/{method}")}
        pooled = [c for levels in runs.values() for c in levels]
        for key, levels in [*runs.items(), ("pooled", pooled)]:
            gap = (torch.tensor(levels)[None] <= LEVELS[:, None]).double().mean(1)
            ax.plot(
                LEVELS,
                gap - LEVELS,
                lw=2.5 if key == "pooled" else 1,
                label=key.split("/")[0] if key != "pooled" else "all seeds",
            )
        ax.axhline(0, color="k", lw=1)
        for bound in (-0.05, 0.05):
            ax.axhline(bound, color="k", lw=1, ls="--")
        ax.set(
            title=method,
            xlabel="credibility level",
            ylabel="coverage - level",
            ylim=(-0.12, 0.12),
        )
        ax.legend(fontsize="small", title="seed")
    fig.tight_layout()
    fig.savefig(output / "coverage.png", dpi=100)
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--checks",
        nargs="+",
        choices=CHECKS,
        default=list(CHECKS),
        help="the checks to run; the others' rows are kept from DIR/results.csv",
    )
    parser.add_argument("--pairs", type=int, default=1_000)
    parser.add_argument(
        "--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS)
    )
    parser.add_argument(
        "--coverage-methods",
        nargs="+",
        choices=list(AALR_SAMPLERS),
        default=["aalr"],
        help="AALR's sampled posteriors the coverage check measures",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the page from DIR alone"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    args.output.mkdir(parents=True, exist_ok=True)
    results = args.output / "results.csv"
    store = args.output / "credibility.json"
    credibility = json.loads(store.read_text()) if store.exists() else {}
    rows = []
    if results.exists():
        with results.open() as file:
            rows = [
                {k: number(v) for k, v in r.items() if v != ""}
                for r in csv.DictReader(file)
                if r["seed"] != "pooled"
                and (
                    args.report_only
                    or not (
                        r["check"] in args.checks
                        and int(r["seed"]) in args.seeds
                        and (r["check"] != "networks" or r["method"] in args.networks)
                        and (
                            r["check"] != "coverage"
                            or r["method"] in ("exact", *args.coverage_methods)
                        )
                    )
                )
            ]
    for seed in [] if args.report_only else args.seeds:
        new = []
        if "coverage" in args.checks:
            new = coverage_rows(seed, args.pairs, args.coverage_methods)
        if "networks" in args.checks:
            new += network_rows(seed, args.pairs, args.networks)
        for name in ("mixture", "ou"):
            if name in args.checks:
                new += spread_rows(name, seed)
        for row in new:
            if "credibility" in row:
                levels = row.pop("credibility")  # 4 decimals: 1/num_posterior_samples
                credibility[f"{seed}/{row['method']}"] = [round(c, 4) for c in levels]
            print(row, flush=True)
        rows += new
    store.write_text(json.dumps(credibility))
    rows.sort(key=lambda r: (CHECKS.index(r["check"]), r["seed"]))
    rows += pooled_rows(rows, credibility)
    keys = sorted({k for r in rows for k in r})
    with results.open("w", newline="") as file:
        writer = csv.DictWriter(file, keys)
        writer.writeheader()
        writer.writerows(rows)
    print(write_page(rows, credibility, args.output))


if __name__ == "__main__":
    main()
