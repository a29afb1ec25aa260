"""hpc.init starts the monitor and finish stops it before exit.json."""
from __future__ import annotations

import os

import psutil
from monitor_helpers import read_records, wait_records


def _alive(p: psutil.Process) -> bool:
    # A child may exit between children() and status(): a gone child is not alive
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_run_records_system_metrics_and_they_are_complete_before_exit_json(root):
    import hpc

    before = {p.pid for p in psutil.Process().children()}
    run = hpc.init(project="p", dir=root,
                   settings={"stats": True, "stats_sample_s": 0.2, "stats_average_s": 0.4})
    wait_records(os.path.join(run.dir, "system.jsonl"), 2)  # the start record and a first full window
    hpc.finish()
    system = os.path.join(run.dir, "system.jsonl")
    records = read_records(system)
    assert records and "cpu/process_percent" in records[-1]["values"]
    assert os.path.getmtime(system) <= os.path.getmtime(os.path.join(run.dir, "exit.json"))
    assert {p.pid for p in psutil.Process().children() if _alive(p)} <= before


def test_a_short_run_gets_its_start_and_its_end_at_the_default_intervals(root):
    """2 s sampling and 30 s windows (the defaults): a run of a few seconds used to get no record at all."""
    import hpc

    run = hpc.init(project="p", dir=root, settings={"stats": True})
    wait_records(os.path.join(run.dir, "system.jsonl"), 1)  # the start record, long before a 30 s window
    hpc.finish()
    records = read_records(os.path.join(run.dir, "system.jsonl"))
    assert len(records) == 2, records
    start, end = records
    assert start["ts_ms"] < end["ts_ms"] and [start["step"], end["step"]] == [0, 1]
    assert "cpu/process_percent" in start["values"] and "cpu/process_percent" in end["values"]
