"""The MLflow sink's REST client: one request with its errors made plain (:meth:`MlflowRest.call`), and batches
that survive a server or proxy refusing part of them (a body limit, one bad point). ``MlflowSink`` holds one
(composed, not mixed in); the mapping of runs to MLflow stays in ``sink.py``.

An answer is a success only when it is complete and parses: the HTTP layer refuses an answer whose end cannot
be told from a cut (no ``Content-Length``, not chunked), urllib3 one shorter than its ``Content-Length``, and
this client a 2xx whose body is not a JSON object. Every other outcome is a retryable fault
(:class:`~sync_gateway.errors.ServerUnavailable`): an empty ``runs/search`` answer read as "no runs" would
create a second run.
"""
from __future__ import annotations

import email.utils
import logging
import re
import time
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Tuple, Type

import requests

from sync_gateway._redact import redact
from sync_gateway.errors import (
    BatchRefused,
    RunDeleted,
    ServerError,
    ServerRefused,
    ServerUnavailable,
    ServerUnreachable,
)
from sync_gateway.sinks._http import DeadlineExceeded, HttpClient
from sync_gateway.sinks.mlflow._diagnose import BAD_HOST, body_bytes, host_refused, no_connection, reason, short

__all__ = ["MlflowRest", "ServerBusy", "API", "SYNC_TAG", "DUPLICATE_TAG", "MAX_PARAMS"]

log = logging.getLogger(__name__)

API = "/api/2.0/mlflow"
SYNC_TAG = "hpc.run_id"              # a server run is found again by this tag when the state is lost
DUPLICATE_TAG = "hpc.duplicate_of"   # on a run that lost a creation race: the winner's run id
MAX_PARAMS = 100                 # MLflow refuses a log-batch of more params or tags (400)
SPLIT_STATUS = (400, 413, 422)   # a metric batch refused for good with these is bisected (see send_points)
SPLIT_REQUESTS = 64              # ... with at most this many requests: one bad point costs about 2 log2(n)
_DELETED = re.compile(r"must be in the 'active' state\. Current state is deleted")


class ServerBusy(ServerUnavailable):
    """A 429 or 503 answer; ``retry_after_s`` is its ``Retry-After`` in seconds (None without one)."""

    def __init__(self, message: str, status: int = 503, error_code: str = "",
                 retry_after_s: Optional[float] = None):
        super().__init__(message, status, error_code)
        self.retry_after_s = retry_after_s


