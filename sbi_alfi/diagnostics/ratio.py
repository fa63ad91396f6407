r"""Checks of a likelihood-to-evidence ratio estimator."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from sbi.utils import process_prior
from sbi.utils.user_input_checks import process_simulator
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score, roc_curve
from threadpoolctl import threadpool_limits
from torch import Tensor
from torch.distributions import Distribution

from ..checked_posterior import theta_dim
from ..simulation import checked_simulation

__all__ = ["ROC", "Normalization", "ratio_normalization", "ratio_roc_auc"]


def _processed(
    prior: Distribution, simulator: Callable
) -> tuple[Distribution, Callable[[Tensor], Tensor]]:
    r"""The prior and simulator as `sbi` takes them (a simulator may return NumPy
    arrays, or take one parameter at a time); their simulations then go through
    :func:`checked_simulation`, whose errors name the failing rows."""
    prior, _, prior_returns_numpy = process_prior(prior)
    simulator = process_simulator(simulator, prior, prior_returns_numpy)
    return prior, lambda theta: checked_simulation(simulator, theta)


def _log_ratios(
    estimator: Callable[[Tensor, Tensor], Tensor], theta: Tensor, x: Tensor
) -> Tensor:
    r"""One log-ratio per pair `(theta[i], x[i])`, shape `(B,)`, or a
    :class:`ValueError` that says what the estimator did wrong."""
    try:
        value = torch.as_tensor(estimator(theta, x))
    except Exception as error:
        raise ValueError(
            f"The ratio estimator raised {type(error).__name__} on theta of shape "
            f"{tuple(theta.shape)} and x of shape {tuple(x.shape)}: {error}"
        ) from error
    if value.numel() != len(theta):
        raise ValueError(
            "The ratio estimator must return one log-ratio per (theta, x) pair, "
            f"shape ({len(theta)},) here; it returned {tuple(value.shape)}."
        )
    if torch.isnan(value).any():
        raise ValueError("The ratio estimator returned NaN.")
    return value.reshape(len(theta))


class Normalization(NamedTuple):
    r"""A Monte Carlo estimate and its standard error."""

    value: float
    standard_error: float


@torch.no_grad()
def ratio_normalization(
    estimator: Callable[[Tensor, Tensor], Tensor],
    prior: Distribution,
    simulator: Callable[[Tensor], Tensor],
    num_simulations: int = 10_000,
    batch_size: int = 10_000,
) -> Normalization:
    r"""The Monte Carlo estimate of

    .. math:: \mathbb{E}_{p(\theta) p(x)} \left[ \hat r(x \mid \theta) \right]
        = \int p(\theta) \, p(x) \, \frac{\hat p(x \mid \theta)}{p(x)}
        \, \mathrm{d}x \, \mathrm{d}\theta,

    which is 1 when :math:`\hat r = p(x \mid \theta) / p(x)`: each
    :math:`\hat p(x \mid \theta)` must integrate to 1 (Hermans et al., 2020).
    Pairs are independent: :math:`\theta \sim p(\theta)` and :math:`x` simulated
    from another prior draw.

    Arguments:
        estimator: Maps `(theta, x)` batches to log-ratios `(B,)` or `(B, 1)`.
        prior: The prior.
        simulator: Maps `theta` `(B, D)` to `x` `(B, *x_shape)`; any simulator
            that `sbi` accepts (NumPy, unbatched), processed by its
            `process_simulator`.
        num_simulations: The number of pairs.
        batch_size: The pairs the estimator sees at once.

    Returns:
        The estimate and its standard error.

    Example:
        >>> import torch
        >>> from torch.distributions import MultivariateNormal, Normal
        >>> prior = MultivariateNormal(torch.zeros(1), torch.eye(1))
        >>> def simulator(theta):
        ...     return theta + torch.randn_like(theta)
        >>> def exact(theta, x):  # log N(x; theta, 1) - log N(x; 0, 2)
        ...     return (Normal(theta, 1).log_prob(x)
        ...             - Normal(0, 2**0.5).log_prob(x)).sum(-1)
        >>> value, error = ratio_normalization(exact, prior, simulator, 100_000)
        >>> round(value, 1)  # Var r = 1 here, so the error is about 0.003
        1.0
    """
    if num_simulations < 2:
        raise ValueError(
            f"`num_simulations` must be at least 2, got {num_simulations}."
        )
    prior, simulator = _processed(prior, simulator)
    theta = prior.sample((num_simulations,))
    x = simulator(prior.sample((num_simulations,)))
    log_ratio = torch.cat(
        [
            _log_ratios(estimator, t, x_b)
            for t, x_b in zip(theta.split(batch_size), x.split(batch_size), strict=True)
        ]
    ).double()
    ratio = log_ratio.exp()
    return Normalization(
        ratio.mean().item(), ratio.std().item() / math.sqrt(num_simulations)
    )


class ROC(NamedTuple):
    r"""The ROC diagnostic at each tested parameter."""

    theta: Tensor  #: the tested parameters, `(K, D)`
    auc: Tensor  #: the weighted ROC AUC at each, `(K,)`; 0.5 when the ratio is right
    false_positive_rate: list[Tensor]  #: the ROC curve at each parameter
    true_positive_rate: list[Tensor]


# Fewer simulations per class leave the classifier's AUC too noisy to read.
MIN_SIMULATIONS = 100


@torch.no_grad()
def ratio_roc_auc(
    estimator: Callable[[Tensor, Tensor], Tensor],
    prior: Distribution,
    simulator: Callable[[Tensor], Tensor],
    theta: Tensor | None = None,
    num_theta: int = 10,
    num_simulations: int = 2_000,
    marginal_factor: int = 10,
    seed: int = 0,
) -> ROC:
    r"""The ROC diagnostic of the AALR paper (Hermans et al., 2020).

    At each :math:`\theta`, a fresh classifier learns to separate
    :math:`x \sim p(x \mid \theta)` (label 1) from prior-predictive draws
    :math:`x \sim p(x)` weighted by :math:`\hat r(x \mid \theta)` (label 0,
    weights normalized to mean 1). If :math:`\hat r = p(x \mid \theta) / p(x)`,
    the weighted class is :math:`p(x \mid \theta)` itself and no classifier does
    better than chance: the weighted ROC AUC on held-out data is 0.5. An AUC
    clearly above 0.5 locates where the ratio is wrong.

    The classifier is scikit-learn's histogram gradient boosting (it takes
    sample weights; `sbi`'s `c2st` does not). Half of each class trains it,
    the other half scores it. The weighted class draws `marginal_factor` times
    more simulations: where :math:`\hat r` is peaked, few prior-predictive draws
    carry its weight, and a classifier fitted to those few overfits (an AUC
    below 0.5 is that symptom). The prior-predictive draws are shared by every
    :math:`\theta`, and all simulations run as one batch.

    Arguments:
        estimator: Maps `(theta, x)` batches to log-ratios `(B,)` or `(B, 1)`.
        prior: The prior.
        simulator: Maps `theta` `(B, D)` to `x` `(B, *x_shape)`; any simulator
            that `sbi` accepts (NumPy, unbatched), processed by its
            `process_simulator`.
        theta: The parameters to test, `(K, D)`; `num_theta` prior draws if `None`.
        num_theta: How many prior draws to test when `theta` is `None`.
        num_simulations: Simulations from each :math:`p(x \mid \theta)` (at
            least 100).
        marginal_factor: The prior-predictive simulations, per `num_simulations`.
        seed: The classifiers' seed.

    Returns:
        A :class:`ROC`.

    Example:
        >>> import torch
        >>> from torch.distributions import MultivariateNormal, Normal
        >>> prior = MultivariateNormal(torch.zeros(1), torch.eye(1))
        >>> def simulator(theta):
        ...     return theta + torch.randn_like(theta)
        >>> def exact(theta, x):  # log N(x; theta, 1) - log N(x; 0, 2)
        ...     return (Normal(theta, 1).log_prob(x)
        ...             - Normal(0, 2**0.5).log_prob(x)).sum(-1)
        >>> roc = ratio_roc_auc(exact, prior, simulator, num_theta=3)
        >>> bool((roc.auc < 0.6).all())  # chance is 0.5; a wrong ratio scores more
        True
    """
    if num_simulations < MIN_SIMULATIONS:
        raise ValueError(
            f"`num_simulations` must be at least {MIN_SIMULATIONS} for a classifier "
            f"to be trained and scored, got {num_simulations}."
        )
    prior, simulator = _processed(prior, simulator)
    dim = theta_dim(prior)
    if theta is None:
        theta = prior.sample((num_theta,))
    theta = torch.as_tensor(theta, dtype=torch.float32)
    if theta.dim() != 2 or theta.shape[1] != dim or len(theta) == 0:
        raise ValueError(
            f"`theta` must have shape (K, {dim}) (K >= 1 parameter vectors of the "
            f"prior's dimension {dim}), got {tuple(theta.shape)}."
        )
    k, n, m = len(theta), num_simulations, marginal_factor * num_simulations
    x_theta = simulator(theta.repeat_interleave(n, dim=0))  # (K * N, *x_shape)
    x_marginal = simulator(prior.sample((m,)))  # shared by every theta
    log_ratio = _log_ratios(
        estimator,
        theta.repeat_interleave(m, dim=0),
        x_marginal.repeat(k, *[1] * (x_marginal.dim() - 1)),
    ).reshape(k, m)
    # Each class weighs n in total: the marginal's weights are the ratios.
    weights = torch.softmax(log_ratio.double(), dim=-1) * n
    x_theta = x_theta.reshape(k, n, -1).double()
    x_marginal = x_marginal.reshape(m, -1).double()
    labels = torch.cat([torch.ones(n), torch.zeros(m)]).numpy()
    train = torch.zeros(n + m, dtype=torch.bool)
    train[: n // 2] = train[n : n + m // 2] = True
    train, test = train.numpy(), (~train).numpy()
    aucs, fprs, tprs = [], [], []
    for i in range(k):  # one fresh classifier per theta, as the test requires
        features = torch.cat([x_theta[i], x_marginal]).numpy()
        w = torch.cat([torch.ones(n, dtype=torch.double), weights[i]]).numpy()
        classifier = HistGradientBoostingClassifier(random_state=seed)
        # scikit-learn's OpenMP threads and torch's (which spin-wait after their
        # work) oversubscribe the cores: the same fit took 0.4 s or over 100 s.
        # These fits are small; one thread is fast and never stalls.
        with threadpool_limits(limits=1, user_api="openmp"):
            classifier.fit(features[train], labels[train], sample_weight=w[train])
            score = classifier.predict_proba(features[test])[:, 1]
        aucs.append(roc_auc_score(labels[test], score, sample_weight=w[test]))
        fpr, tpr, _ = roc_curve(labels[test], score, sample_weight=w[test])
        fprs.append(torch.as_tensor(fpr))
        tprs.append(torch.as_tensor(tpr))
    return ROC(theta, torch.tensor(aucs), fprs, tprs)
