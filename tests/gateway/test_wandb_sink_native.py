"""A native W&B offline run, written by the real ``wandb`` package (two fragments: a job ended with 143, then
its requeue resuming the same id), synced with ``server.kind: wandb`` to a real W&B-protocol server
(OpenWandb): what the server stored and what went over the wire equal what wandb logged, once."""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import replace
from typing import Any, Dict, List

import _wandbsink
import _wandbwriter as wb
import pytest
from _faultproxy import FaultProxy
from _ids import wandb_name
from _wandbsink import ENTITY, file_streams, graphql_ops, replay, stored, sync_once

openwandb, wb_settings = _wandbsink.openwandb, _wandbsink.wb_settings  # the fixtures

pytestmark = [pytest.mark.wandb_server, pytest.mark.slow]  # the real wandb writes two runs (about 8 s here)

NATIVE = """
run = wandb.init(project=args["project"], id=args["id"], resume="allow", config={"lr": 0.1, "model": {"depth": 3}},
                 group="g1", job_type="train", tags=["native", "wb"], notes="from W&B", name="native",
                 settings=wandb.Settings(x_stats_sampling_interval=0.5))
run.define_metric("batch")
run.define_metric("val/*", step_metric="batch", summary="max")
if args["save"]:
    with open("ckpt.txt", "w") as f:
        f.write("weights-1")
    wandb.save("ckpt.txt", policy="now")
for i in range(args["rows"]):
    j = args["base"] + i
    run.log({"loss": 1.0 / (j + 1), "acc": j / 100, "batch": j * 10, "ok": j % 2 == 0, "text": f"t{j}"})
    if i % 5 == 0:
        run.log({"val/acc": (j % 7) / 10, "batch": j * 10}, commit=False)
run.summary["best"] = args["best"]
run.config.update({"extra": args["base"]}, allow_val_change=True)
time.sleep(1.2)    # a few system samples
run.finish(exit_code=args["code"])
"""


@pytest.fixture(autouse=True)
def _wandb_installed():
    wb.need_wandb()


def _via(settings, proxy):
    return replace(settings, server_url=proxy.url)


def _pass(openwandb, settings):
    """One sync pass through a recording proxy: (report, requests recorded)."""
    with FaultProxy(openwandb.url, match="/nothing", record=True, forwarded_host=True) as proxy:
        rep, _ = sync_once(_via(settings, proxy))
        return rep, list(proxy.records)


def _summary(fragment: str) -> Dict[str, Any]:
    """The run's summary as wandb recorded it: its summary records applied in order."""
    out: Dict[str, Any] = {}
    for rec in wb.records(wb.wandb_file(fragment), ("summary",)):
        for item in rec.summary.update:
            key = "/".join(item.nested_key) if len(item.nested_key) else item.key
            if not key.startswith("_wandb"):
                out[key] = json.loads(item.value_json)
    return out


def _system_keys(fragment: str) -> set:
    return {"system." + i.key for rec in wb.records(wb.wandb_file(fragment), ("stats",)) for i in rec.stats.item}


def _check_history(sent: List[str], rows: List[Dict[str, Any]], shift: int) -> None:
    """Each history line is wandb's row: the same keys and values, its step continued by ``shift``."""
    assert len(sent) == len(rows)
    for line, row in zip(sent, rows):
        got = json.loads(line)
        assert got["_step"] == row["_step"] + shift
        assert got["_timestamp"] == pytest.approx(row["_timestamp"], abs=1e-3)
        if not shift:  # a resumed fragment's own _runtime restarts at 0; on W&B it continues the run's
            assert got["_runtime"] == pytest.approx(row["_runtime"], abs=0.05)
        mine = {k: v for k, v in got.items() if k not in ("_step", "_timestamp", "_runtime")}
        assert mine == {k: v for k, v in row.items() if k not in ("_step", "_timestamp", "_runtime")}


