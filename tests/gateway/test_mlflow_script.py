"""scripts/mlflow_server.py as docs/gateway.md shows it: start prints the URL, stop ends the server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from support import need

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.mlflow
def test_start_and_stop_from_the_command_line(tmp_path):
    try:
        import mlflow  # noqa: F401
    except ImportError:
        need(False, "mlflow is not installed (pip install -e '.[server]')")
    workdir = str(tmp_path / "server dir")
    script = os.path.join(REPO, "scripts", "mlflow_server.py")
    started = subprocess.run([sys.executable, script, "start", "--dir", workdir], capture_output=True,
                             text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip().splitlines()[-1]
    assert url.startswith("http://127.0.0.1:")
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            assert response.status == 200
        pid = json.load(open(os.path.join(workdir, "server.json")))["pid"]
    finally:
        stopped = subprocess.run([sys.executable, script, "stop", "--dir", workdir], capture_output=True,
                                 text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout
    assert state.strip() == "" or state.startswith("Z")  # gone, or a zombie waiting for init to reap it
