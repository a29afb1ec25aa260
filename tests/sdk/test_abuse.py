"""The SDK as a training script may abuse it (issue 12): forks, threads, floods, full disks.

Real processes throughout: os.fork and a fork-started multiprocessing pool, real threads, a real 2 MB tmpfs
(mounting needs root: outside CI the tmpfs tests skip with one line when it is not possible).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from support import need

import hpc
from hpc import _format as fmt
from hpc._reader import read_history

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_script(body: str, root: str, env: dict = None, timeout_s: float = 120) -> subprocess.CompletedProcess:
    code = "import hpc, sys, os, json\n" + textwrap.dedent(body)
    environ = {**os.environ, "PYTHONPATH": REPO, "HPCSYNC_DIR": root, **(env or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=environ, capture_output=True, text=True,
                          timeout=timeout_s)


def doc(run_dir: str, name: str) -> dict:
    with open(os.path.join(run_dir, name), encoding="utf-8") as f:
        return json.load(f)


def history_lines(run_dir: str) -> list:
    with open(os.path.join(run_dir, fmt.HISTORY), "rb") as f:
        data = f.read()
    assert not data or data.endswith(b"\n"), "a torn last line"
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def assert_accounted(outcome: dict, logged: int) -> None:
    assert outcome["logged_rows"] == logged
    assert outcome["written_rows"] + outcome["dropped_rows"] == logged, outcome


# ---- 1. forked children -----------------------------------------------------------------------------------
FORKS = """
import multiprocessing

def worker(i):
    hpc.log({"worker": i})
    print("worker output", i)
    return os.getpid()

run = hpc.init(project="p", id="parent")
run.log({"parent": 0})
pid = os.fork()
if pid == 0:
    print("child output")
    for i in range(5):
        hpc.log({"child": i})
    run.config.x = 1
    own = hpc.init(project="p", id="child")  # a run of its own: allowed, and recorded
    own.log({"own": 1})
    sys.exit(0)  # a normal exit: atexit runs here too, and must not finish the parent's run
_, status = os.waitpid(pid, 0)
print("child status", status, "exit.json after the child:", os.path.exists(os.path.join(run.dir, "exit.json")))
run.log({"parent": 1})
with multiprocessing.get_context("fork").Pool(2) as pool:
    workers = set(pool.map(worker, range(8)))
