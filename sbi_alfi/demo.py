r"""The README's demo: `python -m sbi_alfi.demo [--output DIR] [--quick]`.

On an embedded default it plots the two simulators of the ALFI paper against their
exact densities, meta-trains ALFI on the Weinberg problem and infers the
parameters of an observed data set, then trains AALR on the AALR paper's
tractable problem (SLCP) and samples its posterior by vectorized HMC, against
exact posterior draws. It saves the figures. `--quick` shrinks every budget (for
tests).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the demo writes files; it never opens a window

import matplotlib.pyplot as plt
import torch
from sbi.analysis import pairplot
from sbi.utils.metrics import c2st

from .aalr import AALR
from .alfi import ALFI
from .plots import plot_data_fit, plot_identified_quantity, plot_trajectory
from .samplers import DefensiveProposal, importance_resample
from .simulators import SLCP, Poisson, Weinberg

# Parameters that show each model's range; Weinberg's include both sides of the
# cut at |A| = 2 and stay off E_b = 45 GeV, where A = 0 and the data say nothing.
POISSON_THETAS = [[1.0], [2.5], [4.0]]
WEINBERG_THETAS = [[40.0, 1.5], [43.0, 1.0], [47.0, 0.8], [50.0, 1.5]]


def simulators_figures(output: Path, num_samples: int = 20_000) -> list[Path]:
    r"""Saves the Poisson and Weinberg figures into `output`; returns their paths."""
    poisson, weinberg = Poisson(), Weinberg()

    fig, axes = plt.subplots(1, len(POISSON_THETAS), figsize=(12, 3.5))
    for ax, theta in zip(axes, POISSON_THETAS, strict=True):
        plot_data_fit(poisson, torch.tensor(theta), num_samples=num_samples, ax=ax)
        ax.set_title(rf"$\theta$ = {theta[0]:.1f} (rate {math.exp(theta[0]):.1f})")
    fig.suptitle(r"Poisson: $x \sim$ Poisson$(e^\theta)$, simulated and exact")
    fig.tight_layout()
    paths = [output / "poisson.png"]
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(WEINBERG_THETAS) + 1, figsize=(20, 3.8))
    plot_identified_quantity(
        weinberg, Weinberg.asymmetry, ax=axes[0], label="asymmetry A"
    )
    axes[0].set_title("A over the prior: the data identify only A")
    for ax, theta in zip(axes[1:], WEINBERG_THETAS, strict=True):
        theta = torch.tensor(theta)
        plot_data_fit(
            weinberg, theta, num_samples=num_samples, ax=ax, label="simulated"
        )
        ax.set_title(
            f"$E_b$ = {theta[0]:.0f} GeV, $G_F$ = {theta[1]:.1f}: "
            f"A = {Weinberg.asymmetry(theta):+.2f}"
        )
        ax.set_xlabel(r"$\cos \theta_\mu$")
    axes[0].scatter(*torch.tensor(WEINBERG_THETAS).T, color="black", marker="x")
    fig.tight_layout()
    paths.append(output / "weinberg.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


# The demo's observation: A = -1.40, well inside the prior's range of A.
WEINBERG_THETA_STAR = [42.0, 1.2]

# `train()`'s defaults (2,000 tasks, 8 epochs), measured on 4 problems.
ALFI_BUDGET = {
    "full": {"num_observations": 500},
    "quick": {"num_tasks": 64, "max_num_epochs": 1, "num_observations": 50},
}


def alfi_weinberg(output: Path, quick: bool = False) -> tuple[list[Path], str]:
    r"""Meta-trains ALFI on Weinberg, infers from one observed data set and saves
    the trajectory of the proposals and the data fit; returns the paths and a
    summary line."""
    sim = Weinberg()
    budget = ALFI_BUDGET["quick" if quick else "full"]
    inference = ALFI(sim.prior, sim)  # T = 15, M = K = 20
    inference.train(**budget)
    posterior = inference.build_posterior()

    theta_star = torch.tensor(WEINBERG_THETA_STAR)
    x_o = sim(theta_star.expand(budget["num_observations"], 2))
    trajectory = posterior.trajectory(x=x_o)
    (estimate,) = posterior.map(x=x_o)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    plot_trajectory(trajectory, sim, x_o=x_o, theta_true=theta_star, ax=axes[0])
    axes[0].set_title("ALFI's proposals $\\psi_0 \\dots \\psi_T$ over the likelihood")
    plot_data_fit(sim, estimate, x_o=x_o, ax=axes[1], label="simulated at ALFI's θ")
    axes[1].set_title("Observed data and data simulated at ALFI's estimate")
    axes[1].set_xlabel(r"$\cos \theta_\mu$")
    fig.tight_layout()
    path = output / "alfi_weinberg.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)

    a_star = Weinberg.asymmetry(theta_star).item()
    a_alfi = Weinberg.asymmetry(posterior.sample((1_000,), x=x_o)).mean().item()
    a_mle = sim.asymmetry_mle(x_o).item()
    line = (
        f"ALFI on Weinberg, n = {len(x_o)} points at A* = {a_star:+.3f}: "
        f"ALFI's A = {a_alfi:+.3f}, exact MLE of A = {a_mle:+.3f}"
    )
    return [path], line


# `network_proposals`: importance proposals for exact draws of the network's
# posterior; on SLCP's four narrow modes 400,000 and 5 million left the
# weights' ESS under the 10x the draws that `importance_resample` requires.
AALR_BUDGET = {
    "full": {
        "num_simulations": 20_000,
        "max_num_epochs": 100,
        "num_proposals": 3 * 10**7,
        "network_proposals": 2 * 10**7,
    },
    "quick": {
        "num_simulations": 1_000,
        "max_num_epochs": 2,
        "num_proposals": 10**5,
        "network_proposals": 10**5,
    },
}


OBSERVATION_SEED = 4


def aalr_slcp(output: Path, quick: bool = False) -> tuple[list[Path], str]:
    r"""Trains AALR on SLCP, samples the posterior of the observation at
    :math:`\theta^*` by tempered SMC (`smc_vectorized`: the posterior has 4
    modes, which local chains cannot weigh), and saves a pairplot against exact
    draws (prior draws resampled by the exact likelihood); returns the paths
    and a summary line with two C2STs: against exact draws of the network's own
    posterior (the sampler's error) and of the true one (the ratio's)."""
    sim = SLCP()
    budget = AALR_BUDGET["quick" if quick else "full"]
    theta = sim.prior.sample((budget["num_simulations"],))
    inference = AALR(sim.prior, show_progress_bars=False)
    inference.append_simulations(theta, sim(theta))
    inference.train(max_num_epochs=budget["max_num_epochs"])
    posterior = inference.build_posterior(mcmc_method="smc_vectorized")

    # A fixed observation: the exact reference below, prior draws resampled by
    # the likelihood, needs an ESS of 20,000 from 3e7 draws. Observations drawn
    # at theta* with seeds 1-3 left 7,100-9,800 (and the demo's running seed
    # once 1,600); this one, seed 4, 43,000.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(OBSERVATION_SEED)
        x_o = sim(sim.theta_true[None])
    draws = posterior.sample((2_000,), x=x_o, show_progress_bars=False)

    def log_target(theta: torch.Tensor) -> torch.Tensor:
        return sim.log_likelihood(theta, x_o) + sim.prior.log_prob(theta)

    exact, _ = importance_resample(
        log_target,
        sim.prior,
        2_000,
        num_proposals=budget["num_proposals"],
        batch_size=500_000,
        min_ess_ratio=10.0 if not quick else 0.0,
    )

    def log_network(theta: torch.Tensor) -> torch.Tensor:
        return posterior.potential(theta, x=x_o, track_gradients=False)

    # The network's own posterior, from a proposal that covers what the
    # sampler may have missed.
    network, _ = importance_resample(
        log_network,
        DefensiveProposal(sim.prior, draws),
        2_000,
        num_proposals=budget["network_proposals"],
        min_ess_ratio=10.0 if not quick else 0.0,
    )
    fig, _ = pairplot(
        [exact, draws],
        points=sim.theta_true[None],
        limits=[[-3, 3]] * 5,
        labels=sim.labels,
        figsize=(9, 9),
        diag="kde",
        upper="contour",
    )
    fig.suptitle(
        "AALR on SLCP: posterior draws by smc_vectorized (green) against exact "
        "draws (blue); θ* in orange"
    )
    path = output / "aalr_slcp.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    sampler = c2st(draws, network, classifier="mlp").item()
    ratio = c2st(draws, exact, classifier="mlp").item()
    ess = posterior.diagnostics["nested_ess"].min().item()
    line = (
        f"AALR on SLCP, {budget['num_simulations']:,} simulations, draws by "
        f"smc_vectorized (0.5 is perfect): C2ST {sampler:.3f} against exact "
        f"draws of the network's posterior (the sampler's error), {ratio:.3f} "
        f"against the true posterior (the ratio's); effective draws {ess:.0f} "
        "(over 10 islands)"
    )
    return [path], line


def poisson_mle_summary(num_points: int = 500, seed: int = 0) -> str:
    r"""One inference at a known parameter, by the exact MLE, as a sanity line."""
    sim = Poisson()
    theta_star = torch.tensor([3.0])
    x_o = sim(theta_star.expand(num_points, 1), torch.Generator().manual_seed(seed))
    return (
        f"Poisson, n = {num_points} points at theta* = {theta_star.item():.3f}: "
        f"exact MLE = {sim.mle(x_o).item():.3f}"
    )


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m sbi_alfi.demo", description=__doc__
    )
    parser.add_argument(
        "--output", type=Path, default=Path("demo-output"), help="folder for figures"
    )
    parser.add_argument("--seed", type=int, default=0, help="global torch seed")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, for tests")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    print(poisson_mle_summary(seed=args.seed))
    for path in simulators_figures(args.output):
        print(f"wrote {path}")
    for run in (alfi_weinberg, aalr_slcp):
        paths, line = run(args.output, quick=args.quick)
        print(line)
        for path in paths:
            print(f"wrote {path}")
    print(f"The demo's figures are in {args.output.resolve()}")
    return args.output


if __name__ == "__main__":
    main()
