"""The W&B sink against a real W&B-protocol server (OpenWandb), at two levels: what the server stored (its own
database, through scripts/openwandb_server.py's read shim) and the wire (a recording proxy: contiguous
offsets, identical re-sends, Retry-After waited, the official client's operations and body shapes)."""
from __future__ import annotations

import base64
import json
import logging
import os
import struct
import time
import zlib
from dataclasses import replace

import _wandbsink
import pytest
from _faultproxy import FaultProxy
from _ids import wandb_name
from _runwriter import RunWriter
from _wandbsink import API_KEY, ENTITY, file_streams, graphql_ops, replay, stored, sync_once

openwandb, wb_settings = _wandbsink.openwandb, _wandbsink.wb_settings  # the fixtures

pytestmark = pytest.mark.wandb_server


def _run(root, project, run_id, rows=50, **kw):
    w = RunWriter(root, project, run_id, config={"lr": 0.1, "opt": {"beta": 0.9}}, **kw)
    for i in range(rows):
        w.log({"train/loss": 1.0 / (i + 1), "acc": i / rows}, ts_ms=w.created_ms + 1000 * (i + 1))
    return w


def _via(settings, proxy):
    return replace(settings, server_url=proxy.url)


def test_scalars_sync_exactly_once_and_incrementally(openwandb, wb_settings, root, project):
    w = _run(root, project, f"{project}-a", rows=50)
    w.summary({"train/loss": 0.02, "best": 7}, set_by_hand=["best"])
    rep, _ = sync_once(wb_settings)
    assert rep.errors == {}
    db = stored(openwandb)
    run_id = f"{project}-a"
    pts = db.metrics(wandb_name(root, run_id))
    assert len(pts) == 100, "each logged value stored once"
    loss = sorted((s, v) for k, s, v, _ in pts if k == "train/loss")
    assert loss == [(i, 1.0 / (i + 1)) for i in range(50)], "original keys and steps"
    wall = sorted(t for k, s, v, t in pts if k == "acc")
    assert wall[0] == pytest.approx((w.created_ms + 1000) / 1000.0), "original timestamps, in seconds"
    run = db.run(wandb_name(root, run_id))
    assert run["display_name"] == f"name-{run_id}" and run["tags"] == ["t1"]
    assert run["config"]["lr"] == {"value": 0.1, "desc": None}
    assert run["summary"]["best"] == 7
    # Nothing new: nothing sent. New rows: only they are sent.
    rep, sink = sync_once(wb_settings)
    assert rep.runs_unchanged == 1 and sink.api.requests == 0
    for i in range(50, 60):
        w.log({"train/loss": 1.0 / (i + 1), "acc": i / 50}, ts_ms=w.created_ms + 1000 * (i + 1))
    rep, _ = sync_once(wb_settings)
    assert rep.points_sent == 20
    assert len(db.metrics(wandb_name(root, run_id))) == 120, "the second pass sent only the new rows"
    assert db.run(wandb_name(root, run_id))["state"] == "running", "a live run stays running"


