"""Issue 16: ``workers: N`` syncs up to N runs at once. Each run stays in order with its cursors moving
only after acks; a slow run holds no other; the breaker, SIGTERM and a lost lease stop runs after their
current batch; the lease is renewed while a long run syncs; workers 1 and 4 leave the same server content.

The engine tests use the reference MemorySink (fast, no server); the last ones use the real MLflow server.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace
from typing import Any, Dict, List, Optional

import pytest
from _ids import key as run_key
from _runwriter import RunWriter, read_stream
from conftest import history, run_info, server_run, sink_for, sync_once

from sync_gateway.engine.gateway import BREAKER_RUNS
from sync_gateway.engine.lease import Lease
from sync_gateway.engine.runner import Runner
from sync_gateway.engine.state import StateStore
from sync_gateway.errors import ServerUnavailable
from sync_gateway.settings import Settings
from sync_gateway.sinks.base import SinkRun
from sync_gateway.sinks.memory import MemorySink


def _settings(tmp_path, root: str, **kw: Any) -> Settings:
    return Settings(roots=[root], server_url="http://unused.invalid", state_dir=str(tmp_path / "state"), **kw)


def _runs(root: str, project: str, names: List[str], rows: int = 20) -> Dict[str, RunWriter]:
    out = {}
    for name in names:
        w = RunWriter(root, project, name, config={"lr": 0.1, "name": name})
        w.log_many({"x": float(i), "y": i * 2.0} for i in range(rows))
        w.exit(0)
        out[name] = w
    return out


def _points_on_disk(root: str, project: str, name: str):
    return {("history", k, r["step"], r["ts_ms"], v) for r in read_stream(os.path.join(root, project, name,
                                                                                         "history.jsonl"))
            for k, v in r["values"].items()}


class GatedSink(MemorySink):
    """A MemorySink whose sends for some runs wait for a gate (a slow server run), or fail."""

    def __init__(self, slow: Optional[Dict[str, threading.Event]] = None, failing: tuple = (),
                 delay_s: float = 0.0):
        super().__init__()
        self.slow = slow or {}
        self.failing = failing
        self.delay_s = delay_s
        self.active = 0
        self.most_active = 0
        self._count = threading.Lock()

    def _sync_id(self, run: SinkRun) -> str:
        with self._lock:
            return self.runs[run.run_id].sync_id  # type: ignore[attr-defined]

    def send(self, run: SinkRun, payload: Any) -> int:
        sid = self._sync_id(run)
        if sid.rsplit("/", 1)[1] in self.failing:
            raise ServerUnavailable(f"{sid}: HTTP 503", 503)
        with self._count:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            gate = self.slow.get(sid.rsplit("/", 1)[1])
            if gate is not None:
                assert gate.wait(30), "the test never opened the gate"
            time.sleep(self.delay_s)
            return super().send(run, payload)
        finally:
            with self._count:
                self.active -= 1


def _pass_in_thread(runner: Runner, **kw: Any):
    out: Dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.setdefault("rep", runner.run_pass(**kw)), daemon=True)
    t.start()
    return t, out


def _wait_for(cond, timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


# -- engine (MemorySink) ----------------------------------------------------------------------------------
def test_settings_workers_from_env_and_file(tmp_path):
    assert Settings.resolve(None, environ={
        "HPCSYNC_GATEWAY_WORKERS": "7", "XDG_CONFIG_HOME": str(tmp_path)}).workers == 7
    cfg = tmp_path / "g.yaml"
    cfg.write_text("workers: 2\n")
    assert Settings.resolve(str(cfg), environ={"HPCSYNC_GATEWAY_WORKERS": "7"}).workers == 2
    for bad in ("0", "65", "true", "2.5"):
        cfg.write_text(f"workers: {bad}\n")
        with pytest.raises(Exception, match="workers must be an integer from 1"):
            Settings.resolve(str(cfg), environ={})


def test_a_slow_run_holds_no_other_and_every_point_lands_once(tmp_path, root, project):
    names = [f"r{i}" for i in range(8)]
    _runs(root, project, names, rows=30)
    gate = threading.Event()
    sink = GatedSink(slow={"r0": gate})
    with Runner(_settings(tmp_path, root, workers=4), sink=sink) as runner:
        t, out = _pass_in_thread(runner)
        others_done = _wait_for(lambda: all(
            run_key(root, project, n) in sink.by_sync_id and len(sink.stored(run_key(root, project, n)).points) == 60
            and sink.stored(run_key(root, project, n)).state == "finished" for n in names[1:]))
        k0 = run_key(root, project, "r0")
        slow_points = len(sink.stored(k0).points) if k0 in sink.by_sync_id else 0
        gate.set()
        t.join(30)
    assert others_done, "the other runs waited for the slow one"
    assert slow_points == 0
    rep = out["rep"]
    assert rep.ok and rep.runs_synced == 8 and rep.points_sent == 8 * 60, rep
    for n in names:
        assert sink.stored(run_key(root, project, n)).points == _points_on_disk(root, project, n)
    assert sink.most_active > 1  # runs really were sent at the same time


def test_a_failing_run_does_not_make_the_others_wait_for_a_slow_one(tmp_path, root, project):
    # While the last run failed, new runs go one at a time (the half-open breaker), but they do go: the
    # slow run in flight does not hold them.
    _runs(root, project, ["slow"], rows=5)
    bad, good = str(tmp_path / "bad"), str(tmp_path / "good")  # roots are synced in order
    _runs(bad, project, ["bad"], rows=5)
    _runs(good, project, ["g0", "g1", "g2", "g3"], rows=5)
    gate = threading.Event()
    sink = GatedSink(slow={"slow": gate}, failing=("bad",))
    s = replace(_settings(tmp_path, root, workers=2), roots=[root, bad, good])
    with Runner(s, sink=sink) as runner:
        t, out = _pass_in_thread(runner)
        gs = [run_key(good, project, f"g{i}") for i in range(4)]
        went_on = _wait_for(lambda: all(k in sink.by_sync_id and sink.stored(k).state == "finished" for k in gs))
        gate.set()
        t.join(30)
    assert went_on, "the runs after a failure waited for the slow run"
    rep = out["rep"]
    assert list(rep.errors) == [run_key(bad, project, "bad")] and not rep.aborted and rep.runs_synced == 5, rep


def test_workers_1_sends_one_run_at_a_time(tmp_path, root, project):
    _runs(root, project, [f"r{i}" for i in range(4)])
    sink = GatedSink(delay_s=0.002)
    with Runner(_settings(tmp_path, root, workers=1), sink=sink) as runner:
        rep = runner.run_pass()
    assert rep.ok and rep.points_sent == 4 * 40 and sink.most_active == 1


def test_the_breaker_stops_dispatching_and_runs_in_flight_finish_their_batch(tmp_path, root, project):
    _runs(root, project, ["a-long"], rows=400)
    bad_root = str(tmp_path / "bad")  # a second root: synced after the first has started (roots in order)
    bad = [f"b{i}" for i in range(8)]
    _runs(bad_root, project, bad, rows=5)
    sink = GatedSink(failing=tuple(bad), delay_s=0.005)
    store = StateStore(str(tmp_path / "state"))
    s = replace(_settings(tmp_path, root, workers=4), roots=[root, bad_root])
    with Runner(s, sink=sink) as runner:
        rep = runner.run_pass()
    assert rep.aborted and f"{BREAKER_RUNS} runs in a row" in rep.aborted, rep
    assert run_key(root, project, "a-long") not in rep.errors
    tried = [k for k in rep.errors if k.split("/")[2].startswith("b")]
    assert BREAKER_RUNS <= len(tried) < len(bad), rep.errors  # no new run after the breaker tripped
    stored = sink.stored(run_key(root, project, "a-long")).points
    cur = store.load(run_key(root, project, "a-long")).cursors["history"]
    assert 0 < len(stored) < 800 and cur.records * 2 == len(stored)  # stopped after an acked batch
    # The next pass, with the server back, resumes from the cursors: everything exactly once.
    sink.failing = ()
    with Runner(s, sink=sink) as runner:
        rep = runner.run_pass()
    assert rep.ok, rep
    for n in ["a-long", *bad]:
        where = bad_root if n in bad else root
        assert sink.stored(run_key(where, project, n)).points == _points_on_disk(where, project, n)


def test_sigterm_stops_every_run_in_flight_after_its_batch(tmp_path, root, project):
    names = [f"r{i}" for i in range(6)]
    _runs(root, project, names, rows=300)
    sink = GatedSink(delay_s=0.003)
    stop = threading.Event()
    with Runner(_settings(tmp_path, root, workers=4), sink=sink) as runner:
        t, out = _pass_in_thread(runner, should_stop=stop.is_set)
        assert _wait_for(lambda: sink.calls["send"] > 40)
        stop.set()
        t.join(30)
    assert out["rep"].aborted == "stopped on request"
    store = StateStore(str(tmp_path / "state"))
    for n in names:  # whatever was sent is committed: the cursor covers exactly the stored points
        key = run_key(root, project, n)
        got = len(sink.stored(key).points) if key in sink.by_sync_id else 0
        cur = store.load(key).cursors.get("history")
        assert got == (cur.records * 2 if cur else 0), n
    with Runner(_settings(tmp_path, root, workers=4), sink=sink) as runner:
        assert runner.run_pass().ok
    for n in names:
        assert sink.stored(run_key(root, project, n)).points == _points_on_disk(root, project, n)


class _Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def test_the_lease_is_renewed_while_one_long_request_runs(tmp_path, root, project):
    _runs(root, project, ["long"], rows=3)
    gate = threading.Event()
    sink = GatedSink(slow={"long": gate})
    clock = _Clock()
    s = _settings(tmp_path, root, workers=2, lease_ttl_s=30.0)
    with Runner(s, sink=sink, clock=clock) as runner:
        lease = runner.leases[root]
        t, out = _pass_in_thread(runner)
        assert _wait_for(lambda: sink.active == 1)  # the first batch is in flight, and stays
        first = lease.read()["expires_s"]
        for _ in range(4):  # 4 x 15 s: twice the lease time while one request is in flight
            clock.t += 15.0
            assert _wait_for(lambda: lease.read()["expires_s"] >= clock.t + 15.0, 10), "not renewed"
        other = Lease(s.lease_path, root, s.lease_ttl_s, owner="other-gateway", clock=clock)
        assert not other.acquire()  # still ours
        gate.set()
        t.join(30)
    assert lease.read() is None  # released at close
    assert first < clock.t and out["rep"].ok, out["rep"]
    assert sink.stored(run_key(root, project, "long")).points == _points_on_disk(root, project, "long")


def test_a_lost_lease_stops_that_roots_runs_at_their_next_batch(tmp_path, root, project):
    _runs(root, project, ["r0", "r1", "r2"], rows=200)
    sink = GatedSink(delay_s=0.002)
    clock = _Clock()
    s = _settings(tmp_path, root, workers=2, lease_ttl_s=30.0)
    with Runner(s, sink=sink, clock=clock) as runner:
        lease = runner.leases[root]
        t, out = _pass_in_thread(runner)
        assert _wait_for(lambda: sink.calls["send"] > 20)
        # Another gateway took the root over (ours had expired, say): at the next renewal we see it.
        with open(lease.path, "w") as f:
            json.dump({"owner": "other-gateway", "host": "elsewhere", "pid": 1, "expires_s": clock.t + 1e6}, f)
        clock.t += 11.0
        t.join(30)
    rep = out["rep"]
    assert "lost the lease" in rep.roots_skipped.get(root, ""), rep
    assert sum(len(sink.stored(run_key(root, project, n)).points) for n in ("r0", "r1", "r2")
               if run_key(root, project, n) in sink.by_sync_id) < 3 * 400
    assert json.load(open(lease.path))["owner"] == "other-gateway"  # left to its owner


def test_on_points_is_called_by_one_thread_at_a_time(tmp_path, root, project):
    _runs(root, project, [f"r{i}" for i in range(6)], rows=50)
    inside = []
    total = [0]

    def on_points(n: int) -> None:
        inside.append(1)
        assert len(inside) == 1
        total[0] += n
        time.sleep(0.0005)
        inside.pop()

    with Runner(_settings(tmp_path, root, workers=4), sink=GatedSink(), on_points=on_points) as runner:
        rep = runner.run_pass()
    assert rep.ok and total[0] == rep.points_sent == 6 * 100


# -- the real MLflow server -------------------------------------------------------------------------------
def _same_content(settings, root, project, names, rows):
    sink = sink_for(settings)
    out = {}
    for n in names:
        run = server_run(sink, project, n)
        info = run_info(sink, run)
        disk = read_stream(os.path.join(root, project, n, "history.jsonl"))
        for key in ("x", "y"):
            got = history(sink, run, key)
            want = sorted((r["step"], r["ts_ms"], float(r["values"][key])) for r in disk)
            assert got == want, (n, key)  # every point exactly once
        params = {p["key"]: p["value"] for p in info["data"].get("params", [])}
        assert params == {"lr": "0.1", "name": n}
        assert info["info"]["status"] == "FINISHED"
        out[n] = (len(disk), params, info["info"]["status"])
    return out


def test_parallel_runs_against_mlflow_equal_disk_and_workers_1_gives_the_same(settings, tmp_path, project):
    names = [f"r{i}" for i in range(8)]
    contents = {}
    for workers in (1, 4):
        root = str(tmp_path / f"runs{workers}")
        proj = f"{project}w{workers}"
        _runs(root, proj, names, rows=150)
        s = replace(settings, roots=[root], state_dir=str(tmp_path / f"state{workers}"), workers=workers)
        rep = sync_once(s)
        assert rep.ok and rep.runs_synced == 8 and rep.points_sent == 8 * 300, rep
        assert sync_once(s).runs_unchanged == 8  # nothing left, nothing sent twice
        contents[workers] = _same_content(s, root, proj, names, 150)
    assert contents[1] == contents[4]
