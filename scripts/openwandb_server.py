#!/usr/bin/env python3
"""Start and stop a real local W&B-protocol server for the W&B sink's tests: OpenWandb, on 127.0.0.1.

OpenWandb (``openwandb`` on PyPI, licence CC BY-NC 4.0) is a test-only tool, never a dependency of hpc-sync:
it lives in its OWN virtual environment (``ensure_venv``: ``python -m venv`` + ``pip install openwandb==0.5.25``
under ``$HPCSYNC_OPENWANDB_VENV``, default ``~/.cache/hpc-sync/openwandb-0.5.25``), so its dependencies never
meet mlflow's. ``scripts/ci/install-gateway.sh`` prepares it::

    python scripts/openwandb_server.py install                    # the venv (idempotent)
    python scripts/openwandb_server.py start --dir .demo/wandb    # prints the URL, writes server.json
    python scripts/openwandb_server.py stop  --dir .demo/wandb    # stops the PID recorded in server.json

Its read side does not answer wandb 0.31's public API, so tests read what it stored through :class:`Stored`,
a read shim over its own SQLite database (``<dir>/data/openwandb.db``: tables ``runs``, ``metrics``,
``system_metrics``, ``files``) and its file store (``<dir>/data/files/<entity>/<project>/<run>/``).
OpenWandb's gaps (docs/facts.md): it ignores file_stream offsets (every line received is appended, so a
re-send shows as a duplicate), stores no group, job type or exit code, drops non-scalar summary values,
keeps run ids unique server-wide, never answers 429 and does not enforce auth.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["VERSION", "venv_dir", "openwandb_exe", "ensure_venv", "ServerHandle", "start", "stop", "Stored"]

VERSION = "0.5.25"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from mlflow_server import free_port, is_running  # noqa: E402  (the same loopback helpers)


def venv_dir() -> str:
    return os.environ.get("HPCSYNC_OPENWANDB_VENV") or os.path.expanduser(f"~/.cache/hpc-sync/openwandb-{VERSION}")


def openwandb_exe() -> Optional[str]:
    exe = os.path.join(venv_dir(), "bin", "openwandb")
    return exe if os.access(exe, os.X_OK) else None


def ensure_venv() -> str:
    """The openwandb executable in its own venv, installed first if missing (needs the package index)."""
    exe = openwandb_exe()
    if exe:
        return exe
    venv = venv_dir()
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", f"openwandb=={VERSION}"],
                   check=True)
    exe = openwandb_exe()
    if not exe:
        raise RuntimeError(f"pip installed openwandb=={VERSION} into {venv} but bin/openwandb is missing")
    return exe


@dataclass
class ServerHandle:
    pid: int
    url: str
    port: int
    workdir: str

    @property
    def data_dir(self) -> str:
        return os.path.join(self.workdir, "data")


def _ready(url: str) -> bool:
    req = urllib.request.Request(url + "/graphql", data=b'{"query": "query Viewer { viewer { entity } }"}',
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start(workdir: str, port: int = 0, timeout_s: float = 60.0) -> ServerHandle:
    """Start ``openwandb serve`` on 127.0.0.1 (its data under ``workdir/data``) and wait until GraphQL answers."""
    exe = openwandb_exe()
    if exe is None:
        raise RuntimeError(f"openwandb is not installed in {venv_dir()}: run scripts/openwandb_server.py install")
    workdir = os.path.abspath(workdir)
    data = os.path.join(workdir, "data")
    os.makedirs(data, exist_ok=True)
    p = port or free_port()
    env = dict(os.environ, OPENWANDB_DATA_DIR=data, OPENWANDB_LOG_LEVEL="WARNING")
    with open(os.path.join(workdir, "server.log"), "ab") as logf:
        proc = subprocess.Popen([exe, "serve", "--host", "127.0.0.1", "--port", str(p), "--data-dir", data,
                                 "--log-level", "warning"], stdout=logf, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    handle = ServerHandle(proc.pid, f"http://127.0.0.1:{p}", p, workdir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if _ready(handle.url):
            with open(os.path.join(workdir, "server.json"), "w") as f:
                json.dump(asdict(handle), f)
            handle._proc = proc  # type: ignore[attr-defined]
            return handle
        time.sleep(0.3)
    stop(handle)
    with open(os.path.join(workdir, "server.log"), "rb") as f:
        tail = f.read()[-2000:].decode("utf-8", "replace")
    raise RuntimeError(f"openwandb did not answer within {timeout_s:.0f} s; see {workdir}/server.log:\n{tail}")


def stop(handle: ServerHandle) -> None:
    """Stop the server by its recorded PID (its process group), SIGKILL after 10 s."""
    proc = getattr(handle, "_proc", None)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(handle.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (proc.poll() is None if proc is not None else is_running(handle.pid)):
            time.sleep(0.1)
        if proc.poll() is not None if proc is not None else not is_running(handle.pid):
            break
    try:
        os.unlink(os.path.join(handle.workdir, "server.json"))
    except FileNotFoundError:
        pass


class Stored:
    """What OpenWandb stored, read from its own database and files (its GraphQL read side cannot be used)."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir

    def _q(self, sql: str, args: Tuple[Any, ...] = ()) -> List[sqlite3.Row]:
        con = sqlite3.connect(f"file:{os.path.join(self.data_dir, 'openwandb.db')}?mode=ro", uri=True, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            return list(con.execute(sql, args))
        finally:
            con.close()

    def run(self, run_id: str) -> Optional[Dict[str, Any]]:
        rows = self._q("SELECT r.*, p.name AS project FROM runs r JOIN projects p ON p.id = r.project_id "
                       "WHERE r.run_id = ?", (run_id,))
        if not rows:
            return None
        out = dict(rows[0])
        for k in ("config_json", "summary_json", "tags_json"):
            out[k[:-5]] = json.loads(out.get(k) or "null")
        return out

    def runs_in(self, project: str) -> List[str]:
        return [r["run_id"] for r in self._q("SELECT r.run_id FROM runs r JOIN projects p ON p.id = r.project_id "
                                             "WHERE p.name = ?", (project,))]

    def metrics(self, run_id: str, table: str = "metrics") -> List[Tuple[str, int, float, float]]:
        """(key, step, value, wall_time) of every point stored, in insertion order (duplicates kept)."""
        assert table in ("metrics", "system_metrics")
        return [(r["key"], r["step"], r["value"], r["wall_time"])
                for r in self._q(f"SELECT key, step, value, wall_time FROM {table} WHERE run_id = ? ORDER BY id",
                                 (run_id,))]

    def file(self, entity: str, project: str, run_id: str, name: str) -> Optional[bytes]:
        path = os.path.join(self.data_dir, "files", entity, project, run_id, name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="create the openwandb venv (idempotent)")
    s = sub.add_parser("start")
    s.add_argument("--dir", required=True)
    s.add_argument("--port", type=int, default=0)
    t = sub.add_parser("stop")
    t.add_argument("--dir", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "install":
        print(ensure_venv())
        return 0
    if a.cmd == "start":
        print(start(a.dir, a.port).url)
        return 0
    try:
        with open(os.path.join(os.path.abspath(a.dir), "server.json")) as f:
            stop(ServerHandle(**json.load(f)))
    except FileNotFoundError:
        print(f"no server recorded in {a.dir}/server.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
