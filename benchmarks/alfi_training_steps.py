"""ALFI meta-trained on fewer recurrent steps than it runs at inference.

    python benchmarks/alfi_training_steps.py PROBLEM TRAIN_STEPS EPOCHS

Meta-trains on PROBLEM (poisson, gaussian, laplace) at n = 500, T = 15, M = K =
20, with `num_training_steps=TRAIN_STEPS` for EPOCHS cosine epochs, and prints
ALFI's RMSE and median squared error as multiples of the exact MLE's on 200 new
data sets, inferred with TRAIN_STEPS and with 15 steps. Results:
benchmarks/results/alfi_steps/README.md.
"""

import sys
import time
import warnings

import torch

from sbi_alfi import ALFI
from sbi_alfi.simulators import Gaussian, Laplace, Poisson

SIMULATORS = {"poisson": Poisson, "gaussian": Gaussian, "laplace": Laplace}
TASKS = {"poisson": 3_000, "gaussian": 2_000, "laplace": 2_000}


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    problem, train_steps, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sim = SIMULATORS[problem]()
    torch.manual_seed(0)
    inference = ALFI(
        sim.prior,
        sim,
        num_steps=15,
        num_proposal_samples=20,
        num_simulations_per_sample=20,
        show_progress_bars=False,
    )
    start = time.perf_counter()
    inference.train(
        num_tasks=TASKS[problem],
        num_observations=500,
        learning_rate_schedule="cosine",
        max_num_epochs=epochs,
        stop_after_epochs=epochs,
        num_training_steps=train_steps,
    )
    seconds = time.perf_counter() - start
    torch.manual_seed(12345)
    theta = sim.prior.sample((200,))
    x = sim(theta.unsqueeze(1).expand(-1, 500, -1))
    mle = (sim.mle(x) - theta).square()
    validation = [round(v, 4) for v in inference.summary["validation_rmse"][-2:]]
    for steps in sorted({train_steps, 15}):
        posterior = inference.build_posterior(num_steps=steps)
        se = (posterior.sample_batched((1_000,), x).mean(0) - theta).square()
        rmse = (se.mean(0) / mle.mean(0)).sqrt()
        median = se.median(0).values / mle.median(0).values
        print(
            problem, "train_steps", train_steps, "epochs", epochs,
            "infer steps", steps, f"train {seconds:.0f}s",
            "rmse ratio", [round(v, 2) for v in rmse.tolist()],
            "median SE ratio", [round(v, 2) for v in median.tolist()],
            "val_rmse", validation,
            flush=True,
        )  # fmt: skip


if __name__ == "__main__":
    main()
