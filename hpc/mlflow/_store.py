"""MLflow's tracking store for ``hpc:///root``: the unchanged mlflow client writes hpc runs, offline.

Imported only by the builder in ``hpc.mlflow`` when MLflow first builds a store for an ``hpc:`` URI, so
``import mlflow`` is over by then and mlflow's modules import normally here.

Writes go to the run's :class:`~hpc.mlflow._run.DoorRun` (queued for hpc's writer thread, bounded); reads of
a run this process writes are answered from memory (metric histories after a bounded flush), reads of any
other run from its directory (docs/run-format.md section 11): the store composes the experiments
(:mod:`hpc.mlflow._experiments`) and the run reads (:mod:`hpc.mlflow._lookup`) and keeps the run writes.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

from mlflow.entities import LifecycleStage, RunStatus, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, INVALID_STATE, RESOURCE_DOES_NOT_EXIST
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking.abstract_store import AbstractStore
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, _get_run_name_from_tags
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.validation import (
    _validate_batch_log_data,
    _validate_batch_log_limits,
    _validate_metric,
    _validate_param,
    _validate_param_keys_unique,
    _validate_run_id,
    _validate_tag,
)

from .. import _format as fmt
from .._context import detect
from .._settings import Settings
from .._terminal import Terminal
from . import _layout as layout
from ._experiments import Experiments, storage_error
from ._lookup import RunLookup, run_entity
from ._run import TERMINAL_STATUSES, DoorRun

__all__ = ["HpcTrackingStore"]

_STALE_WRITER_S = 30.0  # a run whose heartbeat is fresher than this belongs to a live writer elsewhere


def _new_params(run_id: str, logged: Dict[str, str], params: List[Any]) -> Dict[str, str]:
    """The params not logged yet; MLflow's immutability: another value for a logged one is refused, before
    anything of the call is written."""
    new = {}
    for param in params:
        value = "" if param.value is None else str(param.value)
        before = logged.get(param.key)
        if before is not None and before != value:
            raise MlflowException(
                f"Changing param values is not allowed. Param with key='{param.key}' was already logged "
                f"with value='{before}' for run ID='{run_id}'. Attempted logging new value '{value}'.",
                INVALID_PARAMETER_VALUE)
        if before is None:
            new[param.key] = value
    return new


def _status_name(status: Any) -> str:
    return status if isinstance(status, str) else RunStatus.to_string(status)


class HpcTrackingStore(AbstractStore):
    def __init__(self, store_uri: str, artifact_uri: Optional[str] = None):
        super().__init__()
        self.store_uri = store_uri
        self.root = layout.root_from_uri(store_uri)
        self.settings = Settings.resolve({"root": self.root})
        self._terminal = Terminal(self.settings.silent)
        self._runs: Dict[str, DoorRun] = {}      # runs this process writes
        self._lock = threading.RLock()
        self._experiments = Experiments(self.root, store_uri, artifact_uri)
        self._lookup = RunLookup(self.root, self._runs)
        self._slurm_runs = 0
        from . import _close_at_exit

        _close_at_exit(self)

    # ---- experiments (hpc.mlflow._experiments) -------------------------------------------------------
    def search_experiments(self, view_type=ViewType.ACTIVE_ONLY, max_results=1000, filter_string=None,
                           order_by=None, page_token=None):
        return self._experiments.search(view_type, max_results, filter_string, order_by, page_token)

    def create_experiment(self, name, artifact_location=None, tags=None):
        return self._experiments.create(name, artifact_location, tags)

    def get_experiment(self, experiment_id):
        return self._experiments.get(experiment_id)

    def get_experiment_by_name(self, experiment_name):
        return self._experiments.get_by_name(experiment_name)

    def delete_experiment(self, experiment_id):
        self._experiments.update(experiment_id, lifecycle_stage=LifecycleStage.DELETED)

    def restore_experiment(self, experiment_id):
        self._experiments.update(experiment_id, lifecycle_stage=LifecycleStage.ACTIVE)

    def rename_experiment(self, experiment_id, new_name):
        self._experiments.rename(experiment_id, new_name)

    def set_experiment_tag(self, experiment_id, tag):
        self._experiments.set_tag(experiment_id, tag)

    def delete_experiment_tag(self, experiment_id, key):
        self._experiments.delete_tag(experiment_id, key)

    # ---- runs: create, find, open ---------------------------------------------------------------------
    def create_run(self, experiment_id, user_id, start_time, tags, run_name):
        experiment_id = layout.DEFAULT_EXPERIMENT_ID if experiment_id is None else str(experiment_id)
        doc = self._experiments.doc(experiment_id)
        if doc is None:
            raise MlflowException(f"Could not create run under experiment with ID {experiment_id} - no such "
                                  "experiment exists.", RESOURCE_DOES_NOT_EXIST)
        if doc["lifecycle_stage"] != LifecycleStage.ACTIVE:
            raise MlflowException(f"Could not create run under non-active experiment with ID {experiment_id}.",
                                  INVALID_STATE)
        self._experiments.ensure_written(doc)
        tags = [_validate_tag(t.key, t.value) for t in (tags or [])]
        name_tag = _get_run_name_from_tags(tags)
        if run_name and name_tag and run_name != name_tag:
            raise MlflowException("Both 'run_name' argument and 'mlflow.runName' tag are specified, but with "
                                  f"different values (run_name='{run_name}', mlflow.runName='{name_tag}').",
                                  INVALID_PARAMETER_VALUE)
        given_name = run_name or name_tag
        context = detect(os.environ)
        with self._lock:
            run_id = uuid.uuid4().hex
            if context.run_id is not None:  # a SLURM task: the same ids again after a requeue (resume)
                run_id = context.run_id if self._slurm_runs == 0 else f"{context.run_id}-{self._slurm_runs}"
                self._slurm_runs += 1
            project = layout.experiment_dir(self.root, experiment_id)
            assert project is not None
            run_dir = os.path.join(project, run_id)
            previous = self._lookup.disk.load(run_dir) if context.run_id is not None else None
            if previous is None and os.path.exists(os.path.join(run_dir, fmt.RUN_JSON)):
                run_id = uuid.uuid4().hex  # the SLURM id names a run that is no door run (hpc.init's)
                run_dir = os.path.join(project, run_id)
            if previous is not None:
                self._refuse_live_writer(run_dir, run_id)
                info = previous.info
                info.update(status="RUNNING", end_time=None)
                info["run_name"] = given_name or info.get("run_name") or _generate_random_name()
                params, latest = previous.params, previous.latest
            else:
                info = {"run_id": run_id, "experiment_id": experiment_id, "experiment_name": doc["name"],
                        "run_name": given_name or _generate_random_name(), "user_id": user_id,
                        "status": "RUNNING", "start_time": start_time, "end_time": None,
                        "lifecycle_stage": LifecycleStage.ACTIVE,
                        "artifact_uri": f"{doc['artifact_location'].rstrip('/')}/{run_id}/{layout.ARTIFACTS_DIR}",
                        "tags": {}}
                params, latest = {}, {}
            info["tags"].update({t.key: t.value for t in tags})
            info["tags"][MLFLOW_RUN_NAME] = info["run_name"]
            try:
                run = DoorRun.open(run_dir, info, previous is not None, context, self.settings, self._terminal,
                                   params=params, latest=latest)
            except OSError as err:
                raise storage_error(self.store_uri, run_dir, err) from err
            self._runs[run_id] = run
            self._lookup.remember(run_id, run_dir)
        return run_entity(run.info, run.params, run.latest)

    def _refuse_live_writer(self, run_dir: str, run_id: str) -> None:
        """One writer per run: a run another live process writes (fresh heartbeat, no outcome) is refused."""
        try:
            meta = fmt.read_json(os.path.join(run_dir, fmt.RUN_JSON)) or {}
            beat = os.stat(os.path.join(run_dir, fmt.HEARTBEAT))
            outcome = fmt.read_json(os.path.join(run_dir, fmt.EXIT))
        except (OSError, ValueError):
            return
        if outcome is not None and outcome.get("attempt") == meta.get("attempt"):
            return
        if time.time() - beat.st_mtime < _STALE_WRITER_S:
            raise MlflowException(f"run {run_id} is being written by another process ({run_dir}, heartbeat "
                                  f"{time.time() - beat.st_mtime:.0f} s ago): one process writes a run; log from "
                                  "that process, or end the run there first", INVALID_STATE)

    def _writable(self, run_id: str) -> DoorRun:
        """The open run, or the run reopened for writing (a new attempt), as MLflow lets one log to a
        finished run."""
        run = self._runs.get(run_id)
        if run is not None:
            return run
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                return run
            loaded = self._lookup.on_disk(run_id)
            if loaded.info.get("lifecycle_stage") != LifecycleStage.ACTIVE:
                raise MlflowException(f"The run {run_id} must be in the 'active' state. Current state is "
                                      f"{loaded.info.get('lifecycle_stage')}.", INVALID_PARAMETER_VALUE)
            self._refuse_live_writer(loaded.run_dir, run_id)
            run = DoorRun.open(loaded.run_dir, loaded.info, True, detect(os.environ), self.settings,
                               self._terminal, params=loaded.params, latest=loaded.latest)
            self._runs[run_id] = run
            return run

    def _close(self, run: DoorRun, status: Optional[str]) -> None:
        with self._lock:
            self._runs.pop(run.run_id, None)
        run.close(status, run.info.get("end_time"))

    def close_all(self) -> None:
        """At exit: every open run's files complete; a run MLflow still calls RUNNING gets no exit.json."""
        for run in list(self._runs.values()):
            status = run.info.get("status")
            self._close(run, status if status in TERMINAL_STATUSES else None)

    # ---- runs: reads (hpc.mlflow._lookup) ------------------------------------------------------------
    def get_run(self, run_id):
        return self._lookup.get_run(run_id)

    def get_metric_history(self, run_id, metric_key, max_results=None, page_token=None):
        return self._lookup.get_metric_history(run_id, metric_key, max_results, page_token)

    def _search_runs(self, experiment_ids, filter_string, run_view_type, max_results, order_by, page_token):
        return self._lookup.search_runs(experiment_ids, filter_string, run_view_type, max_results, order_by,
                                        page_token)

    # ---- runs: writes ---------------------------------------------------------------------------------
    def update_run_info(self, run_id, run_status, end_time, run_name):
        _validate_run_id(run_id)
        status = _status_name(run_status)
        run = self._writable(run_id)
        with run._lock:
            run.info["status"] = status
            run.info["end_time"] = end_time
            if run_name:
                run.info["run_name"] = run_name
                run.info["tags"][MLFLOW_RUN_NAME] = run_name
            info = dict(run.info)
        run.publish_info()
        if status in TERMINAL_STATUSES:
            self._close(run, status)
        return run_entity(info, {}, {}).info

    def log_metric(self, run_id, metric):
        _validate_metric(metric.key, metric.value, metric.timestamp, metric.step)
        run = self._runs.get(run_id) or self._writable(run_id)
        run.log_points(((metric.key, metric.value, int(metric.timestamp), int(metric.step)),))

    def log_param(self, run_id, param):
        self.log_batch(run_id, [], [param], [])

    def set_tag(self, run_id, tag):
        self.log_batch(run_id, [], [], [tag])

    def delete_tag(self, run_id, key):
        run = self._writable(run_id)
        with run._lock:
            if key not in run.info["tags"]:
                raise MlflowException(f"No tag with name: {key} in run with id {run_id}", RESOURCE_DOES_NOT_EXIST)
            del run.info["tags"][key]
        run.publish_info()

    def log_batch(self, run_id, metrics, params, tags):
        _validate_run_id(run_id)
        metrics, params, tags = _validate_batch_log_data(metrics, params, tags)
        _validate_batch_log_limits(metrics, params, tags)
        _validate_param_keys_unique(params)
        params = [_validate_param(p.key, p.value) for p in params]
        run = self._runs.get(run_id)
        if run is None and params:  # an ended run: refused params must not reopen it for a new attempt
            _new_params(run_id, self._lookup.on_disk(run_id).params, params)
        run = run or self._writable(run_id)
        if params:
            new = _new_params(run_id, run.params, params)
            if new:
                run.set_params(new)
        if metrics:
            run.log_points([(m.key, m.value, int(m.timestamp), int(m.step)) for m in metrics])
        if tags:
            with run._lock:
                for tag in tags:
                    run.info["tags"][tag.key] = tag.value
                    if tag.key == MLFLOW_RUN_NAME:
                        run.info["run_name"] = tag.value
            run.publish_info()

    def delete_run(self, run_id):
        self._set_lifecycle(run_id, LifecycleStage.DELETED)

    def restore_run(self, run_id):
        self._set_lifecycle(run_id, LifecycleStage.ACTIVE)

    def _set_lifecycle(self, run_id: str, stage: str) -> None:
        run = self._runs.get(run_id)
        if run is None:
            loaded = self._lookup.on_disk(run_id)
            self._refuse_live_writer(loaded.run_dir, run_id)
            run = DoorRun.open(loaded.run_dir, loaded.info, True, detect(os.environ), self.settings,
                               self._terminal, params=loaded.params, latest=loaded.latest)
            self._runs[run_id] = run
        with run._lock:
            run.info["lifecycle_stage"] = stage
        run.publish_info()
        status = run.info.get("status")
        if status in TERMINAL_STATUSES:
            self._close(run, status)

    # ---- what the door does not record (docs/coming-from-mlflow.md) -----------------------------------
    def log_inputs(self, run_id, datasets=None, models=None):
        if datasets or models:
            self._terminal.warn_once("door-inputs", "MLflow dataset and model inputs (log_input) are not recorded "
                                     "by hpc:// runs (docs/coming-from-mlflow.md)")

    def log_outputs(self, run_id, models):
        self.log_inputs(run_id, models=models)

    def search_logged_models(self, experiment_ids, filter_string=None, datasets=None, max_results=None,
                             order_by=None, page_token=None):
        return PagedList([], None)  # logged models are not recorded: none to find

    def link_traces_to_run(self, trace_ids, run_id):
        raise MlflowException("traces are not recorded by hpc:// runs (docs/coming-from-mlflow.md)",
                              INVALID_PARAMETER_VALUE)
