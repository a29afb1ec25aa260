"""Issue 21, server side, against the real MLflow server through the fault proxy: an answer counts only when
it is complete and parses (item 1); runs/create is sent again while a search proves it created nothing
(item 12); the losing side of a create race is told what happened (item 13)."""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace

import pytest
from _faultproxy import FaultProxy
from _ids import key as run_key
from _runwriter import RunWriter
from conftest import history, server_run, sink_for, sync_once, tagged_runs

from sync_gateway.errors import RunDeleted, ServerUnavailable
from sync_gateway.records import Position, Row, RunInfo
from sync_gateway.sinks.base import RunSpec

T0 = 1_764_150_000_000


def _run(root, project, run_id, n=1000):
    w = RunWriter(root, project, run_id)
    w.log_many({"x": float(i)} for i in range(n))
    w.exit(0)
    return w


def _active(sink, project, run_id):
    return tagged_runs(sink, project, run_id)


def _exactly_once(settings, project, run_id, n=1000):
    sink = sink_for(settings)
    assert len(_active(sink, project, run_id)) == 1, "a second MLflow run was created"
    got = [v for _, _, v in history(sink, server_run(sink, project, run_id), "x")]
    assert got == [float(i) for i in range(n)], f"{len(got)} points on the server, {n} on disk"


# -- item 1: a cut-off answer is a fault, never a success ------------------------------------------------
def test_a_search_answer_cut_after_its_status_line_does_not_read_as_no_runs(settings, root, project):
    """After a state loss the run is found again by its tag: a search answered "200" and nothing else
    (the connection closed after the status line) used to read as "no runs" and create a second run."""
    _run(root, project, "cut")
    assert sync_once(settings).ok
    shutil.rmtree(settings.state_path)  # the state is lost: the gateway must find the run by its tag
    with FaultProxy(settings.server_url, cut_first=2, match="/runs/search") as proxy:
        rep = sync_once(replace(settings, server_url=proxy.url))
    assert proxy.cut == 2 and rep.ok, rep  # retried inside the request, as a lost answer is
    _exactly_once(settings, project, "cut")


@pytest.mark.parametrize("match, cuts", [("/runs/log-batch", 3), ("/runs/update", 3), ("/runs/create", 1)])
def test_any_answer_cut_after_its_status_line_is_retried_and_stores_nothing_twice(settings, root, project, match,
                                                                                   cuts):
    _run(root, project, "cuts")
    with FaultProxy(settings.server_url, cut_first=3, match=match) as proxy:
        rep = sync_once(replace(settings, server_url=proxy.url))
    # log-batch and update: retried inside the request; create: not resent blindly, the run it created is
    # found by its tag (one cut, then no more creates)
    assert proxy.cut == cuts and rep.ok, rep
    _exactly_once(settings, project, "cuts")


def test_a_deadline_firing_inside_the_headers_is_a_fault_not_a_success(settings, root, project):
    """A batch the server never got, answered by headers trickling a byte a second: the deadline fires
    mid-headers. It used to come back as "200" with an empty body, the cursor moved, the points were lost."""
    _run(root, project, "slowhdr", n=10)
    with FaultProxy(settings.server_url, trickle_first=1, body_match=b'"metrics"') as proxy:
        t0 = time.monotonic()
        rep = sync_once(replace(settings, server_url=proxy.url, request_deadline_s=3.0, retries=0))
        took_s = time.monotonic() - t0
    assert proxy.trickled == 1
    err = rep.errors[run_key(root, project, "slowhdr")]
    assert "deadline" in err and "request_deadline_s" in err, rep
    assert took_s < 30, f"the pass took {took_s:.0f} s"
    assert sync_once(settings, clock=lambda: time.time() + 10 ** 4).ok  # nothing was lost: the next pass sends it
    _exactly_once(settings, project, "slowhdr", n=10)


def test_a_2xx_answer_that_is_not_json_is_a_retryable_fault(settings, root, project):
    sink = sink_for(settings)
    real = sink.http.request

    def login_page(method, path, **kw):
        r = real(method, path, **kw)
        if "/runs/search" in path:
            r._content = b"<html>please log in</html>"
            r.headers["Content-Type"] = "text/html"
        return r

    eid = sink.experiment_id(project)
    sink.http.request = login_page
    with pytest.raises(ServerUnavailable, match="not a JSON object") as e:
        sink.find(eid, run_key(root, project, "nothing"))  # never "no runs"
    assert "text/html" in str(e.value)


# -- item 12: runs/create is sent again while the search proves it created nothing -------------------------
@pytest.mark.parametrize("fault", [dict(fail_first=2, status=503), dict(fail_first=2, status=500),
                                   dict(fail_first=1, status=429, retry_after="1"),
                                   dict(stall_first=1, stall_s=4.0)], ids=["503", "500", "429", "stall"])
