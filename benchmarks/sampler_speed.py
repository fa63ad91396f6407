"""Effective draws per second of every sampler on one trained ratio per task.

    python benchmarks/sampler_speed.py [--tasks ...] [--num-simulations 10000]
        [--num-samples 2000] [--repeats 3] [--seed 0] [--output DIR]

For each task (by default a 5-D Gaussian, SLCP with its 4 modes, sbibm's
crescent-shaped, bimodal two_moons, sbibm's SLCP and its 10-D
gaussian_linear_uniform), AALR's default is trained once; then every
RatioMCMCPosterior method and sbi's MCMCPosterior
(slice_np_vectorized at sbi's defaults, nuts_pyro with 4 chains) sample the
posterior of the same x_o on that network, one after another in this process.
Each run reports its wall time, the smallest effective sample size over
parameters, that ESS per second, and the C2ST of its draws against exact draws
of the same network's posterior (importance resampling from a defensive
mixture: half the prior, half a widened Gaussian fitted to a pilot SMC run).

The ESS is read the same way for every method: K / (nested R-hat^2 - 1) over
the run's K independent starts (sbi-alfi's superchains, sbi's and Pyro's
chains, SMC's islands), the between-start spread of the means against the
within; Pyro's bulk ESS of the chains is shown beside it where there are
chains. From 10 to 50 starts, one run's nested R-hat is a noisy figure (its ESS
varied 2-fold between seeds of one method), so the methods that take seconds
run `--repeats` times on other seeds and their starts are pooled: the ESS of
one run is the pooled one over the repeats, its time the mean. Pyro's methods,
which take minutes, run once. Writes results.csv, README.md and a plot to
benchmarks/results/sampler_speed/.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from sbi.inference import MCMCPosterior, ratio_estimator_based_potential
from sbi.utils.metrics import c2st

from sbi_alfi import AALR, RatioMCMCPosterior
from sbi_alfi.aalr.posterior import SUPERCHAIN_SIZE
from sbi_alfi.benchmark import make_task
from sbi_alfi.diagnostics import convergence, nested_ess
from sbi_alfi.samplers import DefensiveProposal, importance_resample

RESULTS = Path(__file__).parent / "results" / "sampler_speed"
TASKS = [
    "gaussian_linear",
    "slcp",
    "sbibm_two_moons",
    "sbibm_slcp",
    "sbibm_gaussian_linear_uniform",
]
OURS = ["hmc_vectorized", "mh_vectorized", "smc_vectorized", "hmc_pyro", "nuts_pyro"]
SBI = {"slice_np_vectorized": {}, "nuts_pyro": {"num_chains": 4}}
# Run once whatever --repeats says: they take minutes.
ONCE = {"hmc_pyro", "nuts_pyro"}


def network_reference(estimator, prior, x_o, num_samples):
    """Exact draws of the network's posterior, and the weights' ESS."""
    posterior = RatioMCMCPosterior(
        estimator, prior, "smc_vectorized", show_progress_bars=False
    )
    proposal = DefensiveProposal(prior, posterior.sample((4_000,), x=x_o))

    def log_density(theta):
        return posterior.potential(theta, x=x_o, track_gradients=False)

    # 200 proposals per draw left SLCP's 4 peaked modes an ESS of 7,997 for
    # 2,000 draws, 1,000 left sbibm's SLCP 14,116; 2,500 per draw.
    return importance_resample(
        log_density, proposal, num_samples, num_proposals=2_500 * num_samples
    )


def run_ours(estimator, prior, x_o, method, num_samples):
    posterior = RatioMCMCPosterior(
        estimator, prior, method=method, show_progress_bars=False
    )
    start = time.perf_counter()
    samples = posterior.sample((num_samples,), x=x_o)
    seconds = time.perf_counter() - start
    chains = posterior.chains
    if method == "smc_vectorized":  # (islands, particles, D), islands apart
        size, bulk = 1, math.nan
    else:
        size = SUPERCHAIN_SIZE if method.endswith("vectorized") else 1
        bulk = float(convergence(chains)[1].min())
    steps = posterior.diagnostics.get("num_steps")
    return {
        "samples": samples.detach(),
        "chains": chains,
        "superchain": size,
        "seconds": seconds,
        "bulk_ess": bulk,
        "starts": len(chains) // size,  # independent starts
        "leapfrog": float(steps) if steps is not None else math.nan,
    }


def run_sbi(estimator, prior, x_o, method, num_samples, settings):
    potential, transform = ratio_estimator_based_potential(estimator, prior, x_o)
    posterior = MCMCPosterior(
        potential, proposal=prior, theta_transform=transform, method=method, **settings
    )
    start = time.perf_counter()
    samples = posterior.sample((num_samples,), x=x_o, show_progress_bars=False)
    seconds = time.perf_counter() - start
    num_chains = posterior.num_chains
    if method == "slice_np_vectorized":  # concatenated chain after chain
        chains = samples.reshape(num_chains, -1, samples.shape[-1])
    else:
        chains = posterior._posterior_sampler.get_samples(group_by_chain=True)
        chains = transform.inv(next(iter(chains.values())))
    return {
        "samples": samples.detach(),
        "chains": chains,
        "superchain": 1,
        "seconds": seconds,
        "bulk_ess": float(convergence(chains)[1].min()),
        "starts": num_chains,
        "leapfrog": math.nan,
    }


def _pooled(results: list[dict], num_samples: int) -> dict:
    r"""One row for the repeats of a method: the ESS of one run read off all
    their starts pooled (the smallest over parameters, of the draws returned: a
    run that draws more than asked for, SMC's 4,000 particles at least, MCMC's
    10 draws per chain at least, is credited the returned share), the mean wall
    time and bulk ESS, and the first run's draws for the C2ST."""
    repeats = len(results)
    chains = torch.cat([r["chains"] for r in results])
    drawn = chains.shape[0] * chains.shape[1]
    ess = float(nested_ess(chains, results[0]["superchain"]).min())
    ess *= min(1.0, repeats * num_samples / drawn) / repeats

    def mean(key: str) -> float:
        return sum(r[key] for r in results) / repeats

    return {
        "samples": results[0]["samples"],
        "seconds": mean("seconds"),
        "ess": ess,
        "bulk_ess": mean("bulk_ess"),
        "starts": results[0]["starts"],
        "leapfrog": mean("leapfrog"),
        "repeats": repeats,
    }


