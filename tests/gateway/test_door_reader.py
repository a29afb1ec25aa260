"""The hpc reader on a run written through MLflow's client (docs/run-format.md section 11), without a server:
the run as MLflow recorded it, points.jsonl with any steps, artifacts/ at their own paths, the rest under hpc/."""
from __future__ import annotations

import json
import os

from sync_gateway.readers.hpc.reader import HpcReader
from sync_gateway.records import Position, RunRef
from sync_gateway.sinks.mlflow._names import run_tags
from sync_gateway.sources.local import LocalSource

EXP_DIR, PARENT, CHILD = "my_exp-66c12725ecc1", "a" * 32, "b" * 32


def _write(path, doc):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))


def _door_run(root, run_id, name, tags, start_ms):
    d = os.path.join(root, EXP_DIR, run_id)
    mlflow = {"run_id": run_id, "experiment_id": EXP_DIR, "experiment_name": "old name", "run_name": name,
              "user_id": "alice", "status": "FINISHED", "start_time": start_ms, "end_time": start_ms + 50,
              "lifecycle_stage": "active", "tags": tags}
    _write(os.path.join(d, "run.json"), {"format_version": "1.3", "id": run_id, "name": name, "project": EXP_DIR,
                                         "created_ms": start_ms + 7, "user": "root", "host": "node1",
                                         "program": "/abs/train.py", "slurm": {"job_id": "42"}, "group": "job-42",
                                         "mlflow": mlflow})
    _write(os.path.join(d, "config.json"), {"lr": "0.1", "a.b": "x"})
    _write(os.path.join(d, "exit.json"), {"attempt": 1, "exit_code": 0, "reason": "finished", "end_ms": start_ms + 50})
    return d


def test_a_door_run_reads_as_mlflow_recorded_it(tmp_path):
    root = str(tmp_path)
    _write(os.path.join(root, EXP_DIR, "experiment.json"),
           {"format_version": "1.3", "mlflow": {"experiment_id": EXP_DIR, "name": "my exp/α"}})
    _door_run(root, PARENT, "parent", {"mlflow.runName": "parent", "mlflow.user": "alice", "team": "x"}, 1000)
    d = _door_run(root, CHILD, "child", {"mlflow.runName": "child", "mlflow.parentRunId": PARENT}, 2000)
    _write(os.path.join(d, "points.jsonl"),
           '{"seq":0,"step":29,"ts_ms":5,"values":{"loss":1.0}}\n{"seq":1,"step":-4,"ts_ms":3,"values":{"loss":"NaN"}}\n'
           '{"seq":2,"step":1000000000000,"ts_ms":9,"values":{"big":2}}\n')
    _write(os.path.join(d, "artifacts", "meta", "d.json"), "{}")
    _write(os.path.join(d, "artifacts", ".tmp-artifact-x"), "half")  # being staged: not a file of the run
    _write(os.path.join(d, "output.log"), "console\n")
    _write(os.path.join(d, "files", "ckpt.pt"), "weights")

    source = LocalSource(root)
    reader = HpcReader(source, RunRef(EXP_DIR, CHILD, d))
    info = reader.info()
    assert (info.project, info.name, info.created_ms, info.user) == ("my exp/α", "child", 2000, "alice")
    assert info.group is None  # nested: MLflow's nesting, not hpc's grouping of the job's ranks under a parent
    parent = HpcReader(source, RunRef(EXP_DIR, PARENT, os.path.join(root, EXP_DIR, PARENT))).info()
    assert parent.group == "job-42" and run_tags(parent)["hpc.group"] == "job-42"  # top level: grouped
    assert info.parent is not None and info.parent[0] == f"{EXP_DIR}/{PARENT}" and info.parent[1].created_ms == 1000
    assert reader.config() == {"lr": "0.1", "a.b": "x"}

    tags = run_tags(info)
    assert "mlflow.parentRunId" not in tags  # the door's id of the parent: the sink sets the server's
    assert tags["mlflow.runName"] == "child" and "mlflow.source.name" not in tags and "mlflow.user" not in tags
    assert tags["hpc.slurm.job_id"] == "42" and not [k for k in tags if k.startswith("slurm.")]
    assert set(tags) - {"mlflow.runName"} == {k for k in tags if k.startswith("hpc.")}

    snap = reader.snapshot()
    size = dict(reader.streams(snap))["points"]
    chunk = reader.read("points", Position(), size, 1 << 20)
    assert [(r.step, r.ts_ms) for r in chunk.rows] == [(29, 5), (-4, 3), (10 ** 12, 9)] and not chunk.corrupt
    assert chunk.rows[1].values["loss"] != chunk.rows[1].values["loss"]  # NaN
    shown = {e.source_path: e.dest for e in reader.files(snap)}
    assert shown == {"artifacts/meta/d.json": "meta/d.json", "output.log": "hpc/output.log",
                     "files/ckpt.pt": "hpc/files/ckpt.pt", "run.json": "hpc/run.json", "config.json": "hpc/config.json"}
    assert reader.status(snap, 10 ** 13, 300).state == "finished"


def test_a_parent_outside_the_root_is_kept_as_an_hpc_tag(tmp_path):
    d = _door_run(str(tmp_path), CHILD, "child", {"mlflow.parentRunId": "c" * 32}, 2000)
    info = HpcReader(LocalSource(str(tmp_path)), RunRef(EXP_DIR, CHILD, d)).info()
    assert info.parent is None and info.project == "old name"  # no experiment.json: the name it was created under
    assert run_tags(info)["hpc.parent_run_id"] == "c" * 32


def test_an_hpc_run_keeps_its_steps_rule(tmp_path):
    """history.jsonl of an ordinary run: a negative step is still a corrupt line (the 1.2 rule)."""
    d = os.path.join(str(tmp_path), "p", "r")
    _write(os.path.join(d, "run.json"), {"format_version": "1.2", "id": "r", "project": "p", "created_ms": 1})
    _write(os.path.join(d, "history.jsonl"), '{"seq":0,"step":-1,"ts_ms":1,"values":{"x":1}}\n')
    reader = HpcReader(LocalSource(str(tmp_path)), RunRef("p", "r", d))
    chunk = reader.read("history", Position(), os.path.getsize(os.path.join(d, "history.jsonl")), 1 << 20)
    assert chunk.rows == [] and len(chunk.corrupt) == 1
    assert reader.info().native_tags is None and reader.info().project == "p"
