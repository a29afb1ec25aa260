"""A fake ``pynvml`` for tests: the same names and error behaviour as nvidia-ml-py, devices from a JSON file.

Used in-process (tests build one with :func:`make`) and in a real monitor process (the test puts this
directory first on PYTHONPATH and names the JSON file in ``FAKE_NVML_CONFIG``). Config:
``{"init_error": null | code, "devices": [{"uuid", "name", "total", "used", "gpu", "memory", "temp",
"power_mw", "limit_mw", "sm_mhz", "ecc": [c, u] | null, "lost_after": n | null, "open_error": code | null}]}``.
A device with ``lost_after: n`` answers n samples (counted by utilization queries), then fails every query with
GPU_IS_LOST, as a GPU that fell off the bus does.
"""
import json
import os
from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_VOLATILE_ECC = 0
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999


class NVMLError(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value

    def __str__(self):
        return {3: "Not Supported", 12: "NVML Shared Library Not Found", 15: "GPU is lost",
                999: "Unknown Error"}.get(self.value, f"error {self.value}")


_config = None
calls = []  # (function name, device index) of every device query, for tests that count queries


def configure(config):
    global _config
    _config = config
    calls.clear()


def _cfg():
    global _config
    if _config is None:
        with open(os.environ["FAKE_NVML_CONFIG"]) as fh:
            _config = json.load(fh)
    return _config


def _dev(handle, name, tick=False):
    calls.append((name, handle))
    device = _cfg()["devices"][handle]
    if tick:
        device["_n"] = device.get("_n", 0) + 1
    if device.get("lost_after") is not None and device.get("_n", 0) > device["lost_after"]:
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    return device


def nvmlInit():
    if _cfg().get("init_error") is not None:
        raise NVMLError(_cfg()["init_error"])


def nvmlShutdown():
    pass


def nvmlSystemGetDriverVersion():
    return "550.54.15"


def nvmlDeviceGetCount():
    return len(_cfg()["devices"])


def nvmlDeviceGetHandleByIndex(index):
    if not 0 <= index < len(_cfg()["devices"]):
        raise NVMLError(2)
    return index


def nvmlDeviceGetUUID(handle):
    d = _dev(handle, "uuid")
    if d.get("open_error") is not None:  # e.g. 4 (NO_PERMISSION): another job's GPU behind a cgroup
        raise NVMLError(d["open_error"])
    return d["uuid"].encode()  # old bindings return bytes: the adapter must cope


def nvmlDeviceGetName(handle):
    return _dev(handle, "name")["name"]


nvmlMemory_v2 = 0x02000028


def nvmlDeviceGetMemoryInfo(handle, version=None):
    """Like the real bindings: v1 (no version) counts the driver's reserved memory as used, v2 reports
    it apart; a device with "no_v2" answers v2 with NOT_SUPPORTED, as an old driver does."""
    d = _dev(handle, "memory")
    reserved = d.get("reserved", 0)
    if version is None:
        return SimpleNamespace(total=d["total"], used=d["used"] + reserved, free=d["total"] - d["used"] - reserved)
    if d.get("no_v2"):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return SimpleNamespace(version=version, total=d["total"], reserved=reserved, used=d["used"],
                           free=d["total"] - d["used"] - reserved)


def nvmlDeviceGetUtilizationRates(handle):
    d = _dev(handle, "utilization", tick=True)
    return SimpleNamespace(gpu=d["gpu"], memory=d["memory"])


def nvmlDeviceGetTemperature(handle, sensor):
    assert sensor == NVML_TEMPERATURE_GPU
    return _dev(handle, "temperature")["temp"]


def nvmlDeviceGetPowerUsage(handle):
    return _dev(handle, "power")["power_mw"]


def nvmlDeviceGetEnforcedPowerLimit(handle):
    return _dev(handle, "limit")["limit_mw"]


def nvmlDeviceGetClockInfo(handle, clock):
    assert clock == NVML_CLOCK_SM
    return _dev(handle, "clock")["sm_mhz"]


def nvmlDeviceGetTotalEccErrors(handle, error_type, counter):
    d = _dev(handle, "ecc")
    if d.get("ecc") is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return d["ecc"][error_type]
