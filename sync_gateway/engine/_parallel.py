"""Concurrency for the pass engine: the per-run batch pipe (one batch in flight while the next is read)
and the pool that syncs up to ``workers`` runs at once.

A run is only ever synced by one thread, and each run thread has its own single-thread sender, so a run's
batches reach the server in file order and its cursors are committed by the run's own thread, after each
ack. Different runs proceed independently: a slow run occupies one worker, the others go on. With
``workers: 1`` runs are synced in the calling thread, one after another, exactly as before.
"""
from __future__ import annotations

import abc
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, TypeVar

from sync_gateway.engine.state import IndexEntry
from sync_gateway.errors import BatchRefused
from sync_gateway.sinks.base import SinkRun
from sync_gateway.sources.base import Source

__all__ = ["InFlight", "Ack", "Stopped", "RunPool", "RunCtx", "stop_now"]
T = TypeVar("T")


class Stopped(Exception):
    """A stop was requested (SIGTERM, the circuit breaker, a lost lease): the batch in flight finished
    and its cursor is committed."""


class Ack(abc.ABC):
    """What becomes of one batch once its send is answered (called by the run's own thread, in order)."""

    @abc.abstractmethod
    def committed(self, points: int) -> None:
        """The server acknowledged the batch (``points`` stored): move the cursor over it."""

    @abc.abstractmethod
    def refused(self, error: BatchRefused) -> None:
        """The sink reported the batch refused for good: quarantine it; :meth:`committed` follows."""


class InFlight:
    """One batch in flight while the next one is prepared, so the gateway's reading and parsing hide
    behind the server's work. Acks are handled, and cursors committed, in order and by the calling thread
    only; the executor has a single worker, so batches reach the server in file order."""

    def __init__(self, executor: ThreadPoolExecutor, should_stop: Callable[[], bool]):
        self.ex = executor
        self.should_stop = should_stop
        self.pending: Optional[Tuple[Future, Ack]] = None

    def submit(self, send: Callable[[], int], ack: Ack) -> None:
        """Send in the background; ``ack`` hears the answer once the next batch is submitted or on
        :meth:`flush`. A :class:`BatchRefused` (the sink decides what its server refuses for good) goes to
        ``ack.refused`` and the cursor moves on; any other error is raised here."""
        prev, self.pending = self.pending, (self.ex.submit(send), ack)
        if prev is not None:
            self._finish(prev)

    def flush(self) -> None:
        prev, self.pending = self.pending, None
        if prev is not None:
            self._finish(prev)

    def _finish(self, item: Tuple[Future, Ack]) -> None:
        fut, ack = item
        try:
            points = fut.result()
        except BatchRefused as e:
            ack.refused(e)
            points = 0
        ack.committed(points)
        if self.should_stop():
            self.flush()  # the batch already in flight is finished and committed too
            raise Stopped()

    def drain(self) -> None:
        """After an error: wait for a request still in flight (its cursor stays; a re-send is harmless)."""
        prev, self.pending = self.pending, None
        if prev is not None:
            wait([prev[0]])


@dataclass
class RunCtx:
    """What one run's sync carries besides its state: written by the thread that syncs it, read by the
    dispatching thread once that run is done."""

    key: str
    stop: Callable[[], bool]                 # stop at the next ack (SIGTERM, breaker, lost lease)
    last_run: Optional[SinkRun] = None
    quarantined: int = 0
    entry: Optional[IndexEntry] = None       # the run's new index entry after a complete sync
    root_id: str = ""                        # the id of the root it was found under (engine/identity.py)
    legacy: Optional[str] = None             # the legacy id it owns or is offered (identity.Claims)


def stop_now(should_stop: Callable[[], bool], halt: threading.Event, renew: Callable[[Source], bool],
             source: Source) -> bool:
    """A run of ``source`` stops at its next ack: SIGTERM, the breaker tripped, or the root's lease lost."""
    return should_stop() or halt.is_set() or not renew(source)


class RunPool:
    """Syncs whole runs on up to ``workers`` threads (``workers: 1``: in the calling thread). Each thread
    that syncs runs gets its own single-thread sender (:meth:`sender`), created on first use."""

    def __init__(self, workers: int):
        self.workers = workers
        self._runs: Optional[ThreadPoolExecutor] = None
        self._local = threading.local()
        self._senders: List[ThreadPoolExecutor] = []
        self._lock = threading.Lock()

    @property
    def parallel(self) -> bool:
        return self.workers > 1

    def submit(self, fn: Callable[[], T]) -> Future:
        if self._runs is None:
            self._runs = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sync-gateway-run")
        return self._runs.submit(fn)

    def sender(self) -> ThreadPoolExecutor:
        ex: Optional[ThreadPoolExecutor] = getattr(self._local, "sender", None)
        if ex is None:
            ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-gateway-send")
            with self._lock:
                self._senders.append(ex)
            self._local.sender = ex
        return ex

    def close(self) -> None:
        if self._runs is not None:
            self._runs.shutdown(wait=True)
            self._runs = None
        with self._lock:
            senders, self._senders = self._senders, []
        for ex in senders:
            ex.shutdown(wait=True)
        self._local = threading.local()
