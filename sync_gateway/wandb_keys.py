"""W&B's system-metric names and units, in both directions: one table for the W&B reader (W&B -> the
neutral keys of docs/metrics.md) and the W&B sink (neutral -> W&B). A contract at the bottom of the package,
beside records.py: a reader and a sink may both import it (they may not import each other).

W&B counts memory and disk in MiB/GiB (``rssMB`` is bytes / 2**20, ``usageGB`` bytes / 2**30); the neutral
keys carry bytes. The table is documented in docs/wandb.md ("System metrics"). This module imports nothing of
the package.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Dict, Tuple

__all__ = ["WANDB_SYSTEM", "MIB", "GIB", "NEUTRAL_TO_WANDB", "wandb_system_key"]

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

#: neutral key -> (W&B key, factor from the neutral unit to W&B's). The inverse of WANDB_SYSTEM where a
#: neutral key has one W&B name (``memory`` and ``disk`` are the pre-0.18 spellings, not written), plus the
#: root file system's ``disk./.*`` keys (wandb >= 0.18), which the reader maps to the plain disk keys.
NEUTRAL_TO_WANDB: Dict[str, Tuple[str, float]] = {
    neutral: (wkey, 1.0 / factor) for wkey, (neutral, factor) in WANDB_SYSTEM.items()
    if wkey not in ("memory", "disk", "disk.{d}.usagePercent", "disk.{d}.usageGB")
}
NEUTRAL_TO_WANDB["disk/usage_percent"] = ("disk./.usagePercent", 1.0)
NEUTRAL_TO_WANDB["disk/used_bytes"] = ("disk./.usageGB", 1.0 / GIB)
_INDEXED = re.compile(r"^(gpu|cpu|disk)/([^/]+)/(.+)$")


@lru_cache(maxsize=4096)
def wandb_system_key(neutral: str) -> Tuple[str, float]:
    """The W&B system key (without its ``system.`` prefix) and unit factor for a neutral key. A key the W&B
    reader kept as ``wandb/<key>`` gets its W&B name back; any other key without an entry keeps its neutral
    name (W&B shows every ``system.*`` key in the run's System section)."""
    hit = NEUTRAL_TO_WANDB.get(neutral)
    if hit:
        return hit
    m = _INDEXED.match(neutral)
    if m:
        kind, idx, rest = m.groups()
        slot = "{d}" if kind == "disk" else "{i}"
        hit = NEUTRAL_TO_WANDB.get(f"{kind}/{slot}/{rest}")
        if hit:
            return hit[0].replace(slot, idx), hit[1]
    if neutral.startswith("wandb/"):
        return neutral[len("wandb/"):], 1.0
    return neutral, 1.0
