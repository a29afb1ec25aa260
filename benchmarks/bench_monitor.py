"""What the system-metrics monitor costs: CPU time per minute and RSS, at the defaults and at 0.1 s sampling.

    .venv/bin/python benchmarks/bench_monitor.py [--seconds 60] [--workers 4]

Starts, side by side and for the same wall time: the monitor at the defaults (2 s / 30 s), the monitor at
a 0.1 s sample interval, and a baseline: a bare interpreter that imports psutil and sleeps (the floor any
Python monitor pays). This process is the "training process" whose tree is sampled; it forks ``--workers``
sleeping children, like DataLoader workers. Steady-state CPU is counted from ``--warmup`` seconds on, so the
interpreter start-up (reported apart) does not count. Targets at the defaults: <= 1 % of one core, <= 40 MB.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hpc._monitor_control import start_monitor  # noqa: E402
from hpc._settings import Settings  # noqa: E402

BASELINE = "import psutil, json, time\nwhile True: time.sleep(2)\n"


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured wall time (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="start-up seconds left out (default 5)")
    parser.add_argument("--workers", type=int, default=4, help="sleeping children of the 'trainer' (default 4)")
    args = parser.parse_args()

    workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100000)"])
               for _ in range(args.workers)]
    tmp = tempfile.mkdtemp(prefix="bench-monitor-")
    configs = {"defaults (2 s / 30 s)": (2.0, 30.0), "0.1 s sample / 30 s": (0.1, 30.0)}
    handles = {}
    for label, (sample_s, average_s) in configs.items():
        run_dir = os.path.join(tmp, label.split()[0])
        os.makedirs(run_dir)
        settings = Settings.resolve({"stats_sample_s": sample_s, "stats_average_s": average_s}, {})
        t0 = time.perf_counter()
        handles[label] = start_monitor(run_dir, parent_pid=os.getpid(), settings=settings)
        start_ms = (time.perf_counter() - t0) * 1000
        print(f"start_monitor() returned in {start_ms:.2f} ms ({label})")
    baseline = subprocess.Popen([sys.executable, "-c", BASELINE])
    procs = {label: psutil.Process(h.pid) for label, h in handles.items()}
    procs["baseline: python + psutil, sleeping"] = psutil.Process(baseline.pid)

    time.sleep(args.warmup)
    start = {label: cpu_s(p) for label, p in procs.items()}
    t_start = time.monotonic()
    peak_rss = {label: 0 for label in procs}
    while time.monotonic() - t_start < args.seconds:
        for label, p in procs.items():
            peak_rss[label] = max(peak_rss[label], p.memory_info().rss)
        time.sleep(1.0)
    wall = time.monotonic() - t_start
    end = {label: cpu_s(p) for label, p in procs.items()}
    uss = {label: p.memory_full_info().uss for label, p in procs.items()}

    base_label = "baseline: python + psutil, sleeping"
    print(f"\n{wall:.0f} s measured after {args.warmup:.0f} s warm-up, {args.workers} worker processes in the tree, "
          f"{psutil.cpu_count()} CPUs")
    print(f"{'process':40s} {'CPU s/min':>9s} {'% core':>7s} {'start-up CPU s':>14s} {'peak RSS MB':>11s} "
          f"{'USS MB':>7s} {'RSS / baseline':>14s}")
    for label in procs:
        per_min = (end[label] - start[label]) / wall * 60
        print(f"{label:40s} {per_min:9.3f} {per_min / 60 * 100:7.3f} {start[label]:14.3f} "
              f"{peak_rss[label] / 1e6:11.1f} {uss[label] / 1e6:7.1f} {peak_rss[label] / peak_rss[base_label]:14.2f}")
    d = "defaults (2 s / 30 s)"
    per_min = (end[d] - start[d]) / wall * 60
    print(f"\ntargets at the defaults: CPU {per_min / 60 * 100:.3f} % of one core (<= 1 %: "
          f"{'ok' if per_min / 60 * 100 <= 1 else 'MISSED'}), RSS {peak_rss[d] / 1e6:.1f} MB (<= 40 MB: "
          f"{'ok' if peak_rss[d] <= 40e6 else 'MISSED'})")

    for label, h in handles.items():
        t0 = time.perf_counter()
        code = h.stop()
        print(f"stop() {label}: exit {code} in {(time.perf_counter() - t0) * 1000:.0f} ms")
    baseline.kill()
    for w in workers:
        w.kill()
        w.wait()
    baseline.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
