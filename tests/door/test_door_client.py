"""The unchanged mlflow client against hpc://: every call of issue 22's list works and reads back."""
from __future__ import annotations

import os
import re
import time

import pytest
from door_support import import_mlflow, points, read_json, run_dirs

mlflow = import_mlflow()
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402


def _fresh_store(door):
    """A store that knows nothing this process wrote: what another process reading the root sees."""
    from hpc.mlflow._store import HpcTrackingStore

    return HpcTrackingStore(door.uri)


def test_the_fluent_api_writes_and_reads_back(door):
    exp_id = mlflow.create_experiment("resnet")
    assert mlflow.get_experiment(exp_id).name == "resnet"
    assert mlflow.get_experiment_by_name("resnet").experiment_id == exp_id
    mlflow.set_experiment("resnet")
    with mlflow.start_run(run_name="baseline") as run:
        run_id = run.info.run_id
        mlflow.log_param("lr", 0.1)
        mlflow.log_params({"batch": 32, "opt": "sgd"})
        mlflow.log_metric("loss", 0.5, step=1)
        mlflow.log_metrics({"acc": 0.9, "f1": 0.8}, step=1)
        mlflow.set_tag("team", "vision")
        mlflow.set_tags({"a": "1"})
        mlflow.MlflowClient().set_tag(run_id, "later", "yes", synchronous=False)
        mlflow.log_metric("async", 3.0, step=2, synchronous=False)
        mlflow.flush_async_logging()
        got = mlflow.get_run(run_id)
        assert got.data.params == {"lr": "0.1", "batch": "32", "opt": "sgd"}
        assert got.data.metrics == {"loss": 0.5, "acc": 0.9, "f1": 0.8, "async": 3.0}
        assert {"team": "vision", "a": "1", "later": "yes", "mlflow.runName": "baseline"}.items() \
            <= got.data.tags.items()
        assert got.data.tags["mlflow.user"] == got.info.user_id != ""
        assert got.info.status == "RUNNING" and got.info.run_name == "baseline"
    ended = mlflow.get_run(run_id)
    assert ended.info.status == "FINISHED" and ended.info.end_time >= ended.info.start_time
    found = mlflow.search_runs(experiment_ids=[exp_id], filter_string="params.lr = '0.1'", output_format="list")
    assert [r.info.run_id for r in found] == [run_id]
    assert mlflow.search_runs(experiment_ids=[exp_id], filter_string="metrics.loss > 1", output_format="list") == []
    history = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]
    # the same, from a store that never saw these runs in memory: the run directory alone
    other = _fresh_store(door)
    on_disk = other.get_run(run_id)
    assert on_disk.data.params == ended.data.params and on_disk.data.metrics == ended.data.metrics
    assert on_disk.data.tags == ended.data.tags and on_disk.info.status == "FINISHED"
    assert on_disk.info.end_time == ended.info.end_time
    assert other.get_experiment_by_name("resnet").experiment_id == exp_id


def test_the_default_experiment_and_the_run_format_on_disk(door):
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0)
    (run_dir,) = run_dirs(door.root)
    assert run_dir == os.path.join(door.root, "Default", run.info.run_id)
    meta = read_json(os.path.join(run_dir, "run.json"))
    assert meta["format_version"] == "1.3" and meta["project"] == "Default" and meta["id"] == run.info.run_id
    assert meta["mlflow"]["experiment_id"] == "0" and meta["mlflow"]["experiment_name"] == "Default"
    assert meta["mlflow"]["status"] == "FINISHED" and meta["name"] == run.info.run_name
    exit_doc = read_json(os.path.join(run_dir, "exit.json"))
    assert exit_doc["reason"] == "finished" and exit_doc["end_ms"] == mlflow.get_run(run.info.run_id).info.end_time
    assert read_json(os.path.join(door.root, "Default", "experiment.json"))["mlflow"]["name"] == "Default"
    assert mlflow.get_experiment("0").name == "Default"


