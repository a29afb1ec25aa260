"""The sync-gateway CLI: exit statuses, status table, doctor, daemon and SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml
from _ids import key as run_key
from _runwriter import RunWriter
from conftest import REPO, history, server_run, sink_for

from sync_gateway.cli.commands import main


def _config(tmp_path, settings, **extra):
    cfg = tmp_path / "gw.yaml"
    doc = {"roots": settings.roots, "server": {"kind": "mlflow", "url": settings.server_url},
           "state_dir": settings.state_dir, "retries": 2}
    doc.update(extra)
    cfg.write_text(yaml.safe_dump(doc))
    return str(cfg)


def test_sync_once_exit_status_and_status_table(settings, root, project, tmp_path, capsys):
    cfg = _config(tmp_path, settings)
    w = RunWriter(root, project, "ok")
    w.log_many({"x": float(i)} for i in range(10))
    w.heartbeat()
    assert main(["sync", "--once", "--config", cfg]) == 0
    RunWriter(root, project, "future", version="9.1").exit(0)
    assert main(["sync", "--once", "--config", cfg]) == 1
    w.log_many({"x": float(i)} for i in range(10, 15))
    capsys.readouterr()
    assert main(["status", "--config", cfg]) == 1  # one run has an error
    out = capsys.readouterr().out
    assert run_key(root, project, "ok") in out and "active" in out and "10 / 15" in out
    assert run_key(root, project, "future") in out and "9.1" in out


def test_config_error_exit_2_names_valid_keys(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("serverr: {}\n")
    assert main(["sync", "--once", "--config", str(cfg)]) == 2
    assert "valid keys are: roots, server" in capsys.readouterr().err


def test_doctor_ok_on_plain_http(settings, tmp_path, capsys):
    assert main(["doctor", "--config", _config(tmp_path, settings)]) == 0
    out = capsys.readouterr().out
    for check in ("[ok] config", "[ok] root", "[ok] dns", "[ok] tcp", "[ok] server: MLflow 3.", "[ok] auth"):
        assert check in out, out


def test_daemon_syncs_and_sigterm_finishes_the_batch(settings, root, project, tmp_path):
    cfg = _config(tmp_path, settings)
    w = RunWriter(root, project, "d")
    w.log_many({"x": float(i)} for i in range(60_000))
    w.exit(0)
    proc = subprocess.Popen([sys.executable, "-m", "sync_gateway.cli", "-q", "daemon", "--interval-s", "1",
                             "--config", cfg], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    state = os.path.join(settings.state_dir, "runs", run_key(root, project, "d").split("/")[0], project, "d.json")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not os.path.exists(state):
        time.sleep(0.1)
    while time.monotonic() < deadline:  # wait for the first acknowledged batch
        try:
            with open(state) as f:
                if json.load(f)["cursors"].get("history", {}).get("offset", 0) > 0:
                    break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    with open(state) as f:
        cur = json.load(f)["cursors"]["history"]
    with open(w.path("history.jsonl"), "rb") as f:
        data = f.read()
    assert cur["offset"] < len(data), "SIGTERM should stop the pass early, not after the whole run"
    assert data[cur["offset"] - 1:cur["offset"]] == b"\n"
    sink = sink_for(settings)
    run = server_run(sink, project, "d")
    assert len(history(sink, run, "x")) >= cur["records"]  # everything behind the cursor is on the server
    # A later pass finishes the job exactly.
    assert main(["-q", "sync", "--once", "--config", cfg]) == 0
    assert [v for _, _, v in history(sink, run, "x")] == [float(i) for i in range(60_000)]
