"""The air gap under attack and under load (issue 21): bundles crafted by hand, a kill on the very first
export, a large inbox under a low descriptor limit, FIFOs, capture clocks far ahead, full disks, bounds on
entries and data, control characters in names, a repeated sequence number past the import log.

The connected side syncs into the in-memory reference sink: what is checked here is the mirror, the import
state and the one-line refusals, not a server (tests/gateway/test_airgap.py covers MLflow)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import struct
import threading
import time
import zlib
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

import pytest
from _ids import key as run_key
from _runwriter import RunWriter

from sync_gateway.airgap import bundle as bmod
from sync_gateway.airgap.bundle import BundleWriter, bundle_name, verify
from sync_gateway.airgap.export import ExportState, export
from sync_gateway.airgap.importer import ImportState, import_bundles, mirror_roots
from sync_gateway.cli import main
from sync_gateway.errors import BundleError
from sync_gateway.settings import Settings
from sync_gateway.sinks.memory import MemorySink

EID = "0123456789abcdef"
RID = "r0123456789ab"
NOW_MS = int(time.time() * 1000)


def bundles_in(d: str) -> List[str]:
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".bundle") and not n.startswith("."))


def write_bundle(d: str, seq: int, entries: List[Tuple[str, str, int, bytes]], created_ms: Optional[int] = None,
                 export_id: str = EID, host: str = "login1", name: Optional[str] = None) -> str:
    """A well-formed bundle, as export writes it: ``entries`` are (path below the root, kind, offset, bytes)."""
    path = os.path.join(d, name or bundle_name(export_id, seq))
    with open(path, "wb") as f:
        w = BundleWriter(f, export_id, seq, NOW_MS if created_ms is None else created_ms, host, {RID: "/x"})
        for rel, kind, offset, data in entries:
            w.add(f"{RID}/{rel}", kind, offset, 1_764_150_000_000_000_000, iter([data]))
        w.finish()
    return path


def craft(path: str, manifest: Dict[str, Any], payload: bytes, raw_manifest: Optional[bytes] = None) -> str:
    """A bundle framed by hand (docs/airgap.md, "The bundle format"): checksums right, content hostile."""
    z = zlib.compress(payload)
    m = raw_manifest if raw_manifest is not None else json.dumps(manifest).encode()
    body = b"HPCSYNCB" + z + m + struct.pack(">QQ", len(z), len(m))
    with open(path, "wb") as f:
        f.write(body + hashlib.sha256(body).digest() + b"HPCSYNCE")
    return path


def manifest(entries: List[Dict[str, Any]], **kw: Any) -> Dict[str, Any]:
    doc = {"format": "hpc-sync-bundle", "version": "1.0", "export_id": EID, "seq": 1, "created_ms": NOW_MS,
           "host": "h", "roots": {RID: "/x"}, "entries": entries}
    doc.update(kw)
    return doc


def entry(path: str, data: bytes, kind: str = "append", offset: int = 0, length: Optional[int] = None
          ) -> Dict[str, Any]:
    return {"path": f"{RID}/{path}", "kind": kind, "offset": offset,
            "length": len(data) if length is None else length, "sha256": hashlib.sha256(data).hexdigest(),
            "mtime_ns": 0}


@pytest.fixture
def im(tmp_path) -> Settings:
    return Settings(server_url="http://unused.invalid", state_dir=str(tmp_path / "import-state"))


def do_import(im: Settings, paths: List[str], sink: Optional[MemorySink] = None, **kw: Any):
    return import_bundles(im, paths, sink=sink or MemorySink(), **kw)


def run_json(project: str, run_id: str) -> bytes:
    return json.dumps({"format_version": "1.0", "project": project, "id": run_id, "attempt": 1,
                       "created_ms": 1}).encode()


# -- item 2: a kill during the very first export ------------------------------------------------------------

def test_a_kill_after_the_first_bundles_rename_keeps_one_export_id(tmp_path, monkeypatch, im):
    """The export id is durable before bundle 1 names it: a kill after that bundle's rename, before the
    cursors were saved, leaves the next export on the same id at sequence 2, and import takes them all."""
    import sync_gateway.airgap.export as exmod

    root, out = tmp_path / "runs", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    w = RunWriter(str(root), "p", "r1")
    w.log_many({"x": float(i)} for i in range(100))
    ex = Settings(roots=[str(root)], state_dir=str(tmp_path / "ex"))
    monkeypatch.setattr(exmod, "_sidecar", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("SIGKILL")))
    with pytest.raises(KeyboardInterrupt):
        export(ex, str(out))
    monkeypatch.undo()
    w.log_many({"x": float(i)} for i in range(100, 200))
    assert export(ex, str(out)).ok
    ids = {verify(b).export_id for b in bundles_in(str(out))}
    assert len(ids) == 1, ids
    rep = do_import(im, bundles_in(str(out)))
    assert rep.ok and len(rep.applied) == 2, rep.refused
    mirror = os.path.join(mirror_roots(im)[0], "p", "r1", "history.jsonl")
    assert open(mirror, "rb").read() == open(w.path("history.jsonl"), "rb").read()


def test_a_kill_before_the_intent_of_the_first_bundle_keeps_one_export_id(tmp_path, monkeypatch):
    import sync_gateway.airgap.export as exmod

    root, out = tmp_path / "runs", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    RunWriter(str(root), "p", "r1").log({"x": 1.0})
    ex = Settings(roots=[str(root)], state_dir=str(tmp_path / "ex"))
    real = exmod._atomic_write

    def die_on_intent(path, obj, *a, **kw):
        if path.endswith("intent.json"):
            raise KeyboardInterrupt("SIGKILL")
        return real(path, obj, *a, **kw)

    monkeypatch.setattr(exmod, "_atomic_write", die_on_intent)
    with pytest.raises(KeyboardInterrupt):
        export(ex, str(out))
    first_id = ExportState.load(ex).export_id
    monkeypatch.undo()
    assert first_id
    (b,) = export(ex, str(out)).bundles
    assert b["name"] == bundle_name(first_id, 1)


# -- item 7: a large inbox ---------------------------------------------------------------------------------

def _small_inbox(d: str, n: int) -> List[str]:
    paths = [write_bundle(d, 1, [("p/r1/run.json", "replace", 0, run_json("p", "r1"))])]
    for seq in range(2, n + 1):
        line = json.dumps({"seq": seq - 2, "step": seq - 2, "ts_ms": 1, "values": {"x": seq}}).encode() + b"\n"
        offset = sum(len(json.dumps({"seq": s - 2, "step": s - 2, "ts_ms": 1, "values": {"x": s}})) + 1
                     for s in range(2, seq))
        paths.append(write_bundle(d, seq, [("p/r1/history.jsonl", "append", offset, line)]))
    return paths


@pytest.mark.slow  # builds and imports hundreds of bundles (about 3.5 s)
def test_a_large_inbox_imports_under_a_low_descriptor_limit(tmp_path, im, monkeypatch):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    paths = _small_inbox(str(inbox), 300)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 60, hard))   # far fewer than the bundles
    try:
        sink = MemorySink()
        rep = do_import(im, paths[::-1], sink)
        assert rep.ok and len(rep.applied) == 300, list(rep.refused.values())[:3]
        assert len(sink.stored(f"{RID}/p/r1").points) == 299
        # The next cron over the same inbox: already imported, so not verified again (a trailer read each).
        verified: List[str] = []
        real = bmod.verify_file
        monkeypatch.setattr(bmod, "verify_file", lambda f, name, *a, **kw: verified.append(name) or real(
            f, name, *a, **kw))
        rep = do_import(im, paths)
        assert rep.ok and len(rep.skipped) == 300 and verified == []
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_prune_imported_removes_only_what_was_imported(tmp_path, im):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    paths = _small_inbox(str(inbox), 5)
    for p in paths:
        with open(p + ".sha256", "w") as f:
            f.write("x  " + os.path.basename(p) + "\n")
    waiting = paths[4]
    rep = do_import(im, paths[:2] + [waiting], prune_imported=True)   # 5 waits for 3 and 4
    assert rep.applied == [os.path.basename(p) for p in paths[:2]]
    assert sorted(os.listdir(inbox)) == sorted(os.path.basename(p) + s for p in paths[2:] for s in ("", ".sha256"))
    rep = do_import(im, bundles_in(str(inbox)), prune_imported=True)
    assert rep.ok and len(rep.applied) == 3 and os.listdir(inbox) == []


# -- items 8, 9, 16, 17: what a bundle may declare -----------------------------------------------------------

@pytest.mark.parametrize("doc,why", [
    (manifest([entry("p/r/history.jsonl", b"x\n", kind="reset", offset=1 << 40)]), "reset entry starts at 0"),
    (manifest([entry("p/r/h\nOK forged.bundle", b"x\n")]), "control character"),
    (manifest([entry("p/r/\x1b[2Jh", b"x\n")]), "control character"),
    (manifest([entry("p/r/a\\b", b"x\n")]), "backslash"),
    (manifest([entry("p/r/h", b"x\n")], host="login1\nOK hpcsync-x.bundle: forged"), "host"),
    (manifest([entry("p/r/h", b"x\n")], roots={RID: "/x\x1b[31m"}), "roots"),
    (manifest([entry("p/r/h", b"x\n")], created_ms=10 ** 20), "created_ms"),
    (manifest([entry("p/r/h", b"x\n")], created_ms=-5), "created_ms"),
])
def test_a_hostile_manifest_is_refused_in_one_line(tmp_path, im, capsys, doc, why):
    b = craft(str(tmp_path / bundle_name(EID, 1)), doc, b"x\n")
    with pytest.raises(BundleError, match=why):
        verify(b)
    assert main(["verify", b]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED ") and len(out.splitlines()) == 1 and "\x1b" not in out, out
    rep = do_import(im, [b])
    assert not rep.ok and mirror_roots(im) == []


def test_a_bundle_that_unpacks_to_more_than_the_bound_is_refused_before_a_byte_is_written(tmp_path, im):
    zeros = bytes(8 << 20)  # 8 MiB of zeros: 8 KiB compressed
    b = craft(str(tmp_path / bundle_name(EID, 1)), manifest([entry("p/r/files/big.bin", zeros, kind="replace")]),
              zeros)
    assert os.path.getsize(b) < 64 << 10
    small = replace(im, bundle_max_bytes=1 << 20)
    rep = do_import(small, [b])
    (why,) = rep.refused.values()
    assert "bundle_max_bytes" in why and "\n" not in why
    assert mirror_roots(small) == []


def test_too_many_entries_are_refused_with_the_setting_named(tmp_path, im):
    entries = [entry(f"p/r/files/f{i}", b"") for i in range(101)]
    b = craft(str(tmp_path / bundle_name(EID, 1)), manifest(entries), b"")
    rep = do_import(replace(im, bundle_max_entries=100), [b])
    (why,) = rep.refused.values()
    assert "bundle_max_entries" in why and mirror_roots(im) == []
    assert do_import(replace(im, bundle_max_entries=200), [b]).ok


def test_a_manifest_of_tiny_containers_is_refused_unparsed(tmp_path, im):
    # 1 MB of "{}," would be 350,000 dicts (> 20 MB) once parsed: the count is checked on the raw bytes
    raw = b'{"format": "hpc-sync-bundle", "version": "1.0", "x": [' + b"{}," * 350_000 + b'{}]}'
    b = craft(str(tmp_path / bundle_name(EID, 1)), {}, b"", raw_manifest=raw)
    rep = do_import(replace(im, bundle_max_entries=1000), [b])
    (why,) = rep.refused.values()
    assert "bundle_max_entries" in why


def test_a_fifo_named_like_a_bundle_is_refused_without_blocking(tmp_path, im, capsys):
    fifo = str(tmp_path / bundle_name(EID, 1))
    os.mkfifo(fifo)
    good = write_bundle(str(tmp_path), 2, [("p/r1/run.json", "replace", 0, run_json("p", "r1"))])
    results: Dict[str, Any] = {}

    def go():
        results["verify"] = main(["verify", fifo, good])
        results["import"] = do_import(im, [fifo, good])

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():   # unblock the open() so the test process can end
        with open(fifo, "wb"):
            pass
        t.join(10)
        pytest.fail("verify or import blocked in open() on a FIFO")
    assert results["verify"] == 1
    assert "not a regular file" in capsys.readouterr().out
    assert "not a regular file" in results["import"].refused[os.path.basename(fifo)]


# -- item 10: the capture clock -----------------------------------------------------------------------------

def _live_run(d: str, seq: int, created_ms: int, rows: int, offset: int = 0) -> Tuple[str, int]:
    data = b"".join(json.dumps({"seq": offset + i, "step": offset + i, "ts_ms": 1,
                                "values": {"x": float(i)}}).encode() + b"\n" for i in range(rows))
    hb = json.dumps({"ts_ms": created_ms, "attempt": 1, "pid": 1, "host": "n"}).encode()
    entries = [("p/live/history.jsonl", "append", 0, data)] if seq == 1 else []
    entries += [("p/live/run.json", "replace", 0, run_json("p", "live"))] if seq == 1 else []
    entries.append(("p/live/heartbeat.json", "replace", 0, hb))
    return write_bundle(d, seq, entries, created_ms=created_ms), len(data)


def test_one_bundle_stamped_a_year_ahead_does_not_freeze_the_clock(tmp_path, im):
    t0 = NOW_MS - 3_600_000
    year = 365 * 86_400_000
    sink = MemorySink()
    b1, _ = _live_run(str(tmp_path), 1, t0, 10)
    b2 = write_bundle(str(tmp_path), 2, [], created_ms=t0 + 60_000 + year)
    b3 = write_bundle(str(tmp_path), 3, [], created_ms=t0 + 120_000)
    assert do_import(im, [b1, b2, b3], sink).ok
    state = ImportState.load(im)
    assert state.capture_ms <= int(time.time() * 1000)
    assert state.exports[EID]["capture_ms"] < NOW_MS, "a year-ahead stamp still moves the clock"


def test_a_created_ms_out_of_range_does_not_break_status(tmp_path, im, capsys):
    b = craft(str(tmp_path / bundle_name(EID, 1)), manifest([entry("p/r/h", b"x\n")], created_ms=10 ** 20),
              b"x\n")
    do_import(im, [b])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"state_dir": im.state_dir, "server": {"url": "http://unused.invalid"}}))
    main(["status", "--config", str(cfg)])   # no traceback, whatever the state holds
    # A state written by an older gateway with an absurd capture time: status still prints one line
    st = ImportState.load(im)
    st.exports["fedcba9876543210"] = {"seq": 1, "capture_ms": 10 ** 20, "host": "h", "imported": 1}
    st.save(im)
    main(["status", "--config", str(cfg)])
    assert "fedcba9876543210" in capsys.readouterr().out


# -- item 15: one-line refusals, the others apply -------------------------------------------------------------

def test_a_deep_manifest_beside_good_bundles_is_refused_alone(tmp_path, im):
    good = _small_inbox(str(tmp_path), 3)
    raw = b'{"format": "hpc-sync-bundle", "version": "1.0", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    deep = craft(str(tmp_path / bundle_name("fedcba9876543210", 1)), {}, b"", raw_manifest=raw)
    rep = do_import(im, [deep, *good])
    assert len(rep.applied) == 3 and list(rep.refused) == [os.path.basename(deep)]
    assert "\n" not in rep.refused[os.path.basename(deep)]


def test_a_full_disk_while_recording_a_bundle_is_one_line_and_retried(tmp_path, im, monkeypatch):
    paths = _small_inbox(str(tmp_path), 3)
    real = ImportState.save
    calls = [0]

    def full(self, settings):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, settings)

    monkeypatch.setattr(ImportState, "save", full)
    rep = do_import(im, paths)
    assert not rep.ok and any("No space left" in why and "\n" not in why for why in rep.refused.values())
    monkeypatch.undo()
    rep = do_import(im, paths)
    assert rep.ok and len(rep.applied) + len(rep.skipped) == 3


# -- item 19: a repeated sequence number past the import log ------------------------------------------------

def test_another_bundle_with_an_old_sequence_number_is_refused_past_the_log(tmp_path, im):
    (tmp_path / "a").mkdir()
    paths = _small_inbox(str(tmp_path / "a"), 105)
    assert do_import(im, paths).ok
    other = tmp_path / "b"
    other.mkdir()
    forged = write_bundle(str(other), 1, [("p/r1/run.json", "replace", 0, run_json("p", "other"))])
    rep = do_import(im, [forged])
    assert not rep.ok and "another bundle with this sequence number" in rep.refused[os.path.basename(forged)]
    # renamed, so that its name says nothing: the content decides
    renamed = shutil.copy(forged, str(other / "renamed.bundle"))
    assert not do_import(im, [renamed]).ok
    assert do_import(im, [paths[0], shutil.copy(paths[3], str(other / "x.bundle"))]).ok


# -- item 18: one file-name rule for a direct sync and for export --------------------------------------------

def test_a_file_name_with_a_backslash_or_a_newline_is_skipped_by_both_paths(tmp_path, caplog):
    from sync_gateway.engine.runner import Runner

    root, out = tmp_path / "runs", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    w = RunWriter(str(root), "p", "r1")
    w.log({"x": 1.0})
    for name in ("a\\b.txt", "new\nline.txt", "ok.txt"):
        w.save(name, b"data")
    w.exit(0)
    direct = MemorySink()
    settings = Settings(roots=[str(root)], server_url="http://unused.invalid", state_dir=str(tmp_path / "d"))
    with Runner(settings, sink=direct) as r:
        assert r.run_pass().ok
    assert [f for f in direct.stored(run_key(str(root), "p", "r1")).files if f.startswith("files/")] == ["files/ok.txt"]
    assert "files/a\\b.txt holds a backslash" in caplog.text and "'files/new\\nline.txt'" in caplog.text

    ex = Settings(roots=[str(root)], state_dir=str(tmp_path / "ex"))
    assert export(ex, str(out)).ok
    names = [e.path.split("/", 3)[3] for b in bundles_in(str(out)) for e in verify(b).entries]
    assert "files/ok.txt" in names and not [n for n in names if "line" in n or "\\" in n]
    via = MemorySink()
    im = Settings(server_url="http://unused.invalid", state_dir=str(tmp_path / "im"))
    assert do_import(im, bundles_in(str(out)), via).ok
    k = run_key(str(root), "p", "r1")   # the same key both ways: the mirror keeps the cluster's root id
    assert sorted(via.stored(k).files) == sorted(direct.stored(k).files)


# -- the follow-ups of issue 21 --------------------------------------------------------------------------------

def _age(d: str, ms: int) -> None:
    for top, _dirs, files in os.walk(d):
        for n in files:
            os.utime(os.path.join(top, n), ns=(ms * 1_000_000, ms * 1_000_000))


def test_a_run_that_dies_silently_is_seen_dying_through_a_clock_only_bundle(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    w = RunWriter(str(root), "p", "live")
    w.log_many({"x": float(i)} for i in range(10))
    w.heartbeat()
    then_ms = NOW_MS - 1_000_000    # the run's last sign of life, 1,000 s ago (stale_after_s is 300)
    _age(w.dir, then_ms)
    ex = Settings(roots=[str(root)], state_dir=str(tmp_path / "ex"))
    (first,) = export(ex, str(out), clock=lambda: (then_ms + 1000) / 1000).bundles   # it was alive then
    sink = MemorySink()
    im = Settings(server_url="http://unused.invalid", state_dir=str(tmp_path / "im"))
    assert do_import(im, bundles_in(str(out)), sink).ok
    assert sink.stored(run_key(str(root), "p", "live")).state == "active"
    # It dies without an exit record: no file changes, but the next export carries the clock across.
    (clock_only,) = export(ex, str(out)).bundles
    assert clock_only["entries"] == 0
    assert export(ex, str(out)).bundles == []    # once: the connected side has the clock now
    assert do_import(im, bundles_in(str(out)), sink).ok
    assert sink.stored(run_key(str(root), "p", "live")).state == "crashed"


def test_the_export_cursors_of_a_deleted_run_are_forgotten(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    for rid in ("keep", "gone"):
        RunWriter(str(root), "p", rid).log({"x": 1.0})
    ex = Settings(roots=[str(root)], state_dir=str(tmp_path / "ex"))
    assert export(ex, str(out)).ok
    assert any("/p/gone/" in p for p in ExportState.load(ex).files)
    shutil.rmtree(root / "p" / "gone")
    assert export(ex, str(out)).ok
    files = ExportState.load(ex).files
    assert files and not any("/p/gone/" in p for p in files) and any("/p/keep/" in p for p in files)


def test_a_lost_export_state_and_a_shorter_rewrite_leave_no_old_bytes_in_the_mirror(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    w = RunWriter(str(root), "p", "r1")
    w.save("big.bin", os.urandom(300 << 10))    # larger than a 64 KiB bundle: split
    ex = Settings(roots=[str(root)], state_dir=str(tmp_path / "ex"), bundle_max_bytes=64 << 10)
    im = Settings(server_url="http://unused.invalid", state_dir=str(tmp_path / "im"))
    assert export(ex, str(out)).ok
    assert do_import(im, bundles_in(str(out))).ok
    shutil.rmtree(tmp_path / "ex")                     # the export state is lost ...
    w.save("big.bin", os.urandom(200 << 10))    # ... and the file rewritten shorter
    for b in bundles_in(str(out)):
        os.unlink(b)
    made = export(ex, str(out)).bundles
    assert len(made) >= 3
    assert do_import(im, bundles_in(str(out))).ok
    mirror = os.path.join(mirror_roots(im)[0], "p", "r1", "files", "big.bin")
    assert open(mirror, "rb").read() == open(w.path("files/big.bin"), "rb").read()


def test_the_cli_prunes_with_prune_imported(tmp_path, capsys):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    paths = _small_inbox(str(inbox), 3)
    cfg = tmp_path / "c.yaml"   # a server that refuses connections: the pass fails, the bundles are imported
    cfg.write_text(json.dumps({"state_dir": str(tmp_path / "s"), "retries": 0, "timeout_s": 2,
                               "server": {"url": "http://127.0.0.1:9"}}))
    main(["-q", "import", "--config", str(cfg), "--prune-imported", *paths])
    out = capsys.readouterr().out
    assert "pruned 3 imported bundle(s)" in out and os.listdir(inbox) == [], out


# -- item 3: two clusters through one air gap --------------------------------------------------------------

def test_a_second_clusters_root_with_the_same_id_is_refused_not_merged(tmp_path):
    """The same root path on two clusters has the same default id: the second cluster's bundle is refused
    with one line that says what to do, and the first cluster's run is left as it was."""
    d = str(tmp_path)
    a = write_bundle(d, 1, [("p/r1/run.json", "replace", 0, run_json("p", "r1")),
                            ("p/r1/history.jsonl", "append", 0, b'{"seq":0,"step":0,"ts_ms":5,"values":{"x":1}}\n')])
    b = write_bundle(d, 1, [("p/r1/run.json", "replace", 0, run_json("p", "r1")),
                            ("p/r1/history.jsonl", "append", 0, b'{"seq":0,"step":0,"ts_ms":7,"values":{"x":2}}\n')],
                     export_id="fedcba9876543210", host="login1.clusterb")
    sink = MemorySink()
    im = Settings(server_url="http://unused.invalid", state_dir=str(tmp_path / "im"))
    rep = do_import(im, [a, b], sink)
    (why,) = rep.refused.values()
    assert os.path.basename(b) in why and "give the root its own id" in why and "\n" not in why
    assert rep.applied == [os.path.basename(a)]
    assert sink.stored(f"{RID}/p/r1").points == {("history", "x", 0, 5, 1)}
    # the same cluster after losing its export state (a new export id, the same host and root): the same root
    c = write_bundle(d, 1, [("p/r1/history.jsonl", "append", 0, b'{"seq":0,"step":0,"ts_ms":5,"values":{"x":1}}\n')],
                     export_id="00000000000000aa")
    assert do_import(im, [c], sink).ok and len(sink.runs) == 1
