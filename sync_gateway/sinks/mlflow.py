"""The MLflow sink: plain REST calls (``/api/2.0/mlflow``) with ``requests``, not the mlflow client.

It owns every MLflow rule: key characters and lengths, units of system metrics (``_mlflow_names``),
config as immutable params, the summary as ``summary/<key>`` points at step 0, a run's state as MLflow's
RUNNING/FINISHED/FAILED/KILLED, a group as a parent run whose members nest under it, and its identifiers
(run id, experiment id, artifact URI) in the state the engine keeps for it.

Exactly once rests on two server facts (docs/facts.md): an identical metric point (key,
value, step, timestamp) is stored once, and an identical param value is accepted again. A server run is
found again by its tag ``hpc.run_id`` when the gateway's own state is lost.
"""
from __future__ import annotations

import fnmatch
import logging
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

import requests

from .._http import HttpClient
from .._settings import AuthSettings, Settings
from ..errors import ConfigError, ServerError
from ..readers.base import MetricDef, RunInfo, RunStatus, Row, Summary
from ._mlflow_names import (flatten_config, media_artifact_path, metric_key, metric_value, run_tags,
                            system_metric, tag_value)
from .base import GroupView, RunSpec, Sink, SinkRun

__all__ = ["MlflowSink", "MlflowRun", "SYNC_TAG", "STATUS", "EXPERIMENT_KIND"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

API = "/api/2.0/mlflow"
SYNC_TAG = "hpc.run_id"
MAX_POINTS = 1000       # MLflow refuses a log-batch of more metrics (400)
MAX_PARAMS = 100        # ... params, tags
#: run state (docs/run-format.md section 7) -> MLflow run status
STATUS = {"active": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "preempted": "KILLED",
          "killed": "KILLED", "crashed": "KILLED"}
#: MLflow 3 opens a new experiment on its GenAI view unless this experiment tag says otherwise.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _num(v: float) -> Any:
    # Protobuf's JSON mapping spells non-finite doubles as these strings; plain JSON has no literal.
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


@dataclass
class MlflowRun(SinkRun):
    run_id: str
    experiment_id: str
    artifact_uri: str = ""
    params: Dict[str, str] = field(default_factory=dict)     # what the server holds (params are immutable)
    refused_params: List[str] = field(default_factory=list)  # config keys whose change MLflow refused
    skipped_values: int = 0                                  # logged values that are not metrics (strings)

    def to_state(self) -> Dict[str, Any]:
        return asdict(self)


class MlflowSink(Sink):
    kind = "mlflow"
    options = ()
    config_change_note = "MLflow params cannot change, the new values are in the artifact hpc/config.json"

    def __init__(self, http: HttpClient, batch_points: int = MAX_POINTS):
        self.http = http
        self.batch_points = min(batch_points, MAX_POINTS)
        self._experiments: Dict[str, str] = {}
        self._with_images: set = set()  # runs whose mlflow.loggedImages tag is set (by this process)
        self._matchers: Dict[Tuple[MetricDef, ...], List[Tuple[Any, Optional[str]]]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, environ: Optional[Mapping[str, str]] = None,
                      **http_kw: Any) -> "MlflowSink":
        return cls(HttpClient(settings, environ, **http_kw), settings.batch_points)

    # -- configuration: MLflow's own variables, so an existing MLflow setup needs nothing new ----------
    @classmethod
    def settings_from_environ(cls, settings: Settings, environ: Mapping[str, str]) -> Settings:
        upd: Dict[str, Any] = {}
        url = environ.get("MLFLOW_TRACKING_URI")
        if not settings.server_url and url and url.startswith(("http://", "https://")):
            upd["server_url"] = url
        if settings.auth == AuthSettings():
            upd["auth"] = AuthSettings(
                token_env="MLFLOW_TRACKING_TOKEN" if environ.get("MLFLOW_TRACKING_TOKEN") else None,
                username=environ.get("MLFLOW_TRACKING_USERNAME"),
                password_env="MLFLOW_TRACKING_PASSWORD" if environ.get("MLFLOW_TRACKING_PASSWORD") else None)
        if environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            upd["tls"] = replace(settings.tls, insecure=True)
        return replace(settings, **upd)

    @classmethod
    def validate(cls, settings: Settings) -> None:
        if not 1 <= settings.batch_points <= MAX_POINTS:
            raise ConfigError(f"batch_points must be an integer from 1 to {MAX_POINTS} (MLflow's limit), "
                              f"not {settings.batch_points!r}")

    # -- plumbing -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Optional[dict] = None, params: Optional[dict] = None,
              data: Optional[bytes] = None) -> Dict[str, Any]:
        try:
            if data is not None:
                r = self.http.request(method, path, data=data,
                                      headers={"Content-Type": "application/octet-stream"})
            else:
                r = self.http.request(method, API + path, json=body, params=params)
        except requests.exceptions.SSLError as e:
            raise ServerError(
                f"TLS: cannot verify {self.http.base_url} with the CAs from {self.http.tls.source} ({_reason(e)}). "
                f"If the server uses a private CA, set tls.ca_bundle to that CA's PEM file; "
                f"`sync-gateway doctor` names the issuer", retryable=False) from e
        except requests.exceptions.RequestException as e:
            raise ServerError(f"cannot reach {self.http.base_url} (after {self.http.retries} retries): "
                              f"{_short(e)}", retryable=True) from e
        if r.status_code >= 400:
            try:
                err = r.json()
                msg = f"{err.get('error_code', '')}: {err.get('message', '')}"
            except ValueError:
                err, msg = {}, r.text[:300]
            retry = r.status_code in (429,) or r.status_code >= 500
            if r.status_code in (401, 403):
                msg += " (check the auth section of the config)"
            e = ServerError(f"{method} {path} -> HTTP {r.status_code} {msg}", r.status_code, retry)
            e.error_code = err.get("error_code", "") if isinstance(err, dict) else ""  # type: ignore
            raise e
        try:
            return r.json() if r.content else {}
        except ValueError:
            return {}

    def _get_experiment(self, name: str) -> str:
        return self._call("GET", "/experiments/get-by-name", params={"experiment_name": name})["experiment"][
            "experiment_id"]

    def experiment_id(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        try:
            eid = self._get_experiment(name)
        except ServerError as e:
            if e.status != 404:
                raise
            try:
                eid = self._call("POST", "/experiments/create", {
                    "name": name, "tags": [{"key": EXPERIMENT_KIND[0], "value": EXPERIMENT_KIND[1]}]})["experiment_id"]
            except ServerError as e2:  # another gateway created it meanwhile
                if getattr(e2, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise
                eid = self._get_experiment(name)
        self._experiments[name] = eid
        return eid

    def _log_batch(self, run_id: str, **lists: List[Dict[str, Any]]) -> None:
        self._call("POST", "/runs/log-batch", {"run_id": run_id, **lists})

    def _set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = list(tags.items())
        for i in range(0, len(items), MAX_PARAMS):
            self._log_batch(run_id, tags=[{"key": k, "value": v} for k, v in items[i:i + MAX_PARAMS]])

    def _update(self, run_id: str, status: str, end_ms: Optional[int]) -> None:
        body: Dict[str, Any] = {"run_id": run_id, "status": status}
        if end_ms is not None:
            body["end_time"] = end_ms
        self._call("POST", "/runs/update", body)

    # -- runs ---------------------------------------------------------------------------------
    def find(self, experiment_id: str, sync_id: str) -> Optional[MlflowRun]:
        quoted = sync_id.replace("\\", "\\\\").replace("'", "\\'")
        res = self._call("POST", "/runs/search", {"experiment_ids": [experiment_id], "max_results": 2,
                                                  "filter": f"tags.`{SYNC_TAG}` = '{quoted}'"})
        runs = res.get("runs") or []
        if not runs:
            return None
        if len(runs) > 1:
            log.warning("%d MLflow runs carry %s=%s; syncing into the oldest", len(runs), SYNC_TAG, sync_id)
            runs.sort(key=lambda r: int(r["info"].get("start_time", 0)))
        info = runs[0]["info"]
        return MlflowRun(info["run_id"], experiment_id, info.get("artifact_uri", ""))

    def _find_or_create(self, project: str, sync_id: str, name: str, start_ms: int,
                        tags: Mapping[str, str]) -> MlflowRun:
        eid = self.experiment_id(project)
        found = self.find(eid, sync_id)
        if found:
            return found
        res = self._call("POST", "/runs/create", {
            "experiment_id": eid, "run_name": name, "start_time": start_ms,
            "tags": [{"key": k, "value": v} for k, v in {**tags, SYNC_TAG: sync_id}.items()]})
        info = res["run"]["info"]
        return MlflowRun(info["run_id"], eid, info.get("artifact_uri", ""))

    def open_run(self, spec: RunSpec, saved: Optional[Mapping[str, Any]]) -> MlflowRun:
        if saved and saved.get("run_id"):
            return self.restore(saved)
        info = spec.info
        return self._find_or_create(info.project, spec.sync_id, info.name, info.created_ms, run_tags(info))

    def restore(self, saved: Mapping[str, Any]) -> MlflowRun:
        return MlflowRun(**{k: v for k, v in saved.items() if k in MlflowRun.__dataclass_fields__})

    def set_metadata(self, run: SinkRun, info: RunInfo) -> None:
        assert isinstance(run, MlflowRun)
        self._set_tags(run.run_id, run_tags(info))

    def set_config(self, run: SinkRun, config: Mapping[str, Any]) -> List[str]:
        assert isinstance(run, MlflowRun)
        params = dict(flatten_config(dict(config)))
        new = {k: v for k, v in params.items() if run.params.get(k) != v}
        fresh = {k: v for k, v in new.items() if k not in run.params}
        changed = sorted(k for k in new if k in run.params)
        refused = self._log_params(run, fresh) if fresh else {}
        for k, v in fresh.items():
            run.params[k] = refused.get(k, v)
        run.refused_params = sorted(set(run.refused_params) | set(changed) | set(refused))
        return sorted(set(changed) | set(refused))

    def _log_params(self, run: MlflowRun, params: Dict[str, str]) -> Dict[str, str]:
        items = list(params.items())
        refused: Dict[str, str] = {}
        for i in range(0, len(items), MAX_PARAMS):
            chunk = items[i:i + MAX_PARAMS]
            try:
                self._log_batch(run.run_id, params=[{"key": k, "value": v} for k, v in chunk])
            except ServerError as e:
                if e.status != 400:
                    raise
                # A param that already holds another value cannot change (MLflow params are immutable):
                # send only the new keys, and report the changed ones.
                kept = self._params(run)
                new = [(k, v) for k, v in chunk if k not in kept]
                refused.update({k: kept[k] for k, v in chunk if k in kept and kept[k] != v})
                if new:
                    self._log_batch(run.run_id, params=[{"key": k, "value": v} for k, v in new])
        return refused

    def _params(self, run: MlflowRun) -> Dict[str, str]:
        res = self._call("GET", "/runs/get", params={"run_id": run.run_id})
        return {p["key"]: p.get("value", "") for p in res["run"].get("data", {}).get("params", [])}

    # -- points -------------------------------------------------------------------------------
    def _rules(self, metrics: Sequence[MetricDef]) -> List[Tuple[Any, Optional[str]]]:
        key = tuple(metrics)
        if key not in self._matchers:
            self._matchers[key] = [(re.compile(fnmatch.translate(m.pattern)).match, m.step_metric) for m in metrics]
        return self._matchers[key]

    def _points(self, run: MlflowRun, row: Row, system: bool,
                rules: List[Tuple[Any, Optional[str]]]) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        for k, v in row.values.items():
            val = metric_value(v)
            if val is None:
                run.skipped_values += 1
                continue
            if system:
                mkey, factor = system_metric(k)
                out.append({"key": mkey, "value": _num(val * factor), "timestamp": row.ts_ms, "step": row.step})
                continue
            step = row.step
            for match, step_metric in rules:  # define_metric: the first matching declaration wins
                if match(k):
                    sv = row.values.get(step_metric) if step_metric else None
                    if isinstance(sv, (int, float)) and not isinstance(sv, bool) and sv == sv:
                        step = int(sv)
                    break
            out.append({"key": metric_key(k), "value": _num(val), "timestamp": row.ts_ms, "step": step})
        return out

    def batches(self, run: SinkRun, stream: str, rows: Sequence[Row],
                metrics: Sequence[MetricDef] = ()) -> Iterator[Tuple[int, Any]]:
        assert isinstance(run, MlflowRun)
        system = stream == "system"
        rules = [] if system else self._rules(metrics)
        limit = self.batch_points
        batch: List[Dict[str, Any]] = []
        for i, row in enumerate(rows):
            pts = self._points(run, row, system, rules)
            if batch and len(batch) + len(pts) > limit:
                yield i, batch
                batch = []
            while len(pts) > limit:  # a row wider than a batch: it is covered only by its last piece
                yield i, pts[:limit]
                pts = pts[limit:]
            batch.extend(pts)
        if batch:
            yield len(rows), batch

    def send(self, run: SinkRun, payload: Any) -> int:
        assert isinstance(run, MlflowRun)
        if payload:
            self._log_batch(run.run_id, metrics=payload)
        return len(payload)

    def set_summary(self, run: SinkRun, summary: Summary) -> None:
        """Keys whose summary differs from the last logged value become ``summary/<key>`` points at step 0
        (non-numeric ones: ``summary.<key>`` tags); the others are the metrics' own last values."""
        assert isinstance(run, MlflowRun)
        pts, tags = [], {}
        for k in summary.special:
            v = metric_value(summary.values[k])
            if v is None:
                tags["summary." + metric_key(k)] = tag_value(summary.values[k])
            else:
                pts.append({"key": metric_key("summary/" + k), "value": _num(v), "timestamp": summary.version_ms,
                            "step": 0})
        for i in range(0, len(pts), self.batch_points):
            self._log_batch(run.run_id, metrics=pts[i:i + self.batch_points])
        if tags:
            self._set_tags(run.run_id, tags)

    def upload(self, run: SinkRun, path: str, data: bytes) -> None:
        assert isinstance(run, MlflowRun)
        path, image = media_artifact_path(path, run.run_id)
        if image and run.run_id not in self._with_images:  # the tag log_image sets: the UI shows an Images view
            self._set_tags(run.run_id, {"mlflow.loggedImages": "true"})
            self._with_images.add(run.run_id)
        prefix = run.artifact_uri
        if not prefix.startswith("mlflow-artifacts:/"):
            raise ServerError(f"run {run.run_id} stores artifacts at {prefix!r}, not through the server's "
                              f"proxy; start the server with --serve-artifacts", retryable=False)
        rel = prefix[len("mlflow-artifacts:/"):].lstrip("/") + "/" + path
        self._call("PUT", "/api/2.0/mlflow-artifacts/artifacts/" + quote(rel), data=data)

    def set_state(self, run: SinkRun, status: RunStatus) -> None:
        assert isinstance(run, MlflowRun)
        self._update(run.run_id, STATUS[status.state], None if status.state == "active" else status.end_ms)
        self._set_tags(run.run_id, {"hpc.state": status.state})

    # -- groups: a parent run spanning its members, which nest under it ------------------------------
    def sync_group(self, group: GroupView, saved: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        gs: Dict[str, Any] = dict(saved or {})
        if not group.members:
            return gs
        states = [m.state for m in group.members]
        status = next(s for s in ("RUNNING", "FAILED", "KILLED", "FINISHED")
                      if s == "FINISHED" or s in {STATUS[x] for x in states})
        ends = [m.end_ms for m in group.members]
        end = None if status == "RUNNING" or None in ends else max(e for e in ends if e is not None)
        if gs.get("run_id"):
            parent = self.restore(gs["parent"])
        else:
            # MLflow cannot move a run's start later: the parent starts with the earliest member known now.
            start = min(m.start_ms for m in group.members)
            parent = self._find_or_create(group.project, f"group:{group.project}/{group.name}", group.name, start,
                                          {"hpc.group": tag_value(group.name),
                                           "mlflow.runName": tag_value(group.name)})
            gs.update(run_id=parent.run_id, parent=parent.to_state(), members=[], status=None, end_ms=None)
        for m in group.members:
            if m.key not in gs["members"]:
                assert isinstance(m.run, MlflowRun)
                self._set_tags(m.run.run_id, {"mlflow.parentRunId": parent.run_id})
                gs["members"] = sorted(set(gs["members"]) | {m.key})
        if (gs.get("status"), gs.get("end_ms")) != (status, end):
            self._update(parent.run_id, status, end)
            gs.update(status=status, end_ms=end)
        return gs

    # -- diagnostics and links ----------------------------------------------------------------
    def server_version(self) -> str:
        try:
            r = self.http.request("GET", "/version")
        except requests.exceptions.RequestException as e:
            raise ServerError(f"cannot reach {self.http.base_url}: {_short(e)}", retryable=True) from e
        return r.text.strip() if r.ok else f"unknown (GET /version -> HTTP {r.status_code})"

    def doctor(self, add: Any) -> None:
        r = self.http.request("GET", "/version")
        add(r.ok, "server", f"MLflow {r.text.strip()}" if r.ok else f"GET /version -> HTTP {r.status_code}")
        r = self.http.request("POST", API + "/experiments/search", json={"max_results": 1})
        auth = self.http.auth_desc
        if r.status_code in (401, 403):
            add(False, "auth", f"HTTP {r.status_code}: the server refused the credentials from {auth}")
        else:
            add(r.ok, "auth", f"{auth} accepted" if r.ok else f"HTTP {r.status_code}: {r.text[:200]}")

    def run_url(self, run: SinkRun) -> str:
        assert isinstance(run, MlflowRun)
        return f"{self.http.base_url}/#/experiments/{run.experiment_id}/runs/{run.run_id}"

    def experiment_url(self, run: SinkRun) -> str:
        assert isinstance(run, MlflowRun)
        return f"{self.http.base_url}/#/experiments/{run.experiment_id}"

    def get_history(self, run: MlflowRun, key: str) -> List[Dict[str, Any]]:
        """Every stored point of ``key`` (used by tests and ``status``)."""
        out: List[Dict[str, Any]] = []
        token = None
        while True:
            params = {"run_id": run.run_id, "metric_key": key, "max_results": 25000}
            if token:
                params["page_token"] = token
            res = self._call("GET", "/metrics/get-history", params=params)
            out.extend(res.get("metrics", []))
            token = res.get("next_page_token")
            if not token:
                return out

    def close(self) -> None:
        self.http.session.close()


def _short(e: Exception) -> str:
    """The useful end of urllib3's nested message ("[Errno 111] Connection refused", "Read timed out")."""
    text = str(e)
    m = re.search(r"\[Errno -?\d+\][^'\")]*", text) or re.search(r"(Read|Connect) timed out[^'\")]*", text)
    return m.group(0).strip() if m else f"{e.__class__.__name__}: {text[:200]}"


def _reason(e: Exception) -> str:
    text = str(e)
    for marker in ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "WRONG_VERSION_NUMBER"):
        i = text.find(marker)
        if i >= 0:
            return text[i:].split("'")[0].split('"')[0].rstrip(" )")
    return text[:200]
