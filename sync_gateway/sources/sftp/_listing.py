"""Directory listings for the SFTP source: many in a few round trips, kept a short while for the calls of
a pass that follow, and links checked against the root.

Round trips are what an SFTP pass costs. :func:`list_many` sends the requests of many directories
together (``_pipeline.py``); :class:`ListingCache` keeps what ``stat_files`` and ``list_ahead`` listed so
that the ``scan`` and ``walk`` of each run that follow cost nothing (each listing is served once, for at
most ``max_age_s``: any listing is a snapshot the caller's cursors treat as possibly stale).

Links: the server's listing is an ``lstat`` view. A link is followed only if the server's ``realpath``
(``sftp.normalize``) of it lies inside the root's; otherwise it is reported once and skipped.
"""
from __future__ import annotations

import logging
import posixpath
import stat as stat_mod
from typing import Callable, Dict, FrozenSet, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

import paramiko

from sync_gateway.records import FileStat
from sync_gateway.sources.sftp._pipeline import listdirs, pipelined_supported

__all__ = ["Entry", "Listing", "entry", "list_many", "ListingCache", "RootGuard"]

log = logging.getLogger("sync_gateway.sources.sftp.source")


class Entry(NamedTuple):
    """What a listing keeps of one directory entry (small: a pass holds one list per run)."""

    name: str
    mode: int
    stat: FileStat


Listing = Union[List[Entry], IOError]


def entry(attr: paramiko.SFTPAttributes, name: Optional[str] = None) -> Entry:
    # SFTP v3 carries whole-second mtimes only.
    return Entry(name or attr.filename, int(attr.st_mode or 0),
                 FileStat(size_bytes=int(attr.st_size or 0), mtime_ns=int(attr.st_mtime or 0) * 1_000_000_000))


def list_many(sftp: paramiko.SFTPClient, paths: Sequence[str]) -> Dict[str, Listing]:
    """Many listings in a few round trips (pipelined), or one by one where paramiko lacks the means."""
    out: Dict[str, Listing] = {}
    if not paths:
        return out
    if pipelined_supported(sftp):
        for path, result in listdirs(sftp, paths).items():
            out[path] = result if isinstance(result, IOError) else [entry(a) for a in result]
        return out
    for path in paths:
        try:
            out[path] = [entry(a) for a in sftp.listdir_attr(path)]
        except OSError as err:
            if err.errno is None:
                raise
            out[path] = err
    return out


class ListingCache:
    """Listings by absolute path, each served once within ``max_age_s``; the names of a listed directory
    stay known as long (a walk of a subdirectory absent from its run's listing costs nothing)."""

    def __init__(self, clock: Callable[[], float], max_age_s: float):
        self._clock = clock
        self.max_age_s = max_age_s
        self._listings: Dict[str, Tuple[float, Listing]] = {}
        self._names: Dict[str, Tuple[float, FrozenSet[str]]] = {}

    def put(self, path: str, listing: Listing) -> None:
        now = self._clock()
        self._listings[path] = (now, listing)
        if isinstance(listing, list):
            self._names[path] = (now, frozenset(e.name for e in listing))

    def take(self, path: str) -> Optional[Listing]:
        """A recent listing of ``path`` (served once), else None."""
        item = self._listings.pop(path, None)
        return item[1] if item is not None and self._fresh(item[0]) else None

    def peek(self, path: str) -> Optional[Listing]:
        item = self._listings.get(path)
        return item[1] if item is not None and self._fresh(item[0]) else None

    def names(self, path: str) -> Optional[FrozenSet[str]]:
        item = self._names.get(path)
        return item[1] if item is not None and self._fresh(item[0]) else None

    def purge(self) -> None:
        """Forget what is too old to serve (bounds the memory of a long-lived source)."""
        self._listings = {p: item for p, item in self._listings.items() if self._fresh(item[0])}
        self._names = {p: item for p, item in self._names.items() if self._fresh(item[0])}

    def clear(self) -> None:
        self._listings.clear()
        self._names.clear()

    def _fresh(self, at: float) -> bool:
        return self._clock() - at <= self.max_age_s


class RootGuard:
    """Containment below the root's real path, and links replaced by their in-root targets."""

    def __init__(self, display: str):
        self.display = display
        self.root_real = ""
        self._warned: Set[str] = set()

    def inside(self, real: str) -> bool:
        root = self.root_real
        return real == root or real.startswith(root.rstrip("/") + "/")

    def warn_once(self, path: str, message: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("%s: %s: %s", self.display, path, message)

    def warn_outside(self, path: str, real: str) -> None:
        self.warn_once(path, f"a link to {real}, outside the root: skipped (links never lead out of a root)")

    def resolve_link(self, sftp: paramiko.SFTPClient, path: str) -> Optional[paramiko.SFTPAttributes]:
        """Attributes of a link's target if it lies inside the root; ``None`` (reported) otherwise."""
        try:
            real = sftp.normalize(path)
        except OSError:
            self.warn_once(path, "a dangling link: skipped")
            return None
        if not self.inside(real):
            self.warn_outside(path, real)
            return None
        return sftp.stat(real)

    def entries(self, sftp: paramiko.SFTPClient, directory: str, listing: Optional[List[Entry]] = None,
                link_dirs: bool = True) -> Iterator[Entry]:
        """Entries of a directory (from ``listing`` when given), links replaced by their in-root target,
        others skipped. ``link_dirs=False`` also drops links to directories (``walk`` does not descend
        them, as os.walk does not)."""
        if listing is None:
            listing = [entry(a) for a in sftp.listdir_attr(directory)]
        for e in listing:
            if stat_mod.S_ISLNK(e.mode):
                target = self.resolve_link(sftp, posixpath.join(directory, e.name))
                if target is None or (not link_dirs and stat_mod.S_ISDIR(target.st_mode or 0)):
                    continue
                e = entry(target, e.name)
            yield e
