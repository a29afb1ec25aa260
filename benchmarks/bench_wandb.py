#!/usr/bin/env python3
"""W&B reader benchmarks, each against the hpc format measured in the same run on the same machine.

1. Read throughput: the same rows (10 float keys, steps, timestamps) written once by wandb (offline, the
   installed version) as a .wandb, and once as hpc's history.jsonl. Each reader reads its ``history``
   stream from the start in the engine's 1 MiB chunks (and the W&B reader first its document scan, as a
   first pass does). Rows/s and MB/s of each, and the ratio; medians of interleaved rounds.
2. No-change pass over --runs W&B runs (copies of one real fragment directory) vs the same number of hpc
   runs, each after a first pass into the reference MemorySink: a no-change pass makes no call at all.

    python benchmarks/bench_wandb.py                 # 20,000 rows, 10,000 runs
    python benchmarks/bench_wandb.py --rows 100000 --runs 2000
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from sync_gateway.engine.gateway import CHUNK_BYTES  # noqa: E402
from sync_gateway.engine.runner import Runner  # noqa: E402
from sync_gateway.readers import discover_runs, reader_for  # noqa: E402
from sync_gateway.records import Position  # noqa: E402
from sync_gateway.settings import Settings  # noqa: E402
from sync_gateway.sinks.memory import MemorySink  # noqa: E402
from sync_gateway.sources.local import LocalSource  # noqa: E402

KEYS = 10
WRITER = """
import sys, wandb
rows = int(sys.argv[1])
run = wandb.init(project="bench", id="bench001")
for i in range(rows):
    run.log({f"m{k}": (i * 7 + k) % 1000 / 7.0 for k in range(KEYS)})
