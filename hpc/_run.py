"""The Run object and ``init``: what a training script holds while it records a run."""
from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple

from . import _console, _signals
from . import _format as fmt
from ._artifact import next_versions
from ._config import Config, PreInit, Summary
from ._context import RunContext
from ._metrics import declaration
from ._names import random_id
from ._rows import RowQueue
from ._settings import Settings
from ._stream import Stream
from ._terminal import Terminal
from ._wandb_run import WandbRunMethods
from ._writer import CONFIG, COPY, DEFINE, FINISH, SAVE, SUMMARY_DEL, SUMMARY_SET, Writer
from .errors import UsageError

__all__ = ["Run", "DisabledRun", "Config", "Summary", "active_run", "open_runs", "register", "OPEN_RUNS"]

NO_CONFIG = PreInit("hpc.config")
NO_SUMMARY = PreInit("hpc.summary")
_FINISH_TIMEOUT_S = 60.0  # bounded: a hung file system must not keep a finished job alive forever
_active: Optional[Run] = None  # hpc.run
_open: List[Run] = []  # every run recorded here and not finished, oldest first (guarded by _active_lock)
_active_lock = threading.RLock()  # re-entrant: a signal handler may finish the run mid-finish


class Run(RowQueue, WandbRunMethods):
    """One run being recorded. Create it with ``hpc.init()``. Logging (``log``, ``step``, the queue's
    budget) is :class:`hpc._rows.RowQueue`; this class holds the run's identity and its lifecycle."""

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
        self._finished = False
        self._artifact_versions = next_versions(os.path.join(run_dir, fmt.FILES_DIR)) if self.resumed else {}
        writer = Writer(run_dir, meta, history, settings, terminal, summary_state, config,
                        capture_code=not settings.disable_code)
        RowQueue.__init__(self, writer, terminal, settings.queue_max_bytes,
                          next_step=history.last_step + 1 if history.last_step is not None else 0)
        self.config = Config(config, on_change=lambda snapshot: self._enqueue((CONFIG, snapshot)))
        self.summary = Summary(self._summary_values, self._set_summary, self._delete_summary)
        self._hooks = _signals.ExitHooks()
        self._console: Optional[tuple] = None
        self._monitor: Optional[Any] = None  # the system-metrics process (hpc._monitor_control), started by init
        self._writer.start()

    def __repr__(self) -> str:
        return f"<hpc.Run {self.project}/{self.id} name={self.name!r} dir={self.dir!r}>"

    # ---- what run.summary and the W&B methods call back (neither holds more of the run than that) -------
    def _summary_values(self) -> Dict[str, Any]:
        self._sync()
        return self._writer.summary.values()

    def _set_summary(self, key: str, value: Any) -> None:
        self._enqueue((SUMMARY_SET, key, value))

    def _delete_summary(self, key: str) -> None:
        self._enqueue((SUMMARY_DEL, key))

    def _copy_into_run(self, copies: List[Tuple[Any, str]]) -> bool:
        self._enqueue((COPY, copies))
        return True

    def _warn(self, message: str, once: Optional[str] = None) -> None:
        if once is None:
            self._terminal.warn(message)
        else:
            self._terminal.warn_once(once, message)

    def define_metric(self, name: str, step_metric: Optional[str] = None, summary: Optional[str] = None, *,
                      step_sync: Optional[bool] = None, hidden: Optional[bool] = None, goal: Optional[str] = None,
                      overwrite: Optional[bool] = None) -> None:
        """Declare a metric (or a glob such as ``train/*``): its x-axis key and its summary policy.
        W&B's ``summary="best"`` with ``goal`` is ``min`` or ``max``; ``step_sync``, ``hidden`` and ``goal``
        are recorded in the declaration (docs/run-format.md section 4)."""
        self._enqueue((DEFINE, declaration(name, step_metric, summary, step_sync, hidden, goal,
                                           self._terminal.warn_once), bool(overwrite)))

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
            if self in _open:
                _open.remove(self)
            last = not _open
        self._hooks.uninstall()
        if last:
            _signals.uninstall(OPEN_RUNS)
        if self._console is not None:
            _console.uninstall(self._console)
            self._console = None
        if forked:  # a forked child: the run, its writer and its monitor belong to the parent
            _release_module_globals(self)
            return
        monitor, self._monitor = self._monitor, None
        if monitor is not None:  # first: system.jsonl is complete before the writer writes exit.json
            monitor.stop(timeout_s=2.0)
        self._queue.append((FINISH, exit_code, reason, self._last_rows()))
        self._writer.wake.set()
        self._writer.join(_FINISH_TIMEOUT_S)
        if self._writer.is_alive():
            self._terminal.warn(f"the run directory {self.dir} did not take the last rows within "
                                f"{_FINISH_TIMEOUT_S:.0f} s (hung file system?); exit.json may be missing")
        _release_module_globals(self)

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
        self._artifact_versions: Dict[str, int] = {}

    def log(self, data: Any, step: Any = None, commit: Any = None, sync: Any = None) -> None:
        return None

    def _copy_into_run(self, copies: List[Tuple[Any, str]]) -> bool:
        return False  # nothing is recorded

    def _warn(self, message: str, once: Optional[str] = None) -> None:
        return None

    def define_metric(self, *args: Any, **kwargs: Any) -> None:
        return None

    def save(self, *args: Any, **kwargs: Any) -> None:
        return None

    def finish(self, exit_code: Optional[int] = 0, quiet: Optional[bool] = None) -> None:
        _release_module_globals(self)

    def _finish(self, exit_code: int, reason: str) -> None:
        self.finish(exit_code)

    def __enter__(self) -> DisabledRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()


