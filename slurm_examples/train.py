"""Toy training loop used by the sbatch examples: logs a loss per step and checkpoints so a requeue resumes.

No arguments to hpc.init besides the config: project, root and group come from the environment
(HPCSYNC_PROJECT, HPCSYNC_DIR) and from SLURM (one group per job or array, one run per rank or task, a run
id that a requeued job finds again). Run it under sbatch/srun, see README.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import hpc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--sleep-s", type=float, default=0.0, help="pretend each step takes this long")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="keep a checkpoint here (per run) so that a requeued job continues")
    parser.add_argument("--sweep", default=None, help="comma-separated learning rates, one per array task")
    args = parser.parse_args(argv)

    if args.sweep:
        # A job array: each task takes its own learning rate.
        rates = [float(x) for x in args.sweep.split(",")]
        args.lr = rates[int(os.environ["SLURM_ARRAY_TASK_ID"]) % len(rates)]

    run = hpc.init(config={"lr": args.lr, "steps": args.steps})
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))

    # The model's state is the user's business: here one number, saved every step (os.replace is atomic).
    state = {"epoch": 0, "weight": 1.0}
    checkpoint = None
    if args.checkpoint_dir:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        checkpoint = os.path.join(args.checkpoint_dir, f"{run.id}.json")
        if os.path.exists(checkpoint):
            with open(checkpoint) as f:
                state = json.load(f)
            print(f"rank {rank}: resuming from epoch {state['epoch']} (restart "
                  f"{os.environ.get('SLURM_RESTART_COUNT', '0')})", flush=True)

    while state["epoch"] < args.steps:
        state["weight"] *= 1.0 - args.lr
        state["epoch"] += 1
        run.log({"loss": state["weight"] ** 2, "epoch": state["epoch"], "rank": rank,
                 "lr": args.lr, "log_loss": math.log(state["weight"] ** 2 + 1e-12)})
        if checkpoint:
            tmp = checkpoint + ".tmp"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, checkpoint)
        if args.sleep_s:
            time.sleep(args.sleep_s)

    run.summary["final_weight"] = state["weight"]
    run.finish()
    print(f"rank {rank}: finished run {run.id} in group {run.group!r}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
