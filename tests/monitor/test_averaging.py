"""The averaging loop and the system.jsonl stream, with an injected sampler and clock (no real waiting)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from monitor_helpers import read_records

from hpc._monitor import Averager, Monitor, SystemStream


class FakeTime:
    """Monotonic clock whose wait() advances time; stop_at ends the run as SIGTERM would."""

    def __init__(self, stop_at: float):
        self.t = 0.0
        self.stop_at = stop_at
        self.waits = []

    def clock(self) -> float:
        return self.t

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        if self.t + timeout >= self.stop_at:
            self.t = self.stop_at
            return True
        self.t += timeout
        return False


def run(sample_s, average_s, stop_at, sample=None, cumulative=lambda k: k.endswith("_total"), **options):
    ft = FakeTime(stop_at)
    out = []
    sample = sample or (lambda ft: {"x": ft.t, "bytes_total": ft.t * 10})
    mon = Monitor(lambda: sample(ft), lambda ts, values: out.append((ts, values)), sample_s=sample_s,
                  average_s=average_s, cumulative=cumulative, clock=ft.clock, wall_ms=lambda: int(ft.t * 1000),
                  wait=ft.wait, **options)
    mon.run()
    return out, ft


def test_windows_average_gauges_and_keep_last_of_totals():
    out, _ = run(2.0, 10.0, stop_at=25.0, sample=lambda ft: {"x": ft.t, "bytes_total": ft.t * 10})
    # (0,10]: 2,4,6,8,10   (10,20]: 12..20   partial (20,25]: 22, 24 and the last sample, taken at the stop
    assert out == [
        (10_000, {"bytes_total": 100.0, "x": 6.0}),
        (20_000, {"bytes_total": 200.0, "x": 16.0}),
        (25_000, {"bytes_total": 250.0, "x": pytest.approx((22 + 24 + 25) / 3)}),
    ]


def test_window_not_a_multiple_of_the_sample_interval():
    out, _ = run(2.0, 5.0, stop_at=15.0, sample=lambda ft: {"x": ft.t}, sample_at_stop=False)
    # (0,5]: 2,4 -> emitted right after the sample at 4 (the next one, 6, is in the next window);
    # (10,15]: 12,14 is complete at 14, so the stop at 15 has nothing left to write
    assert [(ts, v["x"]) for ts, v in out] == [(4_000, 3.0), (10_000, 8.0), (14_000, 13.0)]


def test_a_key_missing_from_some_samples_is_averaged_over_the_samples_that_had_it():
    seq = iter([{"a": 1.0, "gpu": 50.0}, {"a": 3.0}, {"a": 5.0, "gpu": 70.0}])
    out, _ = run(1.0, 3.0, stop_at=3.5, sample=lambda ft: next(seq), sample_at_stop=False)
    assert out == [(3_000, {"a": 3.0, "gpu": 60.0})]


def test_a_run_shorter_than_one_sample_still_records_its_end():
    out, _ = run(2.0, 10.0, stop_at=1.0)
    assert out == [(1_000, {"x": 1.0, "bytes_total": 10.0})]


def test_the_first_sample_is_a_record_of_its_own_and_the_grid_goes_on_after_it():
    out, _ = run(2.0, 10.0, stop_at=13.0, sample=lambda ft: {"x": ft.t}, first_sample_s=0.5)
    # the start (0.5, alone), (0,10]: 2..10, and the partial (10,13]: 12 plus the stop sample at 13
    assert [(ts, v["x"]) for ts, v in out] == [(500, 0.5), (10_000, 6.0), (13_000, 12.5)]


def test_a_first_sample_on_the_grid_is_not_taken_twice():
    out, ft = run(1.0, 3.0, stop_at=3.5, sample=lambda ft: {"x": ft.t}, first_sample_s=1.0,
                  sample_at_stop=False)
    assert [(ts, v["x"]) for ts, v in out] == [(1_000, 1.0), (3_000, 2.5)]
    assert ft.waits[:2] == [1.0, 1.0]


def test_no_stop_sample_once_the_training_process_is_gone():
    ft = FakeTime(stop_at=100.0)
    out = []
    mon = Monitor(lambda: {"x": ft.t}, lambda ts, v: out.append((ts, v)), sample_s=1.0, average_s=10.0,
                  clock=ft.clock, wall_ms=lambda: int(ft.t * 1000), wait=ft.wait, alive=lambda: ft.t < 3.5)
    mon.run()
    assert out == [(4_000, {"x": 2.0})]  # samples at 1, 2, 3; the wake-up at 4 finds no process to sample


def test_a_slow_sample_skips_missed_grid_points_instead_of_bunching():
    def sample(ft):
        if ft.t == 4.0:
            ft.t += 7.0  # this sample took 7 s (a stalled file system): 6, 8 and 10 are missed
        return {"x": 1.0}

    out, ft = run(2.0, 10.0, stop_at=20.5, sample=sample, sample_at_stop=False)
    # every wait is non-negative and we never sample twice on one grid point
    assert all(w >= 0 for w in ft.waits)
    # samples at 2, 4 (window 0, written at 11 when the slow sample returned), then 12..20 (window 1);
    # the stop at 20.5 comes before the sample at 22, so nothing is left over
    assert [ts for ts, _ in out] == [11_000, 20_000]
    assert ft.waits[:3] == [2.0, 2.0, 1.0]  # after the slow sample: straight to the grid point at 12


def test_averager_resets_after_flush():
    avg = Averager(lambda k: False)
    avg.add({"a": 2.0})
    assert avg.flush() == {"a": 2.0}
    assert avg.samples == 0 and avg.flush() == {}


def test_stream_writes_the_record_format_with_non_finite_as_strings(tmp_path):
    path = tmp_path / "system.jsonl"
    warnings = []
    stream = SystemStream(str(path), lambda kind, msg: warnings.append(msg))
    stream.append(1000, {"a": 1.5, "b": float("nan"), "c": float("inf"), "d": -float("inf"), "n": 3})
    stream.append(2000, {"a": 2.0})
    stream.close()
    records = read_records(path)
    assert records == [
        {"seq": 0, "step": 0, "ts_ms": 1000,
         "values": {"a": 1.5, "b": "NaN", "c": "Infinity", "d": "-Infinity", "n": 3}},
        {"seq": 1, "step": 1, "ts_ms": 2000, "values": {"a": 2.0}},
    ]
    assert warnings == []


def test_resume_repairs_a_torn_tail_and_continues_seq_and_step(tmp_path):
    path = tmp_path / "system.jsonl"
    stream = SystemStream(str(path), lambda *a: None)
    for i in range(3):
        stream.append(i, {"a": i})
    stream.close()
    with open(path, "a") as fh:
        fh.write('{"seq": 3, "step": 3, "ts_ms": 9, "val')  # the monitor died mid-write
    resumed = SystemStream(str(path), lambda *a: None)
    resumed.append(100, {"a": 9})
    resumed.close()
    records = read_records(path)
    assert [(r["seq"], r["step"]) for r in records] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert records[-1]["values"] == {"a": 9}


def test_resume_skips_a_corrupt_complete_last_line(tmp_path):
    path = tmp_path / "system.jsonl"
    path.write_text('{"seq": 0, "step": 5, "ts_ms": 1, "values": {}}\nnot json\n')
    stream = SystemStream(str(path), lambda *a: None)
    assert (stream.seq, stream.step) == (1, 6)
    stream.close()


def test_a_failing_write_leaves_no_torn_line_and_counts_the_drop(tmp_path):
    """A real failure: RLIMIT_FSIZE makes the kernel refuse writes past 600 bytes (EFBIG)."""
    path = tmp_path / "system.jsonl"
    code = textwrap.dedent(f"""
        import resource, signal, json
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))
        from hpc._monitor import SystemStream
        warnings = []
        s = SystemStream({str(path)!r}, lambda kind, msg: warnings.append(kind))
        for i in range(20):
            s.append(i, {{"some/metric_bytes": 123456789 + i, "other/metric_percent": 12.5}})
        s.close()
        print(json.dumps({{"dropped": s.dropped, "seq": s.seq, "warnings": warnings}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    records = read_records(path)  # asserts the file ends on a complete line
    assert 0 < len(records) < 20
    assert result["dropped"] == 20 - len(records) and result["seq"] == len(records)
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert result["warnings"] == ["write"] * result["dropped"]  # WarnOnce in the monitor dedups these
    assert os.path.getsize(path) <= 600


def test_stop_ends_the_wait_at_once():
    """The in-process form (Event.wait): stop() does not wait for the next sample, a minute away."""
    import threading

    out = []
    mon = Monitor(lambda: {"x": 1.0}, lambda ts, v: out.append(v), sample_s=60.0, average_s=600.0)
    worker = threading.Thread(target=mon.run)
    worker.start()
    time.sleep(0.2)  # let it reach the wait
    mon.stop()
    worker.join(10)
    assert not worker.is_alive() and out == [{"x": 1.0}]  # no grid sample was due: only the end
