"""run.log cost: per-call median and p99, end to end (init to finish), import + init, against baselines
measured in the same run. Run by hand: `python benchmarks/bench_log.py [--steps 20000] [--repeat 3]
[--flood-rows 1000000]`.

Baselines: the practical floor (json.dumps + buffered write of the same rows, serially) and, when installed,
wandb in offline mode. Targets (issue 2): median <= 3 us, p99 <= 30 us per call, end to end <= 1.3x the
json.dumps loop, import + init <= 0.15 s.

The flood (issue 12): one fresh process logs ``--flood-rows`` rows of 20 keys as fast as it can; another
fresh process builds the same rows without logging them (its peak RSS is the baseline). Reported: log() p50
and p99 under the flood, peak RSS above the baseline, how long finish() took, and what exit.json says was
written and dropped (written + dropped must equal logged).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def rows(steps: int):
    return [{f"m{k}": (i * 10 + k) * 0.001 for k in range(10)} for i in range(steps)]


def percentile(sorted_ns, q):
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def bench_baseline(data, root):
    path = os.path.join(root, "baseline.jsonl")
    start = time.perf_counter()
    calls = []
    with open(path, "a", buffering=1 << 20) as f:
        for i, row in enumerate(data):
            t0 = time.perf_counter_ns()
            f.write(json.dumps({"seq": i, "step": i, "ts_ms": int(time.time() * 1000), "values": row}) + "\n")
            calls.append(time.perf_counter_ns() - t0)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start, sorted(calls)


def bench_hpc(data, root):
    import hpc

    start = time.perf_counter()
    run = hpc.init(project="bench", dir=root, settings={"silent": True, "console": False, "stats": False,
                                                        "disable_code": True})
    calls = []
    log = run.log
    for row in data:
        t0 = time.perf_counter_ns()
        log(row)
        calls.append(time.perf_counter_ns() - t0)
    run.finish()
    return time.perf_counter() - start, sorted(calls)


def bench_wandb(data, root):
    import wandb

    start = time.perf_counter()
    run = wandb.init(project="bench", dir=root, mode="offline", settings=wandb.Settings(silent=True))
    calls = []
    for row in data:
        t0 = time.perf_counter_ns()
        run.log(row)
        calls.append(time.perf_counter_ns() - t0)
    run.finish()
    return time.perf_counter() - start, sorted(calls)


IMPORT_INIT = """
import time, sys, tempfile
t0 = time.perf_counter()
import hpc
run = hpc.init(project="bench", dir=tempfile.mkdtemp(), settings={"silent": True, "stats": %s})
t1 = time.perf_counter()
run.finish()
print(t1 - t0)
"""


def import_init_s(stats: bool) -> float:
    out = subprocess.run([sys.executable, "-c", IMPORT_INIT % stats], env={**os.environ, "PYTHONPATH": REPO},
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()).stdout
    return float(out.strip().splitlines()[-1])


FLOOD = """
import array, json, os, resource, sys, tempfile, time
rows, keys, log_rows = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "log"
import hpc
run = hpc.init(project="flood", dir=tempfile.mkdtemp(), settings={"silent": True, "console": False,
                                                                  "stats": False, "disable_code": True})
names = [f"metric_{k:02d}" for k in range(keys)]
calls = array.array("q", bytes(8 * rows))
log = run.log if log_rows else (lambda row: None)
clock = time.perf_counter_ns
start = time.perf_counter()
for i in range(rows):
    row = {name: i * 0.5 + k for k, name in enumerate(names)}
    t0 = clock()
    log(row)
    calls[i] = clock() - t0
loop_s = time.perf_counter() - start
start = time.perf_counter()
run.finish()
finish_s = time.perf_counter() - start
outcome = json.load(open(os.path.join(run.dir, "exit.json"))) if log_rows else {}
ordered = sorted(calls)
print(json.dumps({"p50_us": ordered[rows // 2] / 1000, "p99_us": ordered[int(rows * 0.99)] / 1000,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "loop_s": loop_s, "finish_s": finish_s, "exit": outcome}))
"""


def flood(rows: int, keys: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FLOOD, str(rows), str(keys), mode],
                         env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir()).stdout
    return json.loads(out.strip().splitlines()[-1])


def report_flood(rows: int, keys: int = 20) -> None:
    base, hpc_ = flood(rows, keys, "build"), flood(rows, keys, "log")
    outcome = hpc_["exit"]
    written = outcome.get("written_rows", outcome.get("history_records"))
    dropped = outcome.get("dropped_rows")
    print(f"flood: {rows} rows x {keys} keys, as fast as possible")
    print(f"  log() p50 {hpc_['p50_us']:.2f} us, p99 {hpc_['p99_us']:.2f} us; loop {hpc_['loop_s']:.1f} s "
          f"(building the rows alone: {base['loop_s']:.1f} s)")
    print(f"  peak RSS {hpc_['max_rss_mb']:.0f} MB, {hpc_['max_rss_mb'] - base['max_rss_mb']:.0f} MB above the "
          f"baseline ({base['max_rss_mb']:.0f} MB); finish() {hpc_['finish_s']:.1f} s")
    print(f"  exit.json: written {written}, dropped {dropped}, logged {rows}: "
          f"{'exact' if written is not None and dropped is not None and written + dropped == rows else 'MISMATCH'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flood-rows", type=int, default=1_000_000, help="0 skips the flood")
    args = parser.parse_args()
    data = rows(args.steps)
    try:
        import wandb  # noqa: F401
        contenders = ("baseline", "hpc", "wandb")
    except ImportError:
        contenders = ("baseline", "hpc")
    results = {name: [] for name in contenders}
    for _ in range(args.repeat):
        for name in contenders:
            with tempfile.TemporaryDirectory() as root:
                results[name].append(globals()[f"bench_{name}"](data, root))
    print(f"{args.steps} steps x 10 floats, {args.repeat} repeats, Python {sys.version.split()[0]}")
    print(f"{'logger':<10} {'log() p50 us':>13} {'p99 us':>8} {'end to end s':>13} {'per step us':>12} "
          f"{'vs baseline':>12}")
    base_e2e = statistics.median(e for e, _ in results["baseline"])
    for name in contenders:
        e2e = statistics.median(e for e, _ in results[name])
        p50 = statistics.median(percentile(c, 0.5) for _, c in results[name])
        p99 = statistics.median(percentile(c, 0.99) for _, c in results[name])
        print(f"{name:<10} {p50:>13.2f} {p99:>8.2f} {e2e:>13.3f} {e2e / args.steps * 1e6:>12.1f} "
              f"{e2e / base_e2e:>11.2f}x")
    times = sorted(import_init_s(False) for _ in range(5))
    times_stats = sorted(import_init_s(True) for _ in range(5))
    print(f"import + init (median of 5 fresh processes): {statistics.median(times):.3f} s without the "
          f"monitor, {statistics.median(times_stats):.3f} s with it (target <= 0.15 s)")
    if args.flood_rows:
        report_flood(args.flood_rows)


if __name__ == "__main__":
    main()
