"""Params, tags and points held on a run until a log-batch the run sends anyway can carry them, so that a
small run costs one ``runs/create`` (carrying its metadata tags), one log-batch with its params, tags,
points, summary and state tag, the ``runs/update`` of its state, and a PUT per file.

What is held lives in the run's handle (``MlflowRun.held``), which the engine stores with the cursors after
each acknowledged batch and each document: a gateway stopped before they were sent sends them on its next
pass (resending is safe: identical params, tags and points are stored once). Everything still held when
the run's sync ends is sent then (``MlflowSink.end_run``), so nothing waits longer than the run's sync.

A batch of points smaller than a full log-batch is held too, as long as what is held stays within
``HOLD_ITEMS``: the tail of a stream then rides with the summary and the state instead of costing a
log-batch of its own. Full batches are sent at once (they need their own request anyway).

Threads: a run's batches may be sent from the pass's sender thread while its own thread stores the handle,
so ``held`` is never changed in place: each change puts a new dict on the run (copy on write).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping

from sync_gateway._redact import redact
from sync_gateway.sinks.mlflow._rest import MAX_PARAMS, MlflowRest
from sync_gateway.sinks.mlflow._runs import MlflowRun

__all__ = ["hold", "take", "flush", "can_hold", "MAX_ITEMS", "HOLD_ITEMS"]

log = logging.getLogger(__name__)

MAX_ITEMS = 1000  # MLflow refuses a log-batch of more metrics, params and tags together (400)
#: at most this many params, tags and points held on a run: half a log-batch, the other half left for the
#: summary points and state tags that ride with them
HOLD_ITEMS = 500


def _count(held: Mapping[str, Any]) -> int:
    return sum(len(held.get(name) or ()) for name in ("params", "tags", "metrics"))


def can_hold(run: MlflowRun, points: int, batch_points: int) -> bool:
    """Whether ``points`` more points may wait on the run for its final log-batch."""
    return _count(run.held) + points <= min(HOLD_ITEMS, batch_points)


def hold(run: MlflowRun, params: Mapping[str, str] = {}, tags: Mapping[str, str] = {},  # noqa: B006 - read only
         metrics: List[Dict[str, Any]] = []) -> None:  # noqa: B006
    held = run.held
    run.held = {"params": {**(held.get("params") or {}), **params}, "tags": {**(held.get("tags") or {}), **tags},
                "metrics": list(held.get("metrics") or []) + list(metrics)}


def take(run: MlflowRun, room: int) -> Dict[str, List[Dict[str, Any]]]:
    """What of the held params and tags fits beside ``MAX_ITEMS - room`` points, as log-batch lists (taken off
    the run); held points stay for the final batch."""
    held = dict(run.held)
    out: Dict[str, List[Dict[str, Any]]] = {}
    for name in ("params", "tags"):
        items = held.get(name) or {}
        if items and len(items) <= min(MAX_PARAMS, room):
            out[name] = [{"key": k, "value": v} for k, v in items.items()]
            room -= len(items)
            held[name] = {}
    if out:
        run.held = held
    return out


def flush(rest: MlflowRest, run: MlflowRun, tags: Mapping[str, str] = {}) -> None:  # noqa: B006 - read only
    """Send everything held, and ``tags``, in as few log-batches as MLflow's limits allow. Items the server
    refuses for good (after bisecting: only those) are counted on the run (``refused_points``, shown by
    ``status``) and logged; the rest of the run goes on. A batch refused whole although it carries params or
    tags raises the server's answer, and everything held stays held."""
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
        if not m:
            rest.log_batch(run.run_id, **lists)
            continue
        refused = rest.log_batch_parts(run.run_id, {"metrics": m, **lists})
        if not refused:
            continue
        lost, first = sum(n for n, _ in refused), refused[0][1]
        if lost >= len(m) + len(p) + len(t) and (p or t):
            # Everything refused, params and tags too: not one point's fault (a proxy, a server refusing
            # this run). The run's sync fails with the answer; what is held stays for the next pass.
            raise first
        # The held points' bytes are behind the cursor: they cannot be quarantined, only counted.
        run.refused_points += lost
        log.error("run %s: %d of %d held points, params and tags refused for good (the others are stored; "
                  "counted in status); first answer: %s", run.run_id, lost, len(m) + len(p) + len(t),
                  redact(first)[:500])
    run.held = {}
