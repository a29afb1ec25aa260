"""`hpc run start` / `hpc log` / `hpc run finish`: a run recorded by a shell script."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from hpc._reader import read_history
from hpc.cli import main as hpc_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hpc_on_path(tmp_path) -> str:
    """The installed `hpc` script next to this Python, or a shim running the same module."""
    bindir = os.path.dirname(sys.executable)
    if shutil.which("hpc", path=bindir):
        return bindir
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "hpc").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hpc "$@"\n')
    (shim / "hpc").chmod(0o755)
    return str(shim)


def test_the_shell_example_records_a_complete_run(tmp_path):
    bindir = hpc_on_path(tmp_path)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "HPCSYNC_DIR": str(tmp_path),
           "PYTHONPATH": REPO, "PROJECT": "it's a \"test\""}
    bad = subprocess.run(["bash", os.path.join(REPO, "examples", "shell_run.sh")], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "not usable as a directory name" in bad.stderr  # hostile project name
    env["PROJECT"] = "shell"
    done = subprocess.run(["bash", os.path.join(REPO, "examples", "shell_run.sh")], env=env,
                          capture_output=True, text=True, check=True)
    run_dir = done.stdout.strip().splitlines()[-1]
    records = list(read_history(run_dir))
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["values"]["iteration"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["values"]["residual"] == pytest.approx(1e-5)
    assert json.load(open(os.path.join(run_dir, "config.json"))) == {"solver": "cg", "tolerance": 1e-8}
    outcome = json.load(open(os.path.join(run_dir, "exit.json")))
    assert outcome["reason"] == "finished" and outcome["history_records"] == 5


def test_shell_values_steps_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HPCSYNC_DIR", str(tmp_path))
    assert hpc_main(["run", "start", "--project", "p", "--id", "s1"]) == 0
    run_dir = capsys.readouterr().out.strip()
    monkeypatch.setenv("HPCSYNC_RUN_DIR", run_dir)
    assert hpc_main(["log", "a=1", "b=2.5", "c=nan", "d=-inf", "e=true", "f=text", "g=1e3"]) == 0
    assert hpc_main(["log", "--step", "10", "a=2"]) == 0
    assert hpc_main(["log", "--step", "10", "a=3"]) == 2  # not above the last step
    assert hpc_main(["log", "novalue"]) == 2
    assert hpc_main(["log", "=1"]) == 2
    err = capsys.readouterr().err
    assert "not above the run's last step 10" in err and "is not KEY=VALUE" in err
    (first, second) = list(read_history(run_dir))
    v = first["values"]
    assert (v["a"], v["b"], v["d"], v["e"], v["f"], v["g"]) == (1, 2.5, -math.inf, True, "text", 1000.0)
    assert math.isnan(v["c"]) and second["step"] == 10
    assert hpc_main(["run", "finish", "--exit-code", "4"]) == 0
    assert json.load(open(os.path.join(run_dir, "exit.json")))["reason"] == "failed"
    assert hpc_main(["log", "a=5"]) == 2
    assert "is finished" in capsys.readouterr().err
    monkeypatch.delenv("HPCSYNC_RUN_DIR")
    assert hpc_main(["log", "a=1"]) == 2
    assert "pass --run DIR or set HPCSYNC_RUN_DIR" in capsys.readouterr().err
