"""The MLflow door's log_metric cost beside mlflow's own stores, all measured in this one run (issue 22).

Run by hand: `python benchmarks/bench_mlflow_door.py [--calls 2000] [--repeat 3]`.

For each store (hpc:// through the door, MLflow on SQLite, MLflow's file store with
MLFLOW_ALLOW_FILE_STORE=true) one process-local MlflowClient creates a run and calls
``client.log_metric(run_id, "loss", value, step=i)`` ``--calls`` times (the fluent ``mlflow.log_metric`` is
this call plus a run lookup); reported per call: median and p99 in microseconds, and end to end (first call
to ``set_terminated`` returning, the run on disk and closed) per call. Ratios are against SQLite and the
file store measured in the same run: the machine is shared and noisy, absolute figures are not comparable
across runs. No figure here is asserted by a test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def bench(uri: str, calls: int) -> dict:
    import mlflow

    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment(f"bench-{time.time_ns()}"))
    run_id = run.info.run_id
    per_call = []
    start = time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter_ns()
        client.log_metric(run_id, "loss", 1.0 / (i + 1), step=i)
        per_call.append(time.perf_counter_ns() - t0)
    client.set_terminated(run_id)
    total_s = time.perf_counter() - start
    assert len(client.get_metric_history(run_id, "loss")) == calls, uri
    per_call.sort()
    return {"p50_us": per_call[len(per_call) // 2] / 1000,
            "p99_us": per_call[min(len(per_call) - 1, int(0.99 * len(per_call)))] / 1000,
            "end_to_end_us": total_s / calls * 1e6}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HPCSYNC_SILENT", "true")
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-door-") as tmp:
        stores = {"hpc://": f"hpc://{tmp}/hpc", "sqlite": f"sqlite:///{tmp}/mlflow.db",
                  "file:": f"file://{tmp}/mlruns"}
        results: dict = {name: [] for name in stores}
        for _ in range(args.repeat):
            for name, uri in stores.items():
                results[name].append(bench(uri, args.calls))
    print(f"log_metric, {args.calls} calls x {args.repeat} repeats (median of repeats)")
    print(f"{'store':8} {'p50 us':>10} {'p99 us':>10} {'end to end us/call':>20}")
    summary = {}
    for name, runs in results.items():
        summary[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        s = summary[name]
        print(f"{name:8} {s['p50_us']:10.1f} {s['p99_us']:10.1f} {s['end_to_end_us']:20.1f}")
    door = summary["hpc://"]
    for base in ("sqlite", "file:"):
        b = summary[base]
        print(f"hpc:// / {base}: p50 {door['p50_us'] / b['p50_us']:.3f}x, p99 {door['p99_us'] / b['p99_us']:.3f}x, "
              f"end to end {door['end_to_end_us'] / b['end_to_end_us']:.3f}x")


if __name__ == "__main__":
    main()
