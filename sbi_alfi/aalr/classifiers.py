r"""The classifiers whose logits are AALR's log-ratios: smooth networks built
through `sbi`'s builder protocol, and ensembles averaged in ratio space."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from nflows.nn.nets import ResidualNet
from sbi.neural_nets.net_builders.classifier import build_z_scored_embedding_net
from sbi.neural_nets.ratio_estimators import RatioEstimator
from sbi.utils.nn_utils import get_numel
from torch import Tensor, nn

__all__ = ["RatioEnsemble", "smooth_classifier"]

#: The smooth activations by name, as modules and as functions (nflows' residual
#: blocks take a function).
ACTIVATIONS = {
    "silu": (nn.SiLU, F.silu),
    "elu": (nn.ELU, F.elu),
    "gelu": (nn.GELU, F.gelu),
}


def smooth_classifier(
    model: Literal["resnet", "mlp"] = "resnet",
    hidden_features: int = 50,
    num_blocks: int = 2,
    num_layers: int = 3,
    activation: Literal["silu", "elu", "gelu"] = "silu",
    z_score_theta: str | None = "independent",
    z_score_x: str | None = "independent",
    embedding_net_x: nn.Module | None = None,
) -> Callable[[Tensor, Tensor], RatioEstimator]:
    r"""A builder, in `sbi`'s `ConditionalEstimatorBuilder` protocol, of a ratio
    classifier with a smooth activation.

    HMC follows :math:`\nabla_\theta \log \hat r(x \mid \theta)`. `sbi`'s
    classifiers use ReLU, whose log-ratio is piecewise linear in
    :math:`\theta`: its gradient is piecewise constant and jumps, so a
    leapfrog trajectory integrates a jagged force field. A smooth activation
    (SiLU, ELU, GELU) makes the gradient continuous. Measured on the benchmark
    (`benchmarks/results/classifiers`), that was not worth its price: smooth
    networks learned small budgets and sharp likelihoods worse than ReLU ones,
    and HMC on a ReLU network matched `sbi`'s slice sampler on it, so AALR's
    default is ReLU (:func:`~sbi_alfi.aalr.inference.default_classifier`).
    These are for a user whose HMC rejects many proposals on a ReLU network.

    `"resnet"` is `sbi`'s residual classifier (nflows' `ResidualNet`, the
    default of `NRE_A`) with the activation made smooth; `"mlp"` a plain
    multi-layer perceptron. Inputs are z-scored, as in `sbi`.

    Arguments:
        model: `"resnet"` or `"mlp"`.
        hidden_features: The width of the hidden layers.
        num_blocks: The residual blocks of `"resnet"`.
        num_layers: The hidden layers of `"mlp"`.
        activation: The smooth activation.
        z_score_theta: `sbi`'s z-scoring of :math:`\theta`.
        z_score_x: `sbi`'s z-scoring of :math:`x`.
        embedding_net_x: An embedding of :math:`x`, after its z-scoring.

    Returns:
        A callable `(batch_theta, batch_x) -> RatioEstimator`, for `classifier=`.

    Example:
        >>> import torch
        >>> build = smooth_classifier()
        >>> estimator = build(torch.randn(100, 2), torch.randn(100, 3))
        >>> estimator(torch.randn(5, 2), torch.randn(5, 3)).shape
        torch.Size([5])
    """
    if model not in ("resnet", "mlp"):
        raise ValueError(f"`model` must be 'resnet' or 'mlp', got {model!r}.")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {sorted(ACTIVATIONS)}, got {activation!r}."
        )
    module, function = ACTIVATIONS[activation]

    def build(batch_theta: Tensor, batch_x: Tensor) -> RatioEstimator:
        embedding_x = embedding_net_x if embedding_net_x is not None else nn.Identity()
        theta_net = build_z_scored_embedding_net(batch_theta, z_score_theta)
        x_net = build_z_scored_embedding_net(batch_x, z_score_x, embedding_x)
        in_features = get_numel(batch_theta) + get_numel(batch_x, embedding_x)
        if model == "resnet":
            net: nn.Module = ResidualNet(
                in_features,
                1,
                hidden_features,
                num_blocks=num_blocks,
                activation=function,
            )
        else:
            sizes = [in_features] + [hidden_features] * num_layers
            layers: list[nn.Module] = []
            for a, b in itertools.pairwise(sizes):
                layers += [nn.Linear(a, b), module()]
            net = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))
        return RatioEstimator(
            net=net,
            theta_shape=batch_theta[0].shape,
            x_shape=batch_x[0].shape,
            embedding_net_theta=theta_net,
            embedding_net_x=x_net,
        )

    return build


class RatioEnsemble(nn.Module):
    r"""An ensemble of :math:`K` ratio estimators averaged in ratio space,

    .. math:: \log \hat r(x \mid \theta) = \log \frac1K \sum_k
        \hat r_k(x \mid \theta),

    as the AALR and trust-crisis papers recommend for reliable ratios: a
    member's overconfident region is tempered by the others (Hermans et al.,
    2020; Hermans et al., 2022).

    References:
        | A Trust Crisis In Simulation-Based Inference? Your Posterior
        | Approximations Can Be Unfaithful (Hermans et al., 2022)
        | https://arxiv.org/abs/2110.06581

    Arguments:
        estimators: The members, each mapping `(theta, x)` to log-ratios.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Shift(nn.Module):
        ...     def __init__(self, c):
        ...         super().__init__()
        ...         self.c = c
        ...     def forward(self, theta, x):
        ...         return torch.full((len(theta),), self.c)
        >>> ensemble = RatioEnsemble([Shift(0.0), Shift(torch.log(torch.tensor(3.0)))])
        >>> ensemble(torch.zeros(1, 2), torch.zeros(1, 2)).exp()  # (1 + 3) / 2
        tensor([2.])
    """

    def __init__(self, estimators: Sequence[nn.Module]):
        super().__init__()
        if not estimators:
            raise ValueError("`estimators` must hold at least one estimator.")
        self.estimators = nn.ModuleList(estimators)
        for name in ("theta_shape", "x_shape"):  # sbi's shape checks read them
            if hasattr(estimators[0], name):
                setattr(self, name, getattr(estimators[0], name))

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""The log of the members' mean ratio, `(B,)`, as `sbi`'s estimators."""
        log_ratios = [e(theta, x).reshape(len(theta)) for e in self.estimators]
        log_mean = torch.logsumexp(torch.stack(log_ratios), dim=0)
        return log_mean - math.log(len(self.estimators))
