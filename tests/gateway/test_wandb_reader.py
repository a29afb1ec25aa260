"""The W&B reader on hand-made runs, through the engine into the reference MemorySink (no server): a record
over 64 MiB, a config nested hundreds of levels, an empty history key, and the end time of a finished run
(issue 21, items 4, 5, 6 and the W&B half of 11). Each run must sync whole, once, and finish."""
from __future__ import annotations

import json

import _wandbrecords as wr
import pytest
from _wandbwriter import need_wandb

from sync_gateway.engine.runner import Runner
from sync_gateway.engine.state import StateStore
from sync_gateway.settings import Settings
from sync_gateway.sinks.memory import MemorySink, StoredRun

T0 = 1_767_225_600.0   # 2026-01-01T00:00:00Z


@pytest.fixture(autouse=True)
def _wandb_installed():
    need_wandb()


def _sync(tmp_path, root: str, sink: MemorySink):
    settings = Settings(roots=[root], server_url="http://unused.invalid", state_dir=str(tmp_path / "state"))
    with Runner(settings, sink=sink) as runner:
        rep = runner.run_pass()
    return rep, StateStore(settings.state_path)


def _only_run(sink: MemorySink) -> StoredRun:
    (stored,) = [r for r in sink.runs.values() if not r.sync_id.startswith("group:")]
    return stored


def _points(stored: StoredRun, key: str):
    return sorted((step, ts, v) for s, k, step, ts, v in stored.points if s == "history" and k == key)


def _rows(steps, start=0):
    return [wr.history(i, T0 + 1 + i * 0.01, {"loss": float(i)}) for i in range(start, start + steps)]


def test_a_record_over_64_mib_is_skipped_and_counted_and_the_run_finishes(tmp_path):
    """wandb writes one record for a huge log(): it used to fail the run on every pass (100 of 201 points)."""
    root = str(tmp_path / "runs")
    huge = wr.history(100, T0 + 2, {}, raw={"blob": '"' + "x" * (65 << 20) + '"'})
    wr.write_run(root, "big1", [wr.run("big1", "p", T0)] + _rows(100) + [huge] + _rows(100, start=101)
                 + [wr.exit_(0, 5)])
    del huge
    sink = MemorySink()
    rep, store = _sync(tmp_path, root, sink)
    assert rep.ok and rep.runs_synced == 1, rep
    stored = _only_run(sink)
    assert [s for s, _, _ in _points(stored, "loss")] == list(range(100)) + list(range(101, 201))
    assert _points(stored, "blob") == []
    assert stored.state == "finished"
    (state,) = store.all_run_states().values()
    assert state.corrupt_lines == 1          # counted (status shows it)
    again, _ = _sync(tmp_path, root, sink)
    assert again.ok and again.runs_synced == 0 and again.points_sent == 0


