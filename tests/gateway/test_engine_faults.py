"""The engine's fault paths without a server (fast tier): one run's fault stays in that run, backoff by
the gateway's clock, the circuit breaker, quarantine, deleted runs, rewritten streams, an unreachable server,
lost answers, a stop mid-pass, several workers, a resumed run's new end, a run moved away.

Each scenario scripts its faults on a FaultySink (tests/gateway/_faultysink.py) or lets the MemorySink refuse
points, and checks the exactly-once rules: nothing lost, nothing stored twice, one server run per run. The
server facts behind them (which HTTP answers are which error) are tested against MLflow in test_faults.py.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from typing import Any, Set, Tuple

import pytest
from _faultysink import FaultySink
from _ids import key as run_key
from _runwriter import RunWriter, read_stream

from sync_gateway import cli
from sync_gateway.engine.gateway import BACKOFF_BASE_S, BACKOFF_MAX_S, BREAKER_RUNS
from sync_gateway.engine.runner import Runner
from sync_gateway.engine.state import StateStore
from sync_gateway.errors import (
    BatchRefused,
    FileTooLarge,
    RunDeleted,
    ServerRefused,
    ServerUnavailable,
    ServerUnreachable,
)
from sync_gateway.settings import Settings
from sync_gateway.sinks.memory import MemorySink

T0 = 1_764_150_000_000


class Clock:
    def __init__(self, t: float = T0 / 1000 + 60) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _settings(tmp_path, *roots: str, **kw: Any) -> Settings:
    return Settings(roots=list(roots), server_url="http://unused.invalid", state_dir=str(tmp_path / "state"), **kw)


def _run(root: str, project: str, name: str, rows: int = 10, ended: bool = True) -> RunWriter:
    w = RunWriter(root, project, name, created_ms=T0)
    w.log_many({"x": float(i), "y": -float(i)} for i in range(rows))
    if ended:
        w.exit(0, end_ms=T0 + 1000)
    return w


def _disk(w: RunWriter) -> Set[Tuple[str, str, int, int, float]]:
    return {("history", k, r["step"], r["ts_ms"], v) for r in read_stream(w.path("history.jsonl"))
            for k, v in r["values"].items()}


def _stored(sink: MemorySink, key: str) -> Set[Any]:
    return sink.stored(key).points if key in sink.by_sync_id else set()


def _pass(settings: Settings, sink: MemorySink, **kw: Any):
    with Runner(settings, sink=sink) as runner:
        return runner.run_pass(**kw)


def _status(tmp_path, settings: Settings, capsys) -> str:
    cfg = tmp_path / "status.yaml"
    cfg.write_text(json.dumps({"roots": settings.roots, "server": {"kind": "mlflow", "url": settings.server_url},
                               "state_dir": settings.state_dir}))
    capsys.readouterr()
    cli.main(["status", "--config", str(cfg)])
    return capsys.readouterr().out


# -- one run's fault stays in that run ----------------------------------------------------------------------
def test_an_unexpected_exception_in_one_run_is_recorded_on_it_and_the_others_sync(tmp_path, root, project):
    ws = {n: _run(root, project, n) for n in ("a", "b", "c")}
    sink = FaultySink().fail("set_metadata", RuntimeError("a bug"), run="b")
    s = _settings(tmp_path, root)
    rep = _pass(s, sink)
    kb = run_key(root, project, "b")
    assert list(rep.errors) == [kb] and "RuntimeError: a bug" in rep.errors[kb], rep
    assert rep.runs_synced == 2 and not rep.aborted
    assert "RuntimeError" in StateStore(s.state_dir).load_index()[run_key(root, project, "b")].error
    rep = _pass(s, sink)  # the fault is gone: the next pass syncs it
    assert rep.ok and rep.runs_synced == 1, rep
    for n, w in ws.items():
        assert _stored(sink, run_key(root, project, n)) == _disk(w), n


def test_a_permanent_refusal_fails_only_that_run_and_never_backs_it_off(tmp_path, root, project):
    _run(root, project, "a")
    b = _run(root, project, "b")
    sink = FaultySink().fail("open_run", ServerRefused("HTTP 403: permission denied", 403), run="b", times=None)
    s = _settings(tmp_path, root)
    with Runner(s, sink=sink) as runner:
        for _ in range(3):  # tried on every pass: a permanent error is not the server being down
            rep = runner.run_pass()
            assert list(rep.errors) == [run_key(root, project, "b")] and not rep.backing_off and not rep.aborted, rep
            assert "retr" not in rep.errors[run_key(root, project, "b")]
        st = StateStore(s.state_dir).load(run_key(root, project, "b"))
        assert st.failures == 0 and st.retry_at_ms == 0
        sink.heal()
        assert runner.run_pass().ok
    assert sink.counts[("open_run", run_key(root, project, "b"))] == 4
    assert _stored(sink, run_key(root, project, "b")) == _disk(b)


# -- backoff by the gateway's clock ---------------------------------------------------------------------------
def test_a_retryable_error_backs_the_run_off_60_s_doubling_while_the_others_sync(tmp_path, root, project):
    _run(root, project, "a")
    b = _run(root, project, "b")
    sink = FaultySink().fail("send", ServerUnavailable("HTTP 503", 503), run="b", times=None)
    clock = Clock()
    key = run_key(root, project, "b")
    with Runner(_settings(tmp_path, root), sink=sink, clock=clock) as runner:
        rep = runner.run_pass()
        assert list(rep.errors) == [key] and rep.runs_synced == 1 and "retried by the next pass" in rep.errors[key]
        rep = runner.run_pass()  # tried again at once; the second failure in a row backs it off
        assert f"failure #2 in a row: retry in {BACKOFF_BASE_S:.0f} s" in rep.errors[key], rep
        tries = sink.counts[("send", key)]
        clock.t += BACKOFF_BASE_S - 1
        rep = runner.run_pass()
        assert key in rep.backing_off and not rep.errors and sink.counts[("send", key)] == tries, rep
        clock.t += 2
        rep = runner.run_pass()
        assert f"failure #3 in a row: retry in {2 * BACKOFF_BASE_S:.0f} s" in rep.errors[key], rep
        clock.t += 2 * BACKOFF_BASE_S + 1
        sink.heal()
        rep = runner.run_pass()
    assert rep.ok and rep.runs_synced == 1, rep
    assert _stored(sink, key) == _disk(b)
    st = StateStore(str(tmp_path / "state")).load(key)
    assert st.failures == 0 and st.retry_at_ms == 0 and st.last_error is None


def test_the_backoff_doubles_up_to_an_hour(tmp_path, root, project):
    _run(root, project, "b")
    sink = FaultySink().fail("send", ServerUnavailable("HTTP 429", 429), times=None)
    clock = Clock()
    waits = []
    with Runner(_settings(tmp_path, root), sink=sink, clock=clock) as runner:
        for _ in range(9):
            rep = runner.run_pass()
            st = StateStore(str(tmp_path / "state")).load(run_key(root, project, "b"))
            waits.append((st.retry_at_ms - int(clock.t * 1000)) // 1000 if st.retry_at_ms else 0)
            clock.t += BACKOFF_MAX_S + 1
    assert waits == [0, 60, 120, 240, 480, 960, 1920, 3600, 3600], waits
    assert "failure #9 in a row: retry in 3600 s" in rep.errors[run_key(root, project, "b")]


# -- the circuit breaker, an unreachable server -------------------------------------------------------------
def test_three_runs_in_a_row_failing_trip_the_breaker_and_the_next_pass_resumes(tmp_path, root, project):
    ws = {f"r{i}": _run(root, project, f"r{i}") for i in range(6)}
    sink = FaultySink().fail("send", ServerUnavailable("HTTP 503", 503), times=None)
    s = _settings(tmp_path, root, workers=1)  # with more, the runs already in flight fail too (test_workers.py)
    rep = _pass(s, sink)
    assert rep.aborted and f"{BREAKER_RUNS} runs in a row" in rep.aborted and len(rep.errors) == BREAKER_RUNS, rep
    assert sum(n for (m, _), n in sink.counts.items() if m == "open_run") == BREAKER_RUNS  # no fourth run tried
    sink.heal()
    rep = _pass(s, sink)
    assert rep.ok and rep.runs_synced == 6, rep
    for n, w in ws.items():
        assert _stored(sink, run_key(root, project, n)) == _disk(w)


def test_a_run_that_syncs_between_failures_resets_the_breaker(tmp_path, project):
    roots = [str(tmp_path / f"root{i}") for i in range(5)]  # roots are synced in order: one run each
    for i, r in enumerate(roots):
        _run(r, project, f"r{i}")
    sink = FaultySink()
    for name in ("r0", "r1", "r3", "r4"):  # fail, fail, ok, fail, fail: never 3 in a row
        sink.fail("send", ServerUnavailable("HTTP 502", 502), run=name, times=None)
    rep = _pass(_settings(tmp_path, *roots, workers=1), sink)
    assert not rep.aborted and len(rep.errors) == 4 and rep.runs_synced == 1, rep


def test_an_unreachable_server_ends_the_pass_at_once_without_backing_the_run_off(tmp_path, root, project):
    for i in range(3):
        _run(root, project, f"r{i}")
    sink = FaultySink().fail("open_run", ServerUnreachable("cannot connect to the server: connection refused"),
                             times=None)
    s = _settings(tmp_path, root)
    rep = _pass(s, sink)
    assert rep.aborted == "cannot connect to the server: connection refused" and len(rep.errors) == 1, rep
    (key,) = rep.errors
    assert rep.errors[key] == rep.aborted  # not the run's fault: no "retried", no backoff
    st = StateStore(s.state_dir).load(key)
    assert st.retry_at_ms == 0 and st.failures == 0
    assert sum(sink.counts.values()) == 1
    sink.heal()
    assert _pass(s, sink).ok


# -- quarantine -------------------------------------------------------------------------------------------------
def test_a_point_the_memory_server_refuses_for_good_is_quarantined_and_the_rest_syncs(tmp_path, root, project,
                                                                                    capsys):
    w = _run(root, project, "q")
    sink = MemorySink(refuse=lambda stream, key, value: key == "x" and value == 5.0)
    s = _settings(tmp_path, root)
    rep = _pass(s, sink)
    assert rep.quarantined == 1 and not rep.errors and not rep.ok, rep
    want = {p for p in _disk(w) if p[1:3] != ("x", 5)}
    # the row's other point is stored: only the refused one is lost
    assert _stored(sink, run_key(root, project, "q")) == want
    st = StateStore(s.state_dir).load(run_key(root, project, "q"))
    (q,) = st.quarantined
    assert q["stream"] == "history" and q["points"] == 1 and "1 of 2 points refused for good" in q["error"]
    start, stop = q["bytes"]
    with open(w.path("history.jsonl"), "rb") as f:
        f.seek(start)
        line = f.read(stop - start)
    assert json.loads(line)["seq"] == 5 and line.endswith(b"\n") and line.count(b"\n") == 1
    assert st.cursors["history"].offset == os.path.getsize(w.path("history.jsonl")) and st.state == "finished"
    assert _pass(s, sink).ok  # nothing stuck: the next pass has nothing to do
    assert "1 batch(es) quarantined" in _status(tmp_path, s, capsys)


def test_a_batch_the_sink_refuses_moves_the_cursor_past_it(tmp_path, root, project):
    w = _run(root, project, "q")
    sink = FaultySink().fail("send", BatchRefused("2 of 2 points refused for good", points=2), run="q", nth=3)
    s = _settings(tmp_path, root)
    rep = _pass(s, sink)
    assert rep.quarantined == 1 and not rep.errors, rep
    # the third row, refused whole
    assert _stored(sink, run_key(root, project, "q")) == {p for p in _disk(w) if p[2] != 2}
    st = StateStore(s.state_dir).load(run_key(root, project, "q"))
    assert st.quarantined_total == 1 and st.quarantined[0]["points"] == 2
    assert st.cursors["history"].records == 10 and _pass(s, sink).ok


# -- a run deleted on the server, a stream rewritten -------------------------------------------------------
def test_a_run_deleted_on_the_server_is_noted_forgotten_and_looked_for_every_pass(tmp_path, root, project):
    w = _run(root, project, "d", ended=False)
    w.heartbeat()
    key = run_key(root, project, "d")
    sink = FaultySink()
    s = _settings(tmp_path, root)
    assert _pass(s, sink).ok
    sink.fail("open_run", RunDeleted("was deleted on the server: restore it from the trash to sync it"), run="d",
              times=None)
    w.log_many({"x": float(i), "y": -float(i)} for i in range(10, 15))
    for _ in range(2):
        rep = _pass(s, sink)
        assert rep.ok and "deleted on the server" in rep.notes[key] and not rep.errors, rep
        st = StateStore(s.state_dir).load(key)
        assert st.sink == {} and st.cursors == {} and st.state is None and st.notes == [rep.notes[key]]
    assert sink.counts[("open_run", key)] == 3  # looked for again by every pass
    sink.heal()  # restored from the trash: synced again, whole
    assert _pass(s, sink).ok
    assert _stored(sink, key) == _disk(w) and len([r for r in sink.runs.values() if r.sync_id == key]) == 1


@pytest.mark.parametrize("rows_after", [5, 30])
def test_a_rewritten_stream_goes_whole_to_a_new_server_run_and_the_old_keeps_its_content(tmp_path, root, project,
                                                                                        rows_after):
    old_w = _run(root, project, "re", rows=20)
    old = _disk(old_w)
    sink = MemorySink()
    s = _settings(tmp_path, root)
    assert _pass(s, sink).ok
    old_id = sink.by_sync_id[run_key(root, project, "re")]
    shutil.rmtree(old_w.dir)
    new_w = RunWriter(root, project, "re", created_ms=T0)  # the same id written anew from scratch
    new_w.log_many(({"x": -float(i)} for i in range(rows_after)), ts0_ms=T0 + 777)
    new_w.exit(0)
    rep = _pass(s, sink)
    assert rep.ok and sink.calls["retire_run"] == 1, rep
    assert sink.runs[old_id].points == old and "rewritten" in (sink.runs[old_id].retired or "")
    kre = run_key(root, project, "re")
    assert sink.by_sync_id[kre] != old_id and _stored(sink, kre) == _disk(new_w)
    assert any("rewritten" in n for n in StateStore(s.state_dir).load(run_key(root, project, "re")).notes)


# -- lost answers ---------------------------------------------------------------------------------------------
def test_a_lost_answer_to_a_batch_is_resent_and_stored_once(tmp_path, root, project):
    w = _run(root, project, "lost")
    key = run_key(root, project, "lost")
    sink = FaultySink().fail("send", ServerUnavailable("connection reset: the answer was lost"), run="lost", nth=4,
                             after=True)
    s = _settings(tmp_path, root)
    rep = _pass(s, sink)
    assert "retried by the next pass" in rep.errors[key], rep
    cur = StateStore(s.state_dir).load(key).cursors["history"]
    assert cur.records == 3  # the cursor stops before the batch whose answer was lost
    assert _pass(s, sink).ok
    assert _stored(sink, key) == _disk(w)
    resent = {p[2] for p in sink.resent(key)}  # steps re-sent: the lost batch and the one in flight behind it
    assert 3 in resent and resent <= {3, 4}, resent
    assert max(sink.sends.values()) == 2


def test_a_lost_answer_to_open_run_does_not_create_a_second_run(tmp_path, root, project):
    w = _run(root, project, "once")
    key = run_key(root, project, "once")
    sink = FaultySink().fail("open_run", ServerUnavailable("read timeout: the answer was lost"), run="once",
                             after=True)
    s = _settings(tmp_path, root)
    assert key in _pass(s, sink).errors
    assert _pass(s, sink).ok
    assert len([r for r in sink.runs.values() if r.sync_id == key]) == 1 and _stored(sink, key) == _disk(w)


# -- a stop mid-pass (SIGTERM), several workers ----------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 4])
def test_a_stop_mid_pass_commits_the_batch_in_flight_and_the_next_pass_resumes(tmp_path, root, project, workers):
    ws = {f"r{i}": _run(root, project, f"r{i}", rows=40) for i in range(4)}
    sink = FaultySink()
    stop = threading.Event()
    sends = [0]

    def count(method: str, sync_id: str) -> None:
        if method == "send":
            sends[0] += 1
            if sends[0] == 12:
                stop.set()  # SIGTERM in the daemon

    sink.before = count
    s = _settings(tmp_path, root, workers=workers)
    rep = _pass(s, sink, should_stop=stop.is_set)
    assert rep.aborted == "stopped on request", rep
    store = StateStore(s.state_dir)
    for n in ws:  # whatever was stored is committed: the cursor covers exactly the stored points
        cur = store.load(run_key(root, project, n)).cursors.get("history")
        assert len(_stored(sink, run_key(root, project, n))) == (cur.records * 2 if cur else 0), n
    assert sum(len(_stored(sink, run_key(root, project, n))) for n in ws) < 4 * 80
    sink.before = None
    assert _pass(s, sink).ok
    for n, w in ws.items():
        assert _stored(sink, run_key(root, project, n)) == _disk(w)


def test_with_workers_a_run_that_raises_stays_in_that_run(tmp_path, root, project):
    ws = {f"r{i}": _run(root, project, f"r{i}", rows=30) for i in range(8)}
    sink = FaultySink()
    sink.fail("send", RuntimeError("a bug in the middle of a run"), run="r3", nth=2)
    sink.fail("send", ServerUnavailable("HTTP 503", 503), run="r5", times=None)
    rep = _pass(_settings(tmp_path, root, workers=4), sink)
    k3, k5 = run_key(root, project, "r3"), run_key(root, project, "r5")
    assert set(rep.errors) == {k3, k5} and not rep.aborted and rep.runs_synced == 6, rep
    assert "RuntimeError" in rep.errors[k3] and "retried" in rep.errors[k5]
    for n, w in ws.items():
        if n not in ("r3", "r5"):
            assert _stored(sink, run_key(root, project, n)) == _disk(w), n
    # Its first row was acknowledged before the fault; the batch in flight behind the fault may be stored
    # too, but the cursor covers only what was acknowledged.
    assert StateStore(str(tmp_path / "state")).load(run_key(root, project, "r3")).cursors["history"].records == 1
    assert len(_stored(sink, run_key(root, project, "r3"))) >= 2


# -- files and groups ---------------------------------------------------------------------------------------------
def test_a_file_refused_as_too_large_is_noted_and_the_run_goes_on(tmp_path, root, project):
    w = _run(root, project, "f", ended=False)
    w.save("big.bin", b"x" * 100)
    w.save("small.txt", b"fine")
    w.exit(0)
    sink = FaultySink().fail("upload", FileTooLarge("files/big.bin was refused as too large (HTTP 413)"), run="f",
                             times=None, detail="files/big.bin")
    s = _settings(tmp_path, root)
    assert _pass(s, sink).ok
    stored = sink.stored(run_key(root, project, "f"))
    assert stored.files.get("files/small.txt") == b"fine" and "files/big.bin" not in stored.files
    assert stored.state == "finished"
    assert any("too large" in n for n in StateStore(s.state_dir).load(run_key(root, project, "f")).notes)


def test_a_failing_group_stays_in_that_group(tmp_path, root, project):
    ranks = []
    for rank in range(2):
        w = RunWriter(root, project, f"rank{rank}", group="job-1", created_ms=T0)
        w.log({"x": 1.0}, ts_ms=T0)
        ranks.append(w)
    sink = FaultySink().fail("sync_group", RuntimeError("a bug in groups"))
    s = _settings(tmp_path, root)
    rep = _pass(s, sink)
    assert list(rep.errors) == [f"group:{project}/job-1"] and rep.runs_synced == 2, rep
    for w in ranks:
        w.exit(0)
    assert _pass(s, sink).ok and sink.stored(f"group:{project}/job-1").state == "finished"


# -- issue 21: a resumed run's new end, a run moved away -----------------------------------------------------------
def test_a_run_that_ends_resumes_and_ends_again_between_passes_sends_its_new_end(tmp_path, root, project):
    w = _run(root, project, "again", ended=False)
    w.exit(0, end_ms=T0 + 3_100)
    sink = MemorySink()
    s = _settings(tmp_path, root)
    key = run_key(root, project, "again")
    assert _pass(s, sink).ok
    assert (sink.stored(key).state, sink.stored(key).end_ms) == ("finished", T0 + 3_100)
    w.resume()  # between two passes: resumed, logged more and finished again
    w.log({"x": 99.0}, ts_ms=T0 + 12_000)
    w.exit(0, end_ms=T0 + 12_700)
    assert _pass(s, sink).ok
    assert (sink.stored(key).state, sink.stored(key).end_ms) == ("finished", T0 + 12_700)
    assert sink.calls["set_state"] == 2
    os.utime(w.path("history.jsonl"))  # files touched, the outcome the same: the state is not sent again
    assert _pass(s, sink).ok and sink.calls["set_state"] == 2
    delivered = StateStore(s.state_dir).load(key).status
    assert delivered is not None and (delivered["state"], delivered["end_ms"]) == ("finished", T0 + 12_700)


def test_a_run_moved_away_is_ended_as_crashed_and_status_says_it_is_gone(tmp_path, root, project, capsys):
    w = _run(root, project, "moved", ended=False)
    _run(root, project, "stays", ended=False)
    clock = Clock(os.stat(w.path("history.jsonl")).st_mtime + 1)
    s = _settings(tmp_path, root)
    key = run_key(root, project, "moved")
    sink = MemorySink()
    with Runner(s, sink=sink, clock=clock) as runner:
        assert runner.run_pass().ok and sink.stored(key).state == "active"
        alive_ms = StateStore(s.state_dir).load_index()[key].alive_ms
        elsewhere = str(tmp_path / "elsewhere")
        shutil.move(w.dir, elsewhere)
        clock.t += s.stale_after_s / 2
        rep = runner.run_pass()  # gone, but not for stale_after_s yet: nothing said
        assert rep.ok and not rep.notes and sink.stored(key).state == "active"
        clock.t += s.stale_after_s / 2 + 1
        rep = runner.run_pass()
        assert rep.ok and f"not found under {root}" in rep.notes[key], rep
        assert (sink.stored(key).state, sink.stored(key).end_ms) == ("crashed", alive_ms)
        calls = sink.calls["set_state"]
        assert not runner.run_pass().notes and sink.calls["set_state"] == calls  # ended once
        out = _status(tmp_path, s, capsys)
        assert "crashed (gone)" in out and "gone: not found under" in out
        shutil.move(elsewhere, w.dir)  # it comes back, alive: synced as before
        w.log({"x": 100.0}, ts_ms=T0 + 100)
        clock.t = os.stat(w.path("history.jsonl")).st_mtime + 1
        assert runner.run_pass().ok
    assert sink.stored(key).state == "active" and sink.stored(key).points == _disk(w)
    assert "(gone)" not in _status(tmp_path, s, capsys)


def test_runs_of_a_root_that_cannot_be_listed_are_not_taken_for_gone(tmp_path, project):
    root = str(tmp_path / "runs")
    _run(root, project, "r", ended=False)
    clock = Clock(os.stat(os.path.join(root, project, "r", "history.jsonl")).st_mtime + 1)
    s = _settings(tmp_path, root)
    sink = MemorySink()
    with Runner(s, sink=sink, clock=clock) as runner:
        assert runner.run_pass().ok
        os.rename(root, root + ".offline")  # the file system is not mounted: the root cannot be listed
        clock.t += 10 * s.stale_after_s
        rep = runner.run_pass()
    assert root in rep.roots_skipped and not rep.notes, rep
    assert sink.stored(run_key(root, project, "r")).state == "active"



# -- the composition root ---------------------------------------------------------------------------------------
def test_status_reads_through_the_runner_and_closes_every_source_it_opens(tmp_path, root, project, capsys,
                                                                          monkeypatch):
    from sync_gateway.sources.local import LocalSource

    w = _run(root, project, "st", rows=10)
    s = _settings(tmp_path, root)
    assert _pass(s, MemorySink()).ok
    w.log_many(({"x": float(i)} for i in range(10, 13)), ts0_ms=T0 + 10)  # 3 records not synced yet
    opened, closed = [], []
    real_init, real_close = LocalSource.__init__, LocalSource.close
    monkeypatch.setattr(LocalSource, "__init__", lambda self, *a, **kw: (opened.append(self),
                                                                        real_init(self, *a, **kw))[1])
    monkeypatch.setattr(LocalSource, "close", lambda self: (closed.append(self), real_close(self))[1])
    out = _status(tmp_path, s, capsys)
    assert run_key(root, project, "st") in out and "10 / 13" in out, out
    assert opened and all(src in closed for src in opened)
