"""The one module that talks to NVML (``pynvml`` from nvidia-ml-py).

Every ``NVMLError`` is translated here into :class:`hpc.errors.GpuError` with a stable ``kind``, so the
monitor can warn once per kind and keep sampling the CPU. ``pynvml`` is imported lazily and can be
injected (tests pass a fake module with the same functions and constants): nothing else in ``hpc``
imports it.
"""
from __future__ import annotations

import logging
from types import ModuleType
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set

from .errors import GpuError

__all__ = ["GpuDevice", "GpuSample", "Nvml", "PERMANENT_KINDS", "parse_visible_devices"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

# NVML error codes we name (the values are fixed by the NVML ABI; a fake module need not define them).
_KINDS = {
    3: "not_supported",
    4: "no_permission",
    9: "driver_not_loaded",
    12: "library_not_found",
    13: "not_supported",  # FUNCTION_NOT_FOUND: an old driver without this query
    15: "gpu_lost",
    16: "gpu_lost",  # RESET_REQUIRED
    18: "driver_not_loaded",  # LIB_RM_VERSION_MISMATCH: driver updated under a running node
    28: "gpu_lost",  # GPU_NOT_FOUND
}
_ADVICE = {
    "library_not_found": "no NVIDIA driver on this node (libnvidia-ml.so.1 not found)",
    "driver_not_loaded": "the NVIDIA driver is not loaded, or was updated under this node (reboot it)",
    "no_permission": "no permission to query NVML (ask the admins for access to /dev/nvidia*)",
    "gpu_lost": "the GPU fell off the bus or needs a reset (check `nvidia-smi` and the kernel log)",
}


# Failures after which a device (or NVML) will not answer again in this run.
PERMANENT_KINDS = frozenset({"gpu_lost", "driver_not_loaded", "library_not_found", "no_permission"})


class GpuDevice(NamedTuple):
    """One device this job may use. ``ordinal`` is the CUDA index the job sees (``cuda:<ordinal>``)."""

    ordinal: int
    nvml_index: int
    uuid: str
    name: str
    memory_total_bytes: Optional[int]


class GpuSample(NamedTuple):
    """One reading of one device; a field is None when the device does not support that query."""

    ordinal: int
    utilization_percent: Optional[float] = None
    memory_controller_percent: Optional[float] = None
    memory_used_bytes: Optional[int] = None
    memory_used_percent: Optional[float] = None
    temperature_c: Optional[float] = None
    power_w: Optional[float] = None
    power_limit_w: Optional[float] = None
    power_percent: Optional[float] = None
    sm_clock_mhz: Optional[float] = None
    ecc_corrected_count: Optional[int] = None
    ecc_uncorrected_count: Optional[int] = None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_visible_devices(value: Optional[str], uuids: List[str]) -> List[int]:
    """NVML indices of the devices named by ``CUDA_VISIBLE_DEVICES``, in the order the job sees them.

    ``uuids`` lists every device's UUID in NVML order. ``None`` (unset) means every device. Entries are
    indices or ``GPU-<uuid>`` prefixes (SLURM writes either); like CUDA, the list ends at the first entry
    that names no device (``-1`` is the usual way to hide all GPUs). MIG instances are not supported: a
    ``MIG-`` entry raises ``GpuError(kind="bad_visible_devices")``, as does an ambiguous UUID prefix.
    """
    if value is None:
        return list(range(len(uuids)))
    chosen: List[int] = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry.isdigit():
            index = int(entry)
            if index >= len(uuids):
                break
        elif entry.startswith("GPU-"):
            matches = [i for i, u in enumerate(uuids) if u.lower().startswith(entry.lower())]
            if len(matches) > 1:
                raise GpuError("bad_visible_devices",
                               f"CUDA_VISIBLE_DEVICES entry {entry!r} matches {len(matches)} GPUs; "
                               "give more of the UUID")
            if not matches:
                break
            index = matches[0]
        elif entry.startswith("MIG-"):
            raise GpuError("bad_visible_devices",
                           f"CUDA_VISIBLE_DEVICES entry {entry!r} is a MIG instance: per-instance GPU metrics "
                           "are not supported")
        else:
            break
        if index in chosen:  # CUDA refuses a repeated device too: stop where it would
            break
        chosen.append(index)
    return chosen


class Nvml:
    """A handle on NVML for the devices this job may use.

    ``open()`` raises :class:`GpuError` when NVML cannot be used at all (no driver, no library, bad
    ``CUDA_VISIBLE_DEVICES``, none of the job's devices usable) and lists the job's devices it had to leave
    out in ``problems``; ``sample()`` raises it per device. Fields a device does not support are
    remembered and not queried again.
    """

    def __init__(self, module: Optional[ModuleType] = None, on_error: Callable[[GpuError], None] = lambda e: None):
        self._nv: Any = module
        self._on_error = on_error
        self._open = False
        self._handles: Dict[int, Any] = {}
        self._unsupported: Set[tuple] = set()
        self.devices: List[GpuDevice] = []
        self.problems: List[GpuError] = []  # devices of this job that open() had to leave out
        self.driver_version: Optional[str] = None

    # -- boundary ---------------------------------------------------------------------------------------
    def _error(self, err: BaseException, what: str, device: Optional[int] = None) -> GpuError:
        code = getattr(err, "value", None)
        kind = _KINDS.get(code, "nvml_error") if isinstance(code, int) else "nvml_error"
        where = f"GPU {device}: " if device is not None else ""
        if kind == "library_not_found":
            message = _ADVICE[kind]  # the common CPU-node case: nothing more to say
        elif kind in _ADVICE:
            message = f"{where}{_ADVICE[kind]} (NVML {what}: {err})"
        else:
            message = f"{where}NVML {what} failed: {err}"
        return GpuError(kind, message, code=code, device=device)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, device: Optional[int] = None) -> Any:
        try:
            return fn(*args)
        except self._nv.NVMLError as err:
            raise self._error(err, what, device) from err

    def open(self, cuda_visible_devices: Optional[str]) -> List[GpuDevice]:
        if self._nv is None:
            try:
                import pynvml  # noqa: PLC0415  (lazy: a CPU-only run never loads it)
            except ImportError as err:
                raise GpuError("library_not_found", "nvidia-ml-py is not installed (pip install nvidia-ml-py)") from err
            self._nv = pynvml
        nv = self._nv
        self._call("init", nv.nvmlInit)
        self._open = True
        try:
            self.driver_version = _text(self._call("driver version", nv.nvmlSystemGetDriverVersion))
        except GpuError:
            self.driver_version = None
        count = self._call("device count", nv.nvmlDeviceGetCount)
        # A device NVML lists but cannot open (another job's GPU behind a cgroup, one lost already) only
        # matters if it is one of ours: it must not cost the others their metrics.
        handles: List[Any] = []
        uuids: List[str] = []
        failed: Dict[int, GpuError] = {}
        for index in range(count):
            try:
                handle = self._call("device handle", nv.nvmlDeviceGetHandleByIndex, index)
                uuid = _text(self._call("device UUID", nv.nvmlDeviceGetUUID, handle))
            except GpuError as err:
                failed[index], handle, uuid = err, None, ""
            handles.append(handle)
            uuids.append(uuid)
        chosen = parse_visible_devices(cuda_visible_devices, uuids)
        self.devices, self.problems = [], []
        for ordinal, index in enumerate(chosen):
            try:
                if index in failed:
                    raise failed[index]
                handle = handles[index]
                name = _text(self._call("device name", nv.nvmlDeviceGetName, handle, device=ordinal))
            except GpuError as err:
                self.problems.append(GpuError(err.kind, f"GPU {ordinal} (NVML index {index}): {err}",
                                              code=err.code, device=ordinal))
                continue
            try:
                total: Optional[int] = int(self._call("memory info", nv.nvmlDeviceGetMemoryInfo, handle,
                                                      device=ordinal).total)
            except GpuError:
                total = None
            self._handles[ordinal] = handle
            self.devices.append(GpuDevice(ordinal, index, uuids[index], name, total))
        if chosen and not self.devices:
            raise self.problems[0]
        return self.devices

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self._nv.nvmlShutdown()
            except self._nv.NVMLError as err:  # shutting down: nothing left to protect
                log.debug("nvmlShutdown failed: %s", err)

    def _field(self, ordinal: int, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One query; None if the device does not support it (remembered) or it failed this once (reported to
        ``on_error``); GpuError when the device itself is gone, which ends its sample."""
        if (ordinal, name) in self._unsupported:
            return None
        try:
            return fn(self._handles[ordinal], *args)
        except self._nv.NVMLError as err:
            gerr = self._error(err, name, ordinal)
            if gerr.kind == "not_supported":
                self._unsupported.add((ordinal, name))
                return None
            if gerr.kind in PERMANENT_KINDS:
                raise gerr from err
            self._on_error(gerr)  # a timeout or an unknown error in one query: the other fields still count
            return None

    def _memory(self, ordinal: int) -> Any:
        """Memory in use as nvidia-smi shows it. Since driver R510 the v1 query counts the driver's reserved
        memory as used (about 600 MiB more on an idle H200, seen against nvidia-smi with
        benchmarks/gpu_check.py); the v2 query reports it apart. v1 only where v2 is missing."""
        nv = self._nv
        v2 = getattr(nv, "nvmlMemory_v2", None)
        if v2 is not None and (ordinal, "memory v2") not in self._unsupported:
            try:
                return nv.nvmlDeviceGetMemoryInfo(self._handles[ordinal], version=v2)
            except TypeError:  # bindings whose nvmlDeviceGetMemoryInfo takes no version
                self._unsupported.add((ordinal, "memory v2"))
            except nv.NVMLError as err:
                if self._error(err, "memory", ordinal).kind in PERMANENT_KINDS:
                    raise self._error(err, "memory", ordinal) from err
                self._unsupported.add((ordinal, "memory v2"))  # an older driver: v1 from now on
        return self._field(ordinal, "memory", nv.nvmlDeviceGetMemoryInfo)

    def sample(self, ordinal: int) -> GpuSample:
        nv = self._nv
        util = self._field(ordinal, "utilization", nv.nvmlDeviceGetUtilizationRates)
        mem = self._memory(ordinal)
        temp = self._field(ordinal, "temperature", nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)
        power_mw = self._field(ordinal, "power", nv.nvmlDeviceGetPowerUsage)
        limit_mw = self._field(ordinal, "power limit", nv.nvmlDeviceGetEnforcedPowerLimit)
        clock = self._field(ordinal, "SM clock", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)
        ecc_c = self._field(ordinal, "ECC corrected", nv.nvmlDeviceGetTotalEccErrors,
                            nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC)
        ecc_u = self._field(ordinal, "ECC uncorrected", nv.nvmlDeviceGetTotalEccErrors,
                            nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)
        power_w = power_mw / 1000.0 if power_mw is not None else None
        limit_w = limit_mw / 1000.0 if limit_mw is not None else None
        used = int(mem.used) if mem is not None else None
        return GpuSample(
            ordinal=ordinal,
            utilization_percent=float(util.gpu) if util is not None else None,
            memory_controller_percent=float(util.memory) if util is not None else None,
            memory_used_bytes=used,
            memory_used_percent=(100.0 * used / mem.total) if used is not None and mem.total else None,
            temperature_c=float(temp) if temp is not None else None,
            power_w=power_w,
            power_limit_w=limit_w,
            power_percent=(100.0 * power_w / limit_w) if power_w is not None and limit_w else None,
            sm_clock_mhz=float(clock) if clock is not None else None,
            ecc_corrected_count=int(ecc_c) if ecc_c is not None else None,
            ecc_uncorrected_count=int(ecc_u) if ecc_u is not None else None,
        )
