"""Where the samplers' time goes on one trained ratio network per task.

    python benchmarks/mcmc_speed.py [--tasks gaussian_linear slcp]
        [--num-samples 2000] [--seed 0] [--output DIR]

For each task (by default the 5-D Gaussian and SLCP with its 4 modes), AALR's
default is trained once on 10,000 simulations; then the vectorized methods
(hmc_vectorized, mh_vectorized and the default smc_vectorized) and sbi's
slice_np_vectorized sample the posterior of the same x_o, each with the
network wrapped so that its forward and backward passes are timed. Each row
gives the wall time, the share of it spent in the network, the effective draws
and their rate as `sampler_speed.py` reads them (K / (nested R-hat^2 - 1) over
the K independent starts), and the C2ST against exact draws of the network's
posterior. Then sample_batched on 20 observations against 20 sample calls,
with the default method. Last, with no network, a planted 4-mode mixture with
weights 0.1/0.2/0.3/0.4 (the exact ratio of a Gaussian mixture in a box) is
sampled by the three vectorized methods under `--mixture-seeds` seeds: each
mode's share of the draws against its weight, the C2ST against exact draws,
the wall time. `sampler_speed.py` compares every method, Pyro's included, on 4
tasks; this page says what the time is spent on. Last, the default
classifier's cost per row (forward pass, 5-D θ and x, untrained: the cost
does not depend on the weights) at 1,000 to 80,000 rows a call, which sets
`CPU_ROWS_PER_CALL`. Writes README.md, results.csv, mixture.csv, rows.csv and
a plot to benchmarks/results/mcmc/; `--parts` reruns some parts and keeps the
others' rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from sampler_speed import _pooled, network_reference, run_ours, run_sbi
from sbi.utils import BoxUniform
from sbi.utils.metrics import c2st
from torch.distributions import Normal

from sbi_alfi import AALR, RatioMCMCPosterior
from sbi_alfi.benchmark import make_task

RESULTS = Path(__file__).parent / "results" / "mcmc"
TASKS = ["gaussian_linear", "slcp"]
OURS = ["smc_vectorized", "hmc_vectorized", "mh_vectorized"]
FIELDS = [
    "task", "library", "method", "seconds", "network_share", "ess",
    "ess_per_second", "x_slice", "c2st", "mode_share_error",
]  # fmt: skip


def slcp_mode_shares(theta: torch.Tensor) -> torch.Tensor:
    r"""The shares of SLCP's four modes (the signs of θ3 and θ4) in `theta`."""
    mode = 2 * (theta[:, 2] > 0).long() + (theta[:, 3] > 0).long()
    return mode.bincount(minlength=4) / len(theta)


# The planted mixture: 4 modes of sd 0.15 in [-3, 3]^2, unequal weights.
CENTRES = torch.tensor([[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]])
WEIGHTS = torch.tensor([0.1, 0.2, 0.3, 0.4])
MODE_SD = 0.15
MIXTURE_FIELDS = ["seed", "method", "seconds", "max_share_error", "c2st"]


def mixture_log_ratio(theta, x):
    r"""The mixture's density over the uniform prior's (1/36): the exact ratio,
    which integrates to 1 over the prior."""
    log_p = Normal(CENTRES[:, None], MODE_SD).log_prob(theta[None]).sum(-1)
    return (log_p + WEIGHTS.log()[:, None]).logsumexp(0) + math.log(36)


def mixture_rows(seeds: list[int], num_samples: int) -> list[dict]:
    prior = BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
    rows = []
    for seed in seeds:
        for method in OURS:
            torch.manual_seed(seed)
            posterior = RatioMCMCPosterior(
                mixture_log_ratio, prior, method, show_progress_bars=False
            )
            start = time.perf_counter()
            draws = posterior.sample((num_samples,), x=torch.zeros(2))
            seconds = time.perf_counter() - start
            # Exact draws: the modes lie 10 sds inside the box.
            mode = torch.multinomial(WEIGHTS, num_samples, replacement=True)
            exact = CENTRES[mode] + MODE_SD * torch.randn(num_samples, 2)
            nearest = (draws[:, None] - CENTRES).norm(dim=-1).argmin(1)
            shares = nearest.bincount(minlength=4) / num_samples
            row = {
                "seed": seed,
                "method": method,
                "seconds": seconds,
                "max_share_error": float((shares - WEIGHTS).abs().max()),
                "c2st": float(c2st(draws, exact, classifier="mlp")),
            }
            print(row, flush=True)
            rows.append(row)
    return rows


ROW_COUNTS = [1_000, 4_000, 16_384, 40_000, 80_000]


@torch.no_grad()
def row_costs() -> list[dict]:
    r"""Nanoseconds per row of the default classifier's forward pass, by rows a
    call (median of 20 calls after one to warm up)."""
    from sbi_alfi.aalr.inference import default_classifier

    theta, x = torch.randn(1_000, 5), torch.randn(1_000, 5)
    net = default_classifier()(theta, x).eval()
    rows = []
    for count in ROW_COUNTS:
        theta, x = torch.randn(count, 5), torch.randn(count, 5)
        net(theta, x)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            net(theta, x)
            times.append(time.perf_counter() - start)
        rows.append({"rows": count, "ns_per_row": 1e9 * sorted(times)[10] / count})
        print(rows[-1], flush=True)
    return rows


