r"""The posterior of ALFI: the final proposal of the recurrent machine."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from sbi.inference.potentials.base_potential import BasePotential
from sbi.sbi_types import Shape, TorchTransform
from sbi.utils.sbiutils import within_support
from sbi.utils.user_input_checks import process_simulator
from torch import Tensor
from torch.distributions import Distribution

from ..checked_posterior import CheckedPosterior
from ..simulation import Engine
from .network import RecurrentMachine, gaussian_proposal
from .rollout import Z_MAX, rollout, simulate_standardized

__all__ = ["ALFIPosterior", "Trajectory"]

# The number of data sets whose runs are kept.
CACHE_SIZE = 256


class Trajectory(NamedTuple):
    r"""The proposals :math:`\psi_0 \dots \psi_T` of one inference."""

    mean: Tensor  #: The proposals' means in parameter space, `(T + 1, D)`.
    std: Tensor  #: The proposals' standard deviations in parameter space, `(T + 1, D)`.
    loc: Tensor  #: :math:`\mu_t` in the standardized space, `(T + 1, D)`.
    scale: Tensor  #: :math:`\sigma_t` in the standardized space, `(T + 1, D)`.


class ALFIPosterior(CheckedPosterior):
    r"""The posterior of ALFI for an observed data set :math:`x_o`: the proposal
    :math:`q(\theta \mid \psi_T)` after :math:`T` steps of the recurrent machine.

    The proposal is a diagonal Gaussian in the standardized unconstrained space
    :math:`z = t(\theta)` built by `sbi.utils.mcmc_transform`, so in parameter space

    .. math:: \log q(\theta \mid \psi_T) = \log \mathcal{N}(t(\theta); \mu_T,
        \mathrm{diag}\, (c \sigma_T)^2) + \log \left| \det \frac{\partial t}{\partial
        \theta} \right|,

    with :math:`c` the machine's `scale_calibration`, which :meth:`ALFI.train`
    sets so that :math:`\sigma` measures the errors on held-out tasks. With
    `num_averaged_steps` :math:`k > 1`, :math:`\psi_T` here stands for the
    average of the last :math:`k` proposals. With the `"flow"` read-out (the
    default where :meth:`ALFI.train` fitted one), :math:`q` is the machine's
    :class:`~sbi_alfi.alfi.readout.ReadoutFlow` given :math:`\psi_T` instead of
    the Gaussian, and :meth:`map` stays :math:`t^{-1}(\mu_T)`.

    The :math:`T` steps call the simulator :math:`T \times M \times K` times; they run
    once per data set and are cached, so `sample`, `log_prob`, `map` and
    `trajectory` on the same :math:`x_o` agree. `x` is always a data set of `n >= 1`
    i.i.d. points, of shape `(n, *x_shape)`.

    References:
        | Recurrent machines for likelihood-free inference (Pesah et al., 2018)
        | https://arxiv.org/abs/1811.12932

    Arguments:
        machine: The meta-trained recurrent machine.
        prior: The prior, as processed by `sbi.utils.process_prior`.
        simulator: The simulator, as the user gave it; the posterior pickles
            whenever it does.
        processed_simulator: The simulator as processed by `sbi`'s
            `process_simulator`; processed again when `None` (after loading).
        theta_transform: The map :math:`t` from parameters to the standardized space.
        num_steps: The number :math:`T` of steps.
        num_proposal_samples: The number :math:`M` of draws per step, `>= 2`.
        num_simulations_per_sample: The number :math:`K` of simulations per draw.
        initial_scale: The scale :math:`\sigma_0` of the initial proposal.
        prior_returns_numpy: Whether the simulator takes numpy parameters.
        device: The device of the machine and of the data.
        engine: Where the simulator runs (:func:`sbi_alfi.simulation.simulate`).
        simulation_batch_size: The rows of each chunk sent to a worker.
        num_averaged_steps: The final proposal averages the last this many
            proposals' :math:`(\mu, \log \sigma)` (Polyak–Ruppert averaging:
            each step's move carries the noise of its simulations, which the
            average of the last steps reduces).
        readout: `"flow"`, the machine's read-out flow; `"gaussian"`, the
            calibrated Gaussian; `None` for the flow where the machine has one.

    Example:
        >>> import torch
        >>> from sbi_alfi import ALFI
        >>> from sbi_alfi.simulators import Poisson
        >>> sim = Poisson()
        >>> inference = ALFI(sim.prior, sim, num_steps=3, show_progress_bars=False)
        >>> _ = inference.train(num_tasks=40, num_observations=50, max_num_epochs=1)
        >>> posterior = inference.build_posterior()
        >>> x_o = sim(torch.tensor([[2.0]]).expand(50, 1))
        >>> posterior.sample((10,), x=x_o).shape
        torch.Size([10, 1])
        >>> posterior.trajectory(x=x_o).mean.shape
        torch.Size([4, 1])
    """

    # Posteriors pickled before these options load without them.
    num_averaged_steps = 1
    readout = "gaussian"

    def __init__(
        self,
        machine: RecurrentMachine,
        prior: Distribution,
        simulator: Callable,
        theta_transform: TorchTransform,
        num_steps: int,
        num_proposal_samples: int,
        num_simulations_per_sample: int,
        initial_scale: float = 0.5,
        prior_returns_numpy: bool = False,
        processed_simulator: Callable | None = None,
        device: str | torch.device = "cpu",
        engine: Engine | Any | None = None,
        simulation_batch_size: int = 100,
        num_averaged_steps: int = 1,
        readout: Literal["flow", "gaussian"] | None = None,
    ):
        check_budget(num_steps, num_proposal_samples, num_simulations_per_sample)
        if not 1 <= num_averaged_steps <= num_steps:
            raise ValueError(
                f"`num_averaged_steps` must lie in [1, num_steps = {num_steps}], "
                f"got {num_averaged_steps}."
            )
        self.num_averaged_steps = num_averaged_steps
        has_flow = getattr(machine, "readout", None) is not None
        if readout is None:
            readout = "flow" if has_flow else "gaussian"
        if readout not in ("flow", "gaussian"):
            raise ValueError(
                f"`readout` must be 'flow' or 'gaussian', got {readout!r}."
            )
        if readout == "flow" and not has_flow:
            raise ValueError(
                "`readout='flow'` needs a machine with a read-out flow: train it "
                "with `ALFI.train(readout='flow')`."
            )
        self.readout = readout
        self.engine = engine
        self.simulation_batch_size = simulation_batch_size
        self.machine = machine.eval()
        self.prior = prior
        self.simulator = simulator
        self.num_steps = num_steps
        self.num_proposal_samples = num_proposal_samples
        self.num_simulations_per_sample = num_simulations_per_sample
        self.initial_scale = initial_scale
        self.prior_returns_numpy = prior_returns_numpy
        self._processed_simulator = processed_simulator
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()
        super().__init__(
            ALFIPotential(self, prior, device=device),
            theta_transform=theta_transform,
            device=device,
        )
        self._purpose = (
            f"It runs {num_steps} steps of {num_proposal_samples} x "
            f"{num_simulations_per_sample} simulations for each data set."
        )

    # Data sets, the cached runs and the proposals

    def _check_x(self, x: Tensor, batched: bool = False) -> Tensor:
        r"""`x` as data sets `(B, n, *x_shape)` (or one, `(n, *x_shape)`, when not
        `batched`) on the device, or a :class:`ValueError` that names the problem.

        A data set of scalar observations (`x_shape == (1,)`) may also come
        without its last axis, `(n,)`. Batches may not: `(B, 1)` could be `B` data
        sets of one point or one data set without its batch axis."""
        x_shape = self.machine.x_shape
        x = torch.as_tensor(x, dtype=torch.float32)
        given = tuple(x.shape)  # the errors name what the user passed
        k = len(x_shape) + (2 if batched else 1)
        if not batched and x.dim() == k - 1:
            # n scalar points, or a single point: a data set of n = 1
            x = x.unsqueeze(-1) if x_shape == (1,) else x.unsqueeze(0)
        expected = "(B, n, " if batched else "(n, "
        if x.dim() != k or x.shape[x.dim() - len(x_shape) :] != x_shape or 0 in x.shape:
            raise ValueError(
                f"`x` must be {'data sets' if batched else 'a data set'} of shape "
                f"{expected}{', '.join(map(str, x_shape))}) with n >= 1, "
                f"got {given}."
            )
        finite = torch.isfinite(x.reshape(*x.shape[: k - len(x_shape)], -1)).all(-1)
        if not finite.all():
            raise ValueError(
                f"`x` has NaN or inf in {int((~finite).sum())} of {finite.numel()} "
                f"points; the first is at index {(~finite).nonzero()[0].tolist()}."
            )
        return x.to(self._device)

    def _psi(self, x: Tensor) -> Tensor:
        r"""The proposals :math:`\psi_0 \dots \psi_T` for checked data sets
        `(B, n, *x_shape)`, of shape `(T + 1, B, 2D)`, run once and cached."""
        keys = [self._key(data) for data in x]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            for i, psi in zip(missing, self._run(x[missing]).unbind(1), strict=True):
                self._cache[keys[i]] = psi
        psi = torch.stack([self._cache[key] for key in keys], 1)
        while len(self._cache) > max(CACHE_SIZE, len(keys)):
            self._cache.popitem(last=False)
        return psi

    def _key(self, x: Tensor) -> tuple:
        r"""The cache key of a data set: its content and the run's settings."""
        data = x.detach().cpu().contiguous().numpy().tobytes()
        settings = (
            self.num_steps,
            self.num_proposal_samples,
            self.num_simulations_per_sample,
            self.initial_scale,
        )
        return tuple(x.shape), hashlib.sha1(data).hexdigest(), settings

    def _run(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return rollout(
                self.machine,
                x,
                self.prior,
                self.theta_transform,
                self._simulate,
                self.initial_scale,
                self.num_steps,
                self.num_proposal_samples,
                self.num_simulations_per_sample,
            )

    def _simulate(self, z: Tensor) -> Tensor:
        if self._processed_simulator is None:
            self._processed_simulator = process_simulator(
                self.simulator, self.prior, self.prior_returns_numpy
            )
        return simulate_standardized(
            self._processed_simulator,
            self.theta_transform,
            z,
            self._device,
            self.engine,
            self.simulation_batch_size,
        )

    def _final(self, psi: Tensor) -> Tensor:
        r"""The final proposal from the run `psi` of shape `(T + 1, B, 2D)`: the
        average of the last `num_averaged_steps` proposals' :math:`(\mu, \log
        \sigma)`, of shape `(B, 2D)`."""
        return psi[-self.num_averaged_steps :].mean(0)

    def _final_proposals(self, x: Tensor, batch_size: int) -> Tensor:
        r"""The final proposals `(B, 2D)` of data sets `x` `(B, n, *x_shape)`,
        run `batch_size` at a time and not cached: meta-training's held-out
        and read-out tasks, each seen once."""
        return torch.cat([self._final(self._run(b)) for b in x.split(batch_size)])

    def proposal(self, psi: Tensor) -> Distribution:
        r"""The final distributions :math:`q(z \mid \psi_T)` in the standardized
        space for `psi` `(*, 2D)`: the read-out flow's, or the diagonal
        Gaussians with their scales times the machine's `scale_calibration`
        (set by :meth:`ALFI.train` from held-out tasks)."""
        if self.readout == "flow":
            return self.machine.readout(psi)
        return gaussian_proposal(psi, self.machine.scale_calibration)

    # The sbi posterior interface

    def sample(
        self,
        sample_shape: Shape = (),
        x: Tensor | None = None,
        show_progress_bars: bool = False,
    ) -> Tensor:
        r"""Draws from :math:`q(\theta \mid \psi_T)` for the data set `x`.

        Arguments:
            sample_shape: The shape of the draws.
            x: A data set of shape `(n, *x_shape)`; the default x when `None`.
            show_progress_bars: Unused: one inference takes well under a second
                beyond its simulations. Kept for `sbi`'s interface.

        Returns:
            Parameters of shape `(*sample_shape, D)`.
        """
        sample_shape = self._check_sample_shape(sample_shape)
        psi = self._final(self._psi(self._x_else_default_x(x).unsqueeze(0)))[0]
        z = self.proposal(psi).sample(sample_shape)
        return self.theta_transform.inv(z.clamp(-Z_MAX, Z_MAX))

    def sample_batched(
        self,
        sample_shape: Shape,
        x: Tensor,
        show_progress_bars: bool = False,
    ) -> Tensor:
        r"""Draws from the posteriors of many data sets, run as one batch.

        Arguments:
            sample_shape: The shape of the draws for each data set.
            x: Data sets of shape `(B, n, *x_shape)`.
            show_progress_bars: Unused; kept for `sbi`'s interface.

        Returns:
            Parameters of shape `(*sample_shape, B, D)`.
        """
        sample_shape = self._check_sample_shape(sample_shape)
        psi = self._final(self._psi(self._check_x(x, batched=True)))
        z = self.proposal(psi).sample(sample_shape)
        return self.theta_transform.inv(z.clamp(-Z_MAX, Z_MAX))

    def log_prob(
        self, theta: Tensor, x: Tensor | None = None, track_gradients: bool = False
    ) -> Tensor:
        r"""The exact log-density :math:`\log q(\theta \mid \psi_T)`, Jacobian of the
        standardizing map included; :math:`-\infty` outside the prior's support.

        Arguments:
            theta: Parameters of shape `(*, D)`.
            x: A data set of shape `(n, *x_shape)`; the default x when `None`.
            track_gradients: Whether the result tracks gradients with respect to
                `theta`.

        Returns:
            The log-densities, of shape `(*)`.
        """
        theta = self._check_theta(theta)
        psi = self._final(self._psi(self._x_else_default_x(x).unsqueeze(0)))[0]
        if theta.numel() == 0:
            return theta.new_zeros(theta.shape[:-1])
        with torch.set_grad_enabled(track_gradients):
            inside = within_support(self.prior, theta)
            # Masked placeholder: the transform of a point outside is NaN, whose
            # gradient would poison the others'.
            centre = self.theta_transform.inv(torch.zeros_like(theta))
            safe = torch.where(inside.unsqueeze(-1), theta, centre)
            z = self.theta_transform(safe)
            log_q = self.proposal(psi).log_prob(z)
            log_q = log_q + self.theta_transform.log_abs_det_jacobian(safe, z)
            return torch.where(inside, log_q, -torch.inf)

    def map(
        self,
        x: Tensor | None = None,
        num_iter: int = 1_000,
        num_to_optimize: int = 100,
        learning_rate: float = 0.01,
        init_method: str | Tensor = "posterior",
        num_init_samples: int = 1_000,
        save_best_every: int = 10,
        show_progress_bars: bool = False,
        force_update: bool = False,
    ) -> Tensor:
        r"""ALFI's point estimate :math:`t^{-1}(\mu_T)`, of shape `(1, D)` as
        `sbi`'s `map`: the image of the final proposal's mode (its
        coordinate-wise median in parameter space). It is known in closed form,
        so `sbi`'s optimizer arguments are accepted and unused.

        Arguments:
            x: A data set of shape `(n, *x_shape)`; the default x when `None`.
            num_iter: Unused (`sbi`'s).
            num_to_optimize: Unused (`sbi`'s).
            learning_rate: Unused (`sbi`'s).
            init_method: Unused (`sbi`'s).
            num_init_samples: Unused (`sbi`'s).
            save_best_every: Unused (`sbi`'s).
            show_progress_bars: Unused (`sbi`'s).
            force_update: Run the machine again for this `x` (new simulations).
        """
        del num_iter, num_to_optimize, learning_rate, init_method
        del num_init_samples, save_best_every, show_progress_bars
        x = self._x_else_default_x(x)
        if force_update:
            self._cache.pop(self._key(x), None)
        mu = self._final(self._psi(x.unsqueeze(0)))[0].chunk(2, dim=-1)[0]
        return self.theta_transform.inv(mu.clamp(-Z_MAX, Z_MAX))[None]

    def trajectory(self, x: Tensor | None = None, num_nodes: int = 32) -> Trajectory:
        r"""The proposals :math:`\psi_0 \dots \psi_T` for the data set `x`, with their
        means and standard deviations in parameter space (by Gauss–Hermite
        quadrature through the coordinate-wise map :math:`t^{-1}`).

        Arguments:
            x: A data set of shape `(n, *x_shape)`; the default x when `None`.
            num_nodes: The number of quadrature nodes.
        """
        psi = self._psi(self._x_else_default_x(x).unsqueeze(0))[:, 0]
        loc, log_scale = psi.chunk(2, dim=-1)
        nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
        nodes = torch.as_tensor(nodes, dtype=loc.dtype, device=loc.device)
        weights = torch.as_tensor(weights / weights.sum(), dtype=loc.dtype).to(loc)
        z = loc + log_scale.exp() * nodes[:, None, None]  # (nodes, T + 1, D)
        theta = self.theta_transform.inv(z.clamp(-Z_MAX, Z_MAX))
        mean = torch.einsum("k,ktd->td", weights, theta)
        var = torch.einsum("k,ktd->td", weights, (theta - mean).square())
        return Trajectory(mean, var.sqrt(), loc, log_scale.exp())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_processed_simulator"] = None  # sbi's wrapper is a closure
        state["engine"] = None  # a cluster's client does not travel: set it again
        return state


class ALFIPotential(BasePotential):
    r"""The potential of an :class:`ALFIPosterior`: its normalized log-density."""

    def __init__(
        self, posterior: ALFIPosterior, prior: Distribution, device: str | torch.device
    ):
        super().__init__(prior, x_o=None, device=device)
        self.posterior = posterior

    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        return self.posterior.log_prob(theta, self.x_o, track_gradients)


def check_budget(
    num_steps: int, num_proposal_samples: int, num_simulations_per_sample: int
) -> None:
    r"""Raises a :class:`ValueError` for a budget the machine cannot run."""
    if num_steps < 1:
        raise ValueError(f"`num_steps` must be at least 1, got {num_steps}.")
    if num_proposal_samples < 2:
        raise ValueError(
            "`num_proposal_samples` must be at least 2 (the score features are "
            f"standardized over the draws), got {num_proposal_samples}."
        )
    if num_simulations_per_sample < 1:
        raise ValueError(
            "`num_simulations_per_sample` must be at least 1, got "
            f"{num_simulations_per_sample}."
        )
