"""One run's sync: snapshot (stat only) -> compare with the index -> if changed: open the server run,
metadata, config, stream records from the cursors (:mod:`~sync_gateway.engine.stream`), summary, files,
then the run state (so an ended state is set only after the data it covers). Runs in a worker thread when
``workers`` > 1; whatever it raises is the run's fault, recorded by the pass (:mod:`~sync_gateway.engine.gateway`).

A stream whose bytes before the cursor changed was rewritten: its old server run is kept and marked, the
new content goes to a new one. Liveness is judged by the gateway's own clock: when it last saw the run's
files change.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Dict, List, Optional, Tuple

from sync_gateway._redact import redact
from sync_gateway.engine._parallel import RunCtx
from sync_gateway.engine.env import SyncEnv
from sync_gateway.engine.state import IndexEntry, RunState
from sync_gateway.engine.stream import StreamSync
from sync_gateway.errors import FileTooLarge, FormatError
from sync_gateway.readers.base import Reader
from sync_gateway.records import RunInfo, RunStatus, Snapshot, fingerprint
from sync_gateway.settings import Settings
from sync_gateway.sinks.base import RunSpec, SinkRun

__all__ = ["RunSync", "unchanged", "status_record", "when"]

log = logging.getLogger(__name__)


def unchanged(settings: Settings, snap: Snapshot, ent: IndexEntry, now_ms: int) -> Tuple[bool, int]:
    """Whether the run needs nothing (its files as at its last sync, and not gone stale); and since when
    it is alive by the gateway's own clock: when it last saw the run's files change. A run seen for the
    first time counts from its files' newest modification time (never later than now)."""
    sig = snap.signature
    if ent.live_sig == sig:
        alive_ms = ent.alive_ms
    elif ent.live_sig is None:
        newest = max((f.mtime_ns // 1_000_000 for f in snap.files.values()), default=None)
        alive_ms = min(now_ms, newest or now_ms)
    else:
        alive_ms = now_ms
    stale_ms = settings.stale_after_s * 1000
    return ent.sig == sig and not (ent.state == "active" and now_ms - alive_ms >= stale_ms), alive_ms


def status_record(status: RunStatus) -> Dict[str, Optional[int]]:
    """The RunStatus as RunState.status stores it."""
    return {"state": status.state, "end_ms": status.end_ms, "alive_ms": status.alive_ms}  # type: ignore[dict-item]


def when(ms: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


class RunSync:
    """Syncs one run once: :meth:`sync`. Its new index entry goes to ``ctx.entry``."""

    def __init__(self, env: SyncEnv, reader: Reader, ent: Optional[IndexEntry], ctx: RunCtx, root: str):
        self.env, self.reader, self.ctx, self.root = env, reader, ctx, root
        self.ent = ent or IndexEntry()
        self.key = ctx.key  # <root id>/<project>/<run_id> (engine/identity.py)
        self.st = RunState()
        self.handle: SinkRun  # the sink's server run, set by _open

    def sync(self, snap: Optional[Snapshot] = None) -> Tuple[bool, int]:
        """Returns (whether the run needed syncing, points sent)."""
        env, reader = self.env, self.reader
        snap = snap or reader.snapshot()
        now_ms = env.now_ms()
        fresh, alive_ms = unchanged(env.settings, snap, self.ent, now_ms)
        if fresh:
            return False, 0
        self.st = st = env.state.load(self.key)
        reader.attach_state(st.reader_state)
        if not reader.ready(snap):
            return False, 0
        st.last_error = None
        st.reader = reader.format
        info = reader.info()
        info = _rooted(info, self.ctx.root_id)
        spec = RunSpec(sync_id=self.key, info=info, root_id=self.ctx.root_id, legacy_id=self.ctx.legacy)
        self._open(spec)
        spec.legacy_id = None  # a run retired below gets a new server run, never the old one again
        env.answered.set()  # the server is up: the other workers may start
        self._check_rewritten(snap, spec, now_ms)
        self._metadata(snap, info)
        self._config(snap)
        sent = sum(StreamSync(self, stream, size, info).sync() for stream, size in reader.streams(snap))
        self._summary(snap)
        self._files(snap)
        status = self._deliver_state(snap, now_ms, alive_ms)
        self.env.sink.end_run(self.handle)
        st.last_sync_ms = now_ms
        st.failures, st.retry_at_ms = 0, 0
        self.save()
        sig = snap.signature
        self.ctx.entry = IndexEntry(sig=sig, state=status.state, error=None, alive_ms=alive_ms,
                                    start_ms=info.created_ms, end_ms=status.end_ms,
                                    group=(info.project, info.group) if info.group else None, live_sig=sig,
                                    root=self.root, legacy=st.legacy_id)
        return True, sent

    # -- the server run -------------------------------------------------------------------------
    def _open(self, spec: RunSpec) -> None:
        st, sink = self.st, self.env.sink
        kind = sink.kind
        saved = st.sink if st.sink_kind == kind and st.sink else None
        if st.sink_kind not in (None, kind):
            log.warning("%s: was synced to a %s server, now to %s: syncing it anew there", self.key, st.sink_kind,
                        kind)
            st.send_anew()
        run = sink.open_run(spec, saved)
        if run.replaced:
            log.warning("%s: %s; sending the whole run again (the server stores nothing twice)", self.key,
                        run.replaced)
            st.send_anew()
            st.note(f"{when(self.env.clock() * 1000)} {run.replaced}")
            run.replaced = None
        if run.adopted_legacy:  # this run now owns its legacy id: no other root's run may take it
            log.info("%s: adopted the server run an older gateway synced as %s", self.key, spec.legacy_id)
            st.legacy_id, run.adopted_legacy = spec.legacy_id, False
        self.handle = self.ctx.last_run = run
        if saved is None or st.sink != run.to_state():
            self.save()

    def _check_rewritten(self, snap: Snapshot, spec: RunSpec, now_ms: int) -> None:
        rewritten = self._rewritten(snap)
        if not rewritten:
            return
        # Recognised by content: resuming would read mid-line or mix two runs' points. The old content
        # stays in the old server run (marked); the new content is sent whole to a new one.
        msg = f"{rewritten}: the old content stays in its server run, marked as replaced; the new content " \
              f"syncs into a new server run"
        log.warning("%s: %s", self.key, msg)
        self.env.sink.retire_run(self.handle, rewritten)
        self.st.send_anew(forget_server_run=True)
        self.st.note(f"{when(now_ms)} {msg}")
        self.env.state.save(self.key, self.st)
        self._open(spec)

    def _rewritten(self, snap: Snapshot) -> Optional[str]:
        """Why a stream is not the one the cursors point into any more (None: it only grew)."""
        for stream, size in self.reader.streams(snap):
            cur = self.st.cursors.get(stream)
            if cur is None or cur.offset <= 0:
                continue
            if size < cur.offset:
                return f"{stream} was rewritten: it is shorter ({size} bytes) than the part already synced " \
                       f"({cur.offset} bytes)"
            n = cur.fp_len if cur.fp else 1
            data = self.reader.stream_bytes(stream, cur.offset - n, n)
            if data is None:
                continue
            if cur.fp and fingerprint(data) != cur.fp:
                return f"{stream} was rewritten: the bytes before the synced offset {cur.offset} changed"
            if not cur.fp and data[-1:] != b"\n":
                return f"{stream} was rewritten: the synced offset {cur.offset} is no longer at a line end"
        return None

    def save(self, documents: Optional[Dict[str, Optional[List[int]]]] = None) -> None:
        st = self.st
        st.sink_kind, st.sink = self.env.sink.kind, self.handle.to_state()
        if documents:
            st.documents.update(documents)
        self.env.state.save(self.key, st)

    # -- documents and files ----------------------------------------------------------------------
    def _metadata(self, snap: Snapshot, info: RunInfo) -> None:
        meta_v = self.reader.document_version(snap, "metadata")
        if self.st.documents.get("metadata") != meta_v:
            self.env.sink.set_metadata(self.handle, info)
            self.save(documents={"metadata": meta_v})

    def _config(self, snap: Snapshot) -> None:
        config_v = self.reader.document_version(snap, "config")
        st, sink = self.st, self.env.sink
        if config_v is None or st.documents.get("config") == config_v:
            return
        try:
            config = self.reader.config()
        except FormatError as e:  # an unreadable config does not stop the run's data
            log.warning("%s: config not sent: %s", self.key, e)
            st.note(f"config not sent: {str(e)[:200]}")
            config = None
        if config is not None:
            refused = sink.set_config(self.handle, config)
            if refused:
                log.warning("%s: config changed %s after they were sent; %s", self.key, ", ".join(refused[:10]),
                            sink.config_change_note)
                st.refused_config = sorted(set(st.refused_config) | set(refused))
        self.save(documents={"config": config_v})

    def _summary(self, snap: Snapshot) -> None:
        summary_v = self.reader.document_version(snap, "summary")
        if summary_v is None or self.st.documents.get("summary") == summary_v:
            return
        try:
            summary = self.reader.summary(snap)
        except FormatError as e:
            log.warning("%s: summary not sent: %s", self.key, e)
            self.st.note(f"summary not sent: {str(e)[:200]}")
            summary = None
        if summary is not None:
            self.env.sink.set_summary(self.handle, summary)
        self.save(documents={"summary": summary_v})

    def _files(self, snap: Snapshot) -> None:
        st, limit = self.st, self.env.settings.max_file_bytes
        entries, mark = self.reader.files_since(snap, st.files_mark)
        for entry in entries:
            fsig = [entry.stat.size_bytes, entry.stat.mtime_ns]
            if st.artifacts.get(entry.source_path) == fsig:
                continue
            if limit and entry.stat.size_bytes > limit:
                msg = (f"{entry.source_path} is {entry.stat.size_bytes / 1e6:,.0f} MB, over max_file_bytes "
                       f"({limit / 1e6:,.0f} MB): not uploaded; raise max_file_bytes in the config to upload it")
                log.warning("%s: %s", self.key, msg)
                st.note(msg)
            else:
                try:
                    with self.reader.open_file(entry) as body:  # streamed: memory stays bounded whatever the size
                        self.env.sink.upload(self.handle, entry.dest, body, entry.stat.size_bytes)
                except FileTooLarge as e:  # a proxy's body limit: the other files and the state go on
                    log.warning("%s: %s", self.key, e)
                    st.note(redact(e)[:500])
            st.artifacts[entry.source_path] = fsig
            self.save()
        if mark != st.files_mark:  # every file it covers is stored (an error above leaves the old mark)
            st.files_mark = mark
            self.save()

    # -- the run state ------------------------------------------------------------------------------
    def _deliver_state(self, snap: Snapshot, now_ms: int, alive_ms: int) -> RunStatus:
        """The run's state, sent when it differs from the one the sink last acknowledged: another state,
        or the same ended state with another end (ended, resumed and ended again between two passes)."""
        status = self.reader.status(snap, now_ms, self.env.settings.stale_after_s)
        if status.state in ("active", "crashed"):  # no outcome recorded: judged by what the gateway saw
            live = now_ms - alive_ms < self.env.settings.stale_after_s * 1000
            status = RunStatus("active" if live else "crashed", None if live else alive_ms, alive_ms)
        st = self.st
        # A live run's last sign of life changes with every pass it grows: not a reason to send its state.
        before = st.status
        if st.state != status.state or (before is not None and before.get("end_ms") != status.end_ms):
            self.env.sink.set_state(self.handle, status)
        st.state, st.status = status.state, status_record(status)
        return status


def _rooted(info: RunInfo, root_id: str) -> RunInfo:
    """``info`` with its chain of parents keyed within ``root_id``: a reader names a parent within its root,
    and a grandchild's sync opens its parent's parent too (each key must be the one that run syncs under)."""
    if info.parent is None:
        return info
    key, parent = info.parent
    return replace(info, parent=(f"{root_id}/{key}", _rooted(parent, root_id)))
