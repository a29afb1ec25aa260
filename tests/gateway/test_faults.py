"""Issue 11: one run's fault stays in that run, and exactly once holds for runs as well as points.

Every scenario runs against the real MLflow server (through the fault proxy where the network misbehaves)
and checks: nothing lost, no point stored twice, one server run per hpc run, and no crash of the pass.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from dataclasses import replace

import pytest
from _faultproxy import FaultProxy
from _ids import key as run_key
from _runwriter import RunWriter, read_stream
from conftest import REPO, history, make_runner, run_info, server_run, sink_for, sync_once

from sync_gateway import cli
from sync_gateway.engine.state import StateStore
from sync_gateway.errors import GatewayError
from sync_gateway.records import Position, Row, RunInfo
from sync_gateway.sinks.base import RunSpec

T0 = 1_764_150_000_000


def _active_runs(sink, project, sync_id):
    eid = sink.experiment_id(project)
    res = sink._call("POST", "/runs/search", {"experiment_ids": [eid], "max_results": 100,
                                              "filter": f"tags.`hpc.run_id` = '{sync_id}'"})
    return res.get("runs") or []


def _good(root, project, run_id="good", n=50):
    w = RunWriter(root, project, run_id)
    w.log_many({"x": float(i)} for i in range(n))
    w.exit(0)
    return w


def _status_text(settings, tmp_path, capsys):
    cfg = tmp_path / "status.yaml"
    cfg.write_text(json.dumps({"roots": settings.roots, "server": {"kind": "mlflow", "url": settings.server_url},
                               "state_dir": settings.state_dir}))
    cli.main(["status", "--config", str(cfg)])
    return capsys.readouterr().out


# -- 1. one bad run stops no one ------------------------------------------------------------------------
def test_hostile_runs_are_recorded_on_themselves_and_the_others_sync(settings, root, project, tmp_path, capsys):
    w = RunWriter(root, project, "bigint")
    w.raw("history.jsonl", b'{"seq":0,"step":0,"ts_ms":1764150000000,"values":{"huge":1' + b"0" * 400
          + b',"x":1.0}}\n')
    w.raw("history.jsonl", b'{"seq":1,"step":1,"ts_ms":1764150000001,"values":{"x":2.0}}\n')
    w.exit(0)
    deep = RunWriter(root, project, "deepcfg")
    with open(deep.path("config.json"), "w") as f:
        f.write('{"a":' * 5000 + "1" + "}" * 5000)
    deep.log({"x": 1.0}, ts_ms=T0)
    deep.exit(0)
    odd = RunWriter(root, project, "oddmeta")
    odd.meta.update(tags=5, created_ms=[1], metrics=5, attempts="x", git=[1], slurm="y", name={"a": 1})
    with open(odd.path("run.json"), "w") as f:
        json.dump(odd.meta, f)
    odd.log({"x": 1.0}, ts_ms=T0)
    with open(odd.path("summary.json"), "w") as f:
        json.dump({"values": [1, 2], "set_by_hand": 3, "policies": []}, f)
    with open(odd.path("heartbeat.json"), "w") as f:
        json.dump({"ts_ms": {"a": 1}}, f)
    nested = RunWriter(root, project, "nestedrow")
    nested.raw("history.jsonl", b'{"seq":0,"step":0,"ts_ms":1,"values":{"l":' + b"[" * 900 + b"]" * 900 + b"}}\n")
    nested.raw("history.jsonl", b'{"seq":1,"step":1,"ts_ms":2,"values":{"l":' + b"[" * 5000 + b"]" * 5000 + b"}}\n")
    nested.log({"x": 3.0}, ts_ms=3)
    nested.exit(0)
    _good(root, project, "zgood")
    rep = sync_once(settings)
    assert not rep.aborted and set(rep.errors) <= set(), rep   # every hostile input is handled, not fatal
    sink = sink_for(settings)
    assert [v for _, _, v in history(sink, server_run(sink, project, "bigint"), "x")] == [1.0, 2.0]
    assert history(sink, server_run(sink, project, "bigint"), "huge") == []   # 10**400: skipped, counted
    assert len(history(sink, server_run(sink, project, "deepcfg"), "x")) == 1
    assert len(history(sink, server_run(sink, project, "oddmeta"), "x")) == 1
    assert [v for _, _, v in history(sink, server_run(sink, project, "nestedrow"), "x")] == [3.0]
    assert len(history(sink, server_run(sink, project, "zgood"), "x")) == 50
    out = _status_text(settings, tmp_path, capsys)
    assert "cannot store skipped" in out and "config not sent" in out


def test_any_exception_in_one_run_is_recorded_and_the_pass_goes_on(settings, root, project, tmp_path, capsys,
                                                                   monkeypatch):
    from sync_gateway.readers.hpc import reader as hpc

    bad = _good(root, project, "abad")
    _good(root, project, "bgood")
    real = hpc.HpcReader.info

    def explode(self):
        if self.ref.run_id == "abad":
            raise MemoryError("simulated: the reader ran out of memory")
        return real(self)

    monkeypatch.setattr(hpc.HpcReader, "info", explode)
    rep = sync_once(settings)
    kbad = run_key(root, project, "abad")
    assert set(rep.errors) == {kbad} and "MemoryError" in rep.errors[kbad]
    assert rep.runs_synced == 1 and not rep.aborted
    index = StateStore(settings.state_dir).load_index()
    assert "MemoryError" in index[run_key(root, project, "abad")].error
    assert "MemoryError" in _status_text(settings, tmp_path, capsys)
    monkeypatch.setattr(hpc.HpcReader, "info", real)
    assert sync_once(settings).ok  # fixed: the next pass syncs it
    sink = sink_for(settings)
    assert len(history(sink, server_run(sink, project, bad.dir.rsplit("/", 1)[1]), "x")) == 50


def test_values_mlflow_cannot_store_are_skipped_point_by_point(settings, root, project):
    w = RunWriter(root, project, "ranges", metrics=[{"name": "val/*", "step_metric": "epoch", "summary": None}])
    w.log({"x": 1.0}, step=0, ts_ms=T0)
    w.log({"x": 2.0}, step=10 ** 30, ts_ms=T0 + 1)        # step beyond int64: MLflow would store 0
    w.log({"x": 3.0}, step=10 ** 30 + 1, ts_ms=-5)         # negative timestamp: MLflow answers 400
    w.log({"x": 4.0, "val/a": 1.0, "epoch": "Infinity"}, step=1, ts_ms=T0 + 3)   # an infinite x-axis value
    w.log({"x": 5.0, "big": 2 ** 1100, "val/a": 2.0, "epoch": 1e300}, step=2, ts_ms=T0 + 4)  # beyond int64
    w.exit(0)
    assert sync_once(settings).ok
    sink = sink_for(settings)
    run = server_run(sink, project, "ranges")
    assert history(sink, run, "x") == [(0, T0, 1.0), (1, T0 + 3, 4.0), (2, T0 + 4, 5.0)]  # the rest is kept
    assert history(sink, run, "val/a") == [] and history(sink, run, "big") == []
    st = StateStore(settings.state_dir).load(run_key(root, project, "ranges"))
    assert st.sink["unstorable_points"] == 5  # x twice, val/a twice, big once


# -- 2. one run never blocks the others, nor itself -----------------------------------------------------
@pytest.mark.parametrize("fault", ["503", "lost answer"])
def test_retryable_errors_back_one_run_off_while_the_others_sync(settings, root, project, fault):
    for name in ("a", "c"):
        _good(root, project, name)
    sick = RunWriter(root, project, "b")
    sick.log_many({"y": float(i)} for i in range(50))  # only b's batches carry the key y
    sick.exit(0)
    now = [time.time()]
    kw = {"fail_first": 10 ** 6, "status": 503} if fault == "503" else {"lose_first": 10 ** 6}
    with FaultProxy(settings.server_url, body_match=b'"key": "y"', **kw) as proxy:
        s = replace(settings, server_url=proxy.url, retries=1)
        with make_runner(s, clock=lambda: now[0]) as runner:
            rep = runner.run_pass()
            assert set(rep.errors) == {run_key(root, project, "b")} and rep.runs_synced == 2 and not rep.aborted, rep
            # try + retry
            assert "retried by the next pass" in rep.errors[run_key(root, project, "b")] and proxy.seen == 2
            rep = runner.run_pass()  # tried again at once; the second failure in a row backs it off
            assert "failure #2 in a row: retry in 60 s" in rep.errors[run_key(root, project, "b")] and proxy.seen == 4
            rep = runner.run_pass()  # b backs off: not tried
            assert run_key(root, project, "b") in rep.backing_off and proxy.seen == 4 and not rep.errors
            now[0] += 61
            proxy.fail_left = proxy.lose_left = 0
            rep = runner.run_pass()
    assert rep.ok and rep.runs_synced == 1, rep
    sink = sink_for(settings)
    assert len(history(sink, server_run(sink, project, "b"), "y")) == 50


def test_runs_create_refused_every_time_is_sent_a_bounded_number_of_times_and_the_run_backs_off(settings, root,
                                                                                                project):
    # Sent again only while the search by tag shows nothing was created (issue 21, item 12), at most
    # `retries` more times; then the run fails for this pass and backs off like any retryable error.
    _good(root, project, "a")
    with FaultProxy(settings.server_url, fail_first=10 ** 6, status=503, match="/runs/create") as proxy:
        rep = sync_once(replace(settings, server_url=proxy.url, retries=3))
    assert proxy.failed == 1 + 3 and "retried by the next pass" in rep.errors[run_key(root, project, "a")]


def test_a_server_down_for_every_run_trips_the_breaker(settings, root, project):
    for i in range(6):
        _good(root, project, f"r{i}")
    with FaultProxy(settings.server_url, fail_first=10 ** 6, status=503, match="/api/") as proxy:
        rep = sync_once(replace(settings, server_url=proxy.url, retries=0))
    assert rep.aborted and "3 runs in a row" in rep.aborted and len(rep.errors) == 3, rep
    assert proxy.failed <= 3 * 2  # the experiment lookup and nothing more per run: no hammering


def test_a_refused_batch_is_bisected_and_only_the_refused_point_is_quarantined(settings, root, project, tmp_path,
                                                                              capsys):
    w = RunWriter(root, project, "quar")
    w.log_many({"x": float(i)} for i in range(2500))  # 3 batches; the proxy refuses any holding x=1500 for good
    w.exit(0)
    with FaultProxy(settings.server_url, fail_first=10 ** 6, status=400, body_match=b'"value": 1500.0') as proxy:
        rep = sync_once(replace(settings, server_url=proxy.url))
    assert rep.quarantined == 1 and not rep.errors and not rep.ok, rep
    assert proxy.failed <= 2 * 10 + 1   # bisecting 1000 points: about 2 log2(1000) refused requests
    sink = sink_for(settings)
    got = [v for _, _, v in history(sink, server_run(sink, project, "quar"), "x")]
    assert got == [float(i) for i in range(2500) if i != 1500]
    st = StateStore(settings.state_dir).load(run_key(root, project, "quar"))
    assert st.quarantined_total == 1 and st.quarantined[0]["points"] == 1
    start, stop = st.quarantined[0]["bytes"]   # the batch's byte range: the refused point is in it
    recs = read_stream(w.path("history.jsonl"))
    with open(w.path("history.jsonl"), "rb") as f:
        f.seek(start)
        first = json.loads(f.readline())
    assert first["seq"] == 1000 and stop > start and "HTTP 400" in st.quarantined[0]["error"]
    assert "1 of 1000 points refused for good" in st.quarantined[0]["error"]
    assert len(recs) == 2500
    assert sync_once(settings).ok  # nothing is stuck: the next pass has nothing to do
    assert "quarantined" in _status_text(settings, tmp_path, capsys)


def test_an_error_every_point_shares_costs_a_bounded_number_of_requests(settings, root, project):
    w = RunWriter(root, project, "allbad")
    w.log_many({"x": float(i)} for i in range(1000))
    w.exit(0)
    with FaultProxy(settings.server_url, fail_first=10 ** 6, status=422, body_match=b'"metrics"') as proxy:
        rep = sync_once(replace(settings, server_url=proxy.url))
    assert rep.quarantined == 1 and not rep.errors, rep
    from sync_gateway.sinks.mlflow._rest import SPLIT_REQUESTS

    assert proxy.failed <= SPLIT_REQUESTS, proxy.failed
    st = StateStore(settings.state_dir).load(run_key(root, project, "allbad"))
    assert st.quarantined[0]["points"] == 1000


def test_a_line_over_the_length_limit_is_skipped_and_the_rest_syncs(settings, root, project, monkeypatch):
    from sync_gateway.readers.hpc import reader as hpc

    monkeypatch.setattr(hpc, "MAX_LINE_BYTES", 64 << 10)  # the rule, at a size a test can write
    w = RunWriter(root, project, "longline")
    w.log({"x": 1.0}, ts_ms=T0)
    w.raw("history.jsonl", b'{"seq":1,"step":1,"ts_ms":1,"values":{"blob":"' + b"b" * (3 << 20) + b'"}}\n')
    w.seq["history.jsonl"] += 1
    w.log({"x": 3.0}, ts_ms=T0 + 2)
    w.exit(0)
    rep = sync_once(settings)
    assert rep.ok, rep
    sink = sink_for(settings)
    assert [v for _, _, v in history(sink, server_run(sink, project, "longline"), "x")] == [1.0, 3.0]


def test_a_run_deleted_on_the_server_is_respected_said_and_restorable(settings, root, project, tmp_path, capsys):
    w = RunWriter(root, project, "deleted")
    w.log_many({"x": float(i)} for i in range(10))
    w.heartbeat()
    assert sync_once(settings).ok
    sink = sink_for(settings)
    run = server_run(sink, project, "deleted")
    sink._call("POST", "/runs/delete", {"run_id": run.run_id})  # a user deletes it in the UI
    w.log_many({"x": float(i)} for i in range(10, 20))
    rep = sync_once(settings)
    assert rep.ok and "deleted on the server" in rep.notes[run_key(root, project, "deleted")], rep
    shutil.rmtree(settings.state_path)  # even after a state loss it is not re-created
    rep = sync_once(settings)
    assert rep.ok and run_key(root, project, "deleted") in rep.notes
    assert _active_runs(sink, project, run_key(root, project, "deleted")) == []
    assert "deleted on the server" in _status_text(settings, tmp_path, capsys)
    sink._call("POST", "/runs/restore", {"run_id": run.run_id})  # restored from the trash: synced again
    assert sync_once(settings).ok
    assert [v for _, _, v in history(sink, run, "x")] == [float(i) for i in range(20)]


# -- 3. one hpc run is one server run -----------------------------------------------------------------
def test_a_lost_answer_to_runs_create_does_not_create_a_second_run(settings, root, project):
    for i in range(4):
        _good(root, project, f"c{i}")
    with FaultProxy(settings.server_url, lose_first=4, match="/runs/create") as proxy:
        s = replace(settings, server_url=proxy.url, retries=4)
        for n in range(3):
            with make_runner(s, clock=lambda n=n: time.time() + 10 ** 4 * n) as runner:
                runner.run_pass()
    assert proxy.lost == 4
    sink = sink_for(settings)
    for i in range(4):
        assert len(_active_runs(sink, project, run_key(root, project, f"c{i}"))) == 1
        assert len(history(sink, server_run(sink, project, f"c{i}"), "x")) == 50


def test_two_gateways_racing_converge_on_one_run(settings, root, project):
    a, b = sink_for(settings), sink_for(settings)
    spec = RunSpec(f"{project}/race", RunInfo(project, "race", "race", T0))
    real_find = b.runs.find
    b.runs.find = lambda eid, sid: None  # b searched before a created: both create
    ra = a.open_run(spec, None)
    rb = b.open_run(spec, None)
    b.runs.find = real_find
    created = a._call("POST", "/runs/search", {"experiment_ids": [a.experiment_id(project)],
                                                "run_view_type": "ALL"})["runs"]
    assert len(created) == 2  # the race happened: both created a run (the loser is in the trash by now)
    winner = min(r["info"]["run_id"] for r in created)
    assert rb.run_id == winner  # b saw both right after creating: it converged at once, whichever won
    rows = [Row(i, T0 + i, {"x": float(i)}, Position(i + 1, i + 1)) for i in range(5)]
    for run, sink in ((ra, a), (rb, b)):
        for _, payload in sink.batches(run, "history", rows):
            try:
                sink.send(run, payload)
            except GatewayError:  # a's run may already be marked as the duplicate
                pass
    again = a.open_run(spec, ra.to_state())  # a's next pass checks (its run is not settled yet)
    assert again.run_id == winner and (ra.run_id == winner or again.replaced)
    assert len(_active_runs(a, project, f"{project}/race")) == 1


def test_two_gateways_with_their_own_state_dirs_on_24_runs(settings, root, project, tmp_path):
    n = 24
    writers = [RunWriter(root, project, f"g{i:02d}") for i in range(n)]
    for w in writers:
        w.log_many({"x": float(i)} for i in range(300))
        w.exit(0)
    sa = replace(settings, state_dir=str(tmp_path / "sa"))
    sb = replace(settings, state_dir=str(tmp_path / "sb"))
    later = [time.time() + 3600]  # the second round runs "an hour later" by the gateways' clocks

    def gateway(s, rounds):
        for r in range(rounds):
            with make_runner(s, clock=(lambda: later[0]) if r else time.time) as runner:
                runner.run_pass()

    threads = [threading.Thread(target=gateway, args=(s, 1)) for s in (sa, sb)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in (sa, sb):  # a later pass of each: any run they both created converges
        with make_runner(s, clock=lambda: later[0]) as runner:
            assert not runner.run_pass().errors
    sink = sink_for(settings)
    for i in range(n):
        runs = _active_runs(sink, project, run_key(root, project, f"g{i:02d}"))
        assert len(runs) == 1, f"g{i:02d}: {len(runs)} active runs"
        assert history(sink, server_run(sink, project, f"g{i:02d}"), "x") == \
            [(j, T0 + j, float(j)) for j in range(300)]


def test_after_a_state_loss_copies_with_equal_start_times_converge_on_one(settings, root, project):
    w = RunWriter(root, project, "twins")
    w.log_many({"x": float(i)} for i in range(100))
    w.exit(0)
    sink = sink_for(settings)
    eid = sink.experiment_id(project)
    ids = [sink._call("POST", "/runs/create", {"experiment_id": eid, "start_time": w.created_ms, "tags": [
        {"key": "hpc.run_id", "value": run_key(root, project, "twins")}]})["run"]["info"]["run_id"] for _ in range(3)]
    assert sync_once(settings).ok
    runs = _active_runs(sink, project, run_key(root, project, "twins"))
    assert [r["info"]["run_id"] for r in runs] == [min(ids)]
    assert len(history(sink, server_run(sink, project, "twins"), "x")) == 100
    for rid in set(ids) - {min(ids)}:
        info = run_info(sink, type(server_run(sink, project, "twins"))(rid, eid))
        assert info["info"]["lifecycle_stage"] == "deleted"
        assert {t["key"]: t["value"] for t in info["data"]["tags"]}["hpc.duplicate_of"] == min(ids)


# -- 4. a run restarted from scratch ------------------------------------------------------------------
def test_a_run_recreated_with_a_longer_history_loses_nothing_and_mixes_nothing(settings, root, project,
                                                                              tmp_path, capsys):
    w = RunWriter(root, project, "again")
    w.log_many({"x": float(i)} for i in range(1000))
    w.exit(0)
    assert sync_once(settings).ok
    sink = sink_for(settings)
    old = server_run(sink, project, "again")
    shutil.rmtree(w.dir)
    w2 = RunWriter(root, project, "again")
    w2.log_many(({"x": -float(i)} for i in range(3000)), ts0_ms=T0 + 777)  # longer: offsets still fit
    w2.exit(0)
    rep = sync_once(settings)
    assert rep.ok, rep
    new = server_run(sink, project, "again")
    assert new.run_id != old.run_id
    assert [v for _, _, v in history(sink, new, "x")] == [-float(i) for i in range(3000)]
    assert [v for _, _, v in history(sink, old, "x")] == [float(i) for i in range(1000)]
    assert len(_active_runs(sink, project, run_key(root, project, "again"))) == 1
    assert "rewritten" in _status_text(settings, tmp_path, capsys)


# -- 5. memory stays bounded whatever the artifact size ------------------------------------------------
@pytest.mark.faults
def test_a_large_artifact_is_streamed_with_bounded_memory(settings, root, project, tmp_path):
    import subprocess
    import sys

    size = 300 * 10 ** 6
    w = RunWriter(root, project, "bigfile")
    path = os.path.join(w.dir, "files", "ckpt.bin")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.truncate(size)       # sparse: 300 MB read back as zeros
        f.seek(size - 4)
        f.write(b"tail")
    w.save("small.txt", b"small")
    w.exit(0)
    cfg = tmp_path / "g.yaml"
    cfg.write_text(json.dumps({"roots": [root], "server": {"kind": "mlflow", "url": settings.server_url},
                               "state_dir": settings.state_dir, "max_file_bytes": 400 * 10 ** 6}))
    # A wrapper process whose only child is the gateway: its RUSAGE_CHILDREN peak is the gateway's.
    wrapper = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "sync_gateway.cli", "-q", "sync",
                           "--once", "--config", str(cfg)], env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO,
                          capture_output=True, text=True)
    rc, peak_kb = (int(x) for x in done.stdout.split()[-2:])
    peak_mb = peak_kb / 1024
    assert rc == 0, done.stderr[-2000:]
    print(f"\npeak RSS of sync-gateway sync --once uploading a {size // 10 ** 6} MB file: {peak_mb:.0f} MB")
    assert peak_mb <= 100, f"peak RSS {peak_mb:.0f} MB while uploading a 300 MB file"
    sink = sink_for(settings)
    run = server_run(sink, project, "bigfile")
    rel = run.artifact_uri[len("mlflow-artifacts:/"):].lstrip("/")
    r = sink.http.request("GET", f"/api/2.0/mlflow-artifacts/artifacts/{rel}/files/ckpt.bin", stream=True)
    n, tail = 0, b""
    for part in r.iter_content(1 << 20):
        n += len(part)
        tail = (tail + part)[-4:]
    assert n == size and tail == b"tail"


def test_a_file_over_the_size_limit_is_skipped_with_a_message(settings, root, project, caplog, tmp_path, capsys):
    w = RunWriter(root, project, "limit")
    w.save("big.bin", b"x" * 5000)
    w.save("ok.txt", b"fine")
    w.exit(0)
    with caplog.at_level(logging.WARNING):
        assert sync_once(replace(settings, max_file_bytes=4000)).ok
    msgs = [r.getMessage() for r in caplog.records if "over max_file_bytes" in r.getMessage()]
    assert len(msgs) == 1 and "files/big.bin" in msgs[0] and "raise max_file_bytes" in msgs[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert sync_once(replace(settings, max_file_bytes=4000)).ok
    assert not [r for r in caplog.records if "over max_file_bytes" in r.getMessage()]  # said once
    assert "over max_file_bytes" in _status_text(settings, tmp_path, capsys)


# -- 6. a total deadline per request ------------------------------------------------------------------
class _Trickle:
    """Accepts a connection, reads the request, then sends an answer one byte at a time, 5 per second
    (every read is well under the read timeout), for at most 60 s; records whether the client hung up."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.client_hung_up = threading.Event()
        self.finished_trickle = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        conn.recv(65536)
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 300\r\n\r\n" + b" " * 300
        try:
            for i in range(len(answer)):
                conn.sendall(answer[i:i + 1])
                time.sleep(0.2)
            self.finished_trickle.set()
        except OSError:
            self.client_hung_up.set()
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def test_a_trickling_server_is_cut_off_by_the_request_deadline(settings, root, project):
    _good(root, project, "slow")
    srv = _Trickle()
    try:
        s = replace(settings, server_url=srv.url, timeout_s=5.0, request_deadline_s=2.0, retries=0)
        rep = sync_once(s)
    finally:
        srv.close()
    err = rep.errors[run_key(root, project, "slow")]
    assert "deadline" in err and "request_deadline_s" in err, rep
    assert not srv.finished_trickle.is_set()


