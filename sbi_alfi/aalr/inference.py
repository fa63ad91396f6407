r"""AALR's trainer: `sbi`'s NRE_A with a numerically stable loss and a smooth
classifier."""

from __future__ import annotations

import itertools
from typing import Any, Literal

import torch
import torch.nn.functional as F
from sbi.inference import NRE_A
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from sbi.neural_nets.ratio_estimators import RatioEstimator
from sbi.utils.sbiutils import standardizing_net, z_score_parser
from sbi.utils.torchutils import assert_all_finite
from torch import Tensor, nn
from torch.distributions import Distribution

from .posterior import METHODS, Method, RatioMCMCPosterior

__all__ = ["AALR", "smooth_classifier"]


def smooth_classifier(
    hidden_features: int = 64,
    num_layers: int = 3,
    activation: type[nn.Module] = nn.SiLU,
    z_score_theta: str | None = "independent",
    z_score_x: str | None = "independent",
    embedding_net_x: nn.Module | None = None,
):
    r"""A builder, in `sbi`'s `ConditionalEstimatorBuilder` protocol, of an MLP
    ratio estimator with smooth activations (SiLU by default).

    `sbi`'s own classifiers use ReLU, whose log-ratio has piecewise-constant
    gradients in :math:`\theta`: HMC then integrates a jagged force field. A
    smooth activation makes :math:`\nabla_\theta \log \hat r` continuous.

    Returns:
        A callable `(batch_theta, batch_x) -> RatioEstimator`, for `classifier=`.
    """

    def build(batch_theta: Tensor, batch_x: Tensor) -> RatioEstimator:
        embedding_x = embedding_net_x if embedding_net_x is not None else nn.Identity()
        theta_net: nn.Module = nn.Identity()
        x_net: nn.Module = embedding_x
        structured, enabled = z_score_parser(z_score_theta)
        if enabled:
            theta_net = standardizing_net(batch_theta, structured)
        structured, enabled = z_score_parser(z_score_x)
        if enabled:
            x_net = nn.Sequential(standardizing_net(batch_x, structured), embedding_x)
        with torch.no_grad():
            x_features = x_net(batch_x[:2]).reshape(2, -1).shape[1]
        sizes = [batch_theta.shape[1] + x_features] + [hidden_features] * num_layers
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(sizes[-1], 1))
        return RatioEstimator(
            net=nn.Sequential(*layers),
            theta_shape=batch_theta[0].shape,
            x_shape=batch_x[0].shape,
            embedding_net_theta=theta_net,
            embedding_net_x=x_net,
        )

    return build


class AALR(NRE_A):
    r"""Amortized approximate likelihood ratios (Hermans et al., 2020).

    A classifier :math:`d(x, \theta)` separates dependent pairs
    :math:`(x, \theta) \sim p(x, \theta)` from independent ones
    :math:`p(x) p(\theta)`; at the optimum its logit is the log
    likelihood-to-evidence ratio

    .. math:: \log \hat r(x \mid \theta) = \mathrm{logit}\, d(x, \theta)
        \approx \log \frac{p(x \mid \theta)}{p(x)}.

    This is `sbi`'s `NRE_A` with two changes the paper asks for: the loss is the
    binary cross-entropy on logits (`sbi` applies a sigmoid, then takes logs, which
    saturates to :math:`\pm\infty` for confident classifiers), and the default
    classifier is :func:`smooth_classifier`, whose gradients HMC can follow.
    `build_posterior` returns a :class:`RatioMCMCPosterior`.

    References:
        | Likelihood-free MCMC with Amortized Approximate Ratio Estimators
        | (Hermans et al., 2020) https://arxiv.org/abs/1903.04057

    Arguments:
        prior: The prior.
        classifier: `None` for :func:`smooth_classifier`, or any of `NRE_A`'s.
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
        device: str = "cpu",
        show_progress_bars: bool = True,
        **kwargs: Any,
    ):
        super().__init__(
            prior=prior,
            classifier=smooth_classifier() if classifier is None else classifier,
            device=device,
            show_progress_bars=show_progress_bars,
            **kwargs,
        )

    def _loss(self, theta: Tensor, x: Tensor, num_atoms: int) -> Tensor:
        r"""Binary cross-entropy on the logits of alternating dependent (label 1)
        and independent (label 0) pairs, as `NRE_A` pairs them."""
        logits = self._classifier_logits(theta, x, num_atoms).reshape(-1)
        labels = torch.ones_like(logits)
        labels[1::2] = 0.0
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        assert_all_finite(loss, "AALR loss")
        return loss

    def build_posterior(
        self,
        density_estimator: nn.Module | None = None,
        prior: Distribution | None = None,
        sample_with: Literal["mcmc", "rejection", "vi", "importance"] = "mcmc",
        mcmc_method: Method | str = "hmc_vectorized",
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
            mcmc_method: One of `METHODS` (`"hmc_vectorized"` by default), or
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
