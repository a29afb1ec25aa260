"""Behaviour that needs a real process: finish at exit, storage failures, code capture, restore, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import hpc
from hpc import _format as fmt
from hpc.cli import main as hpc_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.slow  # each test runs a training script in a process of its own


def run_script(body: str, root: str, cwd: str = None, env: dict = None) -> subprocess.CompletedProcess:
    code = "import hpc, sys, os\n" + textwrap.dedent(body)
    environ = {**os.environ, "PYTHONPATH": REPO, "HPCSYNC_DIR": root, **(env or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd or REPO, env=environ, capture_output=True,
                          text=True, timeout=60)


def exit_doc(root: str, run_id: str) -> dict:
    return json.load(open(os.path.join(root, "p", run_id, fmt.EXIT)))


@pytest.mark.parametrize("body, code, reason", [
    ("run = hpc.init(project='p', id='x'); hpc.log({'a': 1})", 0, "finished"),
    ("run = hpc.init(project='p', id='x'); hpc.log({'a': 1}); raise ValueError('bad')", 1, "failed"),
    ("run = hpc.init(project='p', id='x'); sys.exit(3)", 3, "failed"),
    ("run = hpc.init(project='p', id='x'); sys.exit(0)", 0, "finished"),
    ("run = hpc.init(project='p', id='x'); raise KeyboardInterrupt", 130, "killed"),
])
def test_finish_at_exit_records_how_the_process_ended(tmp_path, body, code, reason):
    root = str(tmp_path)
    done = run_script(body, root)
    outcome = exit_doc(root, "x")
    assert (outcome["exit_code"], outcome["reason"]) == (code, reason), done.stderr
    if reason == "failed" and code == 1:
        log = open(os.path.join(root, "p", "x", fmt.OUTPUT)).read()
        assert "ValueError: bad" in log  # the traceback reached output.log too


def test_full_disk_warns_once_keeps_training_and_counts_dropped_rows(tmp_path):
    """A real ENOSPC: history.jsonl is a link to /dev/full, so every flush fails in the kernel."""
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is missing on this system")
    run_dir = tmp_path / "p" / "full"
    run_dir.mkdir(parents=True)
    os.symlink("/dev/full", run_dir / fmt.HISTORY)
    done = run_script("""
        run = hpc.init(project='p', id='full', resume='allow', settings={'flush_interval_s': 0.05})
        import time
        for i in range(200):
            run.log({'a': i})
            time.sleep(0.002)
        print('training survived')
    """, str(tmp_path))
    assert done.returncode == 0 and "training survived" in done.stdout, done.stderr
    assert done.stderr.count("the disk is full") == 1
    outcome = exit_doc(str(tmp_path), "full")
    assert outcome["reason"] == "finished" and outcome["dropped_rows"] == 200


def test_vanished_run_directory_warns_and_training_continues(tmp_path):
    done = run_script("""
        import shutil, time
        run = hpc.init(project='p', id='gone', settings={'flush_interval_s': 0.05, 'heartbeat_interval_s': 0.05})
        run.log({'a': 1})
        time.sleep(0.3)
        for _ in range(100):  # the writer thread may create a file while rmtree empties the directory
            try:
                shutil.rmtree(run.dir)
                break
            except OSError:
                time.sleep(0.01)
        for i in range(50):
            run.log({'a': i})
            time.sleep(0.01)
        run.finish()
        print('training survived')
    """, str(tmp_path))
    assert done.returncode == 0 and "training survived" in done.stdout, done.stderr
    assert "vanished" in done.stderr or "No such file" in done.stderr
    assert not os.path.exists(tmp_path / "p" / "gone" / fmt.HISTORY)


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"})


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("lr = 0.1\n")
    (path / "secret.key").write_text("k1\n")
    _git(path, "add", ".")
    _git(path, "commit", "-qm", "first")
    _git(path, "remote", "add", "origin", "git@example.org:lab/proj.git")
    (path / "train.py").write_text("lr = 0.2\n")
    (path / "secret.key").write_text("k2\n")
    return path


def test_code_capture_and_restore(tmp_path, repo):
    root = str(tmp_path / "runs")
    done = run_script("hpc.init(project='p', id='code').log({'a': 1})", root, cwd=str(repo),
                      env={"HPCSYNC_IGNORE_GLOBS": "*.key"})
    assert done.returncode == 0, done.stderr
    meta = json.load(open(os.path.join(root, "p", "code", fmt.RUN_JSON)))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert meta["git"]["commit"] == head and meta["git"]["branch"] == "main"
    assert meta["git"]["remote"] == "git@example.org:lab/proj.git" and meta["git"]["dirty"] is True
    patch = open(os.path.join(root, "p", "code", "code", "diff.patch")).read()
    assert "+lr = 0.2" in patch and "secret.key" not in patch

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert hpc_main(["restore", "code", "--root", root, "--repo", str(clone)]) == 0
    assert (clone / "train.py").read_text() == "lr = 0.2\n"
    assert (clone / "secret.key").read_text() == "k1\n"
    (clone / "train.py").write_text("dirty\n")
    assert hpc_main(["restore", "code", "--root", root, "--repo", str(clone)]) == 2  # refuses a dirty tree


def test_disable_code(tmp_path, repo):
    root = str(tmp_path / "runs")
    run_script("hpc.init(project='p', id='nocode')", root, cwd=str(repo), env={"HPCSYNC_DISABLE_CODE": "true"})
    assert json.load(open(os.path.join(root, "p", "nocode", fmt.RUN_JSON)))["git"] is None
    assert not os.path.exists(os.path.join(root, "p", "nocode", "code"))


def test_cli_runs_ls_and_show(root, capsys, tmp_path):
    run = hpc.init(project="p", dir=root, name="alpha", group="g", config={"lr": 0.1})
    for i in range(30):
        run.log({"loss": 1 / (i + 1), "acc": i / 30})
    run.finish()
    killed = run_script("""
        import signal, time
        run = hpc.init(project='q', id='crash')
        run.log({'a': 1})
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    """, root)
    assert killed.returncode == -9
    bad = os.path.join(root, "p", "newer")
    os.makedirs(bad)
    json.dump({"format_version": "9.0", "id": "newer"}, open(os.path.join(bad, fmt.RUN_JSON), "w"))
    capsys.readouterr()
    assert hpc_main(["runs", "ls", "--root", root, "--stale-after-s", "0"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].split() == ["ID", "NAME", "PROJECT", "GROUP", "STATE", "STEPS", "LAST", "UPDATE"]
    assert any(line.split()[1:6] == ["alpha", "p", "g", "finished", "30"] for line in lines)
    assert any(line.split()[0] == "crash" and "crashed" in line.split() for line in lines)
    assert "version 9.0 is not supported" in err
    assert hpc_main(["runs", "show", "alpha", "--root", root, "--metric", "loss"]) == 0
    out = capsys.readouterr().out
    assert "loss: 30 points, steps 0..29" in out and '"lr": 0.1' in out and "▁" in out
    assert hpc_main(["runs", "show", "nope", "--root", root]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
