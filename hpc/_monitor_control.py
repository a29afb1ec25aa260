"""The training-process side of the system-metrics monitor: start it from ``hpc.init``, stop it in ``finish``.

The monitor itself is ``hpc._monitor``, run as a fresh interpreter (``python -m hpc._monitor``), never a fork
of the training process, which may hold CUDA state. ``start_monitor`` does not wait for it to come up.
"""
from __future__ import annotations

import logging
import os
import signal
import site
import subprocess
import sys
from typing import Optional

from ._settings import Settings

__all__ = ["start_monitor", "MonitorHandle"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


class MonitorHandle:
    """What :func:`start_monitor` returns; call :meth:`stop` from ``finish``."""

    def __init__(self, process: subprocess.Popen[bytes]):
        self.process = process
        self._owner_pid = os.getpid()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_s: float = 5.0) -> Optional[int]:
        """Ask the monitor to write its last partial window and exit; kill it after ``timeout_s``.

        Returns its exit code (None when called from another process than the one that started it, e.g. a
        forked worker: only the owner may stop it). Never raises.
        """
        if os.getpid() != self._owner_pid:
            return None
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("hpc-sync: the system-metrics monitor (pid %d) did not stop within %.1f s; killed it",
                            self.process.pid, timeout_s)
                self.process.kill()
            except OSError:
                pass
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None


def start_monitor(run_dir: str, *, parent_pid: int, settings: Settings, local_rank: Optional[int] = None,
                  local_world_size: Optional[int] = None) -> Optional[MonitorHandle]:
    """Start the monitor process for ``run_dir`` (does not wait for it). None when stats are off or it cannot
    start (one warning line; training goes on).

    ``local_rank``/``local_world_size``: this process's rank on the node and the number of ranks on the node
    (torchrun's LOCAL_RANK/LOCAL_WORLD_SIZE, SLURM's SLURM_LOCALID and tasks on this node); see the
    multi-rank policy in docs/metrics.md. Leave both None when one process per node records the run.
    """
    if not settings.stats:
        return None
    if not sys.executable:
        log.warning("hpc-sync: no Python executable to start the system-metrics monitor with (embedded "
                    "interpreter?); the run goes on without system metrics")
        return None
    run_dir = os.path.abspath(run_dir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(_child_path(env.get("PYTHONPATH", "")))
    argv = [sys.executable, "-m", "hpc._monitor", "--run-dir", run_dir, "--parent-pid", str(parent_pid),
            "--sample-s", repr(settings.stats_sample_s), "--average-s", repr(settings.stats_average_s)]
    if local_rank is not None:
        argv += ["--local-rank", str(local_rank)]
    if local_world_size is not None:
        argv += ["--local-world-size", str(local_world_size)]
    if settings.silent:
        argv.append("--silent")
    # The child inherits this thread's signal mask: with SIGTERM and SIGHUP blocked from its first
    # instruction, a stop() that comes while it is still starting waits for it instead of killing it
    # half-way (the monitor takes them with sigtimedwait). Only this thread, only for the fork.
    blocked = _block_signals()
    try:
        # cwd=run_dir: `-m` puts the cwd first on sys.path, and the user's cwd may hold a module named hpc.
        process = subprocess.Popen(argv, cwd=run_dir, env=env, stdin=subprocess.DEVNULL, close_fds=True)
    except OSError as err:
        log.warning("hpc-sync: cannot start the system-metrics monitor (%s); the run goes on without it", err)
        return None
    finally:
        if blocked is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return MonitorHandle(process)


def _child_path(pythonpath: str) -> list:
    """The child's PYTHONPATH: it must import this same hpc, even when the program put it on sys.path by
    hand; and it runs in the run directory, so relative entries are made absolute against our cwd. A
    site-packages directory is not added: ahead of the standard library it could shadow stdlib modules."""
    entries = [os.path.abspath(p) for p in pythonpath.split(os.pathsep) if p]
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site_dirs = set()
    try:
        site_dirs = {os.path.abspath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
    except AttributeError:  # virtualenv's old site.py lacks them
        pass
    if package_parent not in site_dirs and package_parent not in entries:
        entries.insert(0, package_parent)
    return entries


def _block_signals() -> Optional[set]:
    if not hasattr(signal, "pthread_sigmask") or not hasattr(signal, "sigtimedwait"):
        return None  # the monitor then installs handlers instead (macOS)
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP}))
