#!/usr/bin/env python3
"""Air-gap import bounds (docs/airgap.md, "Limits"; issue 21 items 7 and 16): the peak RSS of an import
process, each case in a fresh process, against the baseline of a process that imports the gateway and
applies nothing. Target: <= 100 MB in every case.

1. a bundle at the default ``bundle_max_entries`` (10,000 entries of 100 bytes: one run's files/);
2. a bundle of one incompressible entry of --data-mib MiB (default 200, under the 256 MiB default bound);
3. a hostile manifest of 1,000,000 entries (refused: its size is checked before it is read);
4. a hostile 2 MB bundle declaring 2 GiB of zeros (refused before a byte is written);
5. an inbox of --inbox bundles (default 1,100) imported twice under ``ulimit -n 256``: the second time
   every bundle is skipped from its trailer (the time of that import is printed too).

    python benchmarks/bench_airgap.py
    python benchmarks/bench_airgap.py --data-mib 50 --inbox 300   # quicker
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from sync_gateway.airgap.bundle import BundleWriter, bundle_name  # noqa: E402

EID = "0123456789abcdef"
RID = "r0123456789ab"
RUN_JSON = json.dumps({"format_version": "1.0", "project": "p", "id": "r1", "attempt": 1, "created_ms": 1}).encode()

# The child syncs into the reference sink, less its memory of file contents (an upload is read in pieces
# and dropped, as a server's would be), and reports VmHWM: ru_maxrss would carry the forking parent's peak.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from sync_gateway.airgap.importer import import_bundles
from sync_gateway.settings import Settings
from sync_gateway.sinks.memory import MemorySink

class Drain(MemorySink):
    def upload(self, run, path, body, size_bytes, *a, **kw):
        while body.read(1 << 20):
            pass

paths = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else []
t0 = time.monotonic()
rep = import_bundles(Settings(server_url="http://unused.invalid", state_dir=sys.argv[2]), paths, sink=Drain())
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"applied": len(rep.applied), "skipped": len(rep.skipped), "refused": list(rep.refused.values())[:1],
                  "s": round(time.monotonic() - t0, 2), "rss_mb": int(hwm) / 1024}))
"""


def _write(path: str, seq: int, entries) -> str:
    with open(path, "wb") as f:
        w = BundleWriter(f, EID, seq, int(time.time() * 1000), "bench", {RID: "/x"})
        for rel, kind, offset, chunks in entries:
            w.add(f"{RID}/{rel}", kind, offset, 1_764_150_000_000_000_000, chunks)
        w.finish()
    return path


def _craft(path: str, manifest: bytes, payload_z: bytes) -> str:
    body = b"HPCSYNCB" + payload_z + manifest + struct.pack(">QQ", len(payload_z), len(manifest))
    with open(path, "wb") as f:
        f.write(body + hashlib.sha256(body).digest() + b"HPCSYNCE")
    return path


def _child(state: str, paths, nofile: int = 0) -> dict:
    lst = os.path.join(state + ".paths.json")
    with open(lst, "w") as f:
        json.dump(paths, f)

    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    out = subprocess.run([sys.executable, "-c", CHILD, REPO, state, lst], capture_output=True, text=True,
                         preexec_fn=limit, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-mib", type=int, default=200)
    ap.add_argument("--inbox", type=int, default=1100)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-airgap-")
    try:
        rows = [("baseline (nothing applied)", _child(os.path.join(tmp, "s0"), []))]
        many = []   # 100 runs of 99 saved files each (the engine's pass over one run of 10,000 files is slow)
        for r in range(100):
            meta = RUN_JSON.replace(b'"r1"', b'"r%d"' % r)
            many.append((f"p/r{r}/run.json", "replace", 0, iter([meta])))
            many += [(f"p/r{r}/files/f{i:05d}.txt", "replace", 0, iter([b"x" * 100])) for i in range(99)]
        b = _write(os.path.join(tmp, bundle_name(EID, 1)), 1, many)
        rows.append(("10,000 entries", _child(os.path.join(tmp, "s1"), [b])))

        def random_chunks():
            for _ in range(args.data_mib):
                yield os.urandom(1 << 20)

        big = [("p/r1/run.json", "replace", 0, iter([RUN_JSON])), ("p/r1/files/big.bin", "replace", 0, random_chunks())]
        d = os.path.join(tmp, "big")
        os.mkdir(d)
        b = _write(os.path.join(d, bundle_name(EID, 1)), 1, big)
        rows.append((f"one {args.data_mib} MiB entry", _child(os.path.join(tmp, "s2"), [b])))
        os.unlink(b)

        entry = {"path": f"{RID}/p/r/files/f", "kind": "append", "offset": 0, "length": 0,
                 "sha256": hashlib.sha256(b"").hexdigest(), "mtime_ns": 0}
        doc = {"format": "hpc-sync-bundle", "version": "1.0", "export_id": EID, "seq": 1,
               "created_ms": int(time.time() * 1000), "host": "h", "roots": {RID: "/x"},
               "entries": [dict(entry, path=f"{RID}/p/r/files/f{i}") for i in range(1_000_000)]}
        b = _craft(os.path.join(tmp, "hostile-" + bundle_name(EID, 1)), json.dumps(doc).encode(), zlib.compress(b""))
        rows.append(("1,000,000-entry manifest (refused)", _child(os.path.join(tmp, "s3"), [b])))

        z = zlib.compressobj(9)
        payload = b"".join(z.compress(bytes(1 << 20)) for _ in range(2048)) + z.flush()
        doc = dict(doc, entries=[dict(entry, path=f"{RID}/p/r/files/zeros", kind="replace", length=2 << 30,
                                      sha256="0" * 64)])
        b = _craft(os.path.join(tmp, "zeros-" + bundle_name(EID, 1)), json.dumps(doc).encode(), payload)
        rows.append((f"{os.path.getsize(b) / 1e6:.1f} MB bundle declaring 2 GiB (refused)",
                     _child(os.path.join(tmp, "s4"), [b])))

        inbox = os.path.join(tmp, "inbox")
        os.mkdir(inbox)
        first = [("p/r1/run.json", "replace", 0, iter([RUN_JSON]))]
        paths = [_write(os.path.join(inbox, bundle_name(EID, 1)), 1, first)]
        offset = 0
        for seq in range(2, args.inbox + 1):
            line = json.dumps({"seq": seq - 2, "step": seq - 2, "ts_ms": 1, "values": {"x": seq}}).encode() + b"\n"
            paths.append(_write(os.path.join(inbox, bundle_name(EID, seq)), seq,
                                [("p/r1/history.jsonl", "append", offset, iter([line]))]))
            offset += len(line)
        rows.append((f"inbox of {args.inbox} bundles, ulimit -n 256", _child(os.path.join(tmp, "s5"), paths, 256)))
        rows.append(("the same inbox again (all imported)", _child(os.path.join(tmp, "s5"), paths, 256)))
        print(f"{'case':48} {'peak RSS':>9} {'s':>7}  result")
        for name, r in rows:
            what = r["refused"][0][:90] if r["refused"] else f"{r['applied']} applied, {r['skipped']} skipped"
            print(f"{name:48} {r['rss_mb']:7.1f} MB {r['s']:7.2f}  {what}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
