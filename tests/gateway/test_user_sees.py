"""Issue 24, gateway side, against a real MLflow server: what a small run costs in requests, what the SDK
counted as dropped shown on the run and by ``status``, and the user a W&B run records."""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import pytest
from _ids import key
from _runwriter import RunWriter
from conftest import make_runner, run_info, server_run, sink_for

from sync_gateway.cli.commands import main
from sync_gateway.sinks.mlflow._runs import LIST_AFTER

KINDS = (("/runs/create", "create"), ("/runs/search", "search"), ("/runs/log-batch", "log-batch"),
         ("/runs/update", "update"), ("/mlflow-artifacts/", "files"))


def _counting(settings):
    """A sink whose requests are counted by kind."""
    sink = sink_for(settings)
    counts: Counter = Counter()
    real = sink.http.request

    def request(method, path, **kw):
        counts[next((k for p, k in KINDS if p in path), "other")] += 1
        return real(method, path, **kw)

    sink.http.request = request
    return sink, counts


def _small(root, project, name, exit_doc=None):
    w = RunWriter(root, project, name)
    w.config({"lr": 0.1, "model": {"depth": 4}})
    w.log_many({"loss": 1.0 / (i + 1), "acc": i / 5} for i in range(5))
    w.exit(0)
    if exit_doc:
        with open(w.path("exit.json")) as f:
            doc = json.load(f)
        with open(w.path("exit.json"), "w") as f:
            json.dump({**doc, **exit_doc}, f)
    return w


def _files(w):
    return len([f for f in os.listdir(w.dir) if f in ("output.log", "run.json", "config.json", "summary.json",
                                                         "hardware.json")])


def test_a_small_run_costs_one_create_one_log_batch_one_update_and_a_put_per_file(settings, root, project):
    w = _small(root, project, "one")
    sink, counts = _counting(settings)
    with make_runner(settings, sink=sink) as runner:
        assert runner.run_pass().ok
    # The create carries the metadata tags; the one log-batch the params, the points, the summary and the
    # state's tag just before the update; the search after the create is the race check (docs/gateway.md).
    assert counts["create"] == 1 and counts["update"] == 1 and counts["log-batch"] == 1, counts
    assert counts["files"] == _files(w), counts
    # The run looked up by its tag, then by the tag an older gateway (before root ids) would have given it
    # (a state lost since: adopted, never duplicated; docs/gateway.md "Exactly once"), then the race check.
    assert counts["search"] == 3, counts
    srv = server_run(sink, project, "one")
    data = run_info(sink, srv)["data"]
    assert {p["key"]: p["value"] for p in data["params"]} == {"lr": "0.1", "model.depth": "4"}
    tags = {t["key"]: t["value"] for t in data["tags"]}
    assert tags["hpc.state"] == "finished" and tags["mlflow.runName"]
    assert tags["hpc.run_id"] == key(settings.roots[0], project, "one")
    assert len(sink.get_history(srv, "loss")) == 5
    counts.clear()
    with make_runner(settings, sink=sink) as runner:
        assert runner.run_pass().runs_unchanged == 1
    assert not counts, counts


def test_many_new_runs_are_looked_up_with_one_listing_and_a_lost_state_adopts_them_all(settings, root, project):
    n = LIST_AFTER + 8
    for i in range(n):
        _small(root, project, f"r{i:02d}")
    sink, counts = _counting(settings)
    with make_runner(settings, sink=sink) as runner:
        assert runner.run_pass().ok
    # LIST_AFTER runs looked up with two searches each (their tag, then the tag an older gateway would have
    # given them), then one listing answers both for the rest; one race check per create. A run in flight in
    # another worker when the listing arrives has its second lookup answered by it: up to `workers` fewer.
    most = 2 * LIST_AFTER + 1 + n
    assert counts["create"] == n and most - settings.workers <= counts["search"] <= most, counts
    assert counts["log-batch"] == n and counts["update"] == n, counts
    # The state is lost: every run is found again (through the listing too), none created twice.
    shutil.rmtree(settings.state_dir)
    counts.clear()
    with make_runner(settings, sink=sink) as runner:
        assert runner.run_pass().ok
    assert counts["create"] == 0 and counts["search"] == LIST_AFTER + 1, counts
    eid = sink.experiment_id(project)
    res = sink._call("POST", "/runs/search", {"experiment_ids": [eid], "max_results": 1000})
    assert len(res["runs"]) == n


