"""The sync-gateway CLI: exit statuses, status table, doctor, daemon and SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
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
    # Words, not a Python repr; and the workers a pass would use, with where that number came from.
    assert "[ok] auth: no credentials (anonymous) accepted" in out and "AuthSettings" not in out, out
    assert "workers: 4 run(s) synced at once (from the default)" in out, out


def test_help_prints_whole_sentences_without_rst_markup(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    text = " ".join(out.split())
    assert "``" not in out and ":data:" not in out
    assert "Sync runs to a tracking server exactly once" in text
    assert "(docs/airgap.md)." in text  # the description ends where its sentence ends, not at a line break
    assert "exit status of sync, export, import and verify: 0 everything done" in text
    assert "2 the configuration is invalid." in text


def test_workers_on_the_command_line_beats_the_config_and_status_shows_it(tmp_path, capsys):
    from sync_gateway.cli.commands import build_parser, workers_line
    from sync_gateway.settings import Settings

    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"roots": [str(tmp_path)], "state_dir": str(tmp_path / "state"),
                                   "server": {"kind": "mlflow", "url": "http://127.0.0.1:9"}, "workers": 3}))
    for cmd in (["sync", "--once"], ["daemon"], ["import"]):
        assert build_parser().parse_args(cmd + ["--workers", "7"]).workers == 7
    # main() passes --workers to the settings: an invalid value is refused with the config's rule (exit 2).
    assert main(["sync", "--once", "--config", str(cfg), "--workers", "0"]) == 2
    assert "workers must be an integer from 1" in capsys.readouterr().err
    s = Settings.resolve(str(cfg), environ={}, overrides={"workers": 7})
    assert workers_line(s) == "workers: 7 run(s) synced at once (from --workers)"
    assert workers_line(Settings.resolve(str(cfg), environ={})) == \
        "workers: 3 run(s) synced at once (from the config's workers)"
    assert workers_line(Settings.resolve(str(cfg), environ={"HPCSYNC_GATEWAY_WORKERS": "5"})) == \
        "workers: 3 run(s) synced at once (from the config's workers)"  # the config beats the environment
    capsys.readouterr()
    assert main(["status", "--config", str(cfg)]) == 0  # nothing synced yet: an empty table
    assert "workers: 3 run(s) synced at once (from the config's workers)" in capsys.readouterr().out


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


def test_auth_is_described_in_words_never_a_secret():
    from sync_gateway.settings import AuthSettings
    from sync_gateway.sinks._http import describe_auth

    assert describe_auth(AuthSettings()) == "no credentials (anonymous)"
    assert describe_auth(AuthSettings(token_file="/k/token")) == "the bearer token in /k/token"
    assert describe_auth(AuthSettings(token_env="TOK")) == "the bearer token in $TOK"
    assert describe_auth(AuthSettings(username="bob", password_env="PW")) == \
        "basic auth as 'bob' (password from $PW)"
