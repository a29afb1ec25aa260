"""MLflow's names, characters, lengths and units: how neutral records become MLflow keys, params and tags
(the MLflow sink's rules, documented in docs/gateway.md).

- Keys MLflow would reject: characters outside ``[/\\w.\\- :]`` become ``_``; empty path segments are
  dropped, ``.``/``..`` segments become ``_``/``__`` (MLflow refuses names that normalise to another path);
  keys are cut to 250 characters.
- Config -> params: nested keys joined with ``.``; values over 6000 characters are cut and end with
  ``TRUNCATION_MARKER``; the full config is also uploaded as the artifact ``hpc/config.json``.
- System metrics -> MLflow's own ``system/...`` names (SYSTEM_METRICS, as in docs/metrics.md), so its
  System Metrics tab shows them; any other key becomes ``system/<key with / replaced by _>``.
"""
from __future__ import annotations

import json
import math
import re
import uuid
from functools import lru_cache
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from sync_gateway.records import RunInfo

__all__ = ["metric_key", "flatten_config", "param_value", "tag_value", "system_metric", "metric_value",
           "run_tags", "native_run_tags", "PARENT_TAG", "SYSTEM_METRICS", "TRUNCATION_MARKER", "MAX_KEY",
           "MAX_PARAM_VALUE", "MAX_TAG_VALUE"]

MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
TRUNCATION_MARKER = "...[truncated by hpc-sync]"
_BAD = re.compile(r"[^/\w.\- :]")


@lru_cache(maxsize=65536)  # a run logs the same few keys millions of times
def metric_key(key: str) -> str:
    """A key MLflow accepts (metrics, params and tags share the rule)."""
    segs = []
    for seg in _BAD.sub("_", key).split("/"):
        if seg in (".", ".."):
            seg = "_" * len(seg)
        if seg:
            segs.append(seg)
    out = "/".join(segs)[:MAX_KEY].rstrip("/")
    return out or "_"


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


#: config levels flattened into param keys; deeper levels stay one JSON value (keys are cut at 250 anyway)
MAX_DEPTH = 32


def _json(value: Any) -> str:
    try:
        return json.dumps(value, default=str)
    except (RecursionError, ValueError):  # nested deeper than the encoder allows: say so, do not crash
        return "[nested too deeply to show]"


def param_value(value: Any) -> str:
    if isinstance(value, str):
        s = value
    elif isinstance(value, bool) or value is None:
        s = json.dumps(value)
    elif isinstance(value, float) and not math.isfinite(value):
        s = str(value)
    else:
        s = _json(value) if isinstance(value, (list, dict)) else str(value)
    return _cut(s, MAX_PARAM_VALUE)


def tag_value(value: Any) -> str:
    return _cut(value if isinstance(value, str) else _json(value), MAX_TAG_VALUE)


def flatten_config(config: Dict[str, Any], prefix: str = "") -> Iterator[Tuple[str, str]]:
    """Yield ``(param key, param value)``; nested dicts are joined with ``.`` (iteratively, to MAX_DEPTH
    levels; what is deeper stays one JSON value), lists kept as JSON."""
    stack = [(prefix, iter(config.items()), 0)]
    while stack:
        pre, items, depth = stack[-1]
        try:
            k, v = next(items)
        except StopIteration:
            stack.pop()
            continue
        key = f"{pre}.{k}" if pre else str(k)
        if isinstance(v, dict) and v and depth + 1 < MAX_DEPTH:
            stack.append((key, iter(v.items()), depth + 1))
        else:
            yield metric_key(key), param_value(v)


def metric_value(v: Any) -> Optional[float]:
    """The float MLflow stores for a logged value, or None for values that are not metrics."""
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        return float(v)
    return None


#: system.jsonl key -> (MLflow name, factor); ``{i}`` is a GPU ordinal. This is the table of
#: docs/metrics.md (the monitor's documentation); tests/gateway/test_settings.py checks the two agree.
SYSTEM_METRICS: Dict[str, Tuple[str, float]] = {
    "cpu/system_percent": ("system/cpu_utilization_percentage", 1.0),
    "memory/system_percent": ("system/system_memory_usage_percentage", 1.0),
    "memory/system_used_bytes": ("system/system_memory_usage_megabytes", 1e-6),
    "disk/usage_percent": ("system/disk_usage_percentage", 1.0),
    "disk/used_bytes": ("system/disk_usage_megabytes", 1e-6),
    "disk/available_bytes": ("system/disk_available_megabytes", 1e-6),
    "network/sent_bytes": ("system/network_transmit_megabytes", 1e-6),
    "network/received_bytes": ("system/network_receive_megabytes", 1e-6),
    "gpu/{i}/utilization_percent": ("system/gpu_{i}_utilization_percentage", 1.0),
    "gpu/{i}/memory_used_percent": ("system/gpu_{i}_memory_usage_percentage", 1.0),
    "gpu/{i}/memory_used_bytes": ("system/gpu_{i}_memory_usage_megabytes", 1e-6),
    "gpu/{i}/power_w": ("system/gpu_{i}_power_usage_watts", 1.0),
    "gpu/{i}/power_percent": ("system/gpu_{i}_power_usage_percentage", 1.0),
}
_GPU = re.compile(r"^gpu/(\d+)/(.+)$")


