"""Every exception ``hpc`` raises derives from :class:`HpcError`.

Only mistakes in how the SDK is called raise: a run that cannot write (full disk, vanished directory) warns
and keeps training alive instead.
"""
from __future__ import annotations

from typing import Optional

__all__ = [
    "HpcError", "UsageError", "NoActiveRunError", "SettingsError", "ResumeError", "FormatVersionError",
    "MonitorError", "GpuError", "JobWaitTimeout",
]


class HpcError(Exception):
    """Base class of every error raised by ``hpc``.

    Errors cross process boundaries (DDP, spawn, submitit pickle them). Exception's own pickling calls
    ``cls(*self.args)``, that is the constructor with the formatted message alone, which fails (TypeError)
    for a subclass whose constructor takes fields. ``__reduce__`` rebuilds from the message and the fields
    instead, without calling the constructor, so it holds for every subclass, present and future.
    """

    def __reduce__(self) -> tuple:
        return (_restore, (type(self), self.args), dict(self.__dict__))


def _restore(cls: type, args: tuple) -> HpcError:
    # The fields come back as the pickle's state (BaseException.__setstate__ updates __dict__).
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class UsageError(HpcError, ValueError):
    """The SDK was called wrongly: ``log`` before ``init`` or after ``finish``, a bad key, a bad argument."""


class NoActiveRunError(UsageError):
    """A call that needs a run came before ``hpc.init()`` or after ``finish()``: ``hpc.log``,
    ``hpc.config.update``, ``hpc.summary[key] = value``... (W&B raises ``wandb.Error`` there; under
    ``hpc.as_wandb()`` ``wandb.Error`` is :class:`HpcError`, so ``except wandb.Error`` catches this too)."""


class SettingsError(UsageError):
    """A setting (argument or ``HPCSYNC_*`` environment variable) has an invalid value."""

    def __init__(self, name: str, value: object, expected: str):
        super().__init__(f"invalid value {value!r} for {name}: expected {expected}")
        self.name = name
        self.value = value
        self.expected = expected


class ResumeError(HpcError):
    """``resume="must"`` found no run, or ``resume="never"`` found one."""

    def __init__(self, run_dir: str, message: str):
        super().__init__(message)
        self.run_dir = run_dir


class FormatVersionError(HpcError):
    """A run directory was written in a format major version this SDK does not know."""

    def __init__(self, path: str, found: str, supported: str):
        super().__init__(
            f"{path}: run format version {found} is not supported (this hpc-sync reads {supported}.x); "
            "upgrade hpc-sync to read it"
        )
        self.path = path
        self.found = found
        self.supported = supported


class MonitorError(HpcError):
    """The system-metrics monitor could not start or sample; training goes on without those metrics."""


class GpuError(MonitorError):
    """NVML is missing, failing, or a device went away.

    ``kind`` is a stable short name (``library_not_found``, ``driver_not_loaded``, ``no_permission``,
    ``gpu_lost``, ``not_supported``, ``bad_visible_devices``, ``nvml_error``) so callers can
    warn once per kind; ``code`` is NVML's numeric error (None when it did not come from NVML) and
    ``device`` the CUDA ordinal concerned (None when it concerns NVML as a whole).
    """

    def __init__(self, kind: str, message: str, *, code: Optional[int] = None, device: Optional[int] = None):
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.device = device


class JobWaitTimeout(HpcError, TimeoutError):
    """A SLURM job (``hpc.slurm.result``) did not finish within the time the caller allowed."""

    def __init__(self, job_id: str, timeout_s: float, state: str):
        super().__init__(f"job {job_id} did not finish within {timeout_s:g} s (last state {state}): "
                         "check squeue/sacct, or wait longer")
        self.job_id = job_id
        self.timeout_s = timeout_s
        self.state = state
