"""submitit through hpc.slurm.slurm_job: one job, a job array, and the same function without SLURM.

    python slurm_examples/submitit_decorator.py --root ./hpc-runs

Inside the job, hpc.init() needs no arguments: project, root, group and job type arrive as HPCSYNC_*
variables set by the decorator, and SLURM gives each job (or array) its group and each task its run.
"""
from __future__ import annotations

import argparse
import json

import hpc
from hpc.slurm import result, slurm_job


def train(lr: float, steps: int = 10) -> dict:
    run = hpc.init(config={"lr": lr, "steps": steps})
    weight = 1.0
    for _ in range(steps):
        weight *= 1.0 - lr
        run.log({"loss": weight ** 2})
    run.finish()
    return {"run_id": run.id, "group": run.group, "dir": run.dir, "lr": lr}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="hpc-runs", help="where runs are written (shared storage)")
    parser.add_argument("--folder", default="hpc-submitit/%j", help="submitit's own logs and pickles")
    parser.add_argument("--name", default="submitit-demo", help="SLURM job name")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="bound on each wait for a result")
    args = parser.parse_args(argv)

    job_fn = slurm_job(train, timeout_min=10, tasks_per_node=1, cpus_per_task=1, slurm_partition="debug",
                       name=args.name, folder=args.folder, project="submitit-demo", root=args.root,
                       job_type="train", tags=["example"])
    job = job_fn.submit(0.1)
    array = job_fn.map_array([0.2, 0.05, 0.01])
    local = job_fn.local(0.3)
    # submitit's job.result() has no bound; hpc.slurm.result adds one.
    results = {
        "job": {"job_id": job.job_id, **result(job, args.timeout_s)},
        "array": [{"job_id": j.job_id, **result(j, args.timeout_s)} for j in array],
        "local": result(local, args.timeout_s),
    }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
