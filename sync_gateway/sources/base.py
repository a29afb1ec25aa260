"""The small interface every source of runs implements (local file system, SFTP).

The sync logic only talks to :class:`Source`; it never knows whether the bytes come from a local disk or
from an SSH server. All paths given to a source are relative to one run directory and use ``/``.
"""
from __future__ import annotations

import abc
import re
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence

from sync_gateway.records import FileStat, RunRef

__all__ = ["Source", "is_run_name", "DirEntry", "DirListing"]

# docs/run-format.md section 1: the names of project and run directories. fullmatch, not match + "$":
# "$" also matches before a trailing newline, which would accept a directory named "run\n".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_run_name(name: str) -> bool:
    """Whether ``name`` may be a project or run directory of a root (anything else is not a run)."""
    return _NAME.fullmatch(name) is not None


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
    """Read-only access to the runs under one root. Implementations never follow a link out of the root."""

    #: How the root is shown to a person, e.g. ``/scratch/runs`` or ``ssh://login1/scratch/runs``.
    display: str

    @abc.abstractmethod
    def list_runs(self) -> Iterator[RunRef]:
        """Yield every ``<project>/<run_id>`` directory that holds a ``run.json``."""

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

    def list_dirs(self, dirs: Sequence[str]) -> Dict[str, Optional[DirListing]]:
        """List several directories given relative to the root (``""`` is the root; ``/`` separated), for
        discovering runs of formats with another layout. Regular files and directories only; links are
        checked as everywhere (one leading out of the root is reported and left out). ``None`` for a
        directory that is absent or unreadable. Sources that cannot list return ``{}`` for everything."""
        return {}

    def relative(self, location: str) -> Optional[str]:
        """``location`` (a RunRef's, or a listing's) relative to the root, ``/``-separated (``""``: the root
        itself); None when it is not below the root or this source cannot say. Used by ``export``
        (docs/airgap.md) to mirror a root's layout on the other side."""
        return None

    def close(self) -> None:
        """Release connections; the source may be used again afterwards (it reconnects)."""
