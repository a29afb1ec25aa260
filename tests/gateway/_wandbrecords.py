"""Hand-made W&B offline runs: records built with wandb's own protobuf schema, framed as a ``.wandb`` file
(docs/wandb.md, "The file format"), for the reader's edge cases that the real wandb writes rarely or never
(a record over 64 MiB, a config nested hundreds of levels, an empty key, exact timestamps)."""
from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any, Dict, Iterable, List, Optional

BLOCK = 32768
HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)


def frame(payloads: Iterable[bytes]) -> bytes:
    """A LevelDB log as wandb writes it (7-byte chunk headers, 32 KiB blocks, zero padding); linear in the
    size (a 64 MiB record is framed in well under a second)."""
    out = bytearray(HEADER)
    for payload in payloads:
        view, first = memoryview(payload), True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < 7:
                out += b"\0" * left
                continue
            piece, view = view[:left - 7], view[left - 7:]
            kind = (1 if not len(view) else 2) if first else (4 if not len(view) else 3)
            out += struct.pack("<IHB", zlib.crc32(piece, zlib.crc32(bytes([kind]))), len(piece), kind)
            out += piece
            first = False
            if not len(view):
                break
    return bytes(out)


def _pb() -> Any:
    from wandb.proto import wandb_internal_pb2

    return wandb_internal_pb2


def run(run_id: str, project: str, start_s: float, config: Optional[Dict[str, str]] = None) -> bytes:
    """The run record; ``config``: key -> JSON text, as wandb writes each top-level config key."""
    r = _pb().Record()
    r.num = 1
    r.run.run_id, r.run.project, r.run.display_name = run_id, project, run_id
    r.run.start_time.seconds, r.run.start_time.nanos = int(start_s), int(round(start_s % 1 * 1e9))
    for key, text in (config or {}).items():
        item = r.run.config.update.add()
        item.key, item.value_json = key, text
    return r.SerializeToString()


def history(step: int, ts_s: float, values: Dict[str, Any], raw: Optional[Dict[str, str]] = None) -> bytes:
    """A history row: ``values`` JSON-encoded here, ``raw`` key -> JSON text as given (a key may be "")."""
    r = _pb().Record()
    r.num = step + 2
    for key, text in [("_step", str(step)), ("_timestamp", repr(ts_s))] + \
            [(k, json.dumps(v)) for k, v in values.items()] + list((raw or {}).items()):
        item = r.history.item.add()
        item.key, item.value_json = key, text
    r.history.step.num = step
    return r.SerializeToString()


def stats(ts_s: float, values: Dict[str, float]) -> bytes:
    r = _pb().Record()
    r.stats.timestamp.seconds, r.stats.timestamp.nanos = int(ts_s), int(round(ts_s % 1 * 1e9))
    for key, value in values.items():
        item = r.stats.item.add()
        item.key, item.value_json = key, json.dumps(value)
    return r.SerializeToString()


def exit_(code: int, runtime_s: int) -> bytes:
    r = _pb().Record()
    r.exit.exit_code, r.exit.runtime = code, runtime_s
    return r.SerializeToString()


def write_run(root: str, run_id: str, records: List[bytes], date: str = "20260101_000000") -> str:
    """``root/wandb/offline-run-<date>-<run_id>/run-<run_id>.wandb``; returns the fragment directory."""
    fragment = os.path.join(root, "wandb", f"offline-run-{date}-{run_id}")
    os.makedirs(fragment, exist_ok=True)
    with open(os.path.join(fragment, f"run-{run_id}.wandb"), "wb") as f:
        f.write(frame(records))
    return fragment
