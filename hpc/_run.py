"""The Run object and ``init``: what a training script holds while it records a run."""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Dict, Iterator, List, Optional

from . import _console, _signals
from ._context import RunContext
from ._names import random_id
from ._settings import Settings
from ._terminal import Terminal
from ._values import MAX_KEY_CHARS, key_problem
from ._writer import CONFIG, DEFINE, FINISH, ROW, SAVE, SUMMARY_DEL, SUMMARY_SET, SYNC, TEXT, Stream, Writer
from .errors import UsageError

__all__ = ["Run", "DisabledRun", "Config", "Summary", "active_run", "set_active"]

_FINISH_TIMEOUT_S = 60.0  # bounded: a hung file system must not keep a finished job alive forever
_SYNC_TIMEOUT_S = 10.0
_MAX_QUEUED_ROWS = 1_000_000
_SUMMARY_POLICIES = ("min", "max", "mean", "last")
_active: Optional["Run"] = None
_active_lock = threading.RLock()  # re-entrant: a signal handler may finish the run mid-finish


class Config(dict):
    """``run.config``: a dict with attribute access; every change is written to config.json."""

    def __init__(self, data: Optional[Mapping] = None, on_change: Any = None):
        super().__init__(data or {})
        object.__setattr__(self, "_on_change", on_change)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(dict(self))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._changed()

    def update(self, *args: Any, allow_val_change: bool = True, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(*args, **kwargs)
        self._changed()

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def as_dict(self) -> Dict[str, Any]:
        return dict(self)


class Summary(MutableMapping):
    """``run.summary``: last logged value per key (or its min/max/mean policy); a value set by hand wins."""

    def __init__(self, run: "Run"):
        self._run = run

    def _values(self) -> Dict[str, Any]:
        self._run._sync()
        return self._run._writer.summary_values()

    def __getitem__(self, key: str) -> Any:
        return self._values()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        problem = key_problem(key)
        if problem:
            raise UsageError(problem)
        self._run._enqueue((SUMMARY_SET, key, value))

    def __delitem__(self, key: str) -> None:
        if key not in self._values():
            raise KeyError(key)
        self._run._enqueue((SUMMARY_DEL, key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __repr__(self) -> str:
        return f"Summary({self._values()!r})"


class _ExitHooks:
    """Learn how the process ends (sys.exit code, uncaught exception), as W&B does, to fill exit.json."""

    def __init__(self) -> None:
        self.exit_code: Any = None
        self.exception: Optional[type] = None
        self._orig_exit = None
        self._orig_hook = None

    def install(self) -> None:
        self._orig_exit, self._orig_hook = sys.exit, sys.excepthook
        sys.exit, sys.excepthook = self._exit, self._excepthook

    def uninstall(self) -> None:
        if sys.exit == self._exit:
            sys.exit = self._orig_exit
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._orig_hook

    def _exit(self, code: Any = 0) -> None:
        self.exit_code = code
        self._orig_exit(code)

    def _excepthook(self, kind: type, value: BaseException, tb: Any) -> None:
        self.exception = kind
        self._orig_hook(kind, value, tb)

    def outcome(self) -> tuple:
        if self.exception is not None:
            if issubclass(self.exception, KeyboardInterrupt):
                return 130, "killed"
            return 1, "failed"
        code = self.exit_code
        if code is None or code == 0:
            return 0, "finished"
        return (code if isinstance(code, int) else 1), "failed"


class Run:
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
        self._dropped = 0
        self._refused_steps = 0
        self._keys: set = set()
        self._metric_names: set = set()
        self.step = history.last_step + 1 if history.last_step is not None else 0
        self._writer = Writer(run_dir, meta, history, settings, terminal, summary_state, config,
                              capture_code=not settings.disable_code)
        self._queue = self._writer.queue
        self.config = Config(config, on_change=lambda snapshot: self._enqueue((CONFIG, snapshot)))
        self.summary = Summary(self)
        self._hooks = _ExitHooks()
        self._console: Optional[tuple] = None
        self._monitor: Optional[Any] = None  # the system-metrics process (hpc._stats), started by init
        self._writer.start()

    def __repr__(self) -> str:
        return f"<hpc.Run {self.project}/{self.id} name={self.name!r} dir={self.dir!r}>"

    # ---- logging --------------------------------------------------------------------------------------
    def log(self, data: Mapping[str, Any], step: Optional[int] = None, commit: Optional[bool] = None) -> None:
        """Queue a row. W&B semantics: without ``step`` each call is one row at an auto-incremented step
        (``commit=False`` merges into the current row); with ``step`` the row is written when the step
        changes, or now with ``commit=True``. A ``step`` below the current one is refused with a warning.
        """
        if self._finished:
            raise UsageError(f"log() after finish() of run {self.id}: call hpc.init() to start a new run")
        if type(data) is not dict:
            if not isinstance(data, Mapping):
                raise UsageError(f"log() takes a dict of metrics, got {type(data).__name__}")
            data = dict(data)
        if not self._keys.issuperset(data):
            self._check_keys(data)
        if step is None:
            step = self._step_now
            do_commit = commit is None or bool(commit)
        else:
            if type(step) is not int or step < 0:
                step = self._coerce_step(step)
            if step < self._step_now:
                self._refuse_step(step)
                return
            self._step_now = step
            do_commit = bool(commit)
        queue = self._queue
        if len(queue) >= _MAX_QUEUED_ROWS:
            self._dropped += 1
            self._terminal.warn_once("queue-full", f"the writer is {_MAX_QUEUED_ROWS} rows behind (slow "
                                     "storage?); rows are dropped and counted in exit.json")
            return
        queue.append((ROW, step, int(time.time() * 1000), dict(data), do_commit))
        if do_commit:
            self._step_now = step + 1

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
        except (TypeError, ValueError):
            raise UsageError(f"step must be a non-negative integer, got {step!r}") from None
        if value < 0:
            raise UsageError(f"step must be a non-negative integer, got {step!r}")
        return value

    def _refuse_step(self, step: int) -> None:
        self._refused_steps += 1
        if self._refused_steps == 1 or self._refused_steps % 1000 == 0:
            self._terminal.warn(f"refused a row at step {step}: the current step is {self._step_now} and "
                                f"steps only go up ({self._refused_steps} refused so far); log without "
                                "step= or with a larger one")

    def _enqueue(self, item: tuple) -> None:
        if self._finished:
            raise UsageError(f"run {self.id} is finished: call hpc.init() to start a new run")
        self._queue.append(item)

    def _sync(self) -> None:
        """Wait (bounded) until the writer has processed everything queued so far."""
        if self._finished or not self._writer.is_alive():
            return
        done = threading.Event()
        self._queue.append((SYNC, done))
        self._writer.wake.set()
        done.wait(_SYNC_TIMEOUT_S)

    def define_metric(self, name: str, step_metric: Optional[str] = None, summary: Optional[str] = None) -> None:
        """Declare a metric (or a glob such as ``train/*``): its x-axis key and its summary policy."""
        if not isinstance(name, str) or not name or len(name) > MAX_KEY_CHARS:
            raise UsageError(f"define_metric needs a metric name or glob of 1 to {MAX_KEY_CHARS} characters")
        if summary is not None and summary not in _SUMMARY_POLICIES:
            raise UsageError(f"summary={summary!r} is not one of {', '.join(_SUMMARY_POLICIES)}")
        if step_metric is not None and key_problem(step_metric):
            raise UsageError(key_problem(step_metric))
        self._enqueue((DEFINE, {"name": name, "step_metric": step_metric, "summary": summary}))

    def save(self, path_or_glob: str, policy: str = "now", base_path: Optional[str] = None) -> None:
        """Copy files (a path or a glob, relative to ``base_path`` or the working directory) into
        ``files/`` now, or at ``finish`` with ``policy="end"``."""
        if policy not in ("now", "end"):
            raise UsageError(f"policy={policy!r}: use 'now' or 'end'")
        if not isinstance(path_or_glob, (str, os.PathLike)) or not str(path_or_glob):
            raise UsageError("save() needs a file path or a glob")
        self._enqueue((SAVE, os.fspath(path_or_glob), os.path.abspath(base_path or os.getcwd()), policy))

    # ---- ending ---------------------------------------------------------------------------------------
    def finish(self, exit_code: int = 0) -> None:
        """Flush everything, fsync, and write exit.json last. Safe to call twice."""
        self._finish(exit_code, "finished" if exit_code == 0 else "failed")

    def _finish(self, exit_code: int, reason: str) -> None:
        global _active
        with _active_lock:
            if self._finished:
                return
            self._finished = True
            if _active is self:
                _active = None
        self._hooks.uninstall()
        _signals.uninstall(self)
        if self._console is not None:
            _console.uninstall(self._console)
            self._console = None
        monitor, self._monitor = self._monitor, None
        if monitor is not None:  # first: system.jsonl is complete before the writer writes exit.json
            monitor.stop(timeout_s=2.0)
        self._queue.append((FINISH, exit_code, reason, self._dropped))
        self._writer.wake.set()
        self._writer.join(_FINISH_TIMEOUT_S)
        if self._writer.is_alive():
            self._terminal.warn(f"the run directory {self.dir} did not take the last rows within "
                                f"{_FINISH_TIMEOUT_S:.0f} s (hung file system?); exit.json may be missing")
        _set_module_globals(None)

    def __enter__(self) -> "Run":
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
            queue = self._queue
            self._console = _console.install(lambda text: queue.append((TEXT, text)))


class DisabledRun:
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

    def log(self, data: Any, step: Any = None, commit: Any = None) -> None:
        return None

    def define_metric(self, *args: Any, **kwargs: Any) -> None:
        return None

    def save(self, *args: Any, **kwargs: Any) -> None:
        return None

    def finish(self, exit_code: int = 0) -> None:
        _set_module_globals(None)

    def _finish(self, exit_code: int, reason: str) -> None:
        self.finish(exit_code)

    def __enter__(self) -> "DisabledRun":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()


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
    package.run = run
    package.config = run.config if run is not None else None
    package.summary = run.summary if run is not None else None


@atexit.register
def _finish_at_exit() -> None:
    run = _active
    if run is not None:
        run._finish(*run._hooks.outcome())
