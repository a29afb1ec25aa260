"""Exactly once to W&B under SIGKILL: a gateway killed at random moments while a run grows, restarted each
time (sometimes with its state directory deleted), never skips a file_stream offset and never re-uses one for
other content; the file W&B builds from the requests (lines placed by offset) is exactly the rows on disk.

Checked on the wire (the recording proxy), because OpenWandb appends every line it receives instead of placing
it by offset. `make test`: 4 kills, 6,000 rows. `make soak` (HPCSYNC_SOAK=1): 30 kills, 120,000 rows.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import _wandbsink
import pytest
import yaml
from _faultproxy import FaultProxy
from _ids import wandb_name
from _kills import KillTimer
from _runwriter import RunWriter, read_stream
from _wandbsink import API_KEY, ENTITY, file_streams, replay, stored
from conftest import REPO
from support import soak_count

openwandb = _wandbsink.openwandb  # the fixture

SEED = int(os.environ.get("HPCSYNC_SEED") or random.randrange(1 << 30))
KILLS = soak_count(4, 30)
ROWS = soak_count(6_000, 120_000)


@pytest.mark.faults
@pytest.mark.wandb_server
def test_kill_minus_nine_loop_exactly_once_on_the_wire(openwandb, root, project, tmp_path):
    rng = random.Random(SEED)
    timer = KillTimer(rng)
    note = f"(HPCSYNC_SEED={SEED} replays the kill times)"
    run_id = f"{project}-big"
    key_file = tmp_path / "wandb.key"
    key_file.write_text(API_KEY)
    key_file.chmod(0o600)
    state = tmp_path / "state"
    w = RunWriter(root, project, run_id, config={"lr": 0.1})
    chunk = ROWS // (KILLS + 1)
    env = dict(os.environ, PYTHONPATH=REPO)
    kills = attempts = written = 0
    with FaultProxy(openwandb.url, match="/nothing", record=True, forwarded_host=True) as proxy:
        cfg = tmp_path / "gateway.yaml"
        cfg.write_text(yaml.safe_dump({
            "roots": [root], "state_dir": str(state), "retries": 3,
            "server": {"kind": "wandb", "url": proxy.url, "entity": ENTITY, "api_key_file": str(key_file),
                       "run_requests_per_s": 20}}))
        while kills < KILLS and attempts < KILLS * 10:
            attempts += 1
            if written < ROWS:
                n = min(chunk, ROWS - written)
                w.log_many({"loss": 1.0 / (written + i + 1), "acc": (written + i) % 97 / 97.0} for i in range(n))
                written += n
                w.heartbeat()
                w.raw("output.log", f"rows {written}\n".encode())
            if attempts % 3 == 0:
                shutil.rmtree(state, ignore_errors=True)  # state lost: the same offsets from 0, same content
            proc = subprocess.Popen([sys.executable, "-m", "sync_gateway.cli", "-q", "sync", "--once",
                                     "--config", str(cfg)], env=env, cwd=REPO)
            kills += timer.wait_or_kill([proc])  # spread over the start-up and the pass
        assert kills >= KILLS, f"only {kills} kills landed during a sync in {attempts} attempts {note}"
        if written < ROWS:
            w.log_many({"loss": 1.0 / (written + i + 1), "acc": (written + i) % 97 / 97.0}
                       for i in range(ROWS - written))
        w.raw("output.log", b"done\n")
        w.exit(0)
        out = subprocess.run([sys.executable, "-m", "sync_gateway.cli", "-q", "sync", "--once", "--config",
                              str(cfg)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        recs = list(proxy.records)
    disk = read_stream(os.path.join(w.dir, "history.jsonl"))
    # replay asserts no skip, no re-use
    hist = [json.loads(x) for x in replay(recs, wandb_name(root, run_id), "wandb-history.jsonl")]
    assert len(hist) == len(disk), f"{len(hist)} history lines on W&B, {len(disk)} rows on disk {note}"
    assert [(h["_step"], h["loss"]) for h in hist] == [(r["step"], r["values"]["loss"]) for r in disk], note
    console = [x.split(" ", 1)[1] for x in replay(recs, wandb_name(root, run_id), "output.log")]
    with open(os.path.join(w.dir, "output.log")) as f:
        assert console == f.read().splitlines(), note
    final = file_streams(recs)[-1][1]
    assert final.get("complete") is True and final.get("exitcode") == 0
    assert stored(openwandb).runs_in(project) == [wandb_name(root, run_id)], "one W&B run, whatever was killed or lost"
