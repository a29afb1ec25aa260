#!/usr/bin/env python3
"""Start and stop a throw-away PostgreSQL (Debian's postgresql package) on 127.0.0.1 for MLflow tests.

    python scripts/postgres_server.py start --dir /tmp/hpcsync-pg    # prints postgresql+psycopg://... URI
    python scripts/postgres_server.py stop  --dir /tmp/hpcsync-pg

A fresh cluster (initdb, trust auth for 127.0.0.1 only, unix socket inside --dir) with a database ``mlflow``.
PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` user and --dir must
be a directory that user can reach (not under a 0700 pytest tmp dir). Stopped by the postmaster's PID.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

__all__ = ["PgHandle", "start", "stop", "available"]


@dataclass
class PgHandle:
    pid: int
    port: int
    workdir: str

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg://mlflow@127.0.0.1:{self.port}/mlflow"


def _bindir() -> Optional[str]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def available() -> bool:
    return _bindir() is not None


def _as_owner(cmd: List[str]) -> List[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--"] + cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workdir: str, timeout_s: float = 60.0) -> PgHandle:
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (scripts/ci/install-gateway.sh)")
    workdir = os.path.abspath(workdir)
    data = os.path.join(workdir, "data")
    os.makedirs(workdir, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(workdir, pw.pw_uid, pw.pw_gid)
    if not os.path.exists(os.path.join(data, "PG_VERSION")):
        subprocess.run(_as_owner([os.path.join(bindir, "initdb"), "-D", data, "-U", "mlflow", "-A", "trust",
                                  "-E", "UTF8", "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
    port = _free_port()
    log = open(os.path.join(workdir, "postgres.log"), "ab")
    # listen_addresses=127.0.0.1 only; the socket directory is ours, not /var/run/postgresql.
    proc = subprocess.Popen(_as_owner([os.path.join(bindir, "postgres"), "-D", data, "-h", "127.0.0.1",
                                       "-p", str(port), "-k", workdir, "-c", "fsync=off"]),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}; see {workdir}/postgres.log")
        ok = subprocess.run([os.path.join(bindir, "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL).returncode == 0
        if ok:
            break
        time.sleep(0.3)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"postgres did not accept connections within {timeout_s:.0f} s")
    with open(os.path.join(data, "postmaster.pid")) as f:
        pid = int(f.readline())
    subprocess.run([os.path.join(bindir, "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow",
                    "mlflow"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # exists already: fine
    h = PgHandle(pid, port, workdir)
    h._proc = proc  # type: ignore[attr-defined]
    with open(os.path.join(workdir, "postgres.json"), "w") as f:
        json.dump(asdict(h), f)
    return h


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop(h: PgHandle, remove: bool = False, grace_s: float = 30.0) -> None:
    """Fast shutdown (SIGINT) of the postmaster by its PID, SIGKILL after ``grace_s``."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.kill(h.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(h.pid):
            time.sleep(0.1)
        if not _alive(h.pid):
            break
    proc = getattr(h, "_proc", None)
    if proc is not None:
        proc.wait(timeout=10)
    if remove:
        shutil.rmtree(h.workdir, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["start", "stop"])
    ap.add_argument("--dir", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "start":
        print(start(a.dir).uri)
        return 0
    try:
        with open(os.path.join(a.dir, "postgres.json")) as f:
            stop(PgHandle(**json.load(f)))
    except FileNotFoundError:
        print(f"no server recorded in {a.dir}/postgres.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
