r"""A spot check of the default sampler on `sbibm`'s tasks (by default two_moons,
a crescent-shaped, bimodal posterior): SMC against `sbi`'s slice sampler on
one trained AALR network and observation 0, with C2ST against exact draws of
the network's own posterior, as in `sampler_speed.py` (whose runners it uses).

Writes `benchmarks/results/mcmc/<task>.md` (`two_moons.md`...); needs
`make benchmark-install`. Run as `python benchmarks/smc_two_moons.py
[--tasks sbibm_two_moons sbibm_slcp ...]`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from sbi.utils.metrics import c2st

sys.path.insert(0, str(Path(__file__).parent))
from sampler_speed import network_reference, run_ours, run_sbi

from sbi_alfi import AALR
from sbi_alfi.benchmark import make_task

RESULTS = Path(__file__).parent / "results" / "mcmc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sbibm_two_moons"])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    for name in args.tasks:
        check(name, sys.argv[1:])


def check(name: str, argv: list[str]) -> None:
    task = make_task(name)
    torch.manual_seed(0)
    _, x_o = task.observation(0)
    x_o = x_o[None]
    theta = task.prior.sample((10_000,))
    estimator = AALR(task.prior, show_progress_bars=False)
    estimator = estimator.append_simulations(theta, task.simulator(theta)).train()
    reference, _ = network_reference(estimator, task.prior, x_o, 2_000)
    lines = [
        f"# SMC on {name}",
        "",
        f"`python benchmarks/{' '.join([Path(__file__).name, *argv])}`: AALR's "
        "default on 10,000 "
        "simulations, observation 0, 2,000 draws. ESS as in sampler_speed; "
        "C2ST (MLP) against exact draws of the network's posterior.",
        "",
        "| method | wall s | ESS | ESS/s | C2ST |",
        "| --- | --- | --- | --- | --- |",
    ]
    for library, method in [("ours", "smc_vectorized"), ("sbi", "slice_np_vectorized")]:
        if library == "ours":
            row = run_ours(estimator, task.prior, x_o, method, 2_000)
        else:
            row = run_sbi(estimator, task.prior, x_o, method, 2_000, {})
        score = float(c2st(row.pop("samples"), reference, classifier="mlp"))
        lines.append(
            f"| {method} | {row['seconds']:.1f} | {row['ess']:.2f} | "
            f"{row['ess'] / row['seconds']:.2f} | {score:.3f} |"
        )
        print(lines[-1], flush=True)
    (RESULTS / f"{name.removeprefix('sbibm_')}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
