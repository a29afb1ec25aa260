"""The gateway's durable state, in its own directory (local to the gateway host, never in the runs).

- ``runs/<root id>/<project>/<run_id>.json``: one :class:`RunState` per run (the sink's own identifiers,
  per-stream cursors, which document versions were delivered), replaced atomically (temp file, rename) after
  each acknowledged batch: a cursor never points past what the server holds. The key is the run's identity
  (engine/identity.py): ``<root id>/<project>/<run_id>``.
- ``groups/<sha1>.json``: a :class:`GroupState` per group (what its sink keeps for it).
- ``index.json``: an :class:`IndexEntry` per run: the signature of its files at the last complete sync, so
  a pass over unchanged runs costs a scan and no reads.

Every document carries ``state_version``. Version 1 (hpc-sync 0.1, MLflow-shaped, untyped) is migrated
on load, so an upgraded gateway goes on where the old one stopped without re-sending anything. Versions 1
and 2 keyed runs by ``<project>/<run_id>`` alone (``runs/<project>/<run_id>.json``, the *legacy key*): such
a state is moved to the run's key by :meth:`StateStore.adopt_legacy` when the pass first finds the run
under the root its index entry names (engine/gateway.py), and keeps the legacy key (``legacy_id``). Losing
any file here only costs re-sending (which the server stores once) and finding server runs again by tag.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar

__all__ = ["StateStore", "RunState", "Cursor", "IndexEntry", "GroupState", "STATE_VERSION"]

log = logging.getLogger(__name__)

STATE_VERSION = 3   # 3: runs keyed by root id (runs/<root id>/<project>/<run_id>.json)
_V1_STREAMS = {"history.jsonl": "history", "system.jsonl": "system"}
_V1_DOCS = {"tags_sig": "metadata", "config_sig": "config", "summary_sig": "summary"}


@dataclass
class Cursor:
    """How far one stream is delivered: everything before ``offset`` was acknowledged by the server."""

    offset: int = 0
    seq: Optional[int] = None
    records: int = 0
    # The fingerprint of the ``fp_len`` bytes before ``offset`` (readers.base.fingerprint): a stream
    # rewritten since (deleted and written anew) is recognised by its content, not its size.
    fp_len: int = 0
    fp: Optional[str] = None


@dataclass
class RunState:
    sink_kind: Optional[str] = None
    sink: Dict[str, Any] = field(default_factory=dict)     # the sink's own identifiers and memory
    reader: str = "hpc"
    cursors: Dict[str, Cursor] = field(default_factory=dict)
    documents: Dict[str, Optional[List[int]]] = field(default_factory=dict)  # metadata/config/summary versions
    artifacts: Dict[str, List[int]] = field(default_factory=dict)           # file -> [size, mtime_ns] sent
    files_mark: Any = None  # the reader's mark of the files all stored (Reader.files_since), e.g. an index offset
    state: Optional[str] = None            # the run state last delivered (docs/run-format.md section 7)
    # The RunStatus last delivered, {state, end_ms, alive_ms} (None: delivered by a gateway before it kept
    # one): a run that ends, resumes and ends again between two passes has the same state, a new end.
    status: Optional[Dict[str, Any]] = None
    last_error: Optional[str] = None
    last_sync_ms: Optional[int] = None
    corrupt_lines: int = 0
    refused_config: List[str] = field(default_factory=list)
    # Batches the server refused for good: {stream, bytes: [start, end], points, error, at_ms}; the cursor
    # moved past them (the newest MAX_QUARANTINED are kept, ``quarantined_total`` counts them all).
    quarantined: List[Dict[str, Any]] = field(default_factory=list)
    quarantined_total: int = 0
    notes: List[str] = field(default_factory=list)   # what happened to the run (shown by `status`)
    failures: int = 0                  # consecutive retryable failures (backoff grows with them)
    retry_at_ms: int = 0               # the gateway's clock: no retry before
    state_version: int = STATE_VERSION
    reader_state: Dict[str, Any] = field(default_factory=dict)  # the reader's own memory (Reader.attach_state)
    # "<project>/<run_id>": the key and sync id this run had before ids held the root, when this run owns
    # them (its state was migrated, or its sink adopted the server run found by it): engine/identity.py.
    legacy_id: Optional[str] = None

    MAX_QUARANTINED = 100
    MAX_NOTES = 20

    def note(self, text: str) -> None:
        self.notes = (self.notes + [text])[-self.MAX_NOTES:]

    def send_anew(self, forget_server_run: bool = False) -> None:
        """Everything is sent again (cursors, documents, files, state); ``forget_server_run``: the sink's
        own identifiers too (the next open finds or creates the server run)."""
        self.cursors, self.documents, self.artifacts, self.state, self.status = {}, {}, {}, None, None
        self.files_mark = None
        if forget_server_run:
            self.sink = {}

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RunState:
        if doc.get("state_version") is None:
            doc = _migrate_run_v1(doc)
        known = {f.name for f in fields(cls)}
        st = cls(**{k: v for k, v in doc.items() if k in known})
        st.cursors = {name: c if isinstance(c, Cursor) else Cursor(**c) for name, c in st.cursors.items()}
        return st


@dataclass
class IndexEntry:
    sig: Optional[str] = None              # the run's file signature at its last complete sync
    state: Optional[str] = None
    error: Optional[str] = None
    alive_ms: int = 0                      # when the gateway last saw the run's files change (its clock)
    start_ms: int = 0
    end_ms: Optional[int] = None
    group: Optional[Tuple[str, str]] = None   # (project, group name)
    live_sig: Optional[str] = None         # the signature when alive_ms was set (gateway clock)
    retry_at_ms: int = 0                   # backing off after a retryable error: not before this
    root: Optional[str] = None             # the root (Source.display) it was found under at its last sync
    legacy: Optional[str] = None           # the legacy id this run owns (RunState.legacy_id)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> IndexEntry:
        if "hb_ms" in doc or "hpc_state" in doc:   # version 1
            return cls(sig=doc.get("sig"), state=doc.get("hpc_state"), error=doc.get("error"),
                       alive_ms=int(doc.get("hb_ms") or 0),
                       group=tuple(doc["group"]) if doc.get("group") else None)
        known = {f.name for f in fields(cls)}
        e = cls(**{k: v for k, v in doc.items() if k in known})
        e.group = tuple(e.group) if e.group else None  # type: ignore[assignment]
        return e


@dataclass
class GroupState:
    project: str
    group: str
    sink: Dict[str, Any] = field(default_factory=dict)
    state_version: int = STATE_VERSION


def _migrate_run_v1(doc: Mapping[str, Any]) -> Dict[str, Any]:
    """Version 1 (MLflow-shaped): server ids, params and MLflow statuses at the top level."""
    server = doc.get("server") or {}
    sink: Dict[str, Any] = {}
    if server:
        sink = {"run_id": server.get("run_id"), "experiment_id": server.get("experiment_id"),
                "artifact_uri": server.get("artifact_uri", ""), "params": dict(doc.get("params") or {}),
                "refused_params": list(doc.get("refused_params") or []),
                "skipped_values": int(doc.get("skipped_values") or 0)}
    return {"sink_kind": "mlflow" if server else None, "sink": sink, "reader": "hpc",
            "cursors": {_V1_STREAMS.get(n, n): c for n, c in (doc.get("cursors") or {}).items()},
            "documents": {new: doc.get(old) for old, new in _V1_DOCS.items() if doc.get(old) is not None},
            "artifacts": dict(doc.get("artifacts") or {}), "state": doc.get("hpc_state"),
            "last_error": doc.get("last_error"), "last_sync_ms": doc.get("last_sync_ms"),
            "corrupt_lines": int(doc.get("corrupt_lines") or 0),
            "refused_config": list(doc.get("refused_params") or []), "state_version": STATE_VERSION}


T = TypeVar("T")


def _atomic_write(path: str, obj: Any, durable: bool = True) -> None:
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, separators=(",", ":")))  # dumps uses the C encoder; dump does not
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def fsync_dir(path: str) -> None:
    """Make the renames into ``path`` durable (a rename is in the directory, not in the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_fields(cls: Type[T], path: str) -> T:
    """A dataclass from the JSON object at ``path``: its known fields, defaults for the rest (a missing or
    unreadable file gives the defaults)."""
    doc = _read(path)
    if not isinstance(doc, dict):
        return cls()
    return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})  # type: ignore[attr-defined]


