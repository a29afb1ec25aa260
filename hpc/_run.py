"""The Run object and ``init``: what a training script holds while it records a run."""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Dict, List, Optional

from . import _console, _signals
from ._config import Config, Summary
from ._context import RunContext
from ._names import random_id
from ._settings import Settings
from ._stream import Stream
from ._terminal import Terminal
from ._values import MAX_KEY_CHARS, key_problem
from ._wandb_run import WandbRunMethods
from ._writer import CONFIG, DEFINE, FINISH, ROW, SAVE, SUMMARY_LAST, SYNC, TEXT, Writer
from .errors import UsageError

__all__ = ["Run", "DisabledRun", "Config", "Summary", "active_run", "set_active"]

_FINISH_TIMEOUT_S = 60.0  # bounded: a hung file system must not keep a finished job alive forever
_SYNC_TIMEOUT_S = 10.0
_MAX_STEP = 2 ** 63 - 1  # steps are int64 downstream (MLflow stores a larger one as 0)
# What a queued row costs in memory, estimated from its number of keys (measured with tracemalloc on
# CPython 3.11: the row tuple, the copied dict, its float values, the deque slot). Console text: its length.
_ROW_BYTES = 320
_KEY_BYTES = 52
_TEXT_BYTES = 80
_time = time.time
_SUMMARY_POLICIES = ("min", "max", "mean", "last")
_active: Optional[Run] = None
_active_lock = threading.RLock()  # re-entrant: a signal handler may finish the run mid-finish


