"""Bad input never stops the gateway: corrupt lines, torn and shrunk files, unknown versions, links out
of the root, 10,000 run directories, and two gateways on one root."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace

import pytest
from _ids import key as run_key
from _runwriter import RunWriter
from conftest import history, make_runner, server_run, sink_for, sync_once

from sync_gateway.engine.runner import Runner
from sync_gateway.errors import FormatError
from sync_gateway.readers.hpc._format import parse_run_json, parse_stream
from sync_gateway.settings import Settings
from sync_gateway.sinks.memory import MemorySink


def test_parse_stream_complete_lines_nonfinite_and_corrupt():
    data = (b'{"seq":0,"step":0,"ts_ms":5,"values":{"a":"NaN","b":"-Infinity","c":"text"}}\n'
            b'not json\n'
            b'{"seq":1,"step":1,"ts_ms":6}\n'
            b'{"seq":2,"step":1,"ts_ms":7,"values":{"a":1}}\n'
            b'{"seq":3,"step":2,"ts_ms":8,"val')
    c = parse_stream(data, 100, 0)
    assert [r.seq for r in c.records] == [0, 2]
    assert c.records[0].values["a"] != c.records[0].values["a"]  # NaN
    assert c.records[0].values["b"] == float("-inf") and c.records[0].values["c"] == "text"
    assert c.consumed == data.rfind(b"\n") + 1 and c.records[-1].end_offset == 100 + c.consumed
    assert [why.split(" (")[0] for _, why in c.corrupt] == ["not valid JSON", "missing field(s) values"]
    third = 100 + len(b"".join(data.split(b"\n")[i] + b"\n" for i in range(3)))
    assert c.seq_problems == [f"seq 2 at byte {third}, expected 1"]


def test_unknown_major_version_refused_with_both_versions():
    with pytest.raises(FormatError, match=r"2\.0 .*1\.x"):
        parse_run_json(b'{"format_version": "2.0", "id": "a", "project": "p"}')
    assert parse_run_json(b'{"format_version": "1.7", "id": "a", "project": "p", "new": 1}')["new"] == 1


def test_corrupt_lines_skipped_reported_rest_synced(settings, root, project, caplog):
    w = RunWriter(root, project, "corrupt")
    w.log({"x": 1.0}, ts_ms=1)
    w.raw("history.jsonl", b'{"seq": 1, garbage\n\n')
    w.seq["history.jsonl"] += 1
    w.log({"x": 3.0}, ts_ms=3)
    w.raw("history.jsonl", b"\xff\xfe not utf8\n")
    w.exit(0)
    with caplog.at_level(logging.WARNING):
        rep = sync_once(settings)
    assert rep.ok, rep
    sink = sink_for(settings)
    assert [v for _, _, v in history(sink, server_run(sink, project, "corrupt"), "x")] == [1.0, 3.0]
    warnings = [r.getMessage() for r in caplog.records if "corrupt line" in r.getMessage()]
    assert len(warnings) == 3, warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert sync_once(settings).ok
    assert not [r for r in caplog.records if "corrupt line" in r.getMessage()]  # reported once


def test_unknown_version_and_broken_run_json_do_not_stop_others(settings, root, project):
    RunWriter(root, project, "future", version="2.0").exit(0)
    bad = RunWriter(root, project, "broken")
    with open(bad.path("run.json"), "w") as f:
        f.write('{"format_version": "1.0", "id": ')  # cut short by hand: not what a writer leaves
    good = RunWriter(root, project, "good")
    good.log({"x": 1.0})
    good.exit(0)
    rep = sync_once(settings)
    assert set(rep.errors) == {run_key(root, project, "future"), run_key(root, project, "broken")}
    kf = run_key(root, project, "future")
    assert "2.0" in rep.errors[kf] and "1.x" in rep.errors[kf]
    assert "not valid JSON" in rep.errors[run_key(root, project, "broken")]
    assert rep.runs_synced == 1 and not rep.ok
    sink = sink_for(settings)
    assert len(history(sink, server_run(sink, project, "good"), "x")) == 1


def test_a_stream_rewritten_shorter_goes_to_a_new_server_run_old_one_kept(settings, root, project, caplog):
    w = RunWriter(root, project, "shrunk")
    w.log_many({"x": float(i)} for i in range(20))
    w.heartbeat()
    runner = make_runner(settings)
    runner.run_pass()
    sink = sink_for(settings)
    old = server_run(sink, project, "shrunk")
    with open(w.path("history.jsonl"), "rb+") as f:
        lines = f.read().split(b"\n")
        f.seek(0)
        f.truncate()
        f.write(b"\n".join(lines[:10]) + b"\n")
    with caplog.at_level(logging.WARNING):
        assert runner.run_pass().ok
    runner.close()
    assert any("was rewritten" in r.getMessage() for r in caplog.records)
    new = server_run(sink, project, "shrunk")
    assert new.run_id != old.run_id
    assert len(history(sink, new, "x")) == 10 and len(history(sink, old, "x")) == 20  # not merged


def test_links_out_of_the_root_are_never_followed(settings, root, project, tmp_path, caplog):
    outside = tmp_path / "outside"
    secret_run = RunWriter(str(outside), project, "secret")
    secret_run.log({"stolen": 1.0})
    (tmp_path / "secret.txt").write_bytes(b"top secret")
    # 1) a run directory that is a link out of the root; 2) a project directory that is one;
    os.makedirs(os.path.join(root, project), exist_ok=True)
    os.symlink(secret_run.dir, os.path.join(root, project, "linked"))
    os.symlink(os.path.join(str(outside), project), os.path.join(root, "linkedproj"))
    # 3) files inside a normal run that are links out of the root (a stream and a saved file).
    w = RunWriter(root, project, "normal")
    w.save("ok.txt", b"fine")
    os.symlink(str(tmp_path / "secret.txt"), os.path.join(w.dir, "files", "leak.txt"))
    os.symlink(secret_run.path("history.jsonl"), w.path("history.jsonl"))
    # 4) a link that stays inside the root is fine.
    os.symlink(os.path.join(w.dir, "files", "ok.txt"), os.path.join(w.dir, "files", "alias.txt"))
    w.exit(0)
    runner = make_runner(settings)
    with caplog.at_level(logging.WARNING):
        rep = runner.run_pass()
    runner.close()
    assert rep.ok and rep.runs_seen == 1, rep
    escapes = runner.sources[0].escapes
    assert os.path.join(root, project, "linked") in escapes
    assert os.path.join(root, "linkedproj") in escapes
    assert os.path.join(w.dir, "files", "leak.txt") in escapes
    assert w.path("history.jsonl") in escapes
    assert any("pointing out of the root" in r.getMessage() for r in caplog.records)
    sink = sink_for(settings)
    run = server_run(sink, project, "normal")
    assert history(sink, run, "stolen") == []
    rel = run.artifact_uri[len("mlflow-artifacts:/"):].lstrip("/")
    r = sink.http.request("GET", f"/api/2.0/mlflow-artifacts/artifacts/{rel}/files/leak.txt")
    assert r.status_code != 200 or r.content != b"top secret"
    assert sink.http.request("GET", f"/api/2.0/mlflow-artifacts/artifacts/{rel}/files/alias.txt").content == b"fine"
    assert sink.find(sink.experiment_id(project), run_key(root, project, "linked")) is None


@pytest.mark.slow  # builds 10,000 run directories
def test_ten_thousand_run_dirs_second_pass_touches_nothing(tmp_path):
    root = tmp_path / "runs"
    n = int(os.environ.get("HPCSYNC_TEST_RUNS", "10000"))
    meta = {"format_version": "1.0", "project": "many", "attempt": 1, "created_ms": 1}
    for i in range(n):
        d = root / f"proj{i % 10}" / f"run{i:05d}"
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps(dict(meta, id=f"run{i:05d}", project=f"proj{i % 10}")))
        (d / "exit.json").write_text('{"attempt": 1, "exit_code": 0, "reason": "finished", "end_ms": 2}')
    settings = Settings(roots=[str(root)], server_url="http://unused.invalid", state_dir=str(tmp_path / "st"))
    sink = MemorySink()
    with Runner(settings, sink=sink) as runner:
        rep = runner.run_pass()
        assert rep.ok and rep.runs_synced == n
        assert sink.calls["find_or_create"] == n and sink.calls["set_state"] == n
        sink.calls.clear()
        rep = runner.run_pass()
    assert rep.ok and rep.runs_unchanged == n and rep.runs_synced == 0
    assert sum(sink.calls.values()) == 0  # not one request for unchanged runs
    # A third gateway with the same state dir (a cron run) sees the same: state is durable on disk.
    with Runner(settings, sink=MemorySink()) as runner:
        assert runner.run_pass().runs_unchanged == n


def test_two_gateways_on_one_root_do_not_both_sync(tmp_path):
    root = tmp_path / "runs"
    w = RunWriter(str(root), "p", "r")
    w.log({"x": 1.0})
    w.exit(0)
    lease_dir = str(tmp_path / "shared-leases")
    a_set = Settings(roots=[str(root)], server_url="http://unused.invalid", state_dir=str(tmp_path / "a"),
                     lease_dir=lease_dir)
    b_set = replace(a_set, state_dir=str(tmp_path / "b"))
    a_sink, b_sink = MemorySink(), MemorySink()
    a = Runner(a_set, sink=a_sink, lease_owner="gateway-a")
    b = Runner(b_set, sink=b_sink, lease_owner="gateway-b")
    rep_a = a.run_pass()
    rep_b = b.run_pass()
    assert rep_a.ok and rep_a.runs_synced == 1
    assert not rep_b.ok and "gateway-a" in rep_b.roots_skipped[str(root)] and not b_sink.calls
    a.close()  # releases the lease
    assert b.run_pass().ok and b_sink.calls["find_or_create"] == 1
    b.close()


def test_expired_lease_is_taken_over(tmp_path):
    from sync_gateway.engine.lease import Lease

    now = [1000.0]
    a = Lease(str(tmp_path), "/r", ttl_s=60, owner="a", clock=lambda: now[0])
    b = Lease(str(tmp_path), "/r", ttl_s=60, owner="b", clock=lambda: now[0])
    assert a.acquire() and not b.acquire()
    now[0] += 59
    assert not b.acquire()
    now[0] += 2
    assert b.acquire() and b.read()["owner"] == "b"
    a.renew()
    assert not a.held and b.read()["owner"] == "b"  # a does not steal it back by renewing
    assert os.listdir(str(tmp_path)) == [os.path.basename(b.path)]  # no temp files left behind


def test_a_line_longer_than_the_read_chunk_is_read_whole(tmp_path):
    root = tmp_path / "runs"
    w = RunWriter(str(root), "p", "long")
    w.log({"x": 1.0, "blob": "b" * (3 << 20)}, ts_ms=1)  # 3 MiB line: larger than one read
    w.log({"x": 2.0}, ts_ms=2)
    w.exit(0)
    sink = MemorySink()
    settings = Settings(roots=[str(root)], server_url="http://unused.invalid", state_dir=str(tmp_path / "s"))
    with Runner(settings, sink=sink) as r:
        rep = r.run_pass()
    assert rep.ok, rep
    points = sink.stored(run_key(str(root), "p", "long")).points
    assert sorted(p for p in points if p[1] == "x") == [("history", "x", 0, 1, 1.0), ("history", "x", 1, 2, 2.0)]
    assert ("history", "blob", 0, 1, "b" * (3 << 20)) in points


def test_a_garbage_lease_file_expires_instead_of_blocking_forever(tmp_path):
    from sync_gateway.engine.lease import Lease

    now = [os.stat(str(tmp_path)).st_mtime]
    a = Lease(str(tmp_path), "/r", ttl_s=60, owner="a", clock=lambda: now[0])
    with open(a.path, "w") as f:
        f.write("{not json")
    assert not a.acquire()
    now[0] += 120
    assert a.acquire() and a.read()["owner"] == "a"
