"""One MLflow run that this process writes, through hpc's writer thread (no mlflow import here).

The tracking store (``_store.py``) turns MLflow's calls into the calls below; each only queues work for the
run's :class:`DoorWriter` (a :class:`hpc._writer.Writer` with one more stream, ``points.jsonl``) and updates
what MLflow reads back at once: params, tags, run info and the latest value of each metric key. The queue
is bounded like ``hpc.init``'s (``queue_max_bytes``): beyond it points are dropped and counted, never waited
for, and a failing disk costs warnings and counts, never the training.
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .. import _format as fmt
from .._context import RunContext
from .._init import prepare_run_dir
from .._settings import Settings
from .._stream import Stream
from .._terminal import Terminal
from .._writer import CONFIG, FINISH, CallerCounts, Writer
from ._layout import POINTS

__all__ = ["DoorRun", "DoorWriter", "STATUS_OUTCOME", "TERMINAL_STATUSES"]

POINTS_ITEM, META_ITEM, FLUSH_ITEM = "door-points", "door-meta", "door-flush"
_FINISH_TIMEOUT_S = 60.0  # as hpc.init's runs: a hung file system must not keep a finished job alive forever
_FLUSH_TIMEOUT_S = 10.0
# Estimated memory of a queued record (tuple, dict, float, key) and of each further key: see hpc._run.
_RECORD_BYTES = 240
_KEY_BYTES = 80
#: MLflow's terminal statuses -> exit.json (exit_code, reason)
STATUS_OUTCOME = {"FINISHED": (0, "finished"), "FAILED": (1, "failed"), "KILLED": (130, "killed")}
TERMINAL_STATUSES = frozenset(STATUS_OUTCOME)

Point = Tuple[str, float, int, int]  # key, value, timestamp (ms), step


class DoorWriter(Writer):
    """hpc's writer thread plus ``points.jsonl`` and the run.json ``mlflow`` object."""

    def __init__(self, run_dir: str, meta: Dict[str, Any], history: Stream, points: Stream, settings: Settings,
                 terminal: Terminal, config: Dict[str, Any]):
        super().__init__(run_dir, meta, history, settings, terminal, {}, config, capture_code=False)
        self.points = points
        self.end_ms: Optional[int] = None
        self.dropped_points = 0  # set by the caller before FINISH: points the full queue refused

    def _other(self, item: tuple) -> None:
        kind = item[0]
        if kind == POINTS_ITEM:
            self.drained_bytes += item[2]
            append, encode = self.points.append, fmt.encode_values
            for step, ts_ms, values in item[1]:
                append(step, ts_ms, encode(values))
        elif kind == META_ITEM:
            self._meta["mlflow"] = item[1]
            self._meta["name"] = item[1].get("run_name") or self._meta.get("name")
            self._meta_dirty = True
        elif kind == FLUSH_ITEM:
            self._flush()
            self.write_documents(fsync=False)
            item[1].set()
        else:
            super()._other(item)

    def _flush(self) -> None:
        super()._flush()
        self.points.flush()

    def outcome_extra(self) -> Dict[str, Any]:
        extra: Dict[str, Any] = {"points_records": self.points.next_seq,
                                 "dropped_points": self.dropped_points + self.points.dropped}
        if self.end_ms is not None:
            extra["end_ms"] = self.end_ms
        return extra

    def finish(self, exit_code: int, reason: Optional[str], caller: CallerCounts) -> None:
        """``reason`` None: the process ends while MLflow still calls the run RUNNING: everything is written
        and closed, but no exit.json (readers then see it as active, later crashed, as for hpc.init)."""
        self._guard(self.points.close)
        if reason is not None:
            super().finish(exit_code, reason, caller)
            return
        self._guard(self._history.close)
        self._guard(self.write_documents)


