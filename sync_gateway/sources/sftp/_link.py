"""One source's use of an SSH connection: taken from the pool on the first call, dropped when the link is
found dead (the next call reconnects), and, after a failed connect, the same error at once for a while."""
from __future__ import annotations

import threading
from typing import Callable, Hashable, Optional, Tuple, TypeVar

import paramiko

from sync_gateway.errors import GatewayError, SourceError, SshUnreachableError
from sync_gateway.sources.sftp._ssh import ConnectionPool, SshConnection

__all__ = ["SshLink", "CONNECTION_ERRORS"]

CONNECTION_ERRORS = (EOFError, paramiko.SSHException, ConnectionError, TimeoutError, OSError)

T = TypeVar("T")


class SshLink:
    """The connection of one source. ``connect`` opens a new one (the pool shares it between the sources
    of one host and options); on each new connection the root's real path is resolved (``root_real``)."""

    def __init__(self, display: str, root_path: str, pool: ConnectionPool, pool_key: Hashable,
                 connect: Callable[[], SshConnection], clock: Callable[[], float], retry_connect_after_s: float):
        self.display, self.root_path = display, root_path
        self._pool, self._key, self._connect = pool, pool_key, connect
        self._clock = clock
        self.retry_connect_after_s = retry_connect_after_s
        self._conn: Optional[SshConnection] = None
        self._failed: Optional[Tuple[float, GatewayError]] = None
        self._lock = threading.Lock()
        self.connects = 0        # how many connections were opened (for tests, benchmarks)
        self.root_real: Optional[str] = None

    def sftp(self) -> Tuple[paramiko.SFTPClient, bool]:
        """The live SFTP client, and whether it is a new connection (whose root was just resolved)."""
        with self._lock:
            conn = self._conn
            if conn is not None and conn.active and conn.sftp is not None:
                return conn.sftp, False
            if conn is not None:
                self._conn = None
                self._pool.discard(self._key, conn)
            # After a failed connect, calls fail fast with the same error for a while: a pass over 1,000
            # runs of an unreachable host must not wait connect_timeout_s 1,000 times. close() forgets it.
            if self._failed is not None and self._clock() - self._failed[0] < self.retry_connect_after_s:
                raise self._failed[1]
            try:
                conn, opened = self._pool.acquire(self._key, id(self), self._connect)
            except GatewayError as err:
                self._failed = (self._clock(), err)
                raise
            self._failed = None
            self.connects += opened
            sftp = conn.sftp
            assert sftp is not None  # open_connection raises when the SFTP subsystem did not start
            try:
                with conn.lock:
                    root_real = sftp.normalize(self.root_path)
            except OSError as err:
                self._pool.release(self._key, id(self))
                raise SourceError(self.display, self.root_path,
                                  f"the root is not readable over SFTP ({err})") from err
            except CONNECTION_ERRORS as err:
                self._pool.discard(self._key, conn)
                raise SshUnreachableError(self.display, f"connection lost ({err}); the next call reconnects") from err
            self._conn, self.root_real = conn, root_real
            return sftp, True

    def call(self, path: str, op: Callable[[paramiko.SFTPClient], T], sftp: paramiko.SFTPClient) -> T:
        """Run ``op``; a dropped link closes the connection and becomes a retryable error."""
        conn = self._conn
        try:
            if conn is None:   # pragma: no cover - sftp() always sets it
                return op(sftp)
            with conn.lock:
                return op(sftp)
        except GatewayError:
            raise
        except CONNECTION_ERRORS as err:
            # An SFTP status (no such file, permission denied, failure) arrives as an OSError on a link that
            # is still up: a problem of this path only. EOF, a reset, a timeout or an SSH error mean the link
            # is gone (paramiko may not have noticed yet): drop it so the next call reconnects.
            alive = conn is not None and conn.active
            if alive and isinstance(err, OSError) and not isinstance(err, (ConnectionError, TimeoutError)):
                raise SourceError(self.display, path, f"{type(err).__name__}: {err}") from err
            with self._lock:
                if self._conn is not None:       # the link is dead: forget it (for every source sharing it)
                    self._pool.discard(self._key, self._conn)
                    self._conn = None
            raise SshUnreachableError(self.display, f"connection lost ({type(err).__name__}: {err}); "
                                      f"the next call reconnects", path) from err

    def close(self) -> None:
        """Release this source's use of the connection (closed when no other source uses it)."""
        with self._lock:
            self._conn = None
            self._pool.release(self._key, id(self))
            self._failed = None
