"""Preemption and termination signals: record the outcome, then let the scheduler or submitit carry on.

On a preemption signal (submitit's ``USR2``, or the one a user asked for with ``sbatch --signal``, ``USR1``
by default as well) the run is flushed and closed as ``preempted``. On ``SIGTERM`` it is closed as
``preempted`` when SLURM is requeueing the job (``scontrol requeue``, preemption with requeue) and as
``killed`` otherwise (``scancel``, a plain ``kill``). Then the handler that was there before runs: submitit's
own (it checkpoints and requeues on ``USR2``, it ignores ``SIGTERM``), a user's, or the default action,
which is re-raised so the process ends exactly as it would have without hpc-sync.

The run is closed first, before the previous handler, because that handler may exit the process or spend
the whole grace period checkpointing a model.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Any, Callable, Dict, Iterable, Mapping, NoReturn, Optional, Sequence, Union

from ._context import RunContext, detect
from .errors import HpcError, SettingsError

__all__ = ["install", "uninstall", "parse_signals", "DEFAULT_PREEMPT_SIGNALS", "slurm_requeue_probe", "ExitHooks"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

DEFAULT_PREEMPT_SIGNALS = ("SIGUSR1", "SIGUSR2")
PROBE_TIMEOUT_S = 2.0  # SLURM's KillWait between SIGTERM and SIGKILL is 30 s by default, 5 s on small setups

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
Probe = Callable[[RunContext], Optional[bool]]


def parse_signals(value: Union[str, int, Iterable[Union[str, int]]]) -> tuple:
    """``"USR1,SIGUSR2"``, ``10`` or ``["USR2"]`` -> a tuple of ``signal.Signals``; a bad name raises SettingsError."""
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
    parsed = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            sig = signal.Signals(int(text)) if text.isdigit() else signal.Signals[
                text.upper() if text.upper().startswith("SIG") else "SIG" + text.upper()
            ]
        except (KeyError, ValueError):
            raise SettingsError("preempt_signals", text, "signal names such as USR1, USR2 or SIGTERM") from None
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            raise SettingsError("preempt_signals", text, "a signal that can be caught (not KILL or STOP)")
        if sig not in parsed:
            parsed.append(sig)
    return tuple(parsed)


def slurm_requeue_probe(context: RunContext, runner: Runner = subprocess.run) -> Optional[bool]:
    """Is SLURM requeueing this job right now? ``None`` when it cannot tell.

    While a requeued job is being terminated, ``scontrol show job`` already counts the next restart
    (``Restarts=`` is one above this process's ``SLURM_RESTART_COUNT``); a cancelled job keeps its count.
    """
    slurm = context.metadata
    if not slurm or not slurm.get("job_id"):
        return None
    try:
        done = runner(
            ["scontrol", "show", "job", "--oneliner", str(slurm["job_id"])],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        logger.warning("hpc-sync: cannot ask SLURM whether job %s is requeued: %s", slurm["job_id"], err)
        return None
    found = re.search(r"\bRestarts=(\d+)", done.stdout or "")
    if done.returncode != 0 or not found:
        logger.warning("hpc-sync: scontrol gave no restart count for job %s (exit %s)", slurm["job_id"],
                       done.returncode)
        return None
    return int(found.group(1)) > int(slurm.get("restart_count") or 0)


class _Installed:
    """The handlers of one process: the run they close and what they replaced."""

    def __init__(self, run: Any, preempt: Sequence[signal.Signals], context: RunContext, probe: Probe):
        self.run = run
        self.preempt = frozenset(preempt)
        self.context = context
        self.probe = probe
        self.previous: Dict[int, Any] = {}
        self.closed = False

    def reason_for(self, signum: int) -> str:
        if signum in self.preempt:
            return "preempted"
        if signum == signal.SIGTERM and self.probe(self.context):
            return "preempted"
        return "killed"

    def handle(self, signum: int, frame: Any) -> None:
        # Only the first signal closes the run: submitit sends USR2, then SLURM sends SIGTERM.
        if not self.closed:
            self.closed = True
            reason = self.reason_for(signum)
            logger.info("hpc-sync: %s received, closing run as %s", signal.Signals(signum).name, reason)
            try:
                self.run._finish(128 + signum, reason)
            except (HpcError, OSError) as err:  # the job's own shutdown must go on regardless
                logger.warning("hpc-sync: could not record %s on %s: %s", reason, signal.Signals(signum).name, err)
        self.chain(signum, frame)

    def chain(self, signum: int, frame: Any) -> None:
        previous = self.previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:
            # The default action (terminate) exactly as without us: restore it and deliver the signal again.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


_installed: Optional[_Installed] = None


def install(
    run: Any,
    *,
    preempt_signals: Union[str, Iterable[Union[str, int]], None] = None,
    environ: Optional[Mapping[str, str]] = None,
    probe: Optional[Probe] = None,
) -> None:
    """Close ``run`` as preempted/killed on preemption signals and SIGTERM, then chain to previous handlers.

    Call it from the main thread (Python only lets the main thread set handlers); elsewhere it warns and
    does nothing. Calling it again for another run moves the handlers to that run.
    """
    global _installed
    if threading.current_thread() is not threading.main_thread():
        logger.warning("hpc-sync: signal handlers not installed (init was called outside the main thread): "
                       "a preempted or killed run will look crashed until it resumes")
        return
    preempt = parse_signals(DEFAULT_PREEMPT_SIGNALS if preempt_signals is None else preempt_signals)
    context = detect(environ)
    installed = _Installed(run, preempt, context, probe or slurm_requeue_probe)
    if _installed is not None:
        installed.previous = dict(_installed.previous)  # never chain to our own earlier handler
    for sig in (*preempt, signal.SIGTERM):
        current = signal.getsignal(sig)
        if current == _handler:
            continue  # still ours from the earlier install; what it replaced is already in `previous`
        if current is None:
            # Installed from C by some library: we could not hand it back, so leave it alone.
            logger.warning("hpc-sync: %s has a handler not set from Python; not watching it", sig.name)
            continue
        installed.previous[sig] = current
        signal.signal(sig, _handler)
    _installed = installed


def uninstall(run: Any = None) -> None:
    """Give back the handlers ``install`` replaced (those still ours); with ``run``, only if they watch that
    run. Call from the main thread (elsewhere it does nothing: the handlers then find the run finished)."""
    global _installed
    if _installed is None or threading.current_thread() is not threading.main_thread():
        return
    if run is not None and _installed.run is not run:
        return
    for sig, previous in _installed.previous.items():
        if signal.getsignal(sig) == _handler:
            signal.signal(sig, previous)
    _installed = None


def _handler(signum: int, frame: Any) -> None:
    # One module-level function, so a second install recognises its own handler and never chains to it.
    installed = _installed
    if installed is None:  # uninstalled in the meantime: behave as the default would
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    installed.handle(signum, frame)


class ExitHooks:
    """Learn how the process ends (sys.exit code, uncaught exception), as W&B does, to fill exit.json."""

    def __init__(self) -> None:
        self.exit_code: Any = None
        self.exception: Optional[type] = None
        self._orig_exit: Callable[..., NoReturn] = sys.exit
        self._orig_hook: Callable[[Any, BaseException, Any], Any] = sys.excepthook

    def install(self) -> None:
        self._orig_exit, self._orig_hook = sys.exit, sys.excepthook
        sys.exit, sys.excepthook = self._exit, self._excepthook

    def uninstall(self) -> None:
        if sys.exit == self._exit:
            sys.exit = self._orig_exit
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._orig_hook

    def _exit(self, code: Union[str, int, None] = 0) -> NoReturn:
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
