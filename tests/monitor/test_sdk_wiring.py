"""hpc.init starts the monitor and finish stops it before exit.json."""
from __future__ import annotations

import os
import time

import psutil

from monitor_helpers import read_records


def test_a_run_records_system_metrics_and_they_are_complete_before_exit_json(root):
    import hpc

    before = {p.pid for p in psutil.Process().children()}
    run = hpc.init(project="p", dir=root,
                   settings={"stats": True, "stats_sample_s": 0.2, "stats_average_s": 0.4})
    time.sleep(1.0)
    hpc.finish()
    system = os.path.join(run.dir, "system.jsonl")
    records = read_records(system)
    assert records and "cpu/process_percent" in records[-1]["values"]
    assert os.path.getmtime(system) <= os.path.getmtime(os.path.join(run.dir, "exit.json"))
    assert {p.pid for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE} <= before