FIELDS = [
    "task", "library", "method", "seconds", "ess", "ess_per_second", "bulk_ess",
    "starts", "leapfrog", "c2st", "x_slice", "train_seconds", "reference_ess",
    "repeats",
]  # fmt: skip


def measure(name: str, args) -> list[dict]:
    task = make_task(name)
    torch.manual_seed(args.seed)
    _, x_o = task.observation(args.seed)
    x_o = x_o[None]
    theta = task.prior.sample((args.num_simulations,))
    x = task.simulator(theta)
    start = time.perf_counter()
    estimator = (
        AALR(task.prior, show_progress_bars=False).append_simulations(theta, x).train()
    )
    train_seconds = time.perf_counter() - start
    n = args.num_samples
    reference, reference_ess = network_reference(estimator, task.prior, x_o, n)
    # The first sampling call in a process pays one-time set-up costs.
    run_ours(estimator, task.prior, x_o, "hmc_vectorized", 100)
    runs = [("sbi-alfi", method, run_ours, ()) for method in OURS]
    runs += [("sbi", method, run_sbi, (kw,)) for method, kw in SBI.items()]
    rows = []
    for library, method, runner, settings in runs:
        repeats = 1 if method in ONCE else args.repeats
        results = []
        for repeat in range(repeats):
            torch.manual_seed(args.seed + 1_000 * repeat)
            results.append(runner(estimator, task.prior, x_o, method, n, *settings))
        rows.append({"library": library, "method": method, **_pooled(results, n)})
    slice_rate = next(
        r["ess"] / r["seconds"] for r in rows if r["method"] == "slice_np_vectorized"
    )
    for row in rows:
        samples = row.pop("samples")
        row.update(
            task=name,
            ess_per_second=row["ess"] / row["seconds"],
            x_slice=row["ess"] / row["seconds"] / slice_rate,
            c2st=float(c2st(samples, reference, classifier="mlp")),
            train_seconds=train_seconds,
            reference_ess=float(reference_ess),
        )
        print({k: row[k] for k in FIELDS}, flush=True)
    return rows