# -- 7. liveness judged by the gateway's own clock -------------------------------------------------------
def test_a_heartbeat_from_the_future_does_not_keep_a_dead_run_running(settings, root, project):
    now = [time.time()]
    w = RunWriter(root, project, "future")
    w.heartbeat(int(now[0] * 1000) + 10 * 365 * 86400 * 1000)  # a node clock 10 years ahead
    sink = sink_for(settings)
    with make_runner(settings, clock=lambda: now[0]) as runner:
        runner.run_pass()
        assert run_info(sink, server_run(sink, project, "future"))["info"]["status"] == "RUNNING"
        now[0] += settings.stale_after_s + 1  # nothing changed since, by the gateway's clock
        runner.run_pass()
    assert run_info(sink, server_run(sink, project, "future"))["info"]["status"] == "KILLED"


def test_a_node_clock_behind_does_not_kill_a_live_run(settings, root, project):
    now = [time.time()]
    w = RunWriter(root, project, "behind")
    sink = sink_for(settings)
    with make_runner(settings, clock=lambda: now[0]) as runner:
        for _ in range(4):
            w.log({"x": 1.0}, ts_ms=int(now[0] * 1000) - 2 * settings.stale_after_s * 1000)
            w.heartbeat(int(now[0] * 1000) - 2 * settings.stale_after_s * 1000)  # node clock far behind
            runner.run_pass()
            assert run_info(sink, server_run(sink, project, "behind"))["info"]["status"] == "RUNNING"
            now[0] += settings.stale_after_s / 2


