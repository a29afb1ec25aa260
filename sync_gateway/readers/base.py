"""The interface every reader implements: one run directory of one format, read through a source.

A reader (one package per run format: ``readers/hpc/`` for docs/run-format.md, ``readers/wandb/`` for W&B's
offline runs) reads a run through a :class:`~sync_gateway.sources.base.Source` and returns the neutral
records of :mod:`sync_gateway.records`. Nothing here imports a source implementation or a sink.
"""
from __future__ import annotations

import abc
import io
import re
from typing import Any, BinaryIO, ClassVar, Dict, List, Mapping, Optional, Tuple

from sync_gateway.records import FileEntry, Position, RunInfo, RunRef, RunStatus, Snapshot, StreamChunk, Summary
from sync_gateway.sources.base import Source

__all__ = ["Reader", "SourceFile", "is_run_name"]

# docs/run-format.md section 1: the names of project and run directories, and of every part of a run's key
# (W&B run ids too: they name state files). fullmatch, not match + "$": "$" also matches before a trailing
# newline, which would accept a directory named "run\n".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_run_name(name: str) -> bool:
    """Whether ``name`` may be a project or run directory of a root (anything else is not a run)."""
    return _NAME.fullmatch(name) is not None


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

    def files_since(self, snap: Snapshot, mark: Any) -> Tuple[List[FileEntry], Any]:
        """The files to store, leaving out those a ``mark`` this method returned before says are stored,
        and the mark to give next time. The engine keeps the mark in the run's state only once every file
        returned with it is stored, and forgets it when the run is sent anew; a mark that no longer fits
        the files (a rewritten index) must be ignored. Default: every file and no mark (the engine skips
        unchanged files by their size and time); a format that must parse an index to list its files
        (hpc's media.jsonl) gives a mark so that each pass reads only what the index gained."""
        return self.files(snap), None

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
