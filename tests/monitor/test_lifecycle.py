"""The monitor dies with the run, with real processes: exit, SIGKILL, job cancel, stop."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from monitor_helpers import FAKE_DIR, gpu, read_records, wait_records

from hpc._monitor_control import start_monitor
from hpc._settings import Settings

TRAINER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_trainer.py")

pytestmark = pytest.mark.slow  # every test runs a monitor process and waits for its samples


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # PID 1 here reaps every ~2 s
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


def wait_for(path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


class Trainer:
    def __init__(self, run_dir, mode, sample_s, average_s, local_rank=None, new_session=False, env=None, cwd=None):
        argv = [sys.executable, TRAINER, str(run_dir), mode, str(sample_s), str(average_s)]
        if local_rank is not None:
            argv.append(str(local_rank))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=new_session, env=env, cwd=cwd)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.monitor_pid = json.loads(line)["monitor_pid"]
        self.run_dir = run_dir

    def ready(self):
        wait_for(os.path.join(self.run_dir, "hardware.json"))  # written once the death signal is armed
        return self

    def kill_all(self):
        for pid in (self.proc.pid, self.monitor_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


@pytest.fixture
def trainers():
    made = []

    def make(*args, **kwargs):
        t = Trainer(*args, **kwargs)
        made.append(t)
        return t

    yield make
    for t in made:
        t.kill_all()


def test_stop_writes_the_last_partial_window_and_exits(tmp_path, trainers):
    t = trainers(tmp_path, "stop", 0.2, 60)
    out = json.loads(t.proc.stdout.readline())
    assert out == {"exit_code": 0}
    assert gone(t.monitor_pid)
    records = read_records(tmp_path / "system.jsonl")
    # the start record (first sample, alone) and the partial window that ends with a sample at the stop
    assert [(r["seq"], r["step"]) for r in records] == [(0, 0), (1, 1)]
    assert records[0]["ts_ms"] < records[1]["ts_ms"]
    assert all(r["values"]["process/process_count"] >= 1 for r in records)
    hardware = json.loads((tmp_path / "hardware.json").read_text())
    assert hardware["parent_pid"] == t.proc.pid and hardware["monitor_pid"] == t.monitor_pid
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []


def test_parent_exiting_without_finish_ends_the_monitor(tmp_path, trainers):
    t = trainers(tmp_path, "exit", 0.5, 60)
    assert t.proc.wait(timeout=30) == 0
    assert wait_gone(t.monitor_pid, 0.5 + 5.0)
    assert len(read_records(tmp_path / "system.jsonl")) == 2  # the start, and the partial window made it


def test_sigkill_of_the_parent_ends_the_monitor_at_once_through_the_death_signal(tmp_path, trainers):
    # 30 s between samples: the parent-pid check alone would need up to 30 s; PR_SET_PDEATHSIG does not
    t = trainers(tmp_path, "sleep", 30, 60).ready()
    t.proc.kill()
    t.proc.wait()
    assert wait_gone(t.monitor_pid, 5.0)


def test_parent_pid_check_catches_a_parent_that_is_not_our_process_parent(tmp_path):
    """The poll path: parent_pid names a process whose death sends us no signal."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monitor = subprocess.Popen([sys.executable, "-m", "hpc._monitor", "--run-dir", str(tmp_path),
                                "--parent-pid", str(other.pid), "--sample-s", "0.3", "--average-s", "60"])
    try:
        wait_for(tmp_path / "hardware.json")
        other.kill()
        other.wait()
        assert monitor.wait(timeout=0.3 + 5.0) == 0
    finally:
        other.kill()
        monitor.kill()
        monitor.wait()
    assert len(read_records(tmp_path / "system.jsonl")) <= 1


def test_job_cancel_sigkill_of_the_process_group_leaves_no_orphan(tmp_path, trainers):
    t = trainers(tmp_path, "sleep", 0.5, 60, new_session=True).ready()
    assert os.getpgid(t.monitor_pid) == os.getpgid(t.proc.pid)  # it stays in the job's group
    os.killpg(t.proc.pid, signal.SIGKILL)
    t.proc.wait()
    assert wait_gone(t.monitor_pid, 5.0)


def test_job_cancel_sigterm_of_the_process_group_writes_the_partial_window(tmp_path, trainers):
    t = trainers(tmp_path, "sleep", 0.2, 60, new_session=True).ready()
    wait_records(tmp_path / "system.jsonl", 1)  # the start record; the 60 s window is still open
    # Samples in an open window are not visible from outside: give it several sampling intervals (0.2 s).
    time.sleep(1.0)
    os.killpg(t.proc.pid, signal.SIGTERM)
    t.proc.wait()
    assert wait_gone(t.monitor_pid, 5.0)
    records = read_records(tmp_path / "system.jsonl")
    assert len(records) == 2 and records[-1]["values"]["process/process_count"] >= 1


def test_ctrl_c_and_preemption_signals_do_not_kill_the_monitor(tmp_path, trainers):
    t = trainers(tmp_path, "sleep", 0.2, 60).ready()
    for signum in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        os.kill(t.monitor_pid, signum)
    time.sleep(1.0)
    assert not gone(t.monitor_pid)
    os.kill(t.monitor_pid, signal.SIGTERM)
    assert wait_gone(t.monitor_pid, 5.0)
    assert len(read_records(tmp_path / "system.jsonl")) == 2  # the start record and the partial window


