"""Parsing the hpc run format (docs/run-format.md); the gateway never imports ``hpc``.

Streams are parsed from a byte cursor: only complete lines (ending in ``\\n``) are consumed; a complete
line that is not a valid record is reported and skipped; the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` decode to floats wherever a number may appear.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from sync_gateway.errors import FormatError

__all__ = ["SUPPORTED_MAJOR", "Record", "ParsedChunk", "parse_stream", "decode_value", "parse_run_json",
           "parse_document"]

SUPPORTED_MAJOR = 1
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def decode_value(v: Any) -> Any:
    """Decode the non-finite strings in a value or in a list of values (one level: the format's lists hold
    numbers; anything nested deeper is left as it is, and is no metric)."""
    if isinstance(v, str):
        return _NONFINITE.get(v, v)
    if isinstance(v, list):
        return [_NONFINITE.get(x, x) if isinstance(x, str) else x for x in v]
    return v


def _loads(data: bytes) -> Any:
    """json.loads; a document nested deeper than Python's parser allows is invalid, not a crash."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


@dataclass
class Record:
    seq: int
    step: int
    ts_ms: int
    values: Dict[str, Any]
    end_offset: int  # byte offset just after this record's newline


@dataclass
class ParsedChunk:
    records: List[Record] = field(default_factory=list)
    consumed: int = 0                     # bytes of complete lines (records and corrupt lines alike)
    corrupt: List[Tuple[int, str]] = field(default_factory=list)  # (byte offset, why)
    seq_problems: List[str] = field(default_factory=list)
    next_seq: Optional[int] = None


def parse_stream(data: bytes, base_offset: int, expected_seq: Optional[int], any_step: bool = False) -> ParsedChunk:
    """Parse the complete lines of ``data`` (read from ``base_offset``); the incomplete tail is left.
    ``any_step``: a record's step may be negative (points.jsonl: MLflow's steps, section 11.3)."""
    out = ParsedChunk(next_seq=expected_seq)
    end = data.rfind(b"\n") + 1
    pos = 0
    while pos < end:
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        off = base_offset + pos
        pos = nl + 1
        if not line.strip():
            out.corrupt.append((off, "empty line"))
            continue
        rec, why = _record(line, base_offset + pos, any_step)
        if rec is None:
            out.corrupt.append((off, why))
            continue
        if out.next_seq is not None and rec.seq != out.next_seq:
            # Reported, not fatal: the data are still sent (a sink is idempotent on the point itself).
            out.seq_problems.append(f"seq {rec.seq} at byte {off}, expected {out.next_seq}")
        out.next_seq = rec.seq + 1
        out.records.append(rec)
    out.consumed = end
    return out


def _record(line: bytes, end_offset: int, any_step: bool = False) -> Tuple[Optional[Record], str]:
    try:
        obj = _loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"not valid JSON ({e.__class__.__name__}: {str(e)[:80]})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    missing = [k for k in ("seq", "step", "ts_ms", "values") if k not in obj]
    if missing:
        return None, f"missing field(s) {', '.join(missing)}"
    seq, step, ts, values = obj["seq"], obj["step"], obj["ts_ms"], obj["values"]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (seq, step, ts)) or (step < 0 and not any_step):
        return None, "seq, step and ts_ms must be integers (step >= 0)" if not any_step else \
            "seq, step and ts_ms must be integers"
    if not isinstance(values, dict):
        return None, "values must be an object"
    return Record(seq, step, ts, {str(k): decode_value(v) for k, v in values.items()}, end_offset), ""


def parse_document(data: bytes, name: str) -> Dict[str, Any]:
    try:
        obj = _loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{name} is not valid JSON: {str(e)[:200]}") from e
    if not isinstance(obj, dict):
        raise FormatError(f"{name} must hold a JSON object")
    return obj


def parse_run_json(data: bytes) -> Dict[str, Any]:
    """Parse run.json and refuse a major version this reader does not know."""
    meta = parse_document(data, "run.json")
    version = str(meta.get("format_version", ""))
    m = re.match(r"^(\d+)\.(\d+)$", version)
    if not m:
        raise FormatError(f"run.json format_version {version!r} is not MAJOR.MINOR")
    if int(m.group(1)) != SUPPORTED_MAJOR:
        raise FormatError(f"run format version {version} is not supported by this gateway (it reads "
                          f"{SUPPORTED_MAJOR}.x); upgrade hpc-sync on the login node")
    for k in ("id", "project"):
        if not isinstance(meta.get(k), str):
            raise FormatError(f"run.json lacks the string field {k!r}")
    return meta