@pytest.mark.parametrize("name", ["my exp/α", "0", "a" * 200, "Users/alice@example.com/run:1", "ok-name"])
def test_experiment_names_are_kept_exactly(door, name):
    exp_id = mlflow.create_experiment(name)
    assert mlflow.get_experiment(exp_id).name == name
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", exp_id) and exp_id != "0"
    with mlflow.start_run(experiment_id=exp_id):
        mlflow.log_metric("x", 1)
    assert _fresh_store(door).get_experiment_by_name(name).experiment_id == exp_id
    with pytest.raises(MlflowException, match="already exists"):
        mlflow.create_experiment(name)


def test_two_names_never_share_a_directory(door):
    ids = {mlflow.create_experiment(n) for n in ("a/b", "a:b", "a b", "a_b")}
    assert len(ids) == 4


def test_a_param_is_immutable_as_in_mlflow(door):
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 0.1)
        mlflow.log_param("lr", 0.1)  # the same value again is fine
        with pytest.raises(MlflowException) as err:
            mlflow.log_param("lr", 0.2)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"
        assert "Changing param values is not allowed" in err.value.message
        client = mlflow.MlflowClient()
        with pytest.raises(MlflowException):  # a batch with a changed param writes none of the batch
            client.log_batch(run.info.run_id, metrics=[Metric("m", 1.0, 0, 0)], params=[Param("lr", "0.3")],
                             tags=[RunTag("t", "x")])
        got = mlflow.get_run(run.info.run_id)
        assert got.data.params == {"lr": "0.1"} and "m" not in got.data.metrics and "t" not in got.data.tags
    with pytest.raises(MlflowException) as err:  # a finished run's params, read back from its directory
        mlflow.MlflowClient().log_param(run.info.run_id, "lr", "0.4")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_steps_per_key_in_any_order(door):
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        for step in range(30):
            mlflow.log_metric("loss", float(step), step=step, timestamp=1_000 + step)
        mlflow.log_metric("loss", -1.0, step=0, timestamp=5_000)  # step 0 after step 29
        mlflow.log_metric("big", 1.0, step=10 ** 12, timestamp=7)
        mlflow.log_metric("big", 2.0, step=0, timestamp=8)
        client.log_batch(run.info.run_id, metrics=[Metric("b", 1.0, 9, 3), Metric("b", 2.0, 9, 3),
                                                   Metric("c", float("nan"), 9, 3), Metric("d", float("inf"), 9, 3)])
        live = [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]
    expected = [(s, 1_000 + s, float(s)) for s in range(30)] + [(0, 5_000, -1.0)]
    assert live == expected
    other = _fresh_store(door)
    assert [(m.step, m.timestamp, m.value) for m in other.get_metric_history(run.info.run_id, "loss")] == expected
    assert [(m.step, m.value) for m in other.get_metric_history(run.info.run_id, "big")] == [(10 ** 12, 1.0), (0, 2.0)]
    assert [m.value for m in other.get_metric_history(run.info.run_id, "b")] == [1.0, 2.0]
    metrics = other.get_run(run.info.run_id).data.metrics
    assert metrics["loss"] == 29.0 and metrics["big"] == 1.0 and metrics["d"] == float("inf")  # MLflow's latest
    assert metrics["c"] != metrics["c"]
    records = points(run_dirs(door.root)[0])
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert {"seq": 32, "step": 0, "ts_ms": 8, "values": {"big": 2.0}} in records
    assert {"step": 3, "ts_ms": 9, "values": {"b": 2.0, "c": "NaN", "d": "Infinity"}}.items() <= records[-1].items()


def test_nested_runs_keep_their_parent(door):
    with mlflow.start_run(run_name="sweep") as parent:
        with mlflow.start_run(run_name="trial-1", nested=True) as child:
            mlflow.log_metric("x", 1)
    got = _fresh_store(door).get_run(child.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id and got.info.run_name == "trial-1"
    found = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                               output_format="list")
    assert [r.info.run_id for r in found] == [child.info.run_id]


