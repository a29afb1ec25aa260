"""The air-gap commands as an operator runs them (docs/airgap.md): export, verify, sha256sum -c, import,
status on both sides, hostile bundles; and a SIGKILL loop on import against the real MLflow server.

`make test`: 6 kills over a run of 8,000 rows. `make soak` (HPCSYNC_SOAK=1): 40 kills, 100,000 rows.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from typing import Any, Dict, List

import pytest
import yaml
from _kills import KillTimer
from _runwriter import RunWriter, read_stream
from conftest import REPO, assert_synced_once, disk_points, server_run, sink_for
from support import soak_count

pytestmark = pytest.mark.slow   # every test runs the CLI in a subprocess

SEED = int(os.environ.get("HPCSYNC_SEED") or random.randrange(1 << 30))
KILLS = soak_count(6, 40)
ROWS = soak_count(8_000, 100_000)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "sync_gateway.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def bundles_in(d: str) -> List[str]:
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".bundle") and not n.startswith("."))


@pytest.fixture
def cluster(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (tmp_path / "out").mkdir()
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({"roots": [str(root)], "state_dir": str(tmp_path / "export-state"),
                                   "bundle_max_bytes": 65536}))
    return str(root), str(cfg), str(tmp_path / "out")


def test_export_verify_sha256sum_status_on_the_cluster_side(cluster, tmp_path):
    root, cfg, out = cluster
    w = RunWriter(root, "p", "r1")
    w.log_many({"x": float(i)} for i in range(2000))
    r = cli("export", "--config", cfg, "--to", out)
    assert r.returncode == 0, r.stderr
    wrote = [line for line in r.stdout.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == len(bundles_in(out)) >= 2
    again = cli("export", "--config", cfg, "--to", out)
    assert again.returncode == 0 and again.stdout.strip().startswith("nothing new since the last export")
    assert len(again.stdout.strip().splitlines()) == 1 and len(bundles_in(out)) == len(wrote)

    for b in bundles_in(out):   # the check on the transfer path needs nothing but coreutils
        assert subprocess.run(["sha256sum", "-c", os.path.basename(b) + ".sha256"], cwd=out,
                              capture_output=True).returncode == 0
    v = cli("verify", *bundles_in(out))
    assert v.returncode == 0 and v.stdout.count("OK ") == len(wrote), v.stdout + v.stderr

    bad = tmp_path / os.path.basename(bundles_in(out)[0])
    data = bytearray(open(bundles_in(out)[0], "rb").read())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    v = cli("verify", str(bad))
    assert v.returncode == 1 and v.stdout.startswith("FAILED ") and "checksum mismatch" in v.stdout
    assert len(v.stdout.strip().splitlines()) == 1

    s = cli("status", "--config", cfg)
    assert f"{len(wrote)} bundle(s) written" in s.stdout and "pending: 0 file(s)" in s.stdout, s.stdout
    w.log({"x": 1.0})
    s = cli("status", "--config", cfg)
    assert "pending: 1 file(s)" in s.stdout, s.stdout


def test_an_export_without_roots_is_a_configuration_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "s")}))
    r = cli("export", "--config", str(cfg), "--to", str(tmp_path))
    assert r.returncode == 2 and "no roots to export" in r.stderr


def craft(path: str, manifest: Dict[str, Any], payload: bytes) -> None:
    """A bundle framed by hand (docs/airgap.md, "The bundle format"), checksums right, content hostile."""
    z = zlib.compress(payload)
    body = b"HPCSYNCB" + z + json.dumps(manifest).encode()
    body += struct.pack(">QQ", len(z), len(json.dumps(manifest).encode()))
    with open(path, "wb") as f:
        f.write(body + hashlib.sha256(body).digest() + b"HPCSYNCE")


def _manifest(path: str, version: str = "1.0") -> Dict[str, Any]:
    data = b"evil\n"
    return {"format": "hpc-sync-bundle", "version": version, "export_id": "0123456789abcdef", "seq": 1,
            "created_ms": 1, "host": "h", "roots": {"r0123456789ab": "/x"},
            "entries": [{"path": path, "kind": "append", "offset": 0, "length": len(data),
                         "sha256": hashlib.sha256(data).hexdigest(), "mtime_ns": 0}]}


@pytest.mark.parametrize("path", ["r0123456789ab/../../etc/passwd", "/etc/passwd", "r0123456789ab//x",
                                  "r0123456789ab/p/./x", "r0123456789ab/p/x\x00y", "rffffffffffff/p/x"])
def test_a_bundle_with_a_path_outside_a_root_is_refused_whole(tmp_path, path):
    b = tmp_path / "hpcsync-0123456789abcdef-00000001.bundle"
    craft(str(b), _manifest(path), b"evil\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    r = cli("import", "--config", str(cfg), str(b))
    assert r.returncode == 1 and "refused" in r.stdout, r.stdout + r.stderr
    assert not os.path.exists(tmp_path / "state" / "mirror")
    assert cli("verify", str(b)).returncode == 1


def test_an_unknown_major_version_is_refused_with_both_versions(tmp_path):
    b = tmp_path / "hpcsync-0123456789abcdef-00000001.bundle"
    craft(str(b), _manifest("r0123456789ab/p/r/history.jsonl", version="2.0"), b"evil\n")
    r = cli("verify", str(b))
    assert r.returncode == 1 and "version 2.0" in r.stdout and "1.x" in r.stdout


def test_a_missing_predecessor_is_named(cluster, tmp_path):
    root, cfg, out = cluster
    RunWriter(root, "p", "r1").log_many({"x": float(i)} for i in range(2000))
    assert cli("export", "--config", cfg, "--to", out).returncode == 0
    first, second = bundles_in(out)[:2]
    icfg = tmp_path / "import.yaml"
    icfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "istate")}))
    r = cli("import", "--config", str(icfg), second)
    assert r.returncode == 1 and f"{os.path.basename(first)} has not been imported yet" in r.stdout


@pytest.mark.faults
def test_kill_minus_nine_loop_on_import_exactly_once(mlflow_server, cluster, tmp_path):
    rng = random.Random(SEED)
    note = f"(HPCSYNC_SEED={SEED} replays the kill times)"
    root, cfg, out = cluster
    project = "pk" + os.urandom(4).hex()
    icfg = tmp_path / "import.yaml"   # the connected side: a server and a state directory, no roots
    icfg.write_text(yaml.safe_dump({"server": {"kind": "mlflow", "url": mlflow_server.url},
                                    "state_dir": str(tmp_path / "istate"), "retries": 3}))
    w = RunWriter(root, project, "big", config={"lr": 0.1})
    chunk = ROWS // (KILLS + 1)
    env = dict(os.environ, PYTHONPATH=REPO)
    kills = attempts = written = 0
    timer = KillTimer(rng)
    while kills < KILLS and attempts < KILLS * 6:
        attempts += 1
        if written < ROWS:   # the run grows and is exported again while imports are being killed
            n = min(chunk, ROWS - written)
            w.log_many({"loss": 1.0 / (written + i + 1), "acc": (written + i) % 97 / 97.0} for i in range(n))
            written += n
            w.save("ckpt.txt", str(written).encode())
            assert cli("-q", "export", "--config", cfg, "--to", out).returncode == 0
        proc = subprocess.Popen([sys.executable, "-m", "sync_gateway.cli", "-q", "import", "--config", str(icfg),
                                 *bundles_in(out)], env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        kills += timer.wait_or_kill([proc])
    assert kills >= KILLS, f"only {kills} kills landed during an import in {attempts} attempts {note}"
    if written < ROWS:
        w.log_many({"loss": 1.0 / (written + i + 1), "acc": (written + i) % 97 / 97.0} for i in range(ROWS - written))
    w.exit(0)
    assert cli("-q", "export", "--config", cfg, "--to", out).returncode == 0
    done = cli("import", "--config", str(icfg), *bundles_in(out), timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr + note

    sink = sink_for_url(mlflow_server.url, str(tmp_path / "istate"))
    recs = read_stream(w.path("history.jsonl"))
    assert len(recs) == ROWS
    assert_synced_once(sink, project, server_run(sink, project, "big"), disk_points(recs, ("loss", "acc")), note)
    sink.close()

    s = cli("status", "--config", str(icfg))
    assert "bundle(s) imported" in s.stdout and "synced everything" in s.stdout, s.stdout
    assert f"{project}/big" in s.stdout and f"{2 * ROWS} / {2 * ROWS}" not in s.stdout  # records, not points
    assert f"{ROWS} / {ROWS}" in s.stdout, s.stdout


def sink_for_url(url: str, state_dir: str):
    from sync_gateway.settings import Settings

    return sink_for(Settings(server_url=url, state_dir=state_dir, retries=3))
