"""Where a run is executing (SLURM, torch.distributed), read from the environment.

``hpc.init`` uses the context's group, name, run id, job type and resume mode as defaults below explicit
arguments and ``HPCSYNC_*`` variables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

__all__ = ["RunContext", "detect"]

_SLURM_FIELDS = {
    "job_id": "SLURM_JOB_ID", "job_name": "SLURM_JOB_NAME", "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID", "step_id": "SLURM_STEP_ID", "node_list": "SLURM_JOB_NODELIST",
    "node_name": "SLURMD_NODENAME", "procid": "SLURM_PROCID", "localid": "SLURM_LOCALID",
    "ntasks": "SLURM_NTASKS", "restart_count": "SLURM_RESTART_COUNT", "partition": "SLURM_JOB_PARTITION",
    "account": "SLURM_JOB_ACCOUNT", "cluster": "SLURM_CLUSTER_NAME",
}


@dataclass(frozen=True)
class RunContext:
    metadata: Optional[Dict[str, Any]] = None
    group: Optional[str] = None
    name: Optional[str] = None
    run_id: Optional[str] = None
    job_type: Optional[str] = None
    resume: Optional[str] = None
    rank: Optional[int] = None
    local_rank: Optional[int] = None
    world_size: Optional[int] = None


def _int(value: Optional[str]) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def detect(environ: Mapping[str, str]) -> RunContext:
    slurm = None
    if environ.get("SLURM_JOB_ID"):
        slurm = {name: environ.get(var) for name, var in _SLURM_FIELDS.items()}
    rank = _int(environ.get("RANK", environ.get("SLURM_PROCID")))
    local_rank = _int(environ.get("LOCAL_RANK", environ.get("SLURM_LOCALID")))
    world_size = _int(environ.get("WORLD_SIZE", environ.get("SLURM_NTASKS")))
    return RunContext(metadata=slurm, rank=rank, local_rank=local_rank, world_size=world_size)
