"""An upgraded gateway goes on from the state files of hpc-sync 0.1 (state version 1) without
re-sending anything. The documents below have the exact shape 0.1 wrote (captured from its gateway);
only the file signatures are filled in from the run directory the test writes."""
from __future__ import annotations

import json
import os

from _runwriter import RunWriter

from sync_gateway.engine.runner import Runner
from sync_gateway.engine.state import STATE_VERSION, StateStore
from sync_gateway.records import root_id
from sync_gateway.settings import Settings
from sync_gateway.sinks.memory import MemorySink, StoredRun

T0 = 1_764_150_000_000


class MlflowShaped(MemorySink):
    """The reference sink under MLflow's kind, holding the run the old gateway created (id ``r1``)."""

    kind = "mlflow"


def _v1_state(run_dir: str):
    def sig(name):
        s = os.stat(os.path.join(run_dir, name))
        return [s.st_size, s.st_mtime_ns]

    files = ["config.json", "exit.json", "files/a.txt", "history.jsonl", "output.log", "run.json",
             "summary.json", "system.jsonl"]
    index_sig = "|".join(f"{n}:{sig(n)[0]}:{sig(n)[1]}" for n in sorted(files))
    run = {"server": {"run_id": "r1", "experiment_id": "0", "artifact_uri": "mlflow-artifacts:/0/x/artifacts"},
           "cursors": {"history.jsonl": {"offset": sig("history.jsonl")[0], "seq": 50, "records": 50},
                       "system.jsonl": {"offset": sig("system.jsonl")[0], "seq": 1, "records": 1}},
           "params": {"lr": "0.1", "net.depth": "4"}, "tags_sig": sig("run.json"), "config_sig": sig("config.json"),
           "summary_sig": sig("summary.json"),
           "artifacts": {n: sig(n) for n in ("config.json", "files/a.txt", "output.log", "run.json", "summary.json")},
           "state": "FINISHED", "hpc_state": "finished", "last_error": None, "last_sync_ms": T0 + 20_000,
           "corrupt_lines": 0, "skipped_values": 3, "refused_params": []}
    index = {"proj/r1": {"sig": index_sig, "hpc_state": "finished", "status": "FINISHED", "error": None,
                         "hb_ms": T0, "group": ["proj", "job-1"]}}
    group = {"server": {"run_id": "r0", "experiment_id": "0", "artifact_uri": "mlflow-artifacts:/0/x/artifacts"},
             "cursors": {}, "params": {}, "tags_sig": None, "config_sig": None, "summary_sig": None, "artifacts": {},
             "state": "FINISHED", "hpc_state": None, "last_error": None, "last_sync_ms": None, "corrupt_lines": 0,
             "skipped_values": 0, "refused_params": [], "project": "proj", "group": "job-1"}
    return run, index, group


def _write(path, doc):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f)


def test_version_1_state_is_migrated_and_nothing_is_sent_again(tmp_path):
    root = tmp_path / "runs"
    w = RunWriter(str(root), "proj", "r1", group="job-1", config={"lr": 0.1, "net": {"depth": 4}}, created_ms=T0)
    for i in range(50):
        w.log({"loss": 1.0 / (i + 1)}, ts_ms=T0 + i)
    w.system({"cpu/system_percent": 10.0}, step=0, ts_ms=T0 + 100)
    w.summary({"best": 0.5}, set_by_hand=["best"])
    w.save("a.txt", b"x")
    w.raw("output.log", b"hello\n")
    w.exit(0, end_ms=T0 + 9000)
    state_dir = tmp_path / "state"
    run, index, group = _v1_state(w.dir)
    _write(str(state_dir / "runs" / "proj" / "r1.json"), run)
    _write(str(state_dir / "groups" / (StateStore.group_key("proj", "job-1") + ".json")), group)

    store = StateStore(str(state_dir))
    st = store.load("proj/r1")
    assert st.sink_kind == "mlflow" and st.sink["run_id"] == "r1" and st.sink["params"] == run["params"]
    assert st.cursors["history"].offset == run["cursors"]["history.jsonl"]["offset"]
    assert st.documents == {"metadata": run["tags_sig"], "config": run["config_sig"], "summary": run["summary_sig"]}
    assert st.state == "finished" and st.artifacts == run["artifacts"]

    sink = MlflowShaped()
    sink.runs["r1"] = StoredRun("proj/r1")
    sink.runs["r0"] = StoredRun("group:proj/job-1")
    settings = Settings(roots=[str(root)], server_url="http://unused.invalid", state_dir=str(state_dir))
    with Runner(settings, sink=sink) as r:  # without index.json: every run's state is read and used
        rep = r.run_pass()
    assert rep.ok, rep
    assert rep.runs_synced == 1 and rep.points_sent == 0
    assert sink.calls["find_or_create"] == 0  # the server run came from the migrated state
    for call in ("send", "upload", "set_config", "set_metadata", "set_summary", "set_state"):
        assert sink.calls[call] == 0, call
    assert not sink.runs["r1"].points
    # moved to the run's key (root id/project/run id), remembering the key it had (docs/gateway.md)
    assert not (state_dir / "runs" / "proj" / "r1.json").exists()
    saved = json.load(open(state_dir / "runs" / root_id(str(root)) / "proj" / "r1.json"))
    assert saved["state_version"] == STATE_VERSION and saved["sink"]["run_id"] == "r1"
    assert saved["legacy_id"] == "proj/r1"

    _write(str(state_dir / "index.json"), index)  # a version-1 index: the run is simply unchanged
    sink.calls.clear()
    with Runner(settings, sink=sink) as r:
        rep = r.run_pass()
    assert rep.ok and rep.runs_unchanged == 1 and not sink.calls


def test_version_2_state_written_before_the_fault_fields_still_loads(tmp_path):
    """Fields added later (cursor fingerprints, quarantine, notes, backoff, liveness) have defaults."""
    store = StateStore(str(tmp_path))
    _write(store._run_path("p/r"), {
        "sink_kind": "mlflow", "sink": {"run_id": "x", "experiment_id": "1", "artifact_uri": "", "params": {},
                                        "refused_params": [], "skipped_values": 0},
        "reader": "hpc", "cursors": {"history": {"offset": 120, "seq": 3, "records": 3}}, "documents": {},
        "artifacts": {}, "state": "active", "last_error": None, "last_sync_ms": T0, "corrupt_lines": 0,
        "refused_config": [], "state_version": 2})
    _write(os.path.join(str(tmp_path), "index.json"), {"state_version": 2, "runs": {"p/r": {
        "sig": "s", "state": "active", "error": None, "alive_ms": T0, "start_ms": T0, "end_ms": None,
        "group": None}}})
    st = store.load("p/r")
    assert st.cursors["history"].offset == 120 and st.cursors["history"].fp is None
    assert st.quarantined == [] and st.notes == [] and st.retry_at_ms == 0 and st.failures == 0
    ent = store.load_index()["p/r"]
    assert ent.live_sig is None and ent.retry_at_ms == 0 and ent.sig == "s"
