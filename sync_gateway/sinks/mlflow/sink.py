"""The MLflow sink: plain REST calls (``/api/2.0/mlflow``) with ``requests``, not the mlflow client.

It owns every MLflow rule: key characters and lengths, units of system metrics (``_mlflow_names``),
config as immutable params, the summary as ``summary/<key>`` points at step 0, a run's state as MLflow's
RUNNING/FINISHED/FAILED/KILLED, a group as a parent run whose members nest under it, and its identifiers
(run id, experiment id, artifact URI) in the state the engine keeps for it.

Exactly once rests on two server facts (docs/facts.md): an identical metric point (key,
value, step, timestamp) is stored once, and an identical param value is accepted again. A server run is
found again by its tag ``hpc.run_id`` when the gateway's own state is lost.

One hpc run is one MLflow run: ``runs/create`` is never retried after a lost answer (the sink searches by
tag instead), and when a race between two gateways created two runs with one tag, every gateway that sees
them picks the same winner (the smallest MLflow run id: a total order, unlike start times, which are equal
for copies of one run) and marks the losers (tag ``hpc.duplicate_of``, moved to the trash); a gateway
whose run was marked moves to the winner and sends everything again. Values MLflow cannot store (a step or
timestamp outside int64, a negative timestamp, an integer beyond float) are skipped point by point and
counted, never sent: MLflow answers 200 to a step of 10**30 but stores 0 and drops the rest of the batch.
"""
from __future__ import annotations

import fnmatch
import logging
import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, BinaryIO, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

import requests

from sync_gateway.errors import ConfigError, FileTooLarge, RunDeleted, ServerError, ServerRefused, ServerUnavailable
from sync_gateway.records import MetricDef, Row, RunInfo, RunStatus, Summary
from sync_gateway.settings import AuthSettings, Settings
from sync_gateway.sinks._http import HttpClient
from sync_gateway.sinks.base import GroupView, RunSpec, Sink, SinkRun
from sync_gateway.sinks.mlflow._diagnose import mlflow_doctor, short
from sync_gateway.sinks.mlflow._names import (
    flatten_config,
    media_artifact_path,
    metric_key,
    metric_value,
    run_tags,
    system_metric,
    tag_value,
)
from sync_gateway.sinks.mlflow._rest import API, MlflowRest

