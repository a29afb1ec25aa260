"""Params, tags and summary points held on a run until a log-batch the run sends anyway can carry them, so
that a small run costs one ``runs/create`` (carrying its metadata tags), a log-batch with its params and
points, one with its summary and state tags before the ``runs/update`` of its state, and a PUT per file.

What is held lives in the run's handle (``MlflowRun.held``), which the engine stores with the cursors after
each acknowledged batch and each document: a gateway stopped before they were sent sends them on its next
pass (resending is safe: identical params, tags and points are stored once). Everything still held when
the run's sync ends is sent then (``MlflowSink.end_run``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from sync_gateway.sinks.mlflow._rest import MAX_PARAMS, MlflowRest
from sync_gateway.sinks.mlflow._runs import MlflowRun

__all__ = ["hold", "take", "flush", "MAX_ITEMS"]

MAX_ITEMS = 1000  # MLflow refuses a log-batch of more metrics, params and tags together (400)


def hold(run: MlflowRun, params: Mapping[str, str] = {}, tags: Mapping[str, str] = {},  # noqa: B006 - read only
         metrics: List[Dict[str, Any]] = []) -> None:  # noqa: B006
    held = run.held
    held.setdefault("params", {}).update(params)
    held.setdefault("tags", {}).update(tags)
    held["metrics"] = held.get("metrics", []) + list(metrics)


def take(run: MlflowRun, room: int) -> Dict[str, List[Dict[str, Any]]]:
    """What of the held params and tags fits beside ``MAX_ITEMS - room`` points, as log-batch lists (taken off
    the run); held summary points stay for the final batch."""
    held = run.held
    out: Dict[str, List[Dict[str, Any]]] = {}
    for name in ("params", "tags"):
        items = held.get(name) or {}
        if items and len(items) <= min(MAX_PARAMS, room):
            out[name] = [{"key": k, "value": v} for k, v in items.items()]
            room -= len(items)
            held[name] = {}
    return out


def flush(rest: MlflowRest, run: MlflowRun, tags: Mapping[str, str] = {}) -> None:  # noqa: B006 - read only
    """Send everything held, and ``tags``, in as few log-batches as MLflow's limits allow."""
    held = run.held
    params = list((held.get("params") or {}).items())
    tag_items = list({**(held.get("tags") or {}), **tags}.items())
    metrics = list(held.get("metrics") or [])
    while params or tag_items or metrics:
        p, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
        t, tag_items = tag_items[:MAX_PARAMS], tag_items[MAX_PARAMS:]
        n = max(0, min(rest.batch_points, MAX_ITEMS - len(p) - len(t)))
        m, metrics = metrics[:n], metrics[n:]
        lists: Dict[str, List[Dict[str, Any]]] = {}
        if p:
            lists["params"] = [{"key": k, "value": v} for k, v in p]
        if t:
            lists["tags"] = [{"key": k, "value": v} for k, v in t]
        if m:
            rest.send_points(run.run_id, m, **lists)
        else:
            rest.log_batch(run.run_id, **lists)
    run.held = {}