run.log({"parent": 2})
run.finish()
print(json.dumps({"workers": len(workers)}))
"""


def test_forked_children_get_one_warning_each_and_leave_the_parents_run_intact(tmp_path):
    done = run_script(FORKS, str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "child status 0 exit.json after the child: False" in done.stdout
    workers = json.loads(done.stdout.strip().splitlines()[-1])["workers"]
    warnings = [line for line in done.stderr.splitlines() if "a fork of process" in line]
    # one line per forked process that logged (the child's config change does not add a second)
    assert len(warnings) == 1 + workers, done.stderr
    assert all(line.startswith("hpc: warning: log() in process ") and "is NOT recorded" in line
               for line in warnings)
    parent = os.path.join(str(tmp_path), "p", "parent")
    assert [(r["step"], r["values"]) for r in read_history(parent)] == [
        (0, {"parent": 0}), (1, {"parent": 1}), (2, {"parent": 2})]
    outcome = doc(parent, fmt.EXIT)
    assert outcome["reason"] == "finished"
    assert_accounted(outcome, 3)
    assert doc(parent, fmt.CONFIG) == {}
    output = open(os.path.join(parent, fmt.OUTPUT)).read()
    assert "child output" not in output and "worker output" not in output and "child status 0" in output
    child = os.path.join(str(tmp_path), "p", "child")
    assert [r["values"] for r in read_history(child)] == [{"own": 1}]
    assert doc(child, fmt.EXIT)["reason"] == "finished"


# ---- 2. threads -------------------------------------------------------------------------------------------
def test_threads_logging_at_once_get_distinct_increasing_steps(root):
    run = hpc.init(project="p", dir=root, settings={"console": False})
    threads, calls = 8, 5000
    start = threading.Barrier(threads)

    def work(t):
        start.wait()
        for i in range(calls):
            run.log({"t": t, "i": i})

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    run.finish()
    records = history_lines(run.dir)
    total = threads * calls
    assert [r["seq"] for r in records] == list(range(total))
    assert [r["step"] for r in records] == list(range(total))  # one row per call, each its own step
    for t in range(threads):
        assert [r["values"]["i"] for r in records if r["values"]["t"] == t] == list(range(calls))
    assert_accounted(doc(run.dir, fmt.EXIT), total)


def test_threads_merging_rows_keep_steps_non_decreasing_and_lose_nothing(root):
    run = hpc.init(project="p", dir=root, settings={"console": False})
    threads, calls = 4, 2000

    def work(t):
        for i in range(calls):
            run.log({f"a{t}": i}, commit=False)
            run.log({f"b{t}": {"i": i}})
            if i % 100 == 0:
                run.log({f"c{t}": i}, step=run.step + 5)  # may be refused (another thread went past): fine

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    run.finish()
    records = history_lines(run.dir)
    steps = [r["step"] for r in records]
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert steps == sorted(steps)
    for t in range(threads):
        assert sum(f"a{t}" in r["values"] for r in records) == calls
        assert sorted(r["values"][f"b{t}/i"] for r in records if f"b{t}/i" in r["values"]) == list(range(calls))
    outcome = doc(run.dir, fmt.EXIT)
    assert outcome["dropped_rows"] == 0 and outcome["written_rows"] == len(records)


# ---- 3. a flood -------------------------------------------------------------------------------------------
def test_a_flood_is_bounded_never_blocks_and_every_drop_is_counted(tmp_path):
    done = run_script("""
        run = hpc.init(project="p", id="flood", settings={"queue_max_bytes": 256 * 1024, "console": False})
        names = [f"metric_{k:02d}" for k in range(20)]
        for i in range(100_000):
            run.log({name: i * 0.5 + k for k, name in enumerate(names)})
        run.finish()
    """, str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("the writer is 256 KiB behind") == 1, done.stderr
    run_dir = os.path.join(str(tmp_path), "p", "flood")
    outcome = doc(run_dir, fmt.EXIT)
    assert_accounted(outcome, 100_000)
    assert outcome["dropped_rows"] > 0
    records = history_lines(run_dir)
    assert len(records) == outcome["written_rows"]
    assert [r["seq"] for r in records] == list(range(len(records)))
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps))  # a dropped row leaves a gap in the steps, never a repeat
    # The summary holds the last values logged, whether their rows reached the history or were dropped.
    summary = doc(run_dir, fmt.SUMMARY)["values"]
    assert {k: summary[f"metric_{k:02d}"] for k in range(20)} == {k: 99_999 * 0.5 + k for k in range(20)}


def test_dropped_rows_set_the_summary_in_the_order_they_were_logged(root):
    """Rows dropped while the queue is full still set the summary's last values, in order: a newer row
    that got in wins over an older dropped one, and a dropped row newer than every written one wins."""
    run = hpc.init(project="p", dir=root, settings={"console": False})
    with run._lock:
        run._queue_limit = -1        # the next rows do not fit ...
        real_room, run._room_for = run._room_for, lambda queued: False
    run.log({"a": 1, "b": 1})        # dropped
    run.log({"a": 2})                # dropped
    run._room_for = real_room        # room again
    run.log({"b": 3})                # in: newer than the dropped b=1
    with run._lock:
        run._queue_limit = -1
        run._room_for = lambda queued: False
    run.log({"c": 4})                # dropped, and nothing gets in after it
    run.finish()
    assert doc(run.dir, fmt.SUMMARY)["values"] == {"a": 2, "b": 3, "c": 4}
    outcome = doc(run.dir, fmt.EXIT)
    assert (outcome["logged_rows"], outcome["dropped_rows"]) == (4, 3)
    assert [r["values"] for r in history_lines(run.dir)] == [{"b": 3}]


def test_the_queue_budget_is_a_setting():
    assert hpc.Settings.resolve({}, {}).queue_max_bytes == 64 * 2 ** 20
    assert hpc.Settings.resolve({}, {"HPCSYNC_QUEUE_MAX_BYTES": "1048576"}).queue_max_bytes == 2 ** 20
    with pytest.raises(hpc.errors.SettingsError, match="positive whole number of bytes"):
        hpc.Settings.resolve({"queue_max_bytes": "64M"}, {})


def test_a_row_whose_every_value_is_refused_is_counted_as_dropped(root):
    run = hpc.init(project="p", dir=root, settings={"console": False})
    run.log({"obj": object()})
    run.log({"ok": 1})
    run.log({})  # an empty row is no row: the step goes on, nothing is logged
    run.finish()
    outcome = doc(run.dir, fmt.EXIT)
    assert (outcome["logged_rows"], outcome["written_rows"], outcome["dropped_rows"]) == (2, 1, 1)
    assert outcome["last_step"] == 1 and run.step == 3


def test_a_step_beyond_int64_is_refused(root):
    run = hpc.init(project="p", dir=root, settings={"console": False})
    with pytest.raises(hpc.UsageError, match=r"below 2\*\*63"):
        run.log({"a": 1}, step=2 ** 63)
    run.log({"a": 2}, step=2 ** 63 - 1, commit=True)
    run.finish()
    assert [r["step"] for r in read_history(run.dir)] == [2 ** 63 - 1]


# ---- 5 and 9. a real full disk ----------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                           capture_output=True, text=True) if shutil.which("mount") else None
    need(tried is not None and tried.returncode == 0,
         f"cannot mount a tmpfs here ({tried.stderr.strip() if tried else 'no mount command'}): needs root")
    yield str(mount_point)
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_still_gets_its_exit_record_with_exact_counts(tiny_disk):
    done = run_script("""
        run = hpc.init(project="p", id="full", settings={"flush_interval_s": 0.05})
        for i in range(60_000):
            run.log({"loss": 1.0 / (i + 1), "step_name": "epoch-%d" % (i // 1000)})
        print("training survived", flush=True)
    """, tiny_disk)
    assert done.returncode == 0 and "training survived" in done.stdout, done.stderr
    assert done.stderr.count("the disk is full") >= 1
    assert len([line for line in done.stderr.splitlines() if "history.jsonl: the disk is full" in line]) == 1
    run_dir = os.path.join(tiny_disk, "p", "full")
    outcome = doc(run_dir, fmt.EXIT)
    assert outcome["reason"] == "finished"
    assert_accounted(outcome, 60_000)
    assert outcome["dropped_rows"] > 0
    records = history_lines(run_dir)
    assert len(records) == outcome["written_rows"] == outcome["history_records"]
    assert not [name for name in os.listdir(run_dir) if name.startswith(fmt.TMP_PREFIX)]


def test_run_json_is_written_again_once_the_disk_has_room(tiny_disk, capsys):
    run = hpc.init(project="p", dir=tiny_disk, settings={"console": False, "heartbeat_interval_s": 0.05})
    run.log({"a": 1})
    run._sync()
    filler = os.path.join(tiny_disk, "filler")
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing is left to fail at close
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError:
            pass  # the disk is full now
    run.define_metric("a", summary="max")  # run.json is due again, and cannot be written for now
    seen = ""
    deadline = time.monotonic() + 60
    while "run.json: the disk is full" not in seen:
        assert time.monotonic() < deadline, f"the failed write never showed: {seen}"
        time.sleep(0.05)
        seen += capsys.readouterr().err
    assert seen.count("run.json: the disk is full") == 1
    os.unlink(filler)
    run.finish()
    assert doc(run.dir, fmt.RUN_JSON)["metrics"] == [{"name": "a", "step_metric": None, "summary": "max"}]


def test_console_text_that_cannot_be_written_is_warned_and_counted_exactly(tmp_path):
    """output.log is a link to /dev/full: every write fails in the kernel (ENOSPC)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is missing on this system")
    run_dir = tmp_path / "p" / "out"
    run_dir.mkdir(parents=True)
    os.symlink("/dev/full", run_dir / fmt.OUTPUT)
    done = run_script("""
        import logging, threading
        warned = threading.Event()  # the hpc logger hears each warning before it is printed
        logging.getLogger("hpc").addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: warned.set()})())
        run = hpc.init(project="p", id="out", resume="allow", settings={"flush_interval_s": 0.05})
        for i in range(300):
            print("line", i, "é" * (i % 3))
        assert warned.wait(60)  # the warning comes while the tee still runs: it is console text too
        len(run.summary)  # waits for the writer to get past the warning's print, so it went through the tee
        print("to stderr", file=sys.stderr)
        run.finish()
    """, str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("output.log: the disk is full") == 1
    printed = len(done.stdout.encode()) + len(done.stderr.encode())  # everything went through the tee
    assert doc(str(run_dir), fmt.EXIT)["dropped_output_bytes"] == printed
