"""The MLflow sink: plain REST calls (``/api/2.0/mlflow``) with ``requests``, not the mlflow client.

It owns every MLflow rule: key characters and lengths, units of system metrics (``_names``, ``_points``),
config as immutable params, the summary as ``summary/<key>`` points at step 0, a run's state as MLflow's
RUNNING/FINISHED/FAILED/KILLED, a group as a parent run whose members nest under it, and its identifiers
(run id, experiment id, artifact URI) in the state the engine keeps for it.

Exactly once rests on two server facts (docs/facts.md): an identical metric point (key,
value, step, timestamp) is stored once, and an identical param value is accepted again. A server run is
found again by its tag ``hpc.run_id`` when the gateway's own state is lost.

Its parts: the REST client (``_rest.MlflowRest``, composed as ``self.rest``), runs by sync id (``_runs.Runs``:
find, create once, converge), rows to points (``_points.Points``), MLflow's environment variables
(``_config``), diagnostics (``_diagnose``).

One hpc run is one MLflow run: ``runs/create`` is sent again only when a search by its tag proves the last
one created nothing, and when a race between two gateways created two runs with one tag, every gateway that sees
them picks the same winner (the smallest MLflow run id: a total order, unlike start times, which are equal
for copies of one run) and marks the losers (tag ``hpc.duplicate_of``, moved to the trash); a gateway
whose run was marked moves to the winner and sends everything again. Values MLflow cannot store are
skipped point by point and counted (``_points``).
"""
from __future__ import annotations

import contextlib
import io
import threading
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, cast
from urllib.parse import quote

import requests

from sync_gateway.errors import ConfigError, FileTooLarge, ServerError, ServerRefused, ServerUnavailable
from sync_gateway.records import MetricDef, Row, RunInfo, RunStatus, Summary
from sync_gateway.settings import Settings
from sync_gateway.sinks._http import HttpClient
from sync_gateway.sinks.base import GroupView, RunSpec, Sink
from sync_gateway.sinks.mlflow import _config, _held, _media
from sync_gateway.sinks.mlflow._diagnose import mlflow_doctor, short
from sync_gateway.sinks.mlflow._names import PARENT_TAG, flatten_config, metric_key, metric_value, run_tags, tag_value
from sync_gateway.sinks.mlflow._points import MAX_POINTS, Point, Points, int64, num
from sync_gateway.sinks.mlflow._rest import API, DUPLICATE_TAG, MAX_PARAMS, SYNC_TAG, MlflowRest
from sync_gateway.sinks.mlflow._runs import EXPERIMENT_KIND, RETIRED_TAG, SETTLE_S, MlflowRun, Runs, tags_digest

__all__ = ["MlflowSink", "MlflowRun", "SYNC_TAG", "STATUS", "EXPERIMENT_KIND", "DUPLICATE_TAG", "RETIRED_TAG",
           "SETTLE_S", "MAX_POINTS"]

#: run state (docs/run-format.md section 7) -> MLflow run status
STATUS = {"active": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "preempted": "KILLED",
          "killed": "KILLED", "crashed": "KILLED"}