class MlflowRest:
    """``/api/2.0/mlflow`` over an :class:`HttpClient`; shared by the threads of a pass (no per-run state)."""

    def __init__(self, http: HttpClient, batch_points: int):
        self.http = http
        self.batch_points = batch_points   # lowered once a proxy refused a body as too large
        self._too_large_warned = False

    # -- one request --------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Optional[dict] = None, params: Optional[dict] = None,
             data: Optional[BinaryIO] = None, size_bytes: int = 0, idempotent: bool = True) -> Dict[str, Any]:
        """One request (retried by the HTTP layer where that is safe); its JSON answer, or a ServerError."""
        try:
            if data is not None:
                r = self.http.request(method, path, data=data, deadline_s=self.http.deadline_s + size_bytes / 1e6,
                                      headers={"Content-Type": "application/octet-stream",
                                               "Content-Length": str(size_bytes)})
            else:
                r = self.http.request(method, API + path, json=body, params=params, idempotent=idempotent)
        except DeadlineExceeded as e:
            raise ServerUnavailable(f"{method} {path}: {self.http.base_url} sent {e}") from e
        except requests.exceptions.SSLError as e:
            raise ServerRefused(
                f"TLS: cannot verify {self.http.base_url} with the CAs from {self.http.tls.source} ({reason(e)}). "
                f"If the server uses a private CA, set tls.ca_bundle to that CA's PEM file; "
                f"`sync-gateway doctor` names the issuer") from e
        except requests.exceptions.RequestException as e:
            down = ServerUnreachable if no_connection(e) else ServerUnavailable
            raise down(f"cannot reach {self.http.base_url} (after {self.http.retries} retries): {short(e)}") from e
        if r.status_code >= 400:
            raise self._refusal(r, method, path, body)
        if data is not None:  # an artifact PUT answers 200 with no body: its framing (checked below us) suffices
            return {}
        return self._answer(r, method, path)

    def _answer(self, r: requests.Response, method: str, path: str) -> Dict[str, Any]:
        # MLflow answers every REST call with a JSON object ("{}" at least): anything else was cut off, or is
        # not MLflow's (a proxy's or a login page's): retryable, never "no runs".
        what = f"{method} {path}: {self.http.base_url} answered HTTP {r.status_code}"
        if not r.content:
            raise ServerUnavailable(f"{what} with an empty body (the answer was cut off); tried again later",
                                    r.status_code)
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            kind = r.headers.get("Content-Type", "no Content-Type")
            raise ServerUnavailable(f"{what} with {len(r.content)} bytes of {kind} that are not a JSON object (cut "
                                    f"off, or a proxy or login page answered instead of MLflow); tried again later",
                                    r.status_code)
        return doc

    def _refusal(self, r: requests.Response, method: str, path: str, body: Optional[dict]) -> ServerError:
        try:
            err = r.json()
            msg = f"{err.get('error_code', '')}: {str(err.get('message', ''))[:500]}"
        except (ValueError, AttributeError):
            err, msg = {}, r.text[:300]
        if not isinstance(err, dict):
            err = {}
        msg = redact(msg)  # a server or proxy may echo the request's headers
        if r.status_code == 403 and BAD_HOST in r.text:
            msg = host_refused(self.http.base_url)
        elif r.status_code in (401, 403):
            msg += " (check the auth section of the config)"
        elif r.status_code == 413:
            msg = f"request body of {body_bytes(r):,} bytes refused as too large (HTTP 413, by the server or " \
                  f"a proxy before it; nginx's default limit is 1 MB: client_max_body_size)"
        if r.status_code == 400 and _DELETED.search(msg):
            return self._deleted(str((body or {}).get("run_id", "")))
        text = f"{method} {path} -> HTTP {r.status_code} {msg}"
        code = str(err.get("error_code", ""))
        if r.status_code in (429, 503):
            return ServerBusy(text, r.status_code, code, _retry_after_s(r.headers.get("Retry-After")))
        refusal: Type[ServerError] = ServerUnavailable if r.status_code >= 500 else ServerRefused
        return refusal(text, r.status_code, code)

    def _deleted(self, run_id: str) -> RunDeleted:
        """The run is in the trash: a user put it there, or another gateway that won a creation race did
        (it marked the run with DUPLICATE_TAG). Say which."""
        try:
            winner = self.tags(run_id).get(DUPLICATE_TAG) if run_id else None
        except ServerError:
            winner = None
        if winner:
            return RunDeleted(f"another gateway created the same run at the same moment (MLflow run {winner}) and "
                              f"won the race: this gateway's MLflow run {run_id} is marked {DUPLICATE_TAG}={winner}; "
                              f"the next pass adopts {winner} and sends the whole run to it again")
        return RunDeleted(f"the MLflow run {run_id} was deleted on the server: not synced (restore it from "
                          f"the MLflow trash to sync it again)")

    # -- calls the sink makes ---------------------------------------------------------------------
    def get_run(self, run_id: str) -> Dict[str, Any]:
        return self.call("GET", "/runs/get", params={"run_id": run_id})["run"]

    def tags(self, run_id: str) -> Dict[str, str]:
        return {t["key"]: t.get("value", "") for t in self.get_run(run_id).get("data", {}).get("tags", [])}

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = list(tags.items())
        for i in range(0, len(items), MAX_PARAMS):
            self.log_batch(run_id, tags=[{"key": k, "value": v} for k, v in items[i:i + MAX_PARAMS]])

    def update(self, run_id: str, status: str, end_ms: Optional[int]) -> None:
        body: Dict[str, Any] = {"run_id": run_id, "status": status}
        if end_ms is not None:
            body["end_time"] = end_ms
        self.call("POST", "/runs/update", body)

    # -- batches ------------------------------------------------------------------------------------
    def log_batch(self, run_id: str, **lists: List[Dict[str, Any]]) -> None:
        """One ``runs/log-batch`` of params and tags; a body refused as too large (413: a proxy's limit,
        nginx's default is 1 MB) is split until it passes (:meth:`_send_split`)."""
        refused = self._send_split(run_id, lists, (413,))
        if refused:
            raise refused[0][1]

    def send_points(self, run_id: str, pts: List[Dict[str, Any]], **extra: List[Dict[str, Any]]) -> None:
        """Send metric points (and ``extra`` params and tags in the same log-batch); a batch refused for good
        (400, 413, 422) is bisected so that only the points the server refuses are lost, not the up to 1000
        around them."""
        refused = self.log_batch_parts(run_id, {"metrics": pts, **extra})
        if refused:
            lost = sum(n for n, _ in refused)
            first = refused[0][1]
            raise BatchRefused(f"{lost} of {len(pts)} points refused for good (the others are stored); "
                               f"first answer: {first}", points=lost, status=first.status, error_code=first.error_code)

    def log_batch_parts(self, run_id: str, lists: Dict[str, List[Dict[str, Any]]]) -> List[Tuple[int, ServerError]]:
        """One log-batch of metrics, params and tags, bisected when refused for good (as :meth:`send_points`):
        the parts the server refuses, ``(items, answer)``, after every other part was sent."""
        return self._send_split(run_id, lists, SPLIT_STATUS)

    def _send_split(self, run_id: str, lists: Dict[str, List[Dict[str, Any]]],
                    split_status: Tuple[int, ...]) -> List[Tuple[int, ServerError]]:
        """One ``runs/log-batch`` of ``lists``; a refusal with a status in ``split_status`` is bisected
        down to the single items the server refuses, and those are returned as ``(items, answer)`` after
        every other part was sent. Sending parts separately is safe: identical points, params and tags are
        stored once (docs/facts.md). At most SPLIT_REQUESTS requests once something was refused: an error
        every item shares (not one item's fault) must not cost 2n requests; what is left is refused whole."""
        refused: List[Tuple[int, ServerError]] = []
        budget = [SPLIT_REQUESTS]

        def part(items: List[Tuple[str, Dict[str, Any]]], body: Optional[Dict[str, List[Dict[str, Any]]]]) -> None:
            if budget[0] <= 0 and refused:
                refused.append((len(items), refused[-1][1]))
                return
            budget[0] -= 1
            if body is None:
                body = {}
                for name, x in items:
                    body.setdefault(name, []).append(x)
            try:
                self.call("POST", "/runs/log-batch", {"run_id": run_id, **body})
                return
            except ServerError as e:
                if isinstance(e, RunDeleted) or e.retryable or e.status not in split_status:
                    raise
                if len(items) == 1:
                    refused.append((1, e))
                    return
                if e.status == 413:
                    self._too_large(e, len(items) if "metrics" in lists else None)
            half = len(items) // 2
            part(items[:half], None)
            part(items[half:], None)

        part([(name, x) for name, xs in lists.items() for x in xs], lists)
        return refused

    def _too_large(self, e: ServerError, points: Optional[int]) -> None:
        if not self._too_large_warned:
            self._too_large_warned = True
            log.warning("%s: batches are split to fit; raise the proxy's body limit for speed", e)
        if points is not None:  # later batches of points start small enough
            self.batch_points = max(1, min(self.batch_points, points // 2))


def _retry_after_s(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` in seconds: a number, or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None
