"""A check shared by the ALFI tests: a 1-D posterior's draws follow its log_prob."""

import numpy as np
import pytest
import torch
from scipy import stats

P_MIN = 1e-3  # goodness-of-fit tests reject below this p-value


def check_draws_follow_log_prob(figure, posterior, x_o, grid) -> torch.Tensor:
    r"""The density `exp(log_prob)` of a one-parameter posterior integrates to 1
    over `grid` (which must hold its mass), and 5,000 of its draws pass a KS
    test against that density's CDF; the same draws moved by a fifth of their
    sd fail it (the test's power). Returns the draws, `(5000,)`."""
    samples = posterior.sample((5_000,), x=x_o)[:, 0]
    density = posterior.log_prob(grid[:, None], x=x_o).exp()
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-3)
    cdf = torch.cat([torch.zeros(1), torch.cumulative_trapezoid(density, grid)])

    def exact_cdf(points):
        return np.interp(points, grid.numpy(), cdf.numpy())

    figure.at_least(
        "KS p-value", stats.kstest(samples.numpy(), exact_cdf).pvalue, P_MIN
    )
    moved = (samples + samples.std() / 5).numpy()
    planted = "draws moved by sd / 5"
    figure.at_most("KS p-value", stats.kstest(moved, exact_cdf).pvalue, P_MIN, planted)
    return samples