class TimedEstimator(torch.nn.Module):
    """The estimator, timing its forward passes and, through hooks on its output
    and its input, the backward passes autograd runs through it."""

    def __init__(self, estimator):
        super().__init__()
        self.estimator = estimator
        self.seconds = 0.0

    def forward(self, theta, x):
        start = time.perf_counter()
        out = self.estimator(theta, x)
        self.seconds += time.perf_counter() - start
        if out.requires_grad and theta.requires_grad:
            out.register_hook(self._start_backward)
            theta.register_hook(self._end_backward)
        return out

    def _start_backward(self, grad):
        self._backward_start = time.perf_counter()
        return grad

    def _end_backward(self, grad):
        self.seconds += time.perf_counter() - self._backward_start
        return grad


def measure(name: str, args) -> tuple[list[dict], dict]:
    task = make_task(name)
    torch.manual_seed(args.seed)
    _, x_o = task.observation(args.seed)
    x_o = x_o[None]
    theta = task.prior.sample((10_000,))
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
    rows = []
    for library, method in [("sbi-alfi", m) for m in OURS] + [
        ("sbi", "slice_np_vectorized")
    ]:
        timed = TimedEstimator(estimator)
        if library == "sbi":
            row = run_sbi(timed, task.prior, x_o, method, n, {})
        else:
            row = run_ours(timed, task.prior, x_o, method, n)
        row = _pooled([row], n)  # one run: its own starts
        row["network_share"] = timed.seconds / row["seconds"]
        rows.append({"task": name, "library": library, "method": method, **row})
    slice_rate = rows[-1]["ess"] / rows[-1]["seconds"]
    for row in rows:
        samples = row.pop("samples")
        row.update(
            ess_per_second=row["ess"] / row["seconds"],
            x_slice=row["ess"] / row["seconds"] / slice_rate,
            c2st=float(c2st(samples, reference, classifier="mlp")),
            mode_share_error=float(
                (slcp_mode_shares(samples) - slcp_mode_shares(reference)).abs().max()
            )
            if name == "slcp"
            else math.nan,
        )
        print({k: row[k] for k in FIELDS}, flush=True)

    # Many observations: one batch against one call each, the default method.
    batch_x = task.simulator(task.prior.sample((20,)))
    posterior = RatioMCMCPosterior(estimator, task.prior, show_progress_bars=False)
    start = time.perf_counter()
    posterior.sample_batched((1_000,), batch_x)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for x_b in batch_x:
        posterior.sample((1_000,), x=x_b[None])
    separate = time.perf_counter() - start
    info = {
        "train_seconds": train_seconds,
        "reference_ess": float(reference_ess),
        "batched": batched,
        "separate": separate,
    }
    return rows, info


