"""Which classifier AALR should use by default: accuracy per training second of
candidate ratio classifiers, the sampler left out.

    python benchmarks/aalr_classifiers.py [--tasks ...] [--candidates ...]
        [--budgets 1000 10000] [--seeds 0 1] [--output DIR]

For each task, budget and seed, every candidate trains on the same simulations;
its network's own posterior of the task's observation is then drawn exactly, by
importance sampling of prior draws weighted by the learned ratio (the
benchmark's adaptive reference, with the network in place of the likelihood),
so no Markov chain is involved, and scored by C2ST against the task's reference
posterior. The candidates: `sbi`'s NRE_A (ReLU residual network of 50 hidden
features, sigmoid+BCE; `AALR(classifier="resnet")` trains the same network on
the same loss, so it is not run twice); AALR with the former default (a SiLU
MLP); with smooth residual networks (SiLU, ELU or GELU at sbi's width, SiLU at
128); ReLU's at 128 (the present default), also trained on batches of 50;
with BNRE's balancing penalty
(sbi's strength, 100) on a SiLU network and on the default;
as ensembles of 3; and, on the data-set tasks, trained on single points (the
factorized route). Rows go to `results.csv` as they are scored (a rerun
resumes); `README.md` tabulates mean C2ST and training seconds, and per
candidate the cells where it is no worse than NRE_A.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from sbi.inference import NRE_A
from sbi.neural_nets import classifier_nn
from sbi.utils.metrics import c2st

from sbi_alfi import AALR, RatioMCMCPosterior
from sbi_alfi.aalr import smooth_classifier
from sbi_alfi.benchmark import Task, make_task
from sbi_alfi.benchmark.report import machine
from sbi_alfi.benchmark.tasks import NUM_KERNELS, _Defensive

RESULTS = Path(__file__).parent / "results" / "classifiers"
TASKS = [
    "gaussian_linear",
    "slcp",
    "gaussian",
    "poisson",
    "weinberg",
    "sbibm_two_moons",
    "sbibm_slcp",
    "sbibm_gaussian_linear_uniform",
]
FIELDS = ["task", "budget", "seed", "candidate", "c2st", "train_seconds", "epochs"]


def _aalr(
    classifier=smooth_classifier,
    iid: bool = False,
    train_kwargs: dict | None = None,
    **kwargs,
):
    r"""An AALR candidate: its trainer (`train()` with `train_kwargs`), and
    whether it trains on single points."""

    def trainer(prior):
        inference = AALR(
            prior, classifier=classifier(), show_progress_bars=False, **kwargs
        )
        if train_kwargs:
            inference.train = functools.partial(inference.train, **train_kwargs)
        return inference

    return trainer, iid


#: name -> (trainer, whether it trains on single points of a data set)
CANDIDATES = {
    "nre_a": (lambda prior: NRE_A(prior, show_progress_bars=False), False),
    # the former default, named here so that the row stays what it says
    "aalr_mlp_silu": _aalr(lambda: smooth_classifier("mlp", 64, num_layers=3)),
    "aalr_resnet_silu": _aalr(),
    "aalr_resnet_elu": _aalr(lambda: smooth_classifier(activation="elu")),
    "aalr_resnet_gelu": _aalr(lambda: smooth_classifier(activation="gelu")),
    "aalr_resnet_silu_wide": _aalr(lambda: smooth_classifier(hidden_features=128)),
    # sbi's learning rate is 5e-4
    "aalr_resnet_silu_wide_lr1e-3": _aalr(
        lambda: smooth_classifier(hidden_features=128),
        train_kwargs={"learning_rate": 1e-3},
    ),
    "aalr_resnet_silu_wide_lr2e-3": _aalr(
        lambda: smooth_classifier(hidden_features=128),
        train_kwargs={"learning_rate": 2e-3},
    ),
    "aalr_resnet_relu_ensemble3": _aalr(lambda: "resnet", ensemble_size=3),
    "aalr_resnet_relu_wide": _aalr(
        lambda: classifier_nn("resnet", hidden_features=128)
    ),
    "aalr_resnet_silu_bnre": _aalr(regularization_strength=100.0),
    # the present default trained on batches of 50 (sbi's: 200)
    "aalr_resnet_relu_wide_batch50": _aalr(
        lambda: classifier_nn("resnet", hidden_features=128),
        train_kwargs={"training_batch_size": 50},
    ),
    # the present default with BNRE's balancing penalty
    "aalr_resnet_relu_wide_bnre": _aalr(
        lambda: classifier_nn("resnet", hidden_features=128),
        regularization_strength=100.0,
    ),
    "aalr_resnet_silu_ensemble3": _aalr(ensemble_size=3),
    "aalr_resnet_silu_iid": _aalr(iid=True),
}


def network_posterior(
    task: Task, net, x_o: torch.Tensor, iid: bool, reference: torch.Tensor
) -> torch.Tensor:
    """2,000 exact draws of the network's posterior of x_o: the benchmark's
    reference with the learned log-ratio as the likelihood. The first pass
    proposes from a kernel density, mixed with the prior, centred on draws of
    the task's reference and on a pilot MCMC run on the network (a 10-D
    posterior is too narrow for prior draws to find, and a network's posterior
    may sit away from the true one). The importance weights correct whatever
    the pilot got wrong, and the ESS check tells whether they could."""
    points = x_o.reshape(task.num_points, -1) if iid else x_o[None]

    @torch.no_grad()
    def log_ratio(theta: torch.Tensor, _x_o: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in theta.split(max(1, 200_000 // len(points))):
            n = len(points)
            value = net(chunk.repeat(n, 1), points.repeat_interleave(len(chunk), 0))
            out.append(value.reshape(n, len(chunk)).sum(0))
        return torch.cat(out)

    # The adaptive rounds reach the reference's ESS (10x the draws) from fewer
    # prior draws than the tasks' own references use; the network is the cost.
    proxy = Task(task.name, task.prior, task.simulator, log_ratio, 250_000)
    pilot = RatioMCMCPosterior(net, task.prior, show_progress_bars=False)
    pilot = pilot.sample((NUM_KERNELS // 2,), x=points).detach()
    centres = torch.cat([reference[: NUM_KERNELS // 2], pilot])
    proposal = _Defensive(centres, task.prior)
    return proxy.reference(x_o, num_samples=2_000, proposal=proposal)


def run(task: Task, budget: int, seed: int, candidate: str, reference, x_o):
    trainer, iid = CANDIDATES[candidate]
    torch.manual_seed(seed)
    theta = task.prior.sample((budget,))
    x = task.simulator(theta)
    torch.manual_seed(seed)
    inference = trainer(task.prior)
    start = time.perf_counter()
    if iid:
        inference.append_simulations(
            theta, x.reshape(budget, task.num_points, -1), iid=True
        )
    else:
        inference.append_simulations(theta, x)
    net = inference.train()
    seconds = time.perf_counter() - start
    net.eval()
    torch.manual_seed(seed)
    draws = network_posterior(task, net, x_o, iid, reference)
    score = c2st(draws, reference, seed=seed, classifier="mlp").item()
    epochs = inference._summary["epochs_trained"]
    return {
        "task": task.name,
        "budget": budget,
        "seed": seed,
        "candidate": candidate,
        "c2st": score,
        "train_seconds": seconds,
        "epochs": sum(epochs) if isinstance(epochs, list) else epochs,
    }


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as file:
        return list(csv.DictReader(file))


def write_page(rows: list[dict], output: Path, command: str, notes: str = "") -> Path:
    by = defaultdict(list)
    for row in rows:
        by[row["candidate"], row["task"], int(row["budget"])].append(row)
    candidates = [c for c in CANDIDATES if any(k[0] == c for k in by)]
    tasks = [t for t in TASKS if any(k[1] == t for k in by)]
    budgets = sorted({k[2] for k in by})

    def mean(values):
        values = [float(v) for v in values]
        return sum(values) / len(values) if values else math.nan

    lines = [
        "# AALR's classifier: accuracy per training second",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        f"- Machine: {machine()}; one torch thread.",
        "- Each candidate trains on the same simulations (sbi's training defaults: "
        "learning rate 5e-4, batches of 200, early stopping after 20 epochs). Its "
        "network's own posterior is drawn exactly (importance sampling, no MCMC) and "
        "scored by C2ST (MLP) against the task's reference posterior: 0.5 is exact.",
        "- `_iid` trains on the single points of the data-set tasks (the factorized "
        "route) and sums their log-ratios; it does not apply to the other tasks.",
        "",
    ]
    if notes:
        lines += [notes.strip(), ""]
    for budget in budgets:
        lines += [
            f"## {budget:,} simulations: mean C2ST over seeds (training seconds)",
            "",
            "| candidate | " + " | ".join(tasks) + " | mean |",
            "| --- " * (len(tasks) + 2) + "|",
        ]
        for c in candidates:
            cells, scores = [], []
            for t in tasks:
                got = by.get((c, t, budget), [])
                if not got:
                    cells.append("–")
                    continue
                score = mean(r["c2st"] for r in got)
                scores.append(score)
                seconds = mean(r["train_seconds"] for r in got)
                cells.append(f"{score:.3f} ({seconds:.0f} s)")
            overall = f"{mean(scores):.3f}" if len(scores) == len(tasks) else "–"
            lines.append(f"| `{c}` | " + " | ".join(cells) + f" | {overall} |")
        lines.append("")
    lines += [
        "## Against NRE_A's network, over every task and budget",
        "",
        "Only the seeds both ran count. Cells are (task, budget) pairs, each the "
        "mean over those seeds; 'no worse' is within 0.01 C2ST of NRE_A's or "
        "better.",
        "",
        "| candidate | cells | mean C2ST | NRE_A's mean, same runs | no worse "
        "| better | mean training s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    runs = {(r["candidate"], r["task"], int(r["budget"]), r["seed"]): r for r in rows}
    for c in candidates:
        cells = defaultdict(list)  # (task, budget) -> [(ours, theirs)]
        for (name, t, b, seed), r in runs.items():
            if name == c and ("nre_a", t, b, seed) in runs:
                cells[t, b].append((r, runs["nre_a", t, b, seed]))
        if not cells:
            continue
        ours = [mean(o["c2st"] for o, _ in pairs) for pairs in cells.values()]
        theirs = [mean(n["c2st"] for _, n in pairs) for pairs in cells.values()]
        no_worse = sum(o <= n + 0.01 for o, n in zip(ours, theirs, strict=True))
        better = sum(o < n for o, n in zip(ours, theirs, strict=True))
        seconds = mean(o["train_seconds"] for p in cells.values() for o, _ in p)
        lines.append(
            f"| `{c}` | {len(cells)} | {mean(ours):.3f} | {mean(theirs):.3f} | "
            f"{no_worse} | {better} | {seconds:.0f} |"
        )
    page = output / "README.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--budgets", nargs="+", type=int, default=[1_000, 10_000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--notes", type=Path, help="Markdown shown on the page")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "results.csv"
    if not args.report_only:
        done = {
            (r["task"], int(r["budget"]), int(r["seed"]), r["candidate"])
            for r in read(path)
        }
        for name in args.tasks:
            task = make_task(name)
            for seed in args.seeds:
                _, x_o = task.observation(seed)
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    reference = task.reference(
                        x_o, 2_000, cache=args.output / "references"
                    )
                for budget in args.budgets:
                    for candidate in args.candidates:
                        if CANDIDATES[candidate][1] and task.num_points == 1:
                            continue
                        if (name, budget, seed, candidate) in done:
                            continue
                        try:
                            row = run(task, budget, seed, candidate, reference, x_o)
                        except ValueError as error:  # a rerun tries it again
                            print(f"{name} {budget} {seed} {candidate}: {error}")
                            continue
                        print(row, flush=True)
                        new = not path.exists()
                        with path.open("a", newline="") as file:
                            writer = csv.DictWriter(file, FIELDS)
                            if new:
                                writer.writeheader()
                            writer.writerow(row)
    command = "python benchmarks/aalr_classifiers.py"
    notes = args.notes.read_text() if args.notes else ""
    print(write_page(read(path), args.output, command, notes))


if __name__ == "__main__":
    main()
