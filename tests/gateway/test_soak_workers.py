"""Issue 16 soak: many runs, some of them live (appended to while the gateway syncs continuously with
``workers: 4``), then the server is compared to disk: every point exactly once, params, final states,
one server run per run.

`make test`: 60 runs (12 live) for 25 s. `make soak` (HPCSYNC_SOAK=1): 1,000 runs (200 live) for 10 minutes.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import replace

import pytest
from _runwriter import RunWriter, read_stream
from conftest import history, make_runner, run_info, server_run, sink_for
from support import soak_count

RUNS = soak_count(60, 1000)
LIVE = soak_count(12, 200)
DURATION_S = soak_count(25, 600)
ROWS_DONE = 40        # rows of each run that ended before the soak (2 metrics per row)
ROWS_PER_APPEND = 5


def _server_runs(sink, project):
    eid = sink.experiment_id(project)
    n, token = 0, None
    while True:
        body = {"experiment_ids": [eid], "max_results": 1000}
        if token:
            body["page_token"] = token
        res = sink._call("POST", "/runs/search", body)
        n += len(res.get("runs") or [])
        token = res.get("next_page_token")
        if not token:
            return n


@pytest.mark.faults
def test_soak_many_runs_some_live_server_equals_disk(settings, root, project):
    s = replace(settings, workers=4)
    done = []
    for i in range(RUNS - LIVE):
        w = RunWriter(root, project, f"done{i:04d}", config={"lr": 0.1, "i": i})
        w.log_many({"x": float(j), "y": j / 3.0} for j in range(ROWS_DONE))
        w.exit(0)
        done.append(w)
    live = [RunWriter(root, project, f"live{i:04d}", config={"lr": 0.2, "i": i}) for i in range(LIVE)]
    stop = threading.Event()
    # About 1,000 points/s in all whatever LIVE is: within what one SQLite MLflow worker takes.
    cycle_s = max(0.2, LIVE * ROWS_PER_APPEND * 2 / 1000)

    def write() -> None:
        while not stop.is_set():
            for w in live:
                n = w.seq["history.jsonl"]
                w.log_many({"x": float(n + j), "y": (n + j) / 3.0} for j in range(ROWS_PER_APPEND))
                w.heartbeat()
            stop.wait(cycle_s)
        for w in live:
            w.exit(0)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    reports = []
    end = time.monotonic() + DURATION_S
    with make_runner(s) as runner:
        try:
            while time.monotonic() < end:  # the daemon's loop, with a short interval
                reports.append(runner.run_pass())
                time.sleep(0.2)
        finally:
            stop.set()
            writer.join(60)
        for _ in range(20):  # the live runs ended: catch up until a pass finds nothing to do
            rep = runner.run_pass()
            reports.append(rep)
            if rep.ok and rep.runs_unchanged == RUNS:
                break
    bad = [r for r in reports if r.errors or r.aborted or r.roots_skipped or r.quarantined]
    assert not bad, bad[:3]
    assert reports[-1].ok and reports[-1].runs_unchanged == RUNS, reports[-1]
    assert len(reports) > 3  # several passes ran while the live runs grew

    sink = sink_for(s)
    assert _server_runs(sink, project) == RUNS  # one server run per run
    for w in done + live:
        name = os.path.basename(w.dir)
        run = server_run(sink, project, name)
        disk = read_stream(w.path("history.jsonl"))
        for key in ("x", "y"):
            want = sorted((r["step"], r["ts_ms"], float(r["values"][key])) for r in disk)
            assert history(sink, run, key) == want, (name, key)  # every point exactly once
        info = run_info(sink, run)
        params = {p["key"]: p["value"] for p in info["data"].get("params", [])}
        assert params == {"lr": str(0.2 if name.startswith("live") else 0.1), "i": str(int(name[4:]))}, name
        assert info["info"]["status"] == "FINISHED", name
    assert sum(len(read_stream(w.path("history.jsonl"))) for w in live) > LIVE * ROWS_PER_APPEND * 3
