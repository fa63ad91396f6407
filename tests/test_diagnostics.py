"""Diagnostics of trust, on posteriors whose calibration is known."""

import pytest
import torch
from sbi.utils import BoxUniform
from torch import nn
from torch.distributions import MultivariateNormal, Normal

from sbi_alfi import RatioMCMCPosterior
from sbi_alfi.diagnostics import (
    expected_coverage,
    ratio_normalization,
    ratio_roc_auc,
)

NOISE = 0.5  # x | theta ~ N(theta, NOISE^2)


class ScaledRatio(nn.Module):
    """The exact log-likelihood times `scale`: 1 is exact, 4 halves the
    posterior's width (overconfident), 0.25 doubles it (conservative)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, theta, x):
        return -0.5 * self.scale * ((x - theta) / NOISE).square().sum(-1)


BOX = 3.0  # the prior of the coverage tests: U(-3, 3)


def coverage_of(scale: float, num_pairs: int = 300):
    prior = BoxUniform(-BOX * torch.ones(1), BOX * torch.ones(1))
    posterior = RatioMCMCPosterior(
        ScaledRatio(scale),
        prior,
        method="mh_vectorized",
        num_chains=20,
        warmup_steps=100,
        thin=5,
        show_progress_bars=False,
    )
    theta = prior.sample((num_pairs,))
    x = theta + NOISE * torch.randn_like(theta)
    result = expected_coverage(posterior, theta, x, num_posterior_samples=500)
    return result, theta[:, 0], x[:, 0]


def exact_coverage(theta, x, scale, levels):
    """The coverage curve of the same pairs, from each pair's exact credibility.
    The posterior of `ScaledRatio(scale)` is N(x, NOISE^2 / scale) cut to the box,
    whose highest-density regions are the intervals |θ - x| < d inside the box:
    θ* lies in the region of level P(|θ - x| < |θ* - x|)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    sd = NOISE / scale**0.5
    d = (theta - x).abs()
    inside = normal.cdf(((x + d).clamp(max=BOX) - x) / sd) - normal.cdf(
        ((x - d).clamp(min=-BOX) - x) / sd
    )
    box = normal.cdf((BOX - x) / sd) - normal.cdf((-BOX - x) / sd)
    credibility = inside / box
    return (credibility[None, :] <= levels[:, None]).float().mean(1)


def test_exact_posterior_covers_at_every_level(figure):
    result, theta, x = coverage_of(1.0)
    assert result.coverage.shape == result.levels.shape == (49,)
    assert (result.lower <= result.coverage).all()
    assert (result.coverage <= result.upper).all()
    assert result.credibility.shape == (300,)
    # On the diagonal, to the binomial noise of 300 pairs (sd 0.03 at most); the
    # negative controls are the miscalibrated posteriors below.
    figure.at_most("|coverage - level|", (result.coverage - result.levels).abs(), 0.1)
    # The same pairs' exact curve leaves only the MCMC's noise; the negative
    # control is the exact curve of a posterior half as wide.
    exact = exact_coverage(theta, x, 1.0, result.levels)
    figure.at_most("|coverage - exact curve|", (result.coverage - exact).abs(), 0.05)
    overconfident = exact_coverage(theta, x, 4.0, result.levels)
    figure.at_least(
        "|coverage - exact curve|",
        (result.coverage - overconfident).abs().max(),
        0.05,
        planted="the curve of log-ratio x 4",
    )


@pytest.mark.parametrize("scale, side", [(4.0, "below"), (0.25, "above")])
def test_miscalibrated_posteriors_leave_the_diagonal(scale, side, figure):
    result, theta, x = coverage_of(scale)
    gap = result.coverage - result.levels
    exact = exact_coverage(theta, x, scale, result.levels)
    figure.at_most("|coverage - exact curve|", (result.coverage - exact).abs(), 0.05)
    # The check on the exact posterior, |coverage - level| <= 0.1, fails here.
    planted = f"log-ratio x {scale}"
    figure.at_least("|coverage - level|", gap.abs().max(), 0.1, planted=planted)
    middle = gap[(result.levels >= 0.2) & (result.levels <= 0.9)]
    if side == "below":
        figure.at_most("coverage - level, levels 0.2-0.9", middle, 0.0)
    else:
        figure.at_least("coverage - level, levels 0.2-0.9", middle, 0.0)


