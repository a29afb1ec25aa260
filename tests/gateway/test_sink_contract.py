"""The contract every sink must pass (sinks/base.py): the same assertions for every sink, the reference
MemorySink always and the MLflow sink on a real MLflow server. Each sink has a small read-back view (what its
server shows: runs, points, files, summary, state, groups); a new sink adds its view to ``sink_and_view``."""
from __future__ import annotations

import io
import json
import math
import sys
import uuid
from typing import Any, Dict, List, Optional, Tuple

import pytest
from conftest import sink_for

from sync_gateway.records import RUN_STATES, MetricDef, Position, Row, RunInfo, RunStatus, Summary
from sync_gateway.sinks.base import GroupMember, GroupView, RunSpec, Sink, SinkRun
from sync_gateway.sinks.memory import MemorySink

T0 = 1_764_150_000_000


class MemoryView:
    """Reads back what the memory server holds."""

    def __init__(self, sink: MemorySink):
        self.sink = sink

    def summary(self, run: SinkRun, key: str) -> Any:
        stored = self.sink._run(run)
        return stored.summary.values.get(key) if stored.summary and key in stored.summary.special else None

    def state(self, run: SinkRun) -> Tuple[Optional[str], Optional[int]]:
        stored = self.sink._run(run)
        return stored.state, stored.end_ms

    def runs_with(self, sync_id: str) -> int:
        return sum(1 for r in self.sink.runs.values() if r.sync_id == sync_id and not r.retired)

    def points(self, run: SinkRun, key: str) -> List[Tuple[int, int, float]]:
        return sorted((step, ts, math.nan if v == "NaN" else v)
                      for s, k, step, ts, v in self.sink._run(run).points if k == key)

    def file(self, run: SinkRun, path: str) -> bytes:
        return self.sink._run(run).files[path]

    def parent_of(self, run: SinkRun) -> Optional[str]:
        return self.sink._run(run).parent

    def group_run(self, project: str, group: str) -> Tuple[str, int, Optional[int]]:
        stored = self.sink.stored(f"group:{project}/{group}")
        return self.sink.by_sync_id[f"group:{project}/{group}"], stored.start_ms, stored.end_ms


class MlflowView:
    def __init__(self, sink: Any):
        self.sink = sink

    def runs_with(self, sync_id: str) -> int:
        project = sync_id.split("/")[0].split(":")[-1]
        quoted = sync_id.replace("'", "\\'")
        res = self.sink._call("POST", "/runs/search", {"experiment_ids": [self.sink.experiment_id(project)],
                                                       "filter": f"tags.`hpc.run_id` = '{quoted}'"})
        return len(res.get("runs") or [])

    def points(self, run: SinkRun, key: str) -> List[Tuple[int, int, float]]:
        return sorted((int(p.get("step", 0)), int(p["timestamp"]), float(p["value"]))
                      for p in self.sink.get_history(run, key))

    def file(self, run: SinkRun, path: str) -> bytes:
        rel = run.artifact_uri[len("mlflow-artifacts:/"):].lstrip("/")
        r = self.sink.http.request("GET", f"/api/2.0/mlflow-artifacts/artifacts/{rel}/{path}")
        assert r.status_code == 200, r.text[:200]
        return r.content

    def _info(self, run_id: str) -> Dict[str, Any]:
        return self.sink._call("GET", "/runs/get", params={"run_id": run_id})["run"]

    def _tags(self, run: SinkRun) -> Dict[str, str]:
        return {t["key"]: t["value"] for t in self._info(run.run_id)["data"].get("tags", [])}

    def summary(self, run: SinkRun, key: str) -> Any:
        """A summary that differs from the last logged value: the metric summary/<key>, or a tag."""
        pts = self.points(run, f"summary/{key}")
        return pts[-1][2] if pts else self._tags(run).get(f"summary.{key}")

    def state(self, run: SinkRun) -> Tuple[Optional[str], Optional[int]]:
        info = self._info(run.run_id)
        tags = {t["key"]: t["value"] for t in info["data"].get("tags", [])}
        end = info["info"].get("end_time")
        return tags.get("hpc.state"), int(end) if end is not None else None

    def parent_of(self, run: SinkRun) -> Optional[str]:
        tags = {t["key"]: t["value"] for t in self._info(run.run_id)["data"].get("tags", [])}
        return tags.get("mlflow.parentRunId")

    def group_run(self, project: str, group: str) -> Tuple[str, int, Optional[int]]:
        found = self.sink.find(self.sink.experiment_id(project), f"group:{project}/{group}")
        info = self._info(found.run_id)["info"]
        end = info.get("end_time")
        return found.run_id, int(info["start_time"]), int(end) if end is not None else None