# -- 8. secrets never leave the gateway ------------------------------------------------------------------
def test_credentials_in_the_url_and_echoed_headers_are_redacted_everywhere(settings, root, project, tmp_path,
                                                                           capfd):
    secret = "Pa55-" + os.urandom(6).hex()
    _good(root, project, "sec")
    with FaultProxy(settings.server_url, match="/runs/log-batch", echo_auth=True) as proxy:
        url = proxy.url.replace("http://", f"http://alice:{secret}@")
        cfg = tmp_path / "g.yaml"
        cfg.write_text(json.dumps({"roots": [root], "server": {"kind": "mlflow", "url": url},
                                   "state_dir": settings.state_dir, "retries": 0}))
        code = cli.main(["sync", "--once", "--config", str(cfg)])
        assert code == 1  # the server refused the run's tags, and that was said
        cli.main(["status", "--config", str(cfg)])
        cli.main(["-v", "sync", "--once", "--config", str(cfg)])
        cli.main(["doctor", "--config", str(cfg)])
    assert proxy.seen >= 1
    out, err = capfd.readouterr()
    assert "Authorization: Basic ***" in out + err  # the echo is shown, redacted
    import base64

    b64 = base64.b64encode(f"alice:{secret}".encode()).decode()
    for text in (out, err):
        assert secret not in text and b64 not in text
    for dirpath, _, files in os.walk(settings.state_dir):
        for name in files:
            data = open(os.path.join(dirpath, name), "rb").read()
            assert secret.encode() not in data and b64.encode() not in data, name


