"""torchrun without SLURM: one group per launch, runs named rank-N (hpc._context)."""
from __future__ import annotations

import os
import re

from compat_support import REPO

from hpc._context import detect

TORCHRUN = {"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_group_from_torchelastic_run_id():
    ctx = detect({**TORCHRUN, "TORCHELASTIC_RUN_ID": "job-42"})
    assert (ctx.group, ctx.name, ctx.job_type, ctx.run_id) == ("torchrun-job-42", "rank-2", "train", None)
    assert ctx.launcher["world_size"] == 3 and ctx.launcher["run_id"] == "job-42"


def test_group_from_master_address_and_launcher_start_without_a_run_id():
    one = detect({**TORCHRUN, "TORCHELASTIC_RUN_ID": "none"})
    other = detect({**TORCHRUN, "RANK": "0"})
    assert one.group == other.group and one.group.startswith("torchrun-127.0.0.1-29500-")
    assert detect({**TORCHRUN, "MASTER_PORT": "29501"}).group != one.group


def test_slurm_still_wins_and_a_single_process_is_no_group():
    assert detect({**TORCHRUN, "SLURM_JOB_ID": "7"}).group == "job-7"
    assert detect({"RANK": "0"}).group is None


def test_torchrun_ranks_get_the_job_type_docs_sdk_md_states():
    """Code and docs agree (issue 24, item 4): a launcher's ranks, SLURM's or torchrun's, are a training job's."""
    with open(os.path.join(REPO, "docs", "sdk.md"), encoding="utf-8") as f:
        [row] = [line for line in f if line.startswith("| `job_type` |")]
    assert re.search(r"\| `train` under SLURM or torchrun, else none \|", row), row
    torchrun = detect({"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"})
    slurm = detect({"SLURM_JOB_ID": "7"})
    assert (torchrun.job_type, slurm.job_type, detect({}).job_type) == ("train", "train", None)