def test_wire_offsets_shapes_auth_and_final_state(openwandb, wb_settings, root, project):
    run_id = f"{project}-w"
    w = _run(root, project, run_id, rows=30, group="sweep-1")
    w.system({"gpu/0/utilization_percent": 55.0, "memory/process_rss_bytes": 2.0 ** 31,
              "cpu/system_percent": 12.5}, 0, w.created_ms + 30_000)
    w.save("ckpt.txt", b"weights")
    w.raw("output.log", b"epoch 1\nepoch 2\n")
    w.exit(0)
    with FaultProxy(openwandb.url, match="/nothing", record=True, forwarded_host=True) as proxy:
        rep, sink = sync_once(_via(wb_settings, proxy))
        assert rep.errors == {}
        recs = list(proxy.records)
    ops = graphql_ops(recs)
    names = [n for n, _ in ops]
    # its own name (run id + root id), then the name an older gateway gave it (the run id: adopted if it is
    # this run's), then the upsert that creates it
    assert names[:3] == ["RunResumeStatus", "RunResumeStatus", "UpsertBucket"], names
    assert [v["name"] for _, v in ops[:2]] == [wandb_name(root, run_id), run_id]
    meta = [v for n, v in ops if n == "UpsertBucket" and "groupName" in v][0]
    assert meta["name"] == wandb_name(root, run_id) and meta["project"] == project and meta["entity"] == ENTITY
    assert meta["groupName"] == "sweep-1" and meta["jobType"] == "train" and meta["tags"] == ["t1"]
    config = json.loads([v for n, v in ops if n == "UpsertBucket" and "config" in v][0]["config"])
    assert config["opt"] == {"value": {"beta": 0.9}, "desc": None}, "config: a JSON string of {key: {value}}"
    # HTTP Basic, user api, to the server; the upload URL gets no credentials at all.
    assert sum(r.method == "PUT" for r in recs) >= 2, "ckpt.txt and the hpc/ files went through the proxy"
    for r in recs:
        auth = r.headers.get("Authorization")
        if r.method == "PUT":
            assert auth is None, "an upload carries no API key"
        else:
            assert auth == "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()
    history = replay(recs, wandb_name(root, run_id), "wandb-history.jsonl")
    assert len(history) == 30
    first = json.loads(history[0])
    assert set(first) == {"train/loss", "acc", "_step", "_timestamp", "_runtime"}
    assert first["_step"] == 0 and first["_runtime"] == pytest.approx(1.0)
    events = [json.loads(x) for x in replay(recs, wandb_name(root, run_id), "wandb-events.jsonl")]
    assert events[0]["system.gpu.0.gpu"] == 55.0 and events[0]["system.proc.memory.rssMB"] == 2048.0
    assert events[0]["_wandb"] is True
    out = replay(recs, wandb_name(root, run_id), "output.log")
    assert [x.split(" ", 1)[1] for x in out] == ["epoch 1", "epoch 2"]
    streams = file_streams(recs)
    final = streams[-1][1]
    assert final["complete"] is True and final["exitcode"] == 0 and "ckpt.txt" in final["uploaded"]
    assert stored(openwandb).file(ENTITY, project, wandb_name(root, run_id), "ckpt.txt") == b"weights"
    # few requests: all 30 rows in one file_stream request
    assert sum(1 for _, b in streams if "wandb-history.jsonl" in b.get("files", {})) == 1


def test_killed_run_does_not_stay_running(openwandb, wb_settings, root, project):
    run_id = f"{project}-k"
    w = _run(root, project, run_id, rows=3)
    w.exit(137, reason="killed")
    with FaultProxy(openwandb.url, match="/nothing", record=True, forwarded_host=True) as proxy:
        sync_once(_via(wb_settings, proxy))
        final = file_streams(proxy.records)[-1][1]
    assert final["complete"] is True and final["exitcode"] != 0, "W&B shows it as failed, not running"
    assert stored(openwandb).run(wandb_name(root, run_id))["state"] != "running"


def test_lost_answer_resends_the_same_offsets_and_content(openwandb, wb_settings, root, project):
    run_id = f"{project}-l"
    _run(root, project, run_id, rows=40)
    with FaultProxy(openwandb.url, match="/file_stream", body_match=b"wandb-history", lose_first=1,
                    record=True) as proxy:
        rep, _ = sync_once(_via(wb_settings, proxy))
        assert rep.errors == {}, rep.errors
        recs = list(proxy.records)
    sent = [(r, b) for r, b in file_streams(recs) if "wandb-history.jsonl" in b["files"]]
    assert sent[0][0].status is None and sent[1][0].status == 200
    assert sent[0][0].body == sent[1][0].body, "the re-send is byte for byte the lost request"
    assert len(replay(recs, wandb_name(root, run_id), "wandb-history.jsonl")) == 40
    # OpenWandb ignores offsets: it shows the re-send as a duplicate (W&B places lines by offset).
    assert len(stored(openwandb).metrics(wandb_name(root, run_id))) == 160