@pytest.fixture(params=["memory", pytest.param("mlflow", marks=pytest.mark.mlflow)])
def sink_and_view(request):
    if request.param == "memory":
        sink = MemorySink()
        yield sink, MemoryView(sink)
        return
    request.getfixturevalue("mlflow_server")
    sink = sink_for(request.getfixturevalue("settings"))
    yield sink, MlflowView(sink)
    sink.close()


def info(project: str, run_id: str, **kw: Any) -> RunInfo:
    return RunInfo(project=project, run_id=run_id, name=f"name-{run_id}", created_ms=kw.pop("created_ms", T0),
                   **kw)


def rows(n: int, width: int = 3, start: int = 0) -> List[Row]:
    return [Row(i, T0 + i, {f"k{j}": float(i * 10 + j) for j in range(width)}, Position(100 * (i + 1), i + 1))
            for i in range(start, start + n)]


def send_all(sink: Sink, run: SinkRun, stream: str, rs: List[Row], metrics=()) -> int:
    covered, sent = [], 0
    for n, payload in sink.batches(run, stream, rs, metrics):
        covered.append(n)
        sent += sink.send(run, payload)
    assert covered == sorted(covered), "coverage counts must never go down"
    assert not covered or covered[-1] == len(rs), "the last payload covers every row"
    sink.end_run(run)  # as the engine does when the run's sync ends: what a sink held is sent now
    return sent


def test_a_run_is_created_once_and_found_again_after_a_state_loss(sink_and_view):
    sink, view = sink_and_view
    project = "c" + uuid.uuid4().hex[:8]
    spec = RunSpec(f"{project}/r1", info(project, "r1"))
    first = sink.open_run(spec, None)
    saved = json.loads(json.dumps(first.to_state()))  # the engine stores it as JSON
    assert sink.restore(saved).to_state() == first.to_state()
    again = sink.open_run(spec, None)  # the gateway lost its state: found by sync id, not created
    assert again.to_state()["run_id"] == first.to_state()["run_id"]
    assert sink.open_run(spec, saved).to_state()["run_id"] == first.to_state()["run_id"]
    assert view.runs_with(f"{project}/r1") == 1


def test_points_are_covered_in_order_and_a_resend_stores_nothing_new(sink_and_view):
    sink, view = sink_and_view
    project = "c" + uuid.uuid4().hex[:8]
    run = sink.open_run(RunSpec(f"{project}/r", info(project, "r")), None)
    sink.set_metadata(run, info(project, "r", tags=("a",), user="alice"))
    data = rows(700, width=3)  # 2,100 points: more than one request for MLflow
    assert send_all(sink, run, "history", data) == 2100
    send_all(sink, run, "history", data[650:])  # a re-send after a lost ack
    assert view.points(run, "k1") == [(i, T0 + i, float(i * 10 + 1)) for i in range(700)]


def test_a_row_wider_than_one_request_is_covered_only_by_its_last_piece(sink_and_view):
    sink, view = sink_and_view
    project = "c" + uuid.uuid4().hex[:8]
    run = sink.open_run(RunSpec(f"{project}/w", info(project, "w")), None)
    wide = rows(2, width=1500)
    seen = [n for n, p in sink.batches(run, "history", wide)]
    assert seen[-1] == 2 and all(n in (0, 1, 2) for n in seen)
    send_all(sink, run, "history", wide)
    assert len(view.points(run, "k1499")) == 2


def test_non_finite_values_and_step_metrics(sink_and_view):
    sink, view = sink_and_view
    project = "c" + uuid.uuid4().hex[:8]
    run = sink.open_run(RunSpec(f"{project}/n", info(project, "n")), None)
    rs = [Row(0, T0, {"x": math.nan, "val/acc": 0.5, "epoch": 3}, Position(10, 1)),
          Row(1, T0 + 1, {"x": math.inf}, Position(20, 2))]
    send_all(sink, run, "history", rs, (MetricDef("val/*", "epoch"),))
    xs = view.points(run, "x")
    # MLflow's SQL store keeps +inf as the largest double; nothing else may change a value.
    assert math.isnan(xs[0][2]) and xs[1][2] in (math.inf, sys.float_info.max)
    # A key declared with a step metric is shown against that metric's value in its row.
    assert view.points(run, "val/acc") == [(3, T0, 0.5)]


