"""Real psutil readings on this machine: the numbers move when a child process does something."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
from support import need

from hpc._sampling import METRICS, ProcessTree, Sampler, disk_io, disk_usage, memory_system

BURN = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass\n"


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_process_tree_cpu_follows_a_child_that_burns_cpu():
    tree = ProcessTree(os.getpid())
    assert tree.sample().cpu_percent is None  # priming
    idle = tree.sample()
    since = time.monotonic()
    child = _spawn(BURN.format(s=60))
    try:
        proc = psutil.Process(child.pid)
        deadline = time.monotonic() + 60
        while True:  # until the child has burned a measurable amount, however loaded the machine is
            child_cpu = proc.cpu_times()
            if child_cpu.user + child_cpu.system >= 0.5:
                break
            assert time.monotonic() < deadline, "the child got almost no CPU in 60 s"
            time.sleep(0.05)
        busy = tree.sample()
        elapsed_s = time.monotonic() - since
    finally:
        child.kill()
        child.wait()
    burned_s = child_cpu.user + child_cpu.system
    assert busy.process_count >= idle.process_count + 1
    # The tree's CPU over the interval includes everything the child burned in it (70 %: sampling skew).
    assert busy.cpu_percent >= 0.7 * 100.0 * burned_s / elapsed_s


@pytest.mark.parametrize("proc_children", [True, False], ids=["proc-children-files", "psutil-scan"])
def test_process_tree_counts_grandchildren_and_excludes_the_monitor(proc_children):
    # a child that starts a grandchild and sleeps, like a DataLoader worker pool
    code = ("import subprocess, sys, time\n"
            "g = subprocess.Popen([sys.executable, '-c', 'import time; x = bytearray(80_000_000); time.sleep(30)'])\n"
            "time.sleep(30)\n")
    child = _spawn(code)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and len(psutil.Process(child.pid).children()) < 1:
            time.sleep(0.05)
        grandchild = psutil.Process(child.pid).children()[0]
        while time.time() < deadline and grandchild.memory_info().rss < 80_000_000:
            time.sleep(0.05)
        full_tree = ProcessTree(child.pid)
        without_tree = ProcessTree(child.pid, exclude_pids=[grandchild.pid])
        if not proc_children:  # the fallback walk for kernels without CONFIG_PROC_CHILDREN
            full_tree._proc_children = without_tree._proc_children = False
        full, without = full_tree.sample(), without_tree.sample()
    finally:
        for p in psutil.Process(child.pid).children(recursive=True):
            p.kill()
        child.kill()
        child.wait()
    assert full.process_count == 2 and without.process_count == 1
    assert full.rss_bytes - without.rss_bytes >= 80_000_000
    assert full.thread_count >= 2


def test_process_tree_of_a_dead_root_raises_no_such_process():
    child = _spawn("pass")
    tree = ProcessTree(child.pid)
    child.wait()
    with pytest.raises(psutil.NoSuchProcess):
        tree.sample()


def test_network_totals_move_with_loopback_traffic(tmp_path):
    sampler = Sampler(str(tmp_path), None, host=True)
    sampler.prime()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    payload = b"x" * 4_000_000
    received = []

    def serve():
        conn, _ = server.accept()
        n = 0
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            n += len(chunk)
        received.append(n)
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    client = socket.create_connection(server.getsockname())
    client.sendall(payload)
    client.close()
    t.join(10)
    server.close()
    sample = sampler.sample()
    assert received == [len(payload)]
    assert sample["network/sent_bytes"] >= len(payload)
    assert sample["network/received_bytes"] >= len(payload)


def test_disk_write_bytes_move_with_an_fsynced_file(tmp_path):
    need(disk_io() is not None, "psutil sees no block devices here (container without /proc/diskstats)")
    sampler = Sampler(str(tmp_path), None, host=True)
    sampler.prime()
    with open(tmp_path / "blob", "wb") as fh:
        fh.write(os.urandom(16_000_000))
        fh.flush()
        os.fsync(fh.fileno())
    sample = sampler.sample()
    assert sample["disk/write_bytes"] >= 8_000_000  # allow for compression/dedup below us, not for nothing


def test_host_metrics_are_sane_and_agree_with_the_file_system(tmp_path):
    sampler = Sampler(str(tmp_path), ProcessTree(os.getpid()), host=True)
    sampler.prime()
    time.sleep(0.3)
    s = sampler.sample()
    vfs = os.statvfs(tmp_path)
    assert 0.0 <= s["cpu/system_percent"] <= 100.0
    assert 0.0 < s["memory/system_percent"] < 100.0
    assert 0 < s["memory/system_used_bytes"] < psutil.virtual_memory().total
    assert abs(s["disk/available_bytes"] - vfs.f_bavail * vfs.f_frsize) < 64 * 2**20
    me = psutil.Process()
    tree_rss = sum(p.memory_info().rss for p in [me] + me.children(recursive=True))  # e.g. a server fixture
    assert s["memory/process_rss_bytes"] == pytest.approx(tree_rss, rel=0.5)
    assert s["process/thread_count"] >= 1 and "cpu/process_percent" in s
    assert set(s) <= set(METRICS)


def test_without_host_metrics_only_the_process_tree_is_sampled(tmp_path):
    sampler = Sampler(str(tmp_path), ProcessTree(os.getpid()), host=False)
    sampler.prime()
    assert set(sampler.sample()) == {"cpu/process_percent", "memory/process_rss_bytes", "process/thread_count",
                                     "process/process_count"}


def test_sampler_functions_return_typed_records(tmp_path):
    assert memory_system().used_bytes > 0
    du = disk_usage(str(tmp_path))
    assert du.used_bytes > 0 and 0 <= du.percent <= 100


def test_disk_usage_is_read_at_most_every_interval_and_reused_between(tmp_path):
    now = [0.0]
    sampler = Sampler(str(tmp_path), None, host=True, disk_usage_every_s=30.0, clock=lambda: now[0])
    sampler.prime()
    first = sampler.sample()["disk/used_bytes"]
    with open(tmp_path / "blob", "wb") as fh:  # 32 MB more on this file system (random: no compression)
        fh.write(os.urandom(32_000_000))
        fh.flush()
        os.fsync(fh.fileno())
    now[0] = 29.0
    assert sampler.sample()["disk/used_bytes"] == first  # the cached reading
    now[0] = 30.0
    assert sampler.sample()["disk/used_bytes"] != first  # a fresh one