def test_a_failed_create_that_created_nothing_is_sent_again_in_the_same_pass(settings, root, project, fault):
    _run(root, project, "mk")
    s = replace(settings, retries=3, timeout_s=2.0)
    with FaultProxy(settings.server_url, match="/runs/create", **fault) as proxy:
        t0 = time.monotonic()
        rep = sync_once(replace(s, server_url=proxy.url))
        took_s = time.monotonic() - t0
    assert rep.ok, rep
    assert proxy.failed + proxy.stalled == fault.get("fail_first", 0) + fault.get("stall_first", 0)
    if fault.get("retry_after"):
        assert took_s >= 1.0  # Retry-After: 1 was honoured
    _exactly_once(settings, project, "mk")


def test_retry_after_beyond_the_request_deadline_is_not_waited_for(settings, root, project):
    _run(root, project, "later", n=5)
    with FaultProxy(settings.server_url, fail_first=10, status=429, retry_after="3600", match="/runs/create") as proxy:
        t0 = time.monotonic()
        rep = sync_once(replace(settings, server_url=proxy.url, retries=3, request_deadline_s=5.0))
        took_s = time.monotonic() - t0
    assert proxy.failed == 1 and took_s < 30  # one create; an hour's wait is not within the deadline
    assert "retried by the next pass" in rep.errors[run_key(root, project, "later")]


# -- item 13: the losing side of a create race ----------------------------------------------------------
def test_the_loser_of_a_create_race_is_told_it_lost_not_that_its_run_was_deleted(settings, root, project, caplog):
    a, b = sink_for(settings), sink_for(settings)
    spec = RunSpec(f"{project}/race", RunInfo(project, "race", "race", T0))
    real_find = b.runs.find
    b.runs.find = lambda eid, sid: None  # b searched before a created: both create
    ra = a.open_run(spec, None)
    rb = b.open_run(spec, None)
    b.runs.find = real_find
    eid = a.experiment_id(project)
    created = a._call("POST", "/runs/search", {"experiment_ids": [eid], "run_view_type": "ALL"})["runs"]
    assert len(created) == 2
    winner = min(r["info"]["run_id"] for r in created)
    loser = next(r["info"]["run_id"] for r in created if r["info"]["run_id"] != winner)
    assert winner in (ra.run_id, rb.run_id)
    # The gateway still holding the loser sends a batch to it (the race was decided meanwhile):
    stale = a.restore({"run_id": loser, "experiment_id": eid})
    rows = [Row(i, T0 + i, {"x": float(i)}, Position(i + 1, i + 1)) for i in range(5)]
    (_, payload), = list(a.batches(stale, "history", rows))
    with pytest.raises(RunDeleted) as e:
        a.send(stale, payload)  # a small batch waits for the run's final log-batch: sent when its sync ends
        a.end_run(stale)
    msg = str(e.value)
    assert "won the race" in msg and winner in msg and loser in msg, msg
    assert "deleted" not in msg and "trash" not in msg, msg
    # ... and its next pass adopts the winner (its run state was reset, the run is found by its tag):
    again = a.open_run(spec, None)
    assert again.run_id == winner


def test_a_gateway_whose_run_lost_the_race_says_so_and_syncs_into_the_winner(settings, root, project, caplog):
    w = RunWriter(root, project, "lost")
    w.log_many({"x": float(i)} for i in range(20))
    assert sync_once(settings).ok
    sink = sink_for(settings)
    ours = server_run(sink, project, "lost")
    eid = sink.experiment_id(project)
    # Another gateway created a twin at the same moment and won: it marked ours as its duplicate.
    twin = sink._call("POST", "/runs/create", {"experiment_id": eid, "start_time": T0, "tags": [
        {"key": "hpc.run_id", "value": run_key(root, project, "lost")}]})["run"]["info"]["run_id"]
    sink.runs._mark_duplicate(ours.run_id, twin, run_key(root, project, "lost"))
    w.log_many({"x": float(i)} for i in range(20, 25))
    w.exit(0)
    with caplog.at_level(logging.INFO):
        rep = sync_once(settings, clock=lambda: time.time() + 10)  # within SETTLE_S: ours is still checked
    assert rep.ok, rep
    said = " ".join(m for m in caplog.messages if run_key(root, project, "lost") in m)
    assert "won the race" in said and "deleted" not in said and "trash" not in said, said
    assert server_run(sink, project, "lost").run_id == twin
    assert [v for _, _, v in history(sink, server_run(sink, project, "lost"), "x")] == [float(i) for i in range(25)]
