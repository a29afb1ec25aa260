"""W&B's system-metric keys (``stats`` records) -> the neutral keys of docs/metrics.md, in their units.

W&B counts memory and disk in MiB/GiB (``rssMB`` is bytes / 2**20, ``usageGB`` bytes / 2**30); the neutral
keys carry bytes, so a sink turns them into its own units (MLflow: megabytes = bytes / 1e6) exactly as it
does for the hpc monitor's samples. The table is documented in docs/wandb.md ("System metrics").
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Optional, Tuple

__all__ = ["WANDB_SYSTEM", "system_key", "system_values"]

MIB = float(1 << 20)
GIB = float(1 << 30)

#: W&B key -> (neutral key, factor to its unit). ``{i}`` is a GPU or CPU index, ``{d}`` a disk or path.
WANDB_SYSTEM: Dict[str, Tuple[str, float]] = {
    "cpu": ("cpu/process_all_cores_percent", 1.0),          # the process tree, % of all cores (not of one)
    "cpu.{i}.cpu_percent": ("cpu/{i}/system_percent", 1.0),
    "memory": ("memory/system_percent", 1.0),                # wandb < 0.18
    "memory_percent": ("memory/system_percent", 1.0),
    "proc.memory.rssMB": ("memory/process_rss_bytes", MIB),
    "proc.memory.availableMB": ("memory/system_available_bytes", MIB),
    "proc.memory.percent": ("memory/process_percent", 1.0),
    "proc.cpu.threads": ("process/thread_count", 1.0),
    "disk": ("disk/usage_percent", 1.0),                     # wandb < 0.15
    "disk.{d}.usagePercent": ("disk/usage_percent", 1.0),
    "disk.{d}.usageGB": ("disk/used_bytes", GIB),
    "disk.in": ("disk/read_bytes", MIB),
    "disk.out": ("disk/write_bytes", MIB),
    "disk.{d}.in": ("disk/{d}/read_bytes", MIB),
    "disk.{d}.out": ("disk/{d}/write_bytes", MIB),
    "network.sent": ("network/sent_bytes", 1.0),
    "network.recv": ("network/received_bytes", 1.0),
    "network.tcpRetransmits": ("network/tcp_retransmit_count", 1.0),
    "gpu.{i}.gpu": ("gpu/{i}/utilization_percent", 1.0),
    "gpu.{i}.memory": ("gpu/{i}/memory_controller_percent", 1.0),
    "gpu.{i}.memoryAllocated": ("gpu/{i}/memory_used_percent", 1.0),
    "gpu.{i}.memoryAllocatedBytes": ("gpu/{i}/memory_used_bytes", 1.0),
    "gpu.{i}.temp": ("gpu/{i}/temperature_c", 1.0),
    "gpu.{i}.powerWatts": ("gpu/{i}/power_w", 1.0),
    "gpu.{i}.powerPercent": ("gpu/{i}/power_percent", 1.0),
    "gpu.{i}.enforcedPowerLimitWatts": ("gpu/{i}/power_limit_w", 1.0),
    "gpu.{i}.smClock": ("gpu/{i}/sm_clock_mhz", 1.0),
    "gpu.{i}.memoryClock": ("gpu/{i}/memory_clock_mhz", 1.0),
    "gpu.{i}.correctedMemoryErrors": ("gpu/{i}/ecc_corrected_count", 1.0),
    "gpu.{i}.uncorrectedMemoryErrors": ("gpu/{i}/ecc_uncorrected_count", 1.0),
}
_INDEXED = re.compile(r"^(gpu|cpu)\.(\d+)\.(.+)$")
_DISK = re.compile(r"^disk\.(.+)\.(usagePercent|usageGB|in|out)$")
_ROOT_PATHS = ("/", "\\", "\\\\")   # wandb < 0.18 escaped the "/" of the root file system


def system_key(key: str) -> Tuple[str, float]:
    """The neutral key and unit factor of one W&B system-metric key; a key without an entry keeps its
    name under ``wandb/`` (a sink shows it as it shows any other system key)."""
    m = _INDEXED.match(key)
    if m:
        hit = WANDB_SYSTEM.get(f"{m.group(1)}.{{i}}.{m.group(3)}")
        if hit:
            return hit[0].replace("{i}", m.group(2)), hit[1]
    else:
        hit = WANDB_SYSTEM.get(key)
        if hit:
            return hit
        m = _DISK.match(key)
        if m:
            where, what = m.group(1), m.group(2)
            name, factor = WANDB_SYSTEM[f"disk.{{d}}.{what}"]
            if what in ("usagePercent", "usageGB"):
                if where in _ROOT_PATHS:
                    return name, factor
                return f"disk/{_part(where)}/{name.split('/', 1)[1]}", factor
            return name.replace("{d}", _part(where)), factor
    return "wandb/" + key, 1.0


def _part(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s.replace("\\", "/").strip("/")) or "root"


def system_values(items: Iterable[Tuple[str, Any]]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for key, value in items:
        v = _number(value)
        if v is None:
            continue
        name, factor = system_key(key)
        out[name] = v * factor
    return out


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)
