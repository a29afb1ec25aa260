"""A run's identity holds its root (issue 21 item 3): the same project/run id under two roots are two runs
with two server runs, stable over passes and across a state loss; state of an older gateway (keyed by
project/run id alone, state version 2) is taken over without re-creating or re-sending anything, and a
server run an older gateway made is adopted after a state loss, by one run only. Fast tier: MemorySink."""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Optional, Set, Tuple

import pytest
from _ids import key as run_key
from _runwriter import RunWriter, read_stream

from sync_gateway.engine.runner import Runner
from sync_gateway.engine.state import StateStore
from sync_gateway.errors import ConfigError
from sync_gateway.settings import Settings
from sync_gateway.sinks.memory import MemorySink

T0 = 1_764_150_000_000


def _settings(tmp_path, *roots: str) -> Settings:
    return Settings(roots=list(roots), server_url="http://unused.invalid", state_dir=str(tmp_path / "state"))


def _disk(w: RunWriter) -> Set[Tuple[str, str, int, int, Any]]:
    return {("history", k, r["step"], r["ts_ms"], v) for r in read_stream(w.path("history.jsonl"))
            for k, v in r["values"].items()}


def _pass(settings: Settings, sink: MemorySink):
    with Runner(settings, sink=sink) as r:
        return r.run_pass()


def _two_roots(tmp_path):
    a, b = str(tmp_path / "alice"), str(tmp_path / "bob")
    wa = RunWriter(a, "proj", "run-1", created_ms=T0)
    wb = RunWriter(b, "proj", "run-1", created_ms=T0 + 5)   # the same project/run id, another run
    wa.log_many({"x": float(i)} for i in range(10))
    wb.log_many({"x": -float(i)} for i in range(7))
    return a, b, wa, wb


def test_two_roots_with_the_same_run_id_are_two_server_runs_stable_over_5_passes(tmp_path):
    a, b, wa, wb = _two_roots(tmp_path)
    sink, s = MemorySink(), _settings(tmp_path, a, b)
    for i in range(5):
        rep = _pass(s, sink)
        assert rep.ok and not rep.notes, rep     # before: "history.jsonl was rewritten" every pass
        wa.log({"x": 100.0 + i})                 # both keep growing
        wb.log({"x": -100.0 - i})
    assert _pass(s, sink).ok
    assert len(sink.runs) == 2 and sink.calls["retire_run"] == 0 and sink.calls["find_or_create"] == 2
    assert sink.stored(run_key(a, "proj", "run-1")).points == _disk(wa)
    assert sink.stored(run_key(b, "proj", "run-1")).points == _disk(wb)


def test_after_a_state_loss_both_runs_are_found_again_and_nothing_is_stored_twice(tmp_path):
    a, b, wa, wb = _two_roots(tmp_path)
    sink, s = MemorySink(), _settings(tmp_path, a, b)
    assert _pass(s, sink).ok
    ids = dict(sink.by_sync_id)
    shutil.rmtree(s.state_dir)
    wa.log({"x": 50.0})
    assert _pass(s, sink).ok
    assert sink.by_sync_id == ids and len(sink.runs) == 2
    assert sink.stored(run_key(a, "proj", "run-1")).points == _disk(wa)
    assert sink.stored(run_key(b, "proj", "run-1")).points == _disk(wb)


def _to_state_version_2(state_dir: str, sink: Optional[MemorySink] = None) -> Dict[str, str]:
    """Rewrite what the gateway keeps, and the server's tags, as a gateway before root ids kept them: state
    files runs/<project>/<run_id>.json and index keys <project>/<run_id> (state_version 2, no legacy
    fields), server runs tagged <project>/<run_id>."""
    runs = os.path.join(state_dir, "runs")
    moved = {}
    for top, _dirs, names in list(os.walk(runs)):
        rel = os.path.relpath(top, runs).split(os.sep)
        for n in names:
            if len(rel) == 2:
                doc = json.load(open(os.path.join(top, n)))
                doc.pop("legacy_id", None)
                doc["state_version"] = 2
                doc["sink"].pop("tag", None)
                old = os.path.join(runs, rel[1], n)
                os.makedirs(os.path.dirname(old), exist_ok=True)
                json.dump(doc, open(old, "w"))
                moved["/".join(rel + [n[:-5]])] = f"{rel[1]}/{n[:-5]}"
    for rid in {k.split("/")[0] for k in moved}:
        shutil.rmtree(os.path.join(runs, rid))
    index = json.load(open(os.path.join(state_dir, "index.json")))
    runs_v2 = {}
    for k, e in index["runs"].items():
        e.pop("legacy", None)
        runs_v2[moved[k]] = e
    json.dump({"state_version": 2, "runs": runs_v2}, open(os.path.join(state_dir, "index.json"), "w"))
    for rid, stored in (sink.runs if sink is not None else {}).items():
        sink._move(rid, moved.get(stored.sync_id, stored.sync_id))
    return moved