def test_429_retry_after_is_waited_and_the_body_resent_identically(openwandb, wb_settings, root, project):
    run_id = f"{project}-r"
    _run(root, project, run_id, rows=10)
    with FaultProxy(openwandb.url, fail_first=1, status=429, retry_after="2", match="/file_stream",
                    record=True) as proxy:
        rep, _ = sync_once(_via(wb_settings, proxy))
        assert rep.errors == {}
        sent = file_streams(proxy.records)
    assert sent[0][0].status == 429 and sent[1][0].status == 200
    assert sent[1][0].t - sent[0][0].t >= 2.0, "Retry-After: 2 waited out"
    assert sent[0][0].body == sent[1][0].body


def test_server_errors_then_the_next_pass_resumes_at_the_acknowledged_offset(openwandb, wb_settings, root,
                                                                                project):
    run_id = f"{project}-5"
    w = _run(root, project, run_id, rows=10)
    rep, _ = sync_once(wb_settings)
    for i in range(10, 20):
        w.log({"train/loss": 1.0 / (i + 1), "acc": 0.5})
    with FaultProxy(openwandb.url, fail_first=10, status=503, match="/file_stream", record=True) as proxy:
        rep, _ = sync_once(_via(wb_settings, proxy))
        assert rep.errors, "503 beyond the retries: the pass reports it"
        failed = [b for _, b in file_streams(proxy.records)]
    assert {b["files"]["wandb-history.jsonl"]["offset"] for b in failed if "wandb-history.jsonl" in b["files"]} \
        == {10}
    with FaultProxy(openwandb.url, match="/nothing", record=True, forwarded_host=True) as proxy:
        rep, _ = sync_once(_via(wb_settings, proxy))
        assert rep.errors == {}
        hist = [b["files"]["wandb-history.jsonl"] for _, b in file_streams(proxy.records)
                if "wandb-history.jsonl" in b["files"]]
    assert hist[0]["offset"] == 10 and len(hist[0]["content"]) == 10
    assert len(stored(openwandb).metrics(wandb_name(root, run_id))) == 40


def test_resumed_fragments_are_one_run_with_steps_continuing(openwandb, wb_settings, root, project):
    run_id = f"{project}-q"
    w = _run(root, project, run_id, rows=5)
    w.exit(143, reason="preempted")
    sync_once(wb_settings)
    w.resume()
    for i in range(5, 9):
        w.log({"train/loss": 1.0 / (i + 1), "acc": 0.1})
    w.exit(0)
    with FaultProxy(openwandb.url, match="/nothing", record=True, forwarded_host=True) as proxy:
        sync_once(_via(wb_settings, proxy))
        hist = [b["files"]["wandb-history.jsonl"] for _, b in file_streams(proxy.records)
                if "wandb-history.jsonl" in b["files"]]
    assert hist[0]["offset"] == 5
    db = stored(openwandb)
    assert db.runs_in(project) == [wandb_name(root, run_id)]
    assert sorted({s for k, s, _, _ in db.metrics(wandb_name(root, run_id))}) == list(range(9))
    assert db.run(wandb_name(root, run_id))["state"] == "finished"


