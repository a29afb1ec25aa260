"""Every hpc exception survives pickling (DDP, spawn and submitit send them to other processes)."""
from __future__ import annotations

import multiprocessing
import pickle

import pytest

import hpc.errors as errors

SAMPLES = {
    "HpcError": lambda: errors.HpcError("something went wrong"),
    "UsageError": lambda: errors.UsageError("log() before init()"),
    "NoActiveRunError": lambda: errors.NoActiveRunError("hpc.config.update needs an active run"),
    "SettingsError": lambda: errors.SettingsError("flush_interval_s", "soon", "a positive number of seconds"),
    "ResumeError": lambda: errors.ResumeError("/runs/p/x", "run p/x already exists"),
    "FormatVersionError": lambda: errors.FormatVersionError("/runs/p/x", "9.0", "1"),
    "MonitorError": lambda: errors.MonitorError("cannot start"),
    "GpuError": lambda: errors.GpuError("gpu_lost", "GPU 1 fell off the bus", code=15, device=1),
    "JobWaitTimeout": lambda: errors.JobWaitTimeout("4242", 30.0, "RUNNING"),
}


def same(a: BaseException, b: BaseException) -> bool:
    return type(a) is type(b) and a.args == b.args and str(a) == str(b) and vars(a) == vars(b)


def test_every_exception_is_sampled():
    assert set(SAMPLES) == set(errors.__all__)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_keeps_type_message_and_fields(name):
    error = SAMPLES[name]()
    error.add_note("raised on rank 3")
    back = pickle.loads(pickle.dumps(error))
    assert same(back, error) and back.__notes__ == ["raised on rank 3"]
    with pytest.raises(type(error)):
        raise back


def _raise(name: str) -> None:
    raise SAMPLES[name]()


def test_round_trip_through_a_spawned_process():
    """What DDP and submitit do: the child raises, the parent gets the exception back, fields and all. (An
    exception that fails to unpickle hangs a multiprocessing pool for good: hence the timeout.)"""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        for name in sorted(SAMPLES):
            with pytest.raises(getattr(errors, name)) as caught:
                pool.apply_async(_raise, (name,)).get(timeout=60)
            assert same(caught.value, SAMPLES[name]()), name
