"""W&B's system-metric keys (``stats`` records) -> the neutral keys of docs/metrics.md, in their units.

W&B counts memory and disk in MiB/GiB (``rssMB`` is bytes / 2**20, ``usageGB`` bytes / 2**30); the neutral
keys carry bytes, so a sink turns them into its own units (MLflow: megabytes = bytes / 1e6) exactly as it
does for the hpc monitor's samples. The table is documented in docs/wandb.md ("System metrics").
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Optional, Tuple

from sync_gateway.wandb_keys import GIB, MIB, WANDB_SYSTEM  # noqa: F401  (one table: the sink maps back)

__all__ = ["WANDB_SYSTEM", "system_key", "system_values"]

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