def test_status_and_end_time_from_update_run_info(door):
    client = mlflow.MlflowClient()
    run = client.create_run("0")
    client.set_terminated(run.info.run_id, "FAILED", end_time=1_234_567)
    got = _fresh_store(door).get_run(run.info.run_id)
    assert got.info.status == "FAILED" and got.info.end_time == 1_234_567
    (run_dir,) = run_dirs(door.root)
    assert read_json(os.path.join(run_dir, "exit.json"))["reason"] == "failed"
    client.log_metric(run.info.run_id, "late", 1.0)  # MLflow lets one log to an ended run: a new attempt
    client.set_terminated(run.info.run_id, "KILLED")
    assert read_json(os.path.join(run_dir, "run.json"))["attempt"] == 2
    assert read_json(os.path.join(run_dir, "exit.json"))["reason"] == "killed"
    assert _fresh_store(door).get_run(run.info.run_id).data.metrics == {"late": 1.0}


def test_artifacts_byte_for_byte(door, tmp_path):
    payload = os.urandom(300_000)
    (tmp_path / "weights.bin").write_bytes(payload)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a\r\n\x00")
    (tree / "sub" / "b.json").write_text('{"b": 1}')
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "weights.bin"))
        mlflow.log_artifact(str(tmp_path / "weights.bin"), artifact_path="ckpt/epoch=1")
        mlflow.log_artifacts(str(tree), artifact_path="tree")
    run_id = run.info.run_id
    client = mlflow.MlflowClient()
    assert [f.path for f in client.list_artifacts(run_id)] == ["ckpt", "tree", "weights.bin"]
    assert [f.path for f in client.list_artifacts(run_id, "tree")] == ["tree/a.txt", "tree/sub"]
    out = tmp_path / "out"
    out.mkdir()
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="ckpt/epoch=1/weights.bin",
                                                dst_path=str(out))
    assert open(local, "rb").read() == payload
    local_tree = client.download_artifacts(run_id, "tree", str(out))
    assert open(os.path.join(local_tree, "a.txt"), "rb").read() == b"a\r\n\x00"
    assert open(os.path.join(local_tree, "sub", "b.json")).read() == '{"b": 1}'
    (run_dir,) = run_dirs(door.root)
    assert open(os.path.join(run_dir, "artifacts", "weights.bin"), "rb").read() == payload
    leftovers = [n for _, _, files in os.walk(run_dir) for n in files if n.startswith((".tmp-", ".artifact"))]
    assert leftovers == [".tmp-exit.json.reserved"] or leftovers == []
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/tree/sub/b.json") == '{"b": 1}'
    assert client.search_logged_models(experiment_ids=["0"]).to_list() == []


def _media_calls(tmp_path) -> str:
    """log_image (with a key: asynchronous), log_table, log_figure, log_dict, log_text; the run's id."""
    import numpy as np

    with mlflow.start_run() as run:
        mlflow.log_image(np.zeros((8, 8, 3), dtype=np.uint8), key="sample", step=3)
        mlflow.log_image(np.full((4, 4, 3), 255, dtype=np.uint8), artifact_file="plain/white.png")
        mlflow.log_table({"a": [1, 2], "b": ["x", "y"]}, artifact_file="tables/t.json")
        mlflow.log_dict({"k": [1, 2]}, "d.yaml")
        mlflow.log_text("héllo", "notes/n.txt")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig = plt.figure()
            plt.plot([1, 2])
            mlflow.log_figure(fig, "fig.png")
        except ImportError:
            pass
        mlflow.flush_async_logging()
    return run.info.run_id


