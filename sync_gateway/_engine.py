"""The pass engine: discover runs, read what changed since the durable cursors, hand it to the sink,
commit after the ack. It knows neither a file format (readers do) nor a server (sinks do).

Per run: snapshot (stat only) -> compare with the index -> if changed: open the server run, metadata,
config, stream records from the cursors (the sink batches them; each cursor is committed after the
batch that covers it is acknowledged), summary, files, then the run state (so an ended state is set only
after the data it covers). After the runs, each group is handed to the sink with every member known.
One run's error is recorded in its state and the pass goes on; an unreachable server ends the pass early.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ._settings import Settings
from ._state import Cursor, GroupState, IndexEntry, RunState, StateStore
from .errors import GatewayError, ServerError
from .readers import discover_runs, reader_for
from .readers.base import Position, Reader, RunInfo
from .sinks.base import GroupMember, GroupView, RunSpec, Sink, SinkRun
from .sources.base import RunRef, Source

__all__ = ["Gateway", "PassReport"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

CHUNK_BYTES = 1 << 20      # read size: bounds memory (parsed records of one chunk are ~10x its bytes)


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

    @property
    def ok(self) -> bool:
        return not self.errors and not self.roots_skipped and self.aborted is None


class _Aborted(Exception):
    pass


class _Stopped(Exception):
    """A stop was requested (SIGTERM): the batch in flight finished and its cursor is committed."""


class _InFlight:
    """One batch in flight while the next one is prepared, so the gateway's reading and parsing hide
    behind the server's work. Acks are handled, and cursors committed, in order and by the calling thread
    only; the executor has a single worker, so batches reach the server in file order."""

    def __init__(self, executor: ThreadPoolExecutor, should_stop: Callable[[], bool]):
        self.ex = executor
        self.should_stop = should_stop
        self.pending: Optional[Tuple[Future, Callable[[int], None]]] = None

    def submit(self, send: Callable[[], int], commit: Callable[[int], None]) -> None:
        prev, self.pending = self.pending, (self.ex.submit(send), commit)
        if prev is not None:
            self._finish(prev)

    def flush(self) -> None:
        prev, self.pending = self.pending, None
        if prev is not None:
            self._finish(prev)

    def _finish(self, item: Tuple[Future, Callable[[int], None]]) -> None:
        fut, commit = item
        try:
            points = fut.result()
        except ServerError as e:
            if e.retryable:
                raise _Aborted(str(e)) from e
            raise
        commit(points)
        if self.should_stop():
            self.flush()  # the batch already in flight is finished and committed too
            raise _Stopped()

    def drain(self) -> None:
        """After an error: wait for a request still in flight (its cursor stays; a re-send is harmless)."""
        prev, self.pending = self.pending, None
        if prev is not None:
            wait([prev[0]])


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
        self._should_stop: Callable[[], bool] = lambda: False
        self._pool: Optional[ThreadPoolExecutor] = None
        self._last_run: Optional[SinkRun] = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-gateway-send")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- the pass -----------------------------------------------------------------------------
    def sync_pass(self, should_stop: Callable[[], bool] = lambda: False,
                  renew: Callable[[Source], bool] = lambda s: True) -> PassReport:
        rep = PassReport()
        self._should_stop = should_stop
        index = self.state.load_index()
        before = {k: IndexEntry(**vars(e)) for k, e in index.items()}
        for source in self.sources:
            try:
                refs = discover_runs(source, self.settings.wandb_search_depth)
            except GatewayError as e:
                rep.roots_skipped[source.display] = str(e)
                log.error("%s", e)
                continue
            for ref in refs:
                if should_stop() or rep.aborted:
                    break
                if not renew(source):
                    rep.roots_skipped[source.display] = "lost the lease to another gateway"
                    break
                rep.runs_seen += 1
                key = ref.key
                try:
                    changed, sent = self._sync_run(reader_for(source, ref), index)
                except _Stopped:
                    rep.aborted = "stopped on request"
                    break
                except _Aborted as e:
                    self._record_error(key, index, f"{e}; the pass stopped here, the next one resumes")
                    rep.aborted = str(e)
                    rep.errors[key] = str(e)
                    break
                except (GatewayError, OSError, ValueError) as e:
                    self._record_error(key, index, str(e))
                    rep.errors[key] = str(e)
                    continue
                rep.points_sent += sent
                if self._last_run is not None and ref.project not in rep.experiments:
                    rep.experiments[ref.project] = self.sink.experiment_url(self._last_run)
                if changed:
                    rep.runs_synced += 1
                else:
                    rep.runs_unchanged += 1
        self._sync_groups(index, before, rep)
        if index != before:
            self.state.save_index(index)
        return rep

    def _record_error(self, key: str, index: Dict[str, IndexEntry], msg: str) -> None:
        log.error("%s: %s", key, msg)
        st = self.state.load(key)
        st.last_error = msg
        self.state.save(key, st)
        ent = index.setdefault(key, IndexEntry())
        ent.sig = None
        ent.error = msg

    # -- one run ------------------------------------------------------------------------------
    def _sync_run(self, reader: Reader, index: Dict[str, IndexEntry]) -> Tuple[bool, int]:
        key = reader.ref.key
        snap = reader.snapshot()
        sig = snap.signature
        now_ms = int(self.clock() * 1000)
        ent = index.get(key) or IndexEntry()
        self._last_run = None
        stale_ms = self.settings.stale_after_s * 1000
        if ent.sig == sig and not (ent.state == "active" and now_ms - ent.alive_ms >= stale_ms):
            return False, 0
        st = self.state.load(key)
        reader.attach_state(st.reader_state)
        if not reader.ready(snap):
            return False, 0
        st.last_error = None
        st.reader = reader.format
        info = reader.info()
        run = self._open(key, st, info)
        self._last_run = run
        meta_v = reader.document_version(snap, "metadata")
        if st.documents.get("metadata") != meta_v:
            self.sink.set_metadata(run, info)
            self._save(key, st, run, documents={"metadata": meta_v})
        config_v = reader.document_version(snap, "config")
        if config_v is not None and st.documents.get("config") != config_v:
            config = reader.config()
            if config is not None:
                refused = self.sink.set_config(run, config)
                if refused:
                    log.warning("%s: config changed %s after they were sent; %s", key, ", ".join(refused[:10]),
                                self.sink.config_change_note)
                    st.refused_config = sorted(set(st.refused_config) | set(refused))
            self._save(key, st, run, documents={"config": config_v})
        sent = 0
        for stream, size in reader.streams(snap):
            sent += self._stream(reader, st, run, info, stream, size)
        summary_v = reader.document_version(snap, "summary")
        if summary_v is not None and st.documents.get("summary") != summary_v:
            summary = reader.summary(snap)
            if summary is not None:
                self.sink.set_summary(run, summary)
            self._save(key, st, run, documents={"summary": summary_v})
        for entry in reader.files(snap):
            fsig = [entry.stat.size_bytes, entry.stat.mtime_ns]
            if st.artifacts.get(entry.source_path) != fsig:
                self.sink.upload(run, entry.dest, reader.read_file(entry))
                st.artifacts[entry.source_path] = fsig
                self._save(key, st, run)
        status = reader.status(snap, now_ms, self.settings.stale_after_s)
        if st.state != status.state:
            self.sink.set_state(run, status)
            st.state = status.state
        st.last_sync_ms = now_ms
        self._save(key, st, run)
        index[key] = IndexEntry(sig=sig, state=status.state, error=None, alive_ms=status.alive_ms,
                                start_ms=info.created_ms, end_ms=status.end_ms,
                                group=(info.project, info.group) if info.group else None)
        return True, sent

    def _open(self, key: str, st: RunState, info: RunInfo) -> SinkRun:
        kind = self.sink.kind
        saved = st.sink if st.sink_kind == kind else None
        if st.sink_kind not in (None, kind):
            log.warning("%s: was synced to a %s server, now to %s: syncing it anew there", key, st.sink_kind, kind)
            st.cursors, st.documents, st.artifacts, st.state = {}, {}, {}, None
        run = self.sink.open_run(RunSpec(sync_id=key, info=info), saved)
        if saved is None:
            self._save(key, st, run)
        return run

    def _save(self, key: str, st: RunState, run: SinkRun,
              documents: Optional[Dict[str, Optional[List[int]]]] = None) -> None:
        st.sink_kind, st.sink = self.sink.kind, run.to_state()
        if documents:
            st.documents.update(documents)
        self.state.save(key, st)

    def _stream(self, reader: Reader, st: RunState, run: SinkRun, info: RunInfo, stream: str, size: int) -> int:
        key = reader.ref.key
        cur = st.cursors.setdefault(stream, Cursor())
        if size < cur.offset:
            log.warning("%s/%s shrank below the synced offset (%d < %d bytes): was it rewritten? Sending it "
                        "again from the start (identical points are stored once)", key, stream, size, cur.offset)
            cur.offset, cur.seq, cur.records = 0, None, 0
        sent = 0
        pos = Position(cur.offset, cur.seq)  # where reading is; the cursor moves only on acks
        pipe = _InFlight(self._executor(), self._should_stop)

        def commit_to(end: Optional[Position], records: int) -> Callable[[int], None]:
            def commit(points: int) -> None:
                nonlocal sent
                # The cursor moves only now, after the server acknowledged everything up to ``end``.
                if end is not None and end.offset > cur.offset:
                    cur.offset, cur.seq, cur.records = end.offset, end.seq, cur.records + records
                    self._save(key, st, run)
                sent += points
                self.on_points(points)
            return commit

        try:
            while pos.offset < size:
                chunk = reader.read(stream, pos, size, CHUNK_BYTES)
                for off, why in chunk.corrupt:
                    log.warning("%s/%s: corrupt line at byte %d skipped (%s)", key, stream, off, why)
                for why in chunk.problems:
                    log.warning("%s/%s: %s", key, stream, why)
                st.corrupt_lines += len(chunk.corrupt)
                done = 0  # rows fully covered by the payloads submitted so far

                def submit(covered: int, payload: object, last: bool) -> None:
                    nonlocal done
                    # The last payload of a chunk also carries the cursor over trailing corrupt lines.
                    end = chunk.end if last else (chunk.rows[covered - 1].end if covered > done else None)
                    pipe.submit(lambda: self.sink.send(run, payload), commit_to(end, max(0, covered - done)))
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
                    commit_to(chunk.end, len(chunk.rows) - done)(0)
                pos = chunk.end
                if chunk.at_end:
                    break
            pipe.flush()
        finally:
            pipe.drain()
        return sent

    # -- groups -------------------------------------------------------------------------------
    def _sync_groups(self, index: Dict[str, IndexEntry], before: Dict[str, IndexEntry], rep: PassReport) -> None:
        """Hand each group one of whose members changed in this pass to the sink, with every member known
        (start, end, state, server run). A pass over unchanged runs costs nothing here."""
        touched = {e.group for k, e in index.items() if e.group and e != before.get(k)}
        members: Dict[Tuple[str, str], List[GroupMember]] = {}
        for key, ent in sorted(index.items()):
            if ent.group not in touched or not ent.state:
                continue
            st = self.state.load(key)
            if st.sink_kind != self.sink.kind or not st.sink:
                continue
            members.setdefault(ent.group, []).append(GroupMember(  # type: ignore[arg-type]
                key, ent.state, ent.start_ms, ent.end_ms, self.sink.restore(st.sink)))
        for (project, group), ms in sorted(members.items()):
            gst = self.state.load_group(project, group)
            try:
                new = self.sink.sync_group(GroupView(project, group, tuple(ms)), gst.sink or None)
            except GatewayError as e:
                log.error("group %s/%s: %s", project, group, e)
                rep.errors[f"group:{project}/{group}"] = str(e)
                continue
            if new != gst.sink:
                self.state.save_group(GroupState(project, group, new))
