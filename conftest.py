r"""What every test and doctest of the suite shares: one seed, one thread, and the
figures of the statistical assertions.

- The seed. Every test starts from `torch`, NumPy and `random` seeded with the
  `seed` fixture, whose value is `--seed-offset` (0 by default); a test that needs
  several seeds derives them from it (`seed + 1`, ...). The same test then runs
  under any other seed: `benchmarks/seed_sweep.py` runs the statistical tests
  under many and tabulates their figures.
- One thread. How torch splits a reduction over threads changes its last bits,
  so a seeded figure depends on the number of cores; the test run uses one per
  process, and as many processes as `make test` asks of pytest-xdist.
- The figures. A statistical assertion goes through the `figure` fixture
  (`figure.at_most(name, value, bound)`), which asserts and, with
  `--figures PATH`, appends the figure, its bound and the seed to `PATH` as a JSON
  line. Tests that use it are marked `statistical`; so are the doctests.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
# ... and in the processes the tests start (notebook kernels, the benchmark
# command), whose torch reads these when it loads. Two test workers on two cores
# with OpenMP threads of their own stall each other (threads that spin-wait).
os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sbi-alfi")
    group.addoption(
        "--seed-offset",
        type=int,
        default=0,
        help="The seed of every test (the `seed` fixture); 0 by default.",
    )
    group.addoption(
        "--figures",
        default=None,
        metavar="PATH",
        help="Append every statistical figure, its bound and the seed to PATH "
        "(JSON lines).",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        is_doctest = type(item).__name__ == "DoctestItem"
        if is_doctest or "figure" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.statistical)


@pytest.fixture(scope="session")
def seed(request: pytest.FixtureRequest) -> int:
    r"""The seed of the run: `--seed-offset`."""
    return request.config.getoption("seed_offset")


@pytest.fixture(autouse=True)
def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the global state, for code that uses it)
    random.seed(seed)


class Figures:
    r"""Statistical assertions that say how close they came to their bound.

    A tensor value is reduced to its worst element (the largest for `at_most`,
    the smallest for `at_least`). `planted` names the defect of a negative
    control: a check that must fail, shown as a figure beyond the bound of the
    check it controls.
    """

    def __init__(self, test: str, seed: int, path: str | None):
        self.test = test
        self.seed = seed
        self.path = Path(path) if path else None

    def at_most(self, name: str, value, bound: float, planted: str = "") -> None:
        value = float(torch.as_tensor(value, dtype=torch.float64).max())
        self._record(name, value, "<=", bound, planted)
        assert value <= bound, f"{name} = {value:.4g}, above its bound {bound}"

    def at_least(self, name: str, value, bound: float, planted: str = "") -> None:
        value = float(torch.as_tensor(value, dtype=torch.float64).min())
        self._record(name, value, ">=", bound, planted)
        assert value >= bound, f"{name} = {value:.4g}, below its bound {bound}"

    def _record(
        self, name: str, value: float, op: str, bound: float, planted: str
    ) -> None:
        if self.path is None:
            return
        line = {
            "test": self.test,
            "figure": name,
            "planted": planted,
            "op": op,
            "bound": bound,
            "value": value,
            "seed": self.seed,
        }
        with self.path.open("a") as file:  # one short line: an atomic append
            file.write(json.dumps(line) + "\n")


@pytest.fixture
def figure(request: pytest.FixtureRequest, seed: int) -> Figures:
    r"""Statistical assertions that record their figures (see :class:`Figures`)."""
    return Figures(request.node.nodeid, seed, request.config.getoption("figures"))
