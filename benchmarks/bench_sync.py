#!/usr/bin/env python3
"""Gateway benchmarks, each against a baseline measured in the same run on the same machine.

1. Throughput: points/s the gateway syncs into a local MLflow server (SQLite) vs that server's ceiling
   measured with plain sequential ``runs/log-batch`` requests of 1000 points. Target >= 90 %.
2. RSS: peak resident memory of a ``sync-gateway sync --once`` process syncing a run of --rss-points
   points (default 5,000,000). Target <= 100 MB.
3. No-change pass over --runs run directories (default 10,000) vs a bare scandir+stat walk of the same tree.
   Target <= 1 s. The pass must make no request at all (checked).
4. Parallel sync (``workers: N``, for each N of --parallel): the ceiling of N plain ``runs/log-batch``
   clients (processes, 1000 points per request, one run each) on an MLflow server with --server-workers
   workers (SQLite; --production: PostgreSQL + S3, scripts/mlflow_production.py), the gateway with
   ``workers: N`` syncing N runs of the same points, and the gateway with ``workers: 1`` on them. Target:
   workers N >= 90 % of the ceiling.
5. The gateway alone (for sizing a login node): points/s and peak RSS of a gateway process syncing
   --alone-runs runs of --alone-points points each with ``workers`` 1 and each N of --parallel, into an
   MLflow sink whose HTTP calls answer at once (no server: what the gateway's own CPU and memory allow).
6. Small runs: the first pass over --small-runs copies (default 2,000) of one small run the SDK wrote
   (config, tags, 5 rows, a summary, output.log, exit.json) into a local MLflow server: requests per run by
   kind (create, search, log-batch, update, files, other) and the pass's time. Then a no-change pass (no
   request). The minimum MLflow allows is one create, one log-batch, one update and one PUT per file.

    python benchmarks/bench_sync.py                      # everything, full sizes (the RSS part is long)
    python benchmarks/bench_sync.py --rss-points 500000  # a quicker RSS figure
    python benchmarks/bench_sync.py --skip throughput rss nochange --parallel 2 4   # only part 4
    python benchmarks/bench_sync.py --only small --small-runs 2000                # only part 6
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, REPO)

import mlflow_server  # noqa: E402
import requests  # noqa: E402

from sync_gateway.engine.runner import Runner, make_sink  # noqa: E402
from sync_gateway.settings import Settings  # noqa: E402
from sync_gateway.sinks._http import HttpClient  # noqa: E402
from sync_gateway.sinks.memory import MemorySink  # noqa: E402
from sync_gateway.sinks.mlflow.sink import MlflowSink  # noqa: E402

TS0 = 1_764_150_000_000


def write_run(root: str, project: str, run_id: str, rows: int, keys: int) -> None:
    d = os.path.join(root, project, run_id)
    os.makedirs(d)
    with open(os.path.join(d, "run.json"), "w") as f:
        json.dump({"format_version": "1.0", "id": run_id, "project": project, "name": run_id, "attempt": 1,
                   "created_ms": TS0}, f)
    names = [f"m{k}" for k in range(keys)]
    with open(os.path.join(d, "history.jsonl"), "w") as f:
        for i in range(rows):
            vals = ",".join(f'"{n}":{(i * 7 + k) % 1000 / 7.0!r}' for k, n in enumerate(names))
            f.write(f'{{"seq":{i},"step":{i},"ts_ms":{TS0 + i},"values":{{{vals}}}}}\n')
    with open(os.path.join(d, "exit.json"), "w") as f:
        json.dump({"attempt": 1, "exit_code": 0, "reason": "finished", "end_ms": TS0 + rows}, f)


def ceiling(url: str, points: int) -> float:
    s = requests.Session()
    s.trust_env = False
    api = url + "/api/2.0/mlflow"
    eid = s.post(api + "/experiments/create", json={"name": "ceiling-" + uuid.uuid4().hex[:8]}).json()[
        "experiment_id"]
    rid = s.post(api + "/runs/create", json={"experiment_id": eid, "start_time": TS0}).json()["run"]["info"][
        "run_id"]
    t0 = time.perf_counter()
    for b in range(points // 1000):
        body = {"run_id": rid, "metrics": [
            {"key": f"m{k % 10}", "value": (b * 1000 + k) / 7.0, "timestamp": TS0 + b * 100 + k // 10,
             "step": b * 100 + k // 10} for k in range(1000)]}
        r = s.post(api + "/runs/log-batch", json=body, timeout=60)
        r.raise_for_status()
    return points / (time.perf_counter() - t0)


def _ceiling_client(url: str, rid: str, batches: int) -> Tuple[float, float]:
    """One client process: ``batches`` log-batch requests of 1000 points; returns its (start, end) time."""
    s = requests.Session()
    s.trust_env = False
    api = url + "/api/2.0/mlflow"
    t0 = time.time()
    for b in range(batches):
        body = {"run_id": rid, "metrics": [
            {"key": f"m{k % 10}", "value": (b * 1000 + k) / 7.0, "timestamp": TS0 + b * 100 + k // 10,
             "step": b * 100 + k // 10} for k in range(1000)]}
        s.post(api + "/runs/log-batch", json=body, timeout=120).raise_for_status()
    return t0, time.time()


def parallel_ceiling(url: str, points: int, clients: int) -> float:
    """``clients`` processes (not threads: the client's own interpreter must not be the limit), each
    logging points/clients points to its own run, 1000 per request; timed from the first request sent to
    the last answered."""
    s = requests.Session()
    s.trust_env = False
    api = url + "/api/2.0/mlflow"
    eid = s.post(api + "/experiments/create", json={"name": "pceil-" + uuid.uuid4().hex[:8]}).json()["experiment_id"]
    rids = [s.post(api + "/runs/create", json={"experiment_id": eid, "start_time": TS0}).json()["run"]["info"][
        "run_id"] for _ in range(clients)]
    batches = points // clients // 1000
    with ProcessPoolExecutor(clients, mp_context=multiprocessing.get_context("fork")) as ex:
        spans = list(ex.map(_ceiling_client, [url] * clients, rids, [batches] * clients))
    return batches * 1000 * clients / (max(e for _, e in spans) - min(b for b, _ in spans))


def gateway_parallel(url: str, tmp: str, points: int, runs: int, workers: int) -> float:
    root = os.path.join(tmp, f"par-runs-{uuid.uuid4().hex[:8]}")
    project = "par-" + uuid.uuid4().hex[:8]
    per_run = points // runs // 1000 * 1000
    for i in range(runs):
        write_run(root, project, f"r{i}", per_run // 10, 10)
    settings = Settings(roots=[root], server_url=url, state_dir=root + "-state", workers=workers)
    return _timed_pass(settings, per_run * runs)


def _timed_pass(settings: Settings, points: int) -> float:
    with Runner(settings, sink=make_sink(settings, environ={})) as runner:
        t0 = time.perf_counter()
        rep = runner.run_pass()
        dt = time.perf_counter() - t0
    assert rep.ok and rep.points_sent == points, rep
    return points / dt


def parallel(tmp: str, a: argparse.Namespace) -> None:
    if a.production:
        import mlflow_production as prod

        missing = prod.available()
        if missing:
            raise SystemExit(f"--production: {missing}")
        # Not below the 0700 temporary directory: the postgres user must reach its cluster.
        workdir = tempfile.mkdtemp(prefix="hpcsync-bench-prod-")
        h = prod.start(workdir, workers=a.server_workers)
        url, stop = h.url, (lambda: (prod.stop(h), shutil.rmtree(workdir, ignore_errors=True)))
        profile = f"PostgreSQL + S3, {a.server_workers} server workers"
    else:
        hs = mlflow_server.start(os.path.join(tmp, "mlflow-par"), workers=a.server_workers)
        url, stop = hs.url, (lambda: mlflow_server.stop(hs))
        profile = f"SQLite, {a.server_workers} server workers"
    try:
        for n in a.parallel:
            # Interleaved rounds, medians (the machine is shared and the database grows as we go).
            fns: List[Callable[[], float]] = [
                lambda n=n: parallel_ceiling(url, a.parallel_points, n),
                lambda n=n: gateway_parallel(url, tmp, a.parallel_points, n, n),
                lambda n=n: gateway_parallel(url, tmp, a.parallel_points, n, 1)]
            res: List[List[float]] = [[], [], []]
            for r in range(a.rounds):
                order = [0, 1, 2] if r % 2 == 0 else [2, 1, 0]
                for i in order:
                    res[i].append(fns[i]())
            c, g, g1 = (statistics.median(x) for x in res)
            print(f"4. parallel, {n} runs x {a.parallel_points // n:,} points ({profile}, median of {a.rounds} "
                  f"interleaved rounds): ceiling of {n} plain log-batch x1000 clients {c:,.0f} points/s; gateway "
                  f"workers: {n} {g:,.0f} points/s (ratio {g / c:.0%}, target >= 90 %); gateway workers: 1 "
                  f"{g1:,.0f} points/s (ratio {g1 / c:.0%}); workers {n} / workers 1: {g / g1:.2f}x\n"
                  f"   rounds: ceiling {[round(x) for x in res[0]]}, workers {n} {[round(x) for x in res[1]]}, "
                  f"workers 1 {[round(x) for x in res[2]]}")
    finally:
        stop()


def gateway_throughput(url: str, tmp: str, points: int) -> float:
    root = os.path.join(tmp, "tp-runs")
    write_run(root, "bench-" + uuid.uuid4().hex[:8], "big", points // 10, 10)
    settings = Settings(roots=[root], server_url=url, state_dir=os.path.join(tmp, "tp-state"), workers=1)
    with Runner(settings, sink=make_sink(settings, environ={})) as runner:
        t0 = time.perf_counter()
        rep = runner.run_pass()
        dt = time.perf_counter() - t0
    assert rep.ok and rep.points_sent == points, rep
    return points / dt


def rss(url: str, tmp: str, points: int) -> float:
    root = os.path.join(tmp, "rss-runs")
    write_run(root, "rss-" + uuid.uuid4().hex[:8], "huge", points // 10, 10)
    cfg = os.path.join(tmp, "rss.yaml")
    with open(cfg, "w") as f:
        json.dump({"roots": [root], "server": {"kind": "mlflow", "url": url},
                   "state_dir": os.path.join(tmp, "rss-state")}, f)  # JSON is YAML
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "sync_gateway.cli", "-q", "sync", "--once", "--config", cfg],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"the RSS sync failed with exit status {p.returncode}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far: this one
    print(f"   ({points:,} points synced by a separate process in {dt:.1f} s: {points / dt:,.0f} points/s)")
    return peak_kb / 1024


# The no-change benchmark uses the reference MemorySink: a no-change pass must not call it at all.


def no_change(tmp: str, runs: int) -> None:
    root = os.path.join(tmp, "many")
    for i in range(runs):
        d = os.path.join(root, f"proj{i % 10}", f"run{i:05d}")
        os.makedirs(d)
        with open(os.path.join(d, "run.json"), "w") as f:
            json.dump({"format_version": "1.0", "id": f"run{i:05d}", "project": f"proj{i % 10}", "attempt": 1,
                       "created_ms": TS0}, f)
        with open(os.path.join(d, "history.jsonl"), "w") as f:
            f.write(f'{{"seq":0,"step":0,"ts_ms":{TS0},"values":{{"x":1}}}}\n')
        with open(os.path.join(d, "exit.json"), "w") as f:
            json.dump({"attempt": 1, "exit_code": 0, "reason": "finished", "end_ms": TS0}, f)
    settings = Settings(roots=[root], server_url="http://unused.invalid", state_dir=os.path.join(tmp, "nc-st"))
    sink = MemorySink()
    with Runner(settings, sink=sink) as r:
        r.run_pass()
    sink.calls.clear()
    t0 = time.perf_counter()
    n = 0
    for p in os.scandir(root):
        for r_ in os.scandir(p.path):
            for e in os.scandir(r_.path):
                e.stat()
                n += 1
    base = time.perf_counter() - t0
    with Runner(settings, sink=sink) as r:  # a fresh process-like gateway, as a cron pass would be
        t0 = time.perf_counter()
        rep = r.run_pass()
        dt = time.perf_counter() - t0
    assert rep.runs_unchanged == runs and not sink.calls, (rep, sink.calls)
    print(f"3. no-change pass over {runs:,} runs: {dt:.2f} s (target <= 1 s); bare scandir+stat of the same "
          f"{n:,} files: {base:.2f} s; ratio {dt / base:.1f}x; requests made: {sum(sink.calls.values())}")


class _NoServerSink(MlflowSink):
    """The MLflow sink with every request answered at once: the gateway's own cost, no server's."""

    def _call(self, method: str, path: str, body=None, params=None, data=None, size_bytes=0,  # type: ignore[override]
              idempotent=True):
        if path == "/experiments/get-by-name":
            return {"experiment": {"experiment_id": "1"}}
        if path == "/runs/create":
            return {"run": {"info": {"run_id": uuid.uuid4().hex, "artifact_uri": "mlflow-artifacts:/a"}}}
        if path == "/runs/search":
            return {"runs": []}
        return {}


def alone_child(tmp: str, runs: int, points: int, workers: int) -> None:
    """In a fresh process (its own peak RSS): prints points/s and peak RSS in MB as JSON."""
    root = os.path.join(tmp, f"alone-{workers}")
    for i in range(runs):
        write_run(root, "alone", f"r{i}", points // 10, 10)
    settings = Settings(roots=[root], server_url="http://unused.invalid", state_dir=root + "-state",
                        workers=workers)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pps = _timed_pass_with(settings, _NoServerSink(HttpClient(settings, {})), runs * points)
    print(json.dumps({"pps": pps, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_mb": rss0}))


def _timed_pass_with(settings: Settings, sink: MlflowSink, points: int) -> float:
    with Runner(settings, sink=sink) as runner:
        t0 = time.perf_counter()
        rep = runner.run_pass()
        dt = time.perf_counter() - t0
    assert rep.ok and rep.points_sent == points, rep
    return points / dt


def alone(tmp: str, a: argparse.Namespace) -> None:
    for w in [1, *a.parallel]:
        out = subprocess.run([sys.executable, __file__, "--alone-child", str(w), "--alone-runs", str(a.alone_runs),
                              "--alone-points", str(a.alone_points), "--tmp", tmp],
                             check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"5. gateway alone (no server), {a.alone_runs} runs x {a.alone_points:,} points, workers: {w}: "
              f"{r['pps']:,.0f} points/s, peak RSS {r['rss_mb']:.0f} MB ({r['rss_before_mb']:.0f} MB after "
              f"writing the runs, before the pass)")


def _small_template(tmp: str) -> str:
    """One small run written by the SDK itself, in a fresh process (its directory)."""
    root = os.path.join(tmp, "small-template")
    code = "\n".join([
        "import hpc",
        "r = hpc.init(project='t', config={'lr': 0.1, 'batch_size': 32, 'model': {'depth': 4}}, tags=['a', 'b'],",
        "             notes='n', settings={'root': ROOT, 'stats': False})",
        "for i in range(5):",
        "    r.log({'loss': 1 / (i + 1), 'acc': i / 5})",
        "print('hello')",
        "r.summary['best'] = 0.9",
        "r.finish()"]).replace("ROOT", repr(root))
    # Run outside any git tree: the SDK would capture the tree's diff as one more file of the run.
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=tmp,
                   env=dict(os.environ, PYTHONPATH=REPO))
    [run_id] = os.listdir(os.path.join(root, "t"))
    return os.path.join(root, "t", run_id)


def _clone_runs(template: str, root: str, project: str, runs: int) -> None:
    with open(os.path.join(template, "run.json")) as f:
        meta = json.load(f)
    for i in range(runs):
        d = os.path.join(root, project, f"s{i:05d}")
        shutil.copytree(template, d)
        with open(os.path.join(d, "run.json"), "w") as f:
            json.dump({**meta, "id": f"s{i:05d}", "name": f"small-{i}", "project": project}, f)


class RequestCount:
    """Counts the requests every HttpClient of this process makes, by kind (a bench-only wrapper)."""

    KINDS = (("/runs/create", "create"), ("/runs/search", "search"), ("/runs/log-batch", "log-batch"),
             ("/runs/update", "update"), ("/mlflow-artifacts/", "files"))

    def __init__(self) -> None:
        self.counts: dict = {}
        self._orig = HttpClient.request

    def __enter__(self) -> RequestCount:
        counts, orig, kinds = self.counts, self._orig, self.KINDS

        def request(http, method, path, *args, **kw):
            kind = next((k for p, k in kinds if p in path), "other")
            counts[kind] = counts.get(kind, 0) + 1
            return orig(http, method, path, *args, **kw)

        HttpClient.request = request  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc) -> None:
        HttpClient.request = self._orig  # type: ignore[method-assign]


def small_runs(url: str, tmp: str, runs: int) -> None:
    template = _small_template(tmp)
    root = os.path.join(tmp, "small-runs")
    project = "small-" + uuid.uuid4().hex[:8]
    _clone_runs(template, root, project, runs)
    settings = Settings(roots=[root], server_url=url, state_dir=root + "-state")
    with RequestCount() as rc, Runner(settings, sink=make_sink(settings, environ={})) as runner:
        t0 = time.perf_counter()
        rep = runner.run_pass()
        dt = time.perf_counter() - t0
    assert rep.ok and rep.runs_synced == runs, rep
    per_run = {k: v / runs for k, v in sorted(rc.counts.items())}
    with RequestCount() as again, Runner(settings, sink=make_sink(settings, environ={})) as runner:
        t1 = time.perf_counter()
        rep2 = runner.run_pass()
        dt2 = time.perf_counter() - t1
    assert rep2.runs_unchanged == runs, rep2
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in per_run.items())
    print(f"6. small runs: first pass over {runs:,} runs (workers {settings.workers}): {dt:.1f} s, "
          f"{sum(per_run.values()):.2f} requests per run ({kinds}); no-change pass {dt2:.2f} s, "
          f"{sum(again.counts.values())} requests")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=100_000, help="throughput run size per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rss-points", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--parallel", type=int, nargs="*", default=[2, 4], help="workers (and clients) to measure")
    ap.add_argument("--parallel-points", type=int, default=100_000, help="points per parallel measurement")
    ap.add_argument("--server-workers", type=int, default=4, help="MLflow server workers for part 4")
    ap.add_argument("--production", action="store_true", help="part 4 on PostgreSQL + S3 (mlflow_production)")
    ap.add_argument("--alone-runs", type=int, default=8)
    ap.add_argument("--alone-points", type=int, default=100_000)
    ap.add_argument("--alone-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--small-runs", type=int, default=2000)
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["throughput", "rss", "nochange", "parallel", "alone", "small"])
    ap.add_argument("--only", choices=["throughput", "rss", "nochange", "parallel", "alone", "small"],
                    help="run this part alone")
    a = ap.parse_args()
    if a.only:
        a.skip = [p for p in ("throughput", "rss", "nochange", "parallel", "alone", "small") if p != a.only]
    if a.alone_child:
        alone_child(a.tmp, a.alone_runs, a.alone_points, a.alone_child)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        if "alone" not in a.skip:
            alone(tmp, a)
        if "parallel" not in a.skip and a.parallel:
            parallel(tmp, a)
        if "nochange" not in a.skip:
            no_change(tmp, a.runs)
        if a.skip and set(a.skip) >= {"throughput", "rss", "small"}:
            return 0
        h = mlflow_server.start(os.path.join(tmp, "mlflow"))
        try:
            if "small" not in a.skip:
                small_runs(h.url, tmp, a.small_runs)
            if "throughput" not in a.skip:
                # Interleaved rounds, medians: the machine is shared and the database grows as we go,
                # so neither side may always go first.
                cs, gs = [], []
                for i in range(a.rounds):
                    if i % 2 == 0:
                        cs.append(ceiling(h.url, a.points))
                    gs.append(gateway_throughput(h.url, os.path.join(tmp, f"round{i}"), a.points))
                    if i % 2 == 1:
                        cs.append(ceiling(h.url, a.points))
                c, g = statistics.median(cs), statistics.median(gs)
                print(f"1. throughput ({a.points:,} points, 10 keys, median of {a.rounds} interleaved rounds): "
                      f"gateway {g:,.0f} points/s; server ceiling (plain log-batch x1000) {c:,.0f} points/s; "
                      f"ratio {g / c:.0%} (target >= 90 %)\n   rounds: gateway {[round(x) for x in gs]}, "
                      f"ceiling {[round(x) for x in cs]}")
            if "rss" not in a.skip:
                mb = rss(h.url, tmp, a.rss_points)
                print(f"2. peak RSS syncing {a.rss_points:,} points: {mb:.0f} MB (target <= 100 MB)")
        finally:
            mlflow_server.stop(h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
