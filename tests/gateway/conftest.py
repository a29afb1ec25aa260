"""Fixtures for the gateway tests: a real MLflow server (scripts/mlflow_server.py), settings, helpers."""
from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from dataclasses import replace
from typing import Any, Dict, List, Tuple

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "scripts"))

from support import IN_CI, need  # noqa: E402  (tests/support.py, on sys.path via tests/conftest.py)

_MISSING = [m for m in ("requests", "urllib3") if importlib.util.find_spec(m) is None]
if _MISSING and not IN_CI:
    # Without the [gateway] extra nothing here can run: say so in one line instead of failing to import.
    collect_ignore_glob = ["test_*.py"]

    def pytest_report_header(config):
        return f"tests/gateway skipped: {', '.join(_MISSING)} missing (pip install -e '.[gateway,server,gateway-test]')"

    Runner = make_sink = Settings = MlflowRun = MlflowSink = None  # type: ignore  # noqa: N816
else:
    from sync_gateway.engine.runner import Runner, make_sink
    from sync_gateway.settings import Settings
    from sync_gateway.sinks.mlflow.sink import MlflowRun, MlflowSink


def pytest_collection_modifyitems(items):
    for item in items:
        if "mlflow_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mlflow)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    need(importlib.util.find_spec("mlflow") is not None,
         "mlflow is not installed: pip install -e '.[server]' (or scripts/ci/install-gateway.sh)")
    import mlflow_server as ms

    h = ms.start(str(tmp_path_factory.mktemp("mlflow")))
    yield h
    ms.stop(h)


@pytest.fixture(scope="session")
def mlflow_production():
    """MLflow in its production shape (scripts/mlflow_production.py): PostgreSQL, S3 artifacts, 4 workers."""
    import tempfile

    import mlflow_production as prod

    missing = prod.available()
    need(missing is None, missing or "")
    # Not under pytest's 0700 tmp dirs: the postgres user must reach its cluster. Through the script's
    # command line, as docs/gateway.md shows it.
    workdir = tempfile.mkdtemp(prefix="hpcsync-prod-")
    assert prod.main(["start", "--dir", workdir, "--workers", "4"]) == 0
    yield prod.load(workdir)
    prod.main(["stop", "--dir", workdir])


@pytest.fixture
def project():
    return "p" + uuid.uuid4().hex[:10]


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "runs"
    r.mkdir()
    return str(r)


@pytest.fixture
def settings(mlflow_server, root, tmp_path):
    return Settings(roots=[root], server_url=mlflow_server.url, state_dir=str(tmp_path / "state"),
                    retries=3)


def make_runner(settings: Settings, **kw: Any) -> Runner:
    sink = kw.pop("sink", None) or make_sink(settings, environ={}, backoff_factor=0.05)
    return Runner(settings, sink=sink, **kw)


def sync_once(settings: Settings, **kw: Any):
    """One pass by a fresh gateway, which then releases its lease (like ``sync-gateway sync --once``)."""
    with make_runner(settings, **kw) as runner:
        return runner.run_pass()


def sink_for(settings: Settings) -> MlflowSink:
    return make_sink(replace(settings), environ={}, backoff_factor=0.05)


def tagged_runs(sink: MlflowSink, project: str, run_id: str) -> List[Dict[str, Any]]:
    """The active MLflow runs tagged hpc.run_id = <root id>/<project>/<run_id>, whatever the root."""
    eid = sink.experiment_id(project)
    res = sink._call("POST", "/runs/search", {"experiment_ids": [eid], "max_results": 1000,
                                              "filter": f"tags.`hpc.run_id` LIKE '%/{project}/{run_id}'"})
    tag = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])}["hpc.run_id"]
           for r in res.get("runs") or []}
    # <root id>/<project>/<run_id> exactly: not retired:<ms>:..., duplicate:... (a root id has no ':')
    return [r for r in res.get("runs") or [] if len(tag[r["info"]["run_id"]].split("/")) == 3
            and ":" not in tag[r["info"]["run_id"]].split("/")[0]
            and tag[r["info"]["run_id"]].split("/", 1)[1] == f"{project}/{run_id}"]


def server_run(sink: MlflowSink, project: str, run_id: str) -> MlflowRun:
    """The one MLflow run of ``<project>/<run_id>`` (under any root: each test has one)."""
    runs = tagged_runs(sink, project, run_id)
    assert len(runs) == 1, f"{len(runs)} MLflow runs tagged hpc.run_id=<root id>/{project}/{run_id}, not 1"
    info = runs[0]["info"]
    return MlflowRun(info["run_id"], info["experiment_id"], info.get("artifact_uri", ""))


def run_info(sink: MlflowSink, run: MlflowRun) -> Dict[str, Any]:
    return sink._call("GET", "/runs/get", params={"run_id": run.run_id})["run"]


def history(sink: MlflowSink, run: MlflowRun, key: str) -> List[Tuple[int, int, float]]:
    pts = sink.get_history(run, key)
    return sorted((int(p.get("step", 0)), int(p["timestamp"]), _val(p["value"])) for p in pts)


def disk_points(recs: List[Dict[str, Any]], keys: Tuple[str, ...]) -> Dict[str, List[Tuple[int, int, float]]]:
    """What the server must hold for ``keys``, from a stream's records: (step, ts_ms, value), sorted."""
    return {k: sorted((r["step"], r["ts_ms"], float(r["values"][k])) for r in recs) for k in keys}


def assert_synced_once(sink: MlflowSink, project: str, run: MlflowRun,
                       want: Dict[str, List[Tuple[int, int, float]]], note: str = "") -> None:
    """After a kill loop: the experiment holds this one run, each key's points exactly once, FINISHED."""
    eid = sink.experiment_id(project)
    assert len(sink._call("POST", "/runs/search", {"experiment_ids": [eid]})["runs"]) == 1, \
        f"a killed and restarted sync created a second MLflow run {note}"
    for key, points in want.items():
        got = history(sink, run, key)
        assert len(got) == len(points), f"{key}: {len(got)} points on the server, {len(points)} on disk {note}"
        assert got == points, note
    assert run_info(sink, run)["info"]["status"] == "FINISHED"


def _val(v: Any) -> float:
    return float(v) if not isinstance(v, str) else float(v.replace("Infinity", "inf"))