def active_run() -> Optional[Run]:
    """The run ``hpc.run`` names (None: none, or only runs made with ``reinit="create_new"``)."""
    return _active


def open_runs() -> List[Run]:
    """Every run this process records and has not finished, oldest first (``reinit="create_new"`` keeps
    several open, as W&B does)."""
    with _active_lock:
        return list(_open)


def register(run: Run, *, make_active: bool) -> None:
    """A new run is open; ``make_active``: it becomes ``hpc.run`` (W&B's create_new runs do not)."""
    global _active
    with _active_lock:
        _open.append(run)
        if make_active:
            _active = run


def finish_open_runs(exit_code: int, reason: str) -> None:
    """Finish every open run, newest first: what a termination signal and the end of the process do."""
    for run in reversed(open_runs()):
        run._finish(exit_code, reason)


class _OpenRuns:
    """What the signal handlers close (hpc._signals calls ``_finish``): every open run of this process."""

    def _finish(self, exit_code: int, reason: str) -> None:
        finish_open_runs(exit_code, reason)


OPEN_RUNS = _OpenRuns()


def _set_module_globals(run: Any) -> None:
    package = sys.modules.get("hpc")
    if package is None:
        return
    # hpc.run / hpc.config / hpc.summary: module attributes W&B-style code reads, set as runs come and go;
    # without a run, config and summary refuse every use with a message, as W&B's do.
    vars(package).update(run=run, config=run.config if run is not None else NO_CONFIG,
                         summary=run.summary if run is not None else NO_SUMMARY)


def _release_module_globals(run: Any) -> None:
    """A run finished: ``hpc.run`` and its companions let go of it if they name it (a create_new run's
    finish leaves the active run in place)."""
    package = sys.modules.get("hpc")
    if package is not None and getattr(package, "run", None) is run:
        _set_module_globals(None)


def _after_fork_in_child() -> None:
    global _active_lock
    _active_lock = threading.RLock()  # another thread may have held it at the fork
    for run in list(_open):
        run._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _finish_at_exit() -> None:
    for run in reversed(open_runs()):
        run._finish(*run._hooks.outcome())
