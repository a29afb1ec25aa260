"""Run identity against a real MLflow server (issue 21 item 3): two roots with the same project/run id are two
MLflow runs over 5 passes; a state of an older gateway (state version 2, the run tagged <project>/<run_id>)
goes on in the same MLflow run with nothing stored twice; after a state loss the older gateway's run is
adopted by its own root's run only."""
from __future__ import annotations

import shutil
from dataclasses import replace

from _ids import key as run_key
from _runwriter import RunWriter, read_stream
from conftest import history, sink_for, sync_once, tagged_runs
from test_run_identity import _to_state_version_2

T0 = 1_764_150_000_000


def _points(w: RunWriter):
    return sorted((r["step"], r["ts_ms"], float(r["values"]["x"])) for r in read_stream(w.path("history.jsonl")))


def _by_root(sink, project, run_id):
    """MLflow run id by the root id its tag names."""
    return {[t["value"] for t in r["data"]["tags"] if t["key"] == "hpc.run_id"][0].split("/")[0]: r["info"]["run_id"]
            for r in tagged_runs(sink, project, run_id)}


def test_two_roots_five_passes_an_older_gateways_state_and_a_state_loss(settings, tmp_path, project):
    a, b = str(tmp_path / "alice"), str(tmp_path / "bob")
    wa, wb = RunWriter(a, project, "r", created_ms=T0), RunWriter(b, project, "r", created_ms=T0 + 5)
    wa.log_many({"x": float(i)} for i in range(30))
    s = replace(settings, roots=[a])
    assert sync_once(s).ok
    sink = sink_for(settings)
    eid = sink.experiment_id(project)
    (alices,) = _by_root(sink, project, "r").values()
    # As an older gateway left it: state version 2 keyed <project>/<run_id>, the run tagged with that.
    _to_state_version_2(s.state_dir)
    sink.rest.set_tags(alices, {"hpc.run_id": f"{project}/r"})

    wb.log_many({"x": -float(i)} for i in range(20))
    s = replace(settings, roots=[b, a])
    for i in range(5):
        wa.log({"x": 100.0 + i})
        wb.log({"x": -100.0 - i})
        rep = sync_once(s)
        assert rep.ok and not rep.notes, rep   # before: "was rewritten", a new MLflow run every pass
    ids = _by_root(sink, project, "r")
    assert ids[run_key(a, project, "r").split("/")[0]] == alices and len(ids) == 2
    assert len(sink._call("POST", "/runs/search", {"experiment_ids": [eid], "run_view_type": "ALL"})["runs"]) == 2
    for w, root in ((wa, a), (wb, b)):
        run = sink.runs.find(eid, run_key(root, project, "r"))
        assert run is not None and history(sink, run, "x") == _points(w), root   # its own points, each once

    # The state is lost and the server run carries the older gateway's tag again: adopted, not duplicated,
    # by alice's run (the same start), not by bob's, which comes first and finds its own by its own tag.
    shutil.rmtree(s.state_dir)
    sink.rest.set_tags(alices, {"hpc.run_id": f"{project}/r"})
    wa.log({"x": 500.0})
    rep = sync_once(s)
    assert rep.ok, rep
    assert _by_root(sink, project, "r") == ids
    assert len(sink._call("POST", "/runs/search", {"experiment_ids": [eid], "run_view_type": "ALL"})["runs"]) == 2
    run = sink.runs.find(eid, run_key(a, project, "r"))
    assert run is not None and run.run_id == alices and history(sink, run, "x") == _points(wa)
    sink.close()
