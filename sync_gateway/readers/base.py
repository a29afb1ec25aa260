"""What a reader turns a run directory into: neutral records that know nothing of any server.

A reader (one per run format: the hpc format of docs/run-format.md today) reads a run through a
:class:`~sync_gateway.sources.base.Source` and returns these records with their original keys, values,
steps and timestamps. A sink (one per server kind) turns them into its server's names, units and limits.
Nothing here imports a source implementation or a sink.
"""
from __future__ import annotations

import abc
import hashlib
import io
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Dict, List, Mapping, Optional, Tuple

from ..sources.base import FileStat, RunRef, Source

__all__ = ["RUN_STATES", "ENDED_STATES", "MetricDef", "RunInfo", "Row", "StreamChunk", "Summary", "FileEntry",
           "RunStatus", "Snapshot", "Reader", "Position", "SourceFile", "fingerprint", "FINGERPRINT_BYTES"]

#: how many bytes before a cursor its fingerprint covers (at most; at least the whole last record)
FINGERPRINT_BYTES = 512


def fingerprint(data: bytes) -> str:
    """The fingerprint of the bytes just before a cursor: a stream rewritten since is recognised by it."""
    return hashlib.sha1(data).hexdigest()

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


class Reader(abc.ABC):
    """Reads one run directory of one format. Cheap to construct; every method reads through ``source``.

    A reader raises :class:`~sync_gateway.errors.FormatError` for a run it cannot read, and
    :class:`~sync_gateway.errors.SourceError` when the source fails; the engine records either on the run.
    """

    #: the format's name, e.g. ``"hpc"`` (shown by ``status``, stored in the state)
    format: ClassVar[str]
    #: the documents whose changes the engine tracks: ``metadata``, ``config``, ``summary`` -> file name
    documents: ClassVar[Mapping[str, str]]

    def __init__(self, source: Source, ref: RunRef):
        self.source = source
        self.ref = ref

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """Stat every file of the run (stat only, no reads): the engine skips an unchanged run."""

    @abc.abstractmethod
    def info(self) -> RunInfo:
        """The run's identity and metadata."""

    @abc.abstractmethod
    def config(self) -> Optional[Dict[str, Any]]:
        """The run's configuration (nested), or None when it has none."""

    @abc.abstractmethod
    def streams(self, snap: Snapshot) -> List[Tuple[str, int]]:
        """``(stream name, size in bytes)`` of each record stream present: ``history``, ``system``."""

    @abc.abstractmethod
    def read(self, stream: str, start: Position, stop: int, max_bytes: int) -> StreamChunk:
        """The complete records between ``start`` and the byte offset ``stop`` (the size seen by
        :meth:`streams`), reading about ``max_bytes``; never a partial record (it may be being written)."""

    @abc.abstractmethod
    def summary(self, snap: Snapshot) -> Optional[Summary]:
        """The run's summary, or None."""

    @abc.abstractmethod
    def files(self, snap: Snapshot) -> List[FileEntry]:
        """Files to store as artifacts."""

    @abc.abstractmethod
    def status(self, snap: Snapshot, now_ms: int, stale_after_s: float) -> RunStatus:
        """The run's state by docs/run-format.md section 7."""

    # -- optional hooks (defaults fit a format of separate files, such as hpc's) --------------------
    def attach_state(self, state: Dict[str, Any]) -> None:
        """Hand the reader its own small per-run memory (``RunState.reader_state``), which it updates in
        place and the engine saves with the run's state, at any moment. It may only describe the run's
        files (how far a scan got, what it found), never what the server holds: losing it costs a re-read.
        A format whose documents are records inside a stream (W&B) keeps there how far it has scanned."""

    def ready(self, snap: Snapshot) -> bool:
        """False while the run cannot be synced yet (its identity is not on disk): the engine skips it for
        this pass without an error and looks again next pass."""
        return True

    def document_version(self, snap: Snapshot, name: str) -> Optional[List[int]]:
        """A version of the document ``name`` (``metadata``, ``config``, ``summary``) that changes whenever
        the document does, or None when the run has none. Default: the stats of its file."""
        return snap.version(self.documents[name])

    def stream_bytes(self, stream: str, offset: int, length: int) -> Optional[bytes]:
        """The raw bytes of ``stream`` at ``offset`` (for the fingerprint that tells a rewritten stream
        from a grown one); None when this format cannot say, and then the check is skipped."""
        return None

    def read_file(self, entry: FileEntry) -> bytes:
        if entry.pack is not None:
            name, offset = entry.pack
            return self.source.read_range(self.ref, name, offset, entry.stat.size_bytes)
        return self.source.read_range(self.ref, entry.source_path, 0, entry.stat.size_bytes)

    def open_file(self, entry: FileEntry, buffer_bytes: int = 1 << 20) -> BinaryIO:
        """The file as a seekable binary stream of exactly the size seen in the snapshot, read through the
        source ``buffer_bytes`` at a time: an upload never holds a whole file in memory."""
        if entry.pack is not None:  # a payload inside a packed file (media.bin): its own byte range
            name, offset = entry.pack
            raw = SourceFile(self.source, self.ref, name, entry.stat.size_bytes, base_offset=offset)
        else:
            raw = SourceFile(self.source, self.ref, entry.source_path, entry.stat.size_bytes)
        return io.BufferedReader(raw, buffer_size=buffer_bytes)


class SourceFile(io.RawIOBase):
    """A read-only, seekable view of ``size_bytes`` of one file of a run (from ``base_offset``), read
    through its source."""

    def __init__(self, source: Source, ref: RunRef, name: str, size_bytes: int, base_offset: int = 0):
        super().__init__()
        self.source, self.ref, self.name, self.size = source, ref, name, size_bytes
        self.base = base_offset  # where the view starts in the file (a payload of a packed file)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        data = self.source.read_range(self.ref, self.name, self.base + self.pos, n)
        if not data:
            return 0  # the file shrank meanwhile: the upload ends short and is redone next pass
        buf[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def __len__(self) -> int:
        return self.size