class DoorRun:
    """What the store keeps of a run it writes. Thread-safe: MLflow logs from its own queue thread too."""

    def __init__(self, run_dir: str, info: Dict[str, Any], params: Dict[str, str],
                 latest: Dict[str, Tuple[int, int, float]], writer: DoorWriter, settings: Settings):
        self.run_dir = run_dir
        self.run_id: str = info["run_id"]
        self.info = info              # run.json's "mlflow" object (tags included), as MLflow reads it back
        self.params = params
        self.latest = latest          # key -> (step, timestamp, value): MLflow's "latest" order
        self.writer = writer
        self._queue = writer.queue
        self._lock = threading.Lock()
        self._budget_bytes = settings.queue_max_bytes
        self._queue_limit = self._budget_bytes
        self._queued_bytes = 0
        self.dropped_points = 0
        self._terminal = writer._terminal
        self.closed = False

    @classmethod
    def open(cls, run_dir: str, info: Dict[str, Any], exists: bool, context: RunContext, settings: Settings,
             terminal: Terminal, params: Optional[Dict[str, str]] = None,
             latest: Optional[Dict[str, Tuple[int, int, float]]] = None) -> DoorRun:
        """Create the run directory, or resume it (a new attempt), and start its writer thread."""
        settings = dataclasses.replace(settings, project=os.path.basename(os.path.dirname(run_dir)))
        ready = prepare_run_dir(settings, terminal, context, run_dir, info["run_id"], exists, info["run_name"],
                                context.job_type, None, None, None, extra_meta={"mlflow": dict(info)})
        points = Stream(os.path.join(run_dir, POINTS), terminal)
        cut = points.open()
        if cut:
            terminal.info(f"repaired the torn tail of {points.path}: cut {cut} bytes of an unfinished record")
        config = dict(params or {})
        writer = DoorWriter(run_dir, ready.meta, ready.history, points, settings, terminal, config)
        run = cls(run_dir, info, config, dict(latest or {}), writer, settings)
        if params:
            run._queue.append((CONFIG, dict(config)))
        writer.start()
        return run

    # ---- the hot path ---------------------------------------------------------------------------------
    def log_points(self, points: Iterable[Point]) -> None:
        """Queue points: consecutive points sharing step and timestamp become one record (a key seen twice
        starts a new one, so both points are kept)."""
        records: List[Tuple[int, int, Dict[str, float]]] = []
        count = 0
        latest = self.latest
        current: Optional[Dict[str, float]] = None
        last_step = last_ts = None
        lock = self._lock
        lock.acquire()  # explicit acquire/release: half the cost of `with` on this hot path
        try:
            for key, value, ts_ms, step in points:
                value = _float(value)
                if current is None or step != last_step or ts_ms != last_ts or key in current:
                    current = {}
                    records.append((step, ts_ms, current))
                    last_step, last_ts = step, ts_ms
                current[key] = value
                count += 1
                seen = latest.get(key)
                if seen is None or (step, ts_ms, value) > seen:
                    latest[key] = (step, ts_ms, value)
            if not records:
                return
            cost = _RECORD_BYTES * len(records) + _KEY_BYTES * count
            queued = self._queued_bytes + cost
            if queued > self._queue_limit:
                self._queue_limit = self.writer.drained_bytes + self._budget_bytes
                if queued > self._queue_limit:
                    self.dropped_points += count
                    self._queue_full()
                    return
            self._queued_bytes = queued
            self._queue.append((POINTS_ITEM, records, cost))
        finally:
            lock.release()

    def _queue_full(self) -> None:
        if self._terminal.warn_once("door-queue-full", (
                f"the writer of run {self.run_id} is {self._budget_bytes} bytes behind (logging faster than "
                "storage takes it, or storage stalled): metric points are dropped and counted in exit.json "
                "(dropped_points) until it catches up; raise HPCSYNC_QUEUE_MAX_BYTES to keep more in memory")):
            self.writer.wake.set()

    # ---- the rest -------------------------------------------------------------------------------------
    def set_params(self, params: Dict[str, str]) -> None:
        with self._lock:
            self.params.update(params)
            self._queue.append((CONFIG, dict(self.params)))

    def publish_info(self) -> None:
        """Queue the current run info (status, times, name, tags) for run.json."""
        with self._lock:
            snapshot = dict(self.info)
            snapshot["tags"] = dict(self.info.get("tags", {}))
            self._queue.append((META_ITEM, snapshot))

    def flush(self, timeout_s: float = _FLUSH_TIMEOUT_S) -> None:
        """Wait (bounded) until everything queued so far is in the files (read back by another reader)."""
        if self.closed or not self.writer.is_alive():
            return
        done = threading.Event()
        self._queue.append((FLUSH_ITEM, done))
        self.writer.wake.set()
        done.wait(timeout_s)

    def close(self, status: Optional[str], end_ms: Optional[int]) -> None:
        """Stop the writer: with a terminal MLflow status, exit.json records it; with None, the run stays
        open for readers (the process ends while MLflow calls the run RUNNING)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            exit_code, reason = STATUS_OUTCOME.get(status or "", (0, None))
            self.writer.end_ms = end_ms
            self.writer.dropped_points = self.dropped_points
            counts: CallerCounts = {"dropped_rows": 0, "dropped_output_bytes": 0}
            self._queue.append((FINISH, exit_code, reason, counts))
        self.writer.wake.set()
        self.writer.join(_FINISH_TIMEOUT_S)
        if self.writer.is_alive():
            self._terminal.warn(f"the run directory {self.run_dir} did not take the last points within "
                                f"{_FINISH_TIMEOUT_S:.0f} s (hung file system?); exit.json may be missing")


def _float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond the double range: the double it rounds to
        return math.inf if value > 0 else -math.inf
