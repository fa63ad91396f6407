# Every target sets itself up: it creates .venv if missing and installs the
# package with its extras whenever pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed first and on its own, so that pip never resolves `torch` to a
# multi-GB CUDA build (here 2.13.0 is a CPU wheel on local disk).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

BENCHMARK_STAMP := $(VENV)/.benchmark

.PHONY: install benchmark-install demo test test-portable test-slow seed-sweep lint coverage clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,dev]"
	touch $@

install: $(STAMP)

# For benchmarks only, never for the tests: sbibm's reference posteriors.
# sbibm declares stale pins (sbi<0.22, ABC packages it only needs for its own
# algorithms), so it goes in without its dependencies; what its tasks import
# (pandas) comes with the `benchmark` extra.
SBIBM ?= sbibm==1.1.0
$(BENCHMARK_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,dev,benchmark]"
	$(PY) -m pip install --quiet --no-deps "$(SBIBM)"
	touch $@

benchmark-install: $(BENCHMARK_STAMP)

demo: $(STAMP)
	$(PY) -m sbi_alfi.demo

# Two pytest workers with one torch thread each (conftest.py pins it): the same
# code path on any machine, both cores of a 2-core one busy. The tests that start
# local Dask and Ray clusters share one worker (their `xdist_group`).
WORKERS ?= 2
XDIST := -n $(WORKERS) --dist loadgroup

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(XDIST)

# The tests on torch's generic CPU kernels (no AVX) and MKL's reproducible mode:
# a different floating-point code path from this machine's default.
test-portable: $(STAMP)
	ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE $(MAKE) test

# The statistical tests under 20 seeds, two at a time (an hour on 2 cores);
# writes benchmarks/results/seeds/ and resumes where it stopped.
seed-sweep: $(STAMP)
	$(PY) benchmarks/seed_sweep.py

test-slow: $(STAMP)
	$(PY) -m pytest $(XDIST) -m slow

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

coverage: $(STAMP)
	$(PY) -m pytest --cov --cov-report=term

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
