"""Reading door runs back from their directories (runs of this process that have ended, and runs written by
other processes under the same root), for the tracking store. No mlflow import: plain dicts and tuples."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .. import _format as fmt
from ._layout import POINTS, parse_points

__all__ = ["RunOnDisk", "DiskReader"]

Latest = Dict[str, Tuple[int, int, float]]


@dataclass
class RunOnDisk:
    run_dir: str
    info: Dict[str, Any]            # run.json's "mlflow" object
    params: Dict[str, str]          # config.json
    latest: Latest                  # key -> (step, timestamp, value), MLflow's "latest" order
    meta: Dict[str, Any] = field(default_factory=dict)  # the whole run.json


@dataclass
class _Cursor:
    """What is already parsed of one points.jsonl: a reader that looks again parses only new bytes."""

    offset: int = 0
    latest: Latest = field(default_factory=dict)


class DiskReader:
    def __init__(self) -> None:
        self._cursors: Dict[str, _Cursor] = {}
        self._lock = threading.Lock()

    def load(self, run_dir: str) -> Optional[RunOnDisk]:
        """The run in ``run_dir``, or None when it is no door run (no run.json, or no ``mlflow`` object)."""
        try:
            meta = fmt.read_json(os.path.join(run_dir, fmt.RUN_JSON))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("mlflow"), dict):
            return None
        try:
            params = fmt.read_json(os.path.join(run_dir, fmt.CONFIG)) or {}
        except (OSError, ValueError):
            params = {}
        info = dict(meta["mlflow"])
        info["tags"] = dict(info.get("tags") or {})
        return RunOnDisk(run_dir, info, {str(k): str(v) for k, v in params.items()}, self.latest(run_dir), meta)

    def latest(self, run_dir: str) -> Latest:
        path = os.path.join(run_dir, POINTS)
        with self._lock:
            cursor = self._cursors.setdefault(run_dir, _Cursor())
            try:
                size = os.path.getsize(path)
            except OSError:
                return dict(cursor.latest)
            if size < cursor.offset:  # the file was repaired shorter (a resume cut a torn tail)
                cursor = self._cursors[run_dir] = _Cursor()
            if size > cursor.offset:
                with open(path, "rb") as f:
                    f.seek(cursor.offset)
                    data = f.read(size - cursor.offset)
                complete = data.rfind(b"\n") + 1
                for step, ts_ms, values in parse_points(data[:complete]):
                    for key, value in values.items():
                        if not isinstance(value, (int, float)) or isinstance(value, bool):
                            continue
                        seen = cursor.latest.get(key)
                        if seen is None or (step, ts_ms, value) > seen:
                            cursor.latest[key] = (step, ts_ms, float(value))
                cursor.offset += complete
            return dict(cursor.latest)

    @staticmethod
    def history(run_dir: str, key: str) -> List[Tuple[int, int, float]]:
        """Every point of ``key`` as (step, timestamp, value), in the order logged."""
        try:
            with open(os.path.join(run_dir, POINTS), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        return [(step, ts_ms, float(values[key])) for step, ts_ms, values in parse_points(data)
                if key in values and isinstance(values[key], (int, float))]
