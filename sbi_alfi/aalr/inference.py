r"""AALR's trainer: `sbi`'s NRE_A with a numerically stable loss and a smooth
classifier."""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from sbi.inference import NRE_A
from sbi.neural_nets.ratio_estimators import RatioEstimator
from sbi.utils.sbiutils import standardizing_net, z_score_parser
from sbi.utils.torchutils import assert_all_finite
from torch import Tensor, nn
from torch.distributions import Distribution

from .posterior import Method, RatioMCMCPosterior

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
        >>> posterior = inference.build_posterior(estimator, num_chains=10,
        ...                                       warmup_steps=20)
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
        estimator: nn.Module | None = None,
        prior: Distribution | None = None,
        method: Method = "hmc_vectorized",
        **kwargs: Any,
    ) -> RatioMCMCPosterior:
        r"""A :class:`RatioMCMCPosterior` around the trained (or given) estimator.

        Arguments:
            estimator: The ratio estimator; the last trained when `None`.
            prior: The prior; the inference's when `None`.
            method: The MCMC method, see :class:`RatioMCMCPosterior`.
            kwargs: Further arguments of :class:`RatioMCMCPosterior`.
        """
        estimator = self._neural_net if estimator is None else estimator
        prior = self._prior if prior is None else prior
        if estimator is None or prior is None:
            raise ValueError(
                "AALR has no trained estimator or no prior: call `train()` first and "
                "give a prior to AALR or to `build_posterior`."
            )
        kwargs.setdefault("show_progress_bars", self._show_progress_bars)
        return RatioMCMCPosterior(
            estimator, prior, method=method, device=self._device, **kwargs
        )
