"""ALFI in the regime it is made for, next to `sbi`'s amortized NPE.

    python benchmarks/alfi_vs_npe.py gaussian                       # n = 100
    python benchmarks/alfi_vs_npe.py poisson --num-observations 500

Both methods are trained once and then applied to 200 new data sets of n i.i.d.
points each. ALFI meta-trains with `benchmarks/alfi_paper.py`'s setting and
calls the simulator again for every new data set (T x M x K simulations); NPE
(`sbi`'s, a MAF) reads the whole data set through `sbi`'s
`PermutationInvariantEmbedding` (a per-point MLP, mean-pooled) and calls no
simulator at inference. NPE's training set is sized so that its training takes
about as long as ALFI's meta-training (`--npe-sets`): both get the same
wall-clock budget; the simulations each spent are counted and reported, since
at equal *simulations* an amortized optimizer that simulates at every step
cannot compete. Accuracy is the RMSE of the posterior mean to θ*, beside the
exact MLE's on the same data, and the coverage of θ* by the central 50/80/95 %
intervals of each posterior. Writes results/alfi_vs_npe/<problem>_n<N>.md
(<problem>_n<N>_sets<S>.md with --npe-sets S).
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from alfi_paper import SETTINGS, SIMULATORS, coverage, run
from sbi.inference import NPE
from sbi.neural_nets import posterior_nn
from sbi.neural_nets.embedding_nets import FCEmbedding, PermutationInvariantEmbedding

RESULTS = Path(__file__).parent / "results" / "alfi_vs_npe"


class Counted:
    """Counts the rows a simulator is called on."""

    def __init__(self, simulator):
        self.simulator = simulator
        self.rows = 0

    def __call__(self, theta):
        self.rows += theta.shape[:-1].numel()  # a batch of data sets too
        return self.simulator(theta)

    def __getattr__(self, name):  # the prior, the MLE, the names
        return getattr(self.simulator, name)


# What a user of NPE would also try: counts spanning orders of magnitude read
# on a log scale (ALFI's encoder reads their ranks among the training data).
TRANSFORMS = {"poisson": ("log1p(x)", torch.log1p)}


def train_npe(sim, num_sets: int, n: int, seed: int, transform=None):
    torch.manual_seed(seed)
    theta = sim.prior.sample((num_sets,))
    x = sim(theta.unsqueeze(1).expand(-1, n, -1))  # (N, n, 1)
    if transform is not None:
        x = transform(x)
    embedding = PermutationInvariantEmbedding(
        FCEmbedding(x.shape[-1], output_dim=32, num_hiddens=64, num_layers=2),
        trial_net_output_dim=32,
        aggregation_fn="mean",
        output_dim=32,
    )
    estimator = posterior_nn("maf", embedding_net=embedding)  # x z-scored
    inference = NPE(sim.prior, density_estimator=estimator, show_progress_bars=False)
    start = time.perf_counter()
    inference.append_simulations(theta, x).train()
    seconds = time.perf_counter() - start
    return inference.build_posterior(), seconds, num_sets * n


def summarize(name, draws, theta, mle, sim, seconds, sims_train, sims_each, ms):
    estimate = draws.mean(0)
    rmse = (estimate - theta).square().mean(0).sqrt()
    mle_rmse = (mle - theta).square().mean(0).sqrt()
    rows = []
    shares = coverage(draws, theta)
    for d, parameter in enumerate(sim.names):
        covered = " / ".join(f"{c:.2f}" for c in shares[d])
        rows.append(
            f"| {name} | {parameter} | {rmse[d]:.3g} | {rmse[d] / mle_rmse[d]:.2f} | "
            f"{covered} | {seconds:.0f} | {sims_train:,} | "
            f"{sims_each:,} | {ms:.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("problem", choices=["poisson", "gaussian", "laplace"])
    parser.add_argument("--num-observations", type=int, default=100)
    parser.add_argument(
        "--npe-sets",
        type=int,
        help="NPE's training data sets (default: 20,000 at n = 100, 4,000 at n = 500)",
    )
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    n = args.num_observations
    npe_sets = args.npe_sets or {100: 20_000, 500: 4_000}.get(n, 10_000)

    sim = SIMULATORS[args.problem]()
    counted = Counted(sim)
    setting = replace(SETTINGS[args.problem], num_observations=n)
    alfi = run(args.problem, setting, args.num_test, args.seed, sim=counted)
    theta, x = alfi["theta"], alfi["x"]
    per_set = alfi["timing"]["simulations_per_inference"]
    # Neither the held-out data sets nor the inference on them are training.
    alfi_train = counted.rows - args.num_test * (n + per_set)
    mle = sim.mle(x)
    rows = summarize(
        "ALFI",
        alfi["samples"],
        theta,
        mle,
        sim,
        alfi["timing"]["training_seconds"],
        alfi_train,
        per_set,
        alfi["timing"]["latency_with_simulator_ms"],
    )

    variants = [("NPE", None)]
    if args.problem in TRANSFORMS:
        label, transform = TRANSFORMS[args.problem]
        variants.append((f"NPE on {label}", transform))
    for name, transform in variants:
        posterior, seconds, npe_train = train_npe(
            sim, npe_sets, n, args.seed, transform
        )
        start = time.perf_counter()
        x_in = x if transform is None else transform(x)
        draws = posterior.sample_batched((1_000,), x_in, show_progress_bars=False)
        ms = 1e3 * (time.perf_counter() - start) / len(x)
        rows += summarize(name, draws, theta, mle, sim, seconds, npe_train, 0, ms)

    lines = [
        f"# ALFI and NPE, amortized over data sets: {args.problem}, n = {n}",
        "",
        f"`python benchmarks/alfi_vs_npe.py {args.problem} --num-observations {n}"
        + (f" --npe-sets {args.npe_sets}" if args.npe_sets else "")
        + "` "
        f"(seed {args.seed}), on {platform.machine()} with "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{args.num_test} held-out θ* from the prior. ALFI: T = {setting.num_steps}, "
        f"M = {setting.num_proposal_samples}, K = "
        f"{setting.num_simulations_per_sample}, {setting.num_tasks:,} tasks x "
        f"{setting.max_num_epochs} epochs. NPE: a MAF on {npe_sets:,} data sets "
        "through `sbi`'s `PermutationInvariantEmbedding` (a per-point MLP, mean "
        "pooling), x z-scored, `sbi`'s default training (early stopping).",
        "",
        "| method | parameter | RMSE of the posterior mean | RMSE / MLE's | "
        "coverage 50 / 80 / 95 % | training s | simulations in training | "
        "simulations per new data set | ms per new data set |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "The MLE's RMSE: "
        + ", ".join(
            f"{name} {value:.3g}"
            for name, value in zip(
                sim.names, (mle - theta).square().mean(0).sqrt(), strict=True
            )
        )
        + ". A simulation is one point of a data set.",
    ]
    args.output.mkdir(parents=True, exist_ok=True)
    name = f"{args.problem}_n{n}" + (f"_sets{args.npe_sets}" if args.npe_sets else "")
    (args.output / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