def _read(path: str) -> Optional[Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        # Edited by hand, or emptied by a power loss: start over; the server stores re-sent points once.
        log.warning("%s is not valid JSON: starting that state over (nothing is sent twice)", path)
        return None


class StateStore:
    def __init__(self, state_dir: str):
        self.dir = os.path.abspath(os.path.expanduser(state_dir))
        os.makedirs(self.dir, exist_ok=True)

    def _run_path(self, key: str) -> str:
        # Every part matches a name rule (the format's, records.ROOT_ID): safe as path parts. A key of two
        # parts is a legacy key (state version 2 and older): runs/<project>/<run_id>.json.
        *head, run_id = key.split("/")
        return os.path.join(self.dir, "runs", *head, run_id + ".json")

    @staticmethod
    def group_key(project: str, group: str) -> str:
        return hashlib.sha1(f"{project}/{group}".encode()).hexdigest()

    # -- runs ---------------------------------------------------------------------------------
    def load(self, key: str) -> RunState:
        doc = _read(self._run_path(key))
        if not isinstance(doc, dict):
            return RunState()
        try:
            return RunState.from_json(doc)
        except (TypeError, ValueError) as e:
            log.warning("%s: state of an unknown shape (%s): starting it over", key, e)
            return RunState()

    def save(self, key: str, state: RunState) -> None:
        # Atomic (rename) but not fsynced: correctness never depends on this file surviving a crash.
        # A lost or empty state only means re-sending, which the server stores once, and re-finding the
        # server run by its tag; the rename guarantees a cursor never points past an ack.
        _atomic_write(self._run_path(key), state.to_json(), durable=False)

    def exists(self, key: str) -> bool:
        return os.path.exists(self._run_path(key))

    def adopt_legacy(self, legacy: str, key: str) -> bool:
        """Move the state of the legacy key ``legacy`` (``<project>/<run_id>``) to ``key``, recording the
        legacy id in it; False when there is none. Called by the dispatching thread only."""
        st = self.load(legacy) if self.exists(legacy) else None
        if st is None:
            return False
        st.legacy_id = legacy
        if not self.exists(key):
            self.save(key, st)
        try:
            os.unlink(self._run_path(legacy))
        except FileNotFoundError:
            pass
        return True

    def all_run_states(self) -> Dict[str, RunState]:
        out: Dict[str, RunState] = {}
        base = os.path.join(self.dir, "runs")
        if not os.path.isdir(base):
            return out
        # runs/<root id>/<project>/<run_id>.json; legacy runs/<project>/<run_id>.json not migrated yet
        for top, _dirs, names in sorted(os.walk(base)):
            rel = os.path.relpath(top, base).split(os.sep)
            if len(rel) not in (1, 2) or rel == ["."]:
                continue
            for name in sorted(names):
                if name.endswith(".json") and not name.startswith(".tmp-"):
                    key = "/".join(rel + [name[:-5]])
                    out[key] = self.load(key)
        return out

    # -- groups -------------------------------------------------------------------------------
    def _group_path(self, project: str, group: str) -> str:
        return os.path.join(self.dir, "groups", self.group_key(project, group) + ".json")

    def load_group(self, project: str, group: str) -> GroupState:
        doc = _read(self._group_path(project, group))
        if not isinstance(doc, dict):
            return GroupState(project, group)
        if doc.get("state_version") is None:  # version 1: MLflow ids at the top level
            server = doc.get("server") or {}
            sink: Dict[str, Any] = {"run_id": server.get("run_id"), "parent": dict(server), "members": [],
                    "status": doc.get("state"), "end_ms": None} if server.get("run_id") else {}
            return GroupState(project, group, sink)
        return GroupState(project, group, dict(doc.get("sink") or {}))

    def save_group(self, state: GroupState) -> None:
        _atomic_write(self._group_path(state.project, state.group), asdict(state), durable=False)

    # -- index --------------------------------------------------------------------------------
    def load_index(self) -> Dict[str, IndexEntry]:
        doc = _read(os.path.join(self.dir, "index.json"))
        if not isinstance(doc, dict):
            return {}
        runs = doc.get("runs") if doc.get("state_version") else doc
        out: Dict[str, IndexEntry] = {}
        for key, ent in (runs or {}).items():
            try:
                out[key] = IndexEntry.from_json(ent)
            except (TypeError, ValueError):
                continue  # a damaged entry only makes the next pass look at that run again
        return out

    def save_index(self, index: Mapping[str, IndexEntry]) -> None:
        # Not fsynced: a stale index only makes the next pass look at more runs.
        _atomic_write(os.path.join(self.dir, "index.json"),
                      {"state_version": STATE_VERSION, "runs": {k: asdict(e) for k, e in index.items()}},
                      durable=False)
