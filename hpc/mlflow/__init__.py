"""The MLflow users' door: ``MLFLOW_TRACKING_URI=hpc:///path/to/root`` makes the unchanged ``mlflow`` client
write hpc runs offline (docs/coming-from-mlflow.md; the on-disk additions: docs/run-format.md section 11).

MLflow finds this module through the entry points ``mlflow.tracking_store`` and ``mlflow.artifact_repository``
(scheme ``hpc``) and loads it while ``import mlflow`` is still running: nothing here imports mlflow at module
level (MLflow's modules are not importable yet then); the builders import the store and the repository when
MLflow first asks for one. ``import hpc`` never imports this package.

Telemetry: MLflow resolves ``config.mlflow-telemetry.io`` unless ``MLFLOW_DISABLE_TELEMETRY`` is set. When
``MLFLOW_TRACKING_URI`` names an ``hpc:`` root at the time MLflow loads this module (before MLflow sets up its
telemetry client), the variable is set here, so the offline process makes no network call; a URI set later in
code (``mlflow.set_tracking_uri``) turns telemetry off when the store is built (see :func:`_quiet_telemetry`).
"""
from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Any, Optional

__all__ = ["tracking_store", "artifact_repository"]

_TELEMETRY_VARIABLE = "MLFLOW_DISABLE_TELEMETRY"


def _uses_hpc(uri: Optional[str]) -> bool:
    return bool(uri) and str(uri).strip().lower().startswith("hpc:")


if _uses_hpc(os.environ.get("MLFLOW_TRACKING_URI")):
    os.environ.setdefault(_TELEMETRY_VARIABLE, "true")


def _quiet_telemetry() -> None:
    """An hpc store is being built: MLflow's telemetry client, set up at ``import mlflow``, is dropped (MLflow's
    own re-initialisation, which reads the variable again) before it first sends anything."""
    if os.environ.get(_TELEMETRY_VARIABLE, "").lower() in ("true", "1"):
        return
    os.environ[_TELEMETRY_VARIABLE] = "true"
    try:
        from mlflow.telemetry import set_telemetry_client
    except ImportError:  # an MLflow without telemetry
        return
    set_telemetry_client()


def tracking_store(store_uri: str, artifact_uri: Optional[str] = None, **_: Any) -> Any:
    """The ``mlflow.tracking_store`` builder for ``hpc:`` URIs (MLflow caches one store per URI)."""
    _quiet_telemetry()
    from ._store import HpcTrackingStore

    return HpcTrackingStore(store_uri, artifact_uri)


def artifact_repository(artifact_uri: str, tracking_uri: Optional[str] = None, registry_uri: Optional[str] = None,
                        **_: Any) -> Any:
    """The ``mlflow.artifact_repository`` builder for ``hpc:`` artifact URIs."""
    from ._artifacts import HpcArtifactRepository

    return HpcArtifactRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)


_stores: weakref.WeakSet[Any] = weakref.WeakSet()
_stores_lock = threading.Lock()


def _close_at_exit(store: Any) -> None:
    with _stores_lock:
        _stores.add(store)


def _close_all() -> None:
    """Close the open runs of every store when the interpreter exits."""
    with _stores_lock:
        stores = list(_stores)
    for store in stores:
        store.close_all()


# Registered while `import mlflow` loads this module, before mlflow.tracking.fluent registers its own
# handler: exit handlers run last-registered first, so MLflow ends its active runs (and flushes its
# asynchronous logging queue, registered later still) before the runs' files are closed here.
atexit.register(_close_all)
