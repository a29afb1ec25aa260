"""The neutral records every layer speaks: what a source finds, what a reader makes and what a sink takes.

They know nothing of any file format or server. A source names run directories (:class:`RunRef`) and file
stats (:class:`FileStat`); a reader (one per run format) turns a run into :class:`RunInfo`, stream
:class:`Row` s, a :class:`Summary`, :class:`FileEntry` s and a :class:`RunStatus`, with their original keys,
values, steps and timestamps; a sink (one per server kind) turns them into its server's names, units and
limits. This module imports nothing of the package.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = ["RUN_STATES", "ENDED_STATES", "FileStat", "RunRef", "MetricDef", "RunInfo", "Row", "StreamChunk",
           "Summary", "FileEntry", "RunStatus", "Snapshot", "Position", "fingerprint", "FINGERPRINT_BYTES",
           "name_problem", "shown", "usable_files", "root_id", "run_key", "ROOT_ID"]


@dataclass(frozen=True)
class FileStat:
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class RunRef:
    """One run directory ``<root>/<project>/<run_id>`` as a source found it.

    ``format`` names the reader (``hpc``: docs/run-format.md). A format whose run spans several
    directories (W&B: one directory per resumed fragment) sets ``location`` to the directory holding them
    and lists them, relative to it and in order, in ``parts``; the reader then names files as
    ``<part>/<file>``."""

    project: str
    run_id: str
    location: str  # source-specific: an absolute local path, or the remote path
    format: str = "hpc"
    parts: Tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.project}/{self.run_id}"


#: what a root id given in the config (``roots: [{path: ..., id: ...}]``) may be: it is a path part of the
#: state directory and of an air-gap bundle, and a part of every server run's sync id
ROOT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def root_id(display: str) -> str:
    """A root's default id: ``r`` + the first 12 hex digits of the SHA-256 of the root as its source shows
    it (``/scratch/alice/hpc-runs``, ``ssh://login1/scratch/runs``), so that the same root gets the same id
    on every gateway and after any state loss. Air-gap bundles name roots by the same rule."""
    return "r" + hashlib.sha256(display.encode()).hexdigest()[:12]


def run_key(root: str, ref: RunRef) -> str:
    """A run's identity in the engine, its state and its server: ``<root id>/<project>/<run_id>``. The same
    project/run id under two roots (two users' scratch directories, two clusters) are two runs."""
    return f"{root}/{ref.project}/{ref.run_id}"


#: how many bytes before a cursor its fingerprint covers (at most; at least the whole last record)
FINGERPRINT_BYTES = 512


def fingerprint(data: bytes) -> str:
    """The fingerprint of the bytes just before a cursor: a stream rewritten since is recognised by it."""
    return hashlib.sha1(data).hexdigest()


# C0 and C1 controls (newline, ESC, DEL, ...), line/paragraph separators and the bidirectional overrides:
# each can forge or reorder what a terminal, a log line or a web page shows next to the name.
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def name_problem(name: str) -> Optional[str]:
    """Why a file name (or a path of them) cannot be stored or shown by the gateway (``holds a ...``), else
    None: ONE rule for export and every reader's file listing, so a direct sync and an air gap carry the
    same files. Refused: control characters and the like (see ``_UNSHOWABLE``) and backslashes (a path separator on
    some servers and clients, so the name would not mean the same file everywhere)."""
    if _UNSHOWABLE.search(name):
        return "holds a control character"
    if "\\" in name:
        return "holds a backslash"
    return None


def shown(name: str) -> str:
    """``name`` as it is safe to print: as it is when it holds nothing unshowable, else escaped (repr)."""
    return ascii(name) if _UNSHOWABLE.search(name) else name

#: Every state a reader may report (docs/run-format.md section 7). A sink decides what each becomes.
RUN_STATES = ("active", "finished", "failed", "preempted", "killed", "crashed")
ENDED_STATES = frozenset(RUN_STATES) - {"active"}


@dataclass(frozen=True)
class MetricDef:
    """A ``define_metric`` declaration: keys matching ``pattern`` (fnmatch) use ``step_metric`` as x-axis."""

    pattern: str
    step_metric: Optional[str] = None
    summary: Optional[str] = None


@dataclass(frozen=True)
class RunInfo:
    """A run's identity and metadata, as the run recorded them."""

    project: str
    run_id: str
    name: str
    created_ms: int
    attempt: int = 1
    group: Optional[str] = None
    job_type: Optional[str] = None
    tags: Tuple[str, ...] = ()
    notes: Optional[str] = None
    user: Optional[str] = None
    host: Optional[str] = None
    program: Optional[str] = None
    argv: Tuple[str, ...] = ()
    git: Mapping[str, Any] = field(default_factory=dict)          # commit, branch, remote, dirty
    scheduler: Mapping[str, Any] = field(default_factory=dict)    # SLURM fields (job_id, partition, ...)
    metrics: Tuple[MetricDef, ...] = ()
    format: str = "hpc"
    format_version: str = ""
    #: key-value tags exactly as the run's own tracking client set them (the MLflow tags of a run written
    #: through MLflow's client, docs/run-format.md section 11), None for a run that has none: a sink whose
    #: server has such tags sends them as they are and keeps its own bookkeeping under its own prefix
    native_tags: Optional[Mapping[str, str]] = None
    #: the run this one nests under (MLflow's nested runs), in the same root: its key and its info
    parent: Optional[Tuple[str, RunInfo]] = None


@dataclass(frozen=True)
class Position:
    """Where a stream's reading stands: the byte offset after the last consumed line and the next seq."""

    offset: int = 0
    seq: Optional[int] = None


@dataclass
class Row:
    """One record of a stream: a history row, or a system sample (keys named as in docs/metrics.md, the
    unit in the key's last part: ``_bytes``, ``_percent``, ``_w``, ``_c``)."""

    step: int
    ts_ms: int
    values: Dict[str, Any]
    end: Position           # the stream's position just after this record


@dataclass
class StreamChunk:
    rows: List[Row] = field(default_factory=list)
    end: Position = field(default_factory=Position)   # after every complete line read, corrupt ones included
    corrupt: List[Tuple[int, str]] = field(default_factory=list)   # (byte offset, why)
    problems: List[str] = field(default_factory=list)              # e.g. sequence gaps (data still sent)
    at_end: bool = True     # False when more complete lines may follow (read again from ``end``)
    data: bytes = b""       # the bytes read (from ``base``), for the fingerprints of the cursors in it
    base: int = 0

    def fingerprint_at(self, offset: int) -> Optional[Tuple[int, str]]:
        """``(length, fingerprint)`` of the bytes before ``offset`` (a record boundary in this chunk), from
        the chunk's start at most, so it covers at least the whole record ending there; None when the
        chunk does not hold them."""
        rel = offset - self.base
        if not self.data or rel <= 0 or rel > len(self.data):
            return None
        n = min(FINGERPRINT_BYTES, rel)
        return n, fingerprint(self.data[rel - n:rel])


@dataclass(frozen=True)
class Summary:
    values: Mapping[str, Any]
    set_by_hand: frozenset = frozenset()
    policies: Mapping[str, str] = field(default_factory=dict)
    version_ms: int = 0     # stable while the summary is unchanged: re-sending it changes nothing

    @property
    def special(self) -> List[str]:
        """Keys whose summary differs from the last logged value (set by hand, or min/max/mean)."""
        return sorted(k for k in set(self.set_by_hand) | set(self.policies) if k in self.values)


@dataclass(frozen=True)
class FileEntry:
    """A file of the run to store as an artifact: ``source_path`` in the run directory, ``dest`` the
    run-relative path it is shown under (``files/ckpt.pt``, ``output.log``, ``hpc/run.json``).

    ``pack``: for a payload packed into a larger file (the hpc format's ``media.bin``), ``(file, offset)``:
    its ``stat.size_bytes`` bytes at ``offset`` of that file; ``source_path`` is then a name unique in the run.
    Media payloads have ``dest`` ``media/<kind>s/<key>/<step>-<ts_ms>-<n>.<ext>`` (kind: image, table,
    histogram), which a sink may map to its server's own convention for that kind."""

    source_path: str
    dest: str
    stat: FileStat
    pack: Optional[Tuple[str, int]] = None


@dataclass(frozen=True)
class RunStatus:
    state: str                          # one of RUN_STATES
    end_ms: Optional[int] = None        # for an ended run: when it ended (the exit record, or its last sign)
    alive_ms: int = 0                   # the run's last sign of life (heartbeat, else creation)
    #: what the writer counted as lost when the run ended (``dropped_rows``, ``dropped_output_bytes``: a flood
    #: it could not keep up with), only the counts above 0; a sink shows them on the run
    dropped: Mapping[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Snapshot:
    """The stats of a run's files at one moment; ``signature`` changes whenever any of them changes."""

    files: Mapping[str, FileStat]

    @property
    def signature(self) -> str:
        return "|".join(f"{n}:{s.size_bytes}:{s.mtime_ns}" for n, s in sorted(self.files.items()))

    def version(self, name: str) -> Optional[List[int]]:
        s = self.files.get(name)
        return None if s is None else [s.size_bytes, s.mtime_ns]


def usable_files(entries: List[FileEntry], run_key: str) -> List[FileEntry]:
    """``entries`` less those whose name fails :func:`name_problem`, each skipped with a warning: what every
    reader's ``files()`` returns, so a direct sync skips exactly what export skips."""
    out = []
    for e in entries:
        problem = name_problem(e.source_path) or name_problem(e.dest)
        if problem:
            logging.getLogger("sync_gateway.readers").warning(
                "%s: file %s %s: not uploaded (rename it; export skips it too)", shown(run_key), shown(e.dest),
                problem)
        else:
            out.append(e)
    return out