__all__ = ["MlflowSink", "MlflowRun", "SYNC_TAG", "STATUS", "EXPERIMENT_KIND"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

SYNC_TAG = "hpc.run_id"
MAX_POINTS = 1000       # MLflow refuses a log-batch of more metrics (400)
MAX_PARAMS = 100        # ... params, tags
#: run state (docs/run-format.md section 7) -> MLflow run status
STATUS = {"active": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "preempted": "KILLED",
          "killed": "KILLED", "crashed": "KILLED"}
#: MLflow 3 opens a new experiment on its GenAI view unless this experiment tag says otherwise.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DUPLICATE_TAG = "hpc.duplicate_of"   # on a run that lost a creation race: the winner's run id
RETIRED_TAG = "hpc.retired"          # on a run whose files were rewritten from scratch: why
#: a server run is checked for duplicates until a check this long after adopting it found none
SETTLE_S = 60.0
INT64_MAX = (1 << 63) - 1


def _int64(v: Any, lo: int = -(1 << 63)) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= INT64_MAX


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
    unstorable_points: int = 0     # points MLflow cannot store (step/timestamp/value out of its range)
    adopted_ms: int = 0            # when this gateway created or found the run (its clock)
    settled: bool = False          # a check SETTLE_S after adoption found no duplicate

    def to_state(self) -> Dict[str, Any]:
        return asdict(self)


class MlflowSink(MlflowRest, Sink[Any, Any]):
    kind = "mlflow"
    options = ()
    config_change_note = "MLflow params cannot change, the new values are in the artifact hpc/config.json"

    def __init__(self, http: HttpClient, batch_points: int = MAX_POINTS):
        self.http = http
        self.batch_points = min(batch_points, MAX_POINTS)
        self._experiments: Dict[str, str] = {}
        self._with_images: set = set()  # runs whose mlflow.loggedImages tag is set (by this process)
        self._matchers: Dict[Tuple[MetricDef, ...], List[Tuple[Any, Optional[str]]]] = {}
        self._too_large_warned = False
        # The engine calls a sink from several threads (different runs at once): the caches above are
        # shared; an experiment is looked up or created by one thread at a time.
        self._lock = threading.Lock()
        self._experiment_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, environ: Optional[Mapping[str, str]] = None,
                      **http_kw: Any) -> MlflowSink:
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

    def _get_experiment(self, name: str) -> str:
        return self._call("GET", "/experiments/get-by-name", params={"experiment_name": name})["experiment"][
            "experiment_id"]

    def experiment_id(self, name: str) -> str:
        eid = self._experiments.get(name)  # known: no lock (a lookup of another one may be in flight)
        if eid is not None:
            return eid
        with self._experiment_lock:
            return self._experiment_id(name)

    def _experiment_id(self, name: str) -> str:
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
                if e2.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                eid = self._get_experiment(name)
        self._experiments[name] = eid
        return eid

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
    def _tagged(self, experiment_id: str, sync_id: str) -> List[Dict[str, Any]]:
        """Every run (deleted ones too) carrying the sync tag ``sync_id``: their ``info`` and tags."""
        quoted = sync_id.replace("\\", "\\\\").replace("'", "\\'")
        res = self._call("POST", "/runs/search", {"experiment_ids": [experiment_id], "max_results": 100,
                                                  "run_view_type": "ALL",
                                                  "filter": f"tags.`{SYNC_TAG}` = '{quoted}'"})
        out = []
        for r in res.get("runs") or []:
            info = dict(r["info"])
            info["tags"] = {t["key"]: t.get("value", "") for t in (r.get("data") or {}).get("tags", [])}
            out.append(info)
        return out

    def _converge(self, experiment_id: str, sync_id: str, found: List[Dict[str, Any]]) -> Optional[MlflowRun]:
        """The one run of ``sync_id`` among ``found``: the active run with the smallest run id (a total
        order every gateway computes alike); the other active ones are marked as its duplicates."""
        active = sorted((r for r in found if r.get("lifecycle_stage", "active") == "active"),
                        key=lambda r: r["run_id"])
        if not active:
            return None
        win = active[0]
        for loser in active[1:]:
            log.warning("%s: MLflow runs %s and %s both carry %s=%s (two gateways raced to create it): "
                        "keeping %s, marking %s as its duplicate", sync_id, win["run_id"], loser["run_id"],
                        SYNC_TAG, sync_id, win["run_id"], loser["run_id"])
            self._mark_duplicate(loser["run_id"], win["run_id"], sync_id)
        return MlflowRun(win["run_id"], experiment_id, win.get("artifact_uri", ""))

    def _mark_duplicate(self, run_id: str, winner: str, sync_id: str) -> None:
        try:
            self._set_tags(run_id, {DUPLICATE_TAG: winner, SYNC_TAG: f"duplicate:{sync_id}"})
            self._call("POST", "/runs/delete", {"run_id": run_id})  # to the trash; the winner gets it all
        except RunDeleted:
            pass  # another gateway marked it first

    def find(self, experiment_id: str, sync_id: str) -> Optional[MlflowRun]:
        """The server run of ``sync_id``, None if there is none; raises RunDeleted when a user deleted it."""
        found = self._tagged(experiment_id, sync_id)
        run = self._converge(experiment_id, sync_id, found)
        if run is None and any(not r["tags"].get(DUPLICATE_TAG) for r in found):
            raise RunDeleted(f"the MLflow run of {sync_id} was deleted on the server: it is not synced "
                             f"(restore it from the MLflow trash to sync it again)")
        return run

    def _find_or_create(self, project: str, sync_id: str, name: str, start_ms: int,
                        tags: Mapping[str, str]) -> MlflowRun:
        eid = self.experiment_id(project)
        found = self.find(eid, sync_id)
        if found:
            found.adopted_ms = _now_ms()
            return found
        body: Dict[str, Any] = {"experiment_id": eid, "run_name": name,
                                "tags": [{"key": k, "value": v} for k, v in {**tags, SYNC_TAG: sync_id}.items()]}
        if _int64(start_ms, 1):  # else (0, garbage in run.json) the server takes its own clock
            body["start_time"] = start_ms
        try:
            # Not idempotent: a retry after a lost answer would create a second run. Search instead.
            res = self._call("POST", "/runs/create", body, idempotent=False)
        except ServerError as e:
            if not e.retryable:
                raise
            again = self.find(eid, sync_id)
            if again is None:
                raise
            log.info("%s: the answer to runs/create was lost; found the run it created by its tag", sync_id)
            again.adopted_ms = _now_ms()
            return again
        info = res["run"]["info"]
        # Another gateway may have raced us between search and create: converge at once on the winner.
        run = self._converge(eid, sync_id, self._tagged(eid, sync_id)) or \
            MlflowRun(info["run_id"], eid, info.get("artifact_uri", ""))
        run.adopted_ms = _now_ms()
        return run

    def open_run(self, spec: RunSpec, saved: Optional[Mapping[str, Any]]) -> MlflowRun:
        if saved and saved.get("run_id"):
            run = self.restore(saved)
            if not run.settled:
                self._check_duplicates(spec.sync_id, run)
            return run
        info = spec.info
        return self._find_or_create(info.project, spec.sync_id, info.name, info.created_ms, run_tags(info))

    def _check_duplicates(self, sync_id: str, run: MlflowRun) -> None:
        """A run created in a race may have a twin that another gateway created at the same moment: look
        until a look at least SETTLE_S after adopting the run found none."""
        win = self._converge(run.experiment_id, sync_id, self._tagged(run.experiment_id, sync_id))
        if win is None or win.run_id == run.run_id:
            run.settled = _now_ms() - run.adopted_ms >= SETTLE_S * 1000
            return
        # Ours lost (marked just now, or by the other gateway): move to the winner, send everything again.
        reason = (f"MLflow run {run.run_id} duplicated {win.run_id} (two gateways created it at once); "
                  f"syncing into {win.run_id}, the old one is marked {DUPLICATE_TAG} and in the trash")
        run.__dict__.update(MlflowRun(win.run_id, run.experiment_id, win.artifact_uri,
                                      adopted_ms=_now_ms()).__dict__)
        run.replaced = reason

    def retire_run(self, run: SinkRun, reason: str) -> None:
        assert isinstance(run, MlflowRun)
        try:
            cur = self._call("GET", "/runs/get", params={"run_id": run.run_id})["run"]
            tags = {t["key"]: t.get("value", "") for t in cur.get("data", {}).get("tags", [])}
            sync_id = tags.get(SYNC_TAG, "")
            if sync_id.startswith("retired:"):
                return
            name = tags.get("mlflow.runName") or cur["info"].get("run_name", "")
            self._set_tags(run.run_id, {SYNC_TAG: f"retired:{_now_ms()}:{sync_id}", RETIRED_TAG: tag_value(reason),
                                        "mlflow.runName": tag_value(f"{name} (replaced)")})
        except RunDeleted:
            pass  # deleted by a user: nothing to detach

    def restore(self, saved: Mapping[str, Any]) -> MlflowRun:
        return MlflowRun(**{k: v for k, v in saved.items() if k in MlflowRun.__dataclass_fields__})

    @classmethod
    def notes(cls, saved: Mapping[str, Any]) -> List[str]:
        out = []
        if saved.get("unstorable_points"):
            out.append(f"{saved['unstorable_points']} points MLflow cannot store skipped (step or timestamp "
                       f"outside int64, negative timestamp, integer beyond float)")
        if saved.get("skipped_values"):
            out.append(f"{saved['skipped_values']} values that are not metrics skipped (strings, lists)")
        return out

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
        with self._lock:
            if key not in self._matchers:
                self._matchers[key] = [(re.compile(fnmatch.translate(m.pattern)).match, m.step_metric)
                                       for m in metrics]
            return self._matchers[key]

    def _points(self, run: MlflowRun, row: Row, system: bool,
                rules: List[Tuple[Any, Optional[str]]]) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        row_ok = _int64(row.step) and _int64(row.ts_ms, 0)  # MLflow: int64 steps, non-negative timestamps
        for k, v in row.values.items():
            try:
                val = metric_value(v)
            except OverflowError:   # an integer beyond float (10**400): MLflow cannot store it
                run.unstorable_points += 1
                continue
            if val is None:
                run.skipped_values += 1
                continue
            if not row_ok:
                run.unstorable_points += 1
                continue
            if system:
                mkey, factor = system_metric(k)
                out.append({"key": mkey, "value": _num(val * factor), "timestamp": row.ts_ms, "step": row.step})
                continue
            step: Optional[int] = row.step
            for match, step_metric in rules:  # define_metric: the first matching declaration wins
                if match(k):
                    sv = row.values.get(step_metric) if step_metric else None
                    if isinstance(sv, (int, float)) and not isinstance(sv, bool):
                        if isinstance(sv, float) and not math.isfinite(sv) or not -2.0**63 <= sv < 2.0**63:
                            step = None  # a non-finite or out-of-range x-axis value: not storable
                        else:
                            step = int(sv)
                    break
            if step is None:
                run.unstorable_points += 1
                continue
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
            self._send_points(run.run_id, payload)
        return len(payload)

    def set_summary(self, run: SinkRun, summary: Summary) -> None:
        """Keys whose summary differs from the last logged value become ``summary/<key>`` points at step 0
        (non-numeric ones: ``summary.<key>`` tags); the others are the metrics' own last values."""
        assert isinstance(run, MlflowRun)
        pts, tags = [], {}
        for k in summary.special:
            try:
                v = metric_value(summary.values[k])
            except OverflowError:
                v = None  # an integer beyond float: kept as a tag, exactly
            if v is None:
                tags["summary." + metric_key(k)] = tag_value(summary.values[k])
            else:
                pts.append({"key": metric_key("summary/" + k), "value": _num(v), "timestamp": summary.version_ms,
                            "step": 0})
        for i in range(0, len(pts), self.batch_points):
            self._send_points(run.run_id, pts[i:i + self.batch_points])
        if tags:
            self._set_tags(run.run_id, tags)

    def upload(self, run: SinkRun, path: str, body: BinaryIO, size_bytes: int) -> None:
        assert isinstance(run, MlflowRun)
        path, image = media_artifact_path(path, run.run_id)
        with self._lock:
            tag = image and run.run_id not in self._with_images
        if tag:  # the tag log_image sets: the UI shows an Images view
            self._set_tags(run.run_id, {"mlflow.loggedImages": "true"})
            with self._lock:
                self._with_images.add(run.run_id)
        prefix = run.artifact_uri
        if not prefix.startswith("mlflow-artifacts:/"):
            raise ServerRefused(f"run {run.run_id} stores artifacts at {prefix!r}, not through the server's "
                              f"proxy; start the server with --serve-artifacts")
        rel = prefix[len("mlflow-artifacts:/"):].lstrip("/") + "/" + path
        # Streamed from ``body`` (urllib3 rewinds it for a retry); a PUT replaces the object.
        try:
            self._call("PUT", "/api/2.0/mlflow-artifacts/artifacts/" + quote(rel), data=body, size_bytes=size_bytes)
        except ServerError as e:
            if e.status != 413:
                raise
            raise FileTooLarge(f"{path} ({size_bytes / 1e6:,.1f} MB) was refused as too large (HTTP 413) by the "
                               f"server or a proxy before it: raise its body limit (nginx: client_max_body_size) "
                               f"to upload it", 413) from e

    def set_state(self, run: SinkRun, status: RunStatus) -> None:
        assert isinstance(run, MlflowRun)
        end = None if status.state == "active" or not _int64(status.end_ms, 0) else status.end_ms
        self._update(run.run_id, STATUS[status.state], end)
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

    def before_pass(self) -> None:
        self.http.warn_if_insecure()

    # -- diagnostics and links ----------------------------------------------------------------
    def server_version(self) -> str:
        try:
            r = self.http.request("GET", "/version")
        except requests.exceptions.RequestException as e:
            raise ServerUnavailable(f"cannot reach {self.http.base_url}: {short(e)}") from e
        return r.text.strip() if r.ok else f"unknown (GET /version -> HTTP {r.status_code})"

    def doctor(self, add: Any) -> None:
        mlflow_doctor(self.http, API, add)

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


def _now_ms() -> int:
    return int(time.time() * 1000)
