"""Media values for ``log()``: ``Image``, ``Table`` and ``Histogram`` (W&B's classes, W&B's arguments).

Constructing one copies what the user passed (an array may change after ``log()``); encoding (PNG, JSON)
happens on the writer thread, which appends the payload to the run's one packed media file, ``media.bin``,
and a line describing it to ``media.jsonl`` (docs/run-format.md section 8). One file per run, not one per
image: clusters count inodes.

No numpy, PIL or torch import: an array is read through its own methods (``shape``, ``dtype``, ``tobytes``,
``tolist``), a PIL image through ``save``, a tensor through ``detach().cpu().numpy()``. A value that cannot be
read warns once, like any other bad value, and the rest of the row is written.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["Media", "Image", "Table", "Histogram", "MediaError", "MediaFile", "encode_png", "media_path",
           "MEDIA_BIN", "MEDIA_INDEX"]

MEDIA_BIN = "media.bin"
MEDIA_INDEX = "media.jsonl"
_IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif", ".bmp": "bmp", ".webp": "webp"}
_MAX_HISTOGRAM_BINS = 512


class MediaError(ValueError):
    """A media value that cannot be encoded; the writer drops its key with a one-line warning."""


class Media:
    """Base of the values the writer stores in the packed media file instead of history.jsonl."""

    kind = "media"
    caption: Optional[str] = None

    def payload(self) -> Tuple[bytes, str, Dict[str, Any]]:
        """(bytes, file extension, extra fields of its media.jsonl line); raises MediaError."""
        raise NotImplementedError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: bytes, width: int, height: int, channels: int) -> bytes:
    """An 8-bit PNG of ``height`` rows of ``width * channels`` bytes (1: grey, 2: grey+alpha, 3: RGB, 4: RGBA)."""
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    stride = width * channels
    raw = b"".join(b"\x00" + pixels[row * stride:(row + 1) * stride] for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + \
        _chunk(b"IEND", b"")


def _as_array(data: Any) -> Any:
    """A numpy array (or None) from a numpy array or a torch tensor, without importing either."""
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor: channels first by convention
        array = data.detach().cpu().numpy()
        shape = tuple(array.shape)
        if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)
        return array.copy()
    if hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "tobytes"):
        return data.copy()
    return None


class Image(Media):
    """``Image(data_or_path, mode=None, caption=None, ...)``: a numpy array (H x W, H x W x C with C in 1, 3,
    4), a torch tensor (C x H x W or H x W x C), a PIL image, or the path of an image file."""

    kind = "image"

    def __init__(self, data_or_path: Any, mode: Optional[str] = None, caption: Optional[str] = None,
                 grouping: Optional[int] = None, classes: Any = None, boxes: Any = None, masks: Any = None,
                 file_type: Optional[str] = None, normalize: bool = True):
        self.caption = None if caption is None else str(caption)
        self._normalize = normalize
        self._bytes: Optional[bytes] = None
        self._format = "png"
        self._array: Any = None
        self._pil: Any = None
        self._error = ""  # what cannot be read is not raised here: the writer drops the key with a warning
        if isinstance(data_or_path, (str, os.PathLike)):
            path = os.fspath(data_or_path)
            self._format = _IMAGE_FORMATS.get(os.path.splitext(path)[1].lower(), "png")
            try:
                with open(path, "rb") as f:  # now: the file may be gone when the writer gets to it
                    self._bytes = f.read()
            except OSError as err:
                self._error = f"cannot read the image file {path!r} ({err.strerror or err})"
        elif hasattr(data_or_path, "save") and hasattr(data_or_path, "size") and hasattr(data_or_path, "mode"):
            self._pil = data_or_path.copy()  # a PIL image
        else:
            self._array = _as_array(data_or_path)
            if self._array is None:
                self._error = (f"Image() takes a numpy array, a torch tensor, a PIL image or a file path, "
                               f"not {type(data_or_path).__name__}")

    def payload(self) -> Tuple[bytes, str, Dict[str, Any]]:
        if self._error:
            raise MediaError(self._error)
        extra: Dict[str, Any] = {}
        if self._bytes is not None:
            return self._bytes, self._format, extra
        if self._pil is not None:
            import io
            buffer = io.BytesIO()
            self._pil.save(buffer, format="PNG")
            width, height = self._pil.size
            return buffer.getvalue(), "png", {"width": int(width), "height": int(height)}
        array = self._array
        shape = tuple(int(n) for n in array.shape)
        if len(shape) == 3 and shape[2] == 1:
            array, shape = array.reshape(shape[:2]), shape[:2]
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (3, 4)) or 0 in shape:
            raise MediaError(f"an image array must be H x W or H x W x 3/4, got shape {shape}")
        kind = str(array.dtype)
        if kind.startswith("float") or kind.startswith("int") and kind != "uint8":
            low, high = float(array.min()), float(array.max())
            if kind.startswith("float") and self._normalize and low >= 0.0 and high <= 1.0:
                array = array * 255.0  # W&B's convention: floats in [0, 1] are scaled
            array = array.clip(0, 255)
        if kind != "uint8":
            array = array.astype("uint8")
        channels = 1 if len(shape) == 2 else shape[2]
        return encode_png(array.tobytes(), shape[1], shape[0], channels), "png", \
            {"width": shape[1], "height": shape[0]}


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value).replace("inf", "Infinity").replace("nan", "NaN")
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", ()) in ((), (1,)):
        return _cell(item())
    if isinstance(value, (list, tuple)):
        return [_cell(v) for v in value]
    return str(value)


class Table(Media):
    """``Table(columns=None, data=None, rows=None, dataframe=None)`` and ``add_data(*row)``; stored as JSON
    ``{"columns": [...], "data": [[...], ...]}`` (cells: numbers, strings, booleans, null; others as text)."""

    kind = "table"

    def __init__(self, columns: Optional[Sequence[str]] = None, data: Optional[Sequence[Sequence[Any]]] = None,
                 rows: Optional[Sequence[Sequence[Any]]] = None, dataframe: Any = None,
                 dtype: Any = None, optional: Any = True, allow_mixed_types: bool = False, log_mode: Any = None):
        if dataframe is not None:
            columns = [str(c) for c in dataframe.columns.tolist()]
            data = dataframe.values.tolist()
        data = data if data is not None else rows
        rows_list = [list(r) for r in (data or [])]
        if columns is None:
            width = len(rows_list[0]) if rows_list else 0
            columns = [f"c{i}" for i in range(width)]
        self.columns: List[str] = [str(c) for c in columns]
        self.data: List[List[Any]] = []
        for row in rows_list:
            self.add_data(*row)

    def add_data(self, *row: Any) -> None:
        if len(row) != len(self.columns):
            raise MediaError(f"add_data() got {len(row)} values for {len(self.columns)} columns {self.columns}")
        self.data.append([_cell(v) for v in row])

    def add_column(self, name: str, data: Sequence[Any]) -> None:
        values = list(data)
        if self.data and len(values) != len(self.data):
            raise MediaError(f"add_column({name!r}) got {len(values)} values for {len(self.data)} rows")
        self.columns.append(str(name))
        if not self.data:
            self.data = [[] for _ in values]
        for row, value in zip(self.data, values):
            row.append(_cell(value))

    def payload(self) -> Tuple[bytes, str, Dict[str, Any]]:
        text = json.dumps({"columns": self.columns, "data": self.data}, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8"), "json", {"rows": len(self.data), "columns": len(self.columns)}


class Histogram(Media):
    """``Histogram(sequence=None, np_histogram=None, num_bins=64)``: counts over equal bins of a sequence (a
    list, an array, a tensor), or numpy's ``(counts, edges)``; stored as JSON ``{"bins": edges, "counts": ...}``."""

    kind = "histogram"

    def __init__(self, sequence: Any = None, np_histogram: Any = None, num_bins: int = 64):
        if np_histogram is not None:
            counts, edges = np_histogram
            self.counts = [_number(c) for c in _tolist(counts)]
            self.bins = [_number(e) for e in _tolist(edges)]
            if len(self.bins) != len(self.counts) + 1:
                raise MediaError("np_histogram needs len(edges) == len(counts) + 1")
            return
        if sequence is None:
            raise MediaError("Histogram() needs a sequence or np_histogram=(counts, edges)")
        if hasattr(sequence, "detach"):
            sequence = sequence.detach().cpu().reshape(-1).tolist()
        values = [float(v) for v in _flat(_tolist(sequence))]
        values = [v for v in values if math.isfinite(v)]
        bins = max(1, min(int(num_bins), _MAX_HISTOGRAM_BINS))
        low, high = (min(values), max(values)) if values else (0.0, 0.0)
        if high == low:
            low, high = low - 0.5, high + 0.5
        width = (high - low) / bins
        self.bins = [low + i * width for i in range(bins)] + [high]
        self.counts = [0] * bins
        for v in values:
            self.counts[min(int((v - low) / width), bins - 1)] += 1

    def payload(self) -> Tuple[bytes, str, Dict[str, Any]]:
        text = json.dumps({"bins": self.bins, "counts": self.counts}, separators=(",", ":"))
        return text.encode("utf-8"), "json", {"num_bins": len(self.counts)}


