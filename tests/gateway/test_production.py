"""The gateway against MLflow in its production shape: PostgreSQL, S3-compatible artifacts (SeaweedFS)
behind the server's artifact proxy, four server workers (scripts/mlflow_production.py)."""
from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
from _runwriter import RunWriter
from conftest import history, run_info, server_run, sink_for, sync_once
from test_killloop import test_kill_minus_nine_loop_exactly_once as kill_loop

from sync_gateway.settings import Settings

pytestmark = [pytest.mark.mlflow, pytest.mark.postgres]


@pytest.fixture
def prod_settings(mlflow_production, root, tmp_path):
    return Settings(roots=[root], server_url=mlflow_production.url, state_dir=str(tmp_path / "state"), retries=3)


def _s3_objects(store):
    import boto3

    client = boto3.client("s3", endpoint_url=store.endpoint, aws_access_key_id=store.access_key,
                          aws_secret_access_key=store.secret_key, region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def test_sync_end_to_end(mlflow_production, prod_settings, root, project):
    blob = bytes(range(256)) * 4096  # 1 MiB checkpoint
    for rank in range(2):
        w = RunWriter(root, project, f"rank{rank}", group="job-9", config={"lr": 0.1, "rank": rank})
        w.log_many({"loss": 1.0 / (i + 1), "acc": i / 5000} for i in range(5000))
        w.system({"cpu/system_percent": 40.0 + rank}, step=0, ts_ms=1_764_150_000_000)
        w.save("ckpt.bin", blob)
        w.exit(0)
    assert sync_once(prod_settings).ok
    shutil.rmtree(prod_settings.state_path)  # state lost: every run found again by tag, nothing stored twice
    assert sync_once(prod_settings).ok

    sink = sink_for(prod_settings)
    runs = sink._call("POST", "/runs/search", {"experiment_ids": [sink.experiment_id(project)]})["runs"]
    assert len(runs) == 3  # two ranks and the group's parent run, each once
    objects = _s3_objects(mlflow_production.store)
    for rank in range(2):
        run = server_run(sink, project, f"rank{rank}")
        assert [v for _, _, v in history(sink, run, "loss")] == [1.0 / (i + 1) for i in range(5000)]
        assert len(history(sink, run, "acc")) == 5000
        assert history(sink, run, "system/cpu_utilization_percentage")[0][2] == 40.0 + rank
        info = run_info(sink, run)
        assert {p["key"]: p["value"] for p in info["data"]["params"]} == {"lr": "0.1", "rank": str(rank)}
        rel = run.artifact_uri[len("mlflow-artifacts:/"):].lstrip("/")
        got = sink.http.request("GET", f"/api/2.0/mlflow-artifacts/artifacts/{rel}/files/ckpt.bin")
        assert got.status_code == 200 and got.content == blob  # read back through the proxy ...
        assert objects[f"artifacts/{rel}/files/ckpt.bin"] == len(blob)  # ... and stored in the S3 bucket
    parent = sink.find(sink.experiment_id(project), f"group:{project}/job-9")
    assert run_info(sink, parent)["info"]["status"] == "FINISHED"


@pytest.mark.faults
def test_kill_minus_nine_loop_on_the_production_profile(prod_settings, root, project, tmp_path):
    """The same SIGKILL loop as test_killloop.py, with four server workers answering concurrently."""
    kill_loop(replace(prod_settings), root, project, tmp_path)
