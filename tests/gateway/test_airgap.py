"""Air gap (issue 15, docs/airgap.md): export -> copy -> import against a real MLflow server equals a direct
sync; bundles out of order, repeated, corrupted, truncated; a run written across several exports; W&B runs."""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import replace
from typing import Any, Dict, List, Optional

import pytest
from _runwriter import RunWriter
from conftest import history, make_runner, server_run, sink_for, sync_once

from sync_gateway.airgap.export import export
from sync_gateway.airgap.importer import import_bundles, mirror_roots
from sync_gateway.settings import Settings
from sync_gateway.sinks.mlflow.sink import MlflowRun

T0 = 1_764_150_000_000


def write_runs(root: str, project: str, partial_tail: bool = False) -> Dict[str, RunWriter]:
    """Two ranks of a group (one finished, one failed), a run still active (heartbeat), everything the
    format has: config, history, system, summary, output.log, files/, code/diff.patch."""
    runs = {}
    for rank, code in ((0, 0), (1, 1)):
        w = RunWriter(root, project, f"rank{rank}", group="g1", config={"lr": 0.1, "model": {"depth": rank}},
                      created_ms=T0 + rank, slurm={"job_id": "42", "partition": "gpu"})
        w.log_many(({"loss": 1.0 / (i + 1), "acc": i / 500, "ok": i % 2 == 0} for i in range(500)), ts0_ms=T0)
        w.system({"cpu/system_percent": 10.0 + rank, "gpu/0/power_w": 200.0}, step=0, ts_ms=T0 + 5)
        w.summary({"loss": 0.002, "best": 0.7 + rank}, set_by_hand=["best"])
        w.raw("output.log", b"epoch 1\nepoch 2\n")
        w.save("ckpt/weights.bin", bytes(range(256)) * 300)
        os.makedirs(w.path("code"), exist_ok=True)
        with open(w.path("code/diff.patch"), "wb") as f:
            f.write(b"--- a\n+++ b\n")
        w.exit(code, "finished" if code == 0 else "failed", end_ms=T0 + 10_000 + rank)
        runs[f"rank{rank}"] = w
    live = RunWriter(root, project, "live", config={"lr": 0.3}, created_ms=T0 + 7)
    live.log_many(({"loss": float(i)} for i in range(300)), ts0_ms=T0)
    live.heartbeat()
    if partial_tail:
        live.raw("history.jsonl", b'{"seq":300,"step":300,"ts_ms":1764150000300,"val')
    runs["live"] = live
    return runs


def same_mtimes(src: str, dst: str) -> None:
    """Give the files of ``dst`` the mtimes of their twins in ``src`` (a summary's timestamp is its mtime)."""
    for d, _dirs, files in os.walk(src):
        for name in files:
            there = os.path.join(dst, os.path.relpath(os.path.join(d, name), src))
            if os.path.exists(there):
                ns = os.stat(os.path.join(d, name)).st_mtime_ns
                os.utime(there, ns=(ns, ns))


def _rootless(sync_id: str) -> str:
    """A sync id without its root id (``<root id>/P/r`` -> ``R/P/r``): the direct sync's root and the export
    side's root are two directories here, so two ids; what each holds must be the same."""
    parts = sync_id.split("/")
    return "/".join(["R"] + parts[1:]) if len(parts) == 3 and ":" not in parts[0] else sync_id


def dump(settings: Settings, project: str) -> Dict[str, Any]:
    """What the server holds for ``project``, with the project name and server ids taken out: per run its
    tags, params, status, start/end, every metric's full history, each artifact's digest, its parent."""
    sink = sink_for(settings)
    eid = sink.experiment_id(project)
    runs = sink._call("POST", "/runs/search", {"experiment_ids": [eid], "max_results": 1000})["runs"]
    by_id = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])}["hpc.run_id"]
             for r in runs}
    out: Dict[str, Any] = {}
    for r in runs:
        tags = {t["key"]: t["value"].replace(project, "P") for t in r["data"].get("tags", [])}
        tags["hpc.run_id"] = _rootless(tags["hpc.run_id"])
        if "mlflow.parentRunId" in tags:
            tags["mlflow.parentRunId"] = _rootless(by_id[tags["mlflow.parentRunId"]].replace(project, "P"))
        tags.pop("mlflow.loggedArtifacts", None)
        run = MlflowRun(r["info"]["run_id"], eid, r["info"].get("artifact_uri", ""))
        metrics = {m["key"]: sorted((int(p.get("step", 0)), int(p["timestamp"]), str(p["value"]))
                                    for p in sink.get_history(run, m["key"]))
                   for m in r["data"].get("metrics", [])}
        out[tags["hpc.run_id"]] = {
            "tags": tags, "params": {p["key"]: p["value"] for p in r["data"].get("params", [])},
            "status": r["info"]["status"], "start": r["info"].get("start_time"), "end": r["info"].get("end_time"),
            "metrics": metrics, "artifacts": _artifacts(sink, run, "", project.encode())}
    sink.close()
    return out


