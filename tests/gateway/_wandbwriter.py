"""Write W&B offline runs with the real ``wandb`` package, in a subprocess (as a user's job would).

``write(python, workdir, body)`` runs ``body`` (Python source; ``wandb`` imported, ``args`` given) with
``WANDB_MODE=offline`` in ``workdir``, so the run lands in ``workdir/wandb/offline-run-*``.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Optional, Sequence

from support import need

HAVE_WANDB = importlib.util.find_spec("wandb") is not None


def need_wandb() -> None:
    need(HAVE_WANDB, "wandb is not installed: pip install -e '.[wandb]' (the dev extra includes it)")


def env(workdir: str) -> Dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    e.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true", WANDB_DISABLE_CODE="true",
             WANDB_CONSOLE="off", WANDB_DIR=workdir, WANDB_CACHE_DIR=os.path.join(workdir, ".cache"),
             WANDB_CONFIG_DIR=os.path.join(workdir, ".config"), WANDB_DATA_DIR=os.path.join(workdir, ".data"))
    return e


def script(body: str) -> str:
    return "import json, os, sys, time\nimport wandb\nargs = json.loads(sys.argv[1])\n" + textwrap.dedent(body)


def write(workdir: str, body: str, args: Optional[Dict[str, Any]] = None, python: str = sys.executable,
          timeout_s: float = 300) -> None:
    os.makedirs(workdir, exist_ok=True)
    import json

    subprocess.run([python, "-c", script(body), json.dumps(args or {})], cwd=workdir, env=env(workdir),
                   check=True, timeout=timeout_s)


def start(workdir: str, body: str, args: Optional[Dict[str, Any]] = None,
          python: str = sys.executable) -> subprocess.Popen:
    os.makedirs(workdir, exist_ok=True)
    import json

    return subprocess.Popen([python, "-c", script(body), json.dumps(args or {})], cwd=workdir, env=env(workdir))


def fragments(workdir: str) -> List[str]:
    return sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*")))


def wandb_file(fragment_dir: str) -> str:
    (path,) = glob.glob(os.path.join(fragment_dir, "run-*.wandb"))
    return path


def records(path: str, kinds: Sequence[str] = ("history",)) -> List[Any]:
    """Every record of ``kinds`` in a .wandb file, decoded with wandb's schema (independently of the
    gateway's reader: the framing is re-implemented here from the specification)."""
    import struct
    import zlib

    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:7] == b":W&B\xe1\xbe\x00", data[:7]
    out, off, parts = [], 7, b""
    while off + 7 <= len(data):
        left = 32768 - off % 32768
        if left < 7:
            off += left
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, off)
        if kind == 0:
            off += left
            continue
        chunk = data[off + 7:off + 7 + length]
        if len(chunk) < length:
            break
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, off
        off += 7 + length
        if kind == 1:
            payloads = [chunk]
        elif kind == 2:
            parts, payloads = chunk, []
        elif kind == 3:
            parts, payloads = parts + chunk, []
        else:
            payloads, parts = [parts + chunk], b""
        for p in payloads:
            rec = pb.Record()
            rec.ParseFromString(p)
            if rec.WhichOneof("record_type") in kinds:
                out.append(rec)
    return out


def history_rows(path: str) -> List[Dict[str, Any]]:
    import json

    rows = []
    for rec in records(path):
        rows.append({(".".join(i.nested_key) if len(i.nested_key) else i.key): json.loads(i.value_json)
                     for i in rec.history.item})
    return rows