run.finish()
""".replace("KEYS", str(KEYS))


def write_wandb(work: str, rows: int) -> str:
    os.makedirs(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true", WANDB_CONSOLE="off",
               WANDB_DIR=work)
    subprocess.run([sys.executable, "-c", WRITER, str(rows)], cwd=work, env=env, check=True)
    (frag,) = glob.glob(os.path.join(work, "wandb", "offline-run-*"))
    return frag


def write_hpc_twin(root: str, wandb_root: str) -> None:
    """history.jsonl with exactly the rows the W&B reader reads (keys, steps, timestamps)."""
    src = LocalSource(wandb_root)
    (ref,) = discover_runs(src, 4)
    r = reader_for(src, ref)
    r.attach_state({})
    snap = r.snapshot()
    d = os.path.join(root, "bench", "twin")
    os.makedirs(d)
    with open(os.path.join(d, "run.json"), "w") as f:
        json.dump({"format_version": "1.0", "id": "twin", "project": "bench", "attempt": 1, "created_ms": 1}, f)
    (_, size), _ = r.streams(snap)
    pos, seq = Position(0, None), 0
    with open(os.path.join(d, "history.jsonl"), "w") as f:
        while True:
            ch = r.read("history", pos, size, CHUNK_BYTES)
            for row in ch.rows:
                f.write(json.dumps({"seq": seq, "step": row.step, "ts_ms": row.ts_ms, "values": row.values},
                                   separators=(",", ":")) + "\n")
                seq += 1
            pos = ch.end
            if ch.at_end:
                break


def read_all(root: str, depth: int) -> tuple:
    src = LocalSource(root)
    (ref,) = discover_runs(src, depth)
    t0 = time.perf_counter()
    r = reader_for(src, ref)
    r.attach_state({})
    snap = r.snapshot()
    if not r.ready(snap):
        raise SystemExit("no run record")
    r.info()
    size = dict(r.streams(snap))["history"]
    pos, rows = Position(0, None), 0
    while pos.offset < size:
        ch = r.read("history", pos, size, CHUNK_BYTES)
        rows += len(ch.rows)
        pos = ch.end
        if ch.at_end:
            break
    dt = time.perf_counter() - t0
    nbytes = sum(s.size_bytes for n, s in snap.files.items() if n.endswith((".wandb", "history.jsonl")))
    return rows, dt, nbytes


def throughput(tmp: str, rows: int, rounds: int) -> None:
    wroot = os.path.join(tmp, "w")
    t0 = time.perf_counter()
    write_wandb(os.path.join(wroot, "job"), rows)
    print(f"   (wandb wrote {rows:,} rows in {time.perf_counter() - t0:.1f} s)")
    hroot = os.path.join(tmp, "h")
    write_hpc_twin(hroot, wroot)
    ws, hs = [], []
    for i in range(rounds):
        order = [("w", wroot, 4), ("h", hroot, 0)] if i % 2 == 0 else [("h", hroot, 0), ("w", wroot, 4)]
        for tag, root, depth in order:
            n, dt, nbytes = read_all(root, depth)
            assert n == rows, (tag, n, rows)
            (ws if tag == "w" else hs).append((dt, nbytes))
    w_dt, w_b = statistics.median(d for d, _ in ws), ws[0][1]
    h_dt, h_b = statistics.median(d for d, _ in hs), hs[0][1]
    print(f"1. reading {rows:,} rows x {KEYS} keys (median of {rounds} interleaved rounds): "
          f".wandb {w_b / 1e6:.1f} MB in {w_dt:.2f} s = {w_b / 1e6 / w_dt:.1f} MB/s, {rows / w_dt:,.0f} rows/s; "
          f"hpc history.jsonl {h_b / 1e6:.1f} MB in {h_dt:.2f} s = {h_b / 1e6 / h_dt:.1f} MB/s, "
          f"{rows / h_dt:,.0f} rows/s; W&B/hpc rows/s ratio {h_dt / w_dt:.2f}")


def no_change(tmp: str, runs: int) -> None:
    one = os.path.join(tmp, "one")
    frag = write_wandb(one, 10)
    src_id = frag.rsplit("-", 1)[1]
    wroot = os.path.join(tmp, "nc-w")
    for i in range(runs):
        rid = f"r{i:07d}"
        d = os.path.join(wroot, f"user{i % 10}", "wandb", f"offline-run-20261127_000000-{rid}")
        shutil.copytree(frag, d, symlinks=True)
        os.rename(os.path.join(d, f"run-{src_id}.wandb"), os.path.join(d, f"run-{rid}.wandb"))
    hroot = os.path.join(tmp, "nc-h")
    for i in range(runs):
        d = os.path.join(hroot, f"proj{i % 10}", f"run{i:05d}")
        os.makedirs(d)
        with open(os.path.join(d, "run.json"), "w") as f:
            json.dump({"format_version": "1.0", "id": f"run{i:05d}", "project": f"proj{i % 10}", "attempt": 1,
                       "created_ms": 1}, f)
        with open(os.path.join(d, "history.jsonl"), "w") as f:
            f.write('{"seq":0,"step":0,"ts_ms":1,"values":{"x":1}}\n')
        with open(os.path.join(d, "exit.json"), "w") as f:
            json.dump({"attempt": 1, "exit_code": 0, "reason": "finished", "end_ms": 1}, f)
    out = {}
    for tag, root in (("wandb", wroot), ("hpc", hroot)):
        settings = Settings(roots=[root], server_url="http://unused.invalid",
                            state_dir=os.path.join(tmp, f"st-{tag}"))
        sink = MemorySink()
        with Runner(settings, sink=sink) as r:
            first = r.run_pass()
        assert first.runs_synced == runs and not first.errors, first
        sink.calls.clear()
        times = []
        for _ in range(3):
            with Runner(settings, sink=sink) as r:   # a fresh gateway each time, as cron's would be
                t0 = time.perf_counter()
                rep = r.run_pass()
                times.append(time.perf_counter() - t0)
            assert rep.runs_unchanged == runs and not sink.calls, (rep, sink.calls)
        out[tag] = statistics.median(times)
    print(f"2. no-change pass over {runs:,} runs (median of 3): W&B runs {out['wandb']:.2f} s, hpc runs "
          f"{out['hpc']:.2f} s (ratio {out['wandb'] / out['hpc']:.2f}; target <= 1 s); requests made: 0")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "nochange"])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-wandb-") as tmp:
        if "throughput" not in a.skip:
            throughput(tmp, a.rows, a.rounds)
        if "nochange" not in a.skip:
            no_change(tmp, a.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
