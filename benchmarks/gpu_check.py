"""On a machine with an NVIDIA GPU: does the monitor read what nvidia-smi reads?

    python benchmarks/gpu_check.py [--seconds 30] [--no-load]

Starts the monitor (1 s samples, 1 s windows, so each record is one reading) with this script as the
training process, puts load on GPU 0 with torch for the middle third of the run (if torch is installed, in a
child process so it belongs to the sampled tree), and every second runs
``nvidia-smi --query-gpu=uuid,utilization.gpu,memory.used,power.draw,temperature.gpu --format=csv``.
Each system.jsonl record is then paired with the nvidia-smi reading closest in time and the two are printed
side by side. Also checks hardware.json against ``nvidia-smi -L`` and that ``CUDA_VISIBLE_DEVICES=GPU-<uuid>``
selects exactly that GPU. Exit status 0 when memory and temperature agree and the load shows up in both.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hpc._monitor_control import start_monitor  # noqa: E402
from hpc._settings import Settings  # noqa: E402

LOAD = """
import sys, time, torch
a = torch.randn(8192, 8192, device="cuda:0")
end = time.time() + float(sys.argv[1])
while time.time() < end:
    b = a @ a
    torch.cuda.synchronize()
"""
SMI_FIELDS = "uuid,utilization.gpu,memory.used,power.draw,temperature.gpu"


def smi() -> Dict[str, Tuple[float, float, float, float]]:
    out = subprocess.run(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    readings = {}
    for line in out.strip().splitlines():
        uuid, util, mem, power, temp = [c.strip() for c in line.split(",")]
        num = lambda v: float(v) if v not in ("[N/A]", "N/A", "[Not Supported]") else float("nan")  # noqa: E731
        readings[uuid] = (num(util), num(mem), num(power), num(temp))
    return readings


def read_jsonl(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.endswith("\n")]


def run_monitor(run_dir: str, seconds: float, load: bool) -> List[Tuple[int, dict]]:
    settings = Settings.resolve({"stats_sample_s": 1.0, "stats_average_s": 1.0}, {})
    handle = start_monitor(run_dir, parent_pid=os.getpid(), settings=settings)
    assert handle is not None, "the monitor did not start"
    readings: List[Tuple[int, dict]] = []
    loader = None
    start = time.time()
    while time.time() - start < seconds:
        if load and loader is None and time.time() - start > seconds / 3:
            loader = subprocess.Popen([sys.executable, "-c", LOAD, str(seconds / 3)])
        readings.append((time.time_ns() // 1_000_000, smi()))
        time.sleep(max(0.0, 1.0 - (time.time() - start) % 1.0))
    if loader is not None:
        loader.wait(timeout=120)
    print(f"monitor stop: exit {handle.stop(timeout_s=10)}")
    return readings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-load", action="store_true", help="do not start a torch load")
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("nvidia-smi not found: run this on a machine with an NVIDIA GPU and driver")
        return 2
    try:
        import torch  # noqa: F401, PLC0415
        load = not args.no_load
    except ImportError:
        print("torch is not installed: comparing an idle GPU only")
        load = False

    ok = True
    tmp = tempfile.mkdtemp(prefix="gpu-check-")
    run_dir = os.path.join(tmp, "all")
    os.makedirs(run_dir)
    env_cvd = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    readings = run_monitor(run_dir, args.seconds, load)
    hardware = json.load(open(os.path.join(run_dir, "hardware.json")))
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    print(f"hardware.json: driver {hardware['nvidia_driver_version']}, gpu_error {hardware['gpu_error']}")
    for g in hardware["gpus"]:
        found = g["uuid"] in listed
        ok &= found
        where = "in nvidia-smi -L" if found else "NOT in nvidia-smi -L"
        print(f"  gpu {g['ordinal']}: {g['name']} {g['uuid']} ({where})")
    ok &= len(hardware["gpus"]) == listed.count("UUID: GPU-")

    records = read_jsonl(os.path.join(run_dir, "system.jsonl"))
    print(f"\n{len(records)} monitor records, {len(readings)} nvidia-smi readings; GPU 0 side by side "
          "(monitor | nvidia-smi):")
    print(f"{'t s':>5s} {'util %':>13s} {'mem MiB':>17s} {'power W':>15s} {'temp C':>11s}")
    uuid0 = hardware["gpus"][0]["uuid"] if hardware["gpus"] else None
    diffs: Dict[str, List[float]] = {"util": [], "mem": [], "power": [], "temp": []}
    busy = {"monitor": 0.0, "smi": 0.0}
    t0 = records[0]["ts_ms"] if records else 0
    for rec in records:
        v = rec["values"]
        if "gpu/0/utilization_percent" not in v or uuid0 is None:
            continue
        ts, smi_at = min(readings, key=lambda r: abs(r[0] - rec["ts_ms"]))
        s_util, s_mem, s_power, s_temp = smi_at[uuid0]
        m = (v["gpu/0/utilization_percent"], v["gpu/0/memory_used_bytes"] / 2**20, v["gpu/0/power_w"],
             v["gpu/0/temperature_c"])
        print(f"{(rec['ts_ms'] - t0) / 1000:5.0f} {m[0]:6.0f} | {s_util:4.0f} {m[1]:8.0f} | {s_mem:6.0f} "
              f"{m[2]:6.0f} | {s_power:5.0f} {m[3]:4.0f} | {s_temp:3.0f}")
        for name, a, b in zip(diffs, m, (s_util, s_mem, s_power, s_temp)):
            diffs[name].append(abs(a - b))
        busy["monitor"] = max(busy["monitor"], m[0])
        busy["smi"] = max(busy["smi"], s_util)
    if not diffs["mem"]:
        print("no GPU metrics in system.jsonl: FAIL")
        return 1
    mean = {k: sum(d) / len(d) for k, d in diffs.items()}
    print("\nmean |monitor - nvidia-smi|: " + ", ".join(f"{k} {v:.1f}" for k, v in mean.items()))
    # Memory is a level (near exact); temperature moves slowly; utilization and power are averaged by
    # different windows (NVML's own 1/6 s..1 s vs nvidia-smi's instant), so only a coarse check there.
    ok &= mean["mem"] <= 256 and mean["temp"] <= 3
    if load:
        ok &= busy["monitor"] >= 50 and busy["smi"] >= 50
        print(f"peak utilization under load: monitor {busy['monitor']:.0f} %, nvidia-smi {busy['smi']:.0f} %")

    # CUDA_VISIBLE_DEVICES=GPU-<uuid prefix> must select exactly that GPU
    last = hardware["gpus"][-1]["uuid"]
    os.environ["CUDA_VISIBLE_DEVICES"] = last[:12]
    one_dir = os.path.join(tmp, "one")
    os.makedirs(one_dir)
    run_monitor(one_dir, 3, load=False)
    one = json.load(open(os.path.join(one_dir, "hardware.json")))
    picked = [g["uuid"] for g in one["gpus"]]
    print(f"CUDA_VISIBLE_DEVICES={last[:12]} -> {picked}")
    ok &= picked == [last]
    if env_cvd is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = env_cvd
    print("\nRESULT:", "ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
