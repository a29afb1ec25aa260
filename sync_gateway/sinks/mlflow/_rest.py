"""The MLflow sink's REST plumbing: one request with its errors made plain (``_call``), and batches that
survive a server or proxy refusing part of them (a body limit, one bad point). Mixed into ``MlflowSink``;
split from ``mlflow.py`` so that the mapping of runs to MLflow stays readable."""
from __future__ import annotations

import logging
import re
from typing import Any, BinaryIO, Dict, List, Optional, Tuple, Type

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

__all__ = ["MlflowRest", "API"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

API = "/api/2.0/mlflow"
SPLIT_STATUS = (400, 413, 422)   # a metric batch refused for good with these is bisected (see _send_points)
SPLIT_REQUESTS = 64              # ... with at most this many requests: one bad point costs about 2 log2(n)
_DELETED = re.compile(r"must be in the 'active' state\. Current state is deleted")


class MlflowRest:
    http: HttpClient
    batch_points: int
    _too_large_warned: bool = False

    # -- plumbing -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Optional[dict] = None, params: Optional[dict] = None,
              data: Optional[BinaryIO] = None, size_bytes: int = 0, idempotent: bool = True) -> Dict[str, Any]:
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
            try:
                err = r.json()
                msg = f"{err.get('error_code', '')}: {str(err.get('message', ''))[:500]}"
            except ValueError:
                err, msg = {}, r.text[:300]
            if not isinstance(err, dict):
                err = {}
            msg = redact(msg)  # a server or proxy may echo the request's headers
            retry = r.status_code in (429,) or r.status_code >= 500
            if r.status_code == 403 and BAD_HOST in r.text:
                msg = host_refused(self.http.base_url)
            elif r.status_code in (401, 403):
                msg += " (check the auth section of the config)"
            elif r.status_code == 413:
                msg = f"request body of {body_bytes(r):,} bytes refused as too large (HTTP 413, by the server or " \
                      f"a proxy before it; nginx's default limit is 1 MB: client_max_body_size)"
            if r.status_code == 400 and _DELETED.search(msg):
                rid = (body or {}).get("run_id", "")
                raise RunDeleted(f"the MLflow run {rid} was deleted on the server: not synced (restore it from "
                                 f"the MLflow trash to sync it again)")
            refusal: Type[ServerError] = ServerUnavailable if retry else ServerRefused
            raise refusal(f"{method} {path} -> HTTP {r.status_code} {msg}", r.status_code,
                          str(err.get("error_code", "")))
        try:
            return r.json() if r.content else {}
        except ValueError:
            return {}

    def _log_batch(self, run_id: str, **lists: List[Dict[str, Any]]) -> None:
        """One ``runs/log-batch`` of params and tags; a body refused as too large (413: a proxy's limit,
        nginx's default is 1 MB) is split until it passes (:meth:`_send_split`)."""
        refused = self._send_split(run_id, lists, (413,))
        if refused:
            raise refused[0][1]

    def _send_points(self, run_id: str, pts: List[Dict[str, Any]]) -> None:
        """Send metric points; a batch refused for good (400, 413, 422) is bisected so that only the points
        the server refuses are lost, not the up to 1000 around them."""
        refused = self._send_split(run_id, {"metrics": pts}, SPLIT_STATUS)
        if refused:
            lost = sum(n for n, _ in refused)
            first = refused[0][1]
            raise BatchRefused(f"{lost} of {len(pts)} points refused for good (the others are stored); "
                               f"first answer: {first}", points=lost, status=first.status, error_code=first.error_code)

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
                self._call("POST", "/runs/log-batch", {"run_id": run_id, **body})
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
