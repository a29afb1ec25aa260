"""Issue 22's A/B test: one script that uses the real mlflow client (fluent API, MlflowClient) and Lightning 2.6's
real MLFlowLogger, run (A) directly against a real MLflow server and (B) with ``MLFLOW_TRACKING_URI=hpc:///<root>``
and then ``sync-gateway sync --once`` to a second real server; the two servers are then diffed through
``MlflowClient``: experiments, run names, nesting, params, tags (but ids, times and hpc.*), every metric point,
artifacts (paths and sha256), status, user, start/end times. A second pass sends nothing.

What cannot be equal between two executions of a script is compared where it is decided: wall-clock metric
timestamps (Lightning's) and start/end times: (B) on the server against what the door recorded.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml
from _faultproxy import FaultProxy
from conftest import REPO
from support import need

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

HAVE_LIGHTNING = importlib.util.find_spec("lightning") is not None
T0 = 1_700_000_000_000

SCRIPT = textwrap.dedent('''
    import os, sys
    import numpy as np
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    T0 = %(t0)d
    work = sys.argv[1]
    mlflow.set_experiment("door ab/α")
    with mlflow.start_run(run_name="parent", tags={"team": "vision"}) as parent:
        mlflow.log_params({"lr": 0.1, "layers": [64, 32], "name": "résumé", "opt.beta": "0.9"})
        mlflow.set_tags({"stage": "dev", "mlflow.note.content": "a note"})
        mlflow.set_tag("async", "yes", synchronous=False)
        for step in range(30):
            mlflow.log_metric("loss", 1 / (step + 1), step=step, timestamp=T0 + step)
        mlflow.log_metric("loss", 9.0, step=0, timestamp=T0 + 100)             # step 0 after step 29
        mlflow.log_metric("big", 1.0, step=10 ** 12, timestamp=T0 + 200)      # 10**12 then 0
        mlflow.log_metric("big", 2.0, step=0, timestamp=T0 + 201)
        mlflow.log_metric("neg", 3.0, step=-5, timestamp=T0 + 202)
        mlflow.log_metrics({"a": 1.5, "b": float("nan"), "c": float("inf")}, step=7, timestamp=T0 + 300)
        MlflowClient().log_batch(parent.info.run_id, metrics=[Metric("batch", float(i), T0 + 400 - i, 100 - i)
                                                              for i in range(20)])
        path = os.path.join(work, "notes.txt")
        with open(path, "w") as f:
            f.write("artifact bytes\\n")
        mlflow.log_artifact(path)
        mlflow.log_artifact(path, artifact_path="sub/dir")
        mlflow.log_dict({"classes": 10, "names": ["a", "b"]}, "meta/classes.json")
        mlflow.log_dict({"k": [1, 2]}, "meta/conf.yaml")
        mlflow.log_text("hello\\n", "text/hello.txt")
        img = (np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5)
        mlflow.log_image(img, "plots/img.png")
        mlflow.log_table({"x": [1, 2, 3], "y": ["a", "b", "c"]}, artifact_file="tables/t.json")
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            plt = None
        if plt is not None:
            fig, ax = plt.subplots()
            ax.plot([0, 1, 2], [3, 1, 2])
            mlflow.log_figure(fig, "figures/line.png")
        with mlflow.start_run(run_name="child", nested=True):
            mlflow.log_param("trial", 1)
            mlflow.log_metric("score", 0.5, step=2, timestamp=T0 + 500)
            with mlflow.start_run(run_name="grandchild", nested=True):
                mlflow.log_metric("deep", 1.0, step=0, timestamp=T0 + 600)

    client = MlflowClient()
    exp = client.get_experiment_by_name("door ab/α").experiment_id
    failed = client.create_run(exp, run_name="failed-one", tags={"kind": "client"})
    client.log_metric(failed.info.run_id, "x", 1.0, timestamp=T0 + 700, step=1)
    client.set_terminated(failed.info.run_id, "FAILED")
    killed = client.create_run(exp, run_name="killed-one")
    client.set_terminated(killed.info.run_id, "KILLED")

    if os.environ.get("AB_LIGHTNING") == "1":
        import lightning as L
        import torch
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.loggers import MLFlowLogger

        torch.manual_seed(0)
        torch.set_num_threads(1)

        from tiny_lightning import Tiny, tiny_loader  # tests/compat/scripts, on PYTHONPATH

        loader = tiny_loader()
        logger = MLFlowLogger(experiment_name="lit/tiny", run_name="tiny",
                              tracking_uri=os.environ["MLFLOW_TRACKING_URI"], log_model=True)
        ckpt = ModelCheckpoint(dirpath=os.path.join(work, "ckpt"))
        trainer = L.Trainer(max_epochs=2, logger=logger, log_every_n_steps=1, accelerator="cpu", devices=1,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=work,
                            callbacks=[ckpt])
        trainer.fit(Tiny(), loader, loader)
''') % {"t0": T0}

# Tags that hold ids or times, so differ between any two executions of a script (nesting is compared apart).
ID_TAGS = {"mlflow.parentRunId", "mlflow.log-model.history"}
# log_image(key=...) names files with its timestamp and a uuid: compared with those parts masked.
_KEYED_IMAGE = re.compile(r"%timestamp%\d+%[0-9a-f-]+")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two real MLflow servers for the module: (A) direct, (B) the gateway's."""
    need(importlib.util.find_spec("mlflow") is not None, "mlflow is not installed: pip install -e '.[server]'")
    import mlflow_server as ms

    a = ms.start(str(tmp_path_factory.mktemp("mlflow-a")))
    try:
        b = ms.start(str(tmp_path_factory.mktemp("mlflow-b")))
    except BaseException:
        ms.stop(a)
        raise
    yield a, b
    ms.stop(b)
    ms.stop(a)


