"""Where the MLflow door keeps things in a root (docs/run-format.md section 11), without importing mlflow.

- an experiment is an hpc project: ``<root>/<project>/``, with ``experiment.json`` beside its runs;
- its MLflow experiment id is the project directory's name (``"0"`` is MLflow's Default experiment, kept in
  ``<root>/Default/``);
- an experiment name that is not usable as a directory name keeps its exact text in ``experiment.json`` and
  gets a directory name derived from it (:func:`project_dir`).
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import unquote, urlparse

from .. import _format as fmt

__all__ = ["SCHEME", "DEFAULT_EXPERIMENT_ID", "DEFAULT_EXPERIMENT_NAME", "EXPERIMENT_JSON", "POINTS",
           "ARTIFACTS_DIR", "root_from_uri", "path_from_uri", "uri_for_path", "project_dir", "experiment_dir",
           "experiment_id_for", "read_experiment", "write_experiment", "list_experiment_dirs", "parse_points"]

SCHEME = "hpc"
DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
EXPERIMENT_JSON = "experiment.json"
POINTS = "points.jsonl"
ARTIFACTS_DIR = "artifacts"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HASH_CHARS = 12


def path_from_uri(uri: str) -> str:
    """The local path an ``hpc:`` URI names: ``hpc:///abs/path`` (the documented form), ``hpc:/abs/path``, or a
    relative ``hpc:runs`` / ``hpc://runs`` (against the working directory). Percent-escapes are decoded."""
    parsed = urlparse(uri)
    if parsed.scheme != SCHEME:
        raise ValueError(f"{uri!r} is not an {SCHEME}: URI; use {SCHEME}:///absolute/path/to/root")
    path = unquote(parsed.netloc + parsed.path)
    if not path:
        raise ValueError(f"{uri!r} names no directory; use {SCHEME}:///absolute/path/to/root")
    return os.path.abspath(path)


def root_from_uri(uri: str) -> str:
    return path_from_uri(uri)


def uri_for_path(path: str) -> str:
    """``hpc:///abs/path`` for a local path (kept as text: no escaping, MLflow joins these with '/')."""
    return f"{SCHEME}://{os.path.abspath(path)}"


def project_dir(name: str) -> str:
    """The project directory of the experiment called ``name``: the name itself when it is a valid directory
    name (docs/run-format.md section 1), else its safe characters and a hash of the exact name, so different
    names never share a directory. ``"0"`` is encoded too: it is the Default experiment's id."""
    if name == DEFAULT_EXPERIMENT_NAME:
        return name
    if fmt.is_name(name) and name != DEFAULT_EXPERIMENT_ID:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    slug = _UNSAFE.sub("_", name).strip("._-")[: 127 - _HASH_CHARS - 1] or "x"
    return f"{slug}-{digest}"


def experiment_dir(root: str, experiment_id: str) -> Optional[str]:
    """The directory of the experiment with this id, or None when the id cannot name one."""
    name = DEFAULT_EXPERIMENT_NAME if experiment_id == DEFAULT_EXPERIMENT_ID else str(experiment_id)
    if not fmt.is_name(name):
        return None
    return os.path.join(root, name)


def experiment_id_for(directory_name: str) -> str:
    return DEFAULT_EXPERIMENT_ID if directory_name == DEFAULT_EXPERIMENT_NAME else directory_name


def read_experiment(path: str) -> Optional[Dict[str, Any]]:
    """``experiment.json``'s ``mlflow`` object, or None when absent or not one (a damaged document is ignored:
    it is replaced whole, so a later write repairs it)."""
    try:
        doc = fmt.read_json(os.path.join(path, EXPERIMENT_JSON))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("mlflow"), dict):
        return None
    exp = doc["mlflow"]
    return exp if isinstance(exp.get("name"), str) else None


def write_experiment(path: str, experiment: Dict[str, Any]) -> None:
    os.makedirs(path, exist_ok=True)
    fmt.atomic_write_json(os.path.join(path, EXPERIMENT_JSON),
                          {"format_version": fmt.FORMAT_VERSION, "mlflow": experiment})


def list_experiment_dirs(root: str) -> Iterator[Tuple[str, str]]:
    """(directory name, path) of every project directory holding an ``experiment.json``."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if fmt.is_name(entry.name) and entry.is_dir(follow_symlinks=False) \
                and os.path.isfile(os.path.join(entry.path, EXPERIMENT_JSON)):
            yield entry.name, entry.path


def parse_points(data: bytes) -> List[Tuple[int, int, Dict[str, Any]]]:
    """The complete records of ``points.jsonl`` bytes as (step, ts_ms, decoded values); an incomplete last line
    is left (still being written) and a corrupt line skipped, as docs/run-format.md section 2 says."""
    import json

    out: List[Tuple[int, int, Dict[str, Any]]] = []
    end = data.rfind(b"\n") + 1
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, ts_ms, values = record["step"], record["ts_ms"], record["values"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(step, int) and isinstance(ts_ms, int) and isinstance(values, dict):
            out.append((step, ts_ms, {str(k): fmt.decode_value(v) for k, v in values.items()}))
    return out
