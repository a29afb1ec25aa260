"""Fixtures for tests that submit real jobs to the cluster of scripts/slurm/start.sh (helpers: _slurmtools)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _slurmtools import EXAMPLES, HOSTILE, sinfo_problem
from support import need


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    problem = sinfo_problem()
    need(problem is None, problem or "")


@pytest.fixture
def workdir(tmp_path: Path, slurm_cluster: None) -> Path:
    """A hostile-named directory holding a copy of the examples; jobs are submitted from here."""
    work = tmp_path / HOSTILE
    shutil.copytree(EXAMPLES, work / "examples")
    return work
