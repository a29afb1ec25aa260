"""One stream of one run: read from the durable cursor a chunk at a time, hand the rows to the sink's
batches, send them through the run's batch pipe, and move the cursor only after the sink acknowledged the
batch that covers it (:class:`BatchAck`). A batch the sink reports refused for good
(:class:`~sync_gateway.errors.BatchRefused`) is quarantined and the cursor moves past it.

:func:`backlog` is the same reading without sending: what ``status`` shows as not yet synced.
"""
from __future__ import annotations

import functools
import logging
from typing import Dict, Iterator, Optional, Protocol, Tuple

from sync_gateway._redact import redact
from sync_gateway.engine._parallel import Ack, InFlight, RunCtx
from sync_gateway.engine.env import SyncEnv
from sync_gateway.engine.state import Cursor, RunState
from sync_gateway.errors import BatchRefused
from sync_gateway.readers.base import Reader
from sync_gateway.records import Position, RunInfo, Snapshot, StreamChunk
from sync_gateway.sinks.base import SinkRun

__all__ = ["CHUNK_BYTES", "StreamSync", "BatchAck", "chunks", "backlog"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20      # read size: bounds memory (parsed records of one chunk are ~10x its bytes)


def chunks(reader: Reader, stream: str, pos: Position, size: int) -> Iterator[StreamChunk]:
    """The complete records of ``stream`` from ``pos`` up to ``size`` bytes, a chunk at a time."""
    while pos.offset < size:
        chunk = reader.read(stream, pos, size, CHUNK_BYTES)
        yield chunk
        pos = chunk.end
        if chunk.at_end:
            return


def backlog(reader: Reader, snap: Snapshot, cursors: Dict[str, Cursor]) -> Tuple[int, int]:
    """``(records, bytes)`` on disk and not yet synced, over the run's streams (complete records only)."""
    records = behind = 0
    for stream, size in reader.streams(snap):
        cur = cursors.get(stream)
        start = Position(cur.offset, cur.seq) if cur and cur.offset <= size else Position()
        if size > start.offset:
            behind += size - start.offset
            records += sum(len(chunk.rows) for chunk in chunks(reader, stream, start, size))
    return records, behind


class RunHost(Protocol):
    """The run's sync a stream belongs to (:class:`~sync_gateway.engine.run_sync.RunSync`)."""

    env: SyncEnv
    reader: Reader
    st: RunState
    handle: SinkRun
    ctx: RunCtx
    key: str

    def save(self) -> None:
        """Store the run's state (its cursors) atomically."""


class BatchAck(Ack):
    """One batch's answer: the cursor moves to ``end`` (None: the batch ends mid-row, the cursor stays)
    over ``records`` rows of ``chunk`` once the sink acknowledged it."""

    def __init__(self, owner: StreamSync, end: Optional[Position], records: int, chunk: StreamChunk):
        self.owner, self.end, self.records, self.chunk = owner, end, records, chunk

    def committed(self, points: int) -> None:
        self.owner.commit(self.end, self.records, self.chunk, points)

    def refused(self, error: BatchRefused) -> None:
        self.owner.quarantine(self.end, error)


class StreamSync:
    """Sends one stream of the run that ``run`` syncs (in that run's thread)."""

    def __init__(self, run: RunHost, stream: str, size: int, info: RunInfo):
        self.run, self.stream, self.size, self.info = run, stream, size, info
        self.st: RunState = run.st
        self.cur = self.st.cursors.setdefault(stream, Cursor())
        self.sent = 0
        self._done = 0   # rows of the current chunk fully covered by the payloads submitted so far
        self._pipe = InFlight(run.env.pool.sender(), run.ctx.stop)

    @property
    def where(self) -> str:
        return f"{self.run.key}/{self.stream}"

    def sync(self) -> int:
        """Send what is new; return the points the sink acknowledged."""
        sink, handle = self.run.env.sink, self.run.handle
        try:
            for chunk in chunks(self.run.reader, self.stream, Position(self.cur.offset, self.cur.seq), self.size):
                self._report(chunk)
                self._done = 0
                prev: Optional[Tuple[int, object]] = None  # one batch held back to know which is the last
                for item in sink.batches(handle, self.stream, chunk.rows, self.info.metrics):
                    if prev is not None:
                        self._submit(chunk, *prev, last=False)
                    prev = item
                if prev is not None:
                    self._submit(chunk, *prev, last=prev[0] == len(chunk.rows))
                if prev is None or prev[0] < len(chunk.rows):
                    self._pipe.flush()  # nothing left to send: commit once what came before is acknowledged
                    self.commit(chunk.end, len(chunk.rows) - self._done, chunk, 0)
            self._pipe.flush()
        finally:
            self._pipe.drain()
        return self.sent

    def _report(self, chunk: StreamChunk) -> None:
        for off, why in chunk.corrupt:
            log.warning("%s: corrupt line at byte %d skipped (%s)", self.where, off, why)
        for why in chunk.problems:
            log.warning("%s: %s", self.where, why)
        self.st.corrupt_lines += len(chunk.corrupt)

    def _submit(self, chunk: StreamChunk, covered: int, payload: object, last: bool) -> None:
        # The last payload of a chunk also carries the cursor over trailing corrupt lines.
        end = chunk.end if last else (chunk.rows[covered - 1].end if covered > self._done else None)
        sink, handle = self.run.env.sink, self.run.handle
        self._pipe.submit(functools.partial(sink.send, handle, payload),
                          BatchAck(self, end, max(0, covered - self._done), chunk))
        self._done = max(self._done, covered)

    def commit(self, end: Optional[Position], records: int, chunk: StreamChunk, points: int) -> None:
        """The cursor moves only now, after the sink acknowledged everything up to ``end``."""
        cur = self.cur
        if end is not None and end.offset > cur.offset:
            fp = chunk.fingerprint_at(end.offset)
            cur.offset, cur.seq, cur.records = end.offset, end.seq, cur.records + records
            cur.fp_len, cur.fp = fp if fp else (0, None)
            self.run.save()
        self.sent += points
        self.run.env.acknowledged(points)

    def quarantine(self, end: Optional[Position], err: BatchRefused) -> None:
        start = self.cur.offset
        stop = end.offset if end is not None else start
        why = redact(err)[:500]
        st = self.st
        st.quarantined = (st.quarantined + [{"stream": self.stream, "bytes": [start, stop], "points": err.points,
                                             "error": why, "at_ms": self.run.env.now_ms()}]
                          )[-RunState.MAX_QUARANTINED:]
        st.quarantined_total += 1
        self.run.ctx.quarantined += 1
        log.error("%s: the server refused bytes %d-%d for good (%s): quarantined (kept in the state, shown by "
                  "status); the cursor moves past them", self.where, start, stop, why)
