"""End to end: syncing over SFTP gives exactly what a local sync gives, on a real MLflow server.

The same run directories are synced twice into one server: once from a local root (project ``L...``) and
once over SFTP from an identical copy (project ``R...``: only the project directory's name and run.json's
``project`` differ). Every file keeps the same whole-second mtime in both copies, because SFTP v3 carries
whole seconds only and the gateway stamps summary metrics with a document's mtime. Then everything the
server holds for each run (status, params, tags, every metric history, every artifact) must be equal.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from typing import Any, Dict

import pytest
from _runs import append, record, write_document, write_run
from support import need

from sync_gateway.engine.runner import Runner, make_sink
from sync_gateway.readers.hpc.discovery import discover_hpc
from sync_gateway.settings import Settings
from sync_gateway.sinks.mlflow._runs import MlflowRun
from sync_gateway.sources import open_source
from sync_gateway.sources.local import LocalSource
from sync_gateway.sources.sftp.source import SftpSource

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    need(importlib.util.find_spec("mlflow") is not None,
         "mlflow is not installed: pip install -e '.[server]' (or scripts/ci/install-gateway.sh)")
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import mlflow_server

    handle = mlflow_server.start(str(tmp_path_factory.mktemp("mlflow")))
    try:
        yield handle.url
    finally:
        mlflow_server.stop(handle)


def _whole_seconds(tree: str, when_s: int) -> None:
    for folder, _, files in os.walk(tree):
        for name in files:
            os.utime(os.path.join(folder, name), ns=(when_s * 10**9, when_s * 10**9))


def _mirror(local_root: str, remote_root: str, local_project: str, remote_project: str) -> None:
    """remote_root/remote_project := local_root/local_project, with the project renamed in run.json."""
    src, dst = os.path.join(local_root, local_project), os.path.join(remote_root, remote_project)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    for run_id in os.listdir(dst):
        path = os.path.join(dst, run_id, "run.json")
        meta = json.loads(open(path, "rb").read())
        meta["project"] = remote_project
        st = os.stat(path)
        write_document(path, meta)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _server_view(sink, project: str, run_id: str) -> Dict[str, Any]:
    """Everything the server holds for one run, with the project name replaced by ``P``."""
    # The run's sync id is <root id>/<project>/<run_id> (docs/gateway.md, "Exactly once"); the local and the
    # ssh:// root have two ids, so the view leaves the root id out.
    eid = sink.experiment_id(project)
    found = sink._call("POST", "/runs/search", {"experiment_ids": [eid], "max_results": 1000,
                                                "filter": f"tags.`hpc.run_id` LIKE '%/{project}/{run_id}'"})
    ids = [r["info"]["run_id"] for r in found.get("runs") or []
           if [t["value"] for t in r["data"]["tags"] if t["key"] == "hpc.run_id"][0].count("/") == 2
           and ":" not in [t["value"] for t in r["data"]["tags"] if t["key"] == "hpc.run_id"][0]]
    assert len(ids) == 1, f"{project}/{run_id}: {len(ids)} runs on the server, not 1"
    info = sink._call("GET", "/runs/get", params={"run_id": ids[0]})["run"]
    run = MlflowRun(ids[0], eid, info["info"].get("artifact_uri", ""))
    tags = {t["key"]: t["value"].replace(project, "P") for t in info["data"].get("tags", [])
            if t["key"] not in ("mlflow.parentRunId",)}
    tags["hpc.run_id"] = "R/" + tags["hpc.run_id"].split("/", 1)[1]
    parent = next((t["value"] for t in info["data"].get("tags", []) if t["key"] == "mlflow.parentRunId"), None)
    metrics = {}
    for m in info["data"].get("metrics", []):
        metrics[m["key"]] = sorted((int(p.get("step", 0)), int(p["timestamp"]), str(p["value"]))
                                   for p in sink.get_history(run, m["key"]))
    artifacts = {}
    pending = [""]
    while pending:
        path = pending.pop()
        listing = sink._call("GET", "/artifacts/list", params={"run_id": run.run_id, "path": path})
        for f in listing.get("files", []):
            if f.get("is_dir"):
                pending.append(f["path"])
                continue
            rel = run.artifact_uri[len("mlflow-artifacts:/"):].lstrip("/")
            r = sink.http.request("GET", f"/api/2.0/mlflow-artifacts/artifacts/{rel}/{f['path']}")
            artifacts[f["path"]] = r.content.replace(project.encode(), b"P")
    return {"status": info["info"]["status"], "params": {p["key"]: p["value"] for p in info["data"].get("params", [])},
            "tags": tags, "metrics": metrics, "artifacts": artifacts, "has_parent": parent is not None}


def _trees(tmp_path, done_rows: int = 3000, pad_bytes: int = 0):
    """The same runs (finished, failed, active, a group) in a local root and, renamed, in a remote one."""
    tag = uuid.uuid4().hex[:8]
    lp, rp = f"L{tag}", f"R{tag}"
    local_root, remote_root = str(tmp_path / "local"), str(tmp_path / "remote")
    os.makedirs(remote_root)
    write_run(local_root, lp, "done", history_rows=done_rows, system_rows=50, pad_bytes=pad_bytes,
              saved_files={"ckpt/model.pt": os.urandom(200_000), "notes.txt": b"n"})
    write_run(local_root, lp, "failed", history_rows=10, exit_code=3)
    write_run(local_root, lp, "active", history_rows=500, finished=False)
    for rank in range(2):
        write_run(local_root, lp, f"rank{rank}", history_rows=20, group="train-1")
    now_s = int(time.time())
    _whole_seconds(os.path.join(local_root, lp), now_s)
    _mirror(local_root, remote_root, lp, rp)
    return local_root, remote_root, lp, rp, now_s


def _assert_same_on_server(sink, lp: str, rp: str) -> None:
    for run_id in ("done", "failed", "active", "rank0", "rank1"):
        local_view, remote_view = _server_view(sink, lp, run_id), _server_view(sink, rp, run_id)
        assert remote_view == local_view, run_id


def test_sync_over_sftp_equals_local_sync(sshd, mlflow_url, tmp_path, no_agent, monkeypatch):
    local_root, remote_root, lp, rp, now_s = _trees(tmp_path)
    settings = Settings(roots=[], server_url=mlflow_url, state_dir=str(tmp_path / "state"), retries=3)
    sink = make_sink(settings, environ={}, backoff_factor=0.05)
    sftp = SftpSource(sshd.url(remote_root), known_hosts=sshd.known_hosts, identity_file=sshd.identity_file,
                      ssh_config=os.devnull)
    local = LocalSource(local_root)
    with Runner(settings, sink=sink, sources=[local, sftp]) as runner:
        report = runner.run_pass()
        assert report.ok, report
        assert report.runs_synced == 10

        # the active run goes on (a torn tail included), identically in both roots; a second pass
        for root, project in ((local_root, lp), (remote_root, rp)):
            path = os.path.join(root, project, "active", "history.jsonl")
            append(path, b"".join(record(i, i, loss=0.25) for i in range(500, 700)) + b'{"seq": 700, "st')
            write_document(os.path.join(root, project, "active", "summary.json"),
                           {"values": {"loss": 0.25}, "set_by_hand": [], "policies": {}})
            _whole_seconds(os.path.join(root, project, "active"), now_s + 1)
        report = runner.run_pass()
        assert report.ok, report
        assert sftp.connects == 2   # one connection per pass

    _assert_same_on_server(sink, lp, rp)
    done = _server_view(sink, lp, "done")
    assert len(done["metrics"]["loss"]) == 3000 and done["status"] == "FINISHED"
    assert len(_server_view(sink, lp, "active")["metrics"]["loss"]) == 700
    assert _server_view(sink, lp, "rank0")["has_parent"]


class _TrippingSink:
    """The real MLflow sink; after its ``after``-th acknowledged batch of points it calls ``trip`` (the
    gateway is then between two calls to its source: the link breaks mid-pass)."""

    def __init__(self, sink, after: int, trip):
        self._sink, self._left, self._trip = sink, after, trip

    def __getattr__(self, name):
        return getattr(self._sink, name)

    def send(self, run, payload):
        points = self._sink.send(run, payload)
        self._left -= 1
        if self._left == 0:
            self._trip()
        return points


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_link_broken_mid_pass_then_the_next_pass_completes_it(sshd, mlflow_url, tmp_path, no_agent, how):
    """``killed``: the sshd session dies (paramiko sees EOF; the next call reconnects, often before any
    call fails). ``frozen``: the session stops answering, like a link that silently drops packets: the
    call in flight times out (io_timeout_s), that run's error is recorded with its cursor at the last
    acknowledged batch, and the next pass completes it. Either way the server ends up as after a local sync."""
    import signal

    import psutil

    # history.jsonl > one 4 MiB read of the gateway, with few points (strings are not metrics)
    local_root, remote_root, lp, rp, _ = _trees(tmp_path, done_rows=5000, pad_bytes=1000)
    settings = Settings(roots=[], server_url=mlflow_url, state_dir=str(tmp_path / "state"), retries=3)
    sink = make_sink(settings, environ={}, backoff_factor=0.05)
    with Runner(settings, sink=sink, sources=[LocalSource(local_root)]) as runner:
        assert runner.run_pass().ok
    tripped = []

    def trip():
        for child in psutil.Process(sshd.pid).children(recursive=True):
            child.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            tripped.append(child)

    sftp = SftpSource(sshd.url(remote_root), known_hosts=sshd.known_hosts, identity_file=sshd.identity_file,
                      ssh_config=os.devnull, io_timeout_s=3.0)
    tripping = _TrippingSink(sink, after=2, trip=trip)
    try:
        with Runner(settings, sink=tripping, sources=[sftp]) as runner:
            first = runner.run_pass()
            assert tripped, "the link was never broken"
            if how == "frozen":
                assert len(first.errors) == 1 and "connection lost" in next(iter(first.errors.values())), first
            else:
                assert all("connection lost" in e for e in first.errors.values()), first
            second = runner.run_pass()
            assert second.ok, second
    finally:
        for process in tripped:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    assert sftp.connects == 3   # one per pass, and one after the break
    _assert_same_on_server(sink, lp, rp)


def test_open_source_builds_an_sftp_source_from_settings(sshd, tmp_path, no_agent, monkeypatch):
    """The factory the gateway uses: an ssh:// root becomes an SftpSource; with no ssh settings it follows
    OpenSSH's defaults (~/.ssh/config, ~/.ssh/known_hosts)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(open(sshd.ssh_config).read())
    monkeypatch.setenv("HOME", str(home))
    root = str(tmp_path / "runs")
    write_run(root, "p", "r1")
    src = open_source(f"ssh://hpc-login{root}", Settings(roots=[f"ssh://hpc-login{root}"]))
    try:
        assert isinstance(src, SftpSource)
        assert [r.run_id for r in discover_hpc(src)] == ["r1"]
    finally:
        src.close()
