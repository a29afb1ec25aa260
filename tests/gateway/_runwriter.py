"""A test-only writer of run directories, written from docs/run-format.md alone (not from ``hpc``).

``check_run_dir`` independently checks a directory against the same spec (usable on the SDK's output).
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any, Dict, Iterable, List, Optional

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def enc(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: enc(x) for k, x in v.items()}
    if isinstance(v, list):
        return [enc(x) for x in v]
    return v


def _atomic(path: str, obj: Any, fsync: bool = True) -> None:
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(enc(obj), f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


class RunWriter:
    def __init__(self, root: str, project: str, run_id: str, name: Optional[str] = None,
                 group: Optional[str] = None, config: Optional[dict] = None, created_ms: Optional[int] = None,
                 version: str = "1.0", user: str = "alice", metrics: Optional[List[dict]] = None,
                 slurm: Optional[dict] = None):
        assert NAME.match(project) and NAME.match(run_id)
        self.dir = os.path.join(root, project, run_id)
        os.makedirs(self.dir, exist_ok=True)
        self.created_ms = created_ms or int(time.time() * 1000)
        self.meta = {
            "format_version": version, "id": run_id, "name": name or f"name-{run_id}", "project": project,
            "group": group, "job_type": "train", "tags": ["t1"], "notes": "", "created_ms": self.created_ms,
            "attempt": 1, "attempts": [{"attempt": 1, "started_ms": self.created_ms, "host": "node01",
                                        "pid": 1234, "slurm_restart_count": None, "resumed_from_step": None}],
            "user": user, "host": "node01", "program": "/home/alice/train.py", "argv": ["train.py"],
            "python": "3.11.7", "cwd": "/home/alice",
            "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "branch": "main",
                    "remote": "git@example:lab/x.git", "dirty": False},
            "slurm": slurm, "metrics": metrics or [], "settings": {"flush_interval_s": 1.0,
                                                                  "heartbeat_interval_s": 5.0}}
        _atomic(self.path("run.json"), self.meta)  # run.json first: from now on this is a run
        self.seq = {"history.jsonl": 0, "system.jsonl": 0}
        self.step = 0
        if config is not None:
            _atomic(self.path("config.json"), config)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _append(self, name: str, rec: dict) -> None:
        with open(self.path(name), "ab") as f:
            f.write(json.dumps(enc(rec), separators=(",", ":")).encode() + b"\n")

    def log(self, values: Dict[str, Any], step: Optional[int] = None, ts_ms: Optional[int] = None) -> dict:
        step = self.step if step is None else step
        rec = {"seq": self.seq["history.jsonl"], "step": step, "ts_ms": ts_ms or int(time.time() * 1000),
               "values": values}
        self._append("history.jsonl", rec)
        self.seq["history.jsonl"] += 1
        self.step = step + 1
        return rec

    def log_many(self, rows: Iterable[Dict[str, Any]], ts0_ms: int = 1_764_150_000_000) -> None:
        with open(self.path("history.jsonl"), "ab") as f:
            for values in rows:
                s = self.seq["history.jsonl"]
                rec = {"seq": s, "step": self.step, "ts_ms": ts0_ms + s, "values": enc(values)}
                f.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
                self.seq["history.jsonl"] += 1
                self.step += 1

    def system(self, values: Dict[str, Any], step: int, ts_ms: int) -> None:
        self._append("system.jsonl", {"seq": self.seq["system.jsonl"], "step": step, "ts_ms": ts_ms,
                                      "values": values})
        self.seq["system.jsonl"] += 1

    def raw(self, name: str, data: bytes) -> None:
        with open(self.path(name), "ab") as f:
            f.write(data)

    def config(self, config: dict) -> None:
        _atomic(self.path("config.json"), config)

    def summary(self, values: dict, set_by_hand=(), policies=None) -> None:
        _atomic(self.path("summary.json"), {"values": values, "set_by_hand": list(set_by_hand),
                                            "policies": policies or {}})

    def heartbeat(self, ts_ms: Optional[int] = None) -> None:
        _atomic(self.path("heartbeat.json"), {"ts_ms": ts_ms or int(time.time() * 1000),
                                              "attempt": self.meta["attempt"], "pid": 1234, "host": "node01"},
                fsync=False)

    def exit(self, exit_code: int = 0, reason: str = "finished", end_ms: Optional[int] = None) -> None:
        _atomic(self.path("exit.json"), {"attempt": self.meta["attempt"], "exit_code": exit_code,
                                         "reason": reason, "end_ms": end_ms or int(time.time() * 1000),
                                         "dropped_rows": 0, "last_step": self.step - 1,
                                         "history_records": self.seq["history.jsonl"]})

    def resume(self) -> None:
        self.meta["attempt"] += 1
        self.meta["attempts"].append({"attempt": self.meta["attempt"], "started_ms": int(time.time() * 1000),
                                      "host": "node02", "pid": 99, "slurm_restart_count": 1,
                                      "resumed_from_step": self.step})
        _atomic(self.path("run.json"), self.meta)  # run.json first, then drop the old outcome
        try:
            os.unlink(self.path("exit.json"))
        except FileNotFoundError:
            pass

    def save(self, rel: str, data: bytes) -> None:
        path = os.path.join(self.dir, "files", *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def dec(v: Any) -> Any:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, v) if isinstance(v, str) else v


def read_stream(path: str) -> List[dict]:
    """The complete, valid records of a stream (what a correct reader must deliver)."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    for line in data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and all(k in rec for k in ("seq", "step", "ts_ms", "values")):
            rec["values"] = {k: dec(v) for k, v in rec["values"].items()}
            out.append(rec)
    return out


def check_run_dir(path: str) -> List[str]:
    """Problems found in one run directory against docs/run-format.md (empty list: conforms)."""
    problems = []
    try:
        with open(os.path.join(path, "run.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        return [f"run.json: {e}"]
    for k in ("format_version", "id", "project", "attempt", "created_ms"):
        if k not in meta:
            problems.append(f"run.json lacks {k}")
    if not re.match(r"^\d+\.\d+$", str(meta.get("format_version"))):
        problems.append("format_version is not MAJOR.MINOR")
    for name in ("history.jsonl", "system.jsonl"):
        p = os.path.join(path, name)
        if not os.path.exists(p):
            continue
        last_seq, last_step = -1, 0
        for rec in read_stream(p):
            if rec["seq"] != last_seq + 1:
                problems.append(f"{name}: seq {rec['seq']} after {last_seq}")
            if rec["step"] < last_step:
                problems.append(f"{name}: step decreases at seq {rec['seq']}")
            last_seq, last_step = rec["seq"], rec["step"]
    if os.path.exists(os.path.join(path, "exit.json")):
        with open(os.path.join(path, "exit.json")) as f:
            ex = json.load(f)
        if ex.get("reason") not in ("finished", "failed", "preempted", "killed"):
            problems.append(f"exit.json reason {ex.get('reason')!r}")
    return problems
