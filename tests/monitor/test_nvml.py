"""The NVML adapter against a fake ``pynvml`` at the module boundary (this machine has no GPU)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest
from monitor_helpers import gpu, read_records

from hpc._monitor import select_devices
from hpc._nvml import Nvml, parse_visible_devices
from hpc._sampling import Sampler, WarnOnce
from hpc.errors import GpuError, HpcError

UUIDS = ["GPU-1111aaaa-0000", "GPU-2222bbbb-0000", "GPU-2233cccc-0000", "GPU-4444dddd-0000"]


@pytest.mark.parametrize("value, expected", [
    (None, [0, 1, 2, 3]),
    ("", []),
    ("-1", []),
    ("2,0", [2, 0]),
    ("1, 3", [1, 3]),
    ("0,7,1", [0]),  # like CUDA: the list ends at the first entry naming no device
    ("GPU-4444dddd-0000", [3]),
    ("GPU-4444,GPU-1111aaaa", [3, 0]),  # unique UUID prefixes
    ("gpu-2222", []),  # the prefix is case-sensitive, as in CUDA
    ("GPU-2222BBBB", [1]),  # the hex digits are not
    ("GPU-9999,1", []),
    ("0,0", [0]),
    ("3,GPU-2233", [3, 2]),
])
def test_cuda_visible_devices_forms(value, expected):
    assert parse_visible_devices(value, UUIDS) == expected


@pytest.mark.parametrize("value, words", [("GPU-22", "matches 2 GPUs"), ("MIG-abcd/1/0", "MIG")])
def test_cuda_visible_devices_refusals(value, words):
    with pytest.raises(GpuError, match=words) as info:
        parse_visible_devices(value, UUIDS)
    assert info.value.kind == "bad_visible_devices"


def test_open_filters_by_uuid_and_renumbers_as_the_job_sees_them(fake_pynvml):
    fake_pynvml.configure({"devices": [gpu(u) for u in UUIDS]})
    nvml = Nvml(fake_pynvml)
    devices = nvml.open("GPU-4444dddd,GPU-1111")
    assert [(d.ordinal, d.nvml_index, d.uuid) for d in devices] == [(0, 3, UUIDS[3]), (1, 0, UUIDS[0])]
    assert devices[0].name == "NVIDIA H100 80GB HBM3" and devices[0].memory_total_bytes == 80 * 2**30
    assert nvml.driver_version == "550.54.15"


def test_a_device_nvml_cannot_open_costs_only_itself(fake_pynvml):
    fake_pynvml.configure({"devices": [gpu(UUIDS[0]), gpu(UUIDS[1], open_error=4), gpu(UUIDS[2])]})
    nvml = Nvml(fake_pynvml)
    assert [(d.ordinal, d.nvml_index) for d in nvml.open("2,1,0")] == [(0, 2), (2, 0)]
    assert [(p.kind, p.device) for p in nvml.problems] == [("no_permission", 1)]
    assert "GPU 1 (NVML index 1)" in str(nvml.problems[0])
    nvml = Nvml(fake_pynvml)  # another job's GPU, not ours: nothing to report
    assert [d.nvml_index for d in nvml.open("0,2")] == [0, 2] and nvml.problems == []


def test_when_none_of_the_jobs_devices_opens_that_is_the_error(fake_pynvml):
    fake_pynvml.configure({"devices": [gpu(UUIDS[0], open_error=4), gpu(UUIDS[1])]})
    with pytest.raises(GpuError) as info:
        Nvml(fake_pynvml).open("0")
    assert info.value.kind == "no_permission" and info.value.device == 0


def test_sample_converts_units(fake_pynvml):
    fake_pynvml.configure({"devices": [gpu(UUIDS[0], used=2**30, total=4 * 2**30, power_mw=150_500,
                                           limit_mw=301_000, ecc=[7, 1])]})
    nvml = Nvml(fake_pynvml)
    nvml.open(None)
    s = nvml.sample(0)
    assert s.utilization_percent == 90.0 and s.memory_controller_percent == 40.0
    assert s.memory_used_bytes == 2**30 and s.memory_used_percent == 25.0
    assert s.power_w == 150.5 and s.power_limit_w == 301.0 and s.power_percent == 50.0
    assert s.temperature_c == 61.0 and s.sm_clock_mhz == 1980.0
    assert (s.ecc_corrected_count, s.ecc_uncorrected_count) == (7, 1)


def test_memory_in_use_excludes_the_drivers_reserved_memory_as_nvidia_smi_does(fake_pynvml):
    """Driver R510+: the v1 memory query counts reserved memory as used (615 MiB on an idle H200, where
    nvidia-smi shows 0: seen with benchmarks/gpu_check.py); the v2 query is what nvidia-smi reports."""
    fake_pynvml.configure({"devices": [gpu(UUIDS[0], used=0, reserved=615 * 2**20, total=4 * 2**30),
                                       gpu(UUIDS[1], used=2**30, reserved=615 * 2**20, total=4 * 2**30,
                                           no_v2=True)]})
    nvml = Nvml(fake_pynvml)
    nvml.open(None)
    assert nvml.sample(0).memory_used_bytes == 0
    # an older driver without v2: v1's figure (reserved included) rather than nothing, and v2 not asked again
    assert nvml.sample(1).memory_used_bytes == 2**30 + 615 * 2**20
    asked = sum(1 for name, _ in fake_pynvml.calls if name == "memory")
    nvml.sample(1)
    assert sum(1 for name, _ in fake_pynvml.calls if name == "memory") == asked + 1


def test_unsupported_ecc_is_left_out_and_not_asked_again(fake_pynvml):
    fake_pynvml.configure({"devices": [gpu(UUIDS[0], ecc=None)]})
    nvml = Nvml(fake_pynvml)
    nvml.open(None)
    first = nvml.sample(0)
    asked = sum(1 for name, _ in fake_pynvml.calls if name == "ecc")
    second = nvml.sample(0)
    assert first.ecc_corrected_count is None and second.ecc_uncorrected_count is None
    assert first.power_w == 350.0
    assert sum(1 for name, _ in fake_pynvml.calls if name == "ecc") == asked == 2


def test_no_driver_is_a_gpu_error_not_an_nvml_error(fake_pynvml):
    fake_pynvml.configure({"init_error": fake_pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "devices": []})
    with pytest.raises(GpuError) as info:
        Nvml(fake_pynvml).open(None)
    assert info.value.kind == "library_not_found" and "no NVIDIA driver" in str(info.value)
    assert isinstance(info.value, HpcError) and not isinstance(info.value, fake_pynvml.NVMLError)
    assert isinstance(info.value.__cause__, fake_pynvml.NVMLError)


def test_a_query_failing_once_costs_only_that_field_and_is_reported(fake_pynvml):
    fake_pynvml.configure({"devices": [gpu(UUIDS[0])]})
    reported = []
    nvml = Nvml(fake_pynvml, on_error=reported.append)
    nvml.open(None)
    fake_pynvml.nvmlDeviceGetPowerUsage = lambda h: (_ for _ in ()).throw(fake_pynvml.NVMLError(999))
    s = nvml.sample(0)
    assert s.power_w is None and s.power_percent is None and s.utilization_percent == 90.0
    assert [(e.kind, e.device, e.code) for e in reported] == [("nvml_error", 0, 999)]
    assert isinstance(reported[0], GpuError) and "GPU 0: NVML power failed: Unknown Error" in str(reported[0])
    fake_pynvml.nvmlDeviceGetPowerUsage = lambda h: 300_000  # it answers again: asked again
    assert nvml.sample(0).power_w == 300.0


def test_a_gpu_lost_mid_run_stops_only_that_gpu_and_warns_once(fake_pynvml, tmp_path, caplog):
    fake_pynvml.configure({"devices": [gpu(UUIDS[0], lost_after=2), gpu(UUIDS[1])]})
    nvml = Nvml(fake_pynvml)
    devices = nvml.open(None)
    sampler = Sampler(str(tmp_path), None, host=True, nvml=nvml, devices=devices)
    sampler.prime()
    with caplog.at_level(logging.WARNING):
        samples = [sampler.sample() for _ in range(3)]
        calls_before = len(fake_pynvml.calls)
        samples += [sampler.sample() for _ in range(2)]
    assert all("gpu/0/utilization_percent" in s for s in samples[:2])
    assert not any("gpu/0/utilization_percent" in s for s in samples[2:])
    assert all(s["gpu/1/power_w"] == 350.0 for s in samples)  # the other GPU goes on
    assert all("cpu/system_percent" in s for s in samples)  # and the CPU metrics
    lost = [r for r in caplog.records if "GPU 0" in r.getMessage()]
    assert len(lost) == 1 and "fell off the bus" in lost[0].getMessage()
    queries_after = [c for c in fake_pynvml.calls[calls_before:] if c[1] == 0]
    assert queries_after == []  # a lost device is no longer queried


def test_warn_once_per_kind(caplog):
    warn = WarnOnce(logging.getLogger("t"))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            warn("a", "first")
            warn("b", "second")
    assert [r.getMessage() for r in caplog.records] == ["first", "second"]


def _run_monitor(tmp_path, env, seconds=1.6, args=()):
    """A real monitor process (the fake pynvml first on its PYTHONPATH), parent = a sleeping process."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpc._monitor", "--run-dir", str(tmp_path), "--parent-pid", str(parent.pid),
             "--sample-s", "0.2", "--average-s", "0.4", *args],
            env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (tmp_path / "hardware.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # on a loaded machine the interpreter alone can take a second to start
        time.sleep(seconds)
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    finally:
        parent.kill()
        parent.wait()
    assert proc.returncode == 0, stderr
    return read_records(tmp_path / "system.jsonl"), json.loads((tmp_path / "hardware.json").read_text()), stderr


@pytest.mark.slow  # a monitor process, waited for
def test_monitor_process_records_only_the_jobs_gpus(tmp_path, fake_nvml_env):
    env = fake_nvml_env({"devices": [gpu(u) for u in UUIDS]}, CUDA_VISIBLE_DEVICES="GPU-2233,GPU-4444")
    records, hardware, stderr = _run_monitor(tmp_path, env)
    picked = [(g["ordinal"], g["nvml_index"], g["uuid"]) for g in hardware["gpus"]]
    assert picked == [(0, 2, UUIDS[2]), (1, 3, UUIDS[3])]
    assert hardware["gpu_error"] is None and hardware["nvidia_driver_version"] == "550.54.15"
    gpu_keys = {k.split("/")[1] for r in records for k in r["values"] if k.startswith("gpu/")}
    assert gpu_keys == {"0", "1"}
    assert records[0]["values"]["gpu/0/power_percent"] == 50.0
    assert stderr == ""


@pytest.mark.slow  # a monitor process, waited for
def test_monitor_process_survives_a_gpu_falling_off_the_bus(tmp_path, fake_nvml_env):
    env = fake_nvml_env({"devices": [gpu(UUIDS[0], lost_after=3)]})
    records, _, stderr = _run_monitor(tmp_path, env, seconds=2.0)
    assert "gpu/0/utilization_percent" in records[0]["values"]
    assert "gpu/0/utilization_percent" not in records[-1]["values"]
    assert all("cpu/system_percent" in r["values"] for r in records)
    assert len(stderr.strip().splitlines()) == 1 and "GPU 0" in stderr, stderr


@pytest.mark.slow  # a monitor process, waited for
def test_monitor_process_without_a_driver_says_so_once_and_records_cpu(tmp_path, fake_nvml_env):
    env = fake_nvml_env({"init_error": 12, "devices": []})
    records, hardware, stderr = _run_monitor(tmp_path, env)
    assert hardware["gpus"] == [] and "no NVIDIA driver" in hardware["gpu_error"]
    assert records and all("cpu/system_percent" in r["values"] for r in records)
    assert len(stderr.strip().splitlines()) == 1 and "no NVIDIA driver" in stderr


@pytest.mark.slow  # a monitor process, waited for
def test_local_rank_records_its_own_gpu_and_no_host_metrics(tmp_path, fake_nvml_env):
    env = fake_nvml_env({"devices": [gpu(u) for u in UUIDS]})
    records, hardware, _ = _run_monitor(tmp_path, env, args=("--local-rank", "2", "--local-world-size", "4"))
    assert [g["ordinal"] for g in hardware["gpus"]] == [2] and hardware["host_metrics"] is False
    keys = set().union(*(r["values"] for r in records))
    assert {k for k in keys if k.startswith("gpu/")} <= {f"gpu/2/{f}" for f in (
        "utilization_percent", "memory_controller_percent", "memory_used_bytes", "memory_used_percent",
        "temperature_c", "power_w", "power_limit_w", "power_percent", "sm_clock_mhz", "ecc_corrected_count",
        "ecc_uncorrected_count")}
    assert "gpu/2/power_w" in keys
    assert not keys & {"cpu/system_percent", "memory/system_percent", "disk/usage_percent", "network/sent_bytes"}
    assert "cpu/process_percent" in keys


@pytest.mark.parametrize("n_visible, local_rank, local_world_size, expected", [
    (8, None, None, [0, 1, 2, 3, 4, 5, 6, 7]),  # one process per node records the node
    (8, 0, 1, [0, 1, 2, 3, 4, 5, 6, 7]),  # SLURM_LOCALID=0 of a one-task-per-node job
    (8, 3, 8, [3]),  # torchrun, 8 ranks: cuda:{LOCAL_RANK}
    (8, 3, None, [3]),  # a local rank k > 0 without a size: one device each
    (8, 0, None, [0, 1, 2, 3, 4, 5, 6, 7]),  # rank 0 without a size may be alone on the node: keep all
    (8, 1, 4, [2, 3]),  # 4 ranks with 2 GPUs each, in blocks
    (1, 5, 8, [0]),  # SLURM --gpus-per-task=1: each rank sees only its own
    (2, 3, 4, [0, 1]),  # --gpus-per-task=2 with 4 ranks: fewer visible than ranks, all its own
    (0, 2, 8, []),
])
def test_multi_rank_gpu_policy(n_visible, local_rank, local_world_size, expected):
    devices, warning = select_devices(list(range(n_visible)), local_rank, local_world_size)
    assert devices == expected and warning is None


def test_a_rank_past_the_visible_devices_records_none_and_says_why():
    devices, warning = select_devices([0, 1, 2, 3], 5, None)
    assert devices == [] and "local rank 5 but only 4 GPUs" in warning
