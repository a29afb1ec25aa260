"""The MLflow sink: plain REST calls (``/api/2.0/mlflow``) with ``requests``, not the mlflow client.

Exactly-once rests on two server facts (FACTS.md): an identical metric point (key, value, step,
timestamp) is stored once, and an identical param value is accepted again. A server run is found again
by its tag ``hpc.run_id`` when the gateway's own state is lost.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Dict, List, Optional
from urllib.parse import quote

import requests

from .._http import HttpClient
from ..errors import ServerError
from .base import Point, RunSpec, ServerRun, Sink

__all__ = ["MlflowSink", "SYNC_TAG"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

API = "/api/2.0/mlflow"
SYNC_TAG = "hpc.run_id"


def _num(v: float) -> Any:
    # Protobuf's JSON mapping spells non-finite doubles as these strings; plain JSON has no literal.
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


class MlflowSink(Sink):
    max_points = 1000

    def __init__(self, http: HttpClient):
        self.http = http
        self._experiments: Dict[str, str] = {}

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

    def experiment_id(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        try:
            eid = self._call("GET", "/experiments/get-by-name", params={"experiment_name": name})["experiment"][
                "experiment_id"]
        except ServerError as e:
            if e.status != 404:
                raise
            try:
                eid = self._call("POST", "/experiments/create", {"name": name})["experiment_id"]
            except ServerError as e2:  # another gateway created it meanwhile
                if getattr(e2, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise
                eid = self._call("GET", "/experiments/get-by-name",
                                 params={"experiment_name": name})["experiment"]["experiment_id"]
        self._experiments[name] = eid
        return eid

    # -- Sink --------------------------------------------------------------------------------
    def find(self, experiment_id: str, sync_id: str) -> Optional[ServerRun]:
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
        return ServerRun(info["run_id"], experiment_id, info.get("artifact_uri", ""))

    def find_or_create(self, spec: RunSpec) -> ServerRun:
        eid = self.experiment_id(spec.project)
        found = self.find(eid, spec.sync_id)
        if found:
            return found
        tags = dict(spec.tags)
        tags[SYNC_TAG] = spec.sync_id
        if spec.parent:
            tags["mlflow.parentRunId"] = spec.parent.run_id
        res = self._call("POST", "/runs/create", {
            "experiment_id": eid, "run_name": spec.name, "start_time": spec.start_ms,
            "tags": [{"key": k, "value": v} for k, v in tags.items()]})
        info = res["run"]["info"]
        return ServerRun(info["run_id"], eid, info.get("artifact_uri", ""))

    def log_points(self, run: ServerRun, points: List[Point]) -> None:
        if not points:
            return
        body = {"run_id": run.run_id, "metrics": [
            {"key": p.key, "value": _num(p.value), "timestamp": p.ts_ms, "step": p.step} for p in points]}
        self._call("POST", "/runs/log-batch", body)

    def log_params(self, run: ServerRun, params: Dict[str, str]) -> Dict[str, str]:
        items = list(params.items())
        refused: Dict[str, str] = {}
        for i in range(0, len(items), 100):
            chunk = items[i:i + 100]
            try:
                self._call("POST", "/runs/log-batch", {
                    "run_id": run.run_id, "params": [{"key": k, "value": v} for k, v in chunk]})
            except ServerError as e:
                if e.status != 400:
                    raise
                # A param that already holds another value cannot change (MLflow params are immutable):
                # send only the new keys, and report the changed ones.
                kept = self._params(run)
                new = [(k, v) for k, v in chunk if k not in kept]
                refused.update({k: kept[k] for k, v in chunk if k in kept and kept[k] != v})
                if new:
                    self._call("POST", "/runs/log-batch", {
                        "run_id": run.run_id, "params": [{"key": k, "value": v} for k, v in new]})
        return refused

    def _params(self, run: ServerRun) -> Dict[str, str]:
        res = self._call("GET", "/runs/get", params={"run_id": run.run_id})
        return {p["key"]: p.get("value", "") for p in res["run"].get("data", {}).get("params", [])}

    def set_tags(self, run: ServerRun, tags: Dict[str, str]) -> None:
        items = list(tags.items())
        for i in range(0, len(items), 100):
            self._call("POST", "/runs/log-batch", {
                "run_id": run.run_id, "tags": [{"key": k, "value": v} for k, v in items[i:i + 100]]})

    def set_state(self, run: ServerRun, state: str, end_ms: Optional[int]) -> None:
        body: Dict[str, Any] = {"run_id": run.run_id, "status": state}
        if end_ms is not None:
            body["end_time"] = end_ms
        self._call("POST", "/runs/update", body)

    def upload(self, run: ServerRun, path: str, data: bytes) -> None:
        prefix = run.artifact_uri
        if not prefix.startswith("mlflow-artifacts:/"):
            raise ServerError(f"run {run.run_id} stores artifacts at {prefix!r}, not through the server's "
                              f"proxy; start the server with --serve-artifacts", retryable=False)
        rel = prefix[len("mlflow-artifacts:/"):].lstrip("/") + "/" + path
        self._call("PUT", "/api/2.0/mlflow-artifacts/artifacts/" + quote(rel), data=data)

    def server_version(self) -> str:
        try:
            r = self.http.request("GET", "/version")
        except requests.exceptions.RequestException as e:
            raise ServerError(f"cannot reach {self.http.base_url}: {_short(e)}", retryable=True) from e
        return r.text.strip() if r.ok else f"unknown (GET /version -> HTTP {r.status_code})"

    def run_url(self, run: ServerRun) -> str:
        return f"{self.http.base_url}/#/experiments/{run.experiment_id}/runs/{run.run_id}"

    def experiment_url(self, run: ServerRun) -> str:
        return f"{self.http.base_url}/#/experiments/{run.experiment_id}"

    def get_history(self, run: ServerRun, key: str) -> List[Dict[str, Any]]:
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
