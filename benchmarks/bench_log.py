"""run.log cost: per-call median and p99, end to end (init to finish), import + init, against baselines
measured in the same run. Run by hand: `python benchmarks/bench_log.py [--steps 20000] [--repeat 3]`.

Baselines: the practical floor (json.dumps + buffered write of the same rows, serially) and, when installed,
wandb in offline mode. Targets (issue 2): median <= 3 us, p99 <= 30 us per call, end to end <= 1.3x the
json.dumps loop, import + init <= 0.15 s.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
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
    print(f"{'logger':<10} {'log() p50 us':>13} {'p99 us':>8} {'end to end s':>13} {'per step us':>12} {'vs baseline':>12}")
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


if __name__ == "__main__":
    main()
