"""The SFTP source: read the files under ``ssh://[user@]host[:port]/path`` as if they were local.

One SSH connection per host (with keepalives; sources of several roots on one host share it through a
:class:`ConnectionPool`) serves every call until :meth:`SftpSource.close` or until it drops (``_link.py``);
a call that fails because the link dropped raises :class:`SshUnreachableError` (a retryable
``SourceError``) and the next call reconnects. Reads are stateless (offset and length come from the
caller's cursor), so a reconnect loses or repeats nothing. How to connect is one :class:`SshOptions`
record, ``SshOptions.from_settings(settings)``, the same that ``doctor`` checks with (``check.py``).

Round trips are what an SFTP pass costs, so requests are kept in flight together (``_listing.py``,
``_pipeline.py``): ``list_dirs`` and ``stat_files`` list all their directories in one pipelined round,
``list_ahead`` lists everything below the run directories a discovery found, a level per round, and the
``scan`` and ``walk`` calls that follow are served from those listings (for at most ``listing_max_age_s``).
A large ``read_range`` keeps its 32 KiB reads in flight together. SFTP v3 carries whole-second mtimes only.

Links are followed only to a target inside the root (the server's ``realpath``). Residual race, as on any
file system without ``O_NOFOLLOW`` over the wire: a user who can write a run directory may swap a checked
regular file for a link between the listing and the open.
"""
from __future__ import annotations

import functools
import posixpath
import stat as stat_mod
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, TypeVar, cast

import paramiko

from sync_gateway.errors import SourceError
from sync_gateway.records import FileStat, RunRef
from sync_gateway.sources.base import DirEntry, DirListing, Source
from sync_gateway.sources.sftp._link import SshLink
from sync_gateway.sources.sftp._listing import Entry, Listing, ListingCache, RootGuard, list_many
from sync_gateway.sources.sftp._pipeline import pipelined_supported
from sync_gateway.sources.sftp._pipeline import read_range as pipelined_read
from sync_gateway.sources.sftp._ssh import (
    ConnectionPool,
    SshAuthError,
    SshConfigError,
    SshHop,
    SshHostKeyError,
    SshOptions,
    SshUnreachableError,
    open_connection,
    parse_ssh_url,
    resolve_hops,
)
from sync_gateway.sources.sftp.check import SshCheck, check_ssh_root

__all__ = [
    "SftpSource", "SshOptions", "check_ssh_root", "SshCheck",
    "SshConfigError", "SshUnreachableError", "SshHostKeyError", "SshAuthError",
]

_READV_MIN_BYTES = 64 * 1024          # below this a plain read is one or two round trips anyway
_AHEAD_DEPTH = 8                      # levels below a run directory listed by list_ahead
_AHEAD_MAX_DIRS = 50_000              # directories listed ahead per call (memory bound)

T = TypeVar("T")