def test_config_summary_files_and_every_state_are_accepted_and_shown(sink_and_view):
    sink, view = sink_and_view
    project = "c" + uuid.uuid4().hex[:8]
    run = sink.open_run(RunSpec(f"{project}/s", info(project, "s")), None)
    assert sink.set_config(run, {"lr": 0.1, "model": {"depth": 4}}) == []
    assert sink.set_config(run, {"lr": 0.1, "model": {"depth": 4}}) == []   # the same again: no change
    refused = sink.set_config(run, {"lr": 0.2, "model": {"depth": 4}})
    assert refused in ([], ["lr"])  # stored anew, or reported: never silently dropped
    sink.set_summary(run, Summary({"best": 0.9, "loss": 0.1, "tag": "text"}, frozenset({"best", "tag"}), {}, T0))
    sink.end_run(run)  # a sink may hold what it was given until the run's sync ends (the MLflow sink does)
    assert view.summary(run, "best") == 0.9 and view.summary(run, "tag") == "text"
    assert view.summary(run, "loss") is None  # the last logged value: nothing to store beside it
    sink.set_summary(run, Summary({"best": 0.95}, frozenset({"best"}), {}, T0 + 1))  # changed: the new one shows
    sink.end_run(run)
    assert view.summary(run, "best") == 0.95
    sink.upload(run, "files/a.txt", io.BytesIO(b"hello"), 5)
    sink.upload(run, "files/a.txt", io.BytesIO(b"hello again"), 11)  # replaced
    assert view.file(run, "files/a.txt") == b"hello again"
    for i, state in enumerate(RUN_STATES):
        sink.set_state(run, RunStatus(state, None if state == "active" else T0 + 5 + i, T0))
        shown, end = view.state(run)
        assert shown == state and (state == "active" or end == T0 + 5 + i), (state, shown, end)


def test_a_run_that_ends_again_shows_its_new_end(sink_and_view):
    sink, view = sink_and_view
    project = "c" + uuid.uuid4().hex[:8]
    run = sink.open_run(RunSpec(f"{project}/e", info(project, "e")), None)
    sink.set_state(run, RunStatus("finished", T0 + 3_100, T0 + 3_100))
    sink.set_state(run, RunStatus("active", None, T0 + 5_000))        # resumed
    assert view.state(run)[0] == "active"
    sink.set_state(run, RunStatus("finished", T0 + 12_700, T0 + 12_700))
    assert view.state(run) == ("finished", T0 + 12_700)


def test_a_group_spans_its_members_and_is_created_once(sink_and_view):
    sink, view = sink_and_view
    project = "c" + uuid.uuid4().hex[:8]
    members = []
    for i, (start, end) in enumerate([(T0 + 3000, T0 + 20_000), (T0 + 1000, T0 + 21_000), (T0 + 2000, None)]):
        run = sink.open_run(RunSpec(f"{project}/rank{i}", info(project, f"rank{i}", created_ms=start,
                                                                   group="job-7")), None)
        members.append(GroupMember(f"{project}/rank{i}", "finished" if end else "active", start, end, run))
    saved = json.loads(json.dumps(sink.sync_group(GroupView(project, "job-7", tuple(members)), None)))
    parent_id, start, _ = view.group_run(project, "job-7")
    assert start == T0 + 1000  # the earliest member, whichever was synced first
    for m in members:
        assert view.parent_of(m.run) == parent_id
    done = members[:2] + [GroupMember(members[2].key, "finished", T0 + 2000, T0 + 19_000, members[2].run)]
    saved = sink.sync_group(GroupView(project, "job-7", tuple(done)), saved)
    assert view.group_run(project, "job-7") == (parent_id, T0 + 1000, T0 + 21_000)  # ends with the last
    sink.sync_group(GroupView(project, "job-7", tuple(done)), None)  # state lost: found, not created again
    assert view.runs_with(f"group:{project}/job-7") == 1


def test_a_retired_run_keeps_its_content_and_the_next_open_creates_a_new_one(sink_and_view):
    sink, view = sink_and_view
    project = "c" + uuid.uuid4().hex[:8]
    spec = RunSpec(f"{project}/re", info(project, "re"))
    old = sink.open_run(spec, None)
    send_all(sink, old, "history", rows(3, width=1))
    sink.retire_run(old, "history was rewritten")
    sink.retire_run(old, "history was rewritten")  # idempotent
    new = sink.open_run(spec, None)
    assert new.to_state()["run_id"] != old.to_state()["run_id"]
    assert len(view.points(old, "k0")) == 3 and view.points(new, "k0") == []
    assert view.runs_with(f"{project}/re") == 1
