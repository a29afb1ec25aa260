from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/support.py for every test directory


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