def _artifacts(sink, run: MlflowRun, path: str, project: bytes) -> Dict[str, str]:
    res = sink._call("GET", "/artifacts/list", params={"run_id": run.run_id, "path": path} if path
                     else {"run_id": run.run_id})
    out: Dict[str, str] = {}
    rel = run.artifact_uri[len("mlflow-artifacts:/"):].lstrip("/")
    for f in res.get("files", []):
        if f.get("is_dir"):
            out.update(_artifacts(sink, run, f["path"], project))
        else:
            r = sink.http.request("GET", f"/api/2.0/mlflow-artifacts/artifacts/{rel}/{f['path']}")
            out[f["path"]] = hashlib.sha256(r.content.replace(project, b"P")).hexdigest()  # run.json names it
    return out


@pytest.fixture
def sides(mlflow_server, tmp_path):
    """The cluster side (its own root and export state) and the connected side (a state dir, no roots)."""
    root = tmp_path / "cluster-runs"
    root.mkdir()
    (tmp_path / "transfer").mkdir()
    ex = Settings(roots=[str(root)], state_dir=str(tmp_path / "export-state"), bundle_max_bytes=64 << 10)
    im = Settings(server_url=mlflow_server.url, state_dir=str(tmp_path / "import-state"), retries=3)
    return ex, im, str(tmp_path / "transfer")


def do_import(im: Settings, paths: List[str], requests: Optional[List[str]] = None):
    """``requests``: filled with the path of every HTTP request the import made."""
    sink = sink_for(im)
    if requests is not None:
        real = sink.http.request

        def counted(method, path, *a, **kw):
            requests.append(f"{method} {path}")
            return real(method, path, *a, **kw)

        sink.http.request = counted
    try:
        return import_bundles(im, paths, sink=sink)
    finally:
        sink.close()


def bundles_in(d: str) -> List[str]:
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".bundle") and not n.startswith("."))


def test_export_copy_import_equals_a_direct_sync(settings, root, project, sides, tmp_path):
    ex, im, transfer = sides
    air = project + "air"
    # The same runs twice: one copy synced directly, the other through bundles (another project name).
    direct = write_runs(root, project, partial_tail=True)
    via = write_runs(ex.roots[0], air, partial_tail=True)
    same_mtimes(os.path.join(root, project), os.path.join(ex.roots[0], air))
    assert sync_once(settings).ok
    first = export(ex, transfer)
    assert first.ok and len(first.bundles) >= 3   # 64 KiB bundles: the backlog is split
    assert all(b["bytes"] <= ex.bundle_max_bytes for b in first.bundles)
    received = tmp_path / "received"
    shutil.copytree(transfer, received)           # the one-way transfer
    sent: List[str] = []
    rep = do_import(im, bundles_in(str(received)), sent)
    assert rep.ok and len(rep.applied) == len(first.bundles), rep
    assert any("log-batch" in r for r in sent)   # (the request counter below sees requests)

    # The runs go on between exports: the partial line is completed, rows appended, the live run ends.
    for w in (direct["live"], via["live"]):
        w.raw("history.jsonl", b'ues":{"loss":300.0}}\n')
        w.seq["history.jsonl"] = 301
        w.log_many(({"loss": float(i)} for i in range(301, 400)), ts0_ms=T0)
        w.summary({"loss": 399.0})
        w.exit(0, end_ms=T0 + 20_000)
    same_mtimes(os.path.join(root, project), os.path.join(ex.roots[0], air))
    assert sync_once(settings).ok
    second = export(ex, transfer)
    assert second.ok and second.bundles
    assert len(export(ex, transfer).bundles) == 0   # nothing new: nothing written
    for b in second.bundles:
        shutil.copy(os.path.join(transfer, b["name"]), received)
    rep = do_import(im, bundles_in(str(received)))   # the old bundles again, with the new ones
    assert rep.ok and len(rep.skipped) == len(first.bundles) and len(rep.applied) == len(second.bundles)

    want = dump(settings, project)
    got = dump(im, air)
    assert set(got) == set(want) == {"R/P/rank0", "R/P/rank1", "R/P/live", "group:P/g1"}
    for key in want:
        for part in want[key]:
            if part == "metrics":
                for mk in set(want[key][part]) | set(got[key][part]):
                    assert got[key][part].get(mk) == want[key][part].get(mk), (key, mk)
            assert got[key][part] == want[key][part], (key, part)
    assert len(got["R/P/live"]["metrics"]["loss"]) == 400 and got["R/P/live"]["status"] == "FINISHED"
    # A repeated import changes nothing on the server.
    made: List[str] = []
    again = do_import(im, bundles_in(str(received)), made)
    assert again.ok and not again.applied and again.sync is not None and again.sync.points_sent == 0
    assert made == []   # not one request: every run is unchanged since the pass that sent it
    assert dump(im, air) == got


