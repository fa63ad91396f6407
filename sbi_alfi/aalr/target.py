r"""The one route from observations to the ratio network, and the posterior's
log-density built on it, for the samplers of :class:`RatioMCMCPosterior`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from sbi.inference.potentials.ratio_based_potential import RatioBasedPotential
from torch import Tensor, nn
from torch.distributions import Distribution, Transform

__all__ = ["FunctionRatio", "PyroPotential", "RatioPotential", "Target", "log_ratio"]

# How far out in the unconstrained space (in prior standard deviations for an
# unbounded prior, `sbi`'s z-scoring) a NaN potential is a diverging trajectory's
# overflow, not a broken estimator. (SLCP's exact likelihood overflows to NaN
# from |θ| ~ 1e10 on; HMC chains under a Gaussian prior reached 1e21 there.)
Z_FAR = 1e3
# The most rows one call of the network takes on a CPU: the cost per row of
# AALR's default classifier grows with the rows a call as its activations
# outgrow the cache, from 2.4 us at 16,384 rows to 3.6 us at 80,000 (the rows
# of SMC on 20 observations; benchmarks/results/mcmc). A GPU takes the whole
# batch.
CPU_ROWS_PER_CALL = 16_384


def log_ratio(estimator: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
    r"""The log-ratio of each of `B` observations, each `n` i.i.d. rows, at
    each of its `K` parameter vectors: :math:`\sum_{i=1}^n \log \hat r(x_{b,i}
    \mid \theta_{b,k})`, in one call of the estimator.

    Every path to the network goes through here: `sample` (`B = 1`, the rows of
    `x` i.i.d.), `sample_batched` (`n = 1`), the chains' initialization, the
    potential and the check of `x`. On a CPU, the rows go to the network in
    calls of at most `CPU_ROWS_PER_CALL`.

    Arguments:
        estimator: Maps `(theta, x)` batches to log-ratios `(N,)` or `(N, 1)`.
        theta: `(B, K, D)`.
        x: `(B, n, *x_shape)`.

    Returns:
        `(B, K)`.
    """
    (batch, k, dim), n = theta.shape, x.shape[1]
    # Rows ordered (b, i, k): theta ABCABC, x AABBCC within an observation, as
    # sbi pairs them.
    theta_rows = theta[:, None].expand(batch, n, k, dim).reshape(-1, dim)
    x_rows = x[:, :, None].expand(batch, n, k, *x.shape[2:])
    x_rows = x_rows.reshape(-1, *x.shape[2:])
    if theta_rows.device.type == "cpu" and len(theta_rows) > CPU_ROWS_PER_CALL:
        value = torch.cat(
            [
                estimator(t, x_chunk).reshape(-1)
                for t, x_chunk in zip(
                    theta_rows.split(CPU_ROWS_PER_CALL),
                    x_rows.split(CPU_ROWS_PER_CALL),
                    strict=True,
                )
            ]
        )
    else:
        value = estimator(theta_rows, x_rows)
    return value.reshape(batch, n, k).sum(1)


class Target:
    r"""The posterior's log-density in the unconstrained space :math:`z =
    t(\theta)` of the chains, Jacobian included, for `B` observations with
    `C` chains each, observation-major:

    .. math:: \log \pi_b(z) = \log p(t^{-1}(z)) + \log |J_{t^{-1}}(z)|
        + \sum_i \log \hat r(x_{b,i} \mid t^{-1}(z)).

    SMC tempers the second term alone (:meth:`log_ratio`). A NaN or
    :math:`+\infty` log-ratio inside the prior's support raises a
    :class:`ValueError` naming the chain and :math:`\theta`: a broken
    estimator, not a rejection. A class, not a closure, so that Pyro can
    pickle it for chains in other processes.

    Arguments:
        estimator: The ratio estimator.
        prior: The prior, with `log_prob` of :math:`-\infty` off its support.
        transform: :math:`t`, from `sbi.utils.mcmc_transform`.
        x: The observations, `(B, n, *x_shape)`.
        name_chains: Whether errors name the chain (Pyro's one-chain calls do
            not know theirs).
        observations: The numbers of the observations, `(B,)`, that errors
            name; `0 ... B - 1` when `None` for `B > 1`, none for one.
    """

    def __init__(
        self,
        estimator: nn.Module,
        prior: Distribution,
        transform: Transform,
        x: Tensor,
        name_chains: bool = True,
        observations: Tensor | None = None,
    ):
        self.estimator = estimator
        self.prior = prior
        self.transform = transform
        self.x = x
        self.name_chains = name_chains
        if observations is None and len(x) > 1:
            observations = torch.arange(len(x), device=x.device)
        self.observations = observations

    def restrict(self, index: Tensor) -> Target:
        r"""The target of the observations `index` only, `(k,)` (repeats
        allowed): its chains are those observations' blocks, in that order."""
        index = index.to(self.x.device)
        restricted = Target(
            self.estimator, self.prior, self.transform, self.x[index], self.name_chains
        )
        restricted.observations = (
            None if self.observations is None else self.observations[index]
        )
        return restricted

    def log_prior(self, z: Tensor) -> Tensor:
        r"""The prior's log-density in the unconstrained space, `(B C, D) ->
        (B C,)`."""
        theta = self.transform.inv(z)
        log_jacobian = self.transform.log_abs_det_jacobian(theta, z)
        return self.prior.log_prob(theta) - log_jacobian

    def log_ratio(self, z: Tensor) -> Tensor:
        r"""The log-ratio summed over each observation's rows, `(B C, D) ->
        (B C,)`."""
        theta = self.transform.inv(z)
        batch = len(self.x)
        value = log_ratio(self.estimator, theta.reshape(batch, -1, z.shape[-1]), self.x)
        value = value.reshape(-1)
        bad = torch.isnan(value) | torch.isposinf(value)
        # Only a diverging trajectory goes Z_FAR prior sds out (or, for a
        # bounded prior, to where the transform saturates at the bound), and
        # any network overflows there: zero density, a rejection.
        far = z.abs().amax(-1) > Z_FAR
        value = torch.where(bad & far, -torch.inf, value)
        bad = bad & ~far
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            chain = "a chain"
            if self.name_chains:
                b, c = divmod(i, len(value) // batch)
                chain = f"chain {c}"
                if self.observations is not None:
                    chain += f" of observation {int(self.observations[b])}"
            raise ValueError(
                f"The potential is {value[i].item()} at {chain} ({int(bad.sum())} "
                f"of {len(value)} chains), theta = {theta[i].tolist()}, inside the "
                "prior's support: the ratio estimator must be finite there."
            )
        return value

    def __call__(self, z: Tensor) -> Tensor:
        return self.log_prior(z) + self.log_ratio(z)


class PyroPotential:
    r"""The potential :math:`-\log \pi(z)` of one chain, `{"theta": (D,)} ->
    ()`, as Pyro's `potential_fn` takes it; picklable as :class:`Target` is."""

    def __init__(self, target: Target):
        self.target = target

    def __call__(self, params: dict[str, Tensor]) -> Tensor:
        return -self.target(params["theta"].unsqueeze(0)).squeeze(0)


class FunctionRatio(nn.Module):
    r"""A plain function `f(theta, x)` of log-ratios, as a module (`sbi`'s
    potential calls `eval()` on its estimator)."""

    def __init__(self, function: Callable[[Tensor, Tensor], Tensor]):
        super().__init__()
        self.function = function

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        return self.function(theta, x)


class RatioPotential(RatioBasedPotential):
    r"""`sbi`'s ratio-based potential (for `potential`, `log_prob`, `map`) on
    :func:`log_ratio`, for estimators with or without parameters: `sbi` reads
    the device from the estimator's parameters, which an exact stand-in (a
    test's, or a known likelihood's) may not have."""

    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        with torch.set_grad_enabled(track_gradients):
            value = log_ratio(self.ratio_estimator, theta[None], self.x_o[None])[0]
        return value + self.prior.log_prob(theta)
