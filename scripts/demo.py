"""`make demo`: the main job end to end on the embedded default.

1. Start a local MLflow tracking server on SQLite (scripts/mlflow_server.py), unless --server URL names one.
2. Run a grouped 4-rank experiment that logs offline to a local "shared" directory (.demo/runs): through
   real SLURM when `sbatch` and a responding `sinfo` are present, else submitit's local executor.
3. Run `sync-gateway sync --once`, then print the experiment's URL and a summary table read back from the
   server.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, ".demo")
sys.path.insert(0, os.path.join(REPO, "scripts"))

import mlflow_server  # noqa: E402  (scripts/mlflow_server.py)


def train(rank_steps: int) -> str:
    """One rank of the experiment. Runs inside the submitit job (SLURM or local)."""
    import math
    import random

    import submitit

    import hpc

    env = submitit.JobEnvironment()
    kwargs = {}
    if "SLURM_JOB_ID" not in os.environ:
        # submitit's local executor sets no SLURM variables: name the group and the rank here. Under SLURM,
        # hpc.init() derives both (and a run id that survives a requeue) by itself.
        kwargs = {"group": f"demo-{env.job_id}", "name": f"rank-{env.global_rank}"}
    run = hpc.init(config={"lr": 0.05, "batch_size": 64, "rank_steps": rank_steps}, **kwargs)
    run.define_metric("train/*", step_metric="batch")
    run.define_metric("val/*", step_metric="epoch")
    run.define_metric("val/loss", step_metric="epoch", summary="min")
    rng = random.Random(env.global_rank)
    batch = 0
    for epoch in range(4):
        for _ in range(rank_steps // 4):
            loss = 2.0 * math.exp(-batch / rank_steps * 3) + rng.gauss(0, 0.03)
            run.log({"train/loss": loss, "train/lr": 0.05, "batch": batch})
            batch += 1
            time.sleep(0.015)
        run.log({"val/loss": 2.0 * math.exp(-batch / rank_steps * 3) + 0.05, "val/acc": 0.5 + epoch / 10,
                 "epoch": epoch})
    run.summary["final_rank"] = env.global_rank
    run.finish()
    return run.id


def slurm_available() -> bool:
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def slurm_node_cpus() -> int:
    done = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=10)
    counts = [int(x) for x in done.stdout.split() if x.strip().isdigit()]
    return max(counts) if counts else 1


def run_experiment(root: str, ranks: int, steps: int, force_local: bool) -> str:
    from hpc.slurm import results, slurm_job

    on_slurm = not force_local and slurm_available()
    if on_slurm:
        cpus = slurm_node_cpus()
        if cpus < ranks:
            print(f"   (the SLURM node has {cpus} CPUs: running {cpus} ranks instead of {ranks})")
            ranks = cpus
    params = dict(timeout_min=10, tasks_per_node=ranks, nodes=1, name="hpc-sync-demo", project="demo",
                  root=root, folder=os.path.join(DEMO, "submitit", "%j"))
    job_fn = slurm_job(train, **params)
    print(f"== 2. a {ranks}-rank experiment on {'SLURM' if on_slurm else 'submitit local executor'}, "
          f"logging offline to {root}", flush=True)
    job = job_fn.submit(steps) if on_slurm else job_fn.local(steps)
    ids = results(job, timeout_s=300)  # one run id per rank
    print(f"   job {job.job_id} finished: runs {', '.join(ids)}")
    return str(job.job_id)


def summary_table(url: str, experiment_id: str) -> None:
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/runs/search", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.load(response).get("runs", [])
    rows = []
    for r in runs:
        tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        metrics = {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
        rows.append([tags.get("mlflow.runName", "?"), r["info"]["status"],
                     "child" if "mlflow.parentRunId" in tags else "parent",
                     f"{metrics['train/loss']:.4f}" if "train/loss" in metrics else "-",
                     f"{metrics['val/loss']:.4f}" if "val/loss" in metrics else "-",
                     str(sum(1 for k in metrics if k.startswith("system/")))])
    rows.sort(key=lambda row: (row[2] != "parent", row[0]))
    header = ["RUN", "STATUS", "KIND", "TRAIN/LOSS", "VAL/LOSS", "SYSTEM METRICS"]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for row in [header] + rows:
        print("   " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="an MLflow tracking server URL (default: start a local one)")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200, help="training steps per rank")
    parser.add_argument("--keep-server", action="store_true", help="leave the local server running")
    parser.add_argument("--local", action="store_true", help="submitit's local executor even if SLURM is here")
    args = parser.parse_args(argv)

    root = os.path.join(DEMO, "runs")
    shutil.rmtree(DEMO, ignore_errors=True)
    os.makedirs(root)
    # Short monitor windows, so a short demo still has system metrics to show.
    os.environ.update({"HPCSYNC_STATS_SAMPLE_S": "0.5", "HPCSYNC_STATS_AVERAGE_S": "2"})
    handle = None
    if args.server:
        url = args.server.rstrip("/")
    else:
        print("== 1. starting a local MLflow server (SQLite) ...", flush=True)
        handle = mlflow_server.start(os.path.join(DEMO, "mlflow"))
        url = handle.url
        print(f"   {url}")
    try:
        run_experiment(root, args.ranks, args.steps, args.local)
        bindir = os.path.dirname(sys.executable)
        subprocess.run([os.path.join(bindir, "hpc"), "runs", "ls", "--root", root], check=True)

        config = os.path.join(DEMO, "gateway.yaml")
        with open(config, "w") as f:
            json.dump({"roots": [root], "server": {"kind": "mlflow", "url": url},
                       "state_dir": os.path.join(DEMO, "gateway-state")}, f)  # JSON is YAML
        print("== 3. sync-gateway doctor, then sync --once", flush=True)
        subprocess.run([os.path.join(bindir, "sync-gateway"), "doctor", "--config", config], check=True)
        done = subprocess.run([os.path.join(bindir, "sync-gateway"), "sync", "--once", "--config", config])
        if done.returncode != 0:
            print(f"sync-gateway exited with {done.returncode}", file=sys.stderr)
            return done.returncode
        subprocess.run([os.path.join(bindir, "sync-gateway"), "status", "--config", config], check=True)

        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=demo",
                                    timeout=30) as response:
            experiment_id = json.load(response)["experiment"]["experiment_id"]
        print(f"\nExperiment: {url}/#/experiments/{experiment_id}")
        summary_table(url, experiment_id)
    finally:
        if handle is not None and not args.keep_server:
            mlflow_server.stop(handle)
            print("\n(the local server was stopped; `python scripts/demo.py --keep-server` leaves it up "
                  "to browse)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
