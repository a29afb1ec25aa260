"""The tracking store's experiments: MLflow experiments as hpc projects, each an ``experiment.json`` beside its
runs (docs/run-format.md section 11). Composed by :class:`~hpc.mlflow._store.HpcTrackingStore`, which answers
MLflow's experiment calls with the methods below; imported only when MLflow builds a store (mlflow is loaded)."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from mlflow.entities import Experiment, ExperimentTag, LifecycleStage, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_STATE, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST
from mlflow.store.entities.paged_list import PagedList
from mlflow.utils.search_utils import SearchExperimentsUtils, SearchUtils
from mlflow.utils.validation import _validate_experiment_name, _validate_experiment_tag

from . import _layout as layout

__all__ = ["Experiments", "now_ms", "storage_error"]


def now_ms() -> int:
    return int(time.time() * 1000)


def storage_error(store_uri: str, path: str, err: OSError) -> MlflowException:
    return MlflowException(f"cannot write {path}: {err.strerror or err}; check that the "
                           f"root of {store_uri} is a writable directory", INVALID_STATE)


def _entity(doc: Dict[str, Any]) -> Experiment:
    return Experiment(doc["experiment_id"], doc["name"], doc["artifact_location"], doc["lifecycle_stage"],
                      [ExperimentTag(k, v) for k, v in (doc.get("tags") or {}).items()],
                      doc.get("creation_time"), doc.get("last_update_time"))


class Experiments:
    """Every experiment under one root; ``Default`` (id ``"0"``) exists before it is first written."""

    def __init__(self, root: str, store_uri: str, artifact_root: Optional[str]):
        self.root = root
        self._store_uri = store_uri
        self._artifact_root = artifact_root

    # ---- reads ----------------------------------------------------------------------------------------
    def doc(self, experiment_id: str) -> Optional[Dict[str, Any]]:
        path = layout.experiment_dir(self.root, str(experiment_id))
        if path is None:
            return None
        doc = layout.read_experiment(path)
        if doc is None and str(experiment_id) == layout.DEFAULT_EXPERIMENT_ID:
            doc = self._new_doc(layout.DEFAULT_EXPERIMENT_NAME, layout.DEFAULT_EXPERIMENT_ID, None, [])
        return doc

    def _all_docs(self) -> List[Dict[str, Any]]:
        docs = {}
        for _, path in layout.list_experiment_dirs(self.root):
            doc = layout.read_experiment(path)
            if doc is not None:
                docs[doc["experiment_id"]] = doc
        if layout.DEFAULT_EXPERIMENT_ID not in docs:
            default = self.doc(layout.DEFAULT_EXPERIMENT_ID)
            if default is not None:
                docs[layout.DEFAULT_EXPERIMENT_ID] = default
        return list(docs.values())

    def search(self, view_type: Any = ViewType.ACTIVE_ONLY, max_results: Any = 1000, filter_string: Any = None,
               order_by: Any = None, page_token: Any = None) -> PagedList:
        stages = LifecycleStage.view_type_to_stages(view_type)
        experiments = [_entity(d) for d in self._all_docs() if d["lifecycle_stage"] in stages]
        filtered = SearchExperimentsUtils.filter(experiments, filter_string)
        ordered = SearchExperimentsUtils.sort(filtered, order_by or ["creation_time DESC", "experiment_id ASC"])
        page, token = SearchUtils.paginate(ordered, page_token, max_results)
        return PagedList(page, token)

    def get(self, experiment_id: Any) -> Experiment:
        doc = self.doc(str(experiment_id))
        if doc is None:
            raise MlflowException(f"No Experiment with id={experiment_id} exists", RESOURCE_DOES_NOT_EXIST)
        return _entity(doc)

    def get_by_name(self, experiment_name: str) -> Optional[Experiment]:
        if experiment_name == layout.DEFAULT_EXPERIMENT_NAME:
            return self.get(layout.DEFAULT_EXPERIMENT_ID)
        doc = layout.read_experiment(os.path.join(self.root, layout.project_dir(experiment_name)))
        if doc is None or doc["name"] != experiment_name:  # renamed experiments keep their directory
            doc = next((d for d in self._all_docs() if d["name"] == experiment_name), None)
        return None if doc is None else _entity(doc)

    # ---- writes ---------------------------------------------------------------------------------------
    def _new_doc(self, name: str, experiment_id: str, artifact_location: Optional[str],
                 tags: List[Any]) -> Dict[str, Any]:
        directory = layout.DEFAULT_EXPERIMENT_NAME if experiment_id == layout.DEFAULT_EXPERIMENT_ID else experiment_id
        location = artifact_location or (f"{self._artifact_root.rstrip('/')}/{directory}" if self._artifact_root
                                         else layout.uri_for_path(os.path.join(self.root, directory)))
        now = now_ms()
        return {"experiment_id": experiment_id, "name": name, "artifact_location": location,
                "lifecycle_stage": LifecycleStage.ACTIVE, "creation_time": now, "last_update_time": now,
                "tags": {t.key: t.value for t in tags}}

    def ensure_written(self, doc: Dict[str, Any]) -> None:
        path = layout.experiment_dir(self.root, doc["experiment_id"])
        if path is not None and layout.read_experiment(path) is None:
            self._write(path, doc)

    def _write(self, path: str, doc: Dict[str, Any]) -> None:
        try:
            layout.write_experiment(path, doc)
        except OSError as err:
            raise storage_error(self._store_uri, path, err) from err

    def create(self, name: str, artifact_location: Optional[str] = None, tags: Any = None) -> str:
        _validate_experiment_name(name)
        if self.get_by_name(name) is not None:
            raise MlflowException(f"Experiment '{name}' already exists.", RESOURCE_ALREADY_EXISTS)
        directory = layout.project_dir(name)
        taken = layout.read_experiment(os.path.join(self.root, directory))
        if taken is not None:  # only a name that is literally another name's encoded form
            raise MlflowException(f"Experiment '{name}' would share the directory {directory} with experiment "
                                  f"'{taken['name']}': choose another name", RESOURCE_ALREADY_EXISTS)
        for tag in tags or []:
            _validate_experiment_tag(tag.key, tag.value)
        doc = self._new_doc(name, layout.experiment_id_for(directory), artifact_location, tags or [])
        self._write(os.path.join(self.root, directory), doc)
        return str(doc["experiment_id"])

    def update(self, experiment_id: Any, **changes: Any) -> Dict[str, Any]:
        doc = self.doc(str(experiment_id))
        if doc is None:
            raise MlflowException(f"No Experiment with id={experiment_id} exists", RESOURCE_DOES_NOT_EXIST)
        doc.update(changes)
        doc["last_update_time"] = now_ms()
        path = layout.experiment_dir(self.root, str(experiment_id))
        assert path is not None
        self._write(path, doc)
        return doc

    def rename(self, experiment_id: Any, new_name: str) -> None:
        _validate_experiment_name(new_name)
        if self.get_by_name(new_name) is not None:
            raise MlflowException(f"Experiment '{new_name}' already exists.", RESOURCE_ALREADY_EXISTS)
        self.update(experiment_id, name=new_name)

    def set_tag(self, experiment_id: Any, tag: Any) -> None:
        _validate_experiment_tag(tag.key, tag.value)
        doc = self.doc(str(experiment_id))
        tags = dict((doc or {}).get("tags") or {})
        tags[tag.key] = tag.value
        self.update(experiment_id, tags=tags)

    def delete_tag(self, experiment_id: Any, key: str) -> None:
        doc = self.doc(str(experiment_id))
        tags = dict((doc or {}).get("tags") or {})
        if key not in tags:
            raise MlflowException(f"No tag with name: {key} in experiment with id {experiment_id}",
                                  RESOURCE_DOES_NOT_EXIST)
        del tags[key]
        self.update(experiment_id, tags=tags)
