"""The examples and the issue's cases on the real single-node cluster (scripts/slurm/start.sh)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from _slurmtools import (
    HOSTILE_JOB_NAME,
    WAIT_S,
    history,
    job_env,
    job_output,
    read_json,
    runs,
    sbatch,
    squeue_states,
    wait_job,
    wait_until,
)

pytestmark = pytest.mark.slurm


def test_plain_sbatch_one_gpu(workdir):
    env = job_env(workdir, STEPS="7")
    job = sbatch(workdir, "sbatch_one_gpu.sh", env, "--job-name", HOSTILE_JOB_NAME)
    assert wait_job(job) == {job: "COMPLETED"}, job_output(workdir)

    found = runs(workdir / "runs root")
    assert len(found) == 1, found
    run_dir = next(iter(found.values()))
    meta = read_json(run_dir / "run.json")
    assert meta["group"] == f"{HOSTILE_JOB_NAME}-{job}"
    assert meta["name"] == "rank-0" and meta["job_type"] == "train"
    slurm = meta["slurm"]
    assert (slurm["job_id"], slurm["job_name"], slurm["ntasks"], slurm["restart_count"]) == \
        (job, HOSTILE_JOB_NAME, 1, 0)
    assert slurm["partition"] == "debug" and slurm["account"] == "hpcsync" and slurm["cluster"] == "hpcsync"
    assert [r["step"] for r in history(run_dir)] == list(range(7))
    assert read_json(run_dir / "exit.json")["reason"] == "finished"
    # The job really got its (fake) GPU from SLURM, and the shell never ran the `echo x` of the name.
    out = job_output(workdir)
    assert "CUDA_VISIBLE_DEVICES=0" in out
    assert "\nx\n" not in out


def test_srun_two_tasks_are_two_runs_in_one_group(workdir):
    job = sbatch(workdir, "srun_ddp.sh", job_env(workdir, STEPS="5"))
    assert wait_job(job) == {job: "COMPLETED"}, job_output(workdir)

    metas = [read_json(d / "run.json") for d in runs(workdir / "runs root").values()]
    assert len(metas) == 2
    assert {m["group"] for m in metas} == {f"ddp-{job}"}
    by_rank = {m["slurm"]["procid"]: m for m in metas}
    assert sorted(by_rank) == [0, 1]
    assert [by_rank[r]["name"] for r in (0, 1)] == ["rank-0", "rank-1"]
    assert all(m["slurm"]["ntasks"] == 2 and m["slurm"]["step_id"] == "0" for m in metas)
    for run_dir in runs(workdir / "runs root").values():
        assert len(history(run_dir)) == 5
        assert read_json(run_dir / "exit.json")["reason"] == "finished"


def test_array_of_three_tasks_is_three_runs_in_one_group(workdir):
    job = sbatch(workdir, "array_sweep.sh", job_env(workdir, STEPS="4", SWEEP="0.1,0.05,0.01"))
    states = wait_job(job, array_tasks=3)
    assert states == {f"{job}_{t}": "COMPLETED" for t in range(3)}, job_output(workdir)

    found = runs(workdir / "runs root")
    metas = [read_json(d / "run.json") for d in found.values()]
    assert len(metas) == 3
    assert {m["group"] for m in metas} == {job}
    assert sorted(m["name"] for m in metas) == ["task-0", "task-1", "task-2"]
    lrs = {m["name"]: read_json(d / "config.json")["lr"] for m, d in zip(metas, found.values())}
    assert lrs == {"task-0": 0.1, "task-1": 0.05, "task-2": 0.01}
    assert {m["slurm"]["array_job_id"] for m in metas} == {job}


def start_preemptible(workdir, steps, logged, extra=()):
    """Submit slurm_examples/preemptible.sh; return (job id, root, run dir) once it has logged some rows."""
    job = sbatch(workdir, "preemptible.sh", job_env(workdir, STEPS=str(steps), SLEEP_S="0.25"), *extra)
    root = workdir / "runs root"
    run_dir = wait_until(lambda: next(iter(runs(root).values()), None), WAIT_S, "the run to appear")
    wait_until(lambda: len(history(run_dir)) >= logged, WAIT_S, f"{logged} logged steps")
    return job, root, run_dir


def test_requeue_continues_the_same_run(workdir):
    job, root, run_dir = start_preemptible(workdir, steps=40, logged=5, extra=("--job-name", HOSTILE_JOB_NAME))
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    assert wait_job(job) == {job: "COMPLETED"}, job_output(workdir)

    assert list(runs(root)) == [run_dir.name]  # still one run
    meta = read_json(run_dir / "run.json")
    assert meta["attempt"] == 2
    assert [a["slurm_restart_count"] for a in meta["attempts"]] == [0, 1]
    rows = history(run_dir)
    assert [r["step"] for r in rows] == list(range(len(rows)))  # monotonic, no step twice
    assert [r["seq"] for r in rows] == list(range(len(rows)))
    epochs = [r["values"]["epoch"] for r in rows]
    assert epochs == sorted(epochs) and epochs[-1] == 40  # the script resumed from its checkpoint
    assert len(rows) < 80  # it did not start over
    exit_doc = read_json(run_dir / "exit.json")
    assert (exit_doc["attempt"], exit_doc["reason"]) == (2, "finished")
    assert "resuming from epoch" in job_output(workdir)


def test_requeue_closes_the_first_attempt_as_preempted(workdir):
    """Between the SIGTERM of `scontrol requeue` and the restart (10-12 s here), exit.json says preempted."""
    job, root, run_dir = start_preemptible(workdir, steps=60, logged=3)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)

    def first_exit():
        path = run_dir / "exit.json"
        try:
            doc = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return doc if doc.get("attempt") == 1 else None

    try:
        doc = wait_until(first_exit, 8, "exit.json of attempt 1", interval_s=0.05)
    finally:
        subprocess.run(["scancel", job], check=False, timeout=60)
        # A cancelled pending job stays REQUEUED in sacct: only wait for it to leave the queue.
        wait_until(lambda: not squeue_states(job), WAIT_S, f"job {job} to leave the queue")
    assert doc["reason"] == "preempted" and doc["exit_code"] == 128 + 15, job_output(workdir)


def test_usr1_from_sbatch_signal_requeues_through_the_users_handler(workdir):
    job, root, run_dir = start_preemptible(workdir, steps=40, logged=3)
    # What --signal=USR1@60 sends to the step 60 s before the time limit.
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=60)
    assert wait_job(job) == {job: "COMPLETED"}, job_output(workdir)

    meta = read_json(run_dir / "run.json")
    assert meta["attempt"] == 2 and list(runs(root)) == [run_dir.name]
    rows = history(run_dir)
    assert [r["step"] for r in rows] == list(range(len(rows)))
    assert rows[-1]["values"]["epoch"] == 40
    assert "SIGUSR1: requeueing job" in job_output(workdir)


def _run_example(workdir, script, *args, timeout_s=WAIT_S):
    done = subprocess.run(
        [sys.executable, str(workdir / "examples" / script), *args],
        cwd=str(workdir), env=job_env(workdir), capture_output=True, text=True, timeout=timeout_s + 60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_submitit_decorator_example_job_array_and_local(workdir):
    root = workdir / "decorator root"
    out = _run_example(workdir, "submitit_decorator.py", "--root", str(root),
                       "--folder", str(workdir / "submitit folder" / "%j"), "--name", HOSTILE_JOB_NAME)
    job_id = out["job"]["job_id"]
    found = runs(root, "submitit-demo")
    assert len(found) == 5  # one job, three array tasks, one local run
    job_meta = read_json(found[out["job"]["run_id"]] / "run.json")
    assert job_meta["group"] == f"{HOSTILE_JOB_NAME}-{job_id}"
    assert job_meta["slurm"]["job_name"] == HOSTILE_JOB_NAME
    array_job = out["array"][0]["job_id"].split("_")[0]
    assert {read_json(found[a["run_id"]] / "run.json")["group"] for a in out["array"]} == {array_job}
    assert sorted(read_json(found[a["run_id"]] / "run.json")["name"] for a in out["array"]) == \
        ["task-0", "task-1", "task-2"]
    local_meta = read_json(found[out["local"]["run_id"]] / "run.json")
    assert local_meta["slurm"] is None
    assert read_json(found[out["local"]["run_id"]] / "config.json")["lr"] == 0.3


def test_submitit_checkpoint_hook_requeues_into_the_same_run(workdir):
    root = workdir / "preempt root"
    out = _run_example(workdir, "submitit_preemptible.py", "--root", str(root), "--steps", "40",
                       "--sleep-s", "0.25", "--demo-preempt-after-s", "3",
                       "--folder", str(workdir / "submitit folder" / "%j"))
    assert out["started_at_epoch"] > 0  # the second attempt started from the checkpointed state
    found = runs(root, "submitit-preemptible")
    assert list(found) == [out["run_id"]]
    meta = read_json(found[out["run_id"]] / "run.json")
    assert meta["attempt"] == 2
    rows = history(found[out["run_id"]])
    assert [r["step"] for r in rows] == list(range(len(rows)))
    assert [r["values"]["epoch"] for r in rows] == list(range(1, 41))


def test_submitit_decorator_in_process_job_array_and_explicit_group(workdir):
    from hpc.slurm import result, slurm_job

    root = workdir / "in process root"

    def work(x):  # defined here so that cloudpickle ships it by value to the job
        import os

        import hpc

        run = hpc.init(config={"x": x})
        run.log({"x": x})
        run.finish()
        return run.id, os.environ.get("HPCSYNC_JOB_TYPE"), os.environ.get("HPCSYNC_TAGS")

    folder = str(workdir / "submitit 'in process'" / "%j")
    fn = slurm_job(work, timeout_min=5, folder=folder, project="decorated", root=root,
                   job_type="eval", tags=["a b", "it's"], name=HOSTILE_JOB_NAME)
    job = fn.submit(1)
    run_id, job_type_env, tags_env = result(job, WAIT_S)
    assert (job_type_env, tags_env) == ("eval", "a b,it's")
    meta = read_json(root / "decorated" / run_id / "run.json")
    assert meta["group"] == f"{HOSTILE_JOB_NAME}-{job.job_id}"

    grouped = fn.with_params(group="my group")
    jobs = grouped.map_array([2, 3])
    ids = [result(j, WAIT_S)[0] for j in jobs]
    groups = {read_json(root / "decorated" / i / "run.json")["group"] for i in ids}
    assert groups == {"my group"}  # an explicit group wins over the per-array default
    # The tasks leave the queue (a task can still be COMPLETING for a moment after its result is written).
    deadline = time.monotonic() + 60
    while any(squeue_states(j.job_id) for j in jobs):
        assert time.monotonic() < deadline, [squeue_states(j.job_id) for j in jobs]
        time.sleep(0.5)