def test_out_of_order_repeated_corrupted_truncated(sides, tmp_path):
    ex, im, transfer = sides
    project = "pq" + os.urandom(4).hex()
    w = RunWriter(ex.roots[0], project, "r1", config={"a": 1})
    w.log_many(({"x": float(i), "pad": "y" * 40} for i in range(3000)), ts0_ms=T0)
    w.exit(0, end_ms=T0 + 1)
    made = export(ex, transfer).bundles
    assert len(made) >= 3
    b1, b2, b3 = (os.path.join(transfer, m["name"]) for m in made[:3])
    rest = [os.path.join(transfer, m["name"]) for m in made[3:]]

    rep = do_import(im, [b2])                       # its predecessor is missing: refused, named
    assert not rep.ok and rep.refused and os.path.basename(b1) in next(iter(rep.refused.values()))
    assert mirror_roots(im) == []                   # nothing applied

    flipped = tmp_path / os.path.basename(b1)
    data = bytearray(open(b1, "rb").read())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    rep = do_import(im, [str(flipped)])
    (why,) = rep.refused.values()
    assert "checksum mismatch" in why and "\n" not in why and mirror_roots(im) == []

    cut = tmp_path / "cut" / os.path.basename(b1)
    cut.parent.mkdir()
    cut.write_bytes(bytes(data[: len(data) - 100]))
    rep = do_import(im, [str(cut)])
    (why,) = rep.refused.values()
    assert "truncated" in why and mirror_roots(im) == []

    rep = do_import(im, [b3, b2, b1])               # given out of order: applied in sequence order
    assert rep.ok, rep.refused
    assert rep.applied == [os.path.basename(b) for b in (b1, b2, b3)]
    rep = do_import(im, [b2, *rest])                # one repeated, the rest new
    assert rep.ok and rep.skipped == [os.path.basename(b2)] and len(rep.applied) == len(rest)
    mirror = os.path.join(mirror_roots(im)[0], project, "r1")
    assert open(os.path.join(mirror, "history.jsonl"), "rb").read() == open(w.path("history.jsonl"), "rb").read()
    sink = sink_for(im)
    assert len(history(sink, server_run(sink, project, "r1"), "x")) == 3000
    sink.close()


@pytest.mark.parametrize("rounds", [3])
def test_a_run_written_across_exports_imported_after_each(settings, root, project, sides, rounds):
    """Rows appended between exports, the last line partial at each export time, a summary rewritten in
    place, a file replaced by a shorter one: after each import the server equals a direct sync."""
    ex, im, transfer = sides
    air = project + "air"
    ws = [RunWriter(r, p, "grow", config={"k": 1}, created_ms=T0) for r, p in ((root, project), (ex.roots[0], air))]
    n = 0
    for rnd in range(rounds):
        for w in ws:
            w.log_many(({"v": float(n + i)} for i in range(200)), ts0_ms=T0)
            w.raw("history.jsonl", b'{"seq":%d,"step":%d,"ts_ms":%d,"values":{"v"' % (w.seq["history.jsonl"],
                                                                                     w.step, T0 + 9_999))
            w.summary({"v": float(rnd) * 1000, "note": "x" * (100 - rnd * 30)})
            w.save("state.txt", b"s" * (1000 - rnd * 300))
        same_mtimes(os.path.join(root, project), os.path.join(ex.roots[0], air))
        assert sync_once(settings).ok
        assert export(ex, transfer).ok
        rep = do_import(im, bundles_in(transfer))
        assert rep.ok, rep.refused
        for w in ws:   # complete the partial line for the next round
            w.raw("history.jsonl", b':%d.0}}\n' % (n + 200))
            w.seq["history.jsonl"] += 1
            w.step += 1
        same_mtimes(os.path.join(root, project), os.path.join(ex.roots[0], air))
        n += 201
    assert sync_once(settings).ok
    assert export(ex, transfer).ok
    assert do_import(im, bundles_in(transfer)).ok
    want, got = dump(settings, project), dump(im, air)
    assert got == want
    assert len(got["R/P/grow"]["metrics"]["v"]) == n