def test_coverage_of_sbi_npe_posterior(figure):
    # Any sbi posterior: NPE on the Gaussian model is close to exact.
    from sbi.inference import NPE

    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    theta = prior.sample((3_000,))
    inference = NPE(prior, show_progress_bars=False)
    inference.append_simulations(theta, gaussian_simulator(theta))
    inference.train(max_num_epochs=30)
    posterior = inference.build_posterior()
    theta_star = prior.sample((200,))
    x_star = gaussian_simulator(theta_star)
    result = expected_coverage(posterior, theta_star, x_star)
    # 200 pairs: binomial noise (sd up to 0.035) and NPE's own error.
    figure.at_most("|coverage - level|", (result.coverage - result.levels).abs(), 0.2)
    # Negative control: the truths moved by two likelihood sds (2.2 posterior
    # sds in each coordinate) fall outside the regions far more often.
    result = expected_coverage(posterior, theta_star + 2 * NOISE, x_star)
    figure.at_least(
        "|coverage - level|",
        (result.coverage - result.levels).abs().max(),
        0.2,
        planted="θ* moved by 2 likelihood sds",
    )


def test_coverage_rejects_bad_input():
    posterior = RatioMCMCPosterior(
        ScaledRatio(), BoxUniform(-torch.ones(1), torch.ones(1))
    )
    with pytest.raises(ValueError, match="must be N >= 1 pairs"):
        expected_coverage(posterior, torch.zeros(5, 1), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"`levels` must lie in \(0, 1\)"):
        expected_coverage(posterior, torch.zeros(5, 1), torch.zeros(5, 1), [0.5, 1])


# The ratio's normalization, with theta ~ N(0, 1) and x | theta ~ N(theta, NOISE^2):
# p(x) = N(0, 1 + NOISE^2), so the exact log-ratio is known.
GAUSSIAN_PRIOR = MultivariateNormal(torch.zeros(1), torch.eye(1))


def gaussian_simulator(theta):
    return theta + NOISE * torch.randn_like(theta)


def exact_log_ratio(theta, x):
    evidence = Normal(0.0, (1 + NOISE**2) ** 0.5)
    return (Normal(theta, NOISE).log_prob(x) - evidence.log_prob(x)).sum(-1)


@pytest.mark.parametrize(
    "name, log_ratio, expected",
    [
        ("exact", exact_log_ratio, 1.0),
        # Shifted by 0.5: every ratio is e^0.5 too large.
        ("shifted", lambda t, x: exact_log_ratio(t, x) + 0.5, 1.6487),
        # Underconfident, the log-ratio halved: E[r^0.5] is 0.75. Scaled by k,
        # r^k has a variance under p(theta)p(x) only for k < 1.06 (with
        # NOISE = 0.5): beyond, its standard error does not exist, and the
        # z-scores of the doubled and 1.5-fold ratios fell to 1.3 and 3.8 over
        # 20 seeds (medians 11 and 30). Halved: z 167-175 over 40 seeds.
        ("halved", lambda t, x: 0.5 * exact_log_ratio(t, x), None),
    ],
)
def test_ratio_normalization(name, log_ratio, expected, figure):
    value, error = ratio_normalization(
        log_ratio, GAUSSIAN_PRIOR, gaussian_simulator, num_simulations=200_000
    )
    if expected is not None:
        figure.at_most("|E[r] - expected| / error", abs(value - expected) / error, 4)
    if name != "exact":  # negative controls of the exact ratio's check
        figure.at_least("|E[r] - 1| / error", abs(value - 1) / error, 4, planted=name)


