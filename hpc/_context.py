"""Where a run is running: SLURM job, array task, step and rank, read from the environment.

``detect(environ)`` turns the variables SLURM (and torch launchers) set into defaults for ``hpc.init``:
a group per job or job array, a name per rank or array task, ``job_type="train"``, and a deterministic run
id from (cluster, job id or array job and task id, rank) so that a requeued job resumes the same run.
``hpc.init`` uses these only below explicit arguments and ``HPCSYNC_*`` variables.

Nothing here reads ``os.environ`` at import time, and nothing raises on a strange value: a variable that
does not parse is ignored with a one-line warning, because training must not fail on metadata.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

__all__ = ["RunContext", "detect", "DEFAULT_JOB_TYPE"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

DEFAULT_JOB_TYPE = "train"
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RunContext:
    """Defaults derived from the launch environment; every field is ``None`` when nothing was detected.

    ``metadata`` is the document for run.json's ``"slurm"`` field (``None`` outside SLURM). ``resume`` is
    ``"allow"`` exactly when ``run_id`` was derived here: use it only together with that id.
    """

    metadata: Optional[Dict[str, Any]] = None
    group: Optional[str] = None
    name: Optional[str] = None
    run_id: Optional[str] = None
    job_type: Optional[str] = None
    resume: Optional[str] = None
    rank: Optional[int] = None
    local_rank: Optional[int] = None
    world_size: Optional[int] = None
    launcher: Optional[Dict[str, Any]] = None  # run.json's "launcher": torchrun outside SLURM


def _first(environ: Mapping[str, str], *names: str) -> Optional[str]:
    for name in names:
        value = environ.get(name)
        if value is not None and value.strip() != "":
            return value.strip()
    return None


def _int(environ: Mapping[str, str], *names: str) -> Optional[int]:
    """First of ``names`` that is set, as a non-negative int; a value that is not one warns and counts as unset."""
    for name in names:
        text = _first(environ, name)
        if text is None:
            continue
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value >= 0:
            return value
        logger.warning("hpc-sync: ignoring %s=%r: expected a non-negative integer", name, text)
    return None


def _id_part(text: str) -> str:
    """``text`` reduced to at most 40 run-id characters; a hash suffix keeps names that reduce alike apart."""
    cleaned = _ID_CHARS.sub("-", text).strip("-.") or "x"
    if cleaned != text or len(cleaned) > 40:
        cleaned = cleaned[:33] + "-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]
    return cleaned


def _launcher_start_s() -> int:
    """When the launcher (the workers' common parent: torchrun's agent) started, in whole seconds."""
    try:
        import psutil
        return int(psutil.Process(os.getppid()).create_time())
    except Exception:  # noqa: BLE001 - psutil.Error, or no parent: the group then has the port only
        return 0


def _torchrun(env: Mapping[str, str], rank: int, local_rank: Optional[int], world_size: int) -> RunContext:
    """torchrun (or any launcher setting RANK and WORLD_SIZE) without SLURM: one group for the workers of one
    launch, named from TORCHELASTIC_RUN_ID, else MASTER_ADDR:MASTER_PORT and the launcher's start time."""
    elastic_id = _first(env, "TORCHELASTIC_RUN_ID")
    if elastic_id is not None and elastic_id.lower() != "none":
        group = "torchrun-" + _id_part(elastic_id)
    else:
        master = f"{_first(env, 'MASTER_ADDR') or 'localhost'}-{_first(env, 'MASTER_PORT') or '0'}"
        group = "torchrun-" + _id_part(f"{master}-{_launcher_start_s()}")
    launcher = {"kind": "torchrun", "run_id": elastic_id, "rank": rank, "local_rank": local_rank,
                "world_size": world_size, "master_addr": _first(env, "MASTER_ADDR"),
                "master_port": _first(env, "MASTER_PORT"), "restart_count": _int(env, "TORCHELASTIC_RESTART_COUNT")}
    return RunContext(group=group, name=f"rank-{rank}", job_type=DEFAULT_JOB_TYPE, rank=rank,
                      local_rank=local_rank, world_size=world_size, launcher=launcher)


def detect(environ: Optional[Mapping[str, str]] = None) -> RunContext:
    """Read SLURM and torch launcher variables from ``environ`` (default ``os.environ``) into a RunContext."""
    env = os.environ if environ is None else environ

    # torchrun/accelerate set RANK per worker even when SLURM started one task per node, so they win.
    rank = _int(env, "RANK", "SLURM_PROCID")
    local_rank = _int(env, "LOCAL_RANK", "SLURM_LOCALID")
    world_size = _int(env, "WORLD_SIZE", "SLURM_NTASKS", "SLURM_NPROCS")
    if world_size == 0:
        logger.warning("hpc-sync: ignoring a world size of 0")
        world_size = None

    job_id = _first(env, "SLURM_JOB_ID", "SLURM_JOBID")
    if job_id is None:
        if rank is not None and world_size is not None:
            return _torchrun(env, rank, local_rank, world_size)
        return RunContext(rank=rank, local_rank=local_rank, world_size=world_size)

    array_job_id = _first(env, "SLURM_ARRAY_JOB_ID")
    array_task_id = _first(env, "SLURM_ARRAY_TASK_ID")
    if (array_job_id is None) != (array_task_id is None):
        logger.warning(
            "hpc-sync: SLURM_ARRAY_JOB_ID and SLURM_ARRAY_TASK_ID must come together; treating job %s as "
            "a plain job", job_id,
        )
        array_job_id = array_task_id = None
    cluster = _first(env, "SLURM_CLUSTER_NAME")
    job_name = _first(env, "SLURM_JOB_NAME")

    metadata: Dict[str, Any] = {
        "job_id": job_id,
        "array_job_id": array_job_id,
        "array_task_id": array_task_id,
        "step_id": _first(env, "SLURM_STEP_ID", "SLURM_STEPID"),
        "job_name": job_name,
        "node_list": _first(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST"),
        "node_name": _first(env, "SLURMD_NODENAME"),
        "procid": _int(env, "SLURM_PROCID"),
        "localid": _int(env, "SLURM_LOCALID"),
        "ntasks": _int(env, "SLURM_NTASKS", "SLURM_NPROCS"),
        # SLURM sets the count only from the first requeue on: absent means this is the first start.
        "restart_count": _int(env, "SLURM_RESTART_COUNT") or 0,
        "partition": _first(env, "SLURM_JOB_PARTITION"),
        "account": _first(env, "SLURM_JOB_ACCOUNT"),
        "cluster": cluster,
        "submit_dir": _first(env, "SLURM_SUBMIT_DIR"),
    }

    effective_rank = rank if rank is not None else 0
    multi_rank = world_size is not None and world_size > 1
    if array_job_id is not None:
        group = array_job_id
        name = f"task-{array_task_id}" + (f"-rank-{effective_rank}" if multi_rank else "")
        unit = f"{array_job_id}_{array_task_id}"
    else:
        group = f"{job_name or 'job'}-{job_id}"
        name = f"rank-{effective_rank}"
        unit = job_id

    # The id survives a requeue (same job id, same array task, same rank) and differs across clusters.
    run_id = "slurm-{}-{}-r{}".format(_id_part(cluster or "cluster"), _id_part(unit), effective_rank)

    return RunContext(
        metadata=metadata,
        group=group,
        name=name,
        run_id=run_id,
        job_type=DEFAULT_JOB_TYPE,
        resume="allow",
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
    )
