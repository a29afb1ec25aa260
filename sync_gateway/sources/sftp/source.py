"""The SFTP source: read runs under ``ssh://[user@]host[:port]/path`` as if they were local.

One SSH connection per host (with keepalives; sources of several roots on one host share it through a
:class:`ConnectionPool`) serves every call until :meth:`SftpSource.close` or until it drops;
a call that fails because the link dropped raises :class:`SshUnreachableError` (a retryable
``SourceError``) and the next call reconnects. Reads are stateless (offset and length come from the
caller's cursor), so a reconnect loses or repeats nothing.

Round trips are what an SFTP pass costs, so requests are kept in flight together: ``list_runs`` lists the
projects, then every run directory, then their subdirectories, each level in one pipelined round
(``_pipeline.py``) and keeps those listings for the ``scan`` and ``walk`` that follow (for at most
``listing_max_age_s``; any listing is a snapshot the caller's cursors treat as possibly stale). A large
``read_range`` keeps its 32 KiB reads in flight together. SFTP v3 carries whole-second mtimes only.

Links: the server's listing is an ``lstat`` view. A link is followed only if the server's ``realpath``
(``sftp.normalize``) of it lies inside the root's; otherwise it is reported once and skipped.
Residual race, as on any file system without ``O_NOFOLLOW`` over the wire: a user who can write a run
directory may swap a checked regular file for a link between the listing and the open.
"""
from __future__ import annotations

import functools
import logging
import posixpath
import stat as stat_mod
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple, TypeVar, Union, cast

import paramiko

from sync_gateway.errors import GatewayError, SourceError
from sync_gateway.records import FileStat, RunRef
from sync_gateway.sources.base import DirEntry, DirListing, Source, is_run_name
from sync_gateway.sources.sftp._pipeline import listdirs, pipelined_supported
from sync_gateway.sources.sftp._pipeline import read_range as pipelined_read
from sync_gateway.sources.sftp._ssh import (
    ConnectionPool,
    SshAuthError,
    SshConfigError,
    SshConnection,
    SshHop,
    SshHostKeyError,
    SshOptions,
    SshUnreachableError,
    open_connection,
    parse_ssh_url,
    resolve_hops,
)

__all__ = [
    "SftpSource", "check_ssh_root", "SshCheck",
    "SshConfigError", "SshUnreachableError", "SshHostKeyError", "SshAuthError",
]

log = logging.getLogger("sync_gateway.sources.sftp.source")
log.addHandler(logging.NullHandler())

