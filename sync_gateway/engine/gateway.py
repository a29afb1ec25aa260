"""The pass engine: discover runs, read what changed since the durable cursors, hand it to the sink,
commit after the ack. It knows neither a file format (readers do) nor a server (sinks do).

Per run: snapshot (stat only) -> compare with the index -> if changed: open the server run, metadata,
config, stream records from the cursors (the sink batches them; each cursor is committed after the
batch that covers it is acknowledged), summary, files, then the run state (so an ended state is set only
after the data it covers). After the runs, each group is handed to the sink with every member known.

One run's fault stays in that run: any exception while syncing it is recorded on it (state, index,
``status``, the pass summary) and the pass goes on. A retryable server error (5xx, 429, a request past its
deadline) that repeats backs that run off (BACKOFF_BASE_S doubling up to BACKOFF_MAX_S, by the gateway's
clock) while the others proceed; BREAKER_RUNS such failures in a row, or a server that cannot be reached at all, end the
pass (the server is down: hammering it run by run helps no one). A batch the server refuses for good is
quarantined (byte range and answer kept in the run's state) and the cursor moves past it. A stream whose
bytes before the cursor changed was rewritten: its old server run is kept and marked, the new content goes
to a new one. Liveness is judged by the gateway's own clock: when it last saw the run's files change.

Up to ``workers`` runs sync at once (``_parallel``), each in one thread with its own batch pipe; only the
dispatching thread writes the index, the report and the breaker's count (``_settle``). A tripped breaker
dispatches no new run and stops the runs in flight after their current batch.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from sync_gateway._redact import redact
from sync_gateway.engine._groups import sync_groups
from sync_gateway.engine._parallel import InFlight, RunCtx, RunPool, Stopped, stop_now
from sync_gateway.engine.state import Cursor, IndexEntry, RunState, StateStore
from sync_gateway.errors import BatchRefused, FileTooLarge, FormatError, GatewayError, RunDeleted, ServerError
from sync_gateway.readers import discover_runs, reader_for
from sync_gateway.readers.base import Reader
from sync_gateway.records import Position, RunInfo, RunRef, RunStatus, Snapshot, StreamChunk, fingerprint
from sync_gateway.settings import Settings
from sync_gateway.sinks.base import RunSpec, Sink, SinkRun
from sync_gateway.sources.base import Source

__all__ = ["Gateway", "PassReport"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

CHUNK_BYTES = 1 << 20      # read size: bounds memory (parsed records of one chunk are ~10x its bytes)
BREAKER_RUNS = 3           # this many runs in a row failing with a retryable server error end the pass
BACKOFF_BASE_S = 60.0      # a run's first retry after a retryable error; doubles per failure in a row
BACKOFF_MAX_S = 3600.0


@dataclass
class PassReport:
    runs_seen: int = 0
    runs_synced: int = 0
    runs_unchanged: int = 0
    points_sent: int = 0
    errors: Dict[str, str] = field(default_factory=dict)
    roots_skipped: Dict[str, str] = field(default_factory=dict)
    aborted: Optional[str] = None
    experiments: Dict[str, str] = field(default_factory=dict)  # project -> URL of its experiment
    backing_off: Dict[str, str] = field(default_factory=dict)  # runs not tried: retry time not reached
    quarantined: int = 0        # batches the server refused for good in this pass (cursor moved past)
    notes: Dict[str, str] = field(default_factory=dict)        # not errors: deleted on the server, rewritten

    @property
    def ok(self) -> bool:
        return (not self.errors and not self.roots_skipped and self.aborted is None and not self.backing_off
                and not self.quarantined)


class Gateway:
    def __init__(self, settings: Settings, sink: Sink, sources: Iterable[Source], state: StateStore,
                 clock: Callable[[], float] = time.time,
                 on_points: Optional[Callable[[int], None]] = None):
        self.settings = settings
        self.sink = sink
        self.sources = list(sources)
        self.state = state
        self.clock = clock
        self.on_points = on_points or (lambda n: None)
        self._points_lock = threading.Lock()  # on_points (a progress bar) is called by one thread at a time
        self._pool = RunPool(settings.workers)
        self._failing = 0  # runs in a row that failed with a retryable server error (the circuit breaker)
        self._answered = threading.Event()  # the server acknowledged something in this pass

    def close(self) -> None:
        self._pool.close()

    # -- the pass -----------------------------------------------------------------------------
    def sync_pass(self, should_stop: Callable[[], bool] = lambda: False,
                  renew: Callable[[Source], bool] = lambda s: True) -> PassReport:
        """``renew(source)``: True while this gateway holds the source's lease (renewing it when due);
        called before each run and after each batch ack, from any thread."""
        rep = PassReport()
        index = self.state.load_index()
        before = {k: IndexEntry(**vars(e)) for k, e in index.items()}
        self._failing = 0
        self._answered.clear()
        halt = threading.Event()  # the breaker tripped: runs in flight stop after their current batch
        lost: Set[str] = set()    # roots whose lease was lost: their runs stop at their next batch
        pending: Dict[Future, Tuple[RunCtx, RunRef, Source]] = {}
        probes: Set[Future] = set()
        # Only this (the dispatching) thread settles runs: the index, the report and the breaker have one writer.
        settle = functools.partial(self._settle, rep, index, should_stop=should_stop, renew=renew, halt=halt,
                                   lost=lost)

        def settle_done(timeout_s: Optional[float]) -> None:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED, timeout=timeout_s)
            for fut in done:
                ctx, ref_, src = pending.pop(fut)
                probes.discard(fut)
                settle(ctx, ref_, src, fut.result)

        def healthy() -> bool:
            return self._answered.is_set() and not self._failing

        def full() -> bool:
            # Until the server answered in this pass, and while the last run failed with a retryable error,
            # one new run at a time (a half-open breaker: a server that is down gets no more requests than
            # from workers: 1); the runs already in flight go on.
            if healthy():
                probes.clear()  # answered: in flight like any other run
            return len(pending) >= self._pool.workers or (not healthy() and bool(probes))

        for source in self.sources:
            try:
                refs = discover_runs(source, self.settings.wandb_search_depth)
            except GatewayError as e:
                rep.roots_skipped[source.display] = str(e)
                log.error("%s", e)
                continue
            for ref in refs:
                if pending:
                    settle_done(0)
                while full():
                    settle_done(0.05)  # and look again: the first answer to a long run opens the other slots
                if should_stop() or rep.aborted or source.display in lost:
                    break
                if not renew(source):
                    rep.roots_skipped[source.display] = "lost the lease to another gateway"
                    break
                rep.runs_seen += 1
                ent = index.get(ref.key)
                if ent is not None and ent.retry_at_ms > self.clock() * 1000:
                    rep.backing_off[ref.key] = ent.error or "backing off"
                    continue
                ctx = RunCtx(ref.key, functools.partial(stop_now, should_stop, halt, renew, source))

                if not self._pool.parallel:
                    settle(ctx, ref, source, functools.partial(self._sync_run, reader_for(source, ref), ent, ctx))
                    continue
                # A stat-only look first, here: an unchanged run (most of them) costs no thread hand-off.
                try:
                    reader = reader_for(source, ref)
                    snap = reader.snapshot()
                    fresh = self._unchanged(snap, ent or IndexEntry(), int(self.clock() * 1000))[0]
                except Exception as e:  # noqa: BLE001 - recorded on the run by _settle, like any run's fault
                    settle(ctx, ref, source, functools.partial(_raise, e))
                    continue
                if fresh:
                    settle(ctx, ref, source, lambda: (False, 0))
                    continue
                fut = self._pool.submit(functools.partial(self._sync_run, reader, ent, ctx, snap))
                pending[fut] = (ctx, ref, source)
                if not healthy():
                    probes.add(fut)
        while pending:
            settle_done(None)
        sync_groups(self.sink, self.state, index, before, rep.errors)
        if index != before:
            self.state.save_index(index)
        return rep

    def _settle(self, rep: PassReport, index: Dict[str, IndexEntry], ctx: RunCtx, ref: RunRef, source: Source,
                result: Callable[[], Tuple[bool, int]], should_stop: Callable[[], bool],
                renew: Callable[[Source], bool], halt: threading.Event, lost: Set[str]) -> None:
        """Record one run's outcome (``result()`` returns it or raises what its sync raised). Only the
        dispatching thread calls this, so the index, the report and the breaker have one writer."""
        key = ref.key
        try:
            changed, sent = result()
        except Stopped:
            if should_stop():
                rep.aborted = rep.aborted or "stopped on request"
            elif not halt.is_set() and not renew(source):
                lost.add(source.display)
                rep.roots_skipped[source.display] = "lost the lease to another gateway"
            return  # the breaker stopped it: rep.aborted says why; the next pass resumes from its cursors
        except RunDeleted as e:
            self._record_deleted(key, index, e)
            rep.notes[key] = redact(e)
            self._failing = 0
            return
        except ServerError as e:
            msg = redact(e)
            if not e.retryable:
                rep.errors[key] = self._record_error(key, index, msg)
                self._failing = 0
                return
            self._failing += 1
            down = getattr(e, "unreachable", False)
            rep.errors[key] = self._record_error(key, index, msg, backoff=not down)
            if (down or self._failing >= BREAKER_RUNS) and not rep.aborted:
                rep.aborted = msg if down else (
                    f"{self._failing} runs in a row failed with a retryable server error (last: {msg}); "
                    f"the pass stopped here so as not to hammer the server, the next one resumes")
                log.error("%s", rep.aborted)
                halt.set()
            return
        except Exception as e:  # noqa: BLE001 - one run's failure, of any kind, stays in that run
            msg = redact(e if isinstance(e, (GatewayError, OSError)) else f"{e.__class__.__name__}: {e}")
            log.debug("%s: traceback", key, exc_info=True)
            rep.errors[key] = self._record_error(key, index, msg[:2000])
            self._failing = 0
            return
        finally:
            rep.quarantined += ctx.quarantined
        self._failing = 0
        self._answered.set()
        if ctx.entry is not None:
            index[key] = ctx.entry
        rep.points_sent += sent
        if ctx.last_run is not None and ref.project not in rep.experiments:
            rep.experiments[ref.project] = self.sink.experiment_url(ctx.last_run)
        if changed:
            rep.runs_synced += 1
        else:
            rep.runs_unchanged += 1

    def _record_error(self, key: str, index: Dict[str, IndexEntry], msg: str, backoff: bool = False) -> str:
        """Record a run's failure on it (state and index; ``status`` shows it) and return the message.
        ``backoff``: a retryable error; from the second in a row the run waits BACKOFF_BASE_S x
        2^(failures-2), at most BACKOFF_MAX_S, while the others go on."""
        ent = index.setdefault(key, IndexEntry())
        ent.sig = None
        ent.error = msg
        try:
            st = self.state.load(key)
            st.last_error = msg
            if backoff:
                # The first failure is retried by the next pass (a transient fault, or a configuration
                # fixed meanwhile); from the second in a row the run waits, doubling each time.
                st.failures += 1
                if st.failures == 1:
                    msg += " (retried by the next pass)"
                else:
                    delay_s = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(st.failures - 2, 20))
                    st.retry_at_ms = int((self.clock() + delay_s) * 1000)
                    msg += f" (failure #{st.failures} in a row: retry in {delay_s:.0f} s)"
                ent.error = msg
                st.last_error = msg
            ent.retry_at_ms = st.retry_at_ms
            self.state.save(key, st)
        except OSError as e:  # a full disk: the index still says it, the next pass tries again
            log.error("%s: cannot record the error in the state directory: %s", key, e)
        log.error("%s: %s", key, msg)
        return msg

    def _record_deleted(self, key: str, index: Dict[str, IndexEntry], e: RunDeleted) -> None:
        """A user deleted the server run: respect it. Forget the run's server state (a restored run gets
        everything again); it is looked for again every pass (one search) and shown by ``status``."""
        msg = redact(e)
        log.warning("%s: %s", key, msg)
        st = self.state.load(key)
        st.sink, st.cursors, st.documents, st.artifacts, st.state = {}, {}, {}, {}, None
        st.last_error = None
        if not st.notes or st.notes[-1] != msg:
            st.note(msg)
        self.state.save(key, st)
        ent = index.setdefault(key, IndexEntry())
        ent.sig, ent.error, ent.retry_at_ms = None, None, 0

    # -- one run ------------------------------------------------------------------------------
    def _unchanged(self, snap: Snapshot, ent: IndexEntry, now_ms: int) -> Tuple[bool, int]:
        """Whether the run needs nothing (its files as at its last sync, and not gone stale); and since when
        it is alive by the gateway's own clock: when it last saw the run's files change. A run seen for the
        first time counts from its files' newest modification time (never later than now)."""
        sig = snap.signature
        if ent.live_sig == sig:
            alive_ms = ent.alive_ms
        elif ent.live_sig is None:
            alive_ms = min(now_ms, _newest_mtime_ms(snap) or now_ms)
        else:
            alive_ms = now_ms
        stale_ms = self.settings.stale_after_s * 1000
        return ent.sig == sig and not (ent.state == "active" and now_ms - alive_ms >= stale_ms), alive_ms

    def _sync_run(self, reader: Reader, ent: Optional[IndexEntry], ctx: RunCtx,
                  snap: Optional[Snapshot] = None) -> Tuple[bool, int]:
        """Sync one run (in a worker thread when ``workers`` > 1); its new index entry goes to ``ctx``."""
        key = reader.ref.key
        snap = snap or reader.snapshot()
        sig = snap.signature
        now_ms = int(self.clock() * 1000)
        ent = ent or IndexEntry()
        stale_ms = self.settings.stale_after_s * 1000
        unchanged, alive_ms = self._unchanged(snap, ent, now_ms)
        if unchanged:
            return False, 0
        st = self.state.load(key)
        reader.attach_state(st.reader_state)
        if not reader.ready(snap):
            return False, 0
        st.last_error = None
        st.reader = reader.format
        info = reader.info()
        spec = RunSpec(sync_id=key, info=info)
        run = self._open(key, st, spec)
        ctx.last_run = run
        self._answered.set()  # the server is up: the other workers may start
        rewritten = self._rewritten(reader, st, snap)
        if rewritten:
            # Recognised by content: resuming would read mid-line or mix two runs' points. The old content
            # stays in the old server run (marked); the new content is sent whole to a new one.
            msg = f"{rewritten}: the old content stays in its server run, marked as replaced; the new content " \
                  f"syncs into a new server run"
            log.warning("%s: %s", key, msg)
            self.sink.retire_run(run, rewritten)
            st.sink, st.cursors, st.documents, st.artifacts, st.state = {}, {}, {}, {}, None
            st.note(f"{_when(now_ms)} {msg}")
            self.state.save(key, st)
            run = self._open(key, st, spec)
            ctx.last_run = run
        meta_v = reader.document_version(snap, "metadata")
        if st.documents.get("metadata") != meta_v:
            self.sink.set_metadata(run, info)
            self._save(key, st, run, documents={"metadata": meta_v})
        config_v = reader.document_version(snap, "config")
        if config_v is not None and st.documents.get("config") != config_v:
            try:
                config = reader.config()
            except FormatError as e:  # an unreadable config does not stop the run's data
                log.warning("%s: config not sent: %s", key, e)
                st.note(f"config not sent: {str(e)[:200]}")
                config = None
            if config is not None:
                refused = self.sink.set_config(run, config)
                if refused:
                    log.warning("%s: config changed %s after they were sent; %s", key, ", ".join(refused[:10]),
                                self.sink.config_change_note)
                    st.refused_config = sorted(set(st.refused_config) | set(refused))
            self._save(key, st, run, documents={"config": config_v})
        sent = 0
        for stream, size in reader.streams(snap):
            sent += self._stream(reader, st, run, info, stream, size, ctx)
        summary_v = reader.document_version(snap, "summary")
        if summary_v is not None and st.documents.get("summary") != summary_v:
            try:
                summary = reader.summary(snap)
            except FormatError as e:
                log.warning("%s: summary not sent: %s", key, e)
                st.note(f"summary not sent: {str(e)[:200]}")
                summary = None
            if summary is not None:
                self.sink.set_summary(run, summary)
            self._save(key, st, run, documents={"summary": summary_v})
        limit = self.settings.max_file_bytes
        for entry in reader.files(snap):
            fsig = [entry.stat.size_bytes, entry.stat.mtime_ns]
            if st.artifacts.get(entry.source_path) == fsig:
                continue
            if limit and entry.stat.size_bytes > limit:
                msg = (f"{entry.source_path} is {entry.stat.size_bytes / 1e6:,.0f} MB, over max_file_bytes "
                       f"({limit / 1e6:,.0f} MB): not uploaded; raise max_file_bytes in the config to upload it")
                log.warning("%s: %s", key, msg)
                st.note(msg)
            else:
                try:
                    with reader.open_file(entry) as body:  # streamed: memory stays bounded whatever the size
                        self.sink.upload(run, entry.dest, body, entry.stat.size_bytes)
                except FileTooLarge as e:  # a proxy's body limit: the other files and the state go on
                    log.warning("%s: %s", key, e)
                    st.note(redact(e)[:500])
            st.artifacts[entry.source_path] = fsig
            self._save(key, st, run)
        status = reader.status(snap, now_ms, self.settings.stale_after_s)
        if status.state in ("active", "crashed"):  # no outcome recorded: judged by what the gateway saw
            live = now_ms - alive_ms < stale_ms
            status = RunStatus("active" if live else "crashed", None if live else alive_ms, alive_ms)
        if st.state != status.state:
            self.sink.set_state(run, status)
            st.state = status.state
        st.last_sync_ms = now_ms
        st.failures, st.retry_at_ms = 0, 0
        self._save(key, st, run)
        ctx.entry = IndexEntry(sig=sig, state=status.state, error=None, alive_ms=alive_ms,
                                start_ms=info.created_ms, end_ms=status.end_ms,
                                group=(info.project, info.group) if info.group else None, live_sig=sig)
        return True, sent

    def _rewritten(self, reader: Reader, st: RunState, snap: Snapshot) -> Optional[str]:
        """Why a stream is not the one the cursors point into any more (None: it only grew)."""
        for stream, size in reader.streams(snap):
            cur = st.cursors.get(stream)
            if cur is None or cur.offset <= 0:
                continue
            if size < cur.offset:
                return f"{stream} was rewritten: it is shorter ({size} bytes) than the part already synced " \
                       f"({cur.offset} bytes)"
            n = cur.fp_len if cur.fp else 1
            data = reader.stream_bytes(stream, cur.offset - n, n)
            if data is None:
                continue
            if cur.fp and fingerprint(data) != cur.fp:
                return f"{stream} was rewritten: the bytes before the synced offset {cur.offset} changed"
            if not cur.fp and data[-1:] != b"\n":
                return f"{stream} was rewritten: the synced offset {cur.offset} is no longer at a line end"
        return None

    def _open(self, key: str, st: RunState, spec: RunSpec) -> SinkRun:
        kind = self.sink.kind
        saved = st.sink if st.sink_kind == kind and st.sink else None
        if st.sink_kind not in (None, kind):
            log.warning("%s: was synced to a %s server, now to %s: syncing it anew there", key, st.sink_kind, kind)
            st.cursors, st.documents, st.artifacts, st.state = {}, {}, {}, None
        run = self.sink.open_run(spec, saved)
        if run.replaced:
            log.warning("%s: %s; sending the whole run again (the server stores nothing twice)", key, run.replaced)
            st.cursors, st.documents, st.artifacts, st.state = {}, {}, {}, None
            st.note(f"{_when(self.clock() * 1000)} {run.replaced}")
            run.replaced = None
        if saved is None or st.sink != run.to_state():
            self._save(key, st, run)
        return run

    def _save(self, key: str, st: RunState, run: SinkRun,
              documents: Optional[Dict[str, Optional[List[int]]]] = None) -> None:
        st.sink_kind, st.sink = self.sink.kind, run.to_state()
        if documents:
            st.documents.update(documents)
        self.state.save(key, st)

    def _stream(self, reader: Reader, st: RunState, run: SinkRun, info: RunInfo, stream: str, size: int,
                ctx: RunCtx) -> int:
        key = reader.ref.key
        cur = st.cursors.setdefault(stream, Cursor())
        sent = 0
        pos = Position(cur.offset, cur.seq)  # where reading is; the cursor moves only on acks
        pipe = InFlight(self._pool.sender(), ctx.stop)

        def commit_to(end: Optional[Position], records: int, chunk: StreamChunk) -> Callable[[int], None]:
            def commit(points: int) -> None:
                nonlocal sent
                # The cursor moves only now, after the server acknowledged everything up to ``end``.
                if end is not None and end.offset > cur.offset:
                    fp = chunk.fingerprint_at(end.offset)
                    cur.offset, cur.seq, cur.records = end.offset, end.seq, cur.records + records
                    cur.fp_len, cur.fp = fp if fp else (0, None)
                    self._save(key, st, run)
                sent += points
                self._answered.set()
                with self._points_lock:
                    self.on_points(points)
            return commit

        def refused_of(end: Optional[Position], payload: Any) -> Callable[[BatchRefused], None]:
            def refused(err: BatchRefused) -> None:
                start = cur.offset
                stop = end.offset if end is not None else start
                why = redact(err)[:500]
                st.quarantined = (st.quarantined + [{"stream": stream, "bytes": [start, stop],
                                                     "points": err.points,
                                                     "error": why, "at_ms": int(self.clock() * 1000)}]
                                  )[-RunState.MAX_QUARANTINED:]
                st.quarantined_total += 1
                ctx.quarantined += 1
                log.error("%s/%s: the server refused bytes %d-%d for good (%s): quarantined (kept in the state, "
                          "shown by status); the cursor moves past them", key, stream, start, stop, why)
            return refused

        try:
            while pos.offset < size:
                chunk = reader.read(stream, pos, size, CHUNK_BYTES)
                for off, why in chunk.corrupt:
                    log.warning("%s/%s: corrupt line at byte %d skipped (%s)", key, stream, off, why)
                for why in chunk.problems:
                    log.warning("%s/%s: %s", key, stream, why)
                st.corrupt_lines += len(chunk.corrupt)
                done = 0  # rows fully covered by the payloads submitted so far

                # Called only within this iteration of the loop, so it binds this iteration's chunk.
                def submit(covered: int, payload: object, last: bool, chunk: StreamChunk = chunk) -> None:
                    nonlocal done
                    # The last payload of a chunk also carries the cursor over trailing corrupt lines.
                    end = chunk.end if last else (chunk.rows[covered - 1].end if covered > done else None)
                    pipe.submit(lambda: self.sink.send(run, payload), commit_to(end, max(0, covered - done), chunk),
                                refused_of(end, payload))
                    done = max(done, covered)

                prev: Optional[Tuple[int, object]] = None  # one batch held back to know which is the last
                for item in self.sink.batches(run, stream, chunk.rows, info.metrics):
                    if prev is not None:
                        submit(*prev, last=False)
                    prev = item
                if prev is not None:
                    submit(*prev, last=prev[0] == len(chunk.rows))
                if prev is None or prev[0] < len(chunk.rows):
                    pipe.flush()  # nothing left to send: commit once what came before is acknowledged
                    commit_to(chunk.end, len(chunk.rows) - done, chunk)(0)
                pos = chunk.end
                if chunk.at_end:
                    break
            pipe.flush()
        finally:
            pipe.drain()
        return sent


def _raise(e: BaseException) -> Tuple[bool, int]:
    raise e


def _newest_mtime_ms(snap: Snapshot) -> Optional[int]:
    return max((f.mtime_ns // 1_000_000 for f in snap.files.values()), default=None)


def _when(ms: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))
