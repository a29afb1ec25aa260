"""The small interface every source implements (local file system, SFTP): transport only.

Readers and the engine only talk to :class:`Source`; they never know whether the bytes come from a local
disk or from an SSH server, and a source never knows a run format. Paths given with a :class:`RunRef` are
relative to that run's directory, others to the root; all use ``/``.
"""
from __future__ import annotations

import abc
from typing import Dict, List, NamedTuple, Optional, Sequence

from sync_gateway.records import FileStat, RunRef

__all__ = ["Source", "DirEntry", "DirListing"]

class DirEntry(NamedTuple):
    """One entry of a directory listing: a link inside the root shows as its target; others are left out.
    ``stat`` is None where the listing alone told the type (a local directory entry that is not a link)."""

    name: str
    is_dir: bool
    stat: Optional[FileStat]


class DirListing(NamedTuple):
    location: str            # the directory, as a RunRef's ``location`` names it for this source
    entries: List[DirEntry]


class Source(abc.ABC):
    """Read-only access to the files under one root: list, stat, read bytes. A source knows no run format
    (discovery is the readers' job: ``sync_gateway.readers.discover_runs``). Implementations never follow a
    link out of the root."""

    #: How the root is shown to a person, e.g. ``/scratch/runs`` or ``ssh://login1/scratch/runs``.
    display: str

    @abc.abstractmethod
    def list_dirs(self, dirs: Sequence[str]) -> Dict[str, Optional[DirListing]]:
        """List several directories given relative to the root (``""`` is the root; ``/`` separated) in one
        call (one pipelined round over SFTP). Regular files and directories only, ``.tmp-`` names left out;
        a link is shown as its target when that lies inside the root (one leading out is reported and left
        out). ``None`` for a directory that is absent or unreadable."""

    @abc.abstractmethod
    def stat_files(self, paths: Sequence[str]) -> Dict[str, Optional[FileStat]]:
        """Stat several files given relative to the root, in one call: a regular file's stat, ``None`` when
        it is absent, not a regular file, or a link (never followed). The directories on the way are taken
        as they are: pass paths below directories :meth:`list_dirs` showed (which left out links leading
        out of the root)."""

    def list_ahead(self, dirs: Sequence[str]) -> None:
        """A hint: everything below these root-relative directories will be scanned and walked soon. A
        source for which a listing costs a round trip (SFTP) lists them now, a level at a time in one
        pipelined round each, and serves :meth:`scan` and :meth:`walk` from those listings; others ignore it."""

    @abc.abstractmethod
    def scan(self, run: RunRef) -> Dict[str, FileStat]:
        """Stat the regular files directly in the run directory in one go (name -> stat)."""

    @abc.abstractmethod
    def walk(self, run: RunRef, subdir: str) -> Dict[str, FileStat]:
        """Stat every regular file below ``subdir`` (relative path -> stat); empty if it is absent."""

    @abc.abstractmethod
    def read_range(self, run: RunRef, name: str, offset: int, length: int) -> bytes:
        """Read up to ``length`` bytes of ``name`` from ``offset`` (fewer at the end of the file)."""

    @abc.abstractmethod
    def read_document(self, run: RunRef, name: str) -> Optional[bytes]:
        """Read a whole small file; ``None`` when it does not exist."""

    def relative(self, location: str) -> Optional[str]:
        """``location`` (a RunRef's, or a listing's) relative to the root, ``/``-separated (``""``: the root
        itself); None when it is not below the root or this source cannot say. Used by ``export``
        (docs/airgap.md) to mirror a root's layout on the other side."""
        return None

    def close(self) -> None:
        """Release connections; the source may be used again afterwards (it reconnects)."""
