"""Basic sync against a real MLflow server: data, tags, params, system metrics, artifacts, states."""
from __future__ import annotations

import math
import os
import time

import requests
from _runwriter import RunWriter, check_run_dir
from conftest import history, make_runner, run_info, server_run, sink_for, sync_once

from sync_gateway.sinks.mlflow._names import TRUNCATION_MARKER


def test_basic_sync_then_nothing_new(settings, root, project):
    w = RunWriter(root, project, "r1", config={"lr": 0.1, "model": {"depth": 50, "act": "relu"}},
                  slurm={"job_id": "4242", "partition": "gpu"})
    for i in range(120):
        w.log({"loss": 1.0 / (i + 1), "train/acc": i / 120, "ok": i % 2 == 0, "note": "text",
               "weird key!": float(i), "nan_here": math.nan if i == 5 else 1.0}, ts_ms=1_764_150_000_000 + i)
    w.system({"cpu/system_percent": 12.5, "memory/system_used_bytes": 2_000_000_000,
              "gpu/0/utilization_percent": 97.0, "gpu/1/power_w": 250.0, "gpu/1/temperature_c": 70},
             step=0, ts_ms=1_764_150_000_500)
    w.summary({"loss": 0.001, "best": 0.5}, set_by_hand=["best"])
    w.raw("output.log", b"epoch 1\n")
    w.save("ckpt/a.txt", b"weights-1")
    w.exit(0)
    assert check_run_dir(w.dir) == []

    rep = sync_once(settings)
    assert rep.ok, rep
    assert rep.runs_synced == 1
    sink = sink_for(settings)
    run = server_run(sink, project, "r1")
    assert rep.experiments == {project: f"{settings.server_url}/#/experiments/{run.experiment_id}"}
    info = run_info(sink, run)
    tags = {t["key"]: t["value"] for t in info["data"]["tags"]}
    assert tags["mlflow.runName"] == "name-r1"
    assert tags["mlflow.user"] == "alice"
    assert tags["mlflow.source.git.commit"].startswith("0123456789")
    assert tags["slurm.job_id"] == "4242"
    assert tags["hpc.state"] == "finished"
    params = {p["key"]: p["value"] for p in info["data"]["params"]}
    assert params == {"lr": "0.1", "model.depth": "50", "model.act": "relu"}
    assert info["info"]["status"] == "FINISHED"

    loss = history(sink, run, "loss")
    assert loss == [(i, 1_764_150_000_000 + i, 1.0 / (i + 1)) for i in range(120)]
    assert [v for _, _, v in history(sink, run, "ok")] == [1.0 if i % 2 == 0 else 0.0 for i in range(120)]
    assert len(history(sink, run, "train/acc")) == 120
    assert len(history(sink, run, "weird key_")) == 120
    assert math.isnan(history(sink, run, "nan_here")[5][2])
    assert history(sink, run, "note") == []  # strings are not metrics
    assert history(sink, run, "system/cpu_utilization_percentage") == [(0, 1_764_150_000_500, 12.5)]
    assert history(sink, run, "system/system_memory_usage_megabytes")[0][2] == 2000.0
    assert history(sink, run, "system/gpu_0_utilization_percentage")[0][2] == 97.0
    assert history(sink, run, "system/gpu_1_power_usage_watts")[0][2] == 250.0
    assert history(sink, run, "system/gpu_1_temperature_c")[0][2] == 70.0
    assert [v for _, _, v in history(sink, run, "summary/best")] == [0.5]

    arts = _artifact(sink, run, "files/ckpt/a.txt")
    assert arts == b"weights-1"
    assert _artifact(sink, run, "output.log") == b"epoch 1\n"
    assert b'"depth": 50' in _artifact(sink, run, "hpc/config.json")

    rep2 = sync_once(settings)
    assert rep2.ok and rep2.points_sent == 0 and rep2.runs_unchanged == 1 and rep2.runs_synced == 0


def _artifact(sink, run, path: str) -> bytes:
    rel = run.artifact_uri[len("mlflow-artifacts:/"):].lstrip("/")
    r = sink.http.request("GET", f"/api/2.0/mlflow-artifacts/artifacts/{rel}/{path}")
    assert r.status_code == 200, (path, r.status_code, r.text[:200])
    return r.content


def test_incremental_pass_sends_only_new_complete_lines(settings, root, project):
    w = RunWriter(root, project, "inc")
    w.log_many({"x": float(i)} for i in range(50))
    w.heartbeat()
    runner = make_runner(settings)
    assert runner.run_pass().points_sent == 50
    w.log_many({"x": float(i)} for i in range(50, 80))
    w.raw("history.jsonl", b'{"seq": 80, "step": 80, "ts_ms": 1764150000080, "val')  # torn tail
    rep = runner.run_pass()
    assert rep.points_sent == 30, rep
    w.raw("history.jsonl", b'ues": {"x": 80.0}}\n')
    assert runner.run_pass().points_sent == 1
    sink = sink_for(settings)
    run = server_run(sink, project, "inc")
    assert [v for _, _, v in history(sink, run, "x")] == [float(i) for i in range(81)]
    assert run_info(sink, run)["info"]["status"] == "RUNNING"