def _tolist(value: Any) -> List[Any]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value)


def _flat(values: List[Any]) -> List[Any]:
    out: List[Any] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(_flat(list(v)))
        else:
            out.append(v)
    return out


def _number(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


_PATH_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def media_path(kind: str, key: str, step: int, ts_ms: int, index: int, ext: str) -> str:
    """``media/<kind>s/<key>/<step>-<ts_ms>-<index>.<ext>``, the payload's name in the run
    (docs/run-format.md section 8): unique in the run, and a sink can read key, step and time from it."""
    parts = [_PATH_CHARS.sub("_", p).strip(".") or "_" for p in key.split("/") if p]
    return "/".join(["media", kind + "s", *(parts or ["_"]), f"{step}-{ts_ms}-{index}.{ext}"])


class MediaFile:
    """The writer side of ``media.bin`` (payloads, appended) and ``media.jsonl`` (one line per payload, a stream
    like history.jsonl). The payload is written before its line, so a line never points past what was written;
    a reader on another host still checks ``offset + length`` against the size it sees."""

    def __init__(self, run_dir: str, terminal: Any, stream_factory: Any):
        self._bin_path = os.path.join(run_dir, MEDIA_BIN)
        self.index = stream_factory(os.path.join(run_dir, MEDIA_INDEX), terminal)
        self._terminal = terminal
        self._bin: Any = None
        self._names: Dict[Tuple[str, int], int] = {}
        self.written = 0

    def add(self, key: str, step: int, ts_ms: int, media: Media, encode: Any) -> None:
        data, ext, extra = media.payload()
        if self._bin is None:
            self.index.open()
            self._bin = open(self._bin_path, "ab")
        offset = self._bin.seek(0, os.SEEK_END)
        self._bin.write(data)
        self._bin.flush()
        index = self._names.get((key, step), 0)
        self._names[(key, step)] = index + 1
        values: Dict[str, Any] = {"key": key, "kind": media.kind,
                                  "path": media_path(media.kind, key, step, ts_ms, index, ext), "offset": offset,
                                  "length": len(data), "format": ext, **extra}
        if media.caption is not None:
            values["caption"] = media.caption
        self.index.append(step, ts_ms, encode(values))
        self.written += 1

    def flush(self) -> None:
        if self._bin is not None:
            self.index.flush()

    def close(self) -> None:
        if self._bin is None:
            return
        try:
            os.fsync(self._bin.fileno())
        finally:
            self._bin.close()
            self.index.close()
