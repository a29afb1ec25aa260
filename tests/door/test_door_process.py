"""The door in real training processes: plugin loading, no network, several processes under one root,
SLURM ranks and requeues, and a process that exits while its run is RUNNING."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from door_support import child_env, import_mlflow, points, read_json, run_dirs, run_script

mlflow = import_mlflow()

pytestmark = pytest.mark.slow

# Every socket.getaddrinfo and socket.connect the training process attempts, appended to $AUDIT_LOG (an
# audit hook sees calls from every thread, MLflow's telemetry thread included). The call then fails, so
# nothing leaves the machine either way.
SITECUSTOMIZE = '''
import os, sys
_log = os.environ["AUDIT_LOG"]
def _hook(event, args):
    if event in ("socket.getaddrinfo", "socket.connect"):
        with open(_log, "a") as f:
            f.write(event + " " + repr(args[:2])[:200] + "\\n")
        raise OSError("the audit of tests/door forbids " + event)
sys.addaudithook(_hook)
'''

TRAIN = '''
import os, sys, time
import mlflow
import numpy as np
if os.environ.get("URI_IN_CODE"):
    mlflow.set_tracking_uri(os.environ["URI_IN_CODE"])
mlflow.set_experiment("audit")
with mlflow.start_run(run_name="r") as run:
    mlflow.log_params({"lr": 0.1})
    for i in range(20):
        mlflow.log_metric("loss", 1 / (i + 1), step=i)
    mlflow.log_image(np.zeros((4, 4, 3), dtype=np.uint8), key="img", step=1)
    mlflow.log_dict({"a": 1}, "a.json")
    with mlflow.start_run(nested=True):
        mlflow.log_metric("x", 1)
    mlflow.flush_async_logging()
    print(mlflow.get_run(run.info.run_id).data.params)
time.sleep(float(os.environ.get("LINGER_S", "0")))  # time for a telemetry thread to try its lookup
'''


def _audited(tmp_path, name: str, **env: str) -> list:
    site = tmp_path / f"site-{name}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / f"audit-{name}.log"
    log.write_text("")
    environment = child_env(AUDIT_LOG=str(log), **env)
    environment["PYTHONPATH"] = f"{site}{os.pathsep}{environment['PYTHONPATH']}"
    run_script(TRAIN, environment, str(tmp_path))
    return log.read_text().splitlines()


def test_the_training_process_makes_no_network_call(tmp_path):
    root = tmp_path / "root"
    assert _audited(tmp_path, "env", MLFLOW_TRACKING_URI=f"hpc://{root}", LINGER_S="3") == []
    assert _audited(tmp_path, "code", URI_IN_CODE=f"hpc://{root}", LINGER_S="3") == []
    assert len(run_dirs(str(root))) == 4


def test_the_audit_sees_mlflows_own_lookup(tmp_path):
    """The control: the same script on a SQLite store, without the door, is caught resolving MLflow's
    telemetry host, so the audit above could fail."""
    seen = _audited(tmp_path, "sqlite", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}", LINGER_S="5")
    assert any("getaddrinfo" in line and "mlflow-telemetry" in line for line in seen), seen


def test_the_plugin_loads_with_mlflow_without_a_warning(tmp_path):
    code = '''
    import sys, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import mlflow
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
        from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry
    print([str(w.message) for w in caught if "hpc" in str(w.message) or "circular" in str(w.message)])
    print(_tracking_store_registry._registry["hpc"].__module__,
          _artifact_repository_registry._registry["hpc"].__module__)
    '''
    out = run_script(code, child_env(), str(tmp_path)).stdout.splitlines()
    assert out == ["[]", "hpc.mlflow hpc.mlflow"]


def test_import_hpc_imports_no_mlflow(tmp_path):
    code = "import sys, hpc, hpc.mlflow; print('mlflow' in sys.modules)"
    assert run_script(code, child_env(), str(tmp_path)).stdout.strip() == "False"


WRITER = '''
import os, sys, time
import mlflow
mlflow.set_experiment("shared")
with mlflow.start_run(run_name=sys.argv[1]) as run:
    mlflow.log_param("rank", sys.argv[1])
    for i in range(50):
        mlflow.log_metric("loss", float(i), step=i)
    print(run.info.run_id, flush=True)
    open(sys.argv[2], "w").close()
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.05)
'''


def test_runs_of_other_processes_under_one_root_are_read(door, tmp_path):
    """Two training processes write one experiment at once; this process reads both while they run (after
    a heartbeat) and after they ended."""
    env = child_env(MLFLOW_TRACKING_URI=door.uri, HPCSYNC_HEARTBEAT_INTERVAL_S="0.2",
                    HPCSYNC_FLUSH_INTERVAL_S="0.1")
    release = tmp_path / "release"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, f"w{i}", str(tmp_path / f"ready{i}"), str(release)],
                              env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, text=True) for i in range(2)]
    try:
        ids = [p.stdout.readline().strip() for p in procs]
        assert all(ids), "a writer did not start"
        import time

        deadline = time.time() + 30
        while True:
            runs = mlflow.search_runs(experiment_names=["shared"], output_format="list")
            if len(runs) == 2 and all(r.data.params.get("rank") and len(
                    door.client.get_metric_history(r.info.run_id, "loss")) == 50 for r in runs):
                break
            assert time.time() < deadline, [r.data for r in runs]
            time.sleep(0.2)
        assert {r.info.status for r in runs} == {"RUNNING"}
        with pytest.raises(mlflow.exceptions.MlflowException, match="another process"):
            door.client.log_metric(ids[0], "intruder", 1.0)  # one writer per run
    finally:
        release.touch()
        for p in procs:
            assert p.wait(60) == 0
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["shared"], output_format="list")}
    assert set(runs) == {"w0", "w1"} and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert [m.step for m in door.client.get_metric_history(runs["w1"].info.run_id, "loss")] == list(range(50))


SLURM_JOB = '''
import mlflow
mlflow.set_experiment("slurm")
with mlflow.start_run() as run:
    mlflow.log_param("lr", "0.1")
    first = mlflow.get_run(run.info.run_id).data.metrics.get("loss")
    start = 0 if first is None else 3
    for i in range(start, start + 3):
        mlflow.log_metric("loss", float(i), step=i)
    with mlflow.start_run(nested=True) as child:
        mlflow.log_metric("x", 1.0)
print(run.info.run_id, child.info.run_id)
'''


def test_slurm_ranks_are_grouped_and_a_requeue_resumes(tmp_path):
    root = tmp_path / "root"
    slurm = dict(SLURM_JOB_ID="4242", SLURM_JOB_NAME="train", SLURM_NTASKS="2", SLURM_CLUSTER_NAME="c1",
                 MLFLOW_TRACKING_URI=f"hpc://{root}")
    first = run_script(SLURM_JOB, child_env(SLURM_PROCID="0", **slurm), str(tmp_path)).stdout.split()
    run_script(SLURM_JOB, child_env(SLURM_PROCID="1", **slurm), str(tmp_path))
    again = run_script(SLURM_JOB, child_env(SLURM_PROCID="0", SLURM_RESTART_COUNT="1", **slurm),
                       str(tmp_path)).stdout.split()
    assert again == first == ["slurm-c1-4242-r0", "slurm-c1-4242-r0-1"]
    project = root / "slurm"
    meta = read_json(str(project / "slurm-c1-4242-r0" / "run.json"))
    assert meta["group"] == "train-4242" and meta["slurm"]["restart_count"] == 1 and meta["attempt"] == 2
    assert read_json(str(project / "slurm-c1-4242-r1" / "run.json"))["group"] == "train-4242"
    steps = [r["step"] for r in points(str(project / "slurm-c1-4242-r0"))]
    assert steps == [0, 1, 2, 3, 4, 5]
    assert read_json(str(project / "slurm-c1-4242-r0" / "exit.json"))["attempt"] == 2
    child = read_json(str(project / "slurm-c1-4242-r0-1" / "run.json"))["mlflow"]["tags"]
    assert child["mlflow.parentRunId"] == "slurm-c1-4242-r0"


def test_a_process_that_exits_with_its_run_running_leaves_complete_files(tmp_path):
    code = '''
    import mlflow
    client = mlflow.MlflowClient()
    run = client.create_run("0")
    for i in range(1000):
        client.log_metric(run.info.run_id, "x", float(i), step=i)
    client.log_param(run.info.run_id, "p", "1")
    '''
    root = tmp_path / "root"
    run_script(code, child_env(MLFLOW_TRACKING_URI=f"hpc://{root}"), str(tmp_path))
    (run_dir,) = run_dirs(str(root))
    assert len(points(run_dir)) == 1000 and read_json(os.path.join(run_dir, "config.json")) == {"p": "1"}
    assert not os.path.exists(os.path.join(run_dir, "exit.json"))  # MLflow still calls it RUNNING
    assert json.load(open(os.path.join(run_dir, "run.json")))["mlflow"]["status"] == "RUNNING"