def _listing(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _listing(client, run_id, f.path) if f.is_dir else [f.path]
    return out


@pytest.mark.slow  # renders a matplotlib figure and compares with MLflow's file store (about 4 s)
def test_media_arrive_as_mlflow_stores_them(door, tmp_path, monkeypatch):
    """The same calls against MLflow's own file store and against hpc://: the same artifact paths (image
    file names carry a step, a timestamp and a random id: compared by shape), the same bytes where MLflow's
    encoding is deterministic, the same tags (log_table's mlflow.loggedArtifacts)."""
    hpc_id = _media_calls(tmp_path)
    hpc_client = mlflow.MlflowClient()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    file_uri = (tmp_path / "mlruns").as_uri()
    mlflow.set_tracking_uri(file_uri)
    mlflow.tracking.fluent._active_experiment_id = None
    try:
        file_id = _media_calls(tmp_path)
        file_client = mlflow.MlflowClient(file_uri)

        def shape(path):
            return re.sub(r"\d{10,}", "T", re.sub(r"[0-9a-f]{32}|[0-9a-f-]{36}", "U", path))

        direct, door_paths = _listing(file_client, file_id), _listing(hpc_client, hpc_id)
        assert sorted(map(shape, door_paths)) == sorted(map(shape, direct))
        for path in ("tables/t.json", "d.yaml", "notes/n.txt", "plain/white.png"):
            assert open(hpc_client.download_artifacts(hpc_id, path, str(tmp_path / "h")), "rb").read() == \
                open(file_client.download_artifacts(file_id, path, str(tmp_path / "f")), "rb").read(), path
        direct_tags = file_client.get_run(file_id).data.tags
        door_tags = hpc_client.get_run(hpc_id).data.tags
        assert door_tags["mlflow.loggedArtifacts"] == direct_tags["mlflow.loggedArtifacts"]
        assert set(door_tags) == set(direct_tags)
        assert set(hpc_client.get_run(hpc_id).data.metrics) == set(file_client.get_run(file_id).data.metrics)
    finally:
        mlflow.set_tracking_uri(door.uri)


def test_system_metrics_follow_mlflows_switch(door, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    with mlflow.start_run(log_system_metrics=True) as run:
        deadline = time.time() + 20
        while "system/cpu_utilization_percentage" not in mlflow.get_run(run.info.run_id).data.metrics:
            assert time.time() < deadline, "no system metric within 20 s"
            time.sleep(0.2)
    with mlflow.start_run() as quiet:
        time.sleep(0.6)
    metrics = _fresh_store(door).get_run(run.info.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert not [k for k in _fresh_store(door).get_run(quiet.info.run_id).data.metrics if k.startswith("system/")]


def test_a_full_queue_drops_and_counts_points_never_blocks(door, monkeypatch):
    monkeypatch.setenv("HPCSYNC_QUEUE_MAX_BYTES", "4000")
    mlflow.set_tracking_uri(door.uri + "/small")  # a store built with the small queue
    client = mlflow.MlflowClient()
    run = client.create_run("0")
    for i in range(20_000):
        client.log_metric(run.info.run_id, "x", float(i), step=i)
    client.set_terminated(run.info.run_id)
    (run_dir,) = run_dirs(door.root + "/small")
    exit_doc = read_json(os.path.join(run_dir, "exit.json"))
    written = sum(len(r["values"]) for r in points(run_dir))
    assert written + exit_doc["dropped_points"] == 20_000 and exit_doc["points_records"] == len(points(run_dir))


def test_an_unwritable_root_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    uri = f"hpc://{tmp_path}/afile/root"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    with pytest.raises(MlflowException, match="cannot write .* writable directory"):
        mlflow.MlflowClient(uri).create_run("0")


def test_an_artifact_that_storage_refuses_does_not_end_training(door, tmp_path, capsys):
    (tmp_path / "w.bin").write_bytes(b"w")
    with mlflow.start_run() as run:
        (run_dir,) = run_dirs(door.root)
        open(os.path.join(run_dir, "artifacts"), "w").close()  # a file where the directory belongs
        mlflow.log_artifact(str(tmp_path / "w.bin"))
        mlflow.log_metric("after", 1.0)
        with pytest.raises(OSError):  # a missing local file stays the caller's error, as in MLflow
            mlflow.log_artifact(str(tmp_path / "missing.bin"))
    assert "it is NOT recorded, training goes on" in capsys.readouterr().err
    assert mlflow.get_run(run.info.run_id).data.metrics == {"after": 1.0}


def test_a_refused_param_does_not_reopen_an_ended_run(door):
    with mlflow.start_run() as run:
        mlflow.log_param("lr", "0.1")
    with pytest.raises(MlflowException):
        mlflow.MlflowClient().log_param(run.info.run_id, "lr", "0.2")
    (run_dir,) = run_dirs(door.root)
    assert read_json(os.path.join(run_dir, "run.json"))["attempt"] == 1
    assert read_json(os.path.join(run_dir, "exit.json"))["reason"] == "finished"
