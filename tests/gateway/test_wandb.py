"""Native W&B offline runs, written by the real ``wandb`` package, synced to a real MLflow server: the
mapping (docs/wandb.md), a run synced while it is being written, a resumed run in two fragments, files cut
at a block boundary and mid-chunk, and SIGKILLs of the gateway: the server ends up with what W&B logged,
once."""
from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List

import _wandbwriter as wb
import pytest
import yaml
from _kills import KillTimer
from conftest import REPO, assert_synced_once, history, make_runner, run_info, sink_for, sync_once
from support import soak_count

from sync_gateway.sinks.mlflow.sink import MlflowRun

SEED = int(os.environ.get("HPCSYNC_SEED") or random.randrange(1 << 30))


@pytest.fixture(autouse=True)
def _wandb_installed():
    wb.need_wandb()


def wb_run(sink, project: str, run_id: str) -> MlflowRun:
    """The one MLflow run of the W&B run ``run_id`` (tag hpc.run_id = <directory label>/<run id>)."""
    eid = sink.experiment_id(project)
    res = sink._call("POST", "/runs/search", {"experiment_ids": [eid], "max_results": 100})
    runs = [r for r in res.get("runs", [])
            if any(t["key"] == "hpc.run_id" and t["value"].endswith("/" + run_id) for t in r["data"]["tags"])]
    assert len(runs) == 1, f"{len(runs)} MLflow runs for the W&B run {run_id}"
    info = runs[0]["info"]
    return MlflowRun(info["run_id"], eid, info.get("artifact_uri", ""))


def tags_of(sink, run) -> Dict[str, str]:
    return {t["key"]: t["value"] for t in run_info(sink, run)["data"].get("tags", [])}


def expected(rows: List[Dict[str, Any]], key: str, step_key: str = "_step", shift: int = 0):
    return sorted((int(r[step_key]) + shift, int(round(r["_timestamp"] * 1000)), float(r[key]))
                  for r in rows if key in r)


FULL_RUN = """
run = wandb.init(project=args["project"], config={"lr": 0.1, "model": {"depth": 3}}, group=args["group"],
                 job_type="train", tags=["baseline", "wb"], notes="from W&B", name="rank0",
                 settings=wandb.Settings(x_stats_sampling_interval=1.0))
run.define_metric("batch")
run.define_metric("val/*", step_metric="batch", summary="max")
with open("ckpt.txt", "w") as f:
    f.write("weights-1")
wandb.save("ckpt.txt", policy="now")
for i in range(args["steps"]):
    run.log({"loss": 1.0 / (i + 1), "acc": i / args["steps"], "batch": i * 10, "ok": i % 2 == 0, "text": "t"})
    if i % 100 == 0:
        run.log({"val/acc": (i % 700) / 1000, "batch": i * 10}, commit=False)
run.summary["best"] = 0.9
run.config.update({"extra": 5})
time.sleep(2.5)    # a few system samples
run.finish()
run = wandb.init(project=args["project"], group=args["group"], name="rank1", job_type="train")
for i in range(5):
    run.log({"loss": float(i)})
run.finish(exit_code=3)
"""


