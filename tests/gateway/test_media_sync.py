"""Media logged with the SDK (format 1.2's media.bin + media.jsonl) synced to MLflow and read back: images
under MLflow's image-artifact convention with the thumbnail its chart shows, tables and histograms as the tables
MLflow's log_table records."""
from __future__ import annotations

import io
import json
import logging
import re

import pytest
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
    assert len(image) == 2, image  # the image and the thumbnail MLflow's image chart shows, as log_image stores
    name = next(p for p in image if p.endswith(".png"))
    assert re.fullmatch(r"images/eval~sample\+step\+0\+timestamp\+\d+\+[0-9a-f-]{36}\.png", name), name
    assert _artifact(sink, srv, name)[:8] == b"\x89PNG\r\n\x1a\n"
    assert name[:-len(".png")] + "+compressed.webp" in image
    tags = {t["key"]: t["value"] for t in run_info(sink, srv)["data"]["tags"]}
    assert tags["mlflow.loggedImages"] == "true"
    table = json.loads(_artifact(sink, srv, index[1]["path"]))
    assert table == {"columns": ["x", "y"], "data": [[1, "a"], [2, "b"]]}  # pandas' "split", as log_table
    # MLflow has no histogram view: the histogram is the same table form (docs/gateway.md, "Mapping to MLflow").
    assert json.loads(_artifact(sink, srv, index[2]["path"])) == {
        "columns": ["bin_start", "bin_end", "count"], "data": [[0.0, 1.0, 1], [1.0, 2.0, 3]]}
    assert sync_once(settings).ok and _listing(sink, srv, "images") == image  # a second pass re-sends nothing new


def _chart_requests(listing):
    """What MLflow 3.17's image chart requests for each image: its UI's parse of the run's images/ listing
    (imagesByRunUuid in mlflow/server/js: the extension must be png or webp, the name
    <key>+step+<n>+timestamp+<ms>+<id>[+compressed]; the chart shows ``compressed_filepath``)."""
    images = {}
    for path in listing:
        stem, _, ext = path[len("images/"):].rpartition(".")
        if ext not in ("png", "webp"):
            continue
        key, word1, step, word2, ts, *rest = stem.split("+")
        assert (word1, word2) == ("step", "timestamp"), path
        compressed = stem.endswith("compressed")
        file_key = stem[:-len("+compressed")] if compressed else stem
        entry = images.setdefault(file_key, {"key": key.replace("~", "/"), "step": int(step)})
        entry["compressed_filepath" if compressed else "filepath"] = path
    return images


def test_the_image_chart_finds_a_thumbnail_that_is_an_image(settings, root, project):
    PIL = pytest.importorskip("PIL.Image")
    run = hpc.init(project=project, settings={"root": root})
    for step in range(2):
        run.log({"sample": hpc.Image(PIL.new("RGB", (600, 300), (200, 10 * step, 30)))}, step=step)
    run.log({"photo": hpc.Image(PIL.new("P", (40, 80)))}, step=2)  # a palette image: converted, as log_image
    run.finish()
    assert sync_once(settings).ok
    sink = sink_for(settings)
    srv = server_run(sink, project, run.id)
    charted = _chart_requests(_listing(sink, srv, "images"))
    assert sorted((e["key"], e["step"]) for e in charted.values()) == [("photo", 2), ("sample", 0), ("sample", 1)]
    for entry in charted.values():
        assert "compressed_filepath" in entry and "filepath" in entry, entry  # never path=undefined
        # ... requested the way the UI does: get-artifact?path=...&run_uuid=...
        r = sink.http.request("GET", "/get-artifact", params={"path": entry["compressed_filepath"],
                                                              "run_uuid": srv.run_id})
        assert r.status_code == 200, (entry, r.status_code)
        with PIL.open(io.BytesIO(r.content)) as thumb:
            assert thumb.format == "WEBP" and max(thumb.size) == 256  # MLflow's compress_image_size
            wide = entry["key"] == "sample"
            assert thumb.size == ((256, 128) if wide else (128, 256))
        with PIL.open(io.BytesIO(_artifact(sink, srv, entry["filepath"]))) as full:
            assert full.format == "PNG" and full.size == ((600, 300) if wide else (40, 80))


def test_without_pillow_the_image_is_stored_and_one_line_says_why_no_thumbnail(settings, root, project,
                                                                               monkeypatch, caplog):
    import builtins

    from sync_gateway.sinks.mlflow import _media

    real_import = builtins.__import__

    def no_pil(name, *args, **kw):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    monkeypatch.setattr(_media, "_noted", [False])
    run = hpc.init(project=project, settings={"root": root})
    for step in range(3):
        run.log({"m": hpc.Image(_Grey())}, step=step)
    run.finish()
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        assert sync_once(settings).ok
    notes = [r.getMessage() for r in caplog.records if "Pillow" in r.getMessage()]
    assert len(notes) == 1 and "pip install 'hpc-sync[media]'" in notes[0], notes
    sink = sink_for(settings)
    listing = _listing(sink, sink and server_run(sink, project, run.id), "images")
    assert len(listing) == 3 and all(p.endswith(".png") for p in listing), listing


class _Grey:  # the array protocol hpc reads (numpy's names)
    shape, dtype = (2, 2), "uint8"

    def copy(self):
        return self

    def tobytes(self):
        return bytes([0, 64, 128, 255])


def test_tables_and_histograms_are_recorded_on_the_run_as_log_table_records_them(settings, root, project):
    run = hpc.init(project=project, settings={"root": root})
    run.log({"preds": hpc.Table(columns=["x", "y"], data=[[1, "a"]])}, step=0)
    run.log({"preds": hpc.Table(columns=["x", "y"], data=[[2, "b"]]), "w": hpc.Histogram([1.0, 2.0])}, step=1)
    run.finish()
    assert sync_once(settings).ok
    sink = sink_for(settings)
    srv = server_run(sink, project, run.id)
    with open(f"{run.dir}/media.jsonl", encoding="utf-8") as f:
        paths = [json.loads(line)["values"]["path"] for line in f]
    tags = {t["key"]: t["value"] for t in run_info(sink, srv)["data"]["tags"]}
    # What MlflowClient.log_table sets: a JSON list of {"path", "type": "table"}, one per table artifact.
    logged = json.loads(tags["mlflow.loggedArtifacts"])
    assert sorted(logged, key=str) == sorted(({"path": p, "type": "table"} for p in paths), key=str)
    for p in paths:  # each is what pandas reads back with orient="split", as MLflow's load_table does
        doc = json.loads(_artifact(sink, srv, p))
        assert set(doc) == {"columns", "data"} and all(len(r) == len(doc["columns"]) for r in doc["data"])
    # Compared with MLflow's own log_table on a run of the same server: the same tag format.
    mlflow_client = pytest.importorskip("mlflow").MlflowClient(settings.server_url)
    own = mlflow_client.create_run(srv.experiment_id).info.run_id
    mlflow_client.log_table(own, {"x": [1], "y": ["a"]}, "t.json")
    assert json.loads(mlflow_client.get_run(own).data.tags["mlflow.loggedArtifacts"]) == \
        [{"path": "t.json", "type": "table"}]
    assert json.loads(_artifact(sink, type(srv)(own, srv.experiment_id,
                                                mlflow_client.get_run(own).info.artifact_uri), "t.json")) == \
        {"columns": ["x", "y"], "data": [[1, "a"]]}
