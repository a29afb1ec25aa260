"""The contract end to end: a run written by the real SDK (``hpc``) syncs through the gateway, and the
test-only writer used elsewhere in these tests agrees with the SDK's output on the spec."""
from __future__ import annotations

import math

from _runwriter import check_run_dir, read_stream
from conftest import history, run_info, server_run, sink_for, sync_once

import hpc


def test_sdk_run_syncs_exactly(settings, root, project, tmp_path):
    run = hpc.init(project=project, name="sdk-run", config={"lr": 0.01, "net": {"depth": 18}},
                   settings={"root": root})
    run.define_metric("val/*", step_metric="epoch")
    for i in range(300):
        run.log({"loss": 1.0 / (i + 1), "odd": math.nan if i == 7 else float(i)})
        if i % 100 == 99:
            run.log({"val/acc": i / 300, "epoch": i // 100})
    ckpt = tmp_path / "ckpt.txt"
    ckpt.write_text("w")
    run.save(str(ckpt), base_path=str(tmp_path))
    run.summary["best"] = 0.99
    run_dir = run.dir
    run.finish()
    assert check_run_dir(run_dir) == []
    rep = sync_once(settings)
    assert rep.ok, rep
    sink = sink_for(settings)
    srv = server_run(sink, project, run.id)
    recs = [r for r in read_stream(f"{run_dir}/history.jsonl") if "loss" in r["values"]]
    assert len(recs) == 300
    assert history(sink, srv, "loss") == sorted((r["step"], r["ts_ms"], r["values"]["loss"]) for r in recs)
    assert math.isnan(dict((s, v) for s, _, v in history(sink, srv, "odd"))[recs[7]["step"]])
    assert [s for s, _, _ in history(sink, srv, "val/acc")] == [0, 1, 2]  # the define_metric step
    info = run_info(sink, srv)
    assert info["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in info["data"]["params"]}
    assert params["lr"] == "0.01" and params["net.depth"] == "18"
    assert [v for _, _, v in history(sink, srv, "summary/best")] == [0.99]