def test_ratio_normalization_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        ratio_normalization(exact_log_ratio, GAUSSIAN_PRIOR, gaussian_simulator, 1)
    with pytest.raises(ValueError, match="returned NaN"):
        ratio_normalization(
            lambda t, x: torch.full((len(t),), torch.nan),
            GAUSSIAN_PRIOR,
            gaussian_simulator,
            100,
        )


@pytest.mark.parametrize(
    "name, log_ratio",
    [
        ("exact", exact_log_ratio),
        ("doubled", lambda t, x: 2 * exact_log_ratio(t, x)),
        ("shifted in theta", lambda t, x: exact_log_ratio(t + 0.5, x)),
    ],
)
def test_ratio_roc_auc(name, log_ratio, figure):
    # In 3-D: a doubled log-ratio narrows each coordinate's width by sqrt(2),
    # which even the optimal classifier only detects with an AUC of 0.61 in 1-D.
    prior = MultivariateNormal(torch.zeros(3), torch.eye(3))
    theta = torch.tensor([[-1.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.5]])
    roc = ratio_roc_auc(
        log_ratio, prior, gaussian_simulator, theta, num_simulations=4_000
    )
    assert roc.auc.shape == (3,) and torch.equal(roc.theta, theta)
    assert len(roc.false_positive_rate) == len(roc.true_positive_rate) == 3
    if name == "exact":
        figure.at_most("AUC", roc.auc, 0.55)
    else:  # negative controls
        figure.at_least("AUC", roc.auc, 0.55, planted=name)


def test_ratio_roc_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 100"):
        ratio_roc_auc(exact_log_ratio, GAUSSIAN_PRIOR, gaussian_simulator, None, 2, 50)
    with pytest.raises(ValueError, match=r"shape \(K, 1\).*got \(3,\)"):
        ratio_roc_auc(
            exact_log_ratio, GAUSSIAN_PRIOR, gaussian_simulator, torch.zeros(3)
        )


def numpy_simulator(theta):
    """sbi accepts simulators that return NumPy arrays (here float64)."""
    return gaussian_simulator(torch.as_tensor(theta)).double().numpy()


def test_diagnostics_take_numpy_simulators(seed):
    runs = {}
    for name, simulator in [("torch", gaussian_simulator), ("numpy", numpy_simulator)]:
        torch.manual_seed(seed)
        value, _ = ratio_normalization(exact_log_ratio, GAUSSIAN_PRIOR, simulator, 200)
        roc = ratio_roc_auc(
            exact_log_ratio, GAUSSIAN_PRIOR, simulator, num_theta=2, num_simulations=100
        )
        runs[name] = value, roc.auc
    # The same draws, so the same figures (to the float32 rounding of the arrays).
    assert runs["numpy"][0] == pytest.approx(runs["torch"][0], rel=1e-5)
    assert torch.allclose(runs["numpy"][1], runs["torch"][1], atol=1e-6)


def test_diagnostics_take_unbatched_simulators():
    def one_at_a_time(theta):
        assert theta.dim() == 1
        return gaussian_simulator(theta)

    value, error = ratio_normalization(
        exact_log_ratio, GAUSSIAN_PRIOR, one_at_a_time, 200
    )
    assert value > 0 and error > 0
    roc = ratio_roc_auc(
        exact_log_ratio, GAUSSIAN_PRIOR, one_at_a_time, num_theta=2, num_simulations=100
    )
    assert roc.auc.shape == (2,)


def test_diagnostics_name_a_failing_simulator():
    def raising(theta):
        raise RuntimeError("solver diverged")

    def nan_above_one(theta):
        return torch.where(theta > 1, torch.nan, gaussian_simulator(theta))

    for diagnostic in (ratio_normalization, ratio_roc_auc):
        with pytest.raises(ValueError, match="simulator raised RuntimeError"):
            diagnostic(exact_log_ratio, GAUSSIAN_PRIOR, raising)
        with pytest.raises(ValueError, match=r"NaN or inf in \d+ of \d+ rows"):
            diagnostic(exact_log_ratio, GAUSSIAN_PRIOR, nan_above_one)


