"""Media logged with the SDK (format 1.2's media.bin + media.jsonl) synced to MLflow and read back: images
under MLflow's image-artifact convention, tables and histograms as JSON."""
from __future__ import annotations

import json
import re

from conftest import run_info, server_run, sink_for, sync_once
from test_basic import _artifact

import hpc


def _listing(sink, run, folder):
    """The run's artifacts under ``folder`` (the proxy lists names relative to the folder)."""
    rel = run.artifact_uri[len("mlflow-artifacts:/"):].lstrip("/")
    r = sink.http.request("GET", f"/api/2.0/mlflow-artifacts/artifacts?path={rel}/{folder}")
    return [f"{folder}/{f['path']}" for f in r.json().get("files", [])]


def test_every_media_type_syncs_as_mlflow_artifacts(settings, root, project, tmp_path):
    pixels = [[0, 64], [128, 255]]

    class Grey:  # the array protocol hpc reads (numpy's names), so this test needs no numpy
        shape, dtype = (2, 2), "uint8"

        def copy(self):
            return self

        def tobytes(self):
            return bytes(sum(pixels, []))

    run = hpc.init(project=project, settings={"root": root})
    run.log({"loss": 0.5, "eval/sample": hpc.Image(Grey())})
    run.log({"preds": hpc.Table(columns=["x", "y"], data=[[1, "a"], [2, "b"]]),
             "w": hpc.Histogram([0.0, 1.0, 1.0, 2.0], num_bins=2)})
    run.finish()
    rep = sync_once(settings)
    assert rep.ok, rep
    sink = sink_for(settings)
    srv = server_run(sink, project, run.id)
    with open(f"{run.dir}/media.jsonl", encoding="utf-8") as f:
        index = [json.loads(line)["values"] for line in f]
    image = _listing(sink, srv, "images")
    [name] = image
    assert re.fullmatch(r"images/eval~sample\+step\+0\+timestamp\+\d+\+[0-9a-f-]{36}\.png", name), name
    assert _artifact(sink, srv, name)[:8] == b"\x89PNG\r\n\x1a\n"
    tags = {t["key"]: t["value"] for t in run_info(sink, srv)["data"]["tags"]}
    assert tags["mlflow.loggedImages"] == "true"
    table = json.loads(_artifact(sink, srv, index[1]["path"]))
    assert table == {"columns": ["x", "y"], "data": [[1, "a"], [2, "b"]]}  # pandas' "split", as log_table
    assert json.loads(_artifact(sink, srv, index[2]["path"])) == {"bins": [0.0, 1.0, 2.0], "counts": [1, 3]}
    assert sync_once(settings).ok and _listing(sink, srv, "images") == image  # a second pass re-sends nothing new