@lru_cache(maxsize=4096)
def system_metric(name: str) -> Tuple[str, float]:
    """MLflow's name and unit factor for a monitor metric; any other key: ``system/`` + key, ``/`` -> ``_``."""
    m = _GPU.match(name)
    hit = SYSTEM_METRICS.get(f"gpu/{{i}}/{m.group(2)}" if m else name)
    if hit is None:
        return metric_key("system/" + name.replace("/", "_")), 1.0
    return (hit[0].replace("{i}", m.group(1)) if m else hit[0]), hit[1]


#: MLflow's nesting tag: a run id of the server, so a run's own (its parent's id where it was written) is
#: never sent; the sink sets it to the parent's server run (``RunInfo.parent``)
PARENT_TAG = "mlflow.parentRunId"


def native_run_tags(info: RunInfo, tags: Mapping[str, str]) -> Dict[str, str]:
    """A run written through MLflow's client: its own tags exactly (but the nesting tag), and the gateway's
    bookkeeping only under ``hpc.*``, so the user's namespace equals a direct run's."""
    t: Dict[str, Any] = {k: v for k, v in tags.items() if k != PARENT_TAG}
    t.update({"hpc.project": info.project, "hpc.group": info.group, "hpc.job_type": info.job_type,
              "hpc.host": info.host, "hpc.attempt": info.attempt, "hpc.format_version": info.format_version or None})
    if tags.get(PARENT_TAG) and info.parent is None:  # its parent is not in the root: kept, not nested
        t["hpc.parent_run_id"] = tags[PARENT_TAG]
    for k, v in info.scheduler.items():
        t["hpc.slurm." + metric_key(str(k))] = v
    return {k: tag_value(v) for k, v in t.items() if v is not None and v != ""}


def run_tags(info: RunInfo) -> Dict[str, str]:
    """MLflow tags for a run's metadata: the ones the UI shows natively, then hpc.* and slurm.*; a run with
    tags of its own (written through MLflow's client): :func:`native_run_tags`."""
    if info.native_tags is not None:
        return native_run_tags(info, info.native_tags)
    t: Dict[str, Any] = {"mlflow.runName": info.name, "mlflow.user": info.user,
                         "mlflow.source.name": info.program, "mlflow.source.type": "LOCAL",
                         "hpc.project": info.project, "hpc.group": info.group, "hpc.job_type": info.job_type,
                         "hpc.host": info.host, "hpc.attempt": info.attempt,
                         "hpc.format_version": info.format_version or None}
    t["mlflow.source.git.commit"] = info.git.get("commit")
    t["mlflow.source.git.branch"] = info.git.get("branch")
    t["mlflow.source.git.repoURL"] = info.git.get("remote")
    if info.notes:
        t["mlflow.note.content"] = info.notes
    if info.tags:
        t["hpc.tags"] = ",".join(info.tags)
    if info.argv:
        t["hpc.argv"] = " ".join(info.argv)
    for k, v in info.scheduler.items():
        t["slurm." + metric_key(str(k))] = v
    return {k: tag_value(v) for k, v in t.items() if v is not None and v != ""}


# The neutral name of an image payload (readers/base.py FileEntry): media/images/<key>/<step>-<ts_ms>-<n>.<ext>
_MEDIA_IMAGE = re.compile(r"^media/images/(.+)/(\d+)-(\d+)-(\d+)\.(\w+)$")


def media_artifact_path(path: str, run_id: str) -> Tuple[str, bool]:
    """Where MLflow wants a file: an image under MLflow's image convention (what ``log_image(key=, step=)``
    writes, so the run's Images view shows it), ``images/<key, / as ~>+step+<step>+timestamp+<ts_ms>+<uuid>.<ext>``
    with a uuid derived from the run and the path (re-sending replaces, never duplicates); anything else as is.
    Returns (path, is_image)."""
    m = _MEDIA_IMAGE.match(path)
    if m is None:
        return path, False
    key, step, ts_ms, _, ext = m.groups()
    name = uuid.uuid5(uuid.NAMESPACE_URL, f"hpc-sync:{run_id}:{path}")
    return f"images/{key.replace('/', '~')}+step+{step}+timestamp+{ts_ms}+{name}.{ext}", True