def write(
    rows: list[dict],
    infos: dict,
    mixture: list[dict],
    costs: list[dict],
    output: Path,
    args,
) -> None:
    for name, fields, table in [
        ("results.csv", FIELDS, rows),
        ("mixture.csv", MIXTURE_FIELDS, mixture),
        ("rows.csv", ["rows", "ns_per_row"], costs),
    ]:
        with open(output / name, "w", newline="") as file:
            writer = csv.DictWriter(file, fields)
            writer.writeheader()
            writer.writerows({k: row[k] for k in fields} for row in table)
    lines = [
        "# Where the samplers' time goes",
        "",
        f"`python benchmarks/mcmc_speed.py --seed {args.seed}` on "
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}: AALR's default trained on 10,000 simulations per "
        f"task, {args.num_samples} draws of the posterior of the task's "
        "observation by each method at its defaults, in turn, in one process. "
        "Network: the share of the wall time in the network's forward and "
        "backward passes. ESS: K / (nested R-hat² − 1) over the run's K "
        "independent starts, the smallest over parameters, times the share of "
        "the draws made that are returned, as in "
        "[sampler_speed](../sampler_speed/README.md), which compares every "
        "method, Pyro's included, on 4 tasks. C2ST: MLP, against exact draws of "
        "the same network's posterior. × slice: ESS per second over sbi's "
        "slice_np_vectorized's. Mode shares (SLCP): the largest |share of one "
        "of the 4 modes (signs of θ3, θ4) in the draws − its share in the exact "
        "draws|; two sets of 2,000 exact draws differ by about 0.014 per mode "
        "(sd), so this reads to about ±0.03.",
        "",
    ]
    for name, info in infos.items():
        lines += [
            f"## {name}",
            "",
            f"Training {info['train_seconds']:.0f} s; reference weights' ESS "
            f"{info['reference_ess']:,.0f}.",
            "",
            "| library | method | wall s | network | ESS | ESS/s | × slice | C2ST "
            "| mode shares |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in (r for r in rows if r["task"] == name):
            lines.append(
                f"| {r['library']} | {r['method']} | {r['seconds']:.2f} | "
                f"{100 * r['network_share']:.0f} % | {r['ess']:.0f} | "
                f"{r['ess_per_second']:.1f} | {r['x_slice']:.2f} | {r['c2st']:.3f} | "
                + (
                    "–"
                    if math.isnan(float(r.get("mode_share_error", "nan") or "nan"))
                    else f"{float(r['mode_share_error']):.3f}"
                )
                + " |"
            )
        lines += [
            "",
            f"sample_batched on 20 observations (1,000 draws each, the default "
            f"method): {info['batched']:.1f} s; 20 sample calls: "
            f"{info['separate']:.1f} s ({info['separate'] / info['batched']:.1f}× "
            "longer).",
            "",
        ]
    lines.append("![wall time and network share](time_share.png)")
    if mixture:
        seeds = sorted({int(r["seed"]) for r in mixture})
        lines += [
            "",
            "## A planted 4-mode mixture",
            "",
            f"Weights 0.1/0.2/0.3/0.4, modes of sd {MODE_SD} in [-3, 3]², the exact "
            f"ratio (no network); {args.num_samples} draws by each method at its "
            f"defaults, seeds {seeds[0]}–{seeds[-1]}. Share error: the largest "
            "|share of the draws nearest a mode − its weight| of a run. Exact "
            "i.i.d. draws of this size have a median share error of 0.012 and "
            "exceed 0.03 in 1 % of runs (multinomial).",
            "",
            "| method | runs | share error, median | share error, max | "
            "runs over 0.03 | C2ST, median | C2ST, max | wall s, median |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for method in OURS:
            m = [r for r in mixture if r["method"] == method]
            error = torch.tensor([r["max_share_error"] for r in m])
            score = torch.tensor([r["c2st"] for r in m])
            seconds = torch.tensor([r["seconds"] for r in m])
            lines.append(
                f"| {method} | {len(m)} | {error.median():.3f} | {error.max():.3f} "
                f"| {int((error > 0.03).sum())} | {score.median():.3f} | "
                f"{score.max():.3f} | {seconds.median():.2f} |"
            )
    if costs:
        lines += [
            "",
            "## The network's cost per row",
            "",
            "AALR's default classifier (`sbi`'s residual network, 128 hidden "
            "features), forward pass on 5-D θ and x, median of 20 calls:",
            "",
            "| rows a call | ns per row |",
            "| --- | --- |",
            *(f"| {r['rows']:,.0f} | {r['ns_per_row']:.0f} |" for r in costs),
        ]
    notes = output / "notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    (output / "README.md").write_text("\n".join(lines) + "\n")

    if not infos:
        return
    fig, axes = plt.subplots(1, len(infos), figsize=(5 * len(infos), 4), squeeze=False)
    for ax, name in zip(axes[0], infos, strict=True):
        task_rows = [r for r in rows if r["task"] == name]
        labels = [f"{r['library']}\n{r['method']}" for r in task_rows]
        total = [r["seconds"] for r in task_rows]
        network = [r["seconds"] * r["network_share"] for r in task_rows]
        ax.bar(labels, total, color="C7", label="rest")
        ax.bar(labels, network, color="C0", label="network passes")
        ax.set_yscale("log")
        ax.set_ylabel("wall seconds")
        ax.set_title(name)
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output / "time_share.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--num-samples", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixture-seeds", type=int, default=20)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["tasks", "mixture", "rows"],
        default=["tasks", "mixture", "rows"],
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    rows, infos, mixture, costs = [], {}, [], []
    if "tasks" not in args.parts:  # the tasks' rows and notes of the last run
        rows, infos = _read_tasks(args.output)
    if "mixture" not in args.parts and (args.output / "mixture.csv").exists():
        mixture = _read(args.output / "mixture.csv")
    if "rows" not in args.parts and (args.output / "rows.csv").exists():
        costs = _read(args.output / "rows.csv")
    if "tasks" in args.parts:
        for name in args.tasks:
            task_rows, infos[name] = measure(name, args)
            rows += task_rows
            write(rows, infos, mixture, costs, args.output, args)
        (args.output / "infos.json").write_text(json.dumps(infos))
    if "mixture" in args.parts:
        mixture = mixture_rows(list(range(args.mixture_seeds)), args.num_samples)
    if "rows" in args.parts:
        costs = row_costs()
    write(rows, infos, mixture, costs, args.output, args)


def _read(path: Path) -> list[dict]:
    with open(path) as file:
        return [
            {k: v if k in ("task", "library", "method") else
             int(v) if k in ("seed", "rows") else float(v)
             for k, v in row.items()}
            for row in csv.DictReader(file)
        ]  # fmt: skip


def _read_tasks(output: Path) -> tuple[list[dict], dict]:
    if not (output / "results.csv").exists():
        return [], {}
    return _read(output / "results.csv"), json.loads(
        (output / "infos.json").read_text()
    )


if __name__ == "__main__":
    main()
