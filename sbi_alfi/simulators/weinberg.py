r"""The Weinberg forward–backward asymmetry problem of the ALFI paper."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Simulator

__all__ = ["Weinberg"]

Z_MASS = 90.0  # GeV


class Weinberg(Simulator):
    r"""The angle of muons produced in electron–positron collisions,
    :math:`e^+ e^- \to \mu^+ \mu^-`, near the :math:`Z` resonance.

    The parameters are the beam energy :math:`E_b` (GeV) and the Fermi constant
    :math:`G_F` relative to its nominal value. An observation is the cosine
    :math:`c \in [-1, 1]` of the muon's scattering angle, with density

    .. math:: p(c \mid \theta) = \frac{1}{Z(A)} \max(1 + c^2 + A c, 0), \qquad
        A = 2 \tanh\left(10 \, \frac{2 E_b - M_Z}{M_Z}\right) G_F,

    :math:`M_Z = 90` GeV. For :math:`|A| \le 2` the quadratic is non-negative on
    :math:`[-1, 1]` and :math:`Z = 8/3`; for :math:`|A| > 2` (which the default
    prior reaches near its corners) the negative part is cut off and :math:`Z(A)`
    is the integral over what remains. Only :math:`A` is identified by the data,
    so the posterior over :math:`(E_b, G_F)` is a ridge.

    Sampling is batched rejection against the uniform envelope
    :math:`\max_c (1 + c^2 + A c) = 2 + |A|`: a proposal :math:`c` is kept when
    :math:`u < f(c) / (2 + |A|)`, :math:`u \sim \mathcal{U}(0, 1)` (dividing by the
    maximum once; some public versions divide twice and skew the data).

    References:
        | Recurrent machines for likelihood-free inference (Pesah et al., 2018)
        | https://arxiv.org/abs/1811.12932

    Arguments:
        low: The lower bounds of the uniform prior on :math:`(E_b, G_F)`.
        high: The upper bounds of the uniform prior on :math:`(E_b, G_F)`.
        device: The device of the prior and of the simulations.
        proposals_per_round: Proposals drawn per pending row in each round of
            rejection sampling; more means fewer (batched) rounds.

    Example:
        >>> import torch
        >>> from sbi_alfi.simulators import Weinberg
        >>> sim = Weinberg()
        >>> theta = torch.tensor([[42.0, 1.2]])
        >>> sim.asymmetry(theta)
        tensor([-1.3987])
        >>> x = sim(theta.expand(500, 2))  # a data set of 500 angles
        >>> x.shape
        torch.Size([500, 1])
    """

    names = ("E_b", "G_F")
    labels = (r"$E_b$ [GeV]", r"$G_F$")
    x_shape = torch.Size((1,))

    def __init__(
        self,
        low: tuple[float, float] = (40.0, 0.5),
        high: tuple[float, float] = (50.0, 1.5),
        device: str | torch.device = "cpu",
        proposals_per_round: int = 4,
    ):
        super().__init__(low, high, device=device)
        if proposals_per_round < 1:
            raise ValueError(
                f"`proposals_per_round` must be at least 1, got {proposals_per_round}."
            )
        self.proposals_per_round = proposals_per_round

    @staticmethod
    def asymmetry(theta: Tensor) -> Tensor:
        r"""The forward–backward asymmetry :math:`A(\theta)`, of shape `(*)`."""
        e_beam, g_fermi = theta[..., 0], theta[..., 1]
        return 2 * torch.tanh(10 * (2 * e_beam - Z_MASS) / Z_MASS) * g_fermi

    def cdf(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""The exact cumulative distribution function :math:`P(c \le x \mid \theta)`,
        broadcast over batch dimensions like :meth:`log_likelihood`."""
        theta, x = self.check_theta(theta, support=False), self.check_x(x)
        a = self.asymmetry(theta)
        lo, hi = _support(a)
        c = torch.minimum(torch.maximum(x[..., 0], lo), hi)
        return (_antiderivative(c, a) - _antiderivative(lo, a)) / _normalizer(a)

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        a = self.asymmetry(theta).reshape(-1)
        envelope = 2 + a.abs()
        c = torch.empty_like(a)
        pending = torch.arange(len(a), device=a.device)
        while len(pending) > 0:
            shape = (len(pending), self.proposals_per_round)
            u = torch.rand(shape, generator=generator, dtype=a.dtype, device=a.device)
            proposal = (
                2
                * torch.rand(shape, generator=generator, dtype=a.dtype, device=a.device)
                - 1
            )
            ap = a[pending, None]
            accept = u * envelope[pending, None] < 1 + proposal**2 + ap * proposal
            # The first accepted proposal of each row keeps the draws i.i.d.
            done = accept.any(dim=1)
            first = accept.to(torch.uint8).argmax(dim=1)
            c[pending[done]] = proposal[done, first[done]]
            pending = pending[~done]
        return c.reshape(*theta.shape[:-1], 1)

    def _log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        return _log_density(self.asymmetry(theta), x[..., 0])

    def asymmetry_range(self) -> tuple[float, float]:
        r"""The smallest and largest :math:`A` over the prior's box (at corners:
        :math:`A` is monotonic in :math:`E_b` and linear in :math:`G_F`)."""
        low, high = self.prior.base_dist.low, self.prior.base_dist.high
        corners = torch.cartesian_prod(*torch.stack([low, high], -1).cpu())
        a = self.asymmetry(corners)
        return a.min().item(), a.max().item()

    def asymmetry_mle(
        self, x: Tensor, num_grid: int = 2_001, num_refine: int = 40
    ) -> Tensor:
        r"""The maximum-likelihood estimate of the identified quantity :math:`A`
        over the prior's range of :math:`A`, from i.i.d. data sets.

        No closed form exists; the exact log-likelihood is maximized on a grid,
        then by golden-section search around the best grid point, all data sets
        at once.

        Arguments:
            x: Data sets of shape `(*, n, 1)`.
            num_grid: The number of grid points over the range of :math:`A`.
            num_refine: The number of golden-section iterations.

        Returns:
            The estimates, of shape `(*)`.
        """
        x = self.check_x(x)
        if x.dim() < 2 or x.shape[-2] == 0:
            raise ValueError(
                f"`x` must be data sets of shape (*, n, 1), got {x.shape}."
            )
        c = x[..., 0].reshape(-1, x.shape[-2]).double()  # (B, n)
        a_min, a_max = self.asymmetry_range()
        grid = torch.linspace(a_min, a_max, num_grid, dtype=c.dtype, device=c.device)

        def log_l(a: Tensor, c: Tensor) -> Tensor:  # (B, G), (B, n) -> (B, G)
            return _log_density(a.unsqueeze(-1), c.unsqueeze(-2)).sum(-1)

        chunk = max(1, 2**22 // (num_grid * c.shape[1]))  # bounds the memory
        best = torch.cat(
            [
                log_l(grid.expand(len(part), -1), part).argmax(-1)
                for part in c.split(chunk)
            ]
        )
        step = grid[1] - grid[0]
        low = (grid[best] - step).clamp(min=a_min)
        high = (grid[best] + step).clamp(max=a_max)
        ratio = (5**0.5 - 1) / 2
        for _ in range(num_refine):
            left, right = high - ratio * (high - low), low + ratio * (high - low)
            values = log_l(torch.stack([left, right], -1), c)
            keep_left = values[:, 0] > values[:, 1]
            high = torch.where(keep_left, right, high)
            low = torch.where(keep_left, low, left)
        # The search converges inside its bracket; a maximum at the end of A's
        # range (the likelihood still rising there) is the end itself.
        candidates = torch.stack([(low + high) / 2, low, high], -1)
        best = log_l(candidates, c).argmax(-1, keepdim=True)
        estimate = candidates.gather(-1, best)[:, 0]
        return estimate.to(x.dtype).reshape(x.shape[:-2])


def _log_density(a: Tensor, c: Tensor) -> Tensor:
    r"""The exact :math:`\log p(c \mid A)`, broadcast."""
    f = 1 + c**2 + a * c
    inside = (c >= -1) & (c <= 1) & (f > 0)
    log_f = torch.where(inside, f, torch.ones_like(f)).log()
    return torch.where(inside, log_f - _normalizer(a).log(), -torch.inf)


def _support(a: Tensor) -> tuple[Tensor, Tensor]:
    r"""The interval of :math:`[-1, 1]` where :math:`1 + c^2 + A c > 0`.

    For :math:`A > 2` both roots are negative and their product is 1, so exactly
    one, :math:`(-A + \sqrt{A^2 - 4}) / 2`, lies in :math:`(-1, 0)`; symmetrically
    for :math:`A < -2`.
    """
    root = (a.square() - 4).clamp(min=0).sqrt()
    lo = torch.where(a > 2, (root - a) / 2, -torch.ones_like(a))
    hi = torch.where(a < -2, (-root - a) / 2, torch.ones_like(a))
    return lo, hi


def _antiderivative(c: Tensor, a: Tensor) -> Tensor:
    return c + c**3 / 3 + a * c**2 / 2


def _normalizer(a: Tensor) -> Tensor:
    lo, hi = _support(a)
    return _antiderivative(hi, a) - _antiderivative(lo, a)
