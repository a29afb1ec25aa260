"""psutil samplers (``<subsystem>_<quantity>()`` returning small records) and the :class:`Sampler` that turns
them, plus the NVML adapter's readings, into one flat ``{metric name: number}`` dict per sample.

Metric names carry their unit (``_percent``, ``_bytes``, ``_w``, ``_c``, ``_mhz``, ``_count``); the full
list is in docs/metrics.md and in :data:`METRICS`. Nothing here raises into the monitor loop: a failing
source is reported once per failure kind and left out of the sample.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

import psutil

from ._nvml import GpuDevice, Nvml
from .errors import GpuError

__all__ = [
    "METRICS", "CUMULATIVE", "WarnOnce", "ProcessTree", "Sampler",
    "cpu_system_percent", "memory_system", "disk_usage", "disk_io", "network_io",
]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

# name -> (aggregation over a window, description). "{i}" is the CUDA ordinal the job sees.
METRICS: Dict[str, Tuple[str, str]] = {
    "cpu/process_percent": ("mean", "CPU of the training process and its children; 100 = one core busy"),
    "memory/process_rss_bytes": ("mean", "resident memory of the training process tree (shared pages count "
                                         "once per process)"),
    "process/thread_count": ("mean", "threads in the training process tree"),
    "process/process_count": ("mean", "processes in the training process tree (it, DataLoader workers, ...)"),
    "cpu/system_percent": ("mean", "host CPU utilization over all cores, 0-100"),
    "memory/system_percent": ("mean", "host memory in use, % of total"),
    "memory/system_used_bytes": ("mean", "host memory in use (psutil `used`)"),
    "disk/usage_percent": ("mean", "file system holding the run: % used"),
    "disk/used_bytes": ("mean", "file system holding the run: bytes used"),
    "disk/available_bytes": ("mean", "file system holding the run: bytes available to the user"),
    "disk/read_bytes": ("last", "bytes read from all local disks since the monitor started"),
    "disk/write_bytes": ("last", "bytes written to all local disks since the monitor started"),
    "network/sent_bytes": ("last", "bytes sent on all interfaces since the monitor started"),
    "network/received_bytes": ("last", "bytes received on all interfaces since the monitor started"),
    "gpu/{i}/utilization_percent": ("mean", "time a kernel was running, %"),
    "gpu/{i}/memory_controller_percent": ("mean", "time device memory was read or written, %"),
    "gpu/{i}/memory_used_bytes": ("mean", "device memory in use"),
    "gpu/{i}/memory_used_percent": ("mean", "device memory in use, % of total"),
    "gpu/{i}/temperature_c": ("mean", "GPU die temperature, degrees Celsius"),
    "gpu/{i}/power_w": ("mean", "power draw, watts"),
    "gpu/{i}/power_limit_w": ("mean", "enforced power limit, watts"),
    "gpu/{i}/power_percent": ("mean", "power draw, % of the enforced limit"),
    "gpu/{i}/sm_clock_mhz": ("mean", "SM clock, MHz"),
    "gpu/{i}/ecc_corrected_count": ("last", "corrected ECC errors since the driver loaded (where supported)"),
    "gpu/{i}/ecc_uncorrected_count": ("last", "uncorrected ECC errors since the driver loaded (where supported)"),
}

# Keys whose window value is the last sample (running totals), not the mean.
CUMULATIVE = re.compile(
    "^(?:" + "|".join(re.escape(k).replace(r"\{i\}", r"\d+") for k, (agg, _) in METRICS.items() if agg == "last")
    + ")$"
)


class WarnOnce:
    """Log each failure kind once (a broken source would otherwise print a line every sample)."""

    def __init__(self, logger: logging.Logger = log):
        self._seen: Set[str] = set()
        self._log = logger

    def __call__(self, kind: str, message: str) -> None:
        if kind not in self._seen:
            self._seen.add(kind)
            self._log.warning("%s", message)

    def seen(self, kind: str) -> bool:
        return kind in self._seen


# -- host samplers (psutil) ---------------------------------------------------------------------------
class MemorySystem(NamedTuple):
    percent: float
    used_bytes: int


class DiskUsage(NamedTuple):
    percent: float
    used_bytes: int
    available_bytes: int


class DiskIo(NamedTuple):
    read_bytes: int
    write_bytes: int


class NetworkIo(NamedTuple):
    sent_bytes: int
    received_bytes: int


class ProcessTreeSample(NamedTuple):
    cpu_percent: Optional[float]  # None on the first (priming) call
    rss_bytes: int
    thread_count: int
    process_count: int


def cpu_system_percent() -> float:
    """Host CPU % since the previous call (psutil keeps the baseline; the first call returns 0: prime it)."""
    return psutil.cpu_percent(interval=None)


def memory_system() -> MemorySystem:
    vm = psutil.virtual_memory()
    return MemorySystem(float(vm.percent), int(vm.used))


def disk_usage(path: str) -> DiskUsage:
    du = psutil.disk_usage(path)
    return DiskUsage(float(du.percent), int(du.used), int(du.free))


def disk_io() -> Optional[DiskIo]:
    """Host-wide totals since boot; None where the kernel exposes no disks (some containers)."""
    io = psutil.disk_io_counters()
    return DiskIo(int(io.read_bytes), int(io.write_bytes)) if io is not None else None


def network_io() -> Optional[NetworkIo]:
    io = psutil.net_io_counters()
    return NetworkIo(int(io.bytes_sent), int(io.bytes_recv)) if io is not None else None


class ProcessTree:
    """The training process and all its descendants, except ``exclude_pids`` (the monitor itself).

    CPU % is computed from per-process CPU-time deltas instead of ``Process.cpu_percent()``, whose first
    call per process returns 0: a DataLoader worker born between two samples is counted from its birth.
    """

    def __init__(self, root_pid: int, exclude_pids: Iterable[int] = (), clock: Callable[[], float] = time.monotonic):
        self._root = psutil.Process(root_pid)
        self._exclude = set(exclude_pids)
        self._clock = clock
        # CPU seconds of every process seen, and at which sample: a worker missed by one walk (the children
        # files can miss a process born or reaped during the read) is not counted from zero when it reappears.
        self._cpu_s: Dict[Tuple[int, float], Tuple[float, int]] = {}
        self._n = 0
        self._last_t: Optional[float] = None
        self._proc_children: Optional[bool] = None

    def _descendants(self) -> List[psutil.Process]:
        """The root's descendants from ``/proc/<pid>/task/<tid>/children``: cost grows with the tree, not with
        every process on the node as psutil's ``children()`` (a full /proc scan: 25 us per process) does."""
        if self._proc_children is None:
            self._proc_children = os.path.exists(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/children")
        if not self._proc_children:
            return self._root.children(recursive=True)
        found: List[psutil.Process] = []
        todo = [self._root.pid]
        seen = {self._root.pid}
        while todo:
            pid = todo.pop()
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue  # exited
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                        kids = fh.read().split()
                except OSError:
                    continue
                for kid in map(int, kids):
                    if kid not in seen:
                        seen.add(kid)
                        todo.append(kid)
                        try:
                            found.append(psutil.Process(kid))
                        except psutil.NoSuchProcess:
                            pass
        if not self._root.is_running():
            raise psutil.NoSuchProcess(self._root.pid)
        return found

    def sample(self) -> ProcessTreeSample:
        """Raises ``psutil.NoSuchProcess`` once the root is gone."""
        now = self._clock()
        procs = [self._root] + self._descendants()
        cpu_s: Dict[Tuple[int, float], float] = {}
        delta_s = rss = threads = count = 0
        for proc in procs:
            if proc.pid in self._exclude:
                continue
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    mem = proc.memory_info()
                    nthreads = proc.num_threads()
                    created = proc.create_time()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                if proc is self._root and not self._root.is_running():
                    raise
                continue  # a worker that exited (or turned zombie) mid-walk
            key = (proc.pid, created)
            used = times.user + times.system
            cpu_s[key] = used
            if key in self._cpu_s:
                delta_s += max(0.0, used - self._cpu_s[key][0])
            elif self._last_t is not None:
                # Not in the tree at the previous sample, so born since (a process only joins a tree by
                # birth): all its CPU time is new. (create_time cannot decide this: psutil derives it from
                # the boot time, which /proc gives in whole seconds.)
                delta_s += used
            rss += mem.rss
            threads += nthreads
            count += 1
        percent = None
        if self._last_t is not None and now > self._last_t:
            percent = 100.0 * delta_s / (now - self._last_t)
        self._n += 1
        self._cpu_s.update((key, (used, self._n)) for key, used in cpu_s.items())
        if len(self._cpu_s) > 2 * len(cpu_s) + 64:  # forget processes long gone
            self._cpu_s = {k: v for k, v in self._cpu_s.items() if v[1] > self._n - 10}
        self._last_t = now
        return ProcessTreeSample(percent, rss, threads, count)


# -- the composed sampler ---------------------------------------------------------------------------
class Sampler:
    """Builds one flat sample. ``host=False`` (local ranks > 0) leaves out node-wide metrics."""

    def __init__(self, run_dir: str, tree: Optional[ProcessTree], *, host: bool = True,
                 nvml: Optional[Nvml] = None, devices: Iterable[GpuDevice] = (), warn: Optional[WarnOnce] = None,
                 disk_usage_every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._run_dir = run_dir
        # statfs on Lustre/GPFS is a round trip to the servers, from every job on the cluster: the file
        # system's usage is read at most every disk_usage_every_s and the reading reused in between.
        self._disk_usage_every_s = disk_usage_every_s
        self._clock = clock
        self._disk_usage: Optional[DiskUsage] = None
        self._disk_usage_t = -math.inf
        self._tree = tree
        self._host = host
        self._nvml = nvml
        self._devices: List[GpuDevice] = list(devices)
        self._warn = warn or WarnOnce()
        self._disk0: Optional[DiskIo] = None
        self._net0: Optional[NetworkIo] = None
        self.parent_gone = False

    def prime(self) -> None:
        """Take the baselines that rates and running totals are measured from."""
        if self._host:
            cpu_system_percent()
            self._disk0 = self._guard("disk_io", disk_io)
            self._net0 = self._guard("network_io", network_io)
        if self._tree is not None:
            self._tree_sample()

    def _guard(self, kind: str, fn: Callable, *args):
        try:
            return fn(*args)
        except (OSError, psutil.Error, RuntimeError) as err:
            self._warn(kind, f"hpc-sync monitor: cannot read {kind.replace('_', ' ')} ({err}); left out")
            return None

    def _tree_sample(self) -> Optional[ProcessTreeSample]:
        try:
            return self._tree.sample() if self._tree is not None else None
        except psutil.NoSuchProcess:
            self.parent_gone = True
            return None
        except (OSError, psutil.Error) as err:
            self._warn("process_tree", f"hpc-sync monitor: cannot read the training process tree ({err}); left out")
            return None

    def sample(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        tree = self._tree_sample()
        if tree is not None:
            if tree.cpu_percent is not None:
                out["cpu/process_percent"] = tree.cpu_percent
            out["memory/process_rss_bytes"] = tree.rss_bytes
            out["process/thread_count"] = tree.thread_count
            out["process/process_count"] = tree.process_count
        if self._host:
            self._sample_host(out)
        if self._devices:
            self._sample_gpus(out)
        return out

    def _sample_host(self, out: Dict[str, float]) -> None:
        cpu = self._guard("cpu", cpu_system_percent)
        if cpu is not None:
            out["cpu/system_percent"] = cpu
        mem = self._guard("memory", memory_system)
        if mem is not None:
            out["memory/system_percent"] = mem.percent
            out["memory/system_used_bytes"] = mem.used_bytes
        now = self._clock()
        if now - self._disk_usage_t >= self._disk_usage_every_s:
            self._disk_usage = self._guard("disk_usage", disk_usage, self._run_dir)
            self._disk_usage_t = now
        du = self._disk_usage
        if du is not None:
            out["disk/usage_percent"] = du.percent
            out["disk/used_bytes"] = du.used_bytes
            out["disk/available_bytes"] = du.available_bytes
        dio = self._guard("disk_io", disk_io) if self._disk0 is not None else None
        if dio is not None and self._disk0 is not None:
            out["disk/read_bytes"] = dio.read_bytes - self._disk0.read_bytes
            out["disk/write_bytes"] = dio.write_bytes - self._disk0.write_bytes
        nio = self._guard("network_io", network_io) if self._net0 is not None else None
        if nio is not None and self._net0 is not None:
            out["network/sent_bytes"] = nio.sent_bytes - self._net0.sent_bytes
            out["network/received_bytes"] = nio.received_bytes - self._net0.received_bytes

    def _sample_gpus(self, out: Dict[str, float]) -> None:
        assert self._nvml is not None
        for device in list(self._devices):
            try:
                reading = self._nvml.sample(device.ordinal)
            except GpuError as err:  # permanent for this run (Nvml reports passing failures itself)
                self._devices.remove(device)
                self._warn(f"gpu:{device.ordinal}:{err.kind}",
                           f"hpc-sync monitor: {err}; metrics of GPU {device.ordinal} ({device.uuid}) stop, "
                           "CPU metrics go on")
                continue
            prefix = f"gpu/{device.ordinal}/"
            for field, value in reading._asdict().items():
                if field != "ordinal" and value is not None:
                    out[prefix + field] = value
