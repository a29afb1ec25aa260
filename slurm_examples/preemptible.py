"""train.py, made preemptible: on USR1 (sbatch --signal=USR1@60) the job requeues itself.

Register your own signal handlers *before* hpc.init(): hpc-sync then closes the run as "preempted" first
and hands the signal on to yours. The model is checkpointed every step by train.py (--checkpoint-dir), so
the requeued job continues where it stopped, in the same run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402  (the toy loop next to this file)


def requeue_myself(signum: int, frame: object) -> None:
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id is None:
        raise SystemExit(128 + signum)
    print(f"{signal.Signals(signum).name}: requeueing job {job_id}", flush=True)
    # SLURM then terminates this attempt (SIGTERM) and starts the job again with SLURM_RESTART_COUNT + 1.
    subprocess.run(["scontrol", "requeue", job_id], check=False, timeout=60)
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, requeue_myself)
    raise SystemExit(train.main())
