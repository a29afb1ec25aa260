"""The calling side of the writer's queue: steps, the open row, the byte budget and what it drops.

:class:`RowQueue` is the half of :class:`hpc.Run` that ``log()`` runs through, the training loop's hot path.
Everything here runs on the caller's threads under one re-entrant lock; the writer thread only takes items
off the queue and counts the bytes it took (``Writer.drained_bytes``).

A signal handler may finish the run in the middle of a ``log()`` call: Python runs it between two bytecodes
of the interrupted call, in the same thread, so it re-enters the lock (SIGINT instead raises
KeyboardInterrupt there). So nothing here counts a row ahead of the one step that hands it over: a row is
logged once it is on the queue (one ``deque.append``, which a signal cannot split; the writer counts it
as it takes it off) or once ``_dropped_rows`` counts it; a call interrupted before either logged nothing.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Dict, Optional

from ._terminal import Terminal
from ._values import key_problem
from ._writer import ROW, SUMMARY_LAST, SYNC, TEXT, CallerCounts, Writer
from .errors import UsageError

__all__ = ["RowQueue"]

_SYNC_TIMEOUT_S = 10.0
_MAX_STEP = 2 ** 63 - 1  # steps are int64 downstream (MLflow stores a larger one as 0)
# What a queued row costs in memory, estimated from its number of keys (measured with tracemalloc on
# CPython 3.11: the row tuple, the copied dict, its float values, the deque slot). Console text: its length.
_ROW_BYTES = 320
_KEY_BYTES = 52
_TEXT_BYTES = 80
_time = time.time


class RowQueue:
    """Rows and console text on their way to the writer, within ``queue_max_bytes``."""

    id: str

    def __init__(self, writer: Writer, terminal: Terminal, queue_max_bytes: int, next_step: int):
        self._writer = writer
        self._queue = writer.queue
        self._terminal = terminal
        self._closed = False  # finished, or this process is a fork of the one that records the run
        self._owner_pid = os.getpid()
        self._refused_steps = 0
        self._keys: set = set()
        # Everything below is guarded by _lock: threads that log concurrently get steps in queue order.
        # Re-entrant, because a warning printed under it comes back through the console tee.
        self._lock = threading.RLock()
        self._pending: Optional[Dict[str, Any]] = None  # the open row (commit=False, or step= not yet closed)
        self._pending_step = 0
        self._step_now: int = next_step  # the next row's step (W&B's run.step)
        self._pending_ts_ms = 0
        self._queued_bytes = 0  # estimated bytes ever put on the queue; the writer counts what it took off
        self._budget_bytes = queue_max_bytes
        self._queue_limit = self._budget_bytes
        self._full_warned: set = set()
        self._dropped_rows = 0
        self._dropped_last: Dict[str, Any] = {}  # the newest value per key of rows dropped since the last one in
        self._dropped_output_bytes = 0

    # ---- logging --------------------------------------------------------------------------------------
    def log(self, data: Mapping[str, Any], step: Optional[int] = None, commit: Optional[bool] = None,
            sync: Any = None) -> None:
        """Queue a row (``sync``, W&B's, is accepted and ignored). W&B semantics: without ``step`` each call
        is one row at an auto-incremented step (``commit=False`` merges into the current row); with ``step``
        the row is written when the step changes, or now with ``commit=True``. A ``step`` below the current
        one is refused with a warning.
        """
        if type(data) is not dict:
            if not isinstance(data, Mapping):
                raise UsageError(f"log() takes a dict of metrics, got {type(data).__name__}")
            data = dict(data)
        if not self._keys.issuperset(data):
            self._check_keys(data)
        if step is not None and (type(step) is not int or not 0 <= step <= _MAX_STEP):
            step = self._coerce_step(step)
        # The lock keeps step order and queue order the same whatever the threading. Explicit acquire and
        # release: a `with` block costs twice as much here, and this is the training loop's hot path.
        lock = self._lock
        lock.acquire()
        try:
            if self._closed:  # checked under the lock: a row either precedes finish's last one, or is refused
                self._closed_call("log()")
                return
            if step is None:
                step = self._step_now
                if self._pending is None and (commit is None or commit):
                    # The common row: one call at the next step, committed at once. This is _push inlined
                    # (a method call is a tenth of what log() costs); keep the two in step.
                    self._step_now = step + 1
                    if not data:
                        return
                    row = dict(data)  # a copy: the caller may reuse its dict
                    cost = _ROW_BYTES + _KEY_BYTES * len(row)
                    queued = self._queued_bytes + cost
                    if queued > self._queue_limit and not self._room_for(queued):
                        self._drop_row(row)
                        return
                    self._queued_bytes = queued
                    if self._dropped_last:
                        self._queue_dropped_last()
                    self._queue.append((ROW, step, int(_time() * 1000), row, cost))
                    return
                do_commit = commit is None or bool(commit)
            elif step < self._step_now:
                self._refuse_step(step)
                return
            else:
                do_commit = bool(commit)
            self._log_into_row(data, step, do_commit)
        finally:
            lock.release()

    def _log_into_row(self, data: Dict[str, Any], step: int, do_commit: bool) -> None:  # under _lock
        pending = self._pending
        if pending is None:
            row = dict(data)
        elif step == self._pending_step:
            row = _merged(pending, data)
            self._pending = None
        else:
            self._pending = None
            self._push(self._pending_step, self._pending_ts_ms, pending)
            row = dict(data)
        ts_ms = int(_time() * 1000)
        if do_commit:
            self._step_now = step + 1
            if row:
                self._push(step, ts_ms, row)
        else:
            self._pending, self._pending_step, self._pending_ts_ms = row, step, ts_ms
            self._step_now = step

    def _push(self, step: int, ts_ms: int, row: Dict[str, Any]) -> None:
        """Queue one complete row, or drop and count it when the queue holds ``queue_max_bytes`` already.
        Dropping the new row never waits; the writer catches up and later rows get in again."""
        cost = _ROW_BYTES + _KEY_BYTES * len(row)
        queued = self._queued_bytes + cost
        if queued > self._queue_limit and not self._room_for(queued):
            self._drop_row(row)
            return
        self._queued_bytes = queued
        if self._dropped_last:
            self._queue_dropped_last()
        self._queue.append((ROW, step, ts_ms, row, cost))

    def _room_for(self, queued_bytes: int) -> bool:  # under _lock
        """Whether the queue has room up to ``queued_bytes`` (ever queued), now that the writer has drained
        some. ``_queue_limit`` caches the answer's bound so the hot path compares one number."""
        self._queue_limit = self._writer.drained_bytes + self._budget_bytes
        return queued_bytes <= self._queue_limit

    def _drop_row(self, row: Dict[str, Any]) -> None:  # under _lock
        self._dropped_rows += 1
        # The history loses the row; the summary must not: a flood that lasts until the end would otherwise
        # leave the summary at values long gone (W&B's summary is the last value logged).
        self._dropped_last.update(row)
        self._queue_full("rows are dropped and counted in exit.json (dropped_rows)")

    def _queue_dropped_last(self) -> None:  # under _lock
        """The dropped rows' newest values go to the summary ahead of the next row that gets in."""
        self._queue.append((SUMMARY_LAST, self._dropped_last))
        self._dropped_last = {}

    def _queue_full(self, what: str) -> None:
        # The first drop wakes the writer and warns; the next ones (a flood drops thousands a second) only count.
        if what in self._full_warned:
            return
        self._full_warned.add(what)
        self._writer.wake.set()
        self._terminal.warn_once(
            f"queue-full-{what}", f"the writer is {_size(self._budget_bytes)} behind (logging faster than "
            f"storage takes it, or storage stalled): {what} until it catches up; raise queue_max_bytes "
            "(HPCSYNC_QUEUE_MAX_BYTES) to keep more in memory")

    def _console_text(self, text: str) -> None:
        """The console tee's sink: queue a copy of the text for output.log, within the same budget."""
        cost = _TEXT_BYTES + len(text)
        with self._lock:
            if self._closed:
                return  # finished; or a forked child, whose output is not the run's
            queued = self._queued_bytes + cost
            if queued > self._queue_limit and not self._room_for(queued):
                self._dropped_output_bytes += len(text.encode("utf-8", "replace"))
                self._queue_full("console text for output.log is dropped and counted in exit.json "
                                 "(dropped_output_bytes)")
                return
            self._queued_bytes = queued
            self._queue.append((TEXT, text, cost))

    def _last_rows(self) -> CallerCounts:
        """At finish: queue what is still held here (the dropped rows' summary values, the open row) and
        return what only this side knows: the rows it dropped. The rows it queued are counted by the writer
        as it takes them off the queue (exit.json's ``logged_rows`` is those plus these)."""
        with self._lock:
            if self._dropped_last:
                self._queue_dropped_last()
            if self._pending is not None:  # the open row is the last one; one row may exceed the budget
                row, self._pending = self._pending, None
                self._queue.append((ROW, self._pending_step, self._pending_ts_ms, row, 0))
            return {"dropped_rows": self._dropped_rows,
                    "dropped_output_bytes": self._dropped_output_bytes}

    @property
    def step(self) -> int:
        return self._step_now

    @step.setter
    def step(self, value: int) -> None:
        self._step_now = value

    def _check_keys(self, data: Mapping) -> None:
        for key in data:
            problem = key_problem(key)
            if problem:
                raise UsageError(f"{problem} (nothing of this row was logged)")
        self._keys.update(data)

    @staticmethod
    def _coerce_step(step: Any) -> int:
        try:
            value = step.item() if hasattr(step, "item") else step
            if isinstance(value, bool) or int(value) != value:
                raise ValueError
            value = int(value)
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"step must be a non-negative integer, got {step!r}") from None
        if not 0 <= value <= _MAX_STEP:
            raise UsageError(f"step must be a non-negative integer below 2**63, got {step!r}")
        return value

    def _refuse_step(self, step: int) -> None:  # under _lock
        self._refused_steps += 1
        if self._refused_steps == 1 or self._refused_steps % 1000 == 0:
            self._terminal.warn(f"refused a row at step {step}: the current step is {self._step_now} and "
                                f"steps only go up ({self._refused_steps} refused so far); log without "
                                "step= or with a larger one")

    # ---- everything else that goes through the queue -------------------------------------------------
    def _enqueue(self, item: tuple) -> None:
        if self._closed:
            self._closed_call("changing the config or summary")
            return
        self._queue.append(item)

    def _sync(self) -> None:
        """Wait (bounded) until the writer has processed everything queued so far."""
        if self._closed or not self._writer.is_alive():
            return
        done = threading.Event()
        self._queue.append((SYNC, done))
        self._writer.wake.set()
        done.wait(_SYNC_TIMEOUT_S)

    @property
    def recorded_here(self) -> bool:
        """False in a forked child: the process that called ``hpc.init()`` records this run."""
        return os.getpid() == self._owner_pid

    def _after_fork_in_child(self) -> None:
        """Runs in a fresh fork (os.register_at_fork). The writer thread did not come along: close this
        process's view of the run so that nothing accumulates for a writer that does not exist, and so that
        finishing here (atexit, a signal) cannot touch the parent's files."""
        self._closed = True
        self._lock = threading.RLock()  # another thread may have held it at the fork
        self._terminal.after_fork()
        self._pending = None
        self._queue.clear()

    def _closed_call(self, what: str) -> None:
        if self.recorded_here:
            raise UsageError(f"{what} after finish() of run {self.id}: call hpc.init() to start a new run")
        self._terminal.warn_once(
            "forked", f"{what} in process {os.getpid()}, a fork of process {self._owner_pid} that records run "
            f"{self.id} (a DataLoader or multiprocessing worker?): only that process writes the run, so what "
            "this process logs is NOT recorded; log from the main process, or call hpc.init() here for a run "
            "of its own")


def _size(size_bytes: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.3g} {unit}"
    return f"{size_bytes} bytes"


def _merged(row: Dict[str, Any], data: Mapping) -> Dict[str, Any]:
    """``data`` merged into the open ``row``, nested dicts key by key, as the writer will flatten them."""
    for key, value in data.items():
        before = row.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            value = _merged(dict(before), value)
        row[key] = value
    return row