def test_a_wandb_run_with_everything(settings, root, project):
    group = "g-" + uuid.uuid4().hex[:6]
    work = os.path.join(root, "alice", "exp")
    wb.write(work, FULL_RUN, {"project": project, "group": group, "steps": 1200})
    frag0, frag1 = wb.fragments(work)
    rows = wb.history_rows(wb.wandb_file(frag0))
    assert len(rows) == 1200

    rep = sync_once(settings)
    assert rep.ok, rep
    assert rep.runs_synced == 2
    sink = sink_for(settings)
    run = wb_run(sink, project, frag0.rsplit("-", 1)[1])
    info = run_info(sink, run)
    tags = tags_of(sink, run)
    assert tags["mlflow.runName"] == "rank0"
    assert tags["hpc.group"] == group and tags["hpc.job_type"] == "train"
    assert tags["hpc.tags"] == "baseline,wb" and tags["mlflow.note.content"] == "from W&B"
    assert tags["hpc.state"] == "finished" and info["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in info["data"]["params"]}
    assert params == {"lr": "0.1", "model.depth": "3", "extra": "5"}

    assert history(sink, run, "loss") == expected(rows, "loss")
    assert [v for _, _, v in history(sink, run, "ok")] == [1.0 if i % 2 == 0 else 0.0 for i in range(1200)]
    assert history(sink, run, "text") == []                                   # strings are not metrics
    assert history(sink, run, "_runtime") == [] and history(sink, run, "_step") == []
    assert history(sink, run, "val/acc") == expected(rows, "val/acc", step_key="batch")   # define_metric
    assert [v for _, _, v in history(sink, run, "summary/best")] == [0.9]               # set by hand
    assert [v for _, _, v in history(sink, run, "summary/val/acc")] == [0.6]            # summary="max"
    assert history(sink, run, "summary/loss") == []                 # the last value: the metric shows it
    assert history(sink, run, "system/system_memory_usage_percentage"), "no system metric synced"
    mem = history(sink, run, "system/memory_process_rss_bytes")
    assert mem and all(v > 1e6 for _, _, v in mem)                          # MiB became bytes
    art = sink.http.request("GET", "/api/2.0/mlflow-artifacts/artifacts/" + run.artifact_uri.split(":/", 1)[1]
                            .lstrip("/") + "/files/ckpt.txt")
    assert art.content == b"weights-1"

    failed = wb_run(sink, project, frag1.rsplit("-", 1)[1])
    assert run_info(sink, failed)["info"]["status"] == "FAILED"
    parent = tags_of(sink, run)["mlflow.parentRunId"]
    assert tags_of(sink, failed)["mlflow.parentRunId"] == parent
    pinfo = sink._call("GET", "/runs/get", params={"run_id": parent})["run"]
    assert pinfo["info"]["status"] == "FAILED" and pinfo["info"]["run_name"] == group

    again = sync_once(settings)
    assert again.ok and again.points_sent == 0 and again.runs_synced == 0


LIVE_RUN = """
run = wandb.init(project=args["project"], id=args["id"])
n = 0
for phase in range(args["phases"]):
    for i in range(args["rows"]):
        run.log({"loss": 1.0 / (n + 1), "n": n})
        n += 1
    go = os.path.join(os.getcwd(), "go%d" % phase)
    deadline = time.monotonic() + 120
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.05)
run.finish()
"""


def _visible(work: str) -> int:
    files = glob.glob(os.path.join(work, "wandb", "offline-run-*", "run-*.wandb"))  # may not exist yet
    return sum(len(wb.history_rows(f)) for f in files)


def test_a_run_synced_while_it_is_written_then_at_its_end(settings, root, project):
    work = os.path.join(root, "live")
    run_id = "live" + uuid.uuid4().hex[:6]
    rows, phases = 1500, 3
    proc = wb.start(work, LIVE_RUN, {"project": project, "id": run_id, "rows": rows, "phases": phases})
    sink = sink_for(settings)
    try:
        for phase in range(phases):
            deadline = time.monotonic() + 90
            while _visible(work) <= rows * phase and time.monotonic() < deadline:  # the writer flushed some
                time.sleep(0.2)
            before = _visible(work)
            assert before > rows * phase, "the W&B writer made nothing visible within 90 s"
            rep = sync_once(settings)
            assert rep.ok, rep
            after = _visible(work)
            run = wb_run(sink, project, run_id)
            got = len(history(sink, run, "loss"))
            assert before <= got <= after, (before, got, after)
            assert run_info(sink, run)["info"]["status"] == "RUNNING"
            open(os.path.join(work, f"go{phase}"), "w").close()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    rep = sync_once(settings)
    assert rep.ok, rep
    run = wb_run(sink, project, run_id)
    (frag,) = wb.fragments(work)
    assert history(sink, run, "loss") == expected(wb.history_rows(wb.wandb_file(frag)), "loss")
    assert len(history(sink, run, "loss")) == rows * phases
    assert run_info(sink, run)["info"]["status"] == "FINISHED"


RESUMED = """
run = wandb.init(project=args["project"], id=args["id"], resume="allow", name="resumed")
for i in range(args["rows"]):
    run.log({"loss": float(args["base"] + i)})
run.finish(exit_code=args["code"])
"""


def test_a_resumed_run_in_two_fragments_is_one_server_run_with_steps_continuing(settings, root, project):
    work = os.path.join(root, "requeued")
    run_id = "res" + uuid.uuid4().hex[:6]
    wb.write(work, RESUMED, {"project": project, "id": run_id, "rows": 300, "base": 0, "code": 143})
    assert sync_once(settings).ok
    sink = sink_for(settings)
    run = wb_run(sink, project, run_id)
    assert run_info(sink, run)["info"]["status"] == "FAILED"   # the first job ended with 143
    time.sleep(1.1)  # fragment directories are named by the second they started
    wb.write(work, RESUMED, {"project": project, "id": run_id, "rows": 250, "base": 300, "code": 0})
    frags = wb.fragments(work)
    assert len(frags) == 2
    assert sync_once(settings).ok
    run2 = wb_run(sink, project, run_id)
    assert run2.run_id == run.run_id
    loss = history(sink, run, "loss")
    assert [(s, v) for s, _, v in loss] == [(i, float(i)) for i in range(550)]   # steps continue, no overwrite
    first, second = (wb.history_rows(wb.wandb_file(f)) for f in frags)
    assert loss == expected(first, "loss") + expected(second, "loss", shift=300)
    assert run_info(sink, run)["info"]["status"] == "FINISHED"
    assert tags_of(sink, run)["hpc.attempt"] == "2"


def test_a_file_cut_at_a_block_boundary_and_mid_chunk_syncs_each_row_once(settings, root, project, tmp_path):
    src = str(tmp_path / "src")
    wb.write(src, """
run = wandb.init(project=args["project"], id=args["id"])
for i in range(3000):
    run.log({"loss": 1.0 / (i + 1), "pad": "x" * 20})
run.finish()
""", {"project": project, "id": "cut01"})
    (frag,) = wb.fragments(src)
    data = open(wb.wandb_file(frag), "rb").read()
    assert len(data) > 3 * 32768
    dest = os.path.join(root, "wandb", os.path.basename(frag))
    os.makedirs(dest)
    target = os.path.join(dest, "run-cut01.wandb")
    sink = sink_for(settings)
    for cut in (32768, 2 * 32768 + 5, 3 * 32768 - 3, len(data)):   # a boundary, mid-chunk, a block tail
        with open(target, "wb") as f:
            f.write(data[:cut])
        assert sync_once(settings).ok
        run = wb_run(sink, project, "cut01")
        got = history(sink, run, "loss")
        with open(str(tmp_path / "prefix.wandb"), "wb") as f:
            f.write(data[:cut])
        want = expected(wb.history_rows(str(tmp_path / "prefix.wandb")), "loss")
        assert got == want, cut
    assert len(got) == 3000
    assert run_info(sink, run)["info"]["status"] == "FINISHED"


KILL_ROWS = soak_count(6_000, 60_000)
KILLS = soak_count(5, 40)

SLOW_WRITER = """
run = wandb.init(project=args["project"], id=args["id"])
for i in range(args["rows"]):
    run.log({"loss": 1.0 / (i + 1), "acc": (i % 97) / 97.0})
    if i % 1000 == 999:
        time.sleep(0.5)
run.finish()
"""


@pytest.mark.faults
def test_kill_loop_during_a_wandb_runs_sync_exactly_once(settings, root, project, tmp_path):
    rng = random.Random(SEED)
    timer = KillTimer(rng)
    note = f"(HPCSYNC_SEED={SEED} replays the kill times)"
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({"roots": [root], "server": {"kind": "mlflow", "url": settings.server_url},
                                   "state_dir": settings.state_dir, "retries": 3}))
    work = os.path.join(root, "kill")
    writer = wb.start(work, SLOW_WRITER, {"project": project, "id": "kill01", "rows": KILL_ROWS})
    env = dict(os.environ, PYTHONPATH=REPO)
    kills = attempts = 0
    try:
        while kills < KILLS and attempts < KILLS * 6:
            attempts += 1
            if attempts % 3 == 0:
                shutil.rmtree(settings.state_path, ignore_errors=True)   # state lost: found again by its tag
            proc = subprocess.Popen([sys.executable, "-m", "sync_gateway.cli", "-q", "sync", "--once",
                                     "--config", str(cfg)], env=env, cwd=REPO)
            kills += timer.wait_or_kill([proc])
        assert writer.wait(timeout=600) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    assert kills >= KILLS, f"only {kills} kills landed during a sync in {attempts} attempts {note}"
    done = subprocess.run([sys.executable, "-m", "sync_gateway.cli", "-q", "sync", "--once", "--config",
                           str(cfg)], env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, note
    sink = sink_for(settings)
    (frag,) = wb.fragments(work)
    rows = wb.history_rows(wb.wandb_file(frag))
    assert len(rows) == KILL_ROWS
    assert_synced_once(sink, project, wb_run(sink, project, "kill01"),
                       {key: expected(rows, key) for key in ("loss", "acc")}, note)


def test_symlinked_saved_file_out_of_the_root_is_not_followed(settings, root, project, tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    work = os.path.join(root, "linky")
    wb.write(work, """
run = wandb.init(project=args["project"], id="link01")
wandb.save(args["path"], base_path=os.path.dirname(args["path"]), policy="now")
run.log({"x": 1})
run.finish()
""", {"project": project, "path": str(outside / "secret.txt")})
    (frag,) = wb.fragments(work)
    assert os.path.islink(os.path.join(frag, "files", "secret.txt"))
    rep = sync_once(settings)
    assert rep.ok, rep
    sink = sink_for(settings)
    run = wb_run(sink, project, "link01")
    listed = sink._call("GET", "/artifacts/list", params={"run_id": run.run_id, "path": "files"})
    assert "files/secret.txt" not in {f["path"] for f in listed.get("files", [])}
    assert "pointing out of the root" in caplog.text


def test_the_coming_from_wandb_example(settings, root, tmp_path):
    """docs/wandb.md's job, unchanged, run offline under a root: the next pass syncs it."""
    import re

    doc = open(os.path.join(REPO, "docs", "wandb.md"), encoding="utf-8").read()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    project = "resnet-" + uuid.uuid4().hex[:6]
    code = code.replace('project="resnet"', f'project="{project}"')
    work = os.path.join(root, "p1", "exp1")     # root/p1/exp1/wandb/offline-run-*: depth 4, the default
    wb.write(work, code)
    rep = sync_once(settings)
    assert rep.ok and rep.runs_synced == 1, rep
    sink = sink_for(settings)
    (frag,) = wb.fragments(work)
    run = wb_run(sink, project, frag.rsplit("-", 1)[1])
    assert len(history(sink, run, "loss")) == 300
    assert [s for s, _, _ in history(sink, run, "val/acc")] == [0, 1, 2]      # the step metric "epoch"
    assert [v for _, _, v in history(sink, run, "summary/best_acc")] == [0.7]
    assert run_info(sink, run)["info"]["status"] == "FINISHED"


OLD_WANDB = "0.16.6"   # the last release before the Go writer (wandb-core became the default in 0.18)


@pytest.fixture(scope="session")
def old_wandb_python():
    """A venv of its own with the old Python writer (made once, kept in .cache/ of the repository)."""
    venv = os.path.join(REPO, ".cache", f"wandb-{OLD_WANDB}")
    python = os.path.join(venv, "bin", "python")
    ok = os.path.exists(os.path.join(venv, ".installed"))
    if not ok:
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True)
        if made.returncode == 0:
            made = subprocess.run([python, "-m", "pip", "install", "-q", f"wandb=={OLD_WANDB}"],
                                  capture_output=True, text=True, timeout=900)
        ok = made.returncode == 0
        if ok:
            open(os.path.join(venv, ".installed"), "w").close()
    from support import need

    need(ok, f"cannot install wandb=={OLD_WANDB} in a venv of its own (pip install failed)")
    return python


OLD_RUN = """
assert wandb.__version__ == args["version"], wandb.__version__
run = wandb.init(project=args["project"], config={"lr": 0.01, "opt": {"name": "adam"}}, group="old",
                 name="py-writer", tags=["legacy"],
                 settings=wandb.Settings(_stats_sample_rate_seconds=1, _stats_samples_to_average=2))
run.define_metric("val/*", step_metric="epoch", summary="min")
with open("notes.txt", "w") as f:
    f.write("old writer")
wandb.save("notes.txt", policy="now")
for i in range(1100):
    run.log({"loss": 1.0 / (i + 1)})
    if i % 100 == 99:
        run.log({"val/loss": 2.0 / (i + 1), "epoch": i // 100})
run.summary["best"] = 7
time.sleep(4)   # a few system samples (one every 2 s here)
run.finish()
"""


def test_runs_of_the_old_python_writer(settings, root, project, old_wandb_python):
    work = os.path.join(root, "old")
    wb.write(work, OLD_RUN, {"project": project, "version": OLD_WANDB}, python=old_wandb_python)
    (frag,) = wb.fragments(work)
    rep = sync_once(settings)
    assert rep.ok and rep.runs_synced == 1, rep
    sink = sink_for(settings)
    run = wb_run(sink, project, frag.rsplit("-", 1)[1])
    rows = wb.history_rows(wb.wandb_file(frag))
    info = run_info(sink, run)
    assert {p["key"]: p["value"] for p in info["data"]["params"]} == {"lr": "0.01", "opt.name": "adam"}
    assert tags_of(sink, run)["mlflow.runName"] == "py-writer" and tags_of(sink, run)["hpc.tags"] == "legacy"
    assert len(rows) == 1111   # val/loss was logged in rows of its own
    assert history(sink, run, "loss") == expected(rows, "loss") and len(history(sink, run, "loss")) == 1100
    assert [s for s, _, _ in history(sink, run, "val/loss")] == list(range(11))
    assert [v for _, _, v in history(sink, run, "summary/best")] == [7.0]
    assert [round(v, 6) for _, _, v in history(sink, run, "summary/val/loss")] == [round(2.0 / 1100, 6)]
    assert history(sink, run, "system/system_memory_usage_percentage"), "the old writer's 'memory' key"
    assert info["info"]["status"] == "FINISHED"


def test_a_run_that_stops_growing_is_killed_then_running_again_when_it_grows(settings, root, project, tmp_path):
    src = str(tmp_path / "src")
    wb.write(src, """
run = wandb.init(project=args["project"], id="stale01")
for i in range(3000):
    run.log({"loss": 1.0 / (i + 1), "pad": "y" * 20})
run.finish()
""", {"project": project})
    (frag,) = wb.fragments(src)
    data = open(wb.wandb_file(frag), "rb").read()
    dest = os.path.join(root, "wandb", os.path.basename(frag))
    os.makedirs(dest)
    target = os.path.join(dest, "run-stale01.wandb")
    sink = sink_for(settings)
    now = [time.time()]  # the gateway's clock: liveness is judged by when it sees the files change
    runner = make_runner(settings, clock=lambda: now[0])

    def grow_to(cut: int, later_s: float = 0.0) -> str:
        if not os.path.exists(target) or os.path.getsize(target) != cut:
            with open(target, "wb") as f:
                f.write(data[:cut])
        now[0] += later_s
        assert runner.run_pass().ok
        run = wb_run(sink, project, "stale01")
        return run_info(sink, run)["info"]["status"], tags_of(sink, run)["hpc.state"]

    try:
        assert grow_to(40_000) == ("RUNNING", "active")
        assert grow_to(40_000, later_s=settings.stale_after_s + 60) == ("KILLED", "crashed")  # no growth, no exit
        assert grow_to(80_000) == ("RUNNING", "active")                                      # it grew again
        assert grow_to(len(data)) == ("FINISHED", "finished")
    finally:
        runner.close()
    run = wb_run(sink, project, "stale01")
    assert len(history(sink, run, "loss")) == 3000
