"""Exactly once under SIGKILL: a gateway killed at random moments while a large run grows, restarted each
time (sometimes with its state directory deleted), leaves the server with exactly the points on disk.

`make test`: 8 kills and a run of 40,000 points. `make soak` (HPCSYNC_SOAK=1): 50 kills, 400,000 points.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from _runwriter import RunWriter, read_stream
from conftest import REPO, history, server_run, sink_for
from support import soak_count

# Read at import: tests/conftest.py clears HPCSYNC_* variables before each test.
SEED = int(os.environ.get("HPCSYNC_SEED") or random.randrange(1 << 30))
KILLS = soak_count(8, 50)
ROWS = soak_count(20_000, 200_000)  # two metrics per row


@pytest.mark.faults
def test_kill_minus_nine_loop_exactly_once(settings, root, project, tmp_path):
    rng = random.Random(SEED)
    seed_note = f"(HPCSYNC_SEED={SEED} replays the kill times)"
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({"roots": [root], "server": {"kind": "mlflow", "url": settings.server_url},
                                   "state_dir": settings.state_dir, "retries": 3}))
    w = RunWriter(root, project, "big", config={"lr": 0.1})
    w.save("ckpt.txt", b"0")
    chunk = ROWS // (KILLS + 1)
    env = dict(os.environ, PYTHONPATH=REPO)
    kills = attempts = 0
    written = 0
    while kills < KILLS and attempts < KILLS * 6:
        attempts += 1
        if written < ROWS:  # the run keeps growing while the gateway is being killed
            n = min(chunk, ROWS - written)
            w.log_many(({"loss": 1.0 / (written + i + 1), "acc": (written + i) % 97 / 97.0} for i in range(n)))
            written += n
            w.heartbeat()
            w.save("ckpt.txt", str(written).encode())
        if attempts % 5 == 0:
            shutil.rmtree(settings.state_path, ignore_errors=True)  # state lost: re-find the run by tag
        proc = subprocess.Popen([sys.executable, "-m", "sync_gateway.cli", "-q", "sync", "--once",
                                 "--config", str(cfg)], env=env, cwd=REPO)
        time.sleep(rng.uniform(0.4, 2.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= KILLS, f"only {kills} kills landed during a sync in {attempts} attempts {seed_note}"
    if written < ROWS:
        w.log_many(({"loss": 1.0 / (written + i + 1), "acc": (written + i) % 97 / 97.0}
                    for i in range(ROWS - written)))
    w.exit(0)
    done = subprocess.run([sys.executable, "-m", "sync_gateway.cli", "-q", "sync", "--once", "--config",
                           str(cfg)], env=env, cwd=REPO, timeout=1200)
    assert done.returncode == 0, seed_note

    sink = sink_for(settings)
    eid = sink.experiment_id(project)
    res = sink._call("POST", "/runs/search", {"experiment_ids": [eid]})
    assert len(res["runs"]) == 1, "a restarted gateway created a second MLflow run"
    run = server_run(sink, project, "big")
    recs = read_stream(w.path("history.jsonl"))
    assert len(recs) == ROWS
    for key in ("loss", "acc"):
        want = sorted((r["step"], r["ts_ms"], float(r["values"][key])) for r in recs)
        got = history(sink, run, key)
        assert len(got) == len(want), f"{key}: {len(got)} points on the server, {len(want)} on disk {seed_note}"
        assert got == want
    info = sink._call("GET", "/runs/get", params={"run_id": run.run_id})["run"]
    assert info["info"]["status"] == "FINISHED"
