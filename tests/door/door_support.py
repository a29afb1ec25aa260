"""Helpers of the MLflow door's tests (a module of its own: every test directory has a conftest)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IN_CI = os.environ.get("CI", "").lower() == "true"


def import_mlflow():
    """mlflow, or (outside CI only) a one-line skip of the module when it is not installed."""
    if IN_CI:
        import mlflow

        return mlflow
    return pytest.importorskip("mlflow", reason="the MLflow door's tests need mlflow: pip install -e '.[mlflow]'")


def child_env(**extra: str) -> dict:
    """A training process's environment: none of the variables that quietly switch MLflow's telemetry off
    (pytest's own, CI's), so a test of the door's switch can fail."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY",
                        "MLFLOW_TRACKING_URI") and not k.startswith(("HPCSYNC_", "SLURM_"))}
    env.update(HPCSYNC_STATS="off", PYTHONPATH=REPO)
    env.update(extra)
    return env


def run_script(code: str, env: dict, cwd: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def run_dirs(root: str) -> list:
    out = []
    for project in sorted(os.listdir(root)):
        path = os.path.join(root, project)
        if os.path.isdir(path):
            out += [os.path.join(path, r) for r in sorted(os.listdir(path))
                    if os.path.isfile(os.path.join(path, r, "run.json"))]
    return out


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def points(run_dir: str) -> list:
    with open(os.path.join(run_dir, "points.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]
