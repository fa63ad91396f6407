"""AALR's samplers and ALFI's meta-training on one device, CPU or CUDA.

    python benchmarks/device_speed.py --device cuda [--output DIR] [--quick]

Run once per device; each run appends its rows to `DIR/rows.jsonl` and rewrites
`DIR/README.md` with every row measured so far, so the CPU and GPU figures stand
side by side. What it times, each after one untimed warm-up call:

- AALR: training on 10,000 simulations of a 5-D Gaussian linear model (sbi's
  training loop on the device), then `sample_batched((1000,), x)` for B = 1,
  10 and 100 observations with `hmc_vectorized` and `mh_vectorized` (their
  defaults: 100 chains per observation), all B x 100 chains one network batch
  per step. Beside the wall time: the draws per second and the worst split R-hat
  over observations and parameters (1.01 is the usual bar).
- ALFI: one meta-training epoch on the Poisson problem (256 tasks of 100 points,
  T = 15 steps, M = 8 proposals), and its inference on 100 data sets at once
  (`sample_batched`), simulator calls included.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
import warnings
from pathlib import Path

import torch
from sbi.utils import BoxUniform

from sbi_alfi import AALR, ALFI
from sbi_alfi.diagnostics import convergence
from sbi_alfi.simulators import Poisson

RESULTS = Path(__file__).parent / "results" / "device"
DIM, NOISE = 5, 0.5


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    """`fn()` and its wall time, the device's queue drained on both sides."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def where(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads"


def aalr_rows(device: str, quick: bool) -> list[dict]:
    torch.manual_seed(0)
    prior = BoxUniform(-3 * torch.ones(DIM), 3 * torch.ones(DIM), device=device)
    theta = prior.sample((10_000,))
    x = theta + NOISE * torch.randn_like(theta)
    inference = AALR(prior, device=device, show_progress_bars=False)
    kwargs = {"max_num_epochs": 5} if quick else {}
    _, seconds = timed(
        device, lambda: inference.append_simulations(theta, x).train(**kwargs)
    )
    rows = [{"what": "AALR training, 10,000 simulations", "seconds": seconds}]
    posterior = inference.build_posterior(mcmc_parameters={"show_progress_bars": False})
    # One-time costs (CUDA context, kernels' first launch) before timing.
    posterior.sample_batched((10,), x[:2], warmup_steps=10)
    for method in ("hmc_vectorized", "mh_vectorized"):
        for batch in (1, 10) if quick else (1, 10, 100):
            x_o = x[-batch:]
            draws, seconds = timed(
                device,
                lambda x_o=x_o, method=method: posterior.sample_batched(
                    (1_000,), x_o, method=method
                ),
            )
            # (B, chains, draws, D): one R-hat per observation's chains
            r_hat = max(convergence(c)[0].max().item() for c in posterior.chains)
            assert draws.device.type == torch.device(device).type
            rows.append(
                {
                    "what": f"AALR {method}, B = {batch} observations x 1,000 draws",
                    "seconds": seconds,
                    "draws_per_second": batch * 1_000 / seconds,
                    "r_hat": r_hat,
                }
            )
    return rows


def alfi_rows(device: str, quick: bool) -> list[dict]:
    torch.manual_seed(0)
    sim = Poisson(device=device)
    inference = ALFI(
        sim.prior,
        sim,
        num_steps=15,
        num_proposal_samples=8,
        num_simulations_per_sample=100,
        device=device,
        show_progress_bars=False,
    )
    tasks = 64 if quick else 256
    # The first epoch pays one-time costs; the second is timed.
    inference.train(num_tasks=tasks, num_observations=100, max_num_epochs=1)
    _, seconds = timed(
        device,
        lambda: inference.train(
            num_tasks=tasks, num_observations=100, max_num_epochs=1
        ),
    )
    rows = [
        {
            "what": f"ALFI meta-training epoch, {tasks} tasks (Poisson)",
            "seconds": seconds,
        }
    ]
    posterior = inference.build_posterior()
    data_sets = sim(sim.prior.sample((100,)).repeat_interleave(100, 0)).reshape(
        100, 100, 1
    )
    _, seconds = timed(device, lambda: posterior.sample_batched((1_000,), data_sets))
    rows.append({"what": "ALFI inference, 100 data sets at once", "seconds": seconds})
    return rows


def write_page(rows: list[dict], output: Path) -> Path:
    lines = [
        "# AALR's samplers and ALFI, CPU against GPU",
        "",
        "`python benchmarks/device_speed.py --device DEVICE`, one run per device "
        "(see the script's docstring for what each row times). Each row names the "
        "machine it ran on; a run appends its rows.",
        "",
        "| device | commit | what | seconds | draws/s | worst R-hat |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        rate = f"{r['draws_per_second']:,.0f}" if "draws_per_second" in r else ""
        r_hat = f"{r['r_hat']:.3f}" if "r_hat" in r else ""
        lines.append(
            f"| {r['device']} | {r.get('commit', '?')} | {r['what']} | "
            f"{r['seconds']:.2f} | {rate} | {r_hat} |"
        )
    page = output / "README.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--commit", help="the commit measured (default: git's HEAD)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    args.output.mkdir(parents=True, exist_ok=True)
    label = f"{args.device}: {where(args.device)}, torch {torch.__version__}"
    # The code measured: AALR's default classifier, the samplers, ALFI change.
    # A copy of the tree sent to another machine may carry a stale .git: pass
    # --commit there.
    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    path = args.output / "rows.jsonl"
    for rows in (aalr_rows, alfi_rows):
        for row in rows(args.device, args.quick):
            row["device"], row["commit"] = label, commit or "?"
            print(row, flush=True)
            with path.open("a") as file:
                file.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    print(write_page(rows, args.output))


if __name__ == "__main__":
    main()
