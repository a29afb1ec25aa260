"""hpc._context.detect: SLURM and torch environments -> run defaults (pure functions of an environment dict)."""
from __future__ import annotations

import dataclasses
import logging
import re

import pytest

from hpc._context import RunContext, detect

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# What the cluster of scripts/slurm/start.sh really sets in a 2-task `srun` step of job 42 (rank 1).
SRUN_RANK1 = {
    "SLURM_JOB_ID": "42", "SLURM_JOBID": "42", "SLURM_JOB_NAME": "ddp demo", "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "vm", "SLURMD_NODENAME": "vm", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "2", "SLURM_JOB_PARTITION": "debug", "SLURM_JOB_ACCOUNT": "hpcsync",
    "SLURM_CLUSTER_NAME": "hpcsync", "SLURM_SUBMIT_DIR": "/home/u",
}


def test_outside_slurm_everything_is_none():
    assert detect({}) == RunContext()


def test_outside_slurm_torch_ranks_give_a_torchrun_group_but_no_id():
    # issue 13: the workers of one torchrun launch form a group (tests/compat/test_launchers.py has the rest)
    ctx = detect({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8"})
    assert (ctx.rank, ctx.local_rank, ctx.world_size) == (3, 1, 8)
    assert ctx.group.startswith("torchrun-") and ctx.name == "rank-3"
    assert ctx.metadata is None and ctx.run_id is None and ctx.resume is None


def test_srun_task_metadata_group_name_and_defaults():
    ctx = detect(SRUN_RANK1)
    assert ctx.metadata == {
        "job_id": "42", "array_job_id": None, "array_task_id": None, "step_id": "0", "job_name": "ddp demo",
        "node_list": "vm", "node_name": "vm", "procid": 1, "localid": 1, "ntasks": 2, "restart_count": 0,
        "partition": "debug", "account": "hpcsync", "cluster": "hpcsync", "submit_dir": "/home/u",
    }
    assert ctx.group == "ddp demo-42"
    assert ctx.name == "rank-1"
    assert ctx.job_type == "train"
    assert (ctx.rank, ctx.local_rank, ctx.world_size) == (1, 1, 2)
    assert ctx.resume == "allow"
    assert RUN_ID.match(ctx.run_id)


def test_ranks_of_one_job_share_the_group_and_get_distinct_ids():
    rank0 = detect({**SRUN_RANK1, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"})
    rank1 = detect(SRUN_RANK1)
    assert rank0.group == rank1.group
    assert (rank0.name, rank1.name) == ("rank-0", "rank-1")
    assert rank0.run_id != rank1.run_id


def test_requeue_keeps_the_run_id_and_counts_restarts():
    first = detect(SRUN_RANK1)
    again = detect({**SRUN_RANK1, "SLURM_RESTART_COUNT": "1", "SLURM_STEP_ID": "3", "SLURMD_NODENAME": "n7"})
    assert again.run_id == first.run_id
    assert again.group == first.group
    assert (first.metadata["restart_count"], again.metadata["restart_count"]) == (0, 1)


def test_run_id_depends_on_cluster_and_job():
    base = detect(SRUN_RANK1).run_id
    assert detect({**SRUN_RANK1, "SLURM_CLUSTER_NAME": "other"}).run_id != base
    assert detect({**SRUN_RANK1, "SLURM_JOB_ID": "43"}).run_id != base
    # The job name is a label, not identity: renaming does not fork the run.
    assert detect({**SRUN_RANK1, "SLURM_JOB_NAME": "x"}).run_id == base


def test_array_tasks_share_one_group_named_after_the_array_job():
    tasks = [
        detect({"SLURM_JOB_ID": str(100 + t), "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": str(t),
                "SLURM_JOB_NAME": "sweep", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_CLUSTER_NAME": "c"})
        for t in range(3)
    ]
    assert {t.group for t in tasks} == {"100"}
    assert [t.name for t in tasks] == ["task-0", "task-1", "task-2"]
    assert len({t.run_id for t in tasks}) == 3
    assert tasks[1].metadata["array_job_id"] == "100" and tasks[1].metadata["array_task_id"] == "1"


def test_array_task_id_uses_array_ids_not_the_task_job_id():
    # An array task's own SLURM_JOB_ID is an implementation detail; (array job, task) is what users see.
    a = detect({"SLURM_JOB_ID": "101", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "1"})
    b = detect({"SLURM_JOB_ID": "999", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "1"})
    assert a.run_id == b.run_id


def test_multi_rank_array_task_names_task_and_rank():
    ctx = detect({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2",
                  "SLURM_PROCID": "1", "SLURM_NTASKS": "2"})
    assert ctx.name == "task-2-rank-1"
    assert ctx.group == "5"


def test_torch_variables_win_over_slurm_task_variables():
    # torchrun inside a one-task-per-node SLURM job: SLURM_PROCID is 0 for every worker.
    env = {"SLURM_JOB_ID": "9", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1",
           "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}
    ctx = detect(env)
    assert (ctx.rank, ctx.local_rank, ctx.world_size) == (5, 1, 8)
    assert ctx.name == "rank-5"
    assert ctx.run_id != detect({**env, "RANK": "4"}).run_id
    # The SLURM view is kept as SLURM reported it.
    assert ctx.metadata["procid"] == 0 and ctx.metadata["ntasks"] == 1


def test_batch_script_without_job_name_or_cluster():
    ctx = detect({"SLURM_JOB_ID": "12"})
    assert ctx.group == "job-12"
    assert ctx.name == "rank-0"
    assert ctx.rank is None  # not known, the name and id assume rank 0
    assert RUN_ID.match(ctx.run_id)


@pytest.mark.parametrize("hostile", ["it's a job", 'say "hi"', "'; echo x", "a/b\\c", "ünï cødé", "x" * 300])
def test_hostile_names_give_valid_distinct_run_ids(hostile):
    ctx = detect({"SLURM_JOB_ID": "1", "SLURM_JOB_NAME": hostile, "SLURM_CLUSTER_NAME": hostile})
    assert RUN_ID.match(ctx.run_id), ctx.run_id
    assert ctx.group == f"{hostile}-1"  # the group is a label and keeps the name as given
    assert ctx.run_id != detect({"SLURM_JOB_ID": "1", "SLURM_CLUSTER_NAME": hostile + "!"}).run_id


def test_cluster_names_that_clean_alike_get_different_ids():
    a = detect({"SLURM_JOB_ID": "1", "SLURM_CLUSTER_NAME": "a b"}).run_id
    b = detect({"SLURM_JOB_ID": "1", "SLURM_CLUSTER_NAME": "a;b"}).run_id
    assert a != b


def test_bad_numbers_warn_once_each_and_are_ignored(caplog):
    caplog.set_level(logging.WARNING, logger="hpc._context")
    ctx = detect({"SLURM_JOB_ID": "3", "SLURM_PROCID": "one", "SLURM_NTASKS": "-2", "SLURM_RESTART_COUNT": "x"})
    assert ctx.rank is None and ctx.world_size is None
    assert ctx.metadata["restart_count"] == 0
    text = caplog.text
    assert "SLURM_PROCID='one'" in text and "SLURM_NTASKS='-2'" in text and "SLURM_RESTART_COUNT='x'" in text


def test_half_an_array_is_a_plain_job_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="hpc._context")
    ctx = detect({"SLURM_JOB_ID": "3", "SLURM_ARRAY_JOB_ID": "3"})
    assert ctx.group == "job-3" and ctx.metadata["array_job_id"] is None
    assert "SLURM_ARRAY_TASK_ID" in caplog.text


def test_detect_defaults_to_os_environ(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("SLURM") or name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert detect().metadata["job_id"] == "77"


def test_context_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        detect({}).group = "x"  # type: ignore[misc]