def write(rows: list[dict], output: Path, args) -> None:
    with open(output / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, FIELDS)
        writer.writeheader()
        writer.writerows({k: row[k] for k in FIELDS} for row in rows)
    lines = [
        "# Sampler speed on one trained ratio per task",
        "",
        f"`python benchmarks/sampler_speed.py --seed {args.seed} --repeats "
        f"{args.repeats}` on "
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}: AALR's default trained on "
        f"{args.num_simulations:,} simulations per task, {args.num_samples} draws "
        "of the posterior of the task's observation (seed's) by each method in "
        "turn, in one process, each method but Pyro's `repeats` times on other "
        "seeds (wall s: the mean). ESS of one run: K / (nested R-hat² − 1) over "
        "the K independent starts of all repeats, divided by the repeats, the "
        "smallest over parameters, times the share of "
        "the draws made that are returned (SMC makes 4,000 at least); bulk ESS: "
        "Pyro's, of all draws made, "
        "of the chains. C2ST: MLP, against exact draws of the same network's "
        "posterior. × slice: ESS per second over sbi's slice_np_vectorized's.",
        "",
    ]
    for name in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == name]
        first = task_rows[0]
        lines += [
            f"## {name}",
            "",
            f"Training {first['train_seconds']:.0f} s; reference weights' ESS "
            f"{first['reference_ess']:,.0f}.",
            "",
            "| library | method | repeats | wall s | starts | ESS | ESS/s | × slice "
            "| bulk ESS | leapfrog steps / transition | C2ST |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in task_rows:
            lines.append(
                f"| {r['library']} | {r['method']} | {int(r['repeats'])} | "
                f"{r['seconds']:.1f} | "
                f"{int(r['starts'])} | {r['ess']:.0f} | {r['ess_per_second']:.1f} | "
                f"{r['x_slice']:.2f} | {_blank(r['bulk_ess'], '.0f')} | "
                f"{_blank(r['leapfrog'], '.1f')} | {r['c2st']:.3f} |"
            )
        lines.append("")
    lines.append("![ESS per second](ess_per_second.png)")
    notes = output / "notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    (output / "README.md").write_text("\n".join(lines) + "\n")

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    labels = list(dict.fromkeys(f"{r['library']} {r['method']}" for r in rows))
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [
            next(
                (
                    r["ess_per_second"]
                    for r in rows
                    if r["task"] == t and f"{r['library']} {r['method']}" == label
                ),
                math.nan,
            )
            for t in tasks
        ]
        ax.bar([j + i * width for j in range(len(tasks))], values, width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
    ax.set_yscale("log")
    ax.set_ylabel("min ESS per second")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(output / "ess_per_second.png", dpi=120)


def _blank(value: float, spec: str) -> str:
    return "" if math.isnan(value) else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--num-samples", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    rows = []  # a rerun keeps the other tasks' rows
    if (args.output / "results.csv").exists():
        with open(args.output / "results.csv") as file:
            for row in csv.DictReader(file):
                if row["task"] not in args.tasks:
                    rows.append(
                        {k: v if k in ("task", "library", "method") else float(v)
                         for k, v in row.items()}
                    )  # fmt: skip
    for name in args.tasks:
        rows += measure(name, args)
        write(rows, args.output, args)


if __name__ == "__main__":
    main()