class Run(WandbRunMethods):
    """One run being recorded. Create it with ``hpc.init()``."""

    def __init__(self, settings: Settings, terminal: Terminal, meta: Dict[str, Any], run_dir: str,
                 history: Stream, config: Dict[str, Any], summary_state: Dict[str, Any],
                 context: RunContext):
        self.settings = settings
        self.id: str = meta["id"]
        self.name: str = meta["name"]
        self.project: str = meta["project"]
        self.group: Optional[str] = meta["group"]
        self.job_type: Optional[str] = meta["job_type"]
        self.tags: List[str] = list(meta["tags"])
        self.notes: str = meta["notes"]
        self.dir = run_dir
        self.context = context
        self.resumed = meta["attempt"] > 1
        self._terminal = terminal
        self._finished = False
        self._closed = False  # finished, or this process is a fork of the one that records the run
        self._owner_pid = os.getpid()
        self._refused_steps = 0
        self._keys: set = set()
        self._metric_names: set = set()
        # Everything below is guarded by _lock: threads that log concurrently get steps in queue order.
        # Re-entrant, because a warning printed under it comes back through the console tee.
        self._lock = threading.RLock()
        self._pending: Optional[Dict[str, Any]] = None  # the open row (commit=False, or step= not yet closed)
        self._pending_step = 0
        self._step_now: int = 0  # the next row's step (W&B's run.step)
        self._pending_ts_ms = 0
        self._queued_bytes = 0  # estimated bytes ever put on the queue; the writer counts what it took off
        self._budget_bytes = settings.queue_max_bytes
        self._queue_limit = self._budget_bytes
        self._full_warned: set = set()
        self._logged_rows = 0
        self._dropped_rows = 0
        self._dropped_last: Dict[str, Any] = {}  # the newest value per key of rows dropped since the last one in
        self._dropped_output_bytes = 0
        self.step = history.last_step + 1 if history.last_step is not None else 0
        self._writer = Writer(run_dir, meta, history, settings, terminal, summary_state, config,
                              capture_code=not settings.disable_code)
        self._queue = self._writer.queue
        self.config = Config(config, on_change=lambda snapshot: self._enqueue((CONFIG, snapshot)))
        self.summary = Summary(self)
        self._hooks = _signals.ExitHooks()
        self._console: Optional[tuple] = None
        self._monitor: Optional[Any] = None  # the system-metrics process (hpc._monitor_control), started by init
        self._writer.start()

    def __repr__(self) -> str:
        return f"<hpc.Run {self.project}/{self.id} name={self.name!r} dir={self.dir!r}>"

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
                    self._logged_rows += 1
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
        self._logged_rows += 1
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

    @property
    def step(self) -> int:
        return self._step_now

    @step.setter
    def step(self, value: int) -> None:
        self._step_now = value

    def _closed_call(self, what: str) -> None:
        if self.recorded_here:
            raise UsageError(f"{what} after finish() of run {self.id}: call hpc.init() to start a new run")
        self._terminal.warn_once(
            "forked", f"{what} in process {os.getpid()}, a fork of process {self._owner_pid} that records run "
            f"{self.id} (a DataLoader or multiprocessing worker?): only that process writes the run, so what "
            "this process logs is NOT recorded; log from the main process, or call hpc.init() here for a run "
            "of its own")

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

    def define_metric(self, name: str, step_metric: Optional[str] = None, summary: Optional[str] = None, *,
                      step_sync: Optional[bool] = None, hidden: Optional[bool] = None, goal: Optional[str] = None,
                      overwrite: Optional[bool] = None) -> None:
        """Declare a metric (or a glob such as ``train/*``): its x-axis key and its summary policy.
        W&B's ``summary="best"`` with ``goal`` is ``min`` or ``max``; ``step_sync``, ``hidden`` and ``goal``
        are recorded in the declaration (docs/run-format.md section 4)."""
        if not isinstance(name, str) or not name or len(name) > MAX_KEY_CHARS:
            raise UsageError(f"define_metric needs a metric name or glob of 1 to {MAX_KEY_CHARS} characters")
        summary = self._summary_policy(name, summary, goal)
        if step_metric is not None and key_problem(step_metric):
            raise UsageError(key_problem(step_metric))
        decl: Dict[str, Any] = {"name": name, "step_metric": step_metric, "summary": summary}
        for key, value in (("step_sync", step_sync), ("hidden", hidden), ("goal", goal)):
            if value is not None:
                decl[key] = value
        self._enqueue((DEFINE, decl))

    def _summary_policy(self, name: str, summary: Optional[str], goal: Optional[str]) -> Optional[str]:
        """hpc's one policy for W&B's summary (which may list several: ``"min,max"``)."""
        if summary is None:
            return None
        wanted = [p.strip() for p in str(summary).split(",") if p.strip()]
        mapped = []
        for policy in wanted:
            if policy == "best":
                policy = {"minimize": "min", "maximize": "max"}.get(str(goal), "")
                if not policy:
                    raise UsageError("summary='best' needs goal='minimize' or goal='maximize'")
            policy = {"copy": "last", "first": "last"}.get(policy, policy)
            if policy not in _SUMMARY_POLICIES + ("none",):
                raise UsageError(f"summary={summary!r}: {policy!r} is not one of "
                                 f"{', '.join(_SUMMARY_POLICIES)}, best, copy or none")
            mapped.append(policy)
        if len(set(mapped)) > 1:
            self._terminal.warn_once(f"summary-{name}", f"define_metric({name!r}, summary={summary!r}): hpc keeps "
                                     f"one summary per key, {mapped[0]!r}")
        return None if not mapped or mapped[0] == "none" else mapped[0]

    def save(self, path_or_glob: str, policy: str = "now", base_path: Optional[str] = None) -> None:
        """Copy files (a path or a glob, relative to ``base_path`` or the working directory) into
        ``files/`` now, or at ``finish`` with ``policy="end"``."""
        if policy not in ("now", "end"):
            raise UsageError(f"policy={policy!r}: use 'now' or 'end'")
        if not isinstance(path_or_glob, (str, os.PathLike)) or not str(path_or_glob):
            raise UsageError("save() needs a file path or a glob")
        self._enqueue((SAVE, os.fspath(path_or_glob), os.path.abspath(base_path or os.getcwd()), policy))

    # ---- ending ---------------------------------------------------------------------------------------
    def finish(self, exit_code: Optional[int] = 0, quiet: Optional[bool] = None) -> None:
        """Flush everything, fsync, and write exit.json last. Safe to call twice."""
        exit_code = exit_code or 0
        self._finish(exit_code, "finished" if exit_code == 0 else "failed")

    def _finish(self, exit_code: int, reason: str) -> None:
        global _active
        with _active_lock:
            if self._finished:
                return
            self._finished = True
            forked = not self.recorded_here
            self._closed = True
            if _active is self:
                _active = None
        self._hooks.uninstall()
        _signals.uninstall(self)
        if self._console is not None:
            _console.uninstall(self._console)
            self._console = None
        if forked:  # a forked child: the run, its writer and its monitor belong to the parent
            _set_module_globals(None)
            return
        monitor, self._monitor = self._monitor, None
        if monitor is not None:  # first: system.jsonl is complete before the writer writes exit.json
            monitor.stop(timeout_s=2.0)
        with self._lock:
            if self._dropped_last:
                self._queue_dropped_last()
            if self._pending is not None:  # the open row is the last one; one row may exceed the budget
                self._logged_rows += 1
                row, self._pending = self._pending, None
                self._queue.append((ROW, self._pending_step, self._pending_ts_ms, row, 0))
            counts = {"logged_rows": self._logged_rows, "dropped_rows": self._dropped_rows,
                      "dropped_output_bytes": self._dropped_output_bytes}
        self._queue.append((FINISH, exit_code, reason, counts))
        self._writer.wake.set()
        self._writer.join(_FINISH_TIMEOUT_S)
        if self._writer.is_alive():
            self._terminal.warn(f"the run directory {self.dir} did not take the last rows within "
                                f"{_FINISH_TIMEOUT_S:.0f} s (hung file system?); exit.json may be missing")
        _set_module_globals(None)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.finish(0)
        elif issubclass(kind, KeyboardInterrupt):
            self._finish(130, "killed")
        else:
            self._finish(1, "failed")

    def _start_capture(self) -> None:
        self._hooks.install()
        if self.settings.console:
            self._console = _console.install(self._console_text)