def test_state_of_an_older_gateway_is_taken_over_without_re_creating_or_re_sending(tmp_path):
    a = str(tmp_path / "alice")
    w = RunWriter(a, "proj", "old", created_ms=T0)
    w.log_many({"x": float(i)} for i in range(20))
    sink, s = MemorySink(), _settings(tmp_path, a)
    assert _pass(s, sink).ok
    _to_state_version_2(s.state_dir, sink)
    assert os.path.exists(os.path.join(s.state_dir, "runs", "proj", "old.json"))
    (server_id,) = sink.runs
    sink.calls.clear()
    w.log_many({"x": 100.0 + i} for i in range(3))
    rep = _pass(s, sink)
    assert rep.ok and rep.points_sent == 3 and rep.runs_synced == 1, rep   # only what is new
    assert sink.calls["find_or_create"] == 0 and sink.calls["retire_run"] == 0 and list(sink.runs) == [server_id]
    key = run_key(a, "proj", "old")
    assert sink.by_sync_id == {key: server_id}   # its server run now carries the new sync id
    assert sink.stored(key).points == _disk(w)
    st = StateStore(s.state_dir).load(key)
    assert st.legacy_id == "proj/old" and st.sink["run_id"] == server_id
    assert not os.path.exists(os.path.join(s.state_dir, "runs", "proj", "old.json"))
    sink.calls.clear()
    assert _pass(s, sink).runs_unchanged == 1 and not sink.calls


def test_an_older_gateways_state_goes_to_the_root_it_names_and_the_other_root_gets_its_own_run(tmp_path):
    """With the bug, two roots shared one state: the index names the root synced last, whose content the
    active server run holds. That root's run takes the state; the other root's run gets a new server run."""
    a, b, wa, wb = _two_roots(tmp_path)
    sink = MemorySink()
    assert _pass(_settings(tmp_path, b), sink).ok        # as if bob's had been synced last
    _to_state_version_2(str(tmp_path / "state"), sink)
    (bobs,) = sink.runs
    s = _settings(tmp_path, a, b)                         # alice's root comes first
    wb.log({"x": 1000.0})                                 # bob's run is opened again: its tag moves
    for _ in range(3):
        assert _pass(s, sink).ok
    assert sink.by_sync_id[run_key(b, "proj", "run-1")] == bobs and len(sink.runs) == 2
    assert sink.stored(run_key(a, "proj", "run-1")).points == _disk(wa)
    assert sink.stored(run_key(b, "proj", "run-1")).points == _disk(wb)
    assert sink.calls["retire_run"] == 0


def test_after_a_state_loss_a_server_run_of_an_older_gateway_is_adopted_once(tmp_path):
    a, b, wa, wb = _two_roots(tmp_path)
    sink = MemorySink()
    assert _pass(_settings(tmp_path, a), sink).ok
    _to_state_version_2(str(tmp_path / "state"), sink)   # the server run is tagged proj/run-1
    shutil.rmtree(tmp_path / "state")                     # and the state is lost
    (alices,) = sink.runs
    s = _settings(tmp_path, b, a)                         # bob's root first: it must not take alice's run
    for _ in range(3):
        assert _pass(s, sink).ok
    assert sink.by_sync_id[run_key(a, "proj", "run-1")] == alices and len(sink.runs) == 2
    assert sink.stored(run_key(a, "proj", "run-1")).points == _disk(wa)
    assert sink.stored(run_key(b, "proj", "run-1")).points == _disk(wb)
    st = StateStore(s.state_dir).load(run_key(a, "proj", "run-1"))
    assert st.legacy_id == "proj/run-1"


def test_a_root_id_given_in_the_config_keeps_the_runs_when_the_root_moves(tmp_path):
    a = str(tmp_path / "alice")
    w = RunWriter(a, "proj", "r", created_ms=T0)
    w.log_many({"x": float(i)} for i in range(5))
    cfg = tmp_path / "g.yaml"
    cfg.write_text(json.dumps({"roots": [{"path": a, "id": "alice-scratch"}], "state_dir": str(tmp_path / "st"),
                               "server": {"url": "http://unused.invalid"}}))
    sink = MemorySink()
    s = Settings.resolve(config_path=str(cfg), environ={})
    assert _pass(s, sink).ok and list(sink.by_sync_id) == ["alice-scratch/proj/r"]
    moved = str(tmp_path / "scratch2")
    os.rename(a, moved)
    cfg.write_text(json.dumps({"roots": [{"path": moved, "id": "alice-scratch"}], "state_dir": str(tmp_path / "st"),
                               "server": {"url": "http://unused.invalid"}}))
    sink.calls.clear()
    assert _pass(Settings.resolve(config_path=str(cfg), environ={}), sink).ok
    assert len(sink.runs) == 1 and sink.calls["send"] == 0


def test_two_roots_with_one_id_are_a_configuration_error(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(json.dumps({"roots": [{"path": str(tmp_path / "a"), "id": "x"}, {"path": str(tmp_path / "b"),
                                                                                 "id": "x"}],
                               "server": {"url": "http://unused.invalid"}, "state_dir": str(tmp_path / "st")}))
    with pytest.raises(ConfigError, match="the same id x"):
        Runner(Settings.resolve(config_path=str(cfg), environ={}), sink=MemorySink())
    cfg.write_text(json.dumps({"roots": [{"path": str(tmp_path / "a"), "id": "../x"}]}))
    with pytest.raises(ConfigError, match="the id of"):
        Settings.resolve(config_path=str(cfg), environ={})