def test_wandb_offline_runs_go_through_a_bundle(settings, root, sides):
    import _wandbwriter as wb

    wb.need_wandb()
    ex, im, transfer = sides
    wproject = "wb" + os.urandom(4).hex()
    body = """
run = wandb.init(project=args["project"], config={"lr": 0.1}, name="r0", tags=["a"])
for i in range(50):
    run.log({"loss": 1.0 / (i + 1)})
with open("f.txt", "w") as f:
    f.write("saved")
wandb.save("f.txt", policy="now")
run.finish()
"""
    wb.write(os.path.join(root, "wdirect"), body, {"project": wproject})
    # W&B saves a file as a link to the job's working directory: copied as content (the link would lead
    # out of the other root, which is never followed), with its mtime.
    shutil.copytree(os.path.join(root, "wdirect"), os.path.join(ex.roots[0], "wair"),
                    ignore_dangling_symlinks=True)
    assert sync_once(settings).ok
    assert export(ex, transfer).ok
    assert do_import(im, bundles_in(transfer)).ok
    # One W&B project, so one experiment holds both copies, each under its directory's label.
    both = dump(settings, wproject)
    assert len(both) == 2
    norm = []
    for key, v in sorted(both.items()):
        label = key.split("/")[1]   # R/<label>/<run id>
        norm.append({"tags": {k: t.replace(label, "L") for k, t in v["tags"].items()},
                     **{k: x for k, x in v.items() if k != "tags"}})
    assert norm[0] == norm[1]
    assert len(norm[0]["metrics"]["loss"]) == 50 and "files/f.txt" in norm[0]["artifacts"]


def test_an_export_killed_around_its_rename_loses_nothing(sides, tmp_path, monkeypatch):
    """Killed before the rename: the same sequence number is written again. Killed after it, before the
    cursors were saved: the next bundle re-exports the same ranges; importing both changes nothing twice."""
    import sync_gateway.airgap.export as exmod

    ex, im, transfer = sides
    project = "pk" + os.urandom(4).hex()
    w = RunWriter(ex.roots[0], project, "r1")
    w.log_many(({"x": float(i)} for i in range(100)), ts0_ms=T0)

    real_replace = os.replace

    def crash_on_bundle(src, dst):
        if str(dst).endswith(".bundle"):
            raise KeyboardInterrupt("killed before the rename")
        return real_replace(src, dst)

    monkeypatch.setattr(exmod.os, "replace", crash_on_bundle)
    with pytest.raises(KeyboardInterrupt):
        export(ex, transfer)
    monkeypatch.setattr(exmod.os, "replace", real_replace)
    assert bundles_in(transfer) == []
    first = export(ex, transfer).bundles
    assert [b["seq"] for b in first] == [1]          # the number that never left is used again

    w.log_many(({"x": float(i)} for i in range(100, 200)), ts0_ms=T0)
    monkeypatch.setattr(exmod, "_sidecar", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("after rename")))
    with pytest.raises(KeyboardInterrupt):
        export(ex, transfer)
    monkeypatch.undo()
    assert len(bundles_in(transfer)) == 2
    third = export(ex, transfer).bundles
    assert [b["seq"] for b in third] == [3]          # 2 left (its sidecar written on recovery): next number
    assert os.path.exists(bundles_in(transfer)[1] + ".sha256")
    rep = do_import(im, bundles_in(transfer))
    assert rep.ok and len(rep.applied) == 3
    mirror = os.path.join(mirror_roots(im)[0], project, "r1", "history.jsonl")
    assert open(mirror, "rb").read() == open(w.path("history.jsonl"), "rb").read()


