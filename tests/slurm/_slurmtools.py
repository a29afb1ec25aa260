"""Helpers for tests that submit real jobs to the cluster of scripts/slurm/start.sh.

Every wait is bounded; every test gets its own run root and submitit folder under a directory whose name
holds a space, quotes and `'; echo x`, so no command the project builds may split or run it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "slurm_examples"
HOSTILE = "it's a \"dir\"; echo x"
HOSTILE_JOB_NAME = "it's a \"job\" '; echo x"
WAIT_S = 180.0  # bound on any one job; jobs here take seconds, a requeue adds 10-15 s
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


def sinfo_problem() -> Optional[str]:
    """None when the cluster answers, else why not (one line)."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo not found): run scripts/ci/install-slurm.sh and scripts/slurm/start.sh"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s: start the cluster with scripts/slurm/start.sh"
    states = done.stdout.split()
    if done.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")
                                       for s in states):
        return f"no SLURM node is up (sinfo: {(done.stderr or done.stdout).strip()[:120]!r}): " \
               "start the cluster with scripts/slurm/start.sh"
    return None


def job_env(work: Path, **extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PYTHON": sys.executable,
        "EXAMPLES": str(work / "examples"),
        "HPCSYNC_DIR": str(work / "runs root"),
        "HPCSYNC_PROJECT": "slurm-tests",
        # The monitor's samples do not matter here, and the machine has two cores.
        "HPCSYNC_STATS": "false",
    })
    env.update(extra)
    return env


def sbatch(work: Path, script: str, env: Dict[str, str], *options: str) -> str:
    """Submit ``examples/<script>`` from ``work``; returns the job id."""
    done = subprocess.run(
        ["sbatch", "--parsable", *options, str(work / "examples" / script)],
        cwd=str(work), env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, f"sbatch failed: {done.stderr}"
    return done.stdout.strip().split(";")[0]


def squeue_states(job_id: str) -> List[str]:
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                          timeout=30)
    return done.stdout.split()


def sacct_states(job_id: str) -> Dict[str, str]:
    done = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State"],
                          capture_output=True, text=True, timeout=30)
    states = {}
    for line in done.stdout.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            states[jid] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def wait_job(job_id: str, timeout_s: float = WAIT_S, array_tasks: int = 0) -> Dict[str, str]:
    """Wait until the job (every task of an array) has left the queue and accounting shows its end.

    sacct lags behind the controller, and for an array it can first list the array job alone: with
    ``array_tasks`` it waits for one record per task.
    """
    wait_until(lambda: not squeue_states(job_id), timeout_s, f"job {job_id} to leave the queue")
    expected = {f"{job_id}_{t}" for t in range(array_tasks)} if array_tasks else {job_id}

    def final():
        states = sacct_states(job_id)
        done = set(states) == expected and all(s in TERMINAL for s in states.values())
        return states if done else None

    return wait_until(final, 60, f"sacct to record the end of job {job_id}")


def runs(root: Path, project: str = "slurm-tests") -> Dict[str, Path]:
    base = root / project
    if not base.is_dir():
        return {}
    return {p.name: p for p in sorted(base.iterdir()) if (p / "run.json").is_file()}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def history(run_dir: Path) -> List[dict]:
    path = run_dir / "history.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def job_output(work: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(work.glob("slurm-*.out")))
