"""Reading runs back on the compute side, for ``hpc runs ls/show`` and ``hpc restore``."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import _format as fmt
from .errors import HpcError

__all__ = ["RunInfo", "iter_runs", "find_run", "read_history", "run_state", "DEFAULT_STALE_AFTER_S"]

DEFAULT_STALE_AFTER_S = 300.0  # docs/run-format.md section 7: the same default as the gateway's


@dataclass
class RunInfo:
    path: str
    meta: Dict[str, Any]
    heartbeat: Optional[Dict[str, Any]]
    exit: Optional[Dict[str, Any]]
    seen_ms: Optional[int] = None   # the newest modification time of the run's files (its last sign of life)

    @property
    def id(self) -> str:
        return str(self.meta.get("id"))

    def state(self, now_s: Optional[float] = None, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> str:
        return run_state(self.meta, self.heartbeat, self.exit, now_s, stale_after_s, self.seen_ms)

    def last_update_ms(self) -> Optional[int]:
        found = [d.get("end_ms") if d is self.exit else d.get("ts_ms") for d in (self.exit, self.heartbeat) if d]
        stamps = [s for s in found if isinstance(s, int)]
        return max(stamps) if stamps else _int(self.meta.get("created_ms"))


_REASONS = ("finished", "failed", "preempted", "killed")


def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def run_state(meta: Dict[str, Any], heartbeat: Optional[Dict[str, Any]], exit_doc: Optional[Dict[str, Any]],
              now_s: Optional[float] = None, stale_after_s: float = DEFAULT_STALE_AFTER_S,
              seen_ms: Optional[int] = None) -> str:
    """active | finished | failed | preempted | killed | crashed, by the table of docs/run-format.md
    section 7 (the gateway implements the same table; tests/test_run_state_spec.py holds both to it).

    The last sign of life is ``seen_ms``, when the run's files last changed (their newest modification
    time, by the file system's clock), capped at now; never a timestamp the node wrote inside a file.
    Without it the run counts as just seen."""
    attempt = _int(meta.get("attempt")) or 1
    if exit_doc is not None and (_int(exit_doc.get("attempt")) or 1) == attempt:
        reason = exit_doc.get("reason")
        if reason in _REASONS:
            return str(reason)
        return "finished" if exit_doc.get("exit_code") == 0 else "failed"
    now_ms = (time.time() if now_s is None else now_s) * 1000
    alive = now_ms if seen_ms is None else min(seen_ms, now_ms)
    return "active" if now_ms - alive < stale_after_s * 1000 else "crashed"


def _newest_mtime_ms(path: str) -> Optional[int]:
    newest = None
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.name.startswith(".tmp-") or not e.is_file(follow_symlinks=False):
                    continue
                m = e.stat(follow_symlinks=False).st_mtime_ns // 1_000_000
                newest = m if newest is None else max(newest, m)
    except OSError:
        return None
    return newest


def load_run(path: str) -> RunInfo:
    meta = fmt.read_json(os.path.join(path, fmt.RUN_JSON))
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: run.json is not a JSON object")
    fmt.check_version(meta, path)
    return RunInfo(path, meta, _maybe_json(os.path.join(path, fmt.HEARTBEAT)),
                   _maybe_json(os.path.join(path, fmt.EXIT)), _newest_mtime_ms(path))


def _maybe_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        value = fmt.read_json(path)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def iter_runs(root: str, project: Optional[str] = None) -> Iterator[Tuple[str, Any]]:
    """Yield (path, RunInfo or the error that made it unreadable) for every run under ``root``."""
    try:
        projects = sorted(os.listdir(root)) if project is None else [project]
    except FileNotFoundError:
        return
    for name in projects:
        project_dir = os.path.join(root, name)
        if not fmt.is_name(name) or os.path.islink(project_dir) or not os.path.isdir(project_dir):
            continue
        for run_id in sorted(os.listdir(project_dir)):
            path = os.path.join(project_dir, run_id)
            if not fmt.is_name(run_id) or os.path.islink(path):
                continue
            if not os.path.isfile(os.path.join(path, fmt.RUN_JSON)):
                continue
            try:
                yield path, load_run(path)
            except (OSError, ValueError, HpcError) as err:  # one bad run must not hide the others
                yield path, err


def find_run(root: str, ref: str) -> str:
    """A run directory from a path, ``project/id``, an id or a name."""
    if os.path.isfile(os.path.join(ref, fmt.RUN_JSON)):
        return os.path.abspath(ref)
    candidate = os.path.join(root, ref)
    if "/" in ref and os.path.isfile(os.path.join(candidate, fmt.RUN_JSON)):
        return candidate
    matches: List[str] = []
    for path, info in iter_runs(root):
        if isinstance(info, RunInfo) and ref in (info.id, info.meta.get("name")):
            matches.append(path)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupError(f"no run {ref!r} under {root}: see `hpc runs ls --root {root}`")
    raise LookupError(f"{ref!r} matches {len(matches)} runs: use project/id ({', '.join(matches[:5])})")


def read_history(path: str, name: str = fmt.HISTORY) -> Iterator[Dict[str, Any]]:
    """Complete records of a stream; an unfinished last line is left alone, corrupt lines skipped."""
    try:
        f = open(os.path.join(path, name), "rb")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("values"), dict):
                record["values"] = fmt.decode_value(record["values"])
                yield record
