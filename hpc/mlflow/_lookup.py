"""The tracking store's run reads: ``get_run``, ``get_metric_history`` and ``search_runs`` as MLflow entities.

A run this process writes is answered from memory (its metric history after a bounded flush), any other run
from its directory (:class:`~hpc.mlflow._read.DiskReader`, docs/run-format.md section 11), including runs other
processes (ranks) write under the same root. Composed by :class:`~hpc.mlflow._store.HpcTrackingStore`, which
shares its table of open runs with it; imported only when MLflow builds a store (mlflow is loaded)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from mlflow.entities import LifecycleStage, Metric, Param, Run, RunData, RunInfo, RunInputs, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.store.entities.paged_list import PagedList
from mlflow.utils.search_utils import SearchUtils
from mlflow.utils.validation import _validate_run_id

from .. import _format as fmt
from . import _layout as layout
from ._read import DiskReader, RunOnDisk
from ._run import DoorRun

__all__ = ["RunLookup", "run_entity"]


def run_entity(info: Dict[str, Any], params: Dict[str, str], latest: Dict[str, Any]) -> Run:
    run_info = RunInfo(run_id=info["run_id"], experiment_id=info["experiment_id"],
                       user_id=info.get("user_id") or "", status=info["status"],
                       start_time=info.get("start_time") or 0, end_time=info.get("end_time"),
                       lifecycle_stage=info.get("lifecycle_stage", LifecycleStage.ACTIVE),
                       artifact_uri=info.get("artifact_uri"), run_name=info.get("run_name"))
    data = RunData(metrics=[Metric(k, v, ts, step) for k, (step, ts, v) in latest.items()],
                   params=[Param(k, v) for k, v in params.items()],
                   tags=[RunTag(k, v) for k, v in (info.get("tags") or {}).items()])
    return Run(run_info, data, RunInputs(dataset_inputs=[]))


class RunLookup:
    """Finds runs by id under one root and reads them; ``runs`` is the store's own table of open runs."""

    def __init__(self, root: str, runs: Dict[str, DoorRun]):
        self.root = root
        self.disk = DiskReader()
        self._runs = runs
        self._dirs: Dict[str, str] = {}  # run id -> run directory, as found

    def remember(self, run_id: str, run_dir: str) -> None:
        self._dirs[run_id] = run_dir

    def _find_dir(self, run_id: str) -> Optional[str]:
        found = self._dirs.get(run_id)
        if found is not None:
            return found
        if not fmt.is_name(run_id):
            return None
        try:
            projects = [e.path for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return None
        for project in projects:
            candidate = os.path.join(project, run_id)
            if os.path.isfile(os.path.join(candidate, fmt.RUN_JSON)):
                self._dirs[run_id] = candidate
                return candidate
        return None

    def on_disk(self, run_id: str) -> RunOnDisk:
        _validate_run_id(run_id)
        run_dir = self._find_dir(run_id)
        loaded = self.disk.load(run_dir) if run_dir is not None else None
        if loaded is None:
            raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
        return loaded

    def get_run(self, run_id: str) -> Run:
        run = self._runs.get(run_id)
        if run is not None:
            with run._lock:
                return run_entity(dict(run.info), dict(run.params), dict(run.latest))
        loaded = self.on_disk(run_id)
        return run_entity(loaded.info, loaded.params, loaded.latest)

    def get_metric_history(self, run_id: str, metric_key: str, max_results: Any = None,
                           page_token: Any = None) -> PagedList:
        run = self._runs.get(run_id)
        if run is not None:
            run.flush()
            run_dir = run.run_dir
        else:
            run_dir = self.on_disk(run_id).run_dir
        points = [Metric(metric_key, v, ts, step) for step, ts, v in DiskReader.history(run_dir, metric_key)]
        if max_results is None:
            return PagedList(points[SearchUtils.parse_start_offset_from_page_token(page_token):], None)
        page, token = SearchUtils.paginate(points, page_token, max_results)
        return PagedList(page, token)

    def search_runs(self, experiment_ids: Any, filter_string: Any, run_view_type: Any, max_results: Any,
                    order_by: Any, page_token: Any) -> Tuple[List[Run], Any]:
        stages = LifecycleStage.view_type_to_stages(run_view_type)
        runs = []
        for experiment_id in experiment_ids:
            project = layout.experiment_dir(self.root, str(experiment_id))
            try:
                entries = sorted(os.scandir(project), key=lambda e: e.name) if project else []
            except OSError:
                continue
            for entry in entries:
                if not fmt.is_name(entry.name) or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    run = self.get_run(entry.name)
                except MlflowException:
                    continue  # not a door run (an hpc.init run of the same project), or unreadable now
                if run.info.experiment_id == str(experiment_id) and run.info.lifecycle_stage in stages:
                    self._dirs.setdefault(entry.name, entry.path)
                    runs.append(run)
        filtered = SearchUtils.filter(runs, filter_string)
        ordered = SearchUtils.sort(filtered, order_by)
        return SearchUtils.paginate(ordered, page_token, max_results)
