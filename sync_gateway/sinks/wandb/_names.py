"""W&B's files, names and shapes: how neutral records become the lines of a run's file_stream files, its config
document and its run files (the W&B sink's rules, documented in docs/gateway.md, "W&B").

- ``wandb-history.jsonl``: one JSON object per row: the logged keys as they were logged (W&B joins nested
  keys with ``/`` itself), ``_step``, ``_timestamp`` (float seconds) and ``_runtime`` (float seconds since the
  run was created).
- ``wandb-events.jsonl``: one object per system sample: ``system.<W&B key>`` in W&B's units
  (sync_gateway/wandb_keys.py), ``_wandb: true``, ``_timestamp``, ``_runtime``.
- ``wandb-summary.json``: one line, the whole summary, sent at offset 0 each time (it replaces); a key with a
  ``define_metric`` summary policy is an object such as ``{"min": v}``.
- ``output.log``: ``<ISO time> <text>`` per line.
- config: a JSON string of ``{key: {"value": v, "desc": null}}``, plus ``_wandb`` whose ``m`` lists the
  metric definitions as the official client encodes them (MetricRecord field numbers as keys).
Every function here is pure: the same records give the same lines, which is what makes a re-send identical.
"""
from __future__ import annotations

import datetime
import json
import re
import struct
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from sync_gateway.records import MetricDef, Row, Summary
from sync_gateway.wandb_keys import wandb_system_key

__all__ = ["HISTORY", "EVENTS", "SUMMARY", "OUTPUT", "history_line", "events_line", "summary_line",
           "config_json", "console_lines", "run_file_name", "media_target", "image_size", "SUMMARY_POLICIES"]

HISTORY, EVENTS, SUMMARY, OUTPUT = "wandb-history.jsonl", "wandb-events.jsonl", "wandb-summary.json", "output.log"
#: the neutral summary policies (records.Summary.policies) W&B knows, with MetricSummary's field numbers
SUMMARY_POLICIES = {"min": 1, "max": 2, "mean": 3, "best": 4, "last": 5, "none": 6, "copy": 7, "first": 8}
_RESERVED = ("_step", "_timestamp", "_runtime", "_wandb")


def _dumps(doc: Any) -> str:
    # NaN and infinities as W&B's own history files spell them (JSON with NaN/Infinity literals)
    return json.dumps(doc, allow_nan=True, default=str, separators=(",", ":"), ensure_ascii=False)


def _value(v: Any) -> Any:
    if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):
        return float(v.replace("Infinity", "inf"))
    return v


def _times(row: Row, created_ms: int) -> Dict[str, Any]:
    return {"_timestamp": row.ts_ms / 1000.0, "_runtime": max(0.0, (row.ts_ms - created_ms) / 1000.0)}


def history_line(row: Row, created_ms: int) -> Optional[str]:
    """The history line of one row (None for a row with no values: the SDK writes none either)."""
    if not row.values:
        return None
    doc: Dict[str, Any] = {}
    for k, v in row.values.items():
        doc[("hpc/" + k) if k in _RESERVED else k] = _value(v)
    doc["_step"] = row.step
    doc.update(_times(row, created_ms))
    return _dumps(doc)


