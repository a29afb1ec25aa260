"""A lease lock that works on NFS without flock/fcntl: two gateways never sync the same root at once.

The lease is a small JSON file ``<lease_dir>/lease-<sha1(root)>.json`` holding ``owner``, ``host``,
``pid`` and ``expires_s`` (wall clock). It is taken by writing a private temp file and ``os.link``-ing it
to the lease name: ``link`` is atomic on NFS and fails if the name exists (the classic NFS-safe lock;
``O_EXCL`` is not reliable on NFSv2). An expired lease is broken by renaming it aside (only one breaker's
rename succeeds); the breaker then checks that what it moved is the expired lease it judged, and puts it
back otherwise. A lease whose owner ran on this host and is no longer alive (a gateway killed by
SIGKILL, checked with ``kill(pid, 0)``) is broken at once instead of waiting for it to expire. The holder
renews the lease every ``lease_ttl_s / 3`` while it syncs (:class:`LeaseKeeper`: from its own thread, so a
run that syncs for longer than the lease keeps it), and a lost lease stops that root's runs at their next
batch. Hosts' clocks must agree to well within the lease time (``lease_ttl_s``, default 600 s).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, Optional

from sync_gateway.errors import LeaseHeld

__all__ = ["Lease", "LeaseKeeper"]

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, lease_dir: str, root: str, ttl_s: float, owner: Optional[str] = None,
                 clock: Callable[[], float] = time.time):
        os.makedirs(lease_dir, exist_ok=True)
        self.path = os.path.join(lease_dir, "lease-" + hashlib.sha1(root.encode()).hexdigest()[:16] + ".json")
        self.root = root
        self.ttl_s = ttl_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.held = False

    def _write_tmp(self) -> str:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        doc = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "root": self.root,
               "expires_s": self.clock() + self.ttl_s}
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def read(self, path: Optional[str] = None) -> Optional[Dict[str, Any]]:
        path = path or self.path
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            # Never written by a gateway (they link complete files): treat it as a lease that expires
            # lease_ttl_s after its last change, so a stray file cannot block a root forever.
            try:
                return {"owner": None, "expires_s": os.stat(path).st_mtime + self.ttl_s}
            except FileNotFoundError:
                return None

    def take(self) -> None:
        """Take or renew the lease; raise :class:`~sync_gateway.errors.LeaseHeld` (naming the holder) when
        another live owner holds it."""
        if not self.acquire():
            holder = str((self.read() or {}).get("owner") or "?")
            raise LeaseHeld(f"another gateway ({holder}) holds the lease {self.path}", holder=holder)

    def acquire(self) -> bool:
        """Take or renew the lease; False when another live owner holds it."""
        cur = self.read()
        if cur is not None and cur.get("owner") == self.owner:
            self.renew()
            return True
        if cur is not None and cur.get("expires_s", 0) > self.clock() and not self._dead_here(cur):
            return False
        if cur is not None and not self._break(cur):
            return False
        tmp = self._write_tmp()
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError:
            # NFS may report an error for a link that did happen (a retransmitted request): trust the
            # link count, as the NFS-safe lock recipe says.
            if os.stat(tmp).st_nlink != 2:
                return False
        finally:
            os.unlink(tmp)
        self.held = (self.read() or {}).get("owner") == self.owner
        return self.held

    @staticmethod
    def _dead_here(cur: Dict[str, Any]) -> bool:
        """A lease taken on this host by a process that is gone (e.g. a gateway killed by SIGKILL)."""
        if cur.get("host") != socket.gethostname() or not isinstance(cur.get("pid"), int):
            return False
        try:
            os.kill(cur["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        try:  # a zombie is dead too (PID 1 may reap it only seconds later)
            with open(f"/proc/{cur['pid']}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            return False

    def _break(self, judged: Dict[str, Any]) -> bool:
        aside = f"{self.path}.broken.{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # someone else broke or released it: try to take it
        moved = self.read(aside)
        if moved != judged:
            # We moved a lease another gateway just took: put it back and let it be.
            os.rename(aside, self.path)
            return False
        os.unlink(aside)
        return True

    def renew(self) -> None:
        cur = self.read()
        if cur is None or cur.get("owner") != self.owner:
            self.held = False
            return
        os.replace(self._write_tmp(), self.path)
        self.held = True

    def release(self) -> None:
        cur = self.read()
        if cur is not None and cur.get("owner") == self.owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.held = False


class LeaseKeeper:
    """Keeps the leases a pass holds: :meth:`check` renews one when ``ttl_s / 3`` passed (by ``clock``) and
    says whether it is still held; it is called by the engine before each run and after each batch ack,
    and by a thread of its own every ``poll_s`` (real time), so a run whose single request or file upload
    lasts longer than the lease keeps it too. Thread-safe."""

    def __init__(self, leases: Iterable[Lease], ttl_s: float, clock: Callable[[], float] = time.time,
                 poll_s: Optional[float] = None):
        self.leases = {lease.root: lease for lease in leases}
        self.ttl_s = ttl_s
        self.clock = clock
        # Polls are cheap (a clock read unless a renewal is due); a short lease in a test is still kept.
        self.poll_s = poll_s if poll_s is not None else min(1.0, ttl_s / 30)
        self._last = {root: clock() for root in self.leases}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sync-gateway-lease", daemon=True)
        self._thread.start()

    def check(self, root: str) -> bool:
        with self._lock:
            lease = self.leases[root]
            if lease.held and self.clock() - self._last[root] > self.ttl_s / 3:
                lease.renew()
                self._last[root] = self.clock()
            return lease.held

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            for root in self.leases:
                try:
                    self.check(root)
                except OSError as e:  # the lease directory is unreachable for now: the next poll tries again
                    log.warning("%s: cannot renew the lease: %s", root, e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