_CONNECTION_ERRORS = (EOFError, paramiko.SSHException, ConnectionError, TimeoutError, OSError)
_READV_MIN_BYTES = 64 * 1024          # below this a plain read is one or two round trips anyway
_PREFETCH_DEPTH = 8                   # levels below a run directory listed ahead by list_runs
_PREFETCH_MAX_DIRS = 50_000           # directories listed ahead per list_runs (memory bound)

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
    """Runs under one ``ssh://`` root. Safe to share between threads (the gateway's run workers): each call
    holds the source's own lock; calls on one SSH connection are serialised by it anyway."""

    def __init__(self, root_url: str, settings: object = None, *, known_hosts: Optional[str] = None,
                 ssh_config: Optional[str] = None, identity_file: Optional[str] = None,
                 connect_timeout_s: Optional[float] = None, keepalive_s: Optional[float] = None,
                 io_timeout_s: Optional[float] = None, allow_agent: Optional[bool] = None,
                 listing_max_age_s: float = 10.0, retry_connect_after_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, pool: Optional[ConnectionPool] = None):
        """``settings``: the gateway's Settings (as ``open_source(root, settings)`` passes them); its ``ssh``
        section, when it has one, gives the defaults of the keyword arguments (see :meth:`from_settings`).
        Unset: OpenSSH's defaults (~/.ssh/config, the host's UserKnownHostsFile or ~/.ssh/known_hosts,
        IdentityFile or ~/.ssh/id_*, ssh-agent), connect 10 s, keepalive 15 s, one request 60 s."""
        user, host, port, path = parse_ssh_url(root_url)
        given = dict(known_hosts=known_hosts, ssh_config=ssh_config, identity_file=identity_file,
                     connect_timeout_s=connect_timeout_s, keepalive_s=keepalive_s, io_timeout_s=io_timeout_s,
                     allow_agent=allow_agent)
        from_config = _ssh_section(settings)
        chosen: Dict[str, Any] = {k: v if v is not None else from_config[k]
                                  for k, v in given.items() if v is not None or k in from_config}
        self.options = SshOptions(**chosen)
        self.display = root_url
        self._root_path = path
        self._hops = resolve_hops(host, user, port, self.options)
        self._conn: Optional[SshConnection] = None
        self._pool = pool if pool is not None else SHARED_CONNECTIONS
        self._pool_key = (tuple(self._hops), self.options)
        self._root_real: Optional[str] = None
        self._lock = threading.Lock()
        self._calls = threading.RLock()   # one public call at a time: the listings below are shared state
        self._regular: Dict[str, Set[str]] = {}   # run location -> names a listing showed as regular files
        self._warned: Set[str] = set()
        # Listings list_runs fetched, each served once: (run location, "") for scan, (location, subdir) for
        # walk, (location, "/names") the names in the run directory (a walk of an absent subdir costs nothing).
        self._prefetched: Dict[Tuple[str, str], Tuple[float, object]] = {}
        self.listing_max_age_s = listing_max_age_s
        self.connects = 0                         # how many connections were opened (for tests, benchmarks)
        # After a failed connect, calls fail fast with the same error for a while: a pass over 1,000 runs
        # of an unreachable host must not wait connect_timeout_s 1,000 times. close() forgets the failure.
        self.retry_connect_after_s = retry_connect_after_s
        self._clock = clock
        self._failed: Optional[Tuple[float, GatewayError]] = None

    @classmethod
    def from_settings(cls, root_url: str, settings: object, **kwargs) -> SftpSource:
        """The same as ``SftpSource(root_url, settings, **kwargs)``."""
        return cls(root_url, settings, **kwargs)

    # --- connection --------------------------------------------------------------------------------------

    @property
    def hops(self) -> List[SshHop]:
        return list(self._hops)

    def _sftp(self) -> paramiko.SFTPClient:
        with self._lock:
            conn = self._conn
            if conn is not None and conn.active and conn.sftp is not None:
                return conn.sftp
            if conn is not None:
                self._conn = None
                self._pool.discard(self._pool_key, conn)
            if self._failed is not None and self._clock() - self._failed[0] < self.retry_connect_after_s:
                raise self._failed[1]
            try:
                conn, opened = self._pool.acquire(self._pool_key, id(self),
                                                  lambda: open_connection(self.display, self._hops, self.options))
            except GatewayError as err:
                self._failed = (self._clock(), err)
                raise
            self._failed = None
            self.connects += opened
            sftp = conn.sftp
            assert sftp is not None  # open_connection raises when the SFTP subsystem did not start
            try:
                with conn.lock:
                    root_real = sftp.normalize(self._root_path)
            except OSError as err:
                self._pool.release(self._pool_key, id(self))
                raise SourceError(self.display, self._root_path, f"the root is not readable over SFTP ({err})") from err
            except _CONNECTION_ERRORS as err:
                self._pool.discard(self._pool_key, conn)
                raise SshUnreachableError(self.display, f"connection lost ({err}); the next call reconnects") from err
            self._conn, self._root_real = conn, root_real
            self._regular.clear()
            self._prefetched.clear()
            return sftp

    def _drop(self) -> None:
        """The link is dead: forget it (for every source sharing it)."""
        if self._conn is not None:
            self._pool.discard(self._pool_key, self._conn)
            self._conn = None

    def close(self) -> None:
        """Release this source's use of the connection (closed when no other source of the same host and
        options uses it); the next call reconnects."""
        with self._lock:
            if self._conn is not None:
                self._conn = None
            self._pool.release(self._pool_key, id(self))
            self._failed = None

    def _call(self, path: str, op: Callable[[paramiko.SFTPClient], T]) -> T:
        """Run ``op``; a dropped link closes the connection and becomes a retryable error."""
        sftp = self._sftp()
        conn = self._conn
        try:
            if conn is None:   # pragma: no cover - _sftp() always sets it
                return op(sftp)
            with conn.lock:
                return op(sftp)
        except GatewayError:
            raise
        except _CONNECTION_ERRORS as err:
            # An SFTP status (no such file, permission denied, failure) arrives as an OSError on a link that
            # is still up: a problem of this path only. EOF, a reset, a timeout or an SSH error mean the link
            # is gone (paramiko may not have noticed yet): drop it so the next call reconnects.
            alive = conn is not None and conn.active
            if alive and isinstance(err, OSError) and not isinstance(err, (ConnectionError, TimeoutError)):
                raise SourceError(self.display, path, f"{type(err).__name__}: {err}") from err
            with self._lock:
                self._drop()
            raise SshUnreachableError(self.display, f"connection lost ({type(err).__name__}: {err}); "
                                      f"the next call reconnects", path) from err

    # --- path safety -------------------------------------------------------------------------------------

    def _inside(self, real: str) -> bool:
        root = self._root_real or ""
        return real == root or real.startswith(root.rstrip("/") + "/")

    def _warn_once(self, path: str, message: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("%s: %s: %s", self.display, path, message)

    def _resolve_link(self, sftp: paramiko.SFTPClient, path: str) -> Optional[paramiko.SFTPAttributes]:
        """Attributes of a link's target if it lies inside the root; ``None`` (reported) otherwise."""
        try:
            real = sftp.normalize(path)
        except OSError:
            self._warn_once(path, "a dangling link: skipped")
            return None
        if not self._inside(real):
            self._warn_once(path, f"a link to {real}, outside the root: skipped (links never lead out of a root)")
            return None
        return sftp.stat(real)

    def _entries(self, sftp: paramiko.SFTPClient, directory: str, link_dirs: bool = True,
                 listing: Optional[List[_Entry]] = None) -> Iterator[_Entry]:
        """Entries of a directory (from ``listing`` when given), links replaced by their in-root target,
        others skipped. ``link_dirs=False`` also drops links to directories (``walk`` does not descend
        them, as os.walk does not)."""
        if listing is None:
            listing = [_entry(a) for a in sftp.listdir_attr(directory)]
        for entry in listing:
            if stat_mod.S_ISLNK(entry.mode):
                target = self._resolve_link(sftp, posixpath.join(directory, entry.name))
                if target is None or (not link_dirs and stat_mod.S_ISDIR(target.st_mode or 0)):
                    continue
                entry = _entry(target, entry.name)
            yield entry

    def _listdirs(self, sftp: paramiko.SFTPClient, paths: List[str]) -> Dict[str, Union[List[_Entry], IOError]]:
        """Many listings in a few round trips (pipelined), or one by one where paramiko lacks the means."""
        out: Dict[str, Union[List[_Entry], IOError]] = {}
        if pipelined_supported(sftp):
            for path, result in listdirs(sftp, paths).items():
                out[path] = result if isinstance(result, IOError) else [_entry(a) for a in result]
            return out
        for path in paths:
            try:
                out[path] = [_entry(a) for a in sftp.listdir_attr(path)]
            except OSError as err:
                if err.errno is None:
                    raise
                out[path] = err
        return out

    def _check_name(self, name: str) -> None:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise SourceError(self.display, name, "not a plain relative path inside a run directory")

    # --- Source ------------------------------------------------------------------------------------------

    def list_runs(self) -> Iterator[RunRef]:
        def listing(sftp: paramiko.SFTPClient) -> List[RunRef]:
            root = self._root_real or self._root_path
            projects = [posixpath.join(root, e.name) for e in self._entries(sftp, root)
                        if is_run_name(e.name) and stat_mod.S_ISDIR(e.mode)]
            candidates: List[Tuple[str, str]] = []
            for project_dir, children in self._listdirs(sftp, projects).items():
                if isinstance(children, IOError):
                    self._warn_once(project_dir, f"cannot list it ({children}): skipped")
                    continue
                candidates += [(posixpath.basename(project_dir), e.name)
                               for e in self._entries(sftp, project_dir, listing=children)
                               if is_run_name(e.name) and stat_mod.S_ISDIR(e.mode)]
            run_dirs = [posixpath.join(root, project, run_id) for project, run_id in candidates]
            listings = self._listdirs(sftp, run_dirs)
            runs: List[RunRef] = []
            for (project, run_id), run_dir in zip(candidates, run_dirs):
                entries = listings[run_dir]
                # As the local source: a run is a directory whose run.json is a regular file (not a link).
                if isinstance(entries, IOError) or not any(
                        e.name == "run.json" and stat_mod.S_ISREG(e.mode) for e in entries):
                    continue
                runs.append(RunRef(project=project, run_id=run_id, location=run_dir))
            self._prefetch(sftp, runs, listings)
            return runs

        yield from self._call(self.display, listing)

    def relative(self, location: str) -> Optional[str]:
        for root in (self._root_real, self._root_path):
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
            root = self._root_real or self._root_path
            paths = {rel: posixpath.join(root, rel) if rel else root for rel in dirs}
            listed = self._listdirs(sftp, list(paths.values()))
            out: Dict[str, Optional[DirListing]] = {}
            for rel, path in paths.items():
                listing = listed.get(path)
                if listing is None or isinstance(listing, IOError):
                    out[rel] = None
                    continue
                out[rel] = DirListing(path, [DirEntry(e.name, stat_mod.S_ISDIR(e.mode), e.stat)
                                             for e in self._entries(sftp, path, listing=listing)
                                             if not e.name.startswith(".tmp-")
                                             and (stat_mod.S_ISDIR(e.mode) or stat_mod.S_ISREG(e.mode))])
            return out

        return self._call(self.display, op)

    def _prefetch(self, sftp: paramiko.SFTPClient, runs: List[RunRef],
                  listings: Dict[str, Union[List[_Entry], IOError]]) -> None:
        """Keep the run listings, and list their real (not linked) subdirectories, for scan and walk."""
        now = self._clock()
        self._prefetched = {}
        subdirs: List[Tuple[str, str]] = []
        for run in runs:
            entries = listings[run.location]
            assert isinstance(entries, list)
            self._prefetched[(run.location, "")] = (now, entries)
            self._prefetched[(run.location, "/names")] = (now, frozenset(e.name for e in entries))
            subdirs += [(run.location, e.name) for e in entries if stat_mod.S_ISDIR(e.mode)]
        # Every level of every run's subdirectories in one pipelined round (bounded: files/ may be a tree).
        level, listed_dirs = subdirs, 0
        for _ in range(_PREFETCH_DEPTH):
            if not level or listed_dirs >= _PREFETCH_MAX_DIRS:
                break
            level = level[:_PREFETCH_MAX_DIRS - listed_dirs]
            listed_dirs += len(level)
            below = self._listdirs(sftp, [posixpath.join(loc, rel) for loc, rel in level])
            deeper: List[Tuple[str, str]] = []
            for loc, rel in level:
                listing = below[posixpath.join(loc, rel)]
                self._prefetched[(loc, rel)] = (now, listing)
                if isinstance(listing, list):
                    deeper += [(loc, posixpath.join(rel, e.name)) for e in listing if stat_mod.S_ISDIR(e.mode)]
            level = deeper

    def _take(self, location: str, key: str) -> object:
        """A prefetched listing if there is a recent one (served once), else ``None``."""
        item = self._prefetched.pop((location, key), None)
        if item is None or self._clock() - item[0] > self.listing_max_age_s:
            return None
        return item[1]

    @_serialised
    def scan(self, run: RunRef) -> Dict[str, FileStat]:
        def op(sftp: paramiko.SFTPClient) -> Dict[str, FileStat]:
            listing = self._take(run.location, "")
            found: Dict[str, FileStat] = {}
            for entry in self._entries(sftp, run.location, listing=listing):  # type: ignore[arg-type]
                if entry.name.startswith(".tmp-") or not stat_mod.S_ISREG(entry.mode):
                    continue
                found[entry.name] = entry.stat
            self._regular[run.location] = set(found)
            return found

        return self._call(run.location, op)

    @_serialised
    def walk(self, run: RunRef, subdir: str) -> Dict[str, FileStat]:
        self._check_name(subdir)

        def op(sftp: paramiko.SFTPClient) -> Dict[str, FileStat]:
            found: Dict[str, FileStat] = {}
            level: Dict[str, object] = {subdir: self._take(run.location, subdir)}
            if level[subdir] is None:
                names = self._prefetched.get((run.location, "/names"))
                if names is not None and self._clock() - names[0] <= self.listing_max_age_s \
                        and subdir.split("/")[0] not in names[1]:  # type: ignore[operator]
                    return found   # absent from a recent listing of the run directory
                top = posixpath.join(run.location, subdir)
                try:
                    real = sftp.normalize(top)   # the subdir itself may be a link: it must stay in the root
                except OSError as err:
                    if err.errno is None:
                        raise
                    return found
                if not self._inside(real):
                    self._warn_once(top, f"a link to {real}, outside the root: skipped "
                                         f"(links never lead out of a root)")
                    return found
            # Breadth first, each level's listings in one pipelined round. Linked directories are not
            # entered below the top (as os.walk), so there is no cycle.
            while level:
                missing = [rel for rel, listing in level.items() if listing is None]
                if missing:
                    listed = self._listdirs(sftp, [posixpath.join(run.location, rel) for rel in missing])
                    for rel in missing:
                        level[rel] = listed[posixpath.join(run.location, rel)]
                deeper: Dict[str, object] = {}
                for rel_dir, listing in level.items():
                    directory = posixpath.join(run.location, rel_dir)
                    if isinstance(listing, IOError):
                        if rel_dir != subdir:
                            self._warn_once(directory, f"cannot list it ({listing}): skipped")
                        continue
                    for entry in self._entries(sftp, directory, link_dirs=False, listing=listing):  # type: ignore[arg-type]
                        rel = posixpath.join(rel_dir, entry.name)
                        if stat_mod.S_ISDIR(entry.mode):
                            deeper[rel] = self._take(run.location, rel)
                        elif stat_mod.S_ISREG(entry.mode) and not entry.name.startswith(".tmp-"):
                            found[rel] = entry.stat
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
                target = self._resolve_link(sftp, path)
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
                self._warn_once(path, str(err))
                return None
            if handle is None:
                return None
            with handle:
                return _read_exact(sftp, handle, 0, handle.stat().st_size or 0)

        return self._call(path, op)


def _ssh_section(settings: object) -> Dict[str, object]:
    """SshOptions fields from the gateway Settings' ``ssh`` section (an object or a dict), where set:
    ``known_hosts``, ``config`` (or ``ssh_config``), ``identity_file``, ``connect_timeout_s``,
    ``keepalive_s``, ``io_timeout_s``, ``allow_agent``."""
    ssh = getattr(settings, "ssh", None) if settings is not None else None
    if ssh is None:
        return {}
    names = {"known_hosts": "known_hosts", "config": "ssh_config", "ssh_config": "ssh_config",
             "identity_file": "identity_file", "connect_timeout_s": "connect_timeout_s",
             "keepalive_s": "keepalive_s", "io_timeout_s": "io_timeout_s", "allow_agent": "allow_agent"}
    out: Dict[str, object] = {}
    for attr, field_name in names.items():
        value = ssh.get(attr) if isinstance(ssh, dict) else getattr(ssh, attr, None)
        if value is not None:
            out[field_name] = value
    return out


class _Entry(NamedTuple):
    """What a listing keeps of one directory entry (small: list_runs holds one list per run)."""

    name: str
    mode: int
    stat: FileStat


def _entry(attr: paramiko.SFTPAttributes, name: Optional[str] = None) -> _Entry:
    # SFTP v3 carries whole-second mtimes only.
    return _Entry(name or attr.filename, int(attr.st_mode or 0),
                  FileStat(size_bytes=int(attr.st_size or 0), mtime_ns=int(attr.st_mtime or 0) * 1_000_000_000))


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


class SshCheck(NamedTuple):
    name: str       # "config", "reachable", "host key", "auth", "path"
    ok: bool
    message: str


def check_ssh_root(root_url: str, *, known_hosts: Optional[str] = None, ssh_config: Optional[str] = None,
                   identity_file: Optional[str] = None, connect_timeout_s: float = 10.0) -> List[SshCheck]:
    """The doctor's checks of one SSH root, in order; the list ends at the first failure.

    One entry per hop for reachable / host key / auth (a ProxyJump chain shows the bastion first), then
    one for the path. Never raises for a problem it can name.
    """
    checks: List[SshCheck] = []
    try:
        user, host, port, path = parse_ssh_url(root_url)
        options = SshOptions(known_hosts=known_hosts, ssh_config=ssh_config, identity_file=identity_file,
                             connect_timeout_s=connect_timeout_s, io_timeout_s=max(connect_timeout_s, 10.0))
        hops = resolve_hops(host, user, port, options)
    except GatewayError as err:
        return [SshCheck("config", False, str(err))]
    route = " -> ".join(h.label for h in hops)
    checks.append(SshCheck("config", True, f"{root_url}: {route}"))

    def on_step(name: str, hop: SshHop, message: str) -> None:
        checks.append(SshCheck(name, True, message))

    try:
        conn = open_connection(root_url, hops, options, on_step)
    except SshHostKeyError as err:
        return checks + [SshCheck("host key", False, str(err))]
    except (SshAuthError, SshConfigError) as err:  # a named identity file that is missing: an auth problem
        return checks + [SshCheck("auth", False, str(err))]
    except SshUnreachableError as err:
        return checks + [SshCheck("reachable", False, str(err))]
    sftp = conn.sftp
    assert sftp is not None  # open_connection raises when the SFTP subsystem did not start
    try:
        real = sftp.normalize(path)
        count = len(sftp.listdir(real))
        checks.append(SshCheck("path", True, f"{real} is readable ({count} entries)"))
    except OSError as err:
        checks.append(SshCheck("path", False, f"{path} on {hops[-1].label} is not readable ({err}): check the "
                                              f"path in the root URL and the permissions of {hops[-1].user}"))
    except (EOFError, paramiko.SSHException) as err:
        checks.append(SshCheck("path", False, f"the connection dropped while listing {path} ({err})"))
    finally:
        conn.close()
    return checks