class DisabledRun(WandbRunMethods):
    """mode="disabled": the same surface, every call a cheap no-op."""

    def __init__(self, settings: Settings, config: Optional[Mapping] = None, name: Optional[str] = None):
        self.settings = settings
        self.id = random_id()
        self.name = name or "disabled"
        self.project = settings.project
        self.group = settings.group
        self.job_type = None
        self.tags: List[str] = []
        self.notes = ""
        self.dir: Optional[str] = None
        self.step = 0
        self.resumed = False
        self.config = Config(config)
        self.summary: Dict[str, Any] = {}

    def log(self, data: Any, step: Any = None, commit: Any = None, sync: Any = None) -> None:
        return None

    def define_metric(self, *args: Any, **kwargs: Any) -> None:
        return None

    def save(self, *args: Any, **kwargs: Any) -> None:
        return None

    def finish(self, exit_code: Optional[int] = 0, quiet: Optional[bool] = None) -> None:
        _set_module_globals(None)

    def _finish(self, exit_code: int, reason: str) -> None:
        self.finish(exit_code)

    def __enter__(self) -> DisabledRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()


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


def active_run() -> Optional[Run]:
    return _active


def set_active(run: Run) -> None:
    global _active
    with _active_lock:
        _active = run


def _set_module_globals(run: Any) -> None:
    package = sys.modules.get("hpc")
    if package is None:
        return
    # hpc.run / hpc.config / hpc.summary: module attributes W&B-style code reads, set as runs come and go.
    vars(package).update(run=run, config=run.config if run is not None else None,
                         summary=run.summary if run is not None else None)


def _after_fork_in_child() -> None:
    global _active_lock
    _active_lock = threading.RLock()  # another thread may have held it at the fork
    run = _active
    if run is not None:
        run._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _finish_at_exit() -> None:
    run = _active
    if run is not None:
        run._finish(*run._hooks.outcome())
