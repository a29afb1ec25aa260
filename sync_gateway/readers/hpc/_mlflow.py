"""Runs written through MLflow's client (``MLFLOW_TRACKING_URI=hpc:///…``, docs/run-format.md section 11):
what the hpc reader reads differently for them, so that a sink shows the run as MLflow would have stored it.

- the run's project is its experiment's exact name (``<project>/experiment.json``; the directory name is a
  safe encoding of it), its name, start time, user and tags are run.json's ``mlflow`` object's;
- nesting is MLflow's own (``mlflow.parentRunId``), which :func:`door_info` resolves to the parent run of the
  same root; a nested run belongs to no group (hpc's grouping of a job's ranks under a parent run would fight
  the user's nesting), a top-level one keeps its group (a SLURM job's ranks, as for ``hpc.init``);
- its metric points are the stream ``points.jsonl`` (any step, any order, per key), its artifacts
  ``artifacts/<path>`` shown at ``<path>``, and everything the door adds shown under ``hpc/``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Mapping, Optional

from sync_gateway.errors import FormatError
from sync_gateway.readers.base import is_run_name
from sync_gateway.readers.hpc._format import parse_document, parse_run_json
from sync_gateway.records import RunInfo, RunRef
from sync_gateway.sources.base import Source

__all__ = ["POINTS_STREAM", "ARTIFACTS_DIR", "EXPERIMENT_JSON", "PARENT_TAG", "mlflow_object", "door_info",
           "shown_as"]

log = logging.getLogger(__name__)

POINTS_STREAM = ("points", "points.jsonl")   # stream name, file
ARTIFACTS_DIR = "artifacts"
EXPERIMENT_JSON = "experiment.json"
PARENT_TAG = "mlflow.parentRunId"
MAX_NESTING = 16   # parents read up a chain of nested runs (a cycle of hand-edited tags ends here)


def mlflow_object(meta: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """run.json's ``mlflow`` object (a run written through MLflow's client), else None."""
    obj = meta.get("mlflow")
    return obj if isinstance(obj, dict) and isinstance(obj.get("run_id"), str) else None


def shown_as(name: str) -> str:
    """Where a door run's file is shown: ``artifacts/<path>`` at ``<path>`` (MLflow's own place), every file
    the door adds (documents, console, ``files/``, ``code/``) under ``hpc/``."""
    if name.startswith(ARTIFACTS_DIR + "/"):
        return name[len(ARTIFACTS_DIR) + 1:]
    return name if name.startswith("hpc/") else "hpc/" + name


def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _sibling(ref: RunRef, name: str) -> Optional[str]:
    """The location of ``name`` beside ``ref``'s run directory ("" for the project directory itself), whatever
    the source's separator; None when the location does not end with the run id."""
    loc = ref.location.rstrip("/\\")
    if not loc.endswith(ref.run_id):
        return None
    base = loc[:len(loc) - len(ref.run_id)]
    return base.rstrip("/\\") if not name else base + name


def _experiment_name(source: Source, ref: RunRef, mlflow: Mapping[str, Any]) -> str:
    """The experiment's exact name: experiment.json's (it follows a rename), else the name the run was
    created under, else the directory's."""
    where = _sibling(ref, "")
    if where is not None:
        try:
            raw = source.read_document(RunRef(ref.project, "", where), EXPERIMENT_JSON)
            doc = parse_document(raw, EXPERIMENT_JSON) if raw is not None else None
        except FormatError as e:
            log.warning("%s: %s (the experiment's name is taken from run.json)", ref.key, e)
            doc = None
        exp = doc.get("mlflow") if doc else None
        if isinstance(exp, dict) and isinstance(exp.get("name"), str) and exp["name"]:
            return exp["name"]
    name = mlflow.get("experiment_name")
    return name if isinstance(name, str) and name else ref.project


def _parent(source: Source, ref: RunRef, parent_id: str, depth: int) -> Optional[tuple]:
    """(key, info) of the door run ``parent_id`` beside ``ref``, None when there is none to nest under."""
    where = _sibling(ref, parent_id)
    if depth >= MAX_NESTING or parent_id == ref.run_id or not is_run_name(parent_id) or where is None:
        return None
    pref = RunRef(ref.project, parent_id, where)
    try:
        raw = source.read_document(pref, "run.json")
        meta = parse_run_json(raw) if raw is not None else None
    except FormatError as e:
        log.warning("%s: its parent run %s is unreadable (%s): synced without its nesting", ref.key, parent_id, e)
        return None
    mlflow = mlflow_object(meta) if meta is not None else None
    if meta is None or mlflow is None:
        log.warning("%s: its parent run %s is not in %s: synced as a top-level run (tag hpc.parent_run_id)",
                    ref.key, parent_id, ref.project)
        return None
    return pref.key, door_info(source, pref, meta, mlflow, _plain(pref, meta), depth + 1)


def _plain(ref: RunRef, meta: Mapping[str, Any]) -> RunInfo:
    """Enough of a parent to create its server run when its child is synced first; the parent's own sync
    then finds that run by its key and sends everything else."""
    return RunInfo(project=ref.project, run_id=ref.run_id, name=ref.run_id,
                   created_ms=_int(meta.get("created_ms")) or 0, attempt=_int(meta.get("attempt")) or 1,
                   format_version=str(meta.get("format_version", "")))


def door_info(source: Source, ref: RunRef, meta: Mapping[str, Any], mlflow: Mapping[str, Any], base: RunInfo,
              depth: int = 0) -> RunInfo:
    """``base`` (what run.json says as for any hpc run) as MLflow recorded the run."""
    raw_tags = mlflow.get("tags")
    tags = {str(k): v if isinstance(v, str) else str(v) for k, v in raw_tags.items()} \
        if isinstance(raw_tags, dict) else {}
    parent_id = tags.get(PARENT_TAG)
    start = _int(mlflow.get("start_time"))
    user = mlflow.get("user_id") or tags.get("mlflow.user")
    return dataclasses.replace(
        base, project=_experiment_name(source, ref, mlflow),
        name=str(mlflow.get("run_name") or tags.get("mlflow.runName") or base.name),
        created_ms=start if start is not None else base.created_ms,
        user=str(user) if user else None, group=None if parent_id else base.group, tags=(), notes=None,
        program=None, argv=(), git={},
        metrics=(), native_tags=tags,
        parent=_parent(source, ref, parent_id, depth) if parent_id else None)
