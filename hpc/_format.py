"""Reading and writing the run format (docs/run-format.md) on the compute side.

The gateway has its own reader: the format document, not this module, is the contract between the two.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
from typing import Any, Callable, Dict, Optional, Tuple

from .errors import FormatVersionError

__all__ = [
    "FORMAT_VERSION", "NAME_RE", "is_name", "atomic_write_json", "read_json", "check_version", "encode_values",
    "decode_value", "repair_torn_tail", "reserve_document", "write_reserved", "RUN_JSON", "HISTORY", "SYSTEM",
    "SUMMARY", "CONFIG",
    "HEARTBEAT", "EXIT", "OUTPUT", "FILES_DIR", "CODE_DIR",
]

FORMAT_VERSION = "1.3"
FORMAT_MAJOR = 1
# docs/run-format.md section 1. Use is_name(): fullmatch, because "$" also matches before a trailing newline
# and would accept a directory named "run\n".
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_name(value: str) -> bool:
    """Whether ``value`` may name a project or run directory."""
    return NAME_RE.fullmatch(value) is not None

RUN_JSON = "run.json"
CONFIG = "config.json"
SUMMARY = "summary.json"
HEARTBEAT = "heartbeat.json"
EXIT = "exit.json"
HISTORY = "history.jsonl"
SYSTEM = "system.jsonl"
OUTPUT = "output.log"
FILES_DIR = "files"
CODE_DIR = "code"
TMP_PREFIX = ".tmp-"
RESERVE_BYTES = 4096  # one block: exit.json is a few hundred bytes
_INT_FLOAT_LIMIT = 2 ** 1024 - 2 ** 970  # float(n) overflows from here on (run-format.md section 3)

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# One encoder, built once: json.dumps() and JSONEncoder.encode() build a new C encoder on every call, which
# is a quarter of the writer's cost per row. json.encoder.c_make_encoder is CPython's accelerator (None on
# interpreters without it, where the pure-Python encoder is used).
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _unserializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _c_encoder() -> Optional[Callable[[Any, int], Any]]:
    """CPython's C encoder, called the way json.encoder calls it (a private signature): if it is missing,
    takes other arguments, or encodes a known probe wrongly, None (the public encoder is used)."""
    try:
        from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
    except ImportError:  # not CPython
        return None
    if c_make_encoder is None or c_encode_basestring is None:
        return None
    probe = {"k": [1, -2.5, "é\n", True, None], "n": {"x": 0}}
    try:
        encoder = c_make_encoder(None, _unserializable, c_encode_basestring, None, ":", ",", False, False, False)
        if "".join(encoder(probe, 0)) != '{"k":[1,-2.5,"é\\n",true,null],"n":{"x":0}}':
            return None
    except (TypeError, ValueError):  # the private signature changed in this Python
        return None
    return encoder


_C_ENCODE = _c_encoder()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if type(value) is int and not -_INT_FLOAT_LIMIT < value < _INT_FLOAT_LIMIT:
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode_values(obj: Any) -> str:
    """Compact JSON with NaN/inf (and integers beyond the float range) written as the strings the format
    specifies.

    The common case (all finite) takes the C encoder's fast path; only a row holding a non-finite number
    pays for the rewrite. Logged values are already converted (hpc._values); the integer rule here covers
    documents, and integers over Python's 4300-digit str() limit, which raise ValueError too.
    """
    try:
        if _C_ENCODE is not None:
            return "".join(_C_ENCODE(obj, 0))
        return _ENCODER.encode(obj)
    except ValueError:
        return _ENCODER.encode(_finite(obj))


def decode_value(value: Any) -> Any:
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: decode_value(v) for k, v in value.items()}
    return value


def atomic_write_json(path: str, obj: Any, fsync: bool = True) -> None:
    """Temp file in the same directory, fsync, rename: a reader sees the old or the new document."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}")
    data = encode_values(obj).encode("utf-8")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _reserve_path(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f"{TMP_PREFIX}{name}.reserved")


def reserve_document(path: str, size_bytes: int = RESERVE_BYTES) -> None:
    """Claim disk space now for a document written at the end (exit.json), so that a disk the run fills
    later still has room for it. A temporary name: readers ignore it."""
    fd = os.open(_reserve_path(path), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        _write_all(fd, b" " * size_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_reserved(path: str, obj: Any) -> None:
    """Write a document into the space :func:`reserve_document` claimed and rename it into place.

    Overwriting blocks a file already owns needs no free space on the file systems runs live on (tmpfs, ext4,
    XFS, Lustre, GPFS, NFS); JSON allows the trailing blanks should the truncation fail. Without a reserve, or
    when the document outgrew it, this is :func:`atomic_write_json`.
    """
    data = encode_values(obj).encode("utf-8")
    reserved = _reserve_path(path)
    try:
        fd = os.open(reserved, os.O_WRONLY)
    except FileNotFoundError:
        atomic_write_json(path, obj)
        return
    try:
        if os.fstat(fd).st_size < len(data):
            os.close(fd)
            fd = -1
            atomic_write_json(path, obj)
            return
        _write_all(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(reserved, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)


def read_json(path: str) -> Optional[Any]:
    """A document, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None


def check_version(meta: Dict[str, Any], path: str) -> None:
    found = str(meta.get("format_version", "?"))
    major = found.split(".", 1)[0]
    if major != str(FORMAT_MAJOR):
        raise FormatVersionError(path, found, str(FORMAT_MAJOR))


def _last_complete_record(data: bytes) -> Optional[Dict[str, Any]]:
    for line in reversed(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:
            continue  # a corrupt line: the one before it still tells where we are
        if isinstance(record, dict) and isinstance(record.get("seq"), int):
            return record
    return None


def repair_torn_tail(path: str, chunk_bytes: int = 1 << 16) -> Tuple[Optional[Dict[str, Any]], int]:
    """Truncate a stream to its last complete line; return (last complete record or None, bytes cut).

    Reads the file backwards in chunks, so resuming a run with a large history costs little.
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return None, 0
    if size == 0:
        return None, 0
    with open(path, "r+b") as f:
        end = size
        tail = b""
        newline_at = -1
        while end > 0 and newline_at < 0:
            start = max(0, end - chunk_bytes)
            f.seek(start)
            tail = f.read(end - start) + tail
            newline_at = tail.rfind(b"\n")
            end = start
        keep = end + newline_at + 1 if newline_at >= 0 else 0
        cut = size - keep
        if cut:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        # Look for the last valid record, reading further back only if the tail lines are corrupt.
        record = _last_complete_record(tail[: newline_at + 1] if newline_at >= 0 else b"")
        position = end
        while record is None and position > 0:
            start = max(0, position - chunk_bytes * 16)
            f.seek(start)
            record = _last_complete_record(f.read(keep - start))
            position = start
        return record, cut