def test_links_out_of_a_root_are_not_exported(sides, tmp_path):
    ex, im, transfer = sides
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"do not export")
    w = RunWriter(ex.roots[0], "pl", "r1")
    os.makedirs(w.path("files"))
    os.symlink(str(secret), w.path("files/leak.txt"))
    os.symlink(str(secret), w.path("output.log"))
    assert export(ex, transfer).ok
    for b in bundles_in(transfer):
        assert b"do not export" not in _inflated(b)


def _inflated(path: str) -> bytes:
    import zlib

    from sync_gateway.airgap.bundle import verify

    m = verify(path)
    raw = open(path, "rb").read()
    return zlib.decompress(raw[m.payload_offset:m.payload_offset + m.payload_bytes])


def test_import_side_needs_no_roots(sides):
    _, im, _ = sides
    assert im.roots == []
    assert import_bundles(replace(im), []).ok   # nothing imported yet: nothing to do, no error


def test_make_runner_is_untouched_by_the_import_side(settings):
    # The normal pass still refuses a config without roots (import's config has none).
    from sync_gateway.errors import ConfigError

    with pytest.raises(ConfigError):
        make_runner(replace(settings, roots=[]))


def test_root_relative_locations_local_and_sftp(tmp_path):
    """Bundle paths are <root id>/<path below the root>, for local roots and ssh:// roots alike."""
    from sync_gateway.sources.local import LocalSource

    src = LocalSource(str(tmp_path))
    assert src.relative(str(tmp_path / "p" / "r")) == "p/r"
    assert src.relative(str(tmp_path)) == ""
    assert src.relative(str(tmp_path.parent)) is None
    pytest.importorskip("paramiko")
    from sync_gateway.sources.sftp.source import SftpSource

    (tmp_path / "none").write_text("")
    sftp = SftpSource("ssh://127.0.0.1:1/scratch/runs", known_hosts=str(tmp_path / "kh"),
                      ssh_config=str(tmp_path / "none"))
    assert sftp.relative("/scratch/runs/a/wandb") == "a/wandb"
    assert sftp.relative("/scratch/runs") == ""
    assert sftp.relative("/scratch/other") is None


def test_a_runs_files_are_exported_in_the_order_they_were_written(tmp_path):
    """A backlog split across bundles: the exit record comes after the last rows, so an import of the
    first bundles alone never shows a finished run with rows missing."""
    from sync_gateway.airgap.bundle import verify

    root, out = tmp_path / "runs", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    w = RunWriter(str(root), "p", "r1")
    w.log_many(({"x": float(i), "pad": "z" * 50} for i in range(5000)), ts0_ms=T0)
    w.exit(0)
    ex = Settings(roots=[str(root)], state_dir=str(tmp_path / "s"), bundle_max_bytes=64 << 10)
    made = export(ex, str(out)).bundles
    assert len(made) >= 2
    order = [e.path.rsplit("/", 1)[1] for b in made for e in verify(os.path.join(str(out), b["name"])).entries]
    assert order[0] == "run.json" and order[-1] == "exit.json" and "exit.json" not in order[:-1]


def test_a_file_that_vanishes_during_an_export_is_looked_at_again(tmp_path, monkeypatch):
    from sync_gateway.errors import SourceError
    from sync_gateway.sources.local import LocalSource

    root, out = tmp_path / "runs", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    w = RunWriter(str(root), "p", "r1")
    w.log_many(({"x": float(i)} for i in range(100)), ts0_ms=T0)
    ex = Settings(roots=[str(root)], state_dir=str(tmp_path / "s"))
    real = LocalSource.read_range

    def flaky(self, run, name, offset, length):
        if name == "history.jsonl":
            raise SourceError(self.display, name, "No such file or directory")
        return real(self, run, name, offset, length)

    monkeypatch.setattr(LocalSource, "read_range", flaky)
    (first,) = export(ex, str(out)).bundles     # the rest is exported; that file is not lost
    assert first["entries"] == 1                # run.json, and no empty history.jsonl
    monkeypatch.undo()
    (b,) = export(ex, str(out)).bundles         # the next export carries it whole
    assert b["data_bytes"] == os.path.getsize(w.path("history.jsonl"))
