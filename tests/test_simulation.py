"""sbi_alfi.simulation: the same draws on every engine, resumable stores,
failures that say where, on a real Dask LocalCluster and a real local Ray."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from sbi.utils import BoxUniform

from sbi_alfi.simulation import (
    Dask,
    InProcess,
    Joblib,
    Ray,
    SimulationError,
    SimulationStore,
    as_engine,
    chunk_seed,
    simulate,
    simulate_for_sbi,
)

distributed = pytest.importorskip("distributed")
ray = pytest.importorskip("ray")

THETA = torch.linspace(0, 1, 60).reshape(30, 2)

# One test worker runs them all (`make test` distributes by group): one Ray and one
# pair of Dask clusters at a time on the machine, not one per worker.
# Slow: a Dask map in test_the_draws_are_the_same_on_every_engine stalled with
# idle workers in about 1 full-suite run in 4 here (cause not found; without the
# scatter too). With the engine's own gather, 5 such runs in a row passed: too
# few to tell, so the cluster tests run in `make test-slow`, not in CI.
pytestmark = [pytest.mark.xdist_group("clusters"), pytest.mark.slow]


# The simulators are closures: cloudpickle sends them by value, so that Dask's,
# Ray's and joblib's workers need not import this test module.


def _noisy():
    def noisy(theta):
        """Draws from torch's and NumPy's global generators, as user code does."""
        import numpy as np
        import torch

        noise = torch.as_tensor(
            np.random.standard_normal(theta.shape),  # noqa: NPY002 (as users do)
            dtype=theta.dtype,
        )
        return theta + torch.randn_like(theta) + noise

    return noisy


def _raises_above():
    def raises_above(theta):
        if (theta[:, 0] > 0.9).any():
            raise ValueError("no convergence")
        return theta * 2

    return raises_above


def _nan_above():
    def nan_above(theta):
        x = theta * 2
        x[theta[:, 0] > 0.9] = float("nan")
        return x

    return nan_above


noisy, raises_above, nan_above = _noisy(), _raises_above(), _nan_above()


def slow_recorder(folder: str, seconds: float):
    """A simulator that writes its process id to `folder` and sleeps, so that a
    test can kill the worker running it. A closure: pickled by value, so the
    workers need not import this test module."""

    def simulator(theta):
        import os
        import time
        from pathlib import Path

        import torch

        Path(folder, f"{os.getpid()}-{time.monotonic_ns()}").touch()
        time.sleep(seconds)
        return theta + torch.randn_like(theta)

    return simulator


@pytest.fixture(scope="module")
def dask_clients(local_dask):
    """A local Dask cluster of 1 and one of 2 worker processes."""
    clients = []
    for n in (1, 2):
        cluster = distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = distributed.Client(cluster)
        client.wait_for_workers(n, timeout=120)
        clients.append(client)
    yield clients
    for client in clients:
        cluster = client.cluster
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def ray_runtime(local_ray):
    """A local Ray of 2 CPUs. Ray runs its workers at niceness 15: beside the
    other test worker they would hardly run, so they get the default 0."""
    os.environ["RAY_worker_niceness"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(engine, theta=THETA, **kwargs):
    kwargs = {"chunk_size": 7, "seed": 3, "show_progress_bar": False, **kwargs}
    return simulate(noisy, theta, engine=engine, **kwargs)


def test_the_draws_are_the_same_on_every_engine(dask_clients, ray_runtime):
    theta, x = run(None)
    assert torch.equal(theta, THETA) and x.shape == THETA.shape
    # Each chunk's seed depends on the root seed and its index only.
    assert chunk_seed(3, 2) == chunk_seed(3, 2) != chunk_seed(3, 1) != chunk_seed(4, 1)
    for engine in [1, Joblib(2), *dask_clients, "ray", Ray()]:
        _, y = run(engine)
        assert torch.equal(x, y), engine
    # Another seed, other draws; no seed, torch's generator decides.
    assert not torch.equal(x, run(None, seed=4)[1])
    torch.manual_seed(0)
    a = simulate(noisy, THETA, show_progress_bar=False)[1]
    torch.manual_seed(0)
    assert torch.equal(a, simulate(noisy, THETA, show_progress_bar=False)[1])
    # A chunk leaves this process's generators as they were.
    state = torch.get_rng_state()
    run(None)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("name", ["dask", "ray"])
def test_a_killed_worker_loses_nothing(name, dask_clients, ray_runtime, tmp_path):
    engine = dask_clients[1] if name == "dask" else Ray(max_retries=3)
    folder = tmp_path / "pids"
    folder.mkdir()
    simulator = slow_recorder(str(folder), 0.5)
    theta = torch.rand(40, 2)
    killed = []

    def kill_the_first_worker():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            pids = {int(p.name.split("-")[0]) for p in folder.iterdir()}
            pids.discard(os.getpid())
            if pids:
                time.sleep(0.1)  # mid-chunk
                pid = min(pids)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_worker)
    killer.start()
    store = SimulationStore(tmp_path / "store")
    try:
        _, x = simulate(
            simulator,
            theta,
            chunk_size=4,
            seed=0,
            engine=engine,
            store=store,
            show_progress_bar=False,
        )
    finally:
        killer.join()
    assert killed, "no worker was killed"
    assert store.missing() == []
    # Nothing lost: the same draws as a run in this process.
    _, expected = simulate(
        slow_recorder(str(tmp_path), 0.0),
        theta,
        chunk_size=4,
        seed=0,
        show_progress_bar=False,
    )
    assert torch.equal(x, expected)


class Interrupting:
    """Counts its calls; raises KeyboardInterrupt at call `stop` (as Ctrl-C)."""

    def __init__(self, stop: int | None = None):
        self.calls, self.stop = 0, stop

    def __call__(self, theta):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return noisy(theta)


def test_an_interrupted_run_resumes_with_only_the_missing_chunks(tmp_path):
    _, expected = run(None)
    store = SimulationStore(tmp_path)
    first = Interrupting(stop=4)
    with pytest.raises(KeyboardInterrupt):
        simulate(
            first, THETA, chunk_size=7, seed=3, store=store, show_progress_bar=False
        )
    assert store.finished() == [0, 1, 2] and store.missing() == [3, 4]
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written chunk
    with pytest.raises(ValueError, match="lacks 2 of its 5 chunks"):
        store.load()
    second = Interrupting()
    _, x = simulate(
        second,
        THETA,
        chunk_size=7,
        seed=3,
        store=str(tmp_path),
        show_progress_bar=False,
    )
    assert second.calls == 2 and torch.equal(x, expected)
    theta, y = SimulationStore(tmp_path).load()
    assert torch.equal(theta, THETA) and torch.equal(y, expected)
    # A finished store simulates nothing; another run's settings are refused.
    third = Interrupting()
    simulate(third, THETA, chunk_size=7, seed=3, store=store, show_progress_bar=False)
    assert third.calls == 0
    for change in [{"seed": 4}, {"chunk_size": 5}, {"theta": THETA + 1}]:
        args = {"theta": THETA, "chunk_size": 7, "seed": 3, **change}
        with pytest.raises(ValueError, match="holds another run"):
            simulate(noisy, store=store, show_progress_bar=False, **args)


def test_a_simulator_raising_in_a_worker_names_the_chunk_rows_and_theta(
    dask_clients, tmp_path
):
    store = SimulationStore(tmp_path)
    with pytest.raises(SimulationError) as info:
        simulate(
            raises_above,
            THETA,
            chunk_size=7,
            seed=0,
            engine=dask_clients[1],
            store=store,
            show_progress_bar=False,
        )
    message = str(info.value)
    # Rows 27 to 29 have theta_0 > 0.9: row 27 in chunk 3 (rows 21 to 27), the
    # others in chunk 4.
    assert "failed in 2 of 5 chunks" in message
    assert "chunk 3 (rows 21 to 27): ValueError: no convergence" in message
    assert "run alone, these raise: row 27: theta = [0.915" in message
    assert "Also in chunks [4]" in message
    assert f"The 3 other chunks are in {store}" in message
    assert store.finished() == [0, 1, 2]


def test_nan_simulations_raise_or_are_excluded_or_kept():
    with pytest.raises(
        SimulationError, match=r"NaN or inf in 3 of 30 .* chunks \[3, 4\]"
    ):
        simulate(nan_above, THETA, chunk_size=7, show_progress_bar=False)
    with pytest.warns(UserWarning, match="Excluded 3 of 30 simulations"):
        theta, x = simulate(
            nan_above, THETA, chunk_size=7, invalid_x="exclude", show_progress_bar=False
        )
    assert torch.equal(theta, THETA[:27]) and torch.equal(x, 2 * THETA[:27])
    _, x = simulate(
        nan_above, THETA, chunk_size=7, invalid_x="keep", show_progress_bar=False
    )
    assert x.isnan().any(-1).sum() == 3


def test_bad_input_is_named(monkeypatch):
    with pytest.raises(ValueError, match=r"`theta` must be a tensor of shape \(N, D\)"):
        simulate(noisy, THETA[0])
    with pytest.raises(ValueError, match="`theta` has NaN or inf in 1 rows"):
        simulate(noisy, torch.cat([THETA, torch.full((1, 2), float("nan"))]))
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer"):
        simulate(noisy, THETA, chunk_size=0)
    with pytest.raises(ValueError, match="`invalid_x` must be"):
        simulate(noisy, THETA, invalid_x="drop")
    with pytest.raises(ValueError, match="`seed` must be a non-negative integer"):
        simulate(noisy, THETA, seed=-1)
    with pytest.raises(TypeError, match="`engine` must be None, 'inline'"):
        simulate(noisy, THETA, engine="spark")
    with pytest.raises(ValueError, match="`engine` as a number of workers"):
        as_engine(0)
    with pytest.raises(
        SimulationError, match=r"returned shape \(1,\) for 7 parameters"
    ):
        simulate(lambda t: t[:1, 0], THETA, chunk_size=7, show_progress_bar=False)
    with pytest.raises(ValueError, match="holds no run"):
        SimulationStore("/nonexistent/store").missing()
    assert isinstance(as_engine(None), InProcess) and isinstance(as_engine(2), Joblib)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"sbi-alfi\[ray\]"):
        as_engine("ray")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"sbi-alfi\[dask\]"):
        as_engine("dask")


def test_simulate_for_sbi_takes_sbis_arguments(dask_clients):
    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    theta, x = simulate_for_sbi(
        noisy, prior, 50, simulation_batch_size=10, seed=1, show_progress_bar=False
    )
    torch.manual_seed(1)
    assert torch.equal(theta, prior.sample((50,))) and x.shape == (50, 2)
    # sbi's num_workers, or any engine: the same draws.
    for kwargs in [{"num_workers": 2}, {"engine": dask_clients[0]}]:
        again = simulate_for_sbi(
            noisy,
            prior,
            50,
            simulation_batch_size=10,
            seed=1,
            show_progress_bar=False,
            **kwargs,
        )
        assert torch.equal(again[1], x)
    # NaN simulations are kept, as sbi's are, for append_simulations to drop.
    _, x = simulate_for_sbi(nan_above, prior, 50, None, show_progress_bar=False)
    assert x.isnan().any()
    assert isinstance(as_engine(dask_clients[0]), Dask)


def test_a_store_on_disk_is_what_append_simulations_takes(tmp_path):
    from sbi.inference import NRE_A

    _, x = simulate(
        noisy,
        THETA,
        chunk_size=7,
        seed=0,
        store=tmp_path / "s",
        show_progress_bar=False,
    )
    theta, y = SimulationStore(Path(tmp_path, "s")).load()
    assert torch.equal(x, y)
    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    NRE_A(prior, show_progress_bars=False).append_simulations(theta, y)


def test_alfi_meta_trains_and_infers_on_any_engine_with_the_same_draws(dask_clients):
    from sbi_alfi import ALFI
    from sbi_alfi.simulators import Poisson

    poisson = Poisson()
    runs = []
    for engine in [InProcess(), dask_clients[1], 2]:
        torch.manual_seed(0)
        inference = ALFI(
            poisson.prior,
            poisson,
            num_steps=2,
            num_proposal_samples=3,
            num_simulations_per_sample=2,
            show_progress_bars=False,
            engine=engine,
            simulation_batch_size=50,
        )
        inference.train(
            num_tasks=20, num_observations=10, training_batch_size=10, max_num_epochs=1
        )
        posterior = inference.build_posterior()
        assert posterior.engine is engine
        x_o = poisson(poisson.prior.sample((10,)))
        runs.append((inference._machine.state_dict(), posterior.sample((5,), x=x_o)))
    (weights, draws), *others = runs
    for other_weights, other_draws in others:
        assert all(torch.equal(weights[k], other_weights[k]) for k in weights)
        assert torch.equal(draws, other_draws)


def test_a_benchmark_task_simulates_on_an_engine(dask_clients):
    from sbi_alfi.benchmark import make_task

    task = make_task("gaussian_linear")
    draws = []
    for engine in [InProcess(), dask_clients[1]]:
        task.engine = engine
        torch.manual_seed(0)
        draws.append(task.simulate(2_500))
    (theta, x), (theta_, x_) = draws
    assert theta.shape == (2_500, 5) and x.shape == (2_500, 5)
    assert torch.equal(theta, theta_) and torch.equal(x, x_)