def _png(w: int, h: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x00\x00\x00" * w for _ in range(h))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_media_in_wandb_layout(openwandb, wb_settings, root, project):
    run_id = f"{project}-m"
    w = _run(root, project, run_id, rows=3, version="1.2")
    png, table = _png(4, 3), json.dumps({"columns": ["a", "b"], "data": [[1, 2], [3, 4], [5, 6]]}).encode()
    w.raw("media.bin", png + table)
    w._append("media.jsonl", {"seq": 0, "step": 2, "ts_ms": w.created_ms + 3000, "values": {
        "key": "eval/sample", "kind": "image", "path": f"media/images/eval/sample/2-{w.created_ms + 3000}-0.png",
        "offset": 0, "length": len(png), "format": "png", "width": 4, "height": 3}})
    w._append("media.jsonl", {"seq": 1, "step": 2, "ts_ms": w.created_ms + 3000, "values": {
        "key": "preds", "kind": "table", "path": f"media/tables/preds/2-{w.created_ms + 3000}-0.json",
        "offset": len(png), "length": len(table), "format": "json"}})
    with FaultProxy(openwandb.url, match="/nothing", record=True, forwarded_host=True) as proxy:
        rep, _ = sync_once(_via(wb_settings, proxy))
        assert rep.errors == {}
        hist = [json.loads(x) for x in replay(proxy.records, wandb_name(root, run_id), "wandb-history.jsonl")]
    img = [h["eval/sample"] for h in hist if "eval/sample" in h][0]
    assert img["_type"] == "image-file" and img["path"] == "media/images/eval/sample_2_0.png"
    assert (img["width"], img["height"], img["size"], img["format"]) == (4, 3, len(png), "png")
    tab = [h["preds"] for h in hist if "preds" in h][0]
    assert tab["_type"] == "table-file" and (tab["ncols"], tab["nrows"]) == (2, 3)
    assert stored(openwandb).file(ENTITY, project, wandb_name(root, run_id), img["path"]) == png
    assert stored(openwandb).file(ENTITY, project, wandb_name(root, run_id), tab["path"]) == table


def test_api_key_never_in_logs_state_or_errors(openwandb, wb_settings, root, project, caplog, tmp_path):
    _run(root, project, f"{project}-s", rows=3)
    caplog.set_level(logging.DEBUG)
    with FaultProxy(openwandb.url, match="/graphql", echo_auth=True) as proxy:
        rep, _ = sync_once(_via(wb_settings, proxy))
    assert rep.errors, "the proxy refused every GraphQL request"
    token = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    shown = caplog.text + json.dumps(rep.errors)
    for root_dir, _, files in os.walk(wb_settings.state_path):
        for name in files:
            with open(os.path.join(root_dir, name), "rb") as f:
                shown += f.read().decode("utf-8", "replace")
    assert API_KEY not in shown and token not in shown


def test_doctor_checks_url_key_and_entity(openwandb, wb_settings):
    from sync_gateway.sinks import make_sink

    lines = []
    make_sink(wb_settings, environ={"WANDB_API_KEY": API_KEY}).doctor(lambda ok, n, d: lines.append((ok, n, d)))
    assert [(ok, n) for ok, n, _ in lines] == [(True, "server"), (True, "auth"), (True, "entity")], lines
    lines.clear()
    bad = replace(wb_settings, server_options={**wb_settings.server_options, "entity": "nobody-here"})
    make_sink(bad, environ={"WANDB_API_KEY": API_KEY}).doctor(lambda ok, n, d: lines.append((ok, n, d)))
    assert lines[-1][:2] == (False, "entity") and "nobody-here" in lines[-1][2]


def test_rate_limit_keeps_a_run_under_its_requests_per_second(openwandb, wb_settings, root, project):
    run_id = f"{project}-t"
    w = _run(root, project, run_id, rows=3)
    w.summary({"acc": 1.0})
    w.exit(0)
    slow = replace(wb_settings, server_options={**wb_settings.server_options, "run_requests_per_s": 2.0})
    with FaultProxy(openwandb.url, match="/nothing", record=True, forwarded_host=True) as proxy:
        t0 = time.monotonic()
        sync_once(_via(slow, proxy))
        times = [r.t for r, _ in file_streams(proxy.records)]
    assert len(times) >= 3 and time.monotonic() - t0 >= 0.5 * (len(times) - 1)
    assert all(b - a >= 0.45 for a, b in zip(times, times[1:])), "at most 2 file_stream requests/s per run"