def _serialised(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(self: SftpSource, *a: Any, **kw: Any) -> T:
        with self._calls:
            return fn(self, *a, **kw)
    return wrapper


#: Sources share SSH connections through this pool unless given their own: one connection per host.
SHARED_CONNECTIONS = ConnectionPool()


class SftpSource(Source):
    """The files under one ``ssh://`` root. Safe to share between threads (the gateway's run workers): each
    call holds the source's own lock; calls on one SSH connection are serialised by it anyway."""

    def __init__(self, root_url: str, settings: object = None, *, listing_max_age_s: float = 10.0,
                 retry_connect_after_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 pool: Optional[ConnectionPool] = None, **ssh: Any):
        """``settings``: the gateway's Settings (as ``open_source(root, settings)`` passes them); the
        options are ``SshOptions.from_settings(settings, **ssh)``: its ``ssh`` section, then the keyword
        arguments named like SshOptions' fields (``known_hosts=``, ``identity_file=``, ...) that are not None.
        Unset: OpenSSH's defaults (~/.ssh/config, the host's UserKnownHostsFile or ~/.ssh/known_hosts,
        IdentityFile or ~/.ssh/id_*, ssh-agent), connect 10 s, keepalive 30 s, one request 60 s."""
        user, host, port, path = parse_ssh_url(root_url)
        self.options = SshOptions.from_settings(settings, **ssh)
        self.display = root_url
        self._hops = resolve_hops(host, user, port, self.options)
        self._link = SshLink(root_url, path, pool if pool is not None else SHARED_CONNECTIONS,
                             (tuple(self._hops), self.options),
                             lambda: open_connection(self.display, self._hops, self.options),
                             clock, retry_connect_after_s)
        self._guard = RootGuard(root_url)
        self._calls = threading.RLock()   # one public call at a time: the listings below are shared state
        self._regular: Dict[str, Set[str]] = {}   # run location -> names a listing showed as regular files
        self._cache = ListingCache(clock, listing_max_age_s)

    @classmethod
    def from_settings(cls, root_url: str, settings: object, **kwargs: Any) -> SftpSource:
        """The same as ``SftpSource(root_url, settings, **kwargs)``."""
        return cls(root_url, settings, **kwargs)

    # --- connection --------------------------------------------------------------------------------------

    @property
    def hops(self) -> List[SshHop]:
        return list(self._hops)

    @property
    def connects(self) -> int:
        """How many connections this source opened (for tests, benchmarks)."""
        return self._link.connects

    @property
    def listing_max_age_s(self) -> float:
        return self._cache.max_age_s

    @property
    def retry_connect_after_s(self) -> float:
        return self._link.retry_connect_after_s

    def close(self) -> None:
        """Release this source's use of the connection (closed when no other source of the same host and
        options uses it); the next call reconnects."""
        self._link.close()

    def _call(self, path: str, op: Callable[[paramiko.SFTPClient], T]) -> T:
        sftp, new = self._link.sftp()
        if new:   # listings of another connection may describe another moment: forget them
            self._guard.root_real = self._link.root_real or ""
            self._regular.clear()
            self._cache.clear()
        return self._link.call(path, op, sftp)

    def _root(self) -> str:
        return self._link.root_real or self._link.root_path

    def _check_name(self, name: str) -> None:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise SourceError(self.display, name, "not a plain relative path inside a run directory")

    # --- Source ------------------------------------------------------------------------------------------

    def relative(self, location: str) -> Optional[str]:
        for root in (self._link.root_real, self._link.root_path):
            if not root:
                continue
            rel = posixpath.relpath(posixpath.normpath(location), root)
            if rel == ".":
                return ""
            if not (rel == ".." or rel.startswith("../")):
                return rel
        return None

    @_serialised
    def list_dirs(self, dirs: Sequence[str]) -> Dict[str, Optional[DirListing]]:
        """Every directory's listing in one pipelined round; links checked as in ``walk``."""
        for rel in dirs:
            if rel:
                self._check_name(rel)

        def op(sftp: paramiko.SFTPClient) -> Dict[str, Optional[DirListing]]:
            paths = {rel: posixpath.join(self._root(), rel) if rel else self._root() for rel in dirs}
            listed = list_many(sftp, list(paths.values()))
            out: Dict[str, Optional[DirListing]] = {}
            for rel, path in paths.items():
                listing = listed.get(path)
                if listing is None or isinstance(listing, IOError):
                    out[rel] = None
                    continue
                out[rel] = DirListing(path, [DirEntry(e.name, stat_mod.S_ISDIR(e.mode), e.stat)
                                             for e in self._guard.entries(sftp, path, listing)
                                             if not e.name.startswith(".tmp-")
                                             and (stat_mod.S_ISDIR(e.mode) or stat_mod.S_ISREG(e.mode))])
            return out

        return self._call(self.display, op)

    @_serialised
    def stat_files(self, paths: Sequence[str]) -> Dict[str, Optional[FileStat]]:
        """Lists the directories holding the files (one pipelined round) and keeps those listings for the
        ``scan`` of each that follows."""
        for rel in paths:
            self._check_name(rel)

        def op(sftp: paramiko.SFTPClient) -> Dict[str, Optional[FileStat]]:
            self._cache.purge()
            parents = {rel: posixpath.join(self._root(), posixpath.dirname(rel)) for rel in paths}
            listed = list_many(sftp, list(dict.fromkeys(parents.values())))
            out: Dict[str, Optional[FileStat]] = {}
            for rel, parent in parents.items():
                listing = listed[parent]
                self._cache.put(parent, listing)
                name = posixpath.basename(rel)
                out[rel] = None if isinstance(listing, IOError) else next(
                    (e.stat for e in listing if e.name == name and stat_mod.S_ISREG(e.mode)), None)
            return out

        return self._call(self.display, op)

    @_serialised
    def list_ahead(self, dirs: Sequence[str]) -> None:
        """List the real (not linked) subdirectories below ``dirs``, a level per pipelined round (bounded:
        files/ may be a tree), for the ``scan`` and ``walk`` calls that follow."""
        for rel in dirs:
            self._check_name(rel)

        def op(sftp: paramiko.SFTPClient) -> None:
            tops = [posixpath.join(self._root(), rel) for rel in dirs]
            missing = [top for top in tops if self._cache.peek(top) is None]
            for top, listing in list_many(sftp, missing).items():
                self._cache.put(top, listing)
            level = [posixpath.join(top, e.name) for top in tops for e in _listed(self._cache.peek(top))
                     if stat_mod.S_ISDIR(e.mode)]
            listed_dirs = 0
            for _ in range(_AHEAD_DEPTH):
                if not level or listed_dirs >= _AHEAD_MAX_DIRS:
                    break
                level = level[:_AHEAD_MAX_DIRS - listed_dirs]
                listed_dirs += len(level)
                deeper: List[str] = []
                for path, listing in list_many(sftp, level).items():
                    self._cache.put(path, listing)
                    deeper += [posixpath.join(path, e.name) for e in _listed(listing) if stat_mod.S_ISDIR(e.mode)]
                level = deeper

        self._call(self.display, op)

    @_serialised
    def scan(self, run: RunRef) -> Dict[str, FileStat]:
        def op(sftp: paramiko.SFTPClient) -> Dict[str, FileStat]:
            listing = self._cache.take(run.location)
            found: Dict[str, FileStat] = {}
            for e in self._guard.entries(sftp, run.location, listing if isinstance(listing, list) else None):
                if not e.name.startswith(".tmp-") and stat_mod.S_ISREG(e.mode):
                    found[e.name] = e.stat
            self._regular[run.location] = set(found)
            return found

        return self._call(run.location, op)

    @_serialised
    def walk(self, run: RunRef, subdir: str) -> Dict[str, FileStat]:
        self._check_name(subdir)

        def op(sftp: paramiko.SFTPClient) -> Dict[str, FileStat]:
            found: Dict[str, FileStat] = {}
            top = posixpath.join(run.location, subdir)
            level: Dict[str, Optional[Listing]] = {subdir: self._cache.take(top)}
            if level[subdir] is None:
                names = self._cache.names(run.location)
                if names is not None and subdir.split("/")[0] not in names:
                    return found   # absent from a recent listing of the run directory
                try:
                    real = sftp.normalize(top)   # the subdir itself may be a link: it must stay in the root
                except OSError as err:
                    if err.errno is None:
                        raise
                    return found
                if not self._guard.inside(real):
                    self._guard.warn_outside(top, real)
                    return found
            # Breadth first, each level's listings in one pipelined round. Linked directories are not
            # entered below the top (as os.walk), so there is no cycle.
            while level:
                missing = [rel for rel, listing in level.items() if listing is None]
                listed = list_many(sftp, [posixpath.join(run.location, rel) for rel in missing]) if missing else {}
                deeper: Dict[str, Optional[Listing]] = {}
                for rel_dir, listing in level.items():
                    directory = posixpath.join(run.location, rel_dir)
                    listing = listed[directory] if listing is None else listing
                    if isinstance(listing, IOError):
                        if rel_dir != subdir:
                            self._guard.warn_once(directory, f"cannot list it ({listing}): skipped")
                        continue
                    for e in self._guard.entries(sftp, directory, listing, link_dirs=False):
                        rel = posixpath.join(rel_dir, e.name)
                        if stat_mod.S_ISDIR(e.mode):
                            deeper[rel] = self._cache.take(posixpath.join(run.location, rel))
                        elif stat_mod.S_ISREG(e.mode) and not e.name.startswith(".tmp-"):
                            found[rel] = e.stat
                level = deeper
            self._regular.setdefault(run.location, set()).update(found)
            return found

        return self._call(posixpath.join(run.location, subdir), op)

    def _open_checked(self, sftp: paramiko.SFTPClient, run: RunRef, name: str) -> Optional[paramiko.SFTPFile]:
        """Open a regular file of the run, refusing links out of the root; ``None`` if it does not exist."""
        path = posixpath.join(run.location, name)
        if name not in self._regular.get(run.location, ()):
            try:
                attr = sftp.lstat(path)
            except OSError as err:
                if err.errno is None:
                    raise
                return None
            if stat_mod.S_ISLNK(attr.st_mode or 0):
                target = self._guard.resolve_link(sftp, path)
                if target is None:
                    raise SourceError(self.display, path, "a link out of the root (or dangling): not read")
                attr = target
            if not stat_mod.S_ISREG(attr.st_mode or 0):
                raise SourceError(self.display, path, "not a regular file: not read")
        try:
            return sftp.open(path, "rb")
        except OSError as err:
            if err.errno is None:
                raise
            return None

    @_serialised
    def read_range(self, run: RunRef, name: str, offset: int, length: int) -> bytes:
        self._check_name(name)
        if offset < 0 or length < 0:
            raise ValueError(f"read_range: offset {offset} and length {length} must be >= 0")
        path = posixpath.join(run.location, name)

        def op(sftp: paramiko.SFTPClient) -> bytes:
            handle = self._open_checked(sftp, run, name)
            if handle is None:
                raise SourceError(self.display, path, "does not exist (any more)")
            with handle:
                if length == 0:
                    return b""
                size = handle.stat().st_size or 0
                wanted = max(0, min(length, size - offset))
                return _read_exact(sftp, handle, offset, wanted)

        return self._call(path, op)

    @_serialised
    def read_document(self, run: RunRef, name: str) -> Optional[bytes]:
        self._check_name(name)
        path = posixpath.join(run.location, name)

        def op(sftp: paramiko.SFTPClient) -> Optional[bytes]:
            try:
                handle = self._open_checked(sftp, run, name)
            except SourceError as err:
                self._guard.warn_once(path, str(err))
                return None
            if handle is None:
                return None
            with handle:
                return _read_exact(sftp, handle, 0, handle.stat().st_size or 0)

        return self._call(path, op)


def _listed(listing: Optional[Listing]) -> List[Entry]:
    return listing if isinstance(listing, list) else []


def _read_exact(sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, offset: int, length: int) -> bytes:
    """``length`` bytes from ``offset`` (fewer if the file shrank meanwhile), the 32 KiB SFTP reads kept in
    flight together (``_pipeline.read_range``; paramiko's own ``readv`` runs a thread per call that
    outlives a dropped link, and its ``read(n)`` grows the result by concatenation)."""
    if length == 0:
        return b""
    if length < _READV_MIN_BYTES or not pipelined_supported(sftp):
        handle.seek(offset)
        return handle.read(length)
    return pipelined_read(sftp, cast(bytes, handle.handle), offset, length)  # the raw SFTP handle