class MlflowSink(Sink[MlflowRun, List[Point]]):
    kind = "mlflow"
    options = ()
    config_change_note = "MLflow params cannot change, the new values are in the artifact hpc/config.json"

    def __init__(self, http: HttpClient, batch_points: int = MAX_POINTS):
        self.rest = MlflowRest(http, min(batch_points, MAX_POINTS))
        self.runs = Runs(self.rest)
        self.points = Points()
        self._lock = threading.Lock()   # the engine calls a sink from several threads (different runs at once)
        self._open_locks: Dict[str, threading.Lock] = {}

    @property
    def http(self) -> HttpClient:
        return self.rest.http

    def _call(self, *args: Any, **kw: Any) -> Dict[str, Any]:
        """One REST call (``MlflowRest.call``): what tests and tools read the server through."""
        return self.rest.call(*args, **kw)

    # -- configuration ------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings, environ: Optional[Mapping[str, str]] = None,
                      **http_kw: Any) -> MlflowSink:
        if not settings.server_url:
            raise ConfigError(_config.no_url_message(environ or {}))
        return cls(HttpClient(settings, environ, **http_kw), settings.batch_points)

    @classmethod
    def settings_from_environ(cls, settings: Settings, environ: Mapping[str, str]) -> Settings:
        """MLflow's own variables (``MLFLOW_TRACKING_URI``, ``_TOKEN``, ``_SERVER_CERT_PATH``...: ``_config``)."""
        return _config.settings_from_environ(settings, environ)

    @classmethod
    def validate(cls, settings: Settings) -> None:
        super().validate(settings)
        if not 1 <= settings.batch_points <= MAX_POINTS:
            raise ConfigError(f"batch_points must be an integer from 1 to {MAX_POINTS} (MLflow's limit), "
                              f"not {settings.batch_points!r}")

    # -- runs ---------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        return self.runs.experiment_id(name)

    def find(self, experiment_id: str, sync_id: str) -> Optional[MlflowRun]:
        """The server run of ``sync_id``, None if there is none; raises RunDeleted when a user deleted it."""
        return self.runs.find(experiment_id, sync_id)

    def open_run(self, spec: RunSpec, saved: Optional[Mapping[str, Any]]) -> MlflowRun:
        if saved and saved.get("run_id"):
            run = self.restore(saved)
            if run.tag != spec.sync_id:  # saved before root ids: its tag still carries the legacy id
                self.runs.retag(run, spec.sync_id)
            if not run.settled:
                self.runs.check_duplicates(spec.sync_id, run)
            return run
        info = spec.info
        start = info.created_ms if int64(info.created_ms, 1) else None  # else (0, garbage) the server's clock
        tags = run_tags(info)
        if info.parent is not None:  # MLflow's nesting: the parent's server run, opened first if need be
            tags[PARENT_TAG] = self.open_run(RunSpec(*info.parent, root_id=spec.root_id), None).run_id
        with self._opening(spec.sync_id):
            return self.runs.find_or_create(info.project, spec.sync_id, info.name, start, tags, info.user,
                                            spec.legacy_id)

    @contextlib.contextmanager
    def _opening(self, sync_id: str) -> Iterator[None]:
        """One thread at a time finds or creates a given run: a nested run opens its parent, which the
        parent's own sync may be opening at the same moment in another thread."""
        with self._lock:
            lock = self._open_locks.setdefault(sync_id, threading.Lock())
        with lock:
            yield

    def retire_run(self, run: MlflowRun, reason: str) -> None:
        if run.held:  # what is held came from the old content: it belongs to the old run
            _held.flush(self.rest, run)
        self.runs.retire(run, reason)

    def restore(self, saved: Mapping[str, Any]) -> MlflowRun:
        return MlflowRun(**{k: v for k, v in saved.items() if k in MlflowRun.__dataclass_fields__})

    @classmethod
    def notes(cls, saved: Mapping[str, Any]) -> List[str]:
        out = []
        if saved.get("unstorable_points"):
            out.append(f"{saved['unstorable_points']} points MLflow cannot store skipped (step or timestamp "
                       f"outside int64, negative timestamp, integer beyond float)")
        if saved.get("refused_points"):
            out.append(f"{saved['refused_points']} points refused for good by the server (logged with its answer)")
        if saved.get("skipped_values"):
            out.append(f"{saved['skipped_values']} values that are not metrics skipped (strings, lists)")
        if saved.get("tables_left_out"):
            out.append(f"{saved['tables_left_out']} tables beyond what MLflow's tag mlflow.loggedArtifacts holds "
                       f"(8000 characters) open as JSON text, not as tables")
        return out

    def set_metadata(self, run: MlflowRun, info: RunInfo) -> None:
        tags = run_tags(info)
        if run.created_tags and run.created_tags == tags_digest(tags):
            return  # runs/create carried these very tags
        run.created_tags = ""
        _held.hold(run, tags=tags)  # they ride with the run's next log-batch (at the latest when its sync ends)

    def set_config(self, run: MlflowRun, config: Mapping[str, Any]) -> List[str]:
        params = dict(flatten_config(dict(config)))
        new = {k: v for k, v in params.items() if run.params.get(k) != v}
        fresh = {k: v for k, v in new.items() if k not in run.params}
        changed = sorted(k for k in new if k in run.params)
        if fresh and run.created_tags and not run.params:
            # A run this gateway just created holds no param: none can be refused; they ride with a batch.
            _held.hold(run, params=fresh)
            run.params.update(fresh)
            return []
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
                self.rest.log_batch(run.run_id, params=[{"key": k, "value": v} for k, v in chunk])
            except ServerError as e:
                if e.status != 400:
                    raise
                # A param that already holds another value cannot change (MLflow params are immutable):
                # send only the new keys, and report the changed ones.
                run_data = self.rest.get_run(run.run_id).get("data", {})
                kept = {p["key"]: p.get("value", "") for p in run_data.get("params", [])}
                new = [(k, v) for k, v in chunk if k not in kept]
                refused.update({k: kept[k] for k, v in chunk if k in kept and kept[k] != v})
                if new:
                    self.rest.log_batch(run.run_id, params=[{"key": k, "value": v} for k, v in new])
        return refused

    # -- points -------------------------------------------------------------------------------
    def batches(self, run: MlflowRun, stream: str, rows: Sequence[Row],
                metrics: Sequence[MetricDef] = ()) -> Iterator[Tuple[int, List[Point]]]:
        return self.points.batches(run, stream, rows, metrics, self.rest.batch_points)

    def send(self, run: MlflowRun, payload: List[Point]) -> int:
        """A batch smaller than a log-batch is held for the run's final log-batch (``_held``): acknowledged
        now, it is in the state the engine stores with the cursor, and on the server before the run's sync
        ends. A full one goes at once, with the held params and tags that fit beside it."""
        if not payload:
            return 0
        if _held.can_hold(run, len(payload), self.rest.batch_points):
            _held.hold(run, metrics=payload)
        else:
            self.rest.send_points(run.run_id, payload, **_held.take(run, _held.MAX_ITEMS - len(payload)))
        return len(payload)

    def set_summary(self, run: MlflowRun, summary: Summary) -> None:
        """Keys whose summary differs from the last logged value become ``summary/<key>`` points at step 0
        (non-numeric ones: ``summary.<key>`` tags); the others are the metrics' own last values."""
        pts, tags = [], {}
        for k in summary.special:
            try:
                v = metric_value(summary.values[k])
            except OverflowError:
                v = None  # an integer beyond float: kept as a tag, exactly
            if v is None:
                tags["summary." + metric_key(k)] = tag_value(summary.values[k])
            else:
                pts.append({"key": metric_key("summary/" + k), "value": num(v), "timestamp": summary.version_ms,
                            "step": 0})
        _held.hold(run, tags=tags, metrics=pts)  # with the state's tag, or when the run's sync ends

    def upload(self, run: MlflowRun, path: str, body: BinaryIO, size_bytes: int) -> None:
        """A file as it is; media as MLflow's log_image and log_table store them (``_media``), with the tags
        that make its UI show them (held: they ride with the state's log-batch)."""
        prep = _media.prepare(path, run.run_id, body.read, size_bytes)
        for dest, data in prep.files:
            if data is None:
                self._put(run, dest, body, size_bytes)
            else:
                self._put(run, dest, io.BytesIO(data), len(data))
        if prep.kind == "image" and not run.logged_images:
            run.logged_images = True
            _held.hold(run, tags={_media.LOGGED_IMAGES: "true"})
        elif prep.kind == "table" and path not in run.tables:
            run.tables.append(path)
            value, left_out = _media.logged_artifacts(run.tables)
            _held.hold(run, tags={_media.LOGGED_ARTIFACTS: value})
            if left_out:
                run.tables_left_out = left_out

    def _put(self, run: MlflowRun, path: str, body: BinaryIO, size_bytes: int) -> None:
        prefix = run.artifact_uri
        if not prefix.startswith("mlflow-artifacts:/"):
            raise ServerRefused(f"run {run.run_id} stores artifacts at {prefix!r}, not through the server's "
                                f"proxy; start the server with --serve-artifacts")
        rel = prefix[len("mlflow-artifacts:/"):].lstrip("/") + "/" + path
        # Streamed from ``body`` (urllib3 rewinds it for a retry); a PUT replaces the object.
        try:
            self.rest.call("PUT", "/api/2.0/mlflow-artifacts/artifacts/" + quote(rel), data=body,
                           size_bytes=size_bytes)
        except ServerError as e:
            if e.status != 413:
                raise
            raise FileTooLarge(f"{path} ({size_bytes / 1e6:,.1f} MB) was refused as too large (HTTP 413) by the "
                               f"server or a proxy before it: raise its body limit (nginx: client_max_body_size) "
                               f"to upload it", 413) from e

    def set_state(self, run: MlflowRun, status: RunStatus) -> None:
        # What is held (the summary, media tags) first: an ended state only after the data it covers.
        end = None if status.state == "active" or not int64(status.end_ms, 0) else status.end_ms
        tags = {"hpc.state": status.state, **{f"hpc.{k}": str(n) for k, n in sorted(status.dropped.items())}}
        _held.flush(self.rest, run, tags)
        self.rest.update(run.run_id, STATUS[status.state], end)

    def end_run(self, run: MlflowRun) -> None:
        if run.held:
            _held.flush(self.rest, run)

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
            parent = self.runs.find_or_create(group.project, f"group:{group.project}/{group.name}", group.name,
                                              start if int64(start, 1) else None,
                                              {"hpc.group": tag_value(group.name),
                                               "mlflow.runName": tag_value(group.name)})
            gs.update(run_id=parent.run_id, parent=parent.to_state(), members=[], status=None, end_ms=None)
        for m in group.members:
            if m.key not in gs["members"]:
                member = cast(MlflowRun, m.run)  # the engine gives back what open_run made
                self.rest.set_tags(member.run_id, {"mlflow.parentRunId": parent.run_id})
                gs["members"] = sorted(set(gs["members"]) | {m.key})
        if (gs.get("status"), gs.get("end_ms")) != (status, end):
            self.rest.update(parent.run_id, status, end)
            gs.update(status=status, end_ms=end)
        return gs

    def before_pass(self) -> None:
        self.http.warn_if_insecure()
        self.runs.new_pass()

    # -- diagnostics and links ----------------------------------------------------------------
    def server_version(self) -> str:
        try:
            r = self.http.request("GET", "/version")
        except requests.exceptions.RequestException as e:
            raise ServerUnavailable(f"cannot reach {self.http.base_url}: {short(e)}") from e
        return r.text.strip() if r.ok else f"unknown (GET /version -> HTTP {r.status_code})"

    def doctor(self, add: Callable[[bool, str, str], None]) -> None:
        mlflow_doctor(self.http, API, add)

    def run_url(self, run: MlflowRun) -> str:
        return f"{self.http.base_url}/#/experiments/{run.experiment_id}/runs/{run.run_id}"

    def experiment_url(self, run: MlflowRun) -> str:
        return f"{self.http.base_url}/#/experiments/{run.experiment_id}"

    def get_history(self, run: MlflowRun, key: str) -> List[Dict[str, Any]]:
        """Every stored point of ``key`` (used by tests and ``status``)."""
        out: List[Dict[str, Any]] = []
        token = None
        while True:
            params = {"run_id": run.run_id, "metric_key": key, "max_results": 25000}
            if token:
                params["page_token"] = token
            res = self.rest.call("GET", "/metrics/get-history", params=params)
            out.extend(res.get("metrics", []))
            token = res.get("next_page_token")
            if not token:
                return out

    def close(self) -> None:
        self.http.session.close()
