"""AALR against sbi's NRE_A + slice sampling, end to end, on a Gaussian linear model.

    python benchmarks/aalr_vs_nre.py [--seeds 3] [--observations 3] [--output DIR]

θ ~ N(0, I_5), x | θ ~ N(θ, 0.5² I_5); the posterior is Gaussian in closed form.
For each seed: 10,000 simulations; AALR (its defaults: its classifier, BCE on
logits, RatioMCMCPosterior with hmc_vectorized) and sbi's NRE_A (its defaults,
MCMCPosterior with slice_np_vectorized) trained on the same simulations; for
each of a few observations x_o from the prior predictive, 2,000 draws of each
posterior and their C2ST (MLP) against 2,000 exact draws. Writes a Markdown
table to benchmarks/results/aalr/.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import torch
from sbi.inference import NRE_A
from sbi.utils.metrics import c2st

from sbi_alfi import AALR
from sbi_alfi.benchmark import make_task

RESULTS = Path(__file__).parent / "results" / "aalr"
DIM, NOISE, BUDGET, DRAWS = 5, 0.5, 10_000, 2_000  # the gaussian_linear task's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    task = make_task("gaussian_linear")  # N(0, I) prior, N(θ, NOISE² I) noise
    prior = task.prior

    rows = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        theta = prior.sample((BUDGET,))
        x = task.simulator(theta)
        theta_o = prior.sample((args.observations,))
        x_os = task.simulator(theta_o)
        posteriors, seconds = {}, {}
        for name, cls in [("AALR + hmc_vectorized", AALR), ("NRE_A + slice", NRE_A)]:
            torch.manual_seed(seed)
            inference = cls(prior, show_progress_bars=False)
            start = time.perf_counter()
            estimator = inference.append_simulations(theta, x).train()
            seconds[name] = [time.perf_counter() - start, 0.0]
            if cls is AALR:
                posteriors[name] = inference.build_posterior(
                    estimator, mcmc_parameters={"show_progress_bars": False}
                )
            else:
                posteriors[name] = inference.build_posterior(
                    estimator,
                    sample_with="mcmc",
                    mcmc_method="slice_np_vectorized",
                )
        for i, x_o in enumerate(x_os):
            truth = task.reference(x_o, DRAWS)  # the analytic posterior
            scores = {}
            for name, posterior in posteriors.items():
                torch.manual_seed(seed)
                start = time.perf_counter()
                if name.startswith("AALR"):
                    draws = posterior.sample((DRAWS,), x=x_o[None])
                else:
                    draws = posterior.sample(
                        (DRAWS,), x=x_o[None], show_progress_bars=False
                    )
                seconds[name][1] += time.perf_counter() - start
                scores[name] = c2st(draws.detach(), truth, classifier="mlp").item()
            rows.append((seed, i, scores))
            print(seed, i, scores, flush=True)
        rows[-1] = (*rows[-1], seconds)

    names = list(rows[0][2])
    mean = {n: sum(r[2][n] for r in rows) / len(rows) for n in names}
    lines = [
        "# AALR against NRE_A + slice, end to end",
        "",
        f"`python benchmarks/aalr_vs_nre.py --seeds {args.seeds} --observations "
        f"{args.observations}` on {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}. "
        f"{DIM}-D Gaussian linear model (N(0, I) prior, noise sd {NOISE}), "
        f"{BUDGET:,} simulations per seed, {DRAWS:,} draws per posterior; C2ST "
        "(MLP) against exact posterior draws (0.5 is perfect).",
        "",
        "| seed | x_o | " + " | ".join(names) + " | difference |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for seed, i, scores, *_ in rows:
        values = " | ".join(f"{scores[n]:.3f}" for n in names)
        lines.append(
            f"| {seed} | {i} | {values} | {scores[names[0]] - scores[names[1]]:+.3f} |"
        )
    lines.append(
        "| mean | | "
        + " | ".join(f"{mean[n]:.3f}" for n in names)
        + f" | {mean[names[0]] - mean[names[1]]:+.3f} |"
    )
    lines += ["", "Wall time of the last seed (training s, sampling s over all x_o):"]
    for name, (train, sample) in rows[-1][3].items():
        lines.append(f"- {name}: {train:.0f} s, {sample:.1f} s")
    verdict = "meets" if mean[names[0]] <= mean[names[1]] + 0.02 else "misses"
    lines += [
        "",
        f"AALR {verdict} the target (mean C2ST no worse than NRE_A + slice + 0.02).",
    ]
    (args.output / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