def test_what_the_sdk_dropped_is_a_run_tag_and_status_shows_it(settings, root, project, tmp_path, capsys):
    import yaml

    _small(root, project, "flood", {"dropped_rows": 120, "dropped_output_bytes": 4096, "dropped_points": 0})
    _small(root, project, "calm")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"roots": [root], "server": {"kind": "mlflow", "url": settings.server_url},
                                   "state_dir": settings.state_dir}))
    assert main(["-q", "sync", "--once", "--config", str(cfg)]) == 0
    sink = sink_for(settings)
    tags = {t["key"]: t["value"] for t in run_info(sink, server_run(sink, project, "flood"))["data"]["tags"]}
    assert tags["hpc.dropped_rows"] == "120" and tags["hpc.dropped_output_bytes"] == "4096", tags
    assert "hpc.dropped_points" not in tags  # only what was dropped
    calm = {t["key"] for t in run_info(sink, server_run(sink, project, "calm"))["data"]["tags"]}
    assert not any(k.startswith("hpc.dropped") for k in calm)
    capsys.readouterr()
    assert main(["status", "--config", str(cfg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    flood = " ".join(x for x in lines if "flood" in x or "dropped" in x)
    assert "the SDK dropped 120 rows, 4,096 bytes of output" in " ".join(flood.split()), lines
    assert not any("calm" in x and "dropped" in x for x in lines)


def test_full_batches_go_at_once_and_the_tail_rides_with_the_state(settings, root, project):
    w = RunWriter(root, project, "long")
    w.config({"lr": 0.1})
    w.log_many({"loss": float(i)} for i in range(2300))  # 2 full log-batches of 1000 points, then 300
    w.exit(0)
    sink, counts = _counting(settings)
    with make_runner(settings, sink=sink) as runner:
        assert runner.run_pass().points_sent == 2300
    assert counts["log-batch"] == 3 and counts["update"] == 1, counts
    srv = server_run(sink, project, "long")
    assert [p["value"] for p in sorted(sink.get_history(srv, "loss"), key=lambda p: p["step"])] == \
        [float(i) for i in range(2300)]


def test_points_held_for_the_last_batch_survive_a_gateway_stopped_before_sending_them(settings, root, project):
    from sync_gateway.engine.state import StateStore
    from sync_gateway.errors import ServerUnreachable

    w = _small(root, project, "held")
    sink, counts = _counting(settings)
    real = sink.http.request

    def down_after_the_points(method, path, **kw):  # the server goes away before the run's final log-batch
        if "/runs/log-batch" in path:
            raise ServerUnreachable("the server went away (test)")
        return real(method, path, **kw)

    sink.http.request = down_after_the_points
    with make_runner(settings, sink=sink) as runner:
        assert not runner.run_pass().ok
    st = StateStore(settings.state_dir).load(key(root, project, "held"))
    assert st.cursors["history"].records == 5  # acknowledged: the cursor moved ...
    assert len([m for m in st.sink["held"]["metrics"] if m["key"] in ("loss", "acc")]) == 10  # ... and they wait
    sink2, _ = _counting(settings)
    with make_runner(settings, sink=sink2) as runner:  # a new gateway, the server back
        assert runner.run_pass().ok
    srv = server_run(sink2, project, "held")
    assert len(sink2.get_history(srv, "loss")) == 5 and len(sink2.get_history(srv, "acc")) == 5
    assert StateStore(settings.state_dir).load(key(root, project, "held")).sink["held"] == {}
    assert counts["files"] == _files(w)  # the first gateway's files went before the server went away


def test_held_points_the_server_refuses_are_counted_and_a_batch_refused_whole_stays_held():
    from sync_gateway.errors import ServerRefused
    from sync_gateway.sinks.mlflow import _held
    from sync_gateway.sinks.mlflow._runs import MlflowRun
    from sync_gateway.sinks.mlflow.sink import MlflowSink

    class Rest:
        batch_points = 1000

        def __init__(self, refused):
            self.refused = refused

        def log_batch_parts(self, run_id, lists):
            return [(self.refused, ServerRefused("HTTP 400: INVALID_PARAMETER_VALUE (test)", 400))]

    def held_run():
        run = MlflowRun("r", "e")
        _held.hold(run, metrics=[{"key": "x", "value": float(i), "timestamp": 1, "step": i} for i in range(3)])
        return run

    run = held_run()
    _held.flush(Rest(refused=1), run, {"hpc.state": "finished"})  # one point of four items: counted
    assert run.refused_points == 1 and run.held == {}
    assert any("1 points refused" in n for n in MlflowSink.notes(run.to_state()))
    run = held_run()
    with pytest.raises(ServerRefused, match="HTTP 400"):  # everything, the state tag too: not one point's fault
        _held.flush(Rest(refused=4), run, {"hpc.state": "finished"})
    assert len(run.held["metrics"]) == 3 and run.refused_points == 0
    run = held_run()
    _held.flush(Rest(refused=3), run)  # points only, all refused: counted, as a stream's refused batch is
    assert run.refused_points == 3 and run.held == {}


USER_RUN = """
run = wandb.init(project=args["project"], id=args["id"], settings=wandb.Settings(**args["settings"]))
run.log({"x": 1})
run.finish()
"""


def test_a_wandb_run_shows_the_user_wandb_recorded(settings, root, project):
    import _wandbwriter as wb

    wb.need_wandb()
    # wandb 0.31 offline records a user (the environment record's username) only when one is set:
    # WANDB_USERNAME or Settings(username=); it records no OS user.
    wb.write(os.path.join(root, "alice"), USER_RUN, {"project": project, "id": "withuser",
                                                     "settings": {"username": "alice"}})
    wb.write(os.path.join(root, "anon"), USER_RUN, {"project": project, "id": "nouser", "settings": {}})
    with make_runner(settings) as runner:
        assert runner.run_pass().ok
    from test_wandb import tags_of, wb_run

    sink = sink_for(settings)
    assert tags_of(sink, wb_run(sink, project, "withuser"))["mlflow.user"] == "alice"  # MLflow's "Created by"
    assert "mlflow.user" not in tags_of(sink, wb_run(sink, project, "nouser"))


@pytest.mark.parametrize("table_paths", [3, 400])
def test_the_logged_artifacts_tag_stays_within_mlflows_limit(table_paths):
    from sync_gateway.sinks.mlflow._media import MAX_TAG_CHARS, logged_artifacts

    paths = [f"media/tables/preds/{i}-1764150000123-0.json" for i in range(table_paths)]
    value, left_out = logged_artifacts(paths)
    assert len(value) <= MAX_TAG_CHARS
    listed = json.loads(value)
    assert listed == [{"path": p, "type": "table"} for p in paths[:len(listed)]]
    assert left_out == table_paths - len(listed) and (left_out > 0) == (table_paths == 400)


def test_what_is_held_is_sent_within_mlflows_batch_limits():
    from sync_gateway.sinks.mlflow import _held
    from sync_gateway.sinks.mlflow._runs import MlflowRun

    class Rest:  # records each log-batch
        batch_points = 1000

        def __init__(self):
            self.batches = []

        def log_batch_parts(self, run_id, lists):
            self.batches.append(lists)
            return []

        def log_batch(self, run_id, **lists):
            self.batches.append(lists)

    run = MlflowRun("r", "e")
    _held.hold(run, params={f"p{i}": "v" for i in range(250)}, tags={f"t{i}": "v" for i in range(150)})
    _held.hold(run, metrics=[{"key": "summary/x", "value": float(i), "timestamp": 1, "step": 0} for i in range(2500)])
    rest = Rest()
    _held.flush(rest, run, {"hpc.state": "finished"})
    for b in rest.batches:
        assert len(b.get("params", [])) <= 100 and len(b.get("tags", [])) <= 100
        assert sum(len(v) for v in b.values()) <= 1000
    sent = {k: [x for b in rest.batches for x in b.get(k, [])] for k in ("params", "tags", "metrics")}
    assert len(sent["params"]) == 250 and len(sent["tags"]) == 151 and len(sent["metrics"]) == 2500
    assert run.held == {}
    # take(): what fits beside a batch of points rides with it; the rest stays held.
    _held.hold(run, params={f"p{i}": "v" for i in range(50)}, tags={"a": "b"})
    assert set(_held.take(run, 30)) == {"tags"} and run.held["params"]  # 50 params do not fit in 30
    assert set(_held.take(run, 100)) == {"params"} and not run.held["params"]


def test_media_are_prepared_as_mlflows_log_image_and_log_table_store_them():
    PIL = pytest.importorskip("PIL.Image")
    import io

    from sync_gateway.sinks.mlflow._media import prepare

    buf = io.BytesIO()
    PIL.new("RGB", (100, 400), (1, 2, 3)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    p = prepare("media/images/a/b/7-1764150000123-0.jpeg", "run1", lambda: jpeg, len(jpeg))
    (full, full_bytes), (thumb, thumb_bytes) = p.files
    assert p.kind == "image" and full.startswith("images/a~b+step+7+timestamp+1764150000123+")
    assert full.endswith(".png") and thumb == full[:-4] + "+compressed.webp"
    assert full_bytes[:8] == b"\x89PNG\r\n\x1a\n"  # the chart reads only .png and .webp
    with PIL.open(io.BytesIO(thumb_bytes)) as im:
        assert im.format == "WEBP" and im.size == (64, 256)
    again = prepare("media/images/a/b/7-1764150000123-0.jpeg", "run1", lambda: jpeg, len(jpeg))
    assert [f for f, _ in again.files] == [full, thumb]  # the same names: a re-send replaces
    h = prepare("media/histograms/w/1-2-0.json", "run1", lambda: b'{"bins":[0,1,2],"counts":[4,5]}', 30)
    assert h.kind == "table" and json.loads(h.files[0][1]) == {
        "columns": ["bin_start", "bin_end", "count"], "data": [[0, 1, 4], [1, 2, 5]]}
    t = prepare("media/tables/t/1-2-0.json", "run1", lambda: pytest.fail("a table is streamed"), 30)
    assert t.kind == "table" and t.files == [("media/tables/t/1-2-0.json", None)]
    assert prepare("files/ckpt.pt", "run1", lambda: pytest.fail("streamed"), 10).files == [("files/ckpt.pt", None)]