def test_the_starting_thread_exiting_does_not_end_the_monitor(tmp_path, trainers):
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits; the monitor must check the process
    t = trainers(tmp_path, "thread", 0.2, 0.4).ready()
    wait_records(tmp_path / "system.jsonl", 3)  # windows keep coming after the starting thread exited
    assert not gone(t.monitor_pid)
    t.proc.kill()
    t.proc.wait()
    assert wait_gone(t.monitor_pid, 5.0)


def test_stop_kills_a_monitor_that_does_not_answer(tmp_path):
    handle = start_monitor(str(tmp_path), parent_pid=os.getpid(),
                           settings=Settings.resolve({"stats_sample_s": 0.2, "stats_average_s": 1}, {}))
    try:
        wait_for(tmp_path / "hardware.json")
        os.kill(handle.pid, signal.SIGSTOP)  # a monitor stuck in a hung NFS write looks like this
        assert handle.stop(timeout_s=1.0) == -signal.SIGKILL
    finally:
        handle.process.kill()
        handle.process.wait()


def test_stop_from_a_forked_child_is_a_no_op(tmp_path):
    handle = start_monitor(str(tmp_path), parent_pid=os.getpid(),
                           settings=Settings.resolve({"stats_sample_s": 0.2, "stats_average_s": 1}, {}))
    try:
        wait_for(tmp_path / "hardware.json")
        pid = os.fork()
        if pid == 0:  # a DataLoader worker calling finish() by mistake
            os._exit(0 if handle.stop(timeout_s=1.0) is None else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert handle.process.poll() is None
        assert handle.stop() == 0
    finally:
        handle.process.kill()
        handle.process.wait()


@pytest.mark.parametrize("explicit, environ", [({"stats": False}, {}), ({}, {"HPCSYNC_STATS": "off"})])
def test_stats_off_starts_no_process(tmp_path, explicit, environ):
    before = {p.pid for p in psutil.Process().children()}
    assert start_monitor(str(tmp_path), parent_pid=os.getpid(), settings=Settings.resolve(explicit, environ)) is None
    assert {p.pid for p in psutil.Process().children()} == before
    assert os.listdir(tmp_path) == []


def test_a_resumed_run_continues_seq_and_step(tmp_path, trainers):
    first = trainers(tmp_path, "stop", 0.2, 0.4)
    assert json.loads(first.proc.stdout.readline()) == {"exit_code": 0}
    n = len(read_records(tmp_path / "system.jsonl"))
    with open(tmp_path / "system.jsonl", "a") as fh:
        fh.write('{"seq": 99, "st')  # a crash mid-line in a third writer's life
    os.unlink(tmp_path / "hardware.json")  # the trainer waits for the new monitor's
    second = trainers(tmp_path, "stop", 0.2, 0.4)
    assert json.loads(second.proc.stdout.readline()) == {"exit_code": 0}
    records = read_records(tmp_path / "system.jsonl")
    assert len(records) > n
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert [r["step"] for r in records] == list(range(len(records)))


def test_an_unwritable_stream_costs_one_line_and_no_crash(tmp_path, trainers):
    (tmp_path / "system.jsonl").mkdir()  # cannot be opened as a file: EISDIR
    t = trainers(tmp_path, "stop", 0.2, 0.4)
    assert json.loads(t.proc.stdout.readline()) == {"exit_code": 1}
    assert t.proc.wait(timeout=30) == 0  # the training process is unharmed
    stderr = t.proc.stderr.read()
    assert stderr.count("cannot open system.jsonl") == 1 and "Traceback" not in stderr, stderr


def test_the_monitor_imports_what_the_training_process_imports(tmp_path, trainers, fake_nvml_env):
    """It runs in the run directory: a relative PYTHONPATH entry of the job must still work there."""
    (tmp_path / "run").mkdir()
    env = fake_nvml_env({"devices": [gpu("GPU-1111aaaa-0000")]})
    env["PYTHONPATH"] = os.path.basename(FAKE_DIR)  # relative to the trainer's cwd
    t = trainers(tmp_path / "run", "stop", 0.2, 0.4, env=env, cwd=os.path.dirname(FAKE_DIR))
    assert json.loads(t.proc.stdout.readline()) == {"exit_code": 0}
    hardware = json.loads((tmp_path / "run" / "hardware.json").read_text())
    assert [g["uuid"] for g in hardware["gpus"]] == ["GPU-1111aaaa-0000"]


def test_stop_right_after_start_lets_the_monitor_exit_cleanly(tmp_path):
    """A run that finishes at once: the SIGTERM waits (blocked from the fork on) until the monitor can
    take it, instead of killing a half-started interpreter."""
    handle = start_monitor(str(tmp_path), parent_pid=os.getpid(),
                           settings=Settings.resolve({"stats_sample_s": 0.2, "stats_average_s": 1}, {}))
    assert handle.stop(timeout_s=30) == 0
    records = read_records(tmp_path / "system.jsonl")
    assert len(records) == 1  # no grid sample was due: the one taken at the stop records the end
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # our mask is restored
