"""``hpc.Artifact`` and what a run does with one: W&B's files-with-a-name, recorded in the run.

``run.log_artifact(artifact)`` copies the artifact's files (on the writer thread) to
``files/artifacts/<name>/v<N>/<path>`` with a manifest ``files/artifacts/<name>/v<N>/hpc-artifact.json``
(type, aliases, metadata, file list); the gateway stores ``files/`` as the run's artifacts. Nothing is
uploaded from the compute node, and nothing is deduplicated across runs.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import UsageError

__all__ = ["Artifact", "artifact_copies", "next_versions"]

_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_VERSION_DIR = re.compile(r"v(\d+)")
MANIFEST = "hpc-artifact.json"


def _clean(rel: str) -> str:
    parts = [p for p in rel.replace(os.sep, "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        raise UsageError(f"{rel!r} is not a usable file name inside an artifact")
    return "/".join(parts)


class Artifact:
    """``Artifact(name, type, description=None, metadata=None)``: files to record with the run."""

    def __init__(self, name: str, type: str = "unspecified", description: Optional[str] = None,
                 metadata: Optional[Dict[str, Any]] = None, incremental: bool = False, use_as: Any = None):
        if not isinstance(name, str) or not name.strip():
            raise UsageError("Artifact() needs a name")
        self.name = _NAME_CHARS.sub("-", name.strip()).strip("-.") or "artifact"
        self.type = str(type)
        self.description = description
        self.metadata: Dict[str, Any] = dict(metadata or {})
        self.aliases: List[str] = []
        self._entries: Dict[str, Union[str, bytes]] = {}  # path in the artifact -> source path
        self._scratch: Any = None  # a tempfile.TemporaryDirectory, made by the first new_file()
        self.version: Optional[str] = None

    def add_file(self, local_path: str, name: Optional[str] = None, **_: Any) -> None:
        path = os.fspath(local_path)
        if not os.path.isfile(path):
            raise UsageError(f"Artifact.add_file: {path!r} is not a file")
        self._entries[_clean(name or os.path.basename(path))] = os.path.abspath(path)

    def add_dir(self, local_path: str, name: Optional[str] = None, **_: Any) -> None:
        root = os.fspath(local_path)
        if not os.path.isdir(root):
            raise UsageError(f"Artifact.add_dir: {root!r} is not a directory")
        for folder, _dirs, files in os.walk(root):
            for file in files:
                full = os.path.join(folder, file)
                rel = os.path.relpath(full, root)
                self._entries[_clean(os.path.join(name, rel) if name else rel)] = full

    def new_file(self, name: str, mode: str = "x", encoding: Optional[str] = None) -> Any:
        """An open file whose content becomes ``name`` in the artifact (W&B's ``new_file``)."""
        if self._scratch is None:
            import tempfile  # here: it costs import time, and most runs log no artifact
            self._scratch = tempfile.TemporaryDirectory(prefix="hpc-artifact-")
        rel = _clean(name)
        path = os.path.join(self._scratch.name, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._entries[rel] = path
        return open(path, mode.replace("x", "w"), encoding=encoding if "b" not in mode else None)

    def add_reference(self, uri: str, name: Optional[str] = None, **_: Any) -> None:
        self.metadata.setdefault("references", []).append({"uri": str(uri), "name": name})

    def files(self) -> List[str]:
        return sorted(self._entries)

    def _copies(self, version: int, aliases: Sequence[str]) -> List[Tuple[Any, str]]:
        """(source, path under files/) for every file, read now for scratch files (new_file's temporary
        directory goes away with the artifact), plus the manifest."""
        base = f"artifacts/{self.name}/v{version}"
        out: List[Tuple[Any, str]] = []
        for rel, source in sorted(self._entries.items()):
            if self._scratch is not None and str(source).startswith(self._scratch.name):
                with open(source, "rb") as f:
                    source = f.read()
            out.append((source, f"{base}/{rel}"))
        manifest = {"name": self.name, "type": self.type, "version": f"v{version}", "aliases": list(aliases),
                    "description": self.description, "metadata": self.metadata, "files": self.files()}
        out.append((json.dumps(manifest, default=str, indent=1).encode("utf-8"), f"{base}/{MANIFEST}"))
        return out

    def __repr__(self) -> str:
        return f"<hpc.Artifact {self.name} type={self.type} files={len(self._entries)}>"


def artifact_copies(artifact: Any, name: Optional[str], type: Optional[str], aliases: Optional[Sequence[str]],
                    versions: Dict[str, int]) -> Tuple[Artifact, List[Tuple[Any, str]]]:
    """What ``run.log_artifact`` copies: an Artifact, or a file or directory path made into one."""
    if not isinstance(artifact, Artifact):
        path = os.fspath(artifact)
        artifact = Artifact(name or os.path.basename(os.path.abspath(path)), type or "unspecified")
        if os.path.isdir(path):
            artifact.add_dir(path)
        else:
            artifact.add_file(path)
    version = versions.get(artifact.name, 0)
    versions[artifact.name] = version + 1
    artifact.version = f"v{version}"
    artifact.aliases = list(aliases or []) + ["latest"]
    return artifact, artifact._copies(version, artifact.aliases)


def next_versions(files_dir: str) -> Dict[str, int]:
    """The next version of every artifact already in a run's ``files/`` (a resumed run goes on numbering
    where its earlier attempts stopped, as W&B's versions do, instead of overwriting v0)."""
    root = os.path.join(files_dir, "artifacts")
    versions: Dict[str, int] = {}
    try:
        names = os.listdir(root)
    except OSError:
        return versions
    for name in names:
        try:
            entries = os.listdir(os.path.join(root, name))
        except OSError:
            continue
        numbers = [int(m.group(1)) for m in map(_VERSION_DIR.fullmatch, entries) if m]
        if numbers:
            versions[name] = max(numbers) + 1
    return versions
