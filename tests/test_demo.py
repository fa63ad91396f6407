"""The README's demo and the figures it is made of."""

import pytest
import torch

from sbi_alfi.demo import main
from sbi_alfi.plots import plot_data_fit, plot_identified_quantity
from sbi_alfi.simulators import SLCP, Poisson, Weinberg

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_writes_its_figures(tmp_path, capsys):
    output = main(["--output", str(tmp_path / "out"), "--quick"])
    for name in ("poisson.png", "weinberg.png", "alfi_weinberg.png", "aalr_slcp.png"):
        assert (output / name).read_bytes().startswith(PNG_MAGIC)
    printed = capsys.readouterr().out
    assert str(output.resolve()) in printed and "exact MLE" in printed
    assert "ALFI on Weinberg" in printed and "AALR on SLCP" in printed


def test_plot_data_fit_overlays_the_observed_data():
    sim = Poisson()
    x_o = sim(torch.tensor([[2.0]]).expand(50, 1))
    ax = plot_data_fit(sim, torch.tensor([2.0]), x_o=x_o, num_samples=500)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert sorted(labels) == [
        "exact pmf",
        "observed (n = 50)",
        "simulated at theta = 2",
    ]


def test_plots_reject_what_they_cannot_draw():
    with pytest.raises(ValueError, match="one-dimensional data"):
        plot_data_fit(SLCP(), SLCP().theta_true)
    with pytest.raises(ValueError, match=r"one parameter of shape \(2,\)"):
        plot_data_fit(Weinberg(), torch.tensor([[42.0, 1.0]] * 2))
    with pytest.raises(ValueError, match="outside the prior"):
        plot_data_fit(Weinberg(), torch.tensor([30.0, 1.0]))
    with pytest.raises(ValueError, match="must have 2 parameters"):
        plot_identified_quantity(Poisson(), lambda theta: theta[..., 0])
