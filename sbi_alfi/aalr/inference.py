r"""AALR's trainer: `sbi`'s NRE_A with a numerically stable loss, a smooth
classifier and, as options, ensembles and a balancing penalty."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from sbi.inference import NRE_A
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from sbi.neural_nets import classifier_nn
from sbi.utils.torchutils import assert_all_finite
from torch import Tensor, nn
from torch.distributions import Distribution

from .classifiers import RatioEnsemble
from .posterior import METHODS, Method, RatioMCMCPosterior

__all__ = ["AALR"]


def default_classifier():
    r"""AALR's default classifier: `sbi`'s residual classifier (that of `NRE_A`,
    ReLU, z-scored inputs) with 128 hidden features instead of 50.

    Chosen on `benchmarks/results/classifiers`: 7 tasks (`sbibm`'s among them)
    at 1,000 and 10,000 simulations, the same simulations for every candidate,
    each network's own posterior drawn exactly, so that the ratio's error is
    measured apart from the sampler's. Over 12 task-budget-seed cells its mean
    C2ST was 0.686, `NRE_A`'s 0.714. Smooth activations (SiLU, ELU, GELU; the
    former default, a SiLU MLP) did well at 10,000 simulations but learned
    two_moons and the 20-point data sets far worse at 1,000 (two_moons: 0.89
    against 0.73), and `sbi`'s Gaussian-mixture toy 1.5 times too wide: a
    sharp likelihood is learned faster with ReLU. HMC follows the gradient of a
    ReLU network, piecewise constant, without a loss measured on the benchmark
    (`hmc_vectorized` on `NRE_A`'s network matched `sbi`'s slice sampler on it
    at 1,000 simulations); :func:`smooth_classifier` builds smooth ones."""
    return classifier_nn("resnet", hidden_features=128)


#: AALR's training batch; `sbi`'s is 200. On the 5-D linear Gaussian model
#: (benchmarks/results/aalr_checks) the default network trained on batches of
#: 200 was overconfident at 2 seeds of 4 (expected coverage 0.078 off the
#: diagonal; NRE_A's network 0.05-0.10 at every seed); on batches of 50 it was
#: within 0.023-0.044 at all 4 (the sampled posterior 0.023-0.041), with the
#: same accuracy over the classifier benchmark's 20 matched cells (mean C2ST
#: 0.669 against 0.681) and the same training time; presumably the noisier
#: gradient regularizes, and early stopping comes sooner.
TRAINING_BATCH_SIZE = 50


class AALR(NRE_A):
    r"""Amortized approximate likelihood ratios (Hermans et al., 2020).

    A classifier :math:`d(x, \theta)` separates dependent pairs
    :math:`(x, \theta) \sim p(x, \theta)` from independent ones
    :math:`p(x) p(\theta)`; at the optimum its logit is the log
    likelihood-to-evidence ratio

    .. math:: \log \hat r(x \mid \theta) = \mathrm{logit}\, d(x, \theta)
        \approx \log \frac{p(x \mid \theta)}{p(x)}.

    This is `sbi`'s `NRE_A` with three changes: the loss is the binary
    cross-entropy on logits (`sbi` applies a sigmoid, then takes logs, which
    saturates to :math:`\pm\infty` for confident classifiers), as the paper
    asks; the default classifier is wider (:func:`default_classifier`); and
    it trains on batches of 50, not 200 (`TRAINING_BATCH_SIZE`), which
    calibrates it.
    `build_posterior` returns a :class:`RatioMCMCPosterior`.

    Two options for more reliable ratios: `ensemble_size` trains that many
    classifiers (each on its own training/validation split) and averages them
    in ratio space (:class:`RatioEnsemble`); `regularization_strength`
    :math:`\lambda` adds the balancing penalty of BNRE (Delaunoy et al., 2022),
    :math:`\lambda (\mathbb{E}_{p(x, \theta)}[d] + \mathbb{E}_{p(x)p(\theta)}[d]
    - 1)^2`, which pushes the ratio towards conservative posteriors.

    References:
        | Likelihood-free MCMC with Amortized Approximate Ratio Estimators
        | (Hermans et al., 2020) https://arxiv.org/abs/1903.04057

        | Towards Reliable Simulation-Based Inference with Balanced Neural Ratio
        | Estimation (Delaunoy et al., 2022) https://arxiv.org/abs/2208.13624

    Arguments:
        prior: The prior.
        classifier: `None` for :func:`default_classifier`, one of
            `sbi`'s names (`"resnet"`, `"mlp"`, `"linear"`), or a builder
            `(batch_theta, batch_x) -> RatioEstimator`.
        ensemble_size: The classifiers averaged in ratio space.
        regularization_strength: BNRE's :math:`\lambda`; 0 for none.
        device: The training device.
        show_progress_bars: Whether to show progress bars.
        kwargs: Further arguments of `NRE_A`.

    Example:
        >>> import torch
        >>> from sbi.utils import BoxUniform
        >>> from sbi_alfi import AALR
        >>> prior = BoxUniform(-torch.ones(2), torch.ones(2))
        >>> theta = prior.sample((500,))
        >>> x = theta + 0.1 * torch.randn_like(theta)
        >>> inference = AALR(prior, show_progress_bars=False)
        >>> estimator = inference.append_simulations(theta, x).train(max_num_epochs=2)
        >>> posterior = inference.build_posterior(
        ...     mcmc_parameters={"num_chains": 10, "warmup_steps": 20})
        >>> posterior.sample((50,), x=torch.zeros(2)).shape
        torch.Size([50, 2])
    """

    def __init__(
        self,
        prior: Distribution | None = None,
        classifier: Any = None,
        ensemble_size: int = 1,
        regularization_strength: float = 0.0,
        device: str = "cpu",
        show_progress_bars: bool = True,
        **kwargs: Any,
    ):
        if ensemble_size < 1 or regularization_strength < 0:
            raise ValueError(
                "Need `ensemble_size` >= 1 and `regularization_strength` >= 0, got "
                f"{ensemble_size} and {regularization_strength}."
            )
        super().__init__(
            prior=prior,
            classifier=default_classifier() if classifier is None else classifier,
            device=device,
            show_progress_bars=show_progress_bars,
            **kwargs,
        )
        self.ensemble_size = ensemble_size
        self.regularization_strength = regularization_strength

    def append_simulations(
        self, theta: Tensor, x: Tensor, *args: Any, iid: bool = False, **kwargs: Any
    ) -> AALR:
        r"""Stores simulations, as `NRE_A.append_simulations` (same arguments).

        With `iid=True`, each simulation is a data set of :math:`n` points
        drawn i.i.d. given its :math:`\theta`, `x` of shape
        `(B, n, *point_shape)`, and the classifier learns the ratio of one point,
        :math:`\hat r(x_i \mid \theta)`, from the :math:`B n` pairs
        :math:`(\theta, x_i)`: the factorized route. The posterior of a data
        set `x_o` of shape `(n, *point_shape)` then sums the :math:`n`
        log-ratios, as :class:`RatioMCMCPosterior` does for any `x` with several
        rows, whatever :math:`n` is.
        """
        if iid:
            theta, x = torch.as_tensor(theta), torch.as_tensor(x)
            if x.dim() < 2 or len(x) != len(theta):
                raise ValueError(
                    "With `iid=True`, `x` must hold one data set per theta, of shape "
                    f"({len(theta)}, n, *point_shape), got {tuple(x.shape)}."
                )
            theta = theta.repeat_interleave(x.shape[1], dim=0)
            x = x.reshape(-1, *x.shape[2:])
            if x.dim() == 1:
                x = x[:, None]  # scalar points, as sbi's (n, 1)
        super().append_simulations(theta, x, *args, **kwargs)
        return self

    def train(self, *args: Any, **kwargs: Any) -> nn.Module:
        r"""Trains the classifier, as `NRE_A.train` (same arguments) but on
        batches of `TRAINING_BATCH_SIZE` (50) unless `training_batch_size` is
        given; with `ensemble_size` :math:`K > 1`, trains :math:`K` from
        scratch, each on its own random training/validation split, and returns
        their :class:`RatioEnsemble`."""
        if not args:
            kwargs.setdefault("training_batch_size", TRAINING_BATCH_SIZE)
        if self.ensemble_size == 1 and not isinstance(self._neural_net, RatioEnsemble):
            return super().train(*args, **kwargs)
        members = []
        for _ in range(self.ensemble_size):
            kwargs["retrain_from_scratch"] = True
            members.append(super().train(*args, **kwargs))
        self._neural_net = members[0] if len(members) == 1 else RatioEnsemble(members)
        return self._neural_net

    def _loss(self, theta: Tensor, x: Tensor, num_atoms: int) -> Tensor:
        r"""Binary cross-entropy on the logits of alternating dependent (label 1)
        and independent (label 0) pairs, as `NRE_A` pairs them, plus BNRE's
        balancing penalty when `regularization_strength` > 0."""
        logits = self._classifier_logits(theta, x, num_atoms).reshape(-1)
        labels = torch.ones_like(logits)
        labels[1::2] = 0.0
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        if self.regularization_strength > 0:
            d = torch.sigmoid(logits)
            balance = (d[0::2] + d[1::2] - 1).mean().square()
            loss = loss + self.regularization_strength * balance
        assert_all_finite(loss, "AALR loss")
        return loss

    def build_posterior(
        self,
        density_estimator: nn.Module | None = None,
        prior: Distribution | None = None,
        sample_with: Literal["mcmc", "rejection", "vi", "importance"] = "mcmc",
        mcmc_method: Method | str = "smc_vectorized",
        mcmc_parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> NeuralPosterior:
        r"""The posterior of the trained (or given) estimator, with `sbi`'s
        arguments: a :class:`RatioMCMCPosterior` when `sample_with="mcmc"` and
        `mcmc_method` is one of its `METHODS`; otherwise `sbi`'s own posterior
        (`NRE_A.build_posterior`: its slice samplers, rejection, VI, importance
        sampling) on the same estimator.

        Arguments:
            density_estimator: The ratio estimator; the last trained when `None`.
            prior: The prior; the inference's when `None`.
            sample_with: `"mcmc"`, or `sbi`'s `"rejection"`, `"vi"`,
                `"importance"`.
            mcmc_method: One of `METHODS` (`"smc_vectorized"` by default), or
                one of `sbi`'s (`"slice_np_vectorized"`, ...).
            mcmc_parameters: Arguments of :class:`RatioMCMCPosterior`
                (`num_chains`, `warmup_steps`, `thin`, `init_strategy`,
                `kernel_kwargs`...), or of `sbi`'s `MCMCPosterior` for its
                methods.
            kwargs: Further arguments of `NRE_A.build_posterior`
                (`vi_parameters`, `rejection_sampling_parameters`,
                `posterior_parameters`...), which build `sbi`'s posterior.
        """
        estimator = self._neural_net if density_estimator is None else density_estimator
        prior = self._prior if prior is None else prior
        if estimator is None or prior is None:
            raise ValueError(
                "AALR has no trained estimator or no prior: call `train()` first and "
                "give a prior to AALR or to `build_posterior`."
            )
        sbis = kwargs.get("posterior_parameters") is not None  # sbi's dataclasses
        if sample_with != "mcmc" or mcmc_method not in METHODS or sbis:
            return super().build_posterior(
                estimator,
                prior,
                sample_with,
                mcmc_method=mcmc_method,
                mcmc_parameters=mcmc_parameters,
                **kwargs,
            )
        if kwargs:
            raise ValueError(
                f"{sorted(kwargs)} are not arguments of the MCMC posterior: pass its "
                "options in `mcmc_parameters`."
            )
        parameters = {"show_progress_bars": self._show_progress_bars}
        parameters.update(mcmc_parameters or {})
        return RatioMCMCPosterior(
            estimator, prior, method=mcmc_method, device=self._device, **parameters
        )
