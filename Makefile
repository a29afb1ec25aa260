# The two commands a newcomer needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Everything the tests and the demo use; a compute node installs only `pip install hpc-sync`.
EXTRAS ?= dev
# Tests honour CI=true (every service must be present) and PYTEST_ARGS.
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast lint soak bench clean

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed-$(EXTRAS)

demo: venv
	$(VENV)/bin/python scripts/demo.py

test: venv
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

# Unit tier: no servers, no process-and-wait tests (under a minute); `make test` runs everything.
test-fast: venv
	$(PY) -m pytest -q -m "not (mlflow or postgres or slurm or sshd or faults or gpu or slow)" $(PYTEST_ARGS)

# ruff and mypy, configured in pyproject.toml (CI runs this before the tests).
lint: venv
	$(VENV)/bin/ruff check hpc sync_gateway tests benchmarks scripts
	$(VENV)/bin/mypy

soak: venv
	HPCSYNC_SOAK=1 $(PY) -m pytest -q -m faults $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/bench_log.py
	$(PY) benchmarks/bench_monitor.py
	$(PY) benchmarks/bench_sync.py
	$(PY) benchmarks/bench_sftp.py
	$(PY) benchmarks/bench_mlflow_door.py
	$(PY) benchmarks/bench_airgap.py

clean:
	rm -rf $(VENV) .demo hpc-runs .pytest_cache