def test_the_daemon_goes_on_past_hostile_runs_and_keeps_passing(settings, root, project, tmp_path):
    import signal
    import subprocess
    import sys

    bad = RunWriter(root, project, "abad")
    bad.raw("history.jsonl", b'{"seq":0,"step":0,"ts_ms":1,"values":{"x":1' + b"0" * 400 + b"}}\n")
    with open(bad.path("config.json"), "w") as f:
        f.write('{"a":' * 5000 + "1" + "}" * 5000)
    with open(bad.path("run.json"), "w") as f:
        json.dump(dict(bad.meta, tags=5, created_ms=[1], metrics={"a": 1}), f)
    w = RunWriter(root, project, "zlater")
    w.log({"x": 1.0}, ts_ms=T0)
    cfg = tmp_path / "d.yaml"
    cfg.write_text(json.dumps({"roots": [root], "server": {"kind": "mlflow", "url": settings.server_url},
                               "state_dir": settings.state_dir}))
    proc = subprocess.Popen([sys.executable, "-m", "sync_gateway.cli", "-q", "daemon", "--interval-s", "0.5",
                             "--config", str(cfg)], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            stderr=subprocess.PIPE)
    sink = sink_for(settings)
    try:
        got, more = [], False
        for _ in range(600):  # bounded polling: the later run's points arrive, pass after pass
            if proc.poll() is not None:
                break
            eid = sink.experiment_id(project)
            run = sink.find(eid, run_key(root, project, "zlater"))
            got = history(sink, run, "x") if run else []
            if len(got) == 1 and not more:
                w.log({"x": 2.0}, ts_ms=T0 + 1)  # more data: a later pass must pick it up too
                more = True
            if len(got) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the daemon exited"
        assert [v for _, _, v in got] == [1.0, 2.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err