def test_group_becomes_parent_with_children(settings, root, project):
    for rank in range(3):
        w = RunWriter(root, project, f"rank{rank}", group="train-42")
        w.log({"loss": 1.0})
        w.exit(0)
    rep = sync_once(settings)
    assert rep.ok and rep.runs_synced == 3
    sink = sink_for(settings)
    parent = sink.find(sink.experiment_id(project), f"group:{project}/train-42")
    assert parent is not None
    for rank in range(3):
        child = server_run(sink, project, f"rank{rank}")
        tags = {t["key"]: t["value"] for t in run_info(sink, child)["data"]["tags"]}
        assert tags["mlflow.parentRunId"] == parent.run_id
        assert tags["hpc.group"] == "train-42"
    assert run_info(sink, parent)["info"]["status"] == "FINISHED"


def test_config_params_flattened_and_truncated(settings, root, project):
    long = "y" * 7000
    cfg = {"opt": {"name": "adam", "betas": [0.9, 0.99], "sched": {"warmup": 10}}, "long": long,
           "flag": True, "none": None}
    cfg.update({f"k{i:03d}": i for i in range(150)})  # more than one batch of 100 params
    w = RunWriter(root, project, "cfg", config=cfg)
    w.exit(0)
    assert sync_once(settings).ok
    sink = sink_for(settings)
    params = {p["key"]: p["value"] for p in run_info(sink, server_run(sink, project, "cfg"))["data"]["params"]}
    assert params["opt.name"] == "adam"
    assert params["opt.betas"] == "[0.9, 0.99]"
    assert params["opt.sched.warmup"] == "10"
    assert params["flag"] == "true" and params["none"] == "null"
    assert len(params["long"]) == 6000 and params["long"].endswith(TRUNCATION_MARKER)
    assert params["k149"] == "149" and len(params) == 156
    # A changed value cannot be changed on the server: reported, never an error that blocks the run.
    cfg["opt"]["name"] = "sgd"
    cfg["new_key"] = 1
    w.config(cfg)
    rep = sync_once(settings)
    assert rep.ok, rep
    params = {p["key"]: p["value"] for p in run_info(sink, server_run(sink, project, "cfg"))["data"]["params"]}
    assert params["opt.name"] == "adam" and params["new_key"] == "1"


def test_states_running_stale_resumed_failed_killed(settings, root, project):
    now = [time.time()]  # the gateway's clock; liveness is judged by it (files first seen: their mtime)
    clock = lambda: now[0]  # noqa: E731
    w = RunWriter(root, project, "st", created_ms=int(now[0] * 1000))
    w.heartbeat(int(now[0] * 1000))
    runner = make_runner(settings, clock=clock)
    sink = sink_for(settings)

    def status():
        runner.run_pass()
        info = run_info(sink, server_run(sink, project, "st"))
        return info["info"]["status"], {t["key"]: t["value"] for t in info["data"]["tags"]}["hpc.state"]

    assert status() == ("RUNNING", "active")
    now[0] += settings.stale_after_s + 1  # no heartbeat since: presumed dead
    assert status() == ("KILLED", "crashed")
    w.resume()
    w.heartbeat(int(now[0] * 1000))
    assert status() == ("RUNNING", "active")
    w.exit(1, "failed")
    assert status() == ("FAILED", "failed")
    w.resume()
    w.heartbeat(int(now[0] * 1000))
    w.exit(143, "killed")
    assert status() == ("KILLED", "killed")
    w.resume()
    w.exit(0, "finished")
    assert status() == ("FINISHED", "finished")


def test_artifacts_uploaded_again_when_changed(settings, root, project):
    w = RunWriter(root, project, "art")
    w.save("model.txt", b"v1")
    w.heartbeat()
    runner = make_runner(settings)
    runner.run_pass()
    sink = sink_for(settings)
    run = server_run(sink, project, "art")
    assert _artifact(sink, run, "files/model.txt") == b"v1"
    os.utime(w.path("heartbeat.json"))
    w.save("model.txt", b"version two")
    runner.run_pass()
    assert _artifact(sink, run, "files/model.txt") == b"version two"
    runner.close()


def test_state_lost_refinds_run_without_duplicates(settings, root, project, tmp_path):
    import shutil

    w = RunWriter(root, project, "lost", config={"a": 1})
    w.log_many({"m": float(i)} for i in range(300))
    w.exit(0)
    assert sync_once(settings).ok
    shutil.rmtree(settings.state_path)
    assert sync_once(settings).ok
    sink = sink_for(settings)
    eid = sink.experiment_id(project)
    res = sink._call("POST", "/runs/search", {"experiment_ids": [eid]})
    assert len(res["runs"]) == 1
    assert len(history(sink, server_run(sink, project, "lost"), "m")) == 300


def test_server_health_probe_is_real(mlflow_server, settings):
    assert requests.get(mlflow_server.url + "/health", timeout=5).text.strip() == "OK"
    assert sink_for(settings).server_version() == "3.17.2"
