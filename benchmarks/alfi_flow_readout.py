"""Whether a flow over ALFI's final Gaussian could read Weinberg's A past the
Gaussian family's limit, and what it would have to be trained on.

    python benchmarks/alfi_flow_readout.py [--num-test 1000] [--seed 0]

At n = 500 the best diagonal Gaussian over z = t(θ) reads A at 1.18 times the
MLE's squared error (`alfi_gaussian_ceiling.py`), ALFI's machine at 1.22-1.24;
the exact posterior at 0.98. This asks whether a read-out that keeps the
machine and adds a shape, a conditional flow r(u | ψ) over the standardized
residual u = (z - μ) / σ given the final Gaussian ψ = (μ, log σ), could close
the gap, and on what contexts it must be trained.

The contexts are the exact posterior's moment-matched diagonal Gaussians (the
optimum of ALFI's loss), with the machine's error imitated by noise: μ moved by
`noise` times σ, independently for the flow's training and test sets. The
Gaussian's own read-out from the same noisy context sits beside each flow's:
the noise at which it reads 1.22-1.24 is the machine's at inference
(`alfi_inference_settings.py`); its meta-training rollouts (M = K = 20, ψ_T),
1.6-2.0 times the MLE's at n = 500, are noisier. The flow is the package's
`ReadoutFlow` (zuko's NSF, 3 transforms, 64 hidden) with its default fit, the
NLL of u* for 1,000 steps of 128 data sets.

Each row: E[A] under the flow's and the Gaussian's draws (4,000 per data set),
mean (median) squared error over the exact MLE's with bootstrap 90 %
intervals, and the share of A* in the flow's central 50/80/95 % intervals.
Writes README.md and results.csv to benchmarks/results/alfi_flow_readout/.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import torch
from alfi_gaussian_ceiling import exact_grid, posterior_moments, ratios, shares
from alfi_paper import coverage
from sbi.utils import mcmc_transform
from torch import Tensor

from sbi_alfi.alfi import ReadoutFlow
from sbi_alfi.simulators import Weinberg

RESULTS = Path(__file__).parent / "results" / "alfi_flow_readout"
DRAWS = 4_000
# (training contexts' noise, test contexts' noise, training tasks): the
# optimum's contexts; test noise as the machine's at inference, training noise
# from none to its meta-training rollouts'; and the tasks a fit at inference's
# settings could afford (200, the calibration's held-out tasks, up to 2,000).
CONDITIONS = (
    (0.0, 0.0, 2_000),
    (0.1, 0.1, 2_000),
    (0.25, 0.1, 2_000),
    (1.0, 0.1, 2_000),
    (0.1, 0.1, 800),
    (0.1, 0.1, 200),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-test", type=int, default=1_000)
    parser.add_argument("--num-observations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    sim, n = Weinberg(), args.num_observations
    transform = mcmc_transform(sim.prior)
    grid, a_grid, log_prior = exact_grid(sim, transform)

    num_train = max(c[2] for c in CONDITIONS)
    total = num_train + args.num_test
    theta_star = sim.prior.sample((total,))
    x = sim(theta_star.repeat_interleave(n, 0)).reshape(total, n, 1)
    moments = [
        posterior_moments(sim, x[i], grid, a_grid, log_prior) for i in range(total)
    ]
    mean = torch.stack([m[0] for m in moments]).float()
    sd = torch.stack([m[1].diagonal().sqrt() for m in moments]).float()
    z_star = transform(theta_star)
    test = torch.arange(num_train, total)
    a_star = Weinberg.asymmetry(theta_star[test]).double()
    se_mle = (sim.asymmetry_mle(x[test]).double() - a_star).square()

    def read_a(z: Tensor) -> Tensor:  # draws (S, B, 2) -> E[A] (B,), A (S, B)
        a = Weinberg.asymmetry(transform.inv(z.clamp(-15, 15))).double()
        return a.mean(0), a

    se_exact = (torch.stack([m[2] for m in moments])[test] - a_star).square()
    rows = [{"readout": "exact posterior", **ratios(se_exact, se_mle)}]
    for train_noise, test_noise, num_tasks in CONDITIONS:
        noise = torch.full((total, 1), train_noise)
        noise[test] = test_noise
        mu = mean + noise * sd * torch.randn_like(mean)
        psi = torch.cat([mu, sd.log()], -1)  # the contexts ψ = (μ, log σ)
        torch.manual_seed(args.seed)
        flow = ReadoutFlow(theta_dim=2)
        flow.fit(psi[:num_tasks], z_star[:num_tasks])
        with torch.no_grad():
            draws = flow(psi[test]).sample((DRAWS,))
            gauss = mu[test] + sd[test] * torch.randn(DRAWS, len(test), 2)
        a_flow, a_draws = read_a(draws)
        a_gauss, _ = read_a(gauss)
        row = {
            "train_noise": train_noise,
            "test_noise": test_noise,
            "num_tasks": num_tasks,
        }
        for name, estimate in (("gaussian", a_gauss), ("flow", a_flow)):
            for key, value in ratios((estimate - a_star).square(), se_mle).items():
                row[f"{name}_{key}"] = value
        row["flow_coverage"] = shares(coverage(a_draws[..., None], a_star[:, None])[0])
        rows.append(row)
        print(row, flush=True)
    write(rows, args, time.perf_counter() - start)


def write(rows: list[dict], args: argparse.Namespace, seconds: float) -> None:
    fields = [
        "readout",
        "train_noise",
        "test_noise",
        "num_tasks",
        "gaussian_mean",
        "gaussian_median",
        "flow_mean",
        "flow_median",
        "flow_coverage",
        "mean",
        "median",
    ]
    with (args.output / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    exact = rows[0]
    lines = [
        "# A flow over ALFI's final Gaussian on Weinberg's A",
        "",
        f"`python benchmarks/alfi_flow_readout.py --num-test {args.num_test} "
        f"--num-observations {args.num_observations} --seed {args.seed}`, on "
        f"{platform.machine()}, torch {torch.__version__}, {seconds:.0f} s. "
        f"{args.num_test:,} held-out data sets at n = {args.num_observations}; "
        "each cell: mean (median) squared error of E[A] over the exact MLE's, "
        "with bootstrap 90 % intervals. The context of each data set is its exact "
        "posterior's moment-matched diagonal Gaussian in z, its mean moved by "
        "noise times σ; the flow r(u | ψ) is trained on the first column's noise "
        "and tested on the second's. The Gaussian's cell reads A from the same "
        "noisy test context without the flow. The exact posterior reads "
        f"{exact['mean']} ({exact['median']}).",
        "",
        "| training noise | test noise | training tasks | Gaussian | flow "
        "| flow's A coverage at 50/80/95 % |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['train_noise']} | {r['test_noise']} | {r['num_tasks']:,} | "
        f"{r['gaussian_mean']} ({r['gaussian_median']}) | "
        f"{r['flow_mean']} ({r['flow_median']}) | {r['flow_coverage']} |"
        for r in rows[1:]
    ]
    (args.output / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
