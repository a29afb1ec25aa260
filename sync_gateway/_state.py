"""The gateway's durable state, in its own directory (local to the gateway host, never in the runs).

- ``runs/<project>/<run_id>.json``: one document per run (server ids, per-file cursors, what was sent),
  replaced atomically (temp file, rename) after each acknowledged batch: a cursor never points past what
  the server holds.
- ``groups/<sha1>.json``: the same for a group's parent run.
- ``index.json``: per run the signature of its files at the last complete sync, so a pass over unchanged
  runs costs a scan and no reads. Losing it (or any file here) only costs re-sending, never duplicates.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Dict

__all__ = ["StateStore", "new_run_state"]


def new_run_state() -> Dict[str, Any]:
    return {"server": None, "cursors": {}, "params": {}, "tags_sig": None, "config_sig": None,
            "summary_sig": None, "artifacts": {}, "state": None, "hpc_state": None, "last_error": None,
            "last_sync_ms": None, "corrupt_lines": 0, "skipped_values": 0, "refused_params": []}


def _atomic_write(path: str, obj: Any, durable: bool = True) -> None:
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, separators=(",", ":")))  # dumps uses the C encoder; dump does not
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class StateStore:
    def __init__(self, state_dir: str):
        self.dir = os.path.abspath(os.path.expanduser(state_dir))
        os.makedirs(self.dir, exist_ok=True)

    def _run_path(self, key: str) -> str:
        project, run_id = key.split("/", 1)  # both match the format's name rule: safe as path parts
        return os.path.join(self.dir, "runs", project, run_id + ".json")

    def group_key(self, project: str, group: str) -> str:
        return "group:" + hashlib.sha1(f"{project}/{group}".encode()).hexdigest()

    def _path(self, key: str) -> str:
        if key.startswith("group:"):
            return os.path.join(self.dir, "groups", key[6:] + ".json")
        return self._run_path(key)

    def load(self, key: str) -> Dict[str, Any]:
        try:
            with open(self._path(key)) as f:
                st = json.load(f)
        except FileNotFoundError:
            return new_run_state()
        except ValueError:
            # Edited by hand, or emptied by a power loss: start over; the server stores re-sent points once.
            return new_run_state()
        base = new_run_state()
        base.update(st)
        return base

    def save(self, key: str, state: Dict[str, Any]) -> None:
        # Atomic (rename) but not fsynced: correctness never depends on this file surviving a crash.
        # A lost or empty state only means re-sending, which the server stores once, and re-finding the
        # server run by its hpc.run_id tag; the rename guarantees a cursor never points past an ack.
        _atomic_write(self._path(key), state, durable=False)

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def load_index(self) -> Dict[str, Any]:
        try:
            with open(os.path.join(self.dir, "index.json")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def save_index(self, index: Dict[str, Any]) -> None:
        # Not fsynced: a stale index only makes the next pass look at more runs.
        _atomic_write(os.path.join(self.dir, "index.json"), index, durable=False)

    def all_run_states(self) -> Dict[str, Dict[str, Any]]:
        out: Dict[str, Dict[str, Any]] = {}
        base = os.path.join(self.dir, "runs")
        if not os.path.isdir(base):
            return out
        for project in sorted(os.listdir(base)):
            for name in sorted(os.listdir(os.path.join(base, project))):
                if name.endswith(".json") and not name.startswith(".tmp-"):
                    key = f"{project}/{name[:-5]}"
                    out[key] = self.load(key)
        return out


