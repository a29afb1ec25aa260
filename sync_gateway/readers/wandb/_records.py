"""Decoding W&B records: the protobuf schema (from the ``wandb`` package, extra ``[wandb]``, imported on
first use only), JSON values as W&B writes them, and history rows."""
from __future__ import annotations

import json
import math
from typing import Any, Dict, NamedTuple

from sync_gateway.errors import FormatError

__all__ = ["decode", "json_value", "item_key", "ms", "history_row", "HistoryRow"]

_pb: Any = None


def _schema() -> Any:
    global _pb
    if _pb is None:
        try:
            from wandb.proto import wandb_internal_pb2
        except ImportError as e:
            raise FormatError("W&B runs need the wandb package for its record schema: "
                              f"pip install 'hpc-sync[gateway,wandb]' ({e})") from e
        _pb = wandb_internal_pb2
    return _pb


def decode(payload: bytes) -> Any:
    """A ``Record``, or None when it does not parse (an older schema's field reused with another type)."""
    rec = _schema().Record()
    try:
        rec.ParseFromString(payload)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError has no stable import path across versions
        return None
    return rec


def json_value(text: str) -> Any:
    """A value W&B wrote as JSON text; the text itself when it does not parse, or is nested too deep to
    decode (a config nested thousands of levels: Python's parser recurses once per level)."""
    # Most values are plain numbers: int() and float() parse them as json.loads would, much faster
    # (float() also takes NaN and Infinity, which W&B writes bare).
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        v = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):
        return float(v.replace("Infinity", "inf"))
    return v


def item_key(item: Any) -> str:
    """An item's key: ``key``, or its ``nested_key`` parts joined with dots ("" when it has neither)."""
    return item.key or ".".join(item.nested_key)


def ms(ts: Any) -> int:
    """A protobuf Timestamp in milliseconds."""
    return ts.seconds * 1000 + ts.nanos // 1_000_000


class HistoryRow(NamedTuple):
    step: int
    ts_ms: int
    values: Dict[str, Any]      # W&B's own ``_``-keys left out
    empty_keys: int             # values without a key (a hand-made file): left out


def history_row(rec: Any, shift: int) -> HistoryRow:
    """A history record's row, its step moved by ``shift`` (a resumed fragment's steps continue)."""
    values: Dict[str, Any] = {}
    step = ts = None
    empty = 0
    for item in rec.history.item:
        key = item_key(item)
        if not key:
            empty += 1
        elif key[0] != "_":
            values[key] = json_value(item.value_json)
        elif key == "_step":
            step = json_value(item.value_json)
        elif key == "_timestamp":
            ts = json_value(item.value_json)
    if not isinstance(step, int) or isinstance(step, bool):
        step = rec.history.step.num
    ts_ms = int(round(ts * 1000)) if isinstance(ts, (int, float)) and math.isfinite(ts) else 0
    return HistoryRow(int(step) + shift, ts_ms, values, empty)
