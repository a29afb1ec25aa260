"""A tiny test-only writer of run directories per docs/run-format.md (documents atomically, streams
appended line by line), and the view a plain local reader has of them, to compare sources against."""
from __future__ import annotations

import json
import os
import stat
import time
from typing import Dict, Optional, Tuple


def write_document(path: str, obj) -> None:
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".tmp-{name}-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def record(seq: int, step: int, **values) -> bytes:
    return (json.dumps({"seq": seq, "step": step, "ts_ms": 1764150000000 + seq, "values": values}) + "\n").encode()


def append(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def write_run(root: str, project: str, run_id: str, *, history_rows: int = 20, system_rows: int = 3,
              finished: bool = True, saved_files: Optional[Dict[str, bytes]] = None, group: Optional[str] = None,
              exit_code: int = 0, pad_bytes: int = 0) -> str:
    run_dir = os.path.join(root, project, run_id)
    os.makedirs(run_dir, exist_ok=True)
    now_ms = int(time.time() * 1000)
    write_document(os.path.join(run_dir, "run.json"), {
        "format_version": "1.0", "id": run_id, "name": f"name-{run_id}", "project": project, "group": group,
        "job_type": None, "tags": [], "notes": "", "created_ms": now_ms, "attempt": 1,
        "attempts": [{"attempt": 1, "started_ms": now_ms, "host": "node01", "pid": 1,
                      "slurm_restart_count": None, "resumed_from_step": None}],
        "user": "alice", "host": "node01", "program": "train.py", "argv": ["train.py"], "python": "3.11",
        "cwd": "/home/alice", "git": None, "slurm": None, "metrics": [], "settings": {}})
    write_document(os.path.join(run_dir, "config.json"), {"lr": 0.1, "model": {"depth": 50}})
    append(os.path.join(run_dir, "history.jsonl"),
           b"".join(record(i, i, loss=1.0 / (i + 1), acc="NaN" if i == 3 else i / 100,
                           **({"pad": "x" * pad_bytes} if pad_bytes else {})) for i in range(history_rows)))
    append(os.path.join(run_dir, "system.jsonl"),
           b"".join(record(i, i, **{"cpu": 12.5 + i}) for i in range(system_rows)))
    append(os.path.join(run_dir, "output.log"), b"epoch 1\nepoch 2\n")
    write_document(os.path.join(run_dir, "summary.json"), {"values": {"loss": 0.05}, "set_by_hand": [], "policies": {}})
    write_document(os.path.join(run_dir, "heartbeat.json"), {"ts_ms": now_ms, "attempt": 1, "pid": 1, "host": "node01"})
    for rel, data in (saved_files or {"ckpt/model.pt": b"\x00weights" * 100, "notes.txt": b"hi"}).items():
        path = os.path.join(run_dir, "files", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(run_dir, "code"), exist_ok=True)
    with open(os.path.join(run_dir, "code", "diff.patch"), "wb") as f:
        f.write(b"--- a/x\n+++ b/x\n")
    if finished:
        write_document(os.path.join(run_dir, "exit.json"), {
            "attempt": 1, "exit_code": exit_code, "reason": "finished" if exit_code == 0 else "failed",
            "end_ms": now_ms, "dropped_rows": 0,
            "last_step": history_rows - 1, "history_records": history_rows})
    return run_dir


def _inside(root_real: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def local_stats(root: str, directory: str, recursive: bool, prefix: str = "") -> Dict[str, Tuple[int, int]]:
    """What the file system holds: regular files (links only when they stay inside the root), no .tmp-,
    as name -> (size, mtime in whole seconds: what SFTP v3 carries)."""
    root_real = os.path.realpath(root)
    found: Dict[str, Tuple[int, int]] = {}
    if not os.path.isdir(directory):
        return found
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if not _inside(root_real, path):
                continue
            st = os.stat(path)
        rel = f"{prefix}{name}"
        if stat.S_ISREG(st.st_mode) and not name.startswith(".tmp-"):
            found[rel] = (st.st_size, int(st.st_mtime))
        elif stat.S_ISDIR(st.st_mode) and recursive and not os.path.islink(path):   # as os.walk
            found.update(local_stats(root, path, True, rel + "/"))
    return found
