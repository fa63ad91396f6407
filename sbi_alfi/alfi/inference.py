r"""ALFI's inference class: meta-training of the recurrent machine."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from sbi.utils import mcmc_transform, process_prior
from sbi.utils.torchutils import process_device
from sbi.utils.user_input_checks import process_simulator
from torch import Tensor, nn
from torch.distributions import Distribution
from tqdm.auto import tqdm

from ..simulation import Engine, simulate_batch
from .calibration import scale_calibration
from .network import RecurrentMachine, gaussian_nll, step_weights
from .posterior import ALFIPosterior, check_budget
from .readout import ReadoutFlow
from .rollout import Z_MAX, rollout, simulate_standardized

__all__ = ["ALFI"]

# The posterior of a Gauss-Newton machine simulates at least this many points
# per observed point at each step, and averages this many final proposals
# (`ALFI.inference_settings`).
POINTS_PER_OBSERVATION, AVERAGED_STEPS = 10, 8

# Validation runs with common random numbers, so that its curve reflects the
# machine and not the simulator's noise from one epoch to the next.
VALIDATION_SEED = 20181130
# The read-out flow's tasks and fit, apart from the caller's random stream.
READOUT_SEED = 20200611


class ALFI:
    r"""Automatic likelihood-free inference with a meta-learned recurrent machine.

    For an observed data set :math:`x_o = \{x_1 \dots x_n\}`, a recurrent network
    moves a Gaussian proposal :math:`q(\theta \mid \psi_t)` step by step, looking at
    data simulated from a few draws of it and at :math:`x_o`; the final proposal
    :math:`q(\theta \mid \psi_T)` is the answer (see :class:`RecurrentMachine`;
    by default each step also reads a Gauss–Newton step fitted on the draws,
    which the paper's machine does not). The network is meta-trained once per
    simulator on tasks :math:`\theta^*_i \sim p(\theta)`,
    :math:`x^*_i \sim p(x \mid \theta^*_i)^n`, by minimizing

    .. math:: \mathcal{L} = \mathbb{E}_i \sum_{t=1}^T w_t \,
        \left[-\log q(t(\theta^*_i) \mid \psi_t)\right], \qquad
        w_t \propto e^{3 s_t} - 1, \quad s_t = \tfrac{t - 1}{T - 1},

    in the standardized unconstrained space :math:`z = t(\theta)` of
    `sbi.utils.mcmc_transform`, so the simulator only ever receives parameters in
    the prior's support. Inference is amortized over data sets, not over simulator
    calls: each one runs :math:`T \times M \times K` simulations.

    References:
        | Recurrent machines for likelihood-free inference (Pesah et al., 2018)
        | https://arxiv.org/abs/1811.12932

    Arguments:
        prior: A prior that `sbi.utils.process_prior` accepts.
        simulator: A simulator that `sbi.utils.user_input_checks.process_simulator`
            accepts; batched simulators are called once per step for the whole
            meta-batch.
        num_steps: The number :math:`T` of recurrent steps.
        num_proposal_samples: The number :math:`M` of draws per step, at least 2.
        num_simulations_per_sample: The number :math:`K` of simulations per draw.
        embedding_net: A point encoder `(N, *x_shape) -> (N, F)` that replaces the
            default MLP, e.g. one of `sbi.neural_nets.embedding_nets`.
        initial_scale: The scale :math:`\sigma_0` of the first proposal, in the
            standardized space.
        initial_proposal: Where :math:`\psi_0` comes from. `"prior"` is the
            paper's: :math:`\mu_0` drawn from the prior, :math:`\sigma_0` =
            `initial_scale`. `"learned"` (the default) reads :math:`\psi_0` from the
            embedding of :math:`x_o` with a small network trained with the rest;
            at equal budget it reached a 4x-50x lower median error on Poisson
            (`benchmarks/`), since no steps are spent travelling from a random start.
        machine_kwargs: Further arguments of :class:`RecurrentMachine` (widths,
            `step_bound`, `pooling`, what the Gauss–Newton step matches:
            `weighting`, `local_quantiles`, `match_features`;
            `{"gauss_newton": False}` for the paper's step).
        device: The training device, as in `sbi`.
        show_progress_bars: Whether to show progress bars.
        engine: Where the simulator runs, for the meta-dataset, every recurrent
            step of training (one fan-out for the whole meta-batch) and the
            posterior: `None` (this process, directly), or any engine of
            :func:`sbi_alfi.simulation.simulate`: a number of local processes, a
            `dask.distributed.Client`, `"ray"`... Not pickled with the object:
            set `inference.engine` again after loading.
        simulation_batch_size: The rows of each chunk sent to a worker.

    Example:
        >>> import torch
        >>> from sbi_alfi import ALFI
        >>> from sbi_alfi.simulators import Poisson
        >>> sim = Poisson()
        >>> inference = ALFI(sim.prior, sim, num_steps=3, show_progress_bars=False)
        >>> _ = inference.train(num_tasks=40, num_observations=50, max_num_epochs=1)
        >>> posterior = inference.build_posterior()
        >>> x_o = sim(torch.tensor([[2.0]]).expand(50, 1))
        >>> posterior.map(x=x_o).shape
        torch.Size([1, 1])
    """

    def __init__(
        self,
        prior: Distribution,
        simulator: Callable,
        num_steps: int = 15,
        num_proposal_samples: int = 20,
        num_simulations_per_sample: int = 20,
        embedding_net: nn.Module | None = None,
        initial_scale: float = 0.5,
        initial_proposal: Literal["learned", "prior"] = "learned",
        machine_kwargs: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        show_progress_bars: bool = True,
        engine: Engine | Any | None = None,
        simulation_batch_size: int = 100,
    ):
        check_budget(num_steps, num_proposal_samples, num_simulations_per_sample)
        self.engine = engine
        self.simulation_batch_size = simulation_batch_size
        if initial_proposal not in ("learned", "prior"):
            raise ValueError(
                "`initial_proposal` must be 'learned' or 'prior', got "
                f"{initial_proposal!r}."
            )
        if initial_scale <= 0:
            raise ValueError(f"`initial_scale` must be positive, got {initial_scale}.")
        self._device = torch.device(process_device(device))  # sbi's clear error
        self._prior, self._theta_dim, self._prior_returns_numpy = process_prior(prior)
        self._user_simulator = simulator
        self._simulator = process_simulator(
            simulator, self._prior, self._prior_returns_numpy
        )
        self._theta_transform = mcmc_transform(self._prior, device=self._device)
        self.num_steps = num_steps
        self.num_proposal_samples = num_proposal_samples
        self.num_simulations_per_sample = num_simulations_per_sample
        self.initial_scale = initial_scale
        self._embedding_net = embedding_net
        self._machine_kwargs = {
            "learned_initial": initial_proposal == "learned",
            "gauss_newton": True,
            "weighting": "correlated",
            "local_quantiles": 9,
            "match_features": 2 * self._theta_dim,
            **(machine_kwargs or {}),
        }
        self._show_progress_bars = show_progress_bars
        self._machine: RecurrentMachine | None = None
        self._num_observations: int | None = None
        self._summary: dict[str, list[float]] = {}

    # Meta-training

    def simulate_tasks(
        self, num_tasks: int, num_observations: int, chunk_size: int = 1_000
    ) -> tuple[Tensor, Tensor]:
        r"""Draws the meta-dataset: :math:`\theta^*_i \sim p(\theta)` and a data set
        :math:`x^*_i` of `num_observations` points at each.

        Returns:
            `theta` of shape `(num_tasks, D)` and `x` of shape `(num_tasks, n,
            *x_shape)`.
        """
        if num_tasks < 2 or num_observations < 1:
            raise ValueError(
                "Meta-training needs `num_tasks >= 2` and `num_observations >= 1`, "
                f"got {num_tasks} and {num_observations}."
            )
        theta = self._prior.sample((num_tasks,))
        xs = []
        for chunk in tqdm(
            theta.split(chunk_size),
            desc="Simulating tasks",
            disable=not self._show_progress_bars,
        ):
            x = simulate_batch(
                self._simulator,
                chunk.repeat_interleave(num_observations, dim=0),
                self.engine,
                self.simulation_batch_size,
            ).to(device=self._device, dtype=torch.float32)
            xs.append(x.reshape(len(chunk), num_observations, *x.shape[1:]))
        return theta.to(self._device), torch.cat(xs)

    def train(
        self,
        num_tasks: int = 2_000,
        num_observations: int = 500,
        training_batch_size: int = 32,
        learning_rate: float = 1e-3,
        learning_rate_schedule: Literal["constant", "cosine"] = "cosine",
        max_num_epochs: int = 8,
        validation_fraction: float = 0.1,
        stop_after_epochs: int = 10,
        clip_max_norm: float | None = 5.0,
        nll_beta: float = 0.5,
        num_training_steps: int | None = None,
        calibrate_scale: bool = True,
        readout: Literal["flow", "gaussian"] = "gaussian",
        num_readout_tasks: int | None = None,
        checkpoint_path: str | Path | None = None,
        resume: bool = False,
    ) -> RecurrentMachine:
        r"""Meta-trains the recurrent machine and returns it.

        The defaults are the setting measured in
        `benchmarks/alfi_inference_settings.py` and `benchmarks/alfi_paper.py`
        on 4 problems at n = 100 and 500: 2,000 tasks, 8 epochs, a cosine
        schedule, with the default T, M, K. They spend 2,000 n simulations on
        the tasks, 8 x 2,000 x T M K in the recurrent steps (96 million) and,
        for the scale calibration, the posterior's settings on the 200 held-out
        tasks (200 x T x 10 n: 15 million at n = 500), in all 149 to 202 s on
        a 2-core CPU for those simulators with one thread, two runs at a time
        (Weinberg at n = 500 the slowest, 178 to 202 s; 138 to 143 s alone on both
        cores); the results are in the README. The posterior then simulates
        more per step than training does (:meth:`inference_settings`).

        Every recurrent step calls the simulator once for the whole meta-batch
        (tasks x draws x simulations). A `validation_fraction` of the tasks is held
        out; training stops after `stop_after_epochs` epochs without a lower
        validation loss and the best machine is restored. With
        `calibrate_scale`, the final proposal's scales are set to the errors
        they should measure: each parameter's :math:`\sigma_T` is multiplied
        by the factor whose 50/80/95 % central intervals best cover the
        held-out tasks' :math:`\theta^*` in the validation pass
        (:func:`~sbi_alfi.alfi.calibration.scale_calibration`). A machine
        fitted to its training tasks is more confident than its errors on new
        ones: on Poisson at n = 500 its 50/80/95 % intervals covered θ* 38/63/82 %
        of the time (`benchmarks/alfi_paper.py`).

        Arguments:
            num_tasks: The number of tasks :math:`(\theta^*_i, x^*_i)`.
            num_observations: The size `n` of each task's data set.
            training_batch_size: The number of tasks per meta-batch.
            learning_rate: Adam's learning rate.
            learning_rate_schedule: `"cosine"` anneals the learning rate to zero over
                `max_num_epochs`, for precise final estimates when the budget is
                known (resumed with another `max_num_epochs`, it spans the new
                one from the step reached); `"constant"` keeps it.
            max_num_epochs: The maximum number of passes over the training tasks.
            validation_fraction: The share of tasks held out for validation.
            stop_after_epochs: The patience of early stopping.
            clip_max_norm: The gradient norm is clipped to this; `None` disables it.
            nll_beta: The :math:`\beta` of the :math:`\beta`-NLL loss
                (:func:`~sbi_alfi.alfi.network.gaussian_nll`); 0 is the paper's
                plain NLL, under which the Gaussian's :math:`\sigma` was never
                learned at n = 500.
            num_training_steps: The number of recurrent steps during training;
                `num_steps` when `None`. The paper trains Poisson on 5 and tests
                on 15; here a machine run past the steps it was trained on
                drifts: trained on 5 (n = 500, 20 epochs), Poisson's RMSE was
                1.22 times the MLE's at 5 steps and 7.8 times at 15 (16 times
                after 8 epochs; `benchmarks/alfi_training_steps.py`). Infer with
                `build_posterior(num_steps=num_training_steps)`.
            calibrate_scale: Whether to calibrate the final proposal's scales on
                the held-out tasks (above); the factors, epoch by epoch, are in
                `summary["scale_calibration"]`.
            readout: `"flow"` fits, after meta-training, a flow over the
                final Gaussian's standardized residual
                (:class:`~sbi_alfi.alfi.readout.ReadoutFlow`), which the
                posterior then samples and scores: the shape of a posterior
                that no Gaussian follows. On Weinberg's curved ridge it
                covered A at 0.49-0.54/0.76-0.82/0.92-0.96, where the Gaussian
                covers 0.79-0.96/0.96-1.00/1.00, and read A at 1.17 times the
                MLE's squared error at n = 500 against 1.21 (3 seeds,
                `benchmarks/results/alfi_inference_flow`). It is off by
                default because elsewhere it was less accurate: at n = 500 its
                mean squared error was higher in all 5 rows of the other
                problems (3 seeds; Laplace's b 1.26 against 1.06), as it is
                fitted on proposals noisier than the posterior's. Its tasks and
                fit took 17 s of a 180 s meta-training alone on 2 cores
                (Weinberg, n = 500; a probe), and two runs at a time took
                206-296 s instead of 150-202 s.
                `"gaussian"`: the calibrated Gaussian alone.
            num_readout_tasks: The fresh tasks the read-out flow is fitted
                on; `num_tasks` when `None`. They run through the machine with
                the training's :math:`M` and :math:`K` and the posterior's
                averaging (as many simulations as one epoch), and the flow
                takes 1,000 steps of 128 tasks (about 8 s on one CPU thread).
            checkpoint_path: When given, a checkpoint (tasks, machine, optimizer,
                early-stopping state and random state) is written there after the
                tasks are simulated and after every epoch.
            resume: Continue from the checkpoint at `checkpoint_path`, if any.

        Returns:
            The trained :class:`RecurrentMachine`.
        """
        num_training_steps = num_training_steps or self.num_steps
        self._check_training_arguments(
            training_batch_size, validation_fraction, max_num_epochs, stop_after_epochs
        )
        if readout not in ("flow", "gaussian"):
            raise ValueError(
                f"`readout` must be 'flow' or 'gaussian', got {readout!r}."
            )
        if learning_rate_schedule not in ("constant", "cosine"):
            raise ValueError(
                "`learning_rate_schedule` must be 'constant' or 'cosine', got "
                f"{learning_rate_schedule!r}."
            )
        checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        if resume and checkpoint_path is None:
            raise ValueError("`resume=True` needs a `checkpoint_path`.")
        config = {
            "num_tasks": num_tasks,
            "num_observations": num_observations,
            "theta_dim": self._theta_dim,
        }
        checkpoint = None
        if resume and checkpoint_path.exists():
            checkpoint = torch.load(checkpoint_path, map_location=self._device)
            if checkpoint["config"] != config:
                raise ValueError(
                    f"The checkpoint at {checkpoint_path} was written for "
                    f"{checkpoint['config']}, not {config}."
                )
        state = (
            TrainingState.from_checkpoint(checkpoint)
            if checkpoint is not None
            else self._new_training(config, validation_fraction)
        )
        machine = self._build_machine(state.x)
        optimizer = torch.optim.Adam(machine.parameters(), lr=learning_rate)
        num_batches = -(-len(state.training) // training_batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            _Cosine(max_num_epochs * num_batches)
            if learning_rate_schedule == "cosine"
            else _constant,
        )
        if checkpoint is not None:
            machine.load_state_dict(checkpoint["machine"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            schedule.load_state_dict(checkpoint["schedule"])
            if learning_rate_schedule == "cosine":
                # The restored schedule keeps the horizon it was written with:
                # resumed with more epochs, it ran them at a learning rate of
                # 0. The cosine spans the present `max_num_epochs` instead.
                schedule.lr_lambdas[0] = _Cosine(max_num_epochs * num_batches)
            torch.set_rng_state(checkpoint["rng"])
        else:
            machine.set_x_statistics(state.x[state.training].flatten(0, 1))
            state.best_machine = copy.deepcopy(machine.state_dict())
        if checkpoint_path is not None:
            state.save(checkpoint_path, machine, optimizer, schedule)

        weights = step_weights(num_training_steps).to(self._device)
        epochs = tqdm(
            range(state.epoch, max_num_epochs),
            initial=state.epoch,
            total=max_num_epochs,
            desc="Meta-training ALFI",
            disable=not self._show_progress_bars,
        )
        for _ in epochs:
            if state.epochs_since_improvement >= stop_after_epochs:
                break
            start = time.perf_counter()
            training_loss = self._train_epoch(
                machine,
                optimizer,
                schedule,
                state,
                weights,
                training_batch_size,
                clip_max_norm,
                nll_beta,
            )
            validation_loss, rmse, calibration = self._validate(
                machine, state, weights, training_batch_size
            )
            if calibrate_scale:  # kept with the machine, in its buffer
                machine.scale_calibration.copy_(calibration)
            state.record(
                machine,
                training_loss,
                validation_loss,
                rmse,
                time.perf_counter() - start,
            )
            epochs.set_postfix(
                loss=f"{training_loss:.3f}",
                val_loss=f"{validation_loss:.3f}",
                val_rmse=f"{rmse:.4g}",
            )
            if checkpoint_path is not None:
                state.save(checkpoint_path, machine, optimizer, schedule)

        machine.load_state_dict(state.best_machine)
        self._machine = machine.eval()
        self._num_observations = config["num_observations"]
        if calibrate_scale and machine.gauss_newton:
            # Its posterior runs other settings than training's (more
            # simulations, averaged proposals): calibrate the scales on those.
            machine.scale_calibration.copy_(
                self._posterior_calibration(state, 4 * training_batch_size)
            )
        self._summary = state.summary
        if readout == "flow":
            machine.readout = self._fit_readout(
                num_readout_tasks or num_tasks, config["num_observations"]
            )
        return self._machine

    def _fit_readout(self, num_tasks: int, num_observations: int) -> ReadoutFlow:
        r"""The read-out flow, fitted on fresh tasks' final proposals.

        Their proposals come from the training's :math:`K`, not the
        posterior's: the flow learns a shape relative to :math:`\psi`, and
        these runs cost a twelfth of the posterior's at n = 500 (K = 20, not 250)."""
        start = time.perf_counter()
        posterior = self.build_posterior(
            num_simulations_per_sample=self.num_simulations_per_sample,
            readout="gaussian",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(READOUT_SEED)
            theta, x = self.simulate_tasks(num_tasks, num_observations)
            psi = posterior._final_proposals(x, 128)
            flow = ReadoutFlow(self._theta_dim).to(self._device)
            z_star = self._theta_transform(theta).clamp(-Z_MAX, Z_MAX)
            loss = flow.fit(psi, z_star, show_progress_bars=self._show_progress_bars)
        self._summary["readout_loss"] = [loss]
        self._summary["readout_seconds"] = [time.perf_counter() - start]
        return flow

    def _posterior_calibration(self, state: TrainingState, batch_size: int) -> Tensor:
        r"""The scale calibration of the default posterior's final proposal on
        the held-out tasks."""
        posterior = self.build_posterior()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(VALIDATION_SEED)
            psi = posterior._final_proposals(state.x[state.validation], batch_size)
        mu, log_sigma = psi.chunk(2, -1)
        z_star = self._theta_transform(state.theta[state.validation])
        return scale_calibration((z_star.clamp(-Z_MAX, Z_MAX) - mu) / log_sigma.exp())

    def _new_training(
        self, config: dict[str, int], validation_fraction: float
    ) -> TrainingState:
        r"""Simulates the tasks and splits them into training and validation."""
        num_tasks = config["num_tasks"]
        theta, x = self.simulate_tasks(num_tasks, config["num_observations"])
        num_validation = max(1, int(validation_fraction * num_tasks))
        permutation = torch.randperm(num_tasks)
        return TrainingState(
            config=config,
            theta=theta,
            x=x,
            validation=permutation[:num_validation],
            training=permutation[num_validation:],
        )

    def _train_epoch(
        self,
        machine: RecurrentMachine,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        state: TrainingState,
        weights: Tensor,
        batch_size: int,
        clip_max_norm: float | None,
        nll_beta: float,
    ) -> float:
        r"""One pass over the training tasks in a random order; the mean loss."""
        machine.train()
        losses = []
        order = state.training[torch.randperm(len(state.training))]
        for batch in order.split(batch_size):
            psi = self._unroll(machine, state.x[batch], len(weights) - 1)
            z_star = self._theta_transform(state.theta[batch]).clamp(-Z_MAX, Z_MAX)
            nll = gaussian_nll(psi, z_star, nll_beta)
            loss = (weights[:, None] * nll).sum(0).mean()
            optimizer.zero_grad()
            loss.backward()
            if clip_max_norm is not None:
                nn.utils.clip_grad_norm_(machine.parameters(), clip_max_norm)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        return sum(losses) / len(losses)

    def _check_training_arguments(
        self,
        training_batch_size: int,
        validation_fraction: float,
        max_num_epochs: int,
        stop_after_epochs: int,
    ) -> None:
        if training_batch_size < 1:
            raise ValueError(
                f"`training_batch_size` must be at least 1, got {training_batch_size}."
            )
        if not 0 < validation_fraction < 1:
            raise ValueError(
                f"`validation_fraction` must lie in (0, 1), got {validation_fraction}."
            )
        if max_num_epochs < 1 or stop_after_epochs < 1:
            raise ValueError(
                "`max_num_epochs` and `stop_after_epochs` must be at least 1, got "
                f"{max_num_epochs} and {stop_after_epochs}."
            )

    def _build_machine(self, x: Tensor) -> RecurrentMachine:
        embedding_net = copy.deepcopy(self._embedding_net)
        return RecurrentMachine(
            self._theta_dim,
            x.shape[2:],
            embedding_net=embedding_net,
            **self._machine_kwargs,
        ).to(self._device)

    def _simulate(self, z: Tensor) -> Tensor:
        return simulate_standardized(
            self._simulator,
            self._theta_transform,
            z,
            self._device,
            self.engine,
            self.simulation_batch_size,
        )

    def _unroll(self, machine: RecurrentMachine, x: Tensor, num_steps: int) -> Tensor:
        return rollout(
            machine,
            x,
            self._prior,
            self._theta_transform,
            self._simulate,
            self.initial_scale,
            num_steps,
            self.num_proposal_samples,
            self.num_simulations_per_sample,
        )

    def _validate(
        self,
        machine: RecurrentMachine,
        state: TrainingState,
        weights: Tensor,
        batch_size: int,
    ) -> tuple[float, float, Tensor]:
        r"""The validation loss (the plain NLL, whatever the training's
        :math:`\beta`), the RMSE of :math:`t^{-1}(\mu_T)` to
        :math:`\theta^*` in parameter space, and the scale calibration of the
        final proposal (:func:`~sbi_alfi.alfi.calibration.scale_calibration`)."""
        machine.eval()
        losses, squared_errors, residuals = [], [], []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(VALIDATION_SEED)
            for batch in state.validation.split(4 * batch_size):
                theta = state.theta[batch]
                psi = self._unroll(machine, state.x[batch], len(weights) - 1)
                z_star = self._theta_transform(theta).clamp(-Z_MAX, Z_MAX)
                nll = gaussian_nll(psi, z_star)
                losses.append((weights[:, None] * nll).sum(0))
                mu, log_sigma = psi[-1].chunk(2, -1)
                estimate = self._theta_transform.inv(mu)
                squared_errors.append((estimate - theta).square())
                residuals.append((z_star - mu) / log_sigma.exp())
        rmse = torch.cat(squared_errors).mean().sqrt().item()
        calibration = scale_calibration(torch.cat(residuals))
        return torch.cat(losses).mean().item(), rmse, calibration

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_simulator"] = None  # sbi's wrapper is a closure; rebuilt on load
        state["engine"] = None  # a cluster's client does not travel: set it again
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._simulator = process_simulator(
            self._user_simulator, self._prior, self._prior_returns_numpy
        )

    # The posterior

    @property
    def summary(self) -> dict[str, list[float]]:
        r"""Per-epoch training loss, validation loss and RMSE, and durations;
        with the read-out flow, its final loss and its seconds."""
        return self._summary

    def inference_settings(self) -> dict[str, int]:
        r"""The posterior's default :math:`M`, :math:`K` and number of averaged
        final proposals, for the trained machine.

        With the Gauss–Newton step (the default machine), each step's move
        carries the noise of its :math:`M K` simulated points next to the
        :math:`n` observed ones: its variance is about :math:`1 + n / (M K)`
        times the MLE's. The posterior therefore simulates at least
        :math:`10 n` points per step (:math:`K = \lceil 10 n / M \rceil`, `n`
        of the meta-training tasks, at least the trained :math:`K`) and
        averages the last 8 proposals (the last half of the steps when
        :math:`T < 16`). The step regresses on the draws, so it
        reads any :math:`K`; the paper's machine learned the noise of the
        trained :math:`K` and keeps it, with :math:`\psi_T` alone. On the 4
        problems of `benchmarks/alfi_inference_settings.py` at n = 500, the
        trained setting (M = K = 20, :math:`\psi_T`) left 1.8–2.4 times the
        MLE's mean squared error (seed 0); 10 n points with the average,
        1.04–1.17; 5 n, 1.02–1.22; 20 n, 1.02–1.15; 10 n with the last 5
        proposals averaged, 1.10–1.17. Averaging doesn't cost simulations.
        """
        if self._machine is None:
            raise ValueError(
                "ALFI has not been trained: call `inference.train(...)` first."
            )
        m, k = self.num_proposal_samples, self.num_simulations_per_sample
        if not self._machine.gauss_newton:
            return {
                "num_proposal_samples": m,
                "num_simulations_per_sample": k,
                "num_averaged_steps": 1,
            }
        n = self._num_observations
        return {
            "num_proposal_samples": m,
            "num_simulations_per_sample": max(k, -(-POINTS_PER_OBSERVATION * n // m)),
            # The last half of the steps, at most 8: earlier proposals are wider.
            "num_averaged_steps": min(AVERAGED_STEPS, -(-self.num_steps // 2)),
        }

    def build_posterior(
        self,
        num_steps: int | None = None,
        num_proposal_samples: int | None = None,
        num_simulations_per_sample: int | None = None,
        num_averaged_steps: int | None = None,
        readout: Literal["flow", "gaussian"] | None = None,
    ) -> ALFIPosterior:
        r"""The posterior of the trained machine.

        Arguments:
            num_steps: The number of steps at inference; the trained value when
                `None`. More steps than the machine was trained on make it
                drift (see `train`'s `num_training_steps`).
            num_proposal_samples: :math:`M` at inference; `None` for
                :meth:`inference_settings`' (the trained :math:`M`).
            num_simulations_per_sample: :math:`K` at inference; `None` for
                :meth:`inference_settings`'.
            num_averaged_steps: The number of final proposals averaged; `None`
                for :meth:`inference_settings`'. The scale calibration was fitted
                with :meth:`inference_settings`; other settings keep it.
            readout: `"flow"`, the read-out flow fitted by :meth:`train`;
                `"gaussian"`, the calibrated Gaussian :math:`q(\theta \mid
                \psi_T)`; `None` for the flow where there is one.

        Returns:
            An :class:`ALFIPosterior`.
        """
        if self._machine is None:
            raise ValueError(
                "ALFI has not been trained: call `inference.train(...)` before "
                "`build_posterior()`."
            )
        defaults = self.inference_settings()
        return ALFIPosterior(
            machine=copy.deepcopy(self._machine),
            prior=self._prior,
            simulator=self._user_simulator,
            theta_transform=self._theta_transform,
            num_steps=num_steps or self.num_steps,
            num_proposal_samples=(
                num_proposal_samples or defaults["num_proposal_samples"]
            ),
            num_simulations_per_sample=(
                num_simulations_per_sample or defaults["num_simulations_per_sample"]
            ),
            num_averaged_steps=num_averaged_steps or defaults["num_averaged_steps"],
            initial_scale=self.initial_scale,
            prior_returns_numpy=self._prior_returns_numpy,
            processed_simulator=self._simulator,
            device=self._device,
            engine=self.engine,
            simulation_batch_size=self.simulation_batch_size,
            readout=readout,
        )


@dataclass
class TrainingState:
    r"""What meta-training has reached: the tasks and their split, early
    stopping's record and the per-epoch summary. A checkpoint holds it with the
    machine, the optimizer, the schedule and the random state."""

    config: dict[str, int]
    theta: Tensor
    x: Tensor
    validation: Tensor
    training: Tensor
    epoch: int = 0
    best_loss: float = math.inf
    epochs_since_improvement: int = 0
    best_machine: dict[str, Tensor] | None = None
    summary: dict[str, list] = field(
        default_factory=lambda: {
            "training_loss": [],
            "validation_loss": [],
            "validation_rmse": [],
            "epoch_durations_sec": [],
            "scale_calibration": [],
        }
    )

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> TrainingState:
        state = cls(**{f.name: checkpoint[f.name] for f in fields(cls)})
        state.summary.setdefault("scale_calibration", [])  # older checkpoints
        return state

    def record(
        self,
        machine: RecurrentMachine,
        training_loss: float,
        validation_loss: float,
        validation_rmse: float,
        seconds: float,
    ) -> None:
        r"""Ends an epoch: its figures, and the best machine so far."""
        self.summary["training_loss"].append(training_loss)
        self.summary["validation_loss"].append(validation_loss)
        self.summary["validation_rmse"].append(validation_rmse)
        self.summary["epoch_durations_sec"].append(seconds)
        self.summary["scale_calibration"].append(machine.scale_calibration.tolist())
        if validation_loss < self.best_loss:
            self.best_loss = validation_loss
            self.best_machine = copy.deepcopy(machine.state_dict())
            self.epochs_since_improvement = 0
        else:
            self.epochs_since_improvement += 1
        self.epoch += 1

    def save(
        self,
        path: Path,
        machine: RecurrentMachine,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        r"""Writes the checkpoint, atomically."""
        checkpoint = {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "machine": machine.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": torch.get_rng_state(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(checkpoint, partial)
        os.replace(partial, path)  # never leaves a half-written checkpoint behind


def _constant(step: int) -> float:
    return 1.0


class _Cosine:
    """A picklable cosine annealing factor of the step."""

    def __init__(self, num_steps: int):
        self.num_steps = num_steps

    def __call__(self, step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(step / self.num_steps, 1.0)))