def _nested(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@pytest.mark.parametrize("levels", [600, 5000])
def test_a_config_nested_hundreds_of_levels_keeps_the_reader_state_flat(tmp_path, levels):
    """Saving the reader state used to deep-copy the config (RecursionError: the run synced nothing). A
    config too deep even for Python's JSON parser (5000) is sent as its JSON text."""
    root = str(tmp_path / "runs")
    wr.write_run(root, "deep1", [wr.run("deep1", "p", T0, config={"lr": "0.1", "deep": _nested(levels)})]
                 + _rows(20) + [wr.exit_(0, 3)])
    sink = MemorySink()
    rep, store = _sync(tmp_path, root, sink)
    assert rep.ok and rep.runs_synced == 1, rep
    stored = _only_run(sink)
    assert len(_points(stored, "loss")) == 20 and stored.state == "finished"
    assert stored.config["lr"] == 0.1
    deep = stored.config["deep"]
    if levels == 5000:
        assert deep == _nested(levels)
    else:
        depth = 0
        while isinstance(deep, dict):
            deep, depth = deep["a"], depth + 1
        assert (depth, deep) == (levels, 1)
    (state,) = store.all_run_states().values()

    def depth_of(v, d=0):
        return max([depth_of(x, d + 1) for x in (v.values() if isinstance(v, dict) else v)], default=d + 1) \
            if isinstance(v, (dict, list)) else d

    assert depth_of(state.reader_state) <= 4, "the reader state must stay small and flat"
    assert state.reader_state["config"]["deep"] == _nested(levels)   # kept as the JSON text wandb wrote


def test_an_empty_history_key_is_skipped_with_a_note(tmp_path, caplog):
    """A hand-made file: the key used to raise IndexError and pin the run at that record."""
    root = str(tmp_path / "runs")
    odd = wr.history(1, T0 + 1.5, {"loss": 1.0}, raw={"": "7"})
    wr.write_run(root, "empty1", [wr.run("empty1", "p", T0)] + _rows(1) + [odd] + _rows(1, start=2)
                 + [wr.exit_(0, 3)])
    sink = MemorySink()
    rep, _ = _sync(tmp_path, root, sink)
    assert rep.ok and rep.runs_synced == 1, rep
    stored = _only_run(sink)
    assert [s for s, _, _ in _points(stored, "loss")] == [0, 1, 2]
    assert {k for _, k, _, _, _ in stored.points} == {"loss"}
    assert stored.state == "finished"
    assert any("without a key" in r.getMessage() for r in caplog.records)


def test_a_finished_run_ends_at_the_last_thing_it_did(tmp_path):
    """W&B's exit record holds a whole-second runtime: start + runtime is up to 1 s early. The end is the
    latest of that, the last history row and the last system sample."""
    root = str(tmp_path / "runs")
    rows = [wr.history(i, T0 + 0.5 + i, {"loss": float(i)}) for i in range(12)] + \
        [wr.history(12, T0 + 12.7, {"loss": 12.0})]
    wr.write_run(root, "end1", [wr.run("end1", "p", T0)] + rows + [wr.exit_(0, 12)])
    wr.write_run(root, "end2", [wr.run("end2", "p", T0)] + rows + [wr.stats(T0 + 12.9, {"cpu": 5.0}),
                                                                     wr.exit_(0, 12)], date="20260101_000001")
    wr.write_run(root, "end3", [wr.run("end3", "p", T0)] + rows[:3] + [wr.exit_(3, 20)], date="20260101_000002")
    sink = MemorySink()
    rep, _ = _sync(tmp_path, root, sink)
    assert rep.ok and rep.runs_synced == 3, rep
    ends = {r.sync_id.rsplit("/", 1)[1]: (r.state, r.end_ms) for r in sink.runs.values()
            if not r.sync_id.startswith("group:")}
    t0_ms = int(T0 * 1000)
    assert ends == {"end1": ("finished", t0_ms + 12_700),       # the last row, not start + 12 s
                    "end2": ("finished", t0_ms + 12_900),       # the last system sample
                    "end3": ("failed", t0_ms + 20_000)}         # start + runtime, after its last row


def test_a_version_2_reader_state_is_converted_not_scanned_again():
    """States saved before the flat layout keep their scan position: no run is read again on upgrade."""
    from sync_gateway.readers.wandb._scan import STATE_VERSION, fresh_state

    state = {"v": 2, "parts": ["offline-run-20260101_000000-a"], "scan": 123_456,
             "config": {"lr": 0.1, "model": {"depth": 3}}, "summary": {"loss": "0.5"},
             "last": {"loss": 0.5, "img": {"_type": "image-file"}}, "versions": {"config": 99}}
    fresh_state(state, ("offline-run-20260101_000000-a", "offline-run-20260102_000000-a"))   # resumed since
    assert state["v"] == STATE_VERSION and state["scan"] == 123_456
    assert {k: json.loads(v) for k, v in state["config"].items()} == {"lr": 0.1, "model": {"depth": 3}}
    assert state["last"] == {"loss": 0.5} and state["summary"] == {"loss": "0.5"}
    assert state["parts"] == ["offline-run-20260101_000000-a", "offline-run-20260102_000000-a"]
    other = {"v": 1, "scan": 5}
    fresh_state(other, ("x",))
    assert other["scan"] == 0                    # an unknown version: scanned again
