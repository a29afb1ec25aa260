"""What the W&B reader's document scan keeps of a run: the state of one run as plain, flat JSON.

The engine saves the reader state with the run's state (``Reader.attach_state``) at any moment, as JSON,
so it stays small and flat: values as their JSON text (a config nested 500 levels is one string here, never
a 500-level dict), only the last *scalar* of each history key. Layout (version 3):

- ``scan``: the position the scan got to; ``parts``: the fragments it covered
- ``run``: metadata from the run and environment records; ``metrics``: define_metric declarations
- ``config``: top-level key -> JSON text; ``summary``: key -> JSON text
- ``exits``: fragment -> exit code and runtime; ``steps``: fragment -> first and last step, the timestamp
  of its last history row and of its last system sample
- ``versions``: document -> the position of the record that last changed it; ``last``: key -> last scalar
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, Optional, Sequence

from sync_gateway.readers.wandb._format import record_kind
from sync_gateway.readers.wandb._records import decode, history_row, item_key, json_value, ms

__all__ = ["STATE_VERSION", "DocumentScan", "fresh_state", "SCALARS"]

log = logging.getLogger(__name__)

STATE_VERSION = 3   # 2: summary values kept as their JSON text; 3: config too, ``last`` scalars only
_POLICIES = ("min", "max", "mean", "first", "last", "best")
SCALARS = (int, float, str)   # bool is an int
_EMPTY: Dict[str, Any] = {"scan": 0, "run": {}, "config": {}, "summary": {}, "metrics": [], "exits": {},
                          "steps": {}, "versions": {}, "last": {}, "undecodable": 0}


def fresh_state(state: Dict[str, Any], parts: Sequence[str]) -> None:
    """Make ``state`` (in place) the state of a run of these fragments: kept where it still describes
    them (version 2 is converted), else started over (the scan reads the run again)."""
    if state.get("v") == 2:
        state["config"] = {k: json.dumps(v) for k, v in (state.get("config") or {}).items()}
        state["last"] = {k: v for k, v in (state.get("last") or {}).items() if isinstance(v, SCALARS)}
        state["v"] = STATE_VERSION
    if state.get("v") != STATE_VERSION or list(parts[:len(state.get("parts", []))]) != state.get("parts"):
        # New, from another version, or a fragment vanished or appeared out of order: scan again.
        state.clear()
    state.setdefault("v", STATE_VERSION)
    state["parts"] = list(parts)
    for k, empty in _EMPTY.items():
        state.setdefault(k, type(empty)() if isinstance(empty, (dict, list)) else empty)


class DocumentScan:
    """Applies the document records of a scan to the state; history and system records only mark where
    each fragment's steps start and end and when it last did something (decoded once, in :meth:`finish`)."""

    def __init__(self, state: Dict[str, Any], label: str):
        self.st = state
        self.label = label   # the run, in messages
        self._first: Dict[int, bytes] = {}
        self._last: Dict[int, bytes] = {}
        self._last_stats: Dict[int, bytes] = {}
        self._warned = False

    def apply(self, k: int, payload: bytes, end: int) -> None:
        kind = record_kind(payload)
        if kind is None:
            return
        if kind == "stats":
            self._last_stats[k] = payload
            return
        steps = self.st["steps"].setdefault(str(k), {})
        if kind == "history":
            if "first" not in steps:
                steps["first"] = None
                self._first[k] = payload
            self._last[k] = payload
            return
        rec = decode(payload)
        if rec is None:
            self.st["undecodable"] += 1
            return
        ver = self.st["versions"]
        if kind == "run":
            self._run(k, rec.run)
            ver["metadata"] = end
            if len(rec.run.config.update):
                ver["config"] = end
        elif kind == "environment":
            self._environment(rec.environment)
            ver["metadata"] = end
        elif kind == "config":
            self._config(rec.config.update, rec.config.remove)
            ver["config"] = end
        elif kind == "summary":
            # wandb-core writes one after every row: keep the JSON text, decode the final values once
            summary = self.st["summary"]
            for item in rec.summary.update:
                if item_key(item):
                    summary[item_key(item)] = item.value_json
                else:
                    self._empty_key("summary")
            for item in rec.summary.remove:
                summary.pop(item_key(item), None)
            ver["summary"] = end
        elif kind == "metric":
            if self._metric(rec.metric):
                ver["metadata"] = end
        elif kind == "exit":
            self.st["exits"][str(k)] = {"code": rec.exit.exit_code, "runtime_s": rec.exit.runtime}
        elif kind == "header":
            ver.setdefault("metadata", 0)

    def _run(self, k: int, r: Any) -> None:
        run = self.st["run"]
        if not run:  # the first fragment's run record names the run; later ones only add
            run.update(project=r.project, entity=r.entity, name=r.display_name, group=r.run_group,
                       job_type=r.job_type, notes=r.notes, tags=list(r.tags), host=r.host,
                       start_ms=ms(r.start_time) if r.HasField("start_time") else 0,
                       git={"commit": r.git.commit, "remote": r.git.remote_url} if r.HasField("git") else {})
        else:
            for field_, value in (("name", r.display_name), ("group", r.run_group), ("job_type", r.job_type),
                                  ("notes", r.notes)):
                if value:
                    run[field_] = value
            if len(r.tags):
                run["tags"] = list(r.tags)
        run.setdefault("fragment_start_ms", {})[str(k)] = ms(r.start_time) if r.HasField("start_time") else 0
        self._config(r.config.update, r.config.remove)

    def _environment(self, e: Any) -> None:
        run = self.st["run"]
        for field_, value in (("program", e.program), ("user", e.username), ("python", e.python), ("os", e.os)):
            if value:
                run[field_] = value
        if len(e.args):
            run["argv"] = list(e.args)
        if e.HasField("git") and e.git.commit:
            run["git"] = {"commit": e.git.commit, "remote": e.git.remote_url}
        if len(e.slurm):
            run["slurm"] = dict(e.slurm)

    def _metric(self, m: Any) -> bool:
        name = m.name or m.glob_name
        if not name:
            return False
        policy = next((p for p in _POLICIES if getattr(m.summary, p, False)), None) if m.HasField("summary") else None
        # declared again (a loop, a callback): the newest declaration replaces the old one
        self.st["metrics"] = [d for d in self.st["metrics"] if d[0] != name] + [[name, m.step_metric or None, policy]]
        return True

    def _config(self, updates: Sequence[Any], removes: Sequence[Any]) -> None:
        """Top-level keys keep their JSON text as written; an update or removal of a nested key
        (``nested_key``) edits its top-level value (decoded, changed, encoded again)."""
        config: Dict[str, str] = self.st["config"]
        for item in updates:
            path = list(item.nested_key) or [item.key]
            if not all(path):
                self._empty_key("config")
            elif path[0] != "_wandb":
                self._edit(config, path, item.value_json)
        for item in removes:
            path = list(item.nested_key) or [item.key]
            if len(path) == 1:
                config.pop(path[0], None)
            elif all(path):
                self._edit(config, path, None)

    def _edit(self, config: Dict[str, str], path: Sequence[str], value_json: Optional[str]) -> None:
        if len(path) == 1:
            if value_json is not None:   # (a removal of a top-level key pops it instead)
                config[path[0]] = value_json
            return
        top = json_value(config[path[0]]) if path[0] in config else {}
        node = top = top if isinstance(top, dict) else {}
        for p in path[1:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = node[p] = {}
            node = child
        if value_json is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = json_value(value_json)
        try:
            config[path[0]] = json.dumps(top)
        except (RecursionError, ValueError):   # nested deeper than the encoder allows: keep the old value
            log.warning("%s: config key %s nested too deeply to change: kept as it was", self.label, path[0])

    def _empty_key(self, where: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s: a %s value without a key (a hand-made file?): skipped", self.label, where)

    def finish(self) -> None:
        """Decode the payloads the scan kept: where each fragment's steps start and end, and the time of its
        last history row and last system sample (the end of a finished run: :meth:`end_ms`)."""
        for field_, pending in (("first", self._first), ("last", self._last)):
            for k, payload in pending.items():
                rec = decode(payload)
                if rec is not None:
                    row = history_row(rec, 0)
                    steps = self.st["steps"][str(k)]
                    steps[field_] = row.step
                    if field_ == "last" and row.ts_ms:
                        steps["last_ms"] = row.ts_ms
        for k, payload in self._last_stats.items():
            rec = decode(payload)
            if rec is not None and rec.stats.HasField("timestamp"):
                self.st["steps"].setdefault(str(k), {})["stats_ms"] = ms(rec.stats.timestamp)
        self._first, self._last, self._last_stats = {}, {}, {}


def end_ms(state: Dict[str, Any], k: int, fallback_ms: int) -> int:
    """When fragment ``k`` of a finished run ended: the last thing it did. Its start plus the exit record's
    runtime (whole seconds: up to 1 s early), or its last history row or system sample when later;
    ``fallback_ms`` (the file's modification time) when it tells none of these."""
    start = (state["run"].get("fragment_start_ms") or {}).get(str(k)) or 0
    ex = state["exits"].get(str(k)) or {}
    steps = state["steps"].get(str(k)) or {}
    candidates = [t for t in (steps.get("last_ms"), steps.get("stats_ms")) if t]
    if start and ex.get("runtime_s"):
        candidates.append(start + int(ex["runtime_s"]) * 1000)
    return max(candidates) if candidates else fallback_ms
