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
from _ids import key as run_key
from _kills import KillTimer
from _runwriter import RunWriter, read_stream
from conftest import REPO, assert_synced_once, disk_points, history, make_runner, server_run, sink_for
from support import soak_count

# Read at import: tests/conftest.py clears HPCSYNC_* variables before each test.
SEED = int(os.environ.get("HPCSYNC_SEED") or random.randrange(1 << 30))
KILLS = soak_count(8, 50)
ROWS = soak_count(20_000, 200_000)  # two metrics per row


@pytest.mark.faults
def test_kill_minus_nine_loop_exactly_once(settings, root, project, tmp_path):
    rng = random.Random(SEED)
    timer = KillTimer(rng)
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
            w.log_many({"loss": 1.0 / (written + i + 1), "acc": (written + i) % 97 / 97.0} for i in range(n))
            written += n
            w.heartbeat()
            w.save("ckpt.txt", str(written).encode())
        if attempts % 5 == 0:
            shutil.rmtree(settings.state_path, ignore_errors=True)  # state lost: re-find the run by tag
        proc = subprocess.Popen([sys.executable, "-m", "sync_gateway.cli", "-q", "sync", "--once",
                                 "--config", str(cfg)], env=env, cwd=REPO)
        kills += timer.wait_or_kill([proc])
    assert kills >= KILLS, f"only {kills} kills landed during a sync in {attempts} attempts {seed_note}"
    if written < ROWS:
        w.log_many({"loss": 1.0 / (written + i + 1), "acc": (written + i) % 97 / 97.0}
                    for i in range(ROWS - written))
    w.exit(0)
    done = subprocess.run([sys.executable, "-m", "sync_gateway.cli", "-q", "sync", "--once", "--config",
                           str(cfg)], env=env, cwd=REPO, timeout=1200)
    assert done.returncode == 0, seed_note

    sink = sink_for(settings)
    recs = read_stream(w.path("history.jsonl"))
    assert len(recs) == ROWS
    assert_synced_once(sink, project, server_run(sink, project, "big"), disk_points(recs, ("loss", "acc")), seed_note)


MIXED_KILLS = soak_count(6, 40)
MIXED_ROWS = soak_count(6_000, 30_000)  # per growing run, one metric per row (a racing gateway re-sends it)


@pytest.mark.faults
def test_kill_loop_with_mixed_faults_exactly_once_for_points_and_runs(settings, root, project, tmp_path):
    """SIGKILLs at random moments, through a proxy that randomly answers 503, loses answers (the server did
    the work) and drops connections, with hostile neighbour runs, a second gateway with its own state
    directory racing the first, and state directories deleted: afterwards every run holds exactly the
    points on disk, in exactly one active MLflow run, and no gateway process crashed."""
    from _faultproxy import FaultProxy

    rng = random.Random(SEED)

    timer = KillTimer(rng)
    seed_note = f"(HPCSYNC_SEED={SEED} replays the kill times and faults)"
    growing = [RunWriter(root, project, f"grow{i}") for i in range(3)]
    hostile = RunWriter(root, project, "hostile")
    hostile.raw("history.jsonl", b'{"seq":0,"step":0,"ts_ms":1,"values":{"x":1' + b"0" * 400 + b'}}\n')
    with open(hostile.path("config.json"), "w") as f:
        f.write('{"a":' * 3000 + "1" + "}" * 3000)
    hostile.log({"y": 1.0}, ts_ms=5)
    hostile.exit(0)
    env = dict(os.environ, PYTHONPATH=REPO)
    attempts = kills = crashes = 0
    written = 0
    chunk = MIXED_ROWS // (MIXED_KILLS + 1)
    with FaultProxy(settings.server_url, match="/api/", chaos=(random.Random(SEED + 1), 0.15)) as proxy:
        cfgs = []
        for name in ("a", "b"):
            cfg = tmp_path / f"{name}.yaml"
            cfg.write_text(yaml.safe_dump({"roots": [root], "server": {"kind": "mlflow", "url": proxy.url},
                                           "state_dir": str(tmp_path / f"state-{name}"), "retries": 3}))
            cfgs.append(cfg)
        while kills < MIXED_KILLS and attempts < MIXED_KILLS * 6:
            attempts += 1
            if written < MIXED_ROWS:
                n = min(chunk, MIXED_ROWS - written)
                for w in growing:
                    w.log_many(({"m": float(written + i)} for i in range(n)), ts0_ms=1_764_150_000_000)
                    w.heartbeat()
                written += n
            if attempts % 5 == 0:
                shutil.rmtree(tmp_path / "state-a", ignore_errors=True)
            procs = [subprocess.Popen([sys.executable, "-m", "sync_gateway.cli", "-q", "sync", "--once", "--config",
                                       str(cfg)], env=env, cwd=REPO, stderr=subprocess.PIPE)
                     for cfg in (cfgs if attempts % 2 else cfgs[:1])]  # every other attempt: two gateways race
            kills += timer.wait_or_kill(procs)
            for p in procs:
                _, err = p.communicate()
                if p.returncode not in (0, 1, -signal.SIGKILL) or b"Traceback" in err:
                    crashes += 1
                    print(err.decode(errors="replace")[-3000:])
        faults = (proxy.failed, proxy.lost, proxy.dropped)
    for w in growing:
        if written < MIXED_ROWS:
            w.log_many(({"m": float(written + i)} for i in range(MIXED_ROWS - written)), ts0_ms=1_764_150_000_000)
        w.exit(0)
    # The last passes, fault-free; a run still backing off after a fault is due by then (an hour later).
    for cfg_state in ("state-a", "state-b"):
        s = type(settings)(roots=[root], server_url=settings.server_url, state_dir=str(tmp_path / cfg_state),
                           retries=3)
        with make_runner(s, clock=lambda: time.time() + 3600) as runner:
            rep = runner.run_pass()
        assert not rep.aborted and set(rep.errors) <= set(), f"{rep} {seed_note}"
    assert crashes == 0, seed_note
    sink = sink_for(settings)
    eid = sink.experiment_id(project)
    lost = duplicated = extra_runs = 0
    for w in growing + [hostile]:
        sync_id = run_key(os.path.dirname(os.path.dirname(w.dir)), project, os.path.basename(w.dir))
        active = sink._call("POST", "/runs/search", {"experiment_ids": [eid], "max_results": 100,
                                                     "filter": f"tags.`hpc.run_id` = '{sync_id}'"})["runs"]
        extra_runs += len(active) - 1
    for w in growing:
        run = server_run(sink, project, os.path.basename(w.dir))
        want = sorted((r["step"], r["ts_ms"], float(r["values"]["m"])) for r in read_stream(w.path("history.jsonl")))
        got = history(sink, run, "m")
        lost += len(set(want) - set(got))
        duplicated += len(got) - len(set(got))
    print(f"\nmixed faults: {attempts} gateway starts, {kills} SIGKILLs, proxy faults (503, lost answers, "
          f"dropped) = {faults}, lost {lost}, duplicated points {duplicated}, duplicated runs {extra_runs}, "
          f"crashes {crashes} {seed_note}")
    assert (lost, duplicated, extra_runs) == (0, 0, 0), seed_note
    assert kills >= MIXED_KILLS, seed_note
