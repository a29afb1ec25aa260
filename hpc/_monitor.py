"""The system-metrics monitor: a separate process that samples every ``stats_sample_s`` and appends one
averaged record per ``stats_average_s`` window to ``system.jsonl`` (its only writer), plus ``hardware.json``.

This module is the process (``python -m hpc._monitor``): ``hpc._monitor_control.start_monitor`` starts it from
``hpc.init`` and nothing in the SDK imports this module, so ``-m`` runs its only copy.

It dies with the run: ``PR_SET_PDEATHSIG`` wakes it the moment its parent dies, a parent-pid check on every
sample covers what that misses (a parent thread that exits, non-Linux), and it stays in the job's process
group so a cancelled job's group kill reaches it. SIGTERM (stop, or the scheduler's cancel) writes the last
partial window first. SIGINT/SIGUSR1/SIGUSR2 are ignored: Ctrl-C and preemption signals are for the training
process, which then stops the monitor through ``finish``.

Multi-rank policy (docs/metrics.md): local rank 0 (or no local rank) records node-wide metrics (host CPU,
memory, disk, network); every rank records its own process tree; GPUs: every visible device without a local
rank, otherwise the rank's own ones (:func:`select_devices`).
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import math
import os
import platform
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import psutil

from ._format import SYSTEM, atomic_write_json, encode_values, repair_torn_tail

__all__ = ["Monitor", "Averager", "SystemStream", "select_devices", "main"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

SYSTEM_FILE = SYSTEM
HARDWARE_FILE = "hardware.json"
_PR_SET_PDEATHSIG = 1
# The signal the kernel sends when the parent dies. Not SIGTERM: the parent *thread* that started us exiting
# also fires it, so on SIGHUP we check the parent really is gone before stopping.
_DEATH_SIGNAL = signal.SIGHUP
# The start record: one sample this long after the monitor starts (or at the first grid point, if sooner).
# Long enough for the primed CPU percentages to mean something, short enough for a run of a few seconds.
FIRST_SAMPLE_S = 0.5


# -- files ------------------------------------------------------------------------------------------------
class SystemStream:
    """Appends records to ``system.jsonl``, continuing ``seq`` and ``step`` after a resume.

    Each line goes out in one ``write``; if that fails (full disk, stale NFS handle) the file is cut back
    to the last good line so no torn record is left before the next one, and the record is counted as
    dropped.
    """

    def __init__(self, path: str, warn: Callable[[str, str], None]):
        self.path = path
        self._warn = warn
        last, _ = repair_torn_tail(path)
        if last is not None and not isinstance(last.get("step"), int):
            last = None  # not a record of this format: start over rather than guess
        self.seq = last["seq"] + 1 if last else 0
        self.step = last["step"] + 1 if last else 0
        self.dropped = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._good = os.fstat(self._fd).st_size

    def append(self, ts_ms: int, values: Dict[str, Any]) -> None:
        record = {"seq": self.seq, "step": self.step, "ts_ms": ts_ms, "values": values}
        data = (encode_values(record) + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except OSError as err:
            self.dropped += 1
            self._warn("write", f"hpc-sync monitor: cannot append to {self.path} ({err}); "
                                "system metrics are dropped until it can")
            try:
                os.ftruncate(self._fd, self._good)
            except OSError:
                pass
            return
        self._good += len(data)
        self.seq += 1
        self.step += 1

    def close(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as err:
            self._warn("fsync", f"hpc-sync monitor: cannot fsync {self.path} ({err})")
        os.close(self._fd)


# -- averaging loop -------------------------------------------------------------------------------------
class Averager:
    """Mean of each key over the samples that had it; running totals (``cumulative(key)``) keep the last."""

    def __init__(self, cumulative: Callable[[str], bool]):
        self._cumulative = cumulative
        self._reset()

    def _reset(self) -> None:
        self._sums: Dict[str, float] = {}
        self._counts: Dict[str, int] = {}
        self._last: Dict[str, float] = {}
        self.samples = 0

    def add(self, sample: Dict[str, float]) -> None:
        self.samples += 1
        for key, value in sample.items():
            if self._cumulative(key):
                self._last[key] = value
            else:
                self._sums[key] = self._sums.get(key, 0.0) + value
                self._counts[key] = self._counts.get(key, 0) + 1

    def flush(self) -> Dict[str, float]:
        out: Dict[str, float] = {k: self._sums[k] / self._counts[k] for k in self._sums}
        out.update(self._last)
        self._reset()
        return dict(sorted(out.items()))


class Monitor:
    """Sample on a fixed grid of ``sample_s``; after the last sample of each ``average_s`` window, emit its
    average. Windows are ``(k*average_s, (k+1)*average_s]`` from the start; a sample at ``t`` belongs to the
    window holding ``t``. Late wake-ups skip missed grid points rather than bunching samples; empty windows
    are not emitted.

    Short runs still get a start and an end: with ``first_sample_s``, one sample taken that long after the
    start is emitted at once as a record of its own (the grid then goes on after it); on ``stop()`` (or the
    wait reporting a stop request) with ``sample_at_stop``, one last sample joins the partial window, which
    is emitted. When ``alive()`` turns False (the training process is gone) the partial window is emitted
    without a last sample: there is no process left to measure.
    """

    def __init__(self, sample: Callable[[], Dict[str, float]], emit: Callable[[int, Dict[str, float]], None], *,
                 sample_s: float, average_s: float, cumulative: Callable[[str], bool] = lambda key: False,
                 clock: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                 wait: Optional[Callable[[float], bool]] = None, alive: Callable[[], bool] = lambda: True,
                 first_sample_s: Optional[float] = None, sample_at_stop: bool = True):
        self._sample, self._emit = sample, emit
        self._sample_s, self._average_s = sample_s, average_s
        self._clock, self._wall_ms, self._alive = clock, wall_ms, alive
        self._first_sample_s, self._sample_at_stop = first_sample_s, sample_at_stop
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._avg = Averager(cumulative)

    def stop(self) -> None:
        self._stop.set()

    def _window(self, t: float) -> int:
        return max(0, math.ceil(round(t / self._average_s, 9)) - 1)

    def run(self) -> None:
        start = self._clock()
        k = 1  # grid index of the next sample
        parent_gone = False
        try:
            if self._first_sample_s is not None:
                if self._wait(self._first_sample_s) or self._stop.is_set():
                    return
                if not self._alive():
                    parent_gone = True
                    return
                self._avg.add(self._sample())
                self._emit(self._wall_ms(), self._avg.flush())
                k = math.floor(round(self._first_sample_s / self._sample_s, 9)) + 1
            while not self._stop.is_set():
                if self._wait(max(0.0, start + k * self._sample_s - self._clock())) or self._stop.is_set():
                    break
                if not self._alive():
                    parent_gone = True
                    break
                self._avg.add(self._sample())
                t = k * self._sample_s
                behind = math.floor((self._clock() - start) / self._sample_s)
                k = max(k + 1, behind + 1)
                if self._window(k * self._sample_s) != self._window(t):
                    self._emit(self._wall_ms(), self._avg.flush())
        finally:
            if self._sample_at_stop and not parent_gone and self._alive():
                self._avg.add(self._sample())
            if self._avg.samples:
                self._emit(self._wall_ms(), self._avg.flush())


# -- device policy and hardware.json ------------------------------------------------------------------------
def select_devices(devices: Sequence[Any], local_rank: Optional[int],
                   local_world_size: Optional[int] = None) -> Tuple[List[Any], Optional[str]]:
    """The visible devices this rank records, and a warning when the policy leaves it none.

    No local rank, or one rank on the node: every visible device. Otherwise, when each rank sees fewer
    devices than there are ranks on the node, the launcher gave each rank its own (SLURM per-task binding):
    all of them. Else the node's devices are split in equal blocks in local-rank order (one each with
    torchrun's ``cuda:{LOCAL_RANK}`` convention). With the size unknown, local rank 0 may be alone on the node
    (SLURM sets SLURM_LOCALID=0 in a one-task job), so it keeps every device: a GPU recorded twice beats
    seven GPUs lost; a local rank k > 0 proves there are several ranks and records device k.
    """
    if local_rank is None or local_world_size == 1 or len(devices) <= 1:
        return list(devices), None
    if local_world_size is None and local_rank == 0:
        return list(devices), None
    if local_world_size is not None and len(devices) < local_world_size:
        return list(devices), None
    per_rank = len(devices) // local_world_size if local_world_size else 1
    own = list(devices[local_rank * per_rank:(local_rank + 1) * per_rank])
    if own:
        return own, None
    return [], (f"hpc-sync monitor: local rank {local_rank} but only {len(devices)} GPUs are visible; "
                "this rank records no GPU metrics (set CUDA_VISIBLE_DEVICES per rank to choose)")


def _hardware(args: argparse.Namespace, host: bool, cuda_visible: Optional[str], driver: Optional[str],
              gpus: List[Any], gpu_error: Optional[str]) -> Dict[str, Any]:
    return {
        "ts_ms": time.time_ns() // 1_000_000,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_total_bytes": psutil.virtual_memory().total,
        "parent_pid": args.parent_pid,
        "monitor_pid": os.getpid(),
        "local_rank": args.local_rank,
        "local_world_size": args.local_world_size,
        "host_metrics": host,
        "sample_s": args.sample_s,
        "average_s": args.average_s,
        "cuda_visible_devices": cuda_visible,
        "nvidia_driver_version": driver,
        "gpus": [{"ordinal": d.ordinal, "nvml_index": d.nvml_index, "name": d.name, "uuid": d.uuid,
                  "memory_total_bytes": d.memory_total_bytes} for d in gpus],
        "gpu_error": gpu_error,
    }


# -- the process ------------------------------------------------------------------------------------------
def _set_death_signal(warn: Callable[[str, str], None]) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(_DEATH_SIGNAL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as err:
        warn("prctl", f"hpc-sync monitor: prctl(PR_SET_PDEATHSIG) failed ({err}); relying on the parent-pid check")


def _parent_alive(parent_pid: int, original_ppid: int) -> bool:
    """False once the training process is gone (exited, killed, or a zombie waiting to be reaped)."""
    if os.getppid() != original_ppid:
        return False  # we were reparented: our parent died
    try:
        return psutil.Process(parent_pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; whose it is does not matter here


def _signal_wait(alive: Callable[[], bool]) -> Callable[[float], bool]:
    """Sleep up to ``timeout_s``; True when asked to stop (SIGTERM, or the death signal with the parent gone)."""

    if not hasattr(signal, "sigtimedwait"):  # macOS: a flag set by a handler, polled every 0.1 s
        stop_flag: List[bool] = []

        def on_signal(signum: int, frame: Any) -> None:
            if signum == signal.SIGTERM or not alive():
                stop_flag.append(True)

        for signum in (signal.SIGTERM, _DEATH_SIGNAL):
            signal.signal(signum, on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, _DEATH_SIGNAL})

        def poll_wait(timeout_s: float) -> bool:
            deadline = time.monotonic() + timeout_s
            while not stop_flag and time.monotonic() < deadline:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            return bool(stop_flag)

        return poll_wait

    def wait(timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            info = signal.sigtimedwait({signal.SIGTERM, _DEATH_SIGNAL}, remaining)
            if info is None:
                return False
            if info.si_signo == signal.SIGTERM or not alive():
                return True
            # The death signal while the parent lives: a parent *thread* exited (or a terminal hung up).

    return wait


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hpc._monitor", description="hpc-sync system-metrics monitor")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--average-s", type=float, default=30.0)
    parser.add_argument("--local-rank", type=int, default=None)
    parser.add_argument("--local-world-size", type=int, default=None)
    parser.add_argument("--silent", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None, *, nvml_module: Any = None,
         environ: Optional[Mapping[str, str]] = None) -> int:
    """The monitor process. ``nvml_module`` replaces ``pynvml`` and ``environ`` the environment (tests)."""
    args = _parser().parse_args(argv)
    env: Mapping[str, str] = os.environ if environ is None else environ
    logging.basicConfig(level=logging.ERROR if args.silent else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    from ._nvml import Nvml  # noqa: PLC0415  (after logging is set up)
    from ._sampling import CUMULATIVE, ProcessTree, Sampler, WarnOnce  # noqa: PLC0415
    from .errors import GpuError  # noqa: PLC0415

    warn = WarnOnce(logging.getLogger("hpc.monitor"))
    original_ppid = os.getppid()
    for ignored in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(ignored, signal.SIG_IGN)
    # SIGTERM and the death signal stay blocked and are taken synchronously in the wait between samples
    # (sigtimedwait): no handler can run in the middle of a write, and the wait still ends at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, _DEATH_SIGNAL})
    _set_death_signal(warn)

    def alive() -> bool:
        return _parent_alive(args.parent_pid, original_ppid)

    if not alive():
        return 0  # the parent died before PR_SET_PDEATHSIG was armed

    run_dir = args.run_dir
    host = args.local_rank is None or args.local_rank == 0 or args.local_world_size == 1
    nvml = Nvml(nvml_module, on_error=lambda err: warn(f"gpu:{err.kind}", f"hpc-sync monitor: {err}; "
                                                                           "will keep trying"))
    devices: List[Any] = []
    gpu_error: Optional[str] = None
    cuda_visible = env.get("CUDA_VISIBLE_DEVICES")
    try:
        devices, policy_warning = select_devices(nvml.open(cuda_visible), args.local_rank, args.local_world_size)
        if policy_warning:
            warn("policy", policy_warning)
        for problem in nvml.problems:
            warn(f"gpu_open:{problem.device}", f"hpc-sync monitor: {problem}; its metrics are left out")
    except GpuError as err:
        gpu_error = str(err)
        warn("gpu_open", f"hpc-sync monitor: no GPU metrics: {err}; CPU metrics go on")
        nvml.close()
    try:
        atomic_write_json(os.path.join(run_dir, HARDWARE_FILE),
                          _hardware(args, host, cuda_visible, nvml.driver_version, devices, gpu_error))
    except OSError as err:
        warn("hardware", f"hpc-sync monitor: cannot write {HARDWARE_FILE} ({err})")
    try:
        stream = SystemStream(os.path.join(run_dir, SYSTEM_FILE), warn)
    except OSError as err:
        warn("open", f"hpc-sync monitor: cannot open {SYSTEM_FILE} in {run_dir} ({err}); no system metrics")
        nvml.close()
        return 1
    try:
        tree: Optional[ProcessTree] = ProcessTree(args.parent_pid, exclude_pids=[os.getpid()])
    except psutil.Error as err:  # gone already (the next alive() check ends us), or not ours to read
        warn("process_tree", f"hpc-sync monitor: cannot read process {args.parent_pid} ({err}); "
                             "no process-tree metrics")
        tree = None
    sampler = Sampler(run_dir, tree, host=host, nvml=nvml, devices=devices, warn=warn,
                      disk_usage_every_s=min(args.average_s, 30.0))
    sampler.prime()
    monitor = Monitor(sampler.sample, stream.append, sample_s=args.sample_s, average_s=args.average_s,
                      cumulative=lambda key: bool(CUMULATIVE.match(key)),
                      wait=_signal_wait(alive), alive=lambda: not sampler.parent_gone and alive(),
                      first_sample_s=min(args.sample_s, FIRST_SAMPLE_S))
    try:
        monitor.run()
    finally:
        stream.close()
        nvml.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
