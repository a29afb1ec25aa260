"""A preemptible submitit job: submitit's ``checkpoint`` hook saves the model, submitit requeues the job, and
hpc-sync continues the same run (same run id: same job id and rank) with the steps going on.

    python slurm_examples/submitit_preemptible.py --root ./hpc-runs --demo-preempt-after-s 5

SLURM sends USR2 ``signal_delay_s`` before the time limit (submitit asks for ``--signal=USR2@<delay>``), or
when the job is preempted. hpc-sync closes the attempt as "preempted" first, then submitit calls
``checkpoint`` below, requeues the job, and the next start unpickles the trainer with its state.
``--demo-preempt-after-s`` sends that USR2 by hand (``scancel --signal=USR2``) so you can watch it happen.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time

import submitit

import hpc
from hpc.slurm import result, slurm_job


class Trainer(submitit.helpers.Checkpointable):
    def __init__(self, steps: int, sleep_s: float):
        self.steps = steps
        self.sleep_s = sleep_s
        self.state = {"epoch": 0, "weight": 1.0}  # the "model": pickled with the trainer at checkpoint

    def __call__(self, lr: float) -> dict:
        run = hpc.init(config={"lr": lr, "steps": self.steps})
        started_at = self.state["epoch"]
        while self.state["epoch"] < self.steps:
            self.state["weight"] *= 1.0 - lr
            self.state["epoch"] += 1
            run.log({"loss": self.state["weight"] ** 2, "epoch": self.state["epoch"]})
            time.sleep(self.sleep_s)
        run.finish()
        return {"run_id": run.id, "dir": run.dir, "started_at_epoch": started_at, "state": self.state}

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # Save whatever the next attempt needs. Here the state travels inside the pickled trainer; a real
        # model would be written with torch.save to shared storage and loaded again in __call__.
        print(f"checkpoint at epoch {self.state['epoch']}", flush=True)
        return super().checkpoint(*args, **kwargs)


def _squeue_state(job_id: str) -> str:
    done = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                          timeout=60)
    return done.stdout.strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="hpc-runs")
    parser.add_argument("--folder", default="hpc-submitit/%j")
    parser.add_argument("--name", default="submitit-preemptible")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--sleep-s", type=float, default=0.25)
    parser.add_argument("--demo-preempt-after-s", type=float, default=None,
                        help="send the job USR2 after this many seconds of running, as SLURM would")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="bound on the wait for the result")
    args = parser.parse_args(argv)

    trainer = slurm_job(Trainer(args.steps, args.sleep_s), timeout_min=30, signal_delay_s=60,
                        name=args.name, folder=args.folder, project="submitit-preemptible", root=args.root)
    job = trainer.submit(0.05)
    print(f"submitted job {job.job_id}", flush=True)
    if args.demo_preempt_after_s is not None:
        deadline = time.monotonic() + args.timeout_s
        # Ask squeue itself: submitit's job.state is cached and can report RUNNING seconds late.
        while _squeue_state(job.job_id) != "RUNNING":
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job.job_id} never started")
            time.sleep(0.2)
        time.sleep(args.demo_preempt_after_s)
        print(f"sending USR2 to job {job.job_id}", flush=True)
        subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], check=True, timeout=60)
    print(json.dumps({"job_id": job.job_id, **result(job, args.timeout_s)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