def events_line(row: Row, created_ms: int) -> Optional[str]:
    doc: Dict[str, Any] = {}
    for k, v in row.values.items():
        v = _value(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        key, factor = wandb_system_key(k)
        doc["system." + key] = v * factor if factor != 1.0 else v
    if not doc:
        return None
    doc["_wandb"] = True
    doc.update(_times(row, created_ms))
    return _dumps(doc)


def summary_line(summary: Summary, runtime_s: float, last: Optional[Tuple[int, float]] = None) -> str:
    """The whole summary; ``last`` (the newest history row's step and time, seconds) gives ``_step`` and
    ``_timestamp`` as the official client keeps them there (W&B's runs table and a later resume read them)."""
    doc: Dict[str, Any] = {}
    for k, v in summary.values.items():
        policy = summary.policies.get(k)
        v = _value(v)
        doc[k] = {policy: v} if policy in SUMMARY_POLICIES and policy not in ("last", "none", "copy") else v
    if last is not None:
        doc.setdefault("_step", last[0])
        doc.setdefault("_timestamp", last[1])
    doc.setdefault("_runtime", runtime_s)
    doc["_wandb"] = {"runtime": int(runtime_s)}
    return _dumps(doc)


def _metric_records(metrics: Sequence[MetricDef]) -> List[Dict[str, Any]]:
    """define_metric declarations as the official client puts them in ``_wandb.m``: ``1`` name or ``2`` glob,
    ``5`` the 1-based index of the step metric's own entry, ``7`` the summary policies."""
    out: List[Dict[str, Any]] = []
    index: Dict[str, int] = {}

    def entry(pattern: str) -> Dict[str, Any]:
        if pattern not in index:
            glob = any(c in pattern for c in "*?[")
            out.append({"2" if glob else "1": pattern})
            index[pattern] = len(out)
        return out[index[pattern] - 1]

    for m in metrics:
        if m.step_metric:
            entry(m.step_metric)
        e = entry(m.pattern)
        if m.step_metric:
            e["5"] = index[m.step_metric]
            e["6"] = [3]  # options.defined
        if m.summary:
            policies = [SUMMARY_POLICIES[p] for p in re.split(r"[,\s]+", m.summary) if p in SUMMARY_POLICIES]
            if policies:
                e["7"] = sorted(set(policies))
    return out


def config_json(config: Mapping[str, Any], metrics: Sequence[MetricDef]) -> str:
    doc: Dict[str, Any] = {str(k): {"value": v, "desc": None} for k, v in config.items() if k != "_wandb"}
    wb: Dict[str, Any] = {}
    if metrics:
        wb["m"] = _metric_records(metrics)
    if wb:
        doc["_wandb"] = {"value": wb, "desc": None}
    return _dumps(doc)


def console_lines(text: str, ts_ms: int) -> List[str]:
    when = datetime.datetime.fromtimestamp(ts_ms / 1000.0, datetime.timezone.utc).isoformat(timespec="microseconds")
    return [f"{when} {line}" for line in text.split("\n")]


def run_file_name(dest: str) -> str:
    """The run file's name on W&B: saved files (``files/x``) at the run's root, as ``wandb.save`` puts them;
    the git diff as ``diff.patch``; anything else (``hpc/run.json``) as it is."""
    if dest.startswith("files/"):
        return dest[len("files/"):]
    if dest == "code/diff.patch":
        return "diff.patch"
    return dest


# The neutral name of a media payload (records.FileEntry): media/<kind>s/<key>/<step>-<ts_ms>-<n>.<ext>
_MEDIA = re.compile(r"^media/(image|table|histogram)s/(.+)/(-?\d+)-(\d+)-(\d+)\.(\w+)$")
_SUBDIR = {"image": "media/images", "table": "media/table"}


def media_target(dest: str) -> Optional[Tuple[str, str, int, int, str]]:
    """``(kind, key, step, ts_ms, W&B path)`` for a media payload, as the SDK names its files
    (``media/images/<key>_<step>_<id>.png``, ``media/table/<key>_<step>_<id>.table.json``; histograms are
    inline in history and have no file: path ""), None for any other file."""
    m = _MEDIA.match(dest)
    if m is None:
        return None
    kind, key, step, ts_ms, n, ext = m.groups()
    if kind == "histogram":
        return kind, key, int(step), int(ts_ms), ""
    suffix = ".table.json" if kind == "table" else "." + ext
    return kind, key, int(step), int(ts_ms), f"{_SUBDIR[kind]}/{key}_{step}_{n}{suffix}"


def media_value(kind: str, path: str, sha256: str, size: int, head: bytes, ext: str,
                payload: Optional[Any] = None) -> Dict[str, Any]:
    """The history value that makes W&B's media panels show the file (the SDK's ``to_json`` shape)."""
    if kind == "histogram":
        doc = payload if isinstance(payload, dict) else {}
        return {"_type": "histogram", "values": doc.get("counts", []), "bins": doc.get("bins", [])}
    out: Dict[str, Any] = {"_type": "image-file" if kind == "image" else "table-file", "path": path,
                           "sha256": sha256, "size": size}
    if kind == "image":
        out["format"] = ext
        wh = image_size(head)
        if wh:
            out["width"], out["height"] = wh
    elif isinstance(payload, dict):
        out["ncols"] = len(payload.get("columns") or [])
        out["nrows"] = len(payload.get("data") or [])
    return out


def image_size(head: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) of a PNG from its first 24 bytes (the IHDR chunk); None for other formats."""
    if len(head) >= 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    return None

