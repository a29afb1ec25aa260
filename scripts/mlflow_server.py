#!/usr/bin/env python3
"""Start and stop a real local MLflow tracking server (SQLite, loopback, artifact proxy).

Used by the gateway's pytest fixture (in-process: :func:`start` / :func:`stop`) and by ``make demo``::

    python scripts/mlflow_server.py start --dir .demo/mlflow      # prints the URL, writes server.json
    python scripts/mlflow_server.py stop  --dir .demo/mlflow      # stops the PID recorded in server.json

``--tls-cert/--tls-key`` serve HTTPS through uvicorn. Everything lives under ``--dir``: ``mlflow.db``,
``artifacts/``, ``server.log`` and ``server.json`` (pid, url, port).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Dict, Optional

__all__ = ["ServerHandle", "start", "stop", "stop_recorded", "free_port", "is_running"]


@dataclass
class ServerHandle:
    pid: int
    url: str
    port: int
    workdir: str
    tls: bool

    @property
    def db_uri(self) -> str:
        return f"sqlite:///{os.path.join(self.workdir, 'mlflow.db')}"


def free_port() -> int:
    """A port the kernel reports free on 127.0.0.1 (mlflow binds it a moment later; start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (PID 1 here reaps orphans only every ~2 s)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _mlflow_exe() -> str:
    # Prefer the mlflow next to this interpreter, so a venv's server is used even when not activated.
    beside = os.path.join(os.path.dirname(sys.executable), "mlflow")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mlflow")
    if not found:
        raise RuntimeError("mlflow is not installed: pip install -e '.[server]' (pins mlflow==3.17.2)")
    return found


def _health_ok(url: str, probe_cert: Optional[str] = None) -> bool:
    # Our own loopback server with a throw-away certificate: the health probe only asks "is it up";
    # certificate checks are what the gateway's tests exercise, not this probe.
    ctx = ssl._create_unverified_context() if url.startswith("https") else None
    if ctx is not None and probe_cert:
        ctx.load_cert_chain(probe_cert)
    try:
        with urllib.request.urlopen(url + "/health", timeout=2, context=ctx) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start(workdir: str, port: int = 0, tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
          backend_uri: Optional[str] = None, timeout_s: float = 120.0, attempts: int = 3,
          tls_client_ca: Optional[str] = None, probe_cert: Optional[str] = None,
          artifacts_destination: Optional[str] = None, workers: int = 1,
          env: Optional[Dict[str, str]] = None, allowed_hosts: Optional[str] = None) -> ServerHandle:
    """Start ``mlflow server`` and wait (bounded) until ``/health`` answers; return its handle.

    ``tls_client_ca`` makes the server require client certificates signed by that CA (mTLS);
    ``probe_cert`` (a PEM with key and certificate) is then what the health probe presents.
    ``artifacts_destination`` (default ``<workdir>/artifacts``) may be ``s3://bucket/prefix``, with the
    store's variables in ``env``; ``workers`` is the number of server processes; ``allowed_hosts`` is
    MLflow 3's ``--allowed-hosts`` (default: its own, the local addresses).
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(os.path.join(workdir, "artifacts"), exist_ok=True)
    last_err = ""
    for _ in range(attempts):
        p = port or free_port()
        scheme = "https" if tls_cert else "http"
        cmd = [_mlflow_exe(), "server", "--host", "127.0.0.1", "--port", str(p),
               "--backend-store-uri", backend_uri or f"sqlite:///{os.path.join(workdir, 'mlflow.db')}",
               "--serve-artifacts", "--artifacts-destination",
               artifacts_destination or os.path.join(workdir, "artifacts"), "--workers", str(workers)]
        if allowed_hosts:
            cmd += ["--allowed-hosts", allowed_hosts]
        if tls_cert:
            opts = f"--ssl-certfile {tls_cert} --ssl-keyfile {tls_key}"
            if tls_client_ca:
                opts += f" --ssl-ca-certs {tls_client_ca} --ssl-cert-reqs 2"  # 2 = ssl.CERT_REQUIRED
            cmd += ["--uvicorn-opts", opts]
        proc_env = dict(os.environ, **(env or {}))
        # Without this, mlflow 3.17 starts a job runner: 9 processes and ~2.2 GB instead of 2.
        proc_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        log = open(os.path.join(workdir, "server.log"), "ab")
        # A new session makes the recorded PID also the process group, so stop() reaches uvicorn too.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=proc_env, start_new_session=True)
        log.close()
        handle = ServerHandle(proc.pid, f"{scheme}://127.0.0.1:{p}", p, workdir, bool(tls_cert))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if _health_ok(handle.url, probe_cert):
                with open(os.path.join(workdir, "server.json"), "w") as f:
                    json.dump(asdict(handle), f)
                handle._proc = proc  # type: ignore[attr-defined]  # lets stop() reap its own child
                return handle
            time.sleep(0.3)
        _terminate(proc.pid, proc)
        last_err = _tail(os.path.join(workdir, "server.log"))
        driver = _MISSING_DRIVER.search(last_err)
        if driver:  # retrying cannot help, and the traceback buries the one line that matters
            raise RuntimeError(f"the server's Python has no PostgreSQL driver ({driver.group(0)}): install it "
                               f"there (pip install 'psycopg[binary]', part of hpc-sync[server]); "
                               f"see {workdir}/server.log")
        if port:  # a fixed port will not get better by retrying
            break
    raise RuntimeError(f"mlflow server did not become healthy within {timeout_s:.0f} s; "
                       f"see {workdir}/server.log:\n{last_err}")


#: SQLAlchemy imports psycopg (or psycopg2 for postgresql+psycopg2://) when the store opens, at start
_MISSING_DRIVER = re.compile(r"No module named '(psycopg2?|pg8000|asyncpg)'")


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _terminate(pid: int, proc: Optional[subprocess.Popen] = None, grace_s: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return
            if proc is None and not is_running(pid):
                return
            time.sleep(0.1)


def stop(handle: ServerHandle) -> None:
    """Stop the server by its PID (its process group), SIGKILL after a grace period."""
    _terminate(handle.pid, getattr(handle, "_proc", None))
    try:
        os.unlink(os.path.join(handle.workdir, "server.json"))
    except FileNotFoundError:
        pass


def stop_recorded(workdir: str) -> bool:
    """Stop the server whose PID ``start`` recorded in ``workdir/server.json``; False if none was."""
    try:
        with open(os.path.join(os.path.abspath(workdir), "server.json")) as f:
            handle = ServerHandle(**json.load(f))
    except FileNotFoundError:
        return False
    stop(handle)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a server and print its URL")
    s.add_argument("--dir", required=True, help="directory for mlflow.db, artifacts/, server.log")
    s.add_argument("--port", type=int, default=0, help="default: a free port")
    s.add_argument("--tls-cert")
    s.add_argument("--tls-key")
    s.add_argument("--backend-store-uri", help="default: sqlite:///<dir>/mlflow.db")
    s.add_argument("--timeout-s", type=float, default=120.0)
    t = sub.add_parser("stop", help="stop the server recorded in --dir")
    t.add_argument("--dir", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "start":
        recorded = os.path.join(a.dir, "server.json")
        if os.path.exists(recorded):
            with open(recorded) as f:
                old = json.load(f)
            if is_running(old["pid"]):
                print(old["url"])
                return 0
        try:
            h = start(a.dir, a.port, a.tls_cert, a.tls_key, a.backend_store_uri, a.timeout_s)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(h.url)
        return 0
    if not stop_recorded(a.dir):
        print(f"no server recorded in {a.dir}/server.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
