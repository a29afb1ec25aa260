"""SftpSource against a real sshd: it must show exactly what the file system holds."""
from __future__ import annotations

import os
import random
import signal
import threading

import pytest
from _runs import append, local_stats, record, write_document, write_run

from sync_gateway.errors import RetryableError, SourceError
from sync_gateway.readers.hpc.discovery import discover_hpc


def _stats(d):
    return {name: (st.size_bytes, st.mtime_ns // 1_000_000_000) for name, st in d.items()}


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    return root


def test_list_runs_is_what_the_root_holds(root, source_factory):
    write_run(str(root), "resnet", "a1", finished=True)
    write_run(str(root), "resnet", "b2", finished=False)
    write_run(str(root), "bert", "c3")
    (root / "resnet" / "no-run-json").mkdir()                 # a directory without run.json: not a run
    (root / "resnet" / "bad name").mkdir()                    # a name outside the format's pattern
    (root / "resnet" / "bad name" / "run.json").write_text("{}")
    (root / "resnet" / "notes.txt").write_text("a file, not a run")
    (root / ".tmp-x").mkdir()
    src = source_factory(str(root))
    found = sorted((r.project, r.run_id, r.location) for r in discover_hpc(src))
    assert found == [("bert", "c3", str(root / "bert" / "c3")), ("resnet", "a1", str(root / "resnet" / "a1")),
                     ("resnet", "b2", str(root / "resnet" / "b2"))]


def test_scan_walk_and_reads_equal_the_file_system(root, source_factory):
    big = os.urandom(3 * 1024 * 1024 + 123)   # larger than one SFTP request: the pipelined path
    write_run(str(root), "p", "r1", history_rows=5000, saved_files={"ckpt/big.bin": big, "a/b/c.txt": b"x"})
    write_run(str(root), "p", "r2", history_rows=0, finished=False, saved_files={})
    # a half-written document and a torn stream tail, as a reader may find them
    (root / "p" / "r1" / ".tmp-summary.json-99").write_text('{"values": {"lo')
    append(str(root / "p" / "r1" / "history.jsonl"), b'{"seq": 5000, "st')
    src = source_factory(str(root))
    runs = {r.run_id: r for r in discover_hpc(src)}
    assert set(runs) == {"r1", "r2"}
    for run_id, run in runs.items():
        run_dir = root / "p" / run_id
        assert _stats(src.scan(run)) == local_stats(str(root), str(run_dir), recursive=False)
        assert _stats(src.walk(run, "files")) == local_stats(str(root), str(run_dir / "files"), True, "files/")
        assert _stats(src.walk(run, "code")) == local_stats(str(root), str(run_dir / "code"), True, "code/")
        for name in ("run.json", "config.json", "summary.json", "heartbeat.json", "exit.json"):
            path = run_dir / name
            assert src.read_document(run, name) == (path.read_bytes() if path.exists() else None)
        for name in src.scan(run):
            data = (run_dir / name).read_bytes()
            assert src.read_range(run, name, 0, len(data) + 100) == data
    r1 = runs["r1"]
    assert src.read_range(r1, "files/ckpt/big.bin", 0, len(big)) == big
    rng = random.Random(7)
    history = (root / "p" / "r1" / "history.jsonl").read_bytes()
    for _ in range(20):
        offset = rng.randrange(0, len(history))
        length = rng.choice([1, 100, 40_000, 70_000, 1_000_000])
        assert src.read_range(r1, "history.jsonl", offset, length) == history[offset:offset + length]
    assert src.read_range(r1, "history.jsonl", len(history) + 10, 100) == b""
    assert src.read_range(r1, "history.jsonl", 10, 0) == b""
    assert src.walk(r1, "no-such-dir") == {}
    assert src.read_document(r1, "files/ckpt/big.bin") == big
    with pytest.raises(SourceError):
        src.read_range(r1, "no-such-file.jsonl", 0, 10)
    with pytest.raises(SourceError):
        src.read_range(r1, "../r2/run.json", 0, 10)
    assert src.connects == 1   # one connection for the whole pass


def _complete_lines(data: bytes) -> bytes:
    return data[: data.rfind(b"\n") + 1]


def test_incremental_reads_from_a_cursor(root, source_factory):
    run_dir = write_run(str(root), "p", "live", history_rows=10, finished=False)
    history = os.path.join(run_dir, "history.jsonl")
    src = source_factory(str(root))
    (run,) = discover_hpc(src)
    cursor, consumed = 0, b""
    prev_line = prev_tail = b""  # the line the previous batch left half written
    expected = b"".join(record(i, i, loss=1.0 / (i + 1), acc="NaN" if i == 3 else i / 100) for i in range(10))
    for batch in range(5):
        size = src.scan(run)["history.jsonl"].size_bytes
        new = _complete_lines(src.read_range(run, "history.jsonl", cursor, size - cursor))
        consumed += new
        cursor += len(new)
        assert consumed == expected
        # the writer appends more, the last line only half written until the next batch
        line = record(10 + batch, 10 + batch, loss=0.5)
        if batch:
            append(history, prev_tail)
            expected += prev_line
        append(history, line[:7])
        prev_line, prev_tail = line, line[7:]
    append(history, prev_tail)
    expected += prev_line
    size = src.scan(run)["history.jsonl"].size_bytes
    consumed += _complete_lines(src.read_range(run, "history.jsonl", cursor, size - cursor))
    with open(history, "rb") as f:
        assert consumed == expected == f.read()
    # a document replaced atomically reads as the new version
    write_document(os.path.join(run_dir, "summary.json"), {"values": {"loss": 0.01}})
    assert src.read_document(run, "summary.json") == b'{"values": {"loss": 0.01}}'


def _kill_sessions(sshd):
    pids = sshd.session_pids()
    assert pids, "no sshd session process to kill: is the source connected?"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def test_connection_killed_mid_pass_then_reconnect_loses_and_repeats_nothing(root, sshd, source_factory):
    payload = b"".join(record(i, i, loss=float(i), extra="x" * 40) for i in range(60_000))  # ~6 MB
    run_dir = write_run(str(root), "p", "big", history_rows=0)
    append(os.path.join(run_dir, "history.jsonl"), payload)
    src = source_factory(str(root))
    (run,) = discover_hpc(src)
    size = src.scan(run)["history.jsonl"].size_bytes
    chunk = 256 * 1024
    cursor, got, failures = 0, [], 0
    kills = {3, 9}      # kill the session between two reads, twice
    reads = 0
    while cursor < size:
        if reads in kills:
            kills.discard(reads)
            _kill_sessions(sshd)
        reads += 1
        try:
            data = src.read_range(run, "history.jsonl", cursor, min(chunk, size - cursor))
        except SourceError as err:
            assert isinstance(err, RetryableError)
            assert "connection lost" in str(err) and "\n" not in str(err)
            failures += 1
            continue       # the cursor did not move: the next try re-reads the same range
        new = _complete_lines(data)
        got.append(new)
        cursor += len(new)
    assert failures == 2
    assert src.connects == 3
    assert b"".join(got) == payload


def test_connection_killed_during_a_large_read(root, sshd, source_factory):
    payload = os.urandom(24 * 1024 * 1024)
    run_dir = write_run(str(root), "p", "big", history_rows=0, saved_files={"blob.bin": payload})
    src = source_factory(str(root), io_timeout_s=15.0)
    (run,) = discover_hpc(src)
    assert src.walk(run, "files")["files/blob.bin"].size_bytes == len(payload)
    killer = threading.Timer(0.05, _kill_sessions, args=(sshd,))
    killer.start()
    try:
        data = src.read_range(run, "files/blob.bin", 0, len(payload))
    except SourceError as err:
        assert isinstance(err, RetryableError)
        data = None
    killer.join()
    if data is not None:    # the read won the race; it must still be exact
        assert data == payload
    assert src.read_range(run, "files/blob.bin", 0, len(payload)) == payload
    assert src.connects == 2
    assert os.path.getsize(os.path.join(run_dir, "files", "blob.bin")) == len(payload)


def test_links_out_of_the_root_are_skipped(root, tmp_path, source_factory, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    write_run(str(outside), "p", "elsewhere")
    run_dir = write_run(str(root), "p", "r1")
    os.symlink(outside / "secret.txt", os.path.join(run_dir, "stolen.jsonl"))
    os.symlink(outside / "secret.txt", os.path.join(run_dir, "files", "stolen.txt"))
    os.symlink(outside, os.path.join(run_dir, "files", "outdir"))
    os.symlink("/etc/passwd", os.path.join(run_dir, "summary.json.bak"))
    os.symlink(outside / "p" / "elsewhere", root / "p" / "linked-out")     # a run dir that is a link out
    os.symlink(outside / "p", root / "linked-project")                    # a project dir that is a link out
    os.symlink("config.json", os.path.join(run_dir, "config-link.json"))  # a link inside the root: fine
    src = source_factory(str(root))
    with caplog.at_level("WARNING", logger="sync_gateway.sources.sftp.source"):
        runs = discover_hpc(src)
        assert [r.run_id for r in runs] == ["r1"]
        (run,) = runs
        scanned = src.scan(run)
        assert "stolen.jsonl" not in scanned and "summary.json.bak" not in scanned
        assert scanned["config-link.json"].size_bytes == os.path.getsize(os.path.join(run_dir, "config.json"))
        assert _stats(scanned) == local_stats(str(root), run_dir, recursive=False)
        walked = src.walk(run, "files")
        assert not [n for n in walked if "stolen" in n or "outdir" in n]
        assert _stats(walked) == local_stats(str(root), os.path.join(run_dir, "files"), True, "files/")
        assert src.read_document(run, "stolen.jsonl") is None
        with pytest.raises(SourceError, match="outside the root|link out of the root"):
            src.read_range(run, "summary.json.bak", 0, 100)
        src.scan(run)
    warned = [r.getMessage() for r in caplog.records]
    assert any("stolen.jsonl" in m and "outside the root" in m for m in warned)
    assert any("linked-out" in m for m in warned) and any("linked-project" in m for m in warned)
    assert len([m for m in warned if m.endswith("stolen.jsonl: a link to " + str(outside / "secret.txt")
                + ", outside the root: skipped (links never lead out of a root)")]) == 1   # once, not per scan


def test_listing_without_pipelining_gives_the_same(root, source_factory, monkeypatch):
    """Where paramiko lacks the request machinery the pipelined listing uses, listings go one by one."""
    import sync_gateway.sources.sftp._listing as listing_module
    import sync_gateway.sources.sftp.source as sftp_module

    for i in range(30):
        write_run(str(root), f"p{i % 3}", f"r{i}", history_rows=2)
    (root / "p0" / "half").mkdir()
    pipelined = source_factory(str(root))
    expected = {r.location: pipelined.scan(r) for r in discover_hpc(pipelined)}
    for module in (sftp_module, listing_module):   # reads and listings
        monkeypatch.setattr(module, "pipelined_supported", lambda sftp: False)
    monkeypatch.setattr(listing_module, "listdirs", None)   # a listing must not take the pipelined path
    plain = source_factory(str(root))
    assert {r.location: plain.scan(r) for r in discover_hpc(plain)} == expected
    assert len(expected) == 30
    assert {name: _stats(st) for name, st in expected.items()} == {
        loc: local_stats(str(root), loc, recursive=False) for loc in expected}


def test_a_no_change_pass_costs_the_same_rounds_whatever_the_number_of_runs(root, source_factory, monkeypatch):
    """Discovery (readers/hpc/discovery.py, on the source's generic calls) and the scan and walks of every
    run that follow cost a fixed number of pipelined listing rounds, and no listing of its own per
    directory: 30 runs and 60 runs cost the same."""
    import paramiko

    import sync_gateway.sources.sftp._listing as listing_module

    rounds, single = [], []
    pipelined = listing_module.listdirs
    monkeypatch.setattr(listing_module, "listdirs",
                        lambda sftp, paths: rounds.append(len(paths)) or pipelined(sftp, paths))
    plain_listdir = paramiko.SFTPClient.listdir_attr
    monkeypatch.setattr(paramiko.SFTPClient, "listdir_attr",
                        lambda self, path=".": single.append(path) or plain_listdir(self, path))

    def a_pass():
        rounds.clear()
        src = source_factory(str(root))
        files = 0
        for run in discover_hpc(src):
            files += len(src.scan(run)) + len(src.walk(run, "files")) + len(src.walk(run, "code"))
        return files, len(rounds)

    for i in range(30):
        write_run(str(root), f"p{i % 3}", f"r{i}", history_rows=2, saved_files={"ckpt/model.pt": b"w", "a.txt": b"a"})
    files_30, rounds_30 = a_pass()
    for i in range(30, 60):
        write_run(str(root), f"p{i % 3}", f"r{i}", history_rows=2, saved_files={"ckpt/model.pt": b"w", "a.txt": b"a"})
    files_60, rounds_60 = a_pass()
    assert files_60 == 2 * files_30 > 0
    # the root, the projects, the run directories (stat_files), files/, files/ckpt/: 5 rounds either way
    assert rounds_30 == rounds_60 == 5, (rounds_30, rounds_60)
    assert single == []


def test_a_stale_listing_is_not_used_for_scan(root, source_factory):
    run_dir = write_run(str(root), "p", "r", history_rows=2)
    src = source_factory(str(root), listing_max_age_s=0.0)
    (run,) = discover_hpc(src)
    append(os.path.join(run_dir, "history.jsonl"), record(2, 2, loss=0.1))
    os.remove(os.path.join(run_dir, "output.log"))
    assert _stats(src.scan(run)) == local_stats(str(root), run_dir, recursive=False)


def test_pipelined_read_stops_at_the_end_of_the_file(root, source_factory):
    """A file that is shorter than asked (it shrank after the size was taken) reads up to its end."""
    from sync_gateway.sources.sftp._pipeline import read_range

    data = os.urandom(300_000)
    run_dir = write_run(str(root), "p", "r", saved_files={"x.bin": data})
    src = source_factory(str(root))
    discover_hpc(src)
    sftp, _ = src._link.sftp()
    with sftp.open(os.path.join(run_dir, "files", "x.bin"), "rb") as f:
        assert read_range(sftp, f.handle, 1000, 1_000_000) == data[1000:]
        assert read_range(sftp, f.handle, 0, 300_000, chunk_bytes=7000, in_flight=3) == data
        assert read_range(sftp, f.handle, 300_000, 50_000) == b""
        assert read_range(sftp, f.handle, 400_000, 50_000) == b""
    assert not sftp._expecting   # no request left behind


def _connections(sshd) -> int:
    """Connections the main sshd serves now: its direct children (one per connection)."""
    import psutil

    def alive(p) -> bool:
        # A connection's process may exit between children() and status(): a gone child is not open
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return len([p for p in psutil.Process(sshd.pid).children() if alive(p)])


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_roots_on_one_host_share_one_connection(tmp_path, sshd, source_factory):
    from sync_gateway.sources.sftp._ssh import ConnectionPool

    pool = ConnectionPool()   # not the process-wide one: other tests' sources must not count here
    for name in ("alice", "bob"):
        write_run(str(tmp_path / name), "p", f"run-{name}")
    assert _wait_for(lambda: _connections(sshd) == 0), "connections of earlier tests are still open"
    before = 0
    a = source_factory(str(tmp_path / "alice"), pool=pool)
    b = source_factory(str(tmp_path / "bob"), pool=pool)
    assert [r.run_id for r in discover_hpc(a)] == ["run-alice"]
    assert [r.run_id for r in discover_hpc(b)] == ["run-bob"]
    assert _wait_for(lambda: _connections(sshd) == before + 1)
    assert a.connects + b.connects == 1
    a.close()
    (run,) = discover_hpc(b)          # the other root goes on over the same connection
    assert b.read_document(run, "run.json") is not None
    assert _connections(sshd) == before + 1   # still open: b uses it
    b.close()                             # the last user: the connection closes
    assert _wait_for(lambda: _connections(sshd) == before)
    # a dead shared link: both sources reconnect, to one new connection
    assert discover_hpc(a) and discover_hpc(b)
    _kill_sessions(sshd)
    with pytest.raises(SourceError):
        discover_hpc(a)
    assert [r.run_id for r in discover_hpc(b)] == ["run-bob"]
    assert [r.run_id for r in discover_hpc(a)] == ["run-alice"]
    assert _wait_for(lambda: _connections(sshd) == before + 1)
