"""Media as MLflow's own client stores them, so that its UI shows them natively (checked on MLflow 3.17's
``MlflowClient.log_image`` and ``log_table``, and on what its UI requests):

- an image (``media/images/<key>/<step>-<ts_ms>-<n>.<ext>``) becomes what ``log_image(key=, step=,
  timestamp=)`` writes: ``images/<key, / as ~>+step+<step>+timestamp+<ts_ms>+<uuid>.png`` and beside it a
  thumbnail ``<the same>+compressed.webp`` (the longer side scaled to 256 pixels, as MLflow's
  ``compress_image_size``), which is what the run's image chart displays; and the run tag
  ``mlflow.loggedImages``. The thumbnail needs Pillow (the gateway's ``[media]`` extra); without it the
  full image is still stored, the chart shows a blank panel, and the gateway says so once;
- a table (``media/tables/...json``, already pandas' ``split`` form without the index, as ``log_table``
  writes it) keeps its path and is listed in the run tag ``mlflow.loggedArtifacts``
  (``[{"path": ..., "type": "table"}]``), which makes the artifact viewer show it as a table;
- a histogram (``media/histograms/...json``, ``{"bins", "counts"}``) is stored in the same table form,
  columns ``bin_start``, ``bin_end``, ``count`` (MLflow has no histogram view; a table shows the numbers
  exactly and needs no extra package), listed like a table.

Pure (no I/O): the sink uploads what :func:`prepare` returns.
"""
from __future__ import annotations

import io
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

__all__ = ["Prepared", "prepare", "logged_artifacts", "COMPRESSED_IMAGE_SIZE", "MAX_MEDIA_BYTES",
           "LOGGED_IMAGES", "LOGGED_ARTIFACTS", "MAX_TAG_CHARS", "have_pillow"]

log = logging.getLogger(__name__)

COMPRESSED_IMAGE_SIZE = 256          # mlflow.tracking.multimedia.COMPRESSED_IMAGE_SIZE
MAX_MEDIA_BYTES = 64 << 20           # larger media are stored as they are (never read whole into memory)
LOGGED_IMAGES = "mlflow.loggedImages"
LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"
MAX_TAG_CHARS = 8000                 # MLflow's tag value limit (MAX_TAG_VAL_LENGTH)
# The neutral name of a media payload (records.FileEntry): media/<kind>s/<key>/<step>-<ts_ms>-<n>.<ext>
_MEDIA = re.compile(r"^media/(image|table|histogram)s/(.+)/(\d+)-(\d+)-(\d+)\.(\w+)$")
_PILLOW_NOTE = ("Pillow is not installed: images are stored without the thumbnail MLflow's image chart shows "
                "(a blank panel there; the images are in the run's artifacts): pip install 'hpc-sync[media]'")
_noted = [False]


@dataclass
class Prepared:
    """What to store for one file: ``(path, bytes)`` pairs (``None`` bytes: the file's own, streamed) and
    the run tags that make MLflow's UI show it (``kind``: ``image``, ``table`` or None)."""

    files: List[Tuple[str, Optional[bytes]]]
    kind: Optional[str] = None


def media_kind(path: str) -> Optional[str]:
    m = _MEDIA.match(path)
    return m.group(1) if m else None


def have_pillow() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def prepare(path: str, run_id: str, read: Any, size_bytes: int) -> Prepared:
    """What to store for the file ``path`` of run ``run_id``; ``read()`` returns its bytes (called only for
    media no larger than MAX_MEDIA_BYTES)."""
    m = _MEDIA.match(path)
    if m is None:
        return Prepared([(path, None)])
    kind, key, step, ts_ms, _, ext = m.groups()
    if kind == "image":
        # A uuid derived from the run and the path: sending the file again replaces it, never duplicates it.
        name = uuid.uuid5(uuid.NAMESPACE_URL, f"hpc-sync:{run_id}:{path}")
        base = f"images/{key.replace('/', '~')}+step+{step}+timestamp+{ts_ms}+{name}"
        if size_bytes > MAX_MEDIA_BYTES:
            return Prepared([(f"{base}.{ext}", None)], "image")
        return Prepared(_image_files(base, ext, read()), "image")
    if kind == "histogram" and size_bytes <= MAX_MEDIA_BYTES:
        table = _histogram_table(read())
        return Prepared([(path, table)], "table") if table is not None else Prepared([(path, None)])
    return Prepared([(path, None)], "table" if kind == "table" else None)


def _image_files(base: str, ext: str, data: bytes) -> List[Tuple[str, Optional[bytes]]]:
    """The full image (PNG, as log_image stores it: the chart reads only .png and .webp) and its thumbnail."""
    try:
        import PIL.Image
    except ImportError:
        if not _noted[0]:
            _noted[0] = True
            log.warning(_PILLOW_NOTE)
        return [(f"{base}.{ext}", data)]
    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            im.load()
            full = data if im.format == "PNG" else _encode(im, "PNG")
            thumb = _encode(_compressed(im), "WEBP")
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
        log.warning("an image (%s.%s) could not be read to make its thumbnail (%s): stored as it is", base, ext, e)
        return [(f"{base}.{ext}", data)]
    return [(f"{base}.png", full), (f"{base}+compressed.webp", thumb)]


def _compressed(im: Any) -> Any:
    """mlflow.tracking.multimedia.compress_image_size: the longer side becomes COMPRESSED_IMAGE_SIZE."""
    width, height = im.size
    if width > height:
        size = (COMPRESSED_IMAGE_SIZE, max(1, int(height * COMPRESSED_IMAGE_SIZE / width)))
    else:
        size = (max(1, int(width * COMPRESSED_IMAGE_SIZE / height)), COMPRESSED_IMAGE_SIZE)
    return im.resize(size)


def _encode(im: Any, fmt: str) -> bytes:
    if im.mode not in ("RGB", "RGBA", "L", "LA"):  # palette, 16-bit, CMYK: what PNG and WebP both take
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    if fmt == "WEBP" and im.mode in ("L", "LA"):
        im = im.convert("RGBA" if im.mode == "LA" else "RGB")
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()


def _histogram_table(data: bytes) -> Optional[bytes]:
    """``{"bins": edges, "counts": counts}`` as a table in pandas' split form; None when it is not one."""
    try:
        doc = json.loads(data)
        bins, counts = doc["bins"], doc["counts"]
        if not isinstance(bins, list) or not isinstance(counts, list) or len(bins) != len(counts) + 1:
            return None
    except (ValueError, TypeError, KeyError):
        return None
    rows = [[bins[i], bins[i + 1], c] for i, c in enumerate(counts)]
    return json.dumps({"columns": ["bin_start", "bin_end", "count"], "data": rows},
                      separators=(",", ":")).encode("utf-8")


def logged_artifacts(paths: Sequence[str]) -> Tuple[str, int]:
    """The ``mlflow.loggedArtifacts`` value listing ``paths`` as tables (log_table's own format), and how
    many of them did not fit MLflow's tag limit (those open as JSON text)."""
    entries: List[str] = []
    size = 2
    for p in paths:
        entry = json.dumps({"path": p, "type": "table"})
        if size + len(entry) + 2 > MAX_TAG_CHARS:
            return "[" + ", ".join(entries) + "]", len(paths) - len(entries)
        entries.append(entry)
        size += len(entry) + 2
    return "[" + ", ".join(entries) + "]", 0