def test_a_native_wandb_run_and_its_requeue_sync_as_logged_once(openwandb, wb_settings, root, project):
    work = os.path.join(root, "alice", "job")
    run_id = "nat" + uuid.uuid4().hex[:8]
    args = {"project": project, "id": run_id, "rows": 20, "base": 0, "code": 143, "best": 0.5, "save": True}
    wb.write(work, NATIVE, args)
    (first,) = wb.fragments(work)
    rows1 = wb.history_rows(wb.wandb_file(first))
    assert len(rows1) == 20

    rep, recs1 = _pass(openwandb, wb_settings)
    assert rep.errors == {} and rep.runs_synced == 1, rep
    ops = graphql_ops(recs1)
    meta = [v for n, v in ops if n == "UpsertBucket" and "groupName" in v][-1]
    assert (meta["name"], meta["project"], meta["entity"]) == (wandb_name(root, run_id), project, ENTITY)
    assert (meta["groupName"], meta["jobType"], meta["tags"]) == ("g1", "train", ["native", "wb"])
    assert (meta["displayName"], meta["notes"]) == ("native", "from W&B")
    _check_history(replay(recs1, wandb_name(root, run_id), "wandb-history.jsonl"), rows1, 0)
    events = [json.loads(x) for x in replay(recs1, wandb_name(root, run_id), "wandb-events.jsonl")]
    assert events, "wandb sampled system metrics"
    sent_keys = {k for e in events for k in e if k.startswith("system.")}
    assert sent_keys == _system_keys(first), "system metrics keep wandb's own names (one table, both ways)"
    final = file_streams(recs1)[-1][1]
    assert final["complete"] is True and final["exitcode"] != 0, "exit 143: W&B shows it failed, not running"
    assert "ckpt.txt" in final["uploaded"]

    db = stored(openwandb)
    run = db.run(wandb_name(root, run_id))
    assert run["state"] != "running"
    assert (run["display_name"], run["tags"], run["notes"]) == ("native", ["native", "wb"], "from W&B")
    config = {k: v for k, v in run["config"].items() if k != "_wandb"}
    assert config == {"lr": {"value": 0.1, "desc": None}, "model": {"value": {"depth": 3}, "desc": None},
                      "extra": {"value": 0, "desc": None}}
    metrics = run["config"]["_wandb"]["value"]["m"]
    assert {"1": "batch"} in metrics and any(m.get("2") == "val/*" and m.get("7") == [2] for m in metrics)
    assert db.file(ENTITY, project, wandb_name(root, run_id), "ckpt.txt") == b"weights-1"

    # The requeued job resumes the same id offline: a second fragment, its steps starting at 0 again.
    time.sleep(1.1)  # fragment directories are named by the second they started
    wb.write(work, NATIVE, {**args, "rows": 15, "base": 20, "code": 0, "best": 0.7, "save": False})
    second = wb.fragments(work)[1]
    rows2 = wb.history_rows(wb.wandb_file(second))
    assert [r["_step"] for r in rows2][:1] == [0] and len(rows2) == 15

    rep, recs2 = _pass(openwandb, wb_settings)
    assert rep.errors == {}, rep.errors
    hist = [b["files"]["wandb-history.jsonl"] for _, b in file_streams(recs2) if "wandb-history.jsonl" in b["files"]]
    assert hist[0]["offset"] == 20, "the requeue's lines go after the first job's, never over them"
    both = replay(recs1 + recs2, wandb_name(root, run_id), "wandb-history.jsonl")
    _check_history(both[:20], rows1, 0)
    _check_history(both[20:], rows2, 20)
    assert file_streams(recs2)[-1][1]["exitcode"] == 0

    expected = sorted((k, s + shift, float(v)) for rows, shift in ((rows1, 0), (rows2, 20)) for r in rows
                      for k, v in r.items() for s in [r["_step"]]
                      if not k.startswith("_") and isinstance(v, (int, float)) and not isinstance(v, bool))
    got = sorted((k, s, v) for k, s, v, _ in db.metrics(wandb_name(root, run_id)) if isinstance(v, float) and k in
                 {"loss", "acc", "batch", "val/acc"})
    assert got == expected, "every logged number stored once, at its step"
    run = db.run(wandb_name(root, run_id))
    assert run["state"] == "finished" and db.runs_in(project) == [wandb_name(root, run_id)]
    assert run["config"]["extra"] == {"value": 20, "desc": None}, "the requeue's config update"
    logged = _summary(second)
    user = {k: v for k, v in logged.items() if not k.startswith("_")}
    # OpenWandb keeps scalar summary values only, and none of wandb's own _keys: those are checked on the wire
    assert run["summary"] == {k: v for k, v in user.items() if not isinstance(v, dict)}
    summary = json.loads([b for _, b in file_streams(recs2) if "wandb-summary.json" in b["files"]][-1]
                         ["files"]["wandb-summary.json"]["content"][0])
    assert {k: v for k, v in summary.items() if not k.startswith("_")} == user, \
        "the summary as wandb recorded it, a define_metric policy as {'max': v}"
    assert summary["_step"] == logged["_step"] + 20, "the summary's _step is the run's newest step"
    assert summary["_timestamp"] == pytest.approx(logged["_timestamp"], abs=1e-3)

    # Nothing new: nothing sent.
    rep, recs3 = _pass(openwandb, wb_settings)
    assert rep.errors == {} and rep.runs_unchanged == 1
    assert recs3 == [], [r.path for r in recs3]
