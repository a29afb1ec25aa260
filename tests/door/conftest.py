"""The MLflow door's tests: the real mlflow client (pinned in the [server] extra) against hpc:// roots."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from door_support import import_mlflow

mlflow = import_mlflow()


@pytest.fixture
def door(tmp_path, monkeypatch):
    """An hpc:// root of its own for the in-process mlflow client (MLflow caches one store per URI)."""
    root = str(tmp_path / "root")
    uri = f"hpc://{root}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment() sets it; undone after the test
    mlflow.set_tracking_uri(uri)
    mlflow.tracking.fluent._active_experiment_id = None  # the last test's experiment is not in this root
    yield SimpleNamespace(root=root, uri=uri, client=mlflow.MlflowClient(uri))
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.flush_async_logging()
    mlflow.tracking.fluent._active_experiment_id = None