def _run_script(tracking_uri: str, base: str) -> None:
    """The script at one path, in one fresh working directory, for A and B alike (``mlflow.source.name``, and
    the checkpoint, which holds its own path)."""
    work = os.path.join(base, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    script = os.path.join(base, "train.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCSYNC_", "MLFLOW_", "SLURM_"))}
    env.update(MLFLOW_TRACKING_URI=tracking_uri,
               PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests", "compat", "scripts")]),
               AB_LIGHTNING="1" if HAVE_LIGHTNING else "0",
               MLFLOW_DISABLE_TELEMETRY="true", HPCSYNC_STATS="off")
    done = subprocess.run([sys.executable, script, work], env=env, cwd=base, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _files(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _files(client, run_id, f.path) if f.is_dir else [f.path]
    return out


def _sha(client, run_id, path, dst):
    local = client.download_artifacts(run_id, path, dst)
    with open(local, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def server_view(url: str, dst: str):
    """Every run of the server but Default's, keyed by (experiment name, run name), as MlflowClient reads it."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(url)
    runs = {}
    for exp in client.search_experiments():
        if exp.name == "Default":
            continue
        found = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
        names = {r.info.run_id: r.info.run_name for r in found}
        for r in found:
            key = (exp.name, r.info.run_name)
            assert key not in runs, f"two runs {key} on {url}"
            parent = r.data.tags.get("mlflow.parentRunId")
            history = {k: sorted((m.step, m.timestamp, m.value if m.value == m.value else "NaN")
                                 for m in client.get_metric_history(r.info.run_id, k)) for k in r.data.metrics}
            files = [p for p in _files(client, r.info.run_id) if not p.startswith("hpc/")]
            runs[key] = {
                "id": r.info.run_id, "parent": names.get(parent, parent) if parent else None,
                "params": dict(r.data.params), "status": r.info.status, "user": r.info.user_id,
                "tags": {k: v for k, v in r.data.tags.items() if k not in ID_TAGS and not k.startswith("hpc.")},
                "hpc_tags": {k: v for k, v in r.data.tags.items() if k.startswith("hpc.")},
                "start": r.info.start_time, "end": r.info.end_time, "history": history,
                "latest": {k: (v if v == v else "NaN") for k, v in r.data.metrics.items()},
                "artifacts": {_KEYED_IMAGE.sub("%timestamp%*", p): _sha(client, r.info.run_id, p, dst) for p in files},
                "hpc_artifacts": sorted(p for p in _files(client, r.info.run_id, "hpc")),
            }
    return runs


def _door_runs(root: str):
    """(experiment name, run name) -> (run.json's mlflow object, points.jsonl records) of the door's runs."""
    out = {}
    for project in sorted(os.listdir(root)):
        exp_doc = os.path.join(root, project, "experiment.json")
        if not os.path.isfile(exp_doc):
            continue
        exp = json.load(open(exp_doc, encoding="utf-8"))["mlflow"]["name"]
        for run_id in sorted(os.listdir(os.path.join(root, project))):
            run_dir = os.path.join(root, project, run_id)
            if os.path.isfile(os.path.join(run_dir, "run.json")):
                meta = json.load(open(os.path.join(run_dir, "run.json"), encoding="utf-8"))["mlflow"]
                with open(os.path.join(run_dir, "points.jsonl"), encoding="utf-8") as f:
                    recs = [json.loads(line) for line in f]
                out[(exp, meta["run_name"])] = (meta, recs)
    return out


def _sync_once(tmp_path, root: str, url: str, state: str) -> None:
    from sync_gateway.cli.commands import main

    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({"roots": [root], "server": {"kind": "mlflow", "url": url}, "state_dir": state}))
    assert main(["sync", "--once", "-q", "--config", str(cfg)]) == 0


@pytest.fixture(scope="module")
def ab(servers, tmp_path_factory):
    a, b = servers
    base = tmp_path_factory.mktemp("ab")
    _run_script(a.url, str(base))
    root = str(base / "root")
    _run_script(f"hpc://{root}", str(base))
    with FaultProxy(b.url, match="/nothing", record=True) as proxy:
        _sync_once(base, root, proxy.url, str(base / "state"))
        first = len(proxy.records)
        view_b = server_view(b.url, str(base / "dl-b1"))
        _sync_once(base, root, proxy.url, str(base / "state"))
        second = proxy.records[first:]
    return {"a": server_view(a.url, str(base / "dl-a")), "b": view_b,
            "b_again": server_view(b.url, str(base / "dl-b2")), "door": _door_runs(root), "second": second}


def _stored(v):
    """A points.jsonl value as MLflow's SQL store keeps it (infinities become the largest doubles, as for a
    direct run)."""
    return {"Infinity": sys.float_info.max, "-Infinity": -sys.float_info.max}.get(v, v) if isinstance(v, str) else v


def _wallclock(key) -> bool:
    return key[0] == "lit/tiny"  # Lightning's points and times are the clock's: compared against the door's


def test_same_runs_nesting_params_tags_status_user(ab):
    a, b = ab["a"], ab["b"]
    assert sorted(a) == sorted(b)
    expected = {("door ab/α", n) for n in ("parent", "child", "grandchild", "failed-one", "killed-one")}
    assert expected <= set(a)
    if HAVE_LIGHTNING:
        assert ("lit/tiny", "tiny") in a
    for key in a:
        ra, rb = a[key], b[key]
        for field in ("parent", "params", "status", "user", "tags"):
            assert ra[field] == rb[field], f"{key} {field}: direct {ra[field]!r}, through hpc:// {rb[field]!r}"
    assert a[("door ab/α", "grandchild")]["parent"] == "child" and a[("door ab/α", "child")]["parent"] == "parent"
    assert b[("door ab/α", "failed-one")]["status"] == "FAILED" and b[("door ab/α", "killed-one")]["status"] == "KILLED"
    assert b[("door ab/α", "parent")]["params"]["layers"] == "[64, 32]"


def test_every_metric_point_with_its_step_and_timestamp(ab):
    a, b, door = ab["a"], ab["b"], ab["door"]
    for key in a:
        ra, rb = a[key], b[key]
        assert sorted(ra["history"]) == sorted(rb["history"]), key
        if _wallclock(key):  # the two executions' clocks differ: same steps and values, each with its own time
            for k in ra["history"]:
                assert [(s, v) for s, _, v in ra["history"][k]] == [(s, v) for s, _, v in rb["history"][k]], (key, k)
        else:
            assert ra["history"] == rb["history"], key
            assert ra["latest"] == rb["latest"], key
        # (B) on the server is exactly what the client logged through hpc:// (points.jsonl)
        _, recs = door[key]
        logged = {}
        for r in recs:
            for k, v in r["values"].items():
                logged.setdefault(k, []).append((r["step"], r["ts_ms"], _stored(v)))
        assert {k: sorted(v) for k, v in logged.items()} == rb["history"], key
    loss = b[("door ab/α", "parent")]["history"]["loss"]
    assert (0, T0 + 100, 9.0) in loss and len(loss) == 31
    assert b[("door ab/α", "parent")]["history"]["big"] == [(0, T0 + 201, 2.0), (10 ** 12, T0 + 200, 1.0)]
    assert b[("door ab/α", "parent")]["history"]["neg"] == [(-5, T0 + 202, 3.0)]


def test_artifacts_byte_for_byte_at_their_paths(ab):
    a, b = ab["a"], ab["b"]
    for key in a:
        assert a[key]["artifacts"] == b[key]["artifacts"], key
        assert b[key]["hpc_artifacts"] and all(p.startswith("hpc/") for p in b[key]["hpc_artifacts"])
    parent = b[("door ab/α", "parent")]["artifacts"]
    assert {"notes.txt", "sub/dir/notes.txt", "meta/classes.json", "text/hello.txt", "plots/img.png",
            "tables/t.json"} <= set(parent)
    if HAVE_LIGHTNING:
        assert any(p.endswith(".ckpt") for p in b[("lit/tiny", "tiny")]["artifacts"])


def test_start_and_end_times(ab):
    a, b, door = ab["a"], ab["b"], ab["door"]
    for key in a:
        meta, _ = door[key]
        assert abs(b[key]["start"] - meta["start_time"]) <= 1000, key
        assert abs(b[key]["end"] - meta["end_time"]) <= 1000, key
        # (A) and (B) are two executions: their clocks differ, and so do their durations (every call of (A)
        # waits for the server, which (B) never does), so only their order is the same
        assert a[key]["start"] <= a[key]["end"] and b[key]["start"] <= b[key]["end"], key


def test_the_door_bookkeeping_stays_under_hpc(ab):
    for key, run in ab["b"].items():
        assert run["hpc_tags"]["hpc.run_id"].endswith("/" + ab["door"][key][0]["run_id"])
        assert not any(k.startswith(("slurm.", "summary.")) for k in run["tags"]), key


def test_a_second_pass_sends_nothing(ab):
    writes = [r for r in ab["second"] if r.method != "GET" and "/runs/search" not in r.path
              and "/experiments/get-by-name" not in r.path]
    assert writes == [], [(r.method, r.path) for r in writes]
    for key, run in ab["b"].items():
        assert ab["b_again"][key]["history"] == run["history"], key
        assert ab["b_again"][key]["artifacts"] == run["artifacts"], key


NESTED = textwrap.dedent('''
    import mlflow
    mlflow.set_experiment("nest first/β")
    with mlflow.start_run(run_name="outer") as outer:
        mlflow.log_param("p", "1")
        with mlflow.start_run(run_name="inner", nested=True):
            mlflow.log_metric("m", 1.0, step=-3)
''')


def test_a_child_synced_before_its_parent_nests_under_the_parent_run(servers, tmp_path):
    """The child opens its parent's server run first (with the parent's own start and name); the parent's sync
    then finds that run by its key: one server run each, the child nested under the parent."""
    from mlflow import MlflowClient

    from sync_gateway.engine.run_sync import _rooted
    from sync_gateway.engine.runner import Runner, make_sink
    from sync_gateway.readers import discover_runs, reader_for
    from sync_gateway.records import root_id, run_key
    from sync_gateway.settings import Settings
    from sync_gateway.sinks.base import RunSpec
    from sync_gateway.sources.local import LocalSource

    _, b = servers
    root = str(tmp_path / "root")
    script = tmp_path / "nested.py"
    script.write_text(NESTED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCSYNC_", "MLFLOW_", "SLURM_"))}
    env.update(MLFLOW_TRACKING_URI=f"hpc://{root}", PYTHONPATH=REPO, MLFLOW_DISABLE_TELEMETRY="true")
    done = subprocess.run([sys.executable, str(script)], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    door = _door_runs(root)
    outer, inner = door[("nest first/β", "outer")][0], door[("nest first/β", "inner")][0]

    settings = Settings(roots=[root], server_url=b.url, state_dir=str(tmp_path / "state"))
    sink = make_sink(settings, environ={})
    source = LocalSource(root)
    (child,) = [ref for ref in discover_runs(source) if ref.run_id == inner["run_id"]]
    info = reader_for(source, child).info()
    assert info.project == "nest first/β" and info.parent is not None and info.parent[0].endswith(outer["run_id"])
    # the child first, keyed within its root as the engine keys it: its parent's server run is opened too
    rid = root_id(source.display)
    sink.open_run(RunSpec(run_key(rid, child), _rooted(info, rid), root_id=rid), None)
    with Runner(settings, sink=make_sink(settings, environ={})) as runner:
        assert runner.run_pass().ok

    client = MlflowClient(b.url)
    exp = client.get_experiment_by_name("nest first/β")
    found = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in found) == ["inner", "outer"]  # the parent once, not twice
    runs = {r.info.run_name: r for r in found}
    assert runs["inner"].data.tags["mlflow.parentRunId"] == runs["outer"].info.run_id
    assert runs["outer"].info.start_time == outer["start_time"] and runs["outer"].data.params == {"p": "1"}
    assert [(m.step, m.value) for m in client.get_metric_history(runs["inner"].info.run_id, "m")] == [(-3, 1.0)]
