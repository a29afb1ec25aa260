from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/support.py for every test directory

# A test that uses one of these fixtures starts (or needs) that service: it gets the marker, so the tiers
# of the Makefile can select by what a test starts (`make test-fast` runs none of them).
_SERVICE_FIXTURES = {"mlflow_server": "mlflow", "mlflow_url": "mlflow", "sshd": "sshd",
                     "slurm_cluster": "slurm", "mlflow_production": "postgres"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _SERVICE_FIXTURES.items():
            if fixture in used:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(autouse=True)
def _clean_hpc_environment(monkeypatch):
    """No HPCSYNC_*/SLURM variable from the developer's shell leaks into a test; no run leaks out."""
    for name in list(os.environ):
        if name == "HPCSYNC_SOAK":  # the harness's own switch (tests/support.py), not an hpc setting
            continue
        if name.startswith(("HPCSYNC_", "SLURM_")) or name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HPCSYNC_STATS", "off")  # monitor tests turn it on explicitly
    yield
    import hpc

    if hpc.run is not None:
        hpc.run.finish()


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "runs")
