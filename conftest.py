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
import signal
import subprocess
import sys
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


# Local clusters. Dask's and Ray's need what a sandbox may forbid (TCP on
# loopback, many processes); there a Ray that cannot reach its own GCS retries
# forever. Each is first started in a fresh interpreter under a deadline: where
# it does not come up, its tests are skipped with the reason instead of hanging.
_DASK_PROBE = """
from distributed import Client, LocalCluster
with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as c:
    with Client(c) as client:
        assert client.submit(abs, -1).result() == 1
"""
_RAY_PROBE = """
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
assert ray.get(ray.remote(lambda: 1).remote()) == 1
ray.shutdown()
"""


def _why_it_does_not_run(code: str, timeout: float = 180.0) -> str | None:
    r"""None if `code` runs to its end in a new interpreter within `timeout`
    seconds; else why not (the last line it printed, or the deadline)."""
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so that its daemons die with it
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return f"it did not start within {timeout:.0f} s"
    if process.returncode:
        lines = output.strip().splitlines() or [f"exit status {process.returncode}"]
        return lines[-1]
    return None


def _skip_unless_it_runs(probe: str, what: str) -> None:
    why = _why_it_does_not_run(probe)
    if why:
        pytest.skip(f"{what} does not run here: {why}")


@pytest.fixture(scope="session")
def local_dask() -> None:
    r"""Skips the test where a local Dask cluster cannot run."""
    _skip_unless_it_runs(_DASK_PROBE, "a local Dask cluster")


@pytest.fixture(scope="session")
def local_ray() -> None:
    r"""Skips the test where a local Ray cannot run."""
    _skip_unless_it_runs(_RAY_PROBE, "a local Ray")
