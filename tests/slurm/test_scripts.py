"""scripts/slurm/start.sh and stop.sh against the running cluster: idempotent start, refused inputs."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from _slurmtools import REPO
from support import need

START = REPO / "scripts" / "slurm" / "start.sh"
STOP = REPO / "scripts" / "slurm" / "stop.sh"
STATE = Path(os.environ.get("HPCSYNC_SLURM_STATE", "/tmp/hpc-sync-slurm"))
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")


def pids():
    return {name: (STATE / "run" / f"{name}.pid").read_text().strip() for name in DAEMONS}


@pytest.mark.slurm
def test_start_when_running_is_ok_and_keeps_the_daemons(slurm_cluster):
    need((STATE / "run" / "slurmctld.pid").exists(), f"the cluster was not started from {STATE}")
    before = pids()
    done = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "already running" in done.stdout and "ready in" in done.stdout
    assert pids() == before
    for name, pid in before.items():
        assert Path(f"/proc/{pid}/comm").read_text().strip() == name


@pytest.mark.parametrize("state", ["/tmp/it's here", "/tmp/a b", "/tmp/x;echo x", "relative/dir"])
def test_start_refuses_a_state_directory_slurm_conf_cannot_hold(state, tmp_path):
    need(os.geteuid() == 0, "start.sh runs as root")
    env = {**os.environ, "HPCSYNC_SLURM_STATE": state}
    done = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "HPCSYNC_SLURM_STATE" in done.stderr
    assert not Path(state).exists()


def test_stop_with_nothing_running_is_ok_and_rejects_unknown_arguments(tmp_path):
    env = {**os.environ, "HPCSYNC_SLURM_STATE": str(tmp_path / "state")}
    done = subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and "ok" in done.stdout
    done = subprocess.run(["bash", str(STOP), "--now"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "valid: --purge" in done.stderr


def test_stop_never_signals_a_process_that_is_not_the_daemon(tmp_path):
    # A stale PID file naming an unrelated live process (here: a sleep) must not get it killed.
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (state / "run" / "slurmctld.pid").write_text(f"{sleeper.pid}\n")
        env = {**os.environ, "HPCSYNC_SLURM_STATE": str(state)}
        done = subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait(10)
