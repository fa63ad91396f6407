"""ALFI's validation error against wall-clock seconds of meta-training, before
and after issue 14's changes, on the Gaussian at n = 500 (the problem where the
paper's machine never learned σ).

    python benchmarks/alfi_time_to_accuracy.py

"Paper's machine" is the machine as the project first had it: mean pooling of
the point features, the paper's step and the plain Gaussian NLL. "Pooled sd,
β-NLL" adds the standard deviations to the pooling and trains with the β-NLL
(issue 14's first fix). "Default" is `ALFI`'s default machine: with the
Gauss–Newton step, its correlated weighting, the local quantiles and the
learned matched features too. All meta-train on the same 2,000 tasks for 8
cosine epochs (`train()`'s defaults), in this process, one after the other.
Writes benchmarks/results/alfi/time_to_accuracy.{md,png}.
"""

from __future__ import annotations

import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from sbi_alfi import ALFI
from sbi_alfi.simulators import Gaussian

RESULTS = Path(__file__).parent / "results" / "alfi"
# The machine options the default turns on, off: the paper's step.
PAPERS_STEP = {
    "gauss_newton": False,
    "weighting": "diagonal",
    "local_quantiles": 0,
    "match_features": 0,
}
VARIANTS = {
    "paper's machine: mean pooling, plain NLL": (
        {**PAPERS_STEP, "pooling": "mean"},
        0.0,
    ),
    "pooled sd, β-NLL": (PAPERS_STEP, 0.5),
    "default: and the Gauss–Newton step": ({}, 0.5),
}


def main() -> None:
    torch.set_num_threads(1)
    sim = Gaussian()
    curves = {}
    for label, (machine_kwargs, beta) in VARIANTS.items():
        torch.manual_seed(0)
        inference = ALFI(
            sim.prior,
            sim,
            num_steps=15,
            num_proposal_samples=20,
            num_simulations_per_sample=20,
            machine_kwargs=machine_kwargs,
        )
        inference.train(
            num_tasks=2_000,
            num_observations=500,
            learning_rate_schedule="cosine",
            max_num_epochs=8,
            stop_after_epochs=8,
            nll_beta=beta,
        )
        summary = inference.summary
        seconds = torch.tensor(summary["epoch_durations_sec"]).cumsum(0)
        curves[label] = (seconds.tolist(), summary["validation_rmse"])

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (seconds, rmse) in curves.items():
        ax.plot(seconds, rmse, marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("seconds of meta-training (simulation of the tasks excluded)")
    ax.set_ylabel("validation RMSE of (μ, σ)")
    ax.set_title("ALFI on the Gaussian, n = 500")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "time_to_accuracy.png", dpi=120)

    lines = [
        "# ALFI: time to accuracy",
        "",
        f"`python benchmarks/alfi_time_to_accuracy.py` on {platform.machine()}, "
        f"{torch.get_num_threads()} thread, torch {torch.__version__}: the "
        "Gaussian at n = 500, 2,000 tasks (10 % held out), 8 cosine epochs, "
        "T = 15, M = K = 20. Validation RMSE of θ = (μ, σ) after each epoch, "
        "against the cumulative seconds of the epochs.",
        "",
        "The seconds include the held-out tasks' validation pass after each "
        "epoch; the default's scale calibration after training is not timed.",
        "",
        "| machine | " + " | ".join(f"epoch {i + 1}" for i in range(8)) + " |",
        "| --- |" + " --- |" * 8,
    ]
    for label, (seconds, rmse) in curves.items():
        cells = [f"{r:.3g} ({s:.0f} s)" for s, r in zip(seconds, rmse, strict=True)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "![time to accuracy](time_to_accuracy.png)"]
    (RESULTS / "time_to_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
