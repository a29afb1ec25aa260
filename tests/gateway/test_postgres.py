"""The same sync against MLflow backed by PostgreSQL (Debian's postgresql, started on 127.0.0.1)."""
from __future__ import annotations

import importlib.util
import tempfile

import pytest
from _runwriter import RunWriter
from conftest import history, server_run, sink_for, sync_once
from support import need

pytestmark = [pytest.mark.postgres, pytest.mark.mlflow]


def test_sync_into_mlflow_on_postgresql(root, project, tmp_path):
    import mlflow_server as ms
    import postgres_server as pg

    need(pg.available(), "PostgreSQL is not installed (apt-get install postgresql; scripts/ci/install-gateway.sh)")
    need(importlib.util.find_spec("mlflow") is not None and importlib.util.find_spec("psycopg") is not None,
         "mlflow and psycopg are needed: pip install -e '.[server,gateway-test]'")
    from sync_gateway.settings import Settings

    db = pg.start(tempfile.mkdtemp(prefix="hpcsync-pg-"))  # reachable by the postgres user, unlike tmp_path
    try:
        h = ms.start(str(tmp_path / "mlflow"), backend_uri=db.uri)
        try:
            w = RunWriter(root, project, "pg", config={"lr": 0.1}, group="g")
            w.log_many({"x": float(i), "y": float(-i)} for i in range(3000))
            w.system({"cpu/system_percent": 50.0}, step=0, ts_ms=1)
            w.exit(0)
            settings = Settings(roots=[root], server_url=h.url, state_dir=str(tmp_path / "st"), retries=2)
            assert sync_once(settings).ok
            import shutil

            shutil.rmtree(settings.state_path)  # state lost: re-found by tag, nothing stored twice
            assert sync_once(settings).ok
            sink = sink_for(settings)
            run = server_run(sink, project, "pg")
            assert [v for _, _, v in history(sink, run, "x")] == [float(i) for i in range(3000)]
            assert len(history(sink, run, "y")) == 3000
            assert history(sink, run, "system/cpu_utilization_percentage") == [(0, 1, 50.0)]
        finally:
            ms.stop(h)
    finally:
        pg.stop(db, remove=True)