def test_theta_of_the_wrong_dimension():
    with pytest.raises(ValueError, match=r"`theta` must have shape \(K, 1\).*\(3, 2\)"):
        ratio_roc_auc(
            exact_log_ratio, GAUSSIAN_PRIOR, gaussian_simulator, torch.zeros(3, 2)
        )
    posterior = RatioMCMCPosterior(ScaledRatio(), GAUSSIAN_PRIOR)
    with pytest.raises(ValueError, match=r"`theta` must have shape \(N, 1\).*\(4, 2\)"):
        expected_coverage(posterior, torch.zeros(4, 2), torch.zeros(4, 1))
    x = torch.zeros(4, 1)
    x[2] = torch.inf
    with pytest.raises(ValueError, match="`x` has NaN or inf in 1 of 4 pairs"):
        expected_coverage(posterior, torch.zeros(4, 1), x)


def test_diagnostics_name_a_failing_estimator():
    def raising(theta, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    def one_value(theta, x):
        return torch.zeros(3)

    def nan(theta, x):
        return torch.full((len(theta),), torch.nan)

    for diagnostic in (ratio_normalization, ratio_roc_auc):
        args = (GAUSSIAN_PRIOR, gaussian_simulator)
        with pytest.raises(ValueError, match=r"estimator raised RuntimeError on theta"):
            diagnostic(raising, *args)
        with pytest.raises(ValueError, match=r"one log-ratio per \(theta, x\) pair"):
            diagnostic(one_value, *args)
        with pytest.raises(ValueError, match="returned NaN"):
            diagnostic(nan, *args)
    with pytest.raises(ValueError, match=r"K >= 1 parameter vectors"):
        ratio_roc_auc(
            exact_log_ratio, GAUSSIAN_PRIOR, gaussian_simulator, torch.zeros(0, 1)
        )
    posterior = RatioMCMCPosterior(ScaledRatio(), GAUSSIAN_PRIOR)
    with pytest.raises(ValueError, match="must be N >= 1 pairs"):
        expected_coverage(posterior, torch.zeros(0, 1), torch.zeros(0, 1))


def test_roc_classifiers_fit_on_one_openmp_thread(monkeypatch):
    # scikit-learn's OpenMP threads and torch's oversubscribed the cores: the
    # same call took 0.4 s or more than 100 s. The fits run on one thread.
    from threadpoolctl import threadpool_info

    from sbi_alfi.diagnostics import ratio

    threads = []

    class Recording(ratio.HistGradientBoostingClassifier):
        def fit(self, *args, **kwargs):
            openmp = [p for p in threadpool_info() if p["user_api"] == "openmp"]
            threads.extend(p["num_threads"] for p in openmp)
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(ratio, "HistGradientBoostingClassifier", Recording)
    ratio_roc_auc(exact_log_ratio, GAUSSIAN_PRIOR, gaussian_simulator, num_theta=2)
    assert threads and set(threads) == {1}


def test_diagnostic_plots_draw_their_curves():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sbi_alfi.plots import plot_coverage, plot_roc

    roc = ratio_roc_auc(
        exact_log_ratio, GAUSSIAN_PRIOR, gaussian_simulator, num_theta=3
    )
    ax = plot_roc(roc, ax=plt.figure().gca())
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert len(ax.lines) == 4 and labels[-1] == "chance (exact ratio)"
    assert labels[0].startswith("θ = (") and f"AUC {roc.auc[0]:.3f}" in labels[0]
    result, _, _ = coverage_of(1.0, num_pairs=50)
    ax = plot_coverage(result, ax=plt.figure().gca(), label="exact")
    levels, y = ax.lines[0].get_data()
    assert torch.allclose(torch.as_tensor(y), result.coverage)
    assert torch.allclose(torch.as_tensor(levels), result.levels)
    assert len(ax.collections) == 1  # the band
    plt.close("all")
