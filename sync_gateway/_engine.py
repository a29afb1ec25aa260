"""One sync pass: discover runs, send only what changed since the durable cursors, commit after the ack.

Per run: scan (stat only) -> compare with the index -> if changed: metadata/tags, params, stream records
from the cursors (batches of <= 1000 points, the cursor committed after each acknowledged batch), summary,
artifacts, then the run state (so FINISHED is set only after the data it covers). One run's error is
recorded in its state and the pass goes on; an unreachable server ends the pass early.
"""
from __future__ import annotations

import fnmatch
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ._format import decode_value, parse_document, parse_run_json, parse_stream
from ._mapping import flatten_config, metric_key, metric_value, run_tags, system_metric, tag_value
from ._settings import Settings
from ._state import StateStore
from .errors import FormatError, GatewayError, ServerError
from .sinks.base import Point, RunSpec, ServerRun, Sink
from .sources.base import FileStat, RunRef, Source

__all__ = ["Gateway", "PassReport", "derive_state", "STREAMS"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

STREAMS = ("history.jsonl", "system.jsonl")
CHUNK_BYTES = 1 << 20      # read size: bounds memory (parsed records of one chunk are ~10x its bytes)
MAX_LINE_BYTES = 64 << 20  # a longer line is refused as corrupt-by-size
_STATUS = {"finished": "FINISHED", "failed": "FAILED", "preempted": "KILLED", "killed": "KILLED",
           "active": "RUNNING", "crashed": "KILLED"}
_ARTIFACTS = {"output.log": "output.log", "hardware.json": "hpc/hardware.json", "run.json": "hpc/run.json",
              "config.json": "hpc/config.json", "summary.json": "hpc/summary.json"}


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


def derive_state(meta: Dict[str, Any], exit_doc: Optional[Dict[str, Any]], heartbeat: Optional[Dict[str, Any]],
                 now_ms: int, stale_after_s: float) -> Tuple[str, Optional[int]]:
    """(run-format state, end_ms) per docs/run-format.md section 7."""
    if exit_doc is not None and exit_doc.get("attempt") == meta.get("attempt", 1):
        reason = exit_doc.get("reason")
        if reason not in ("finished", "failed", "preempted", "killed"):
            reason = "finished" if exit_doc.get("exit_code") == 0 else "failed"
        return reason, exit_doc.get("end_ms")
    last = (heartbeat or {}).get("ts_ms") or meta.get("created_ms") or 0
    if now_ms - int(last) < stale_after_s * 1000:
        return "active", None
    return "crashed", int(last)


class _Aborted(Exception):
    pass


class _Stopped(Exception):
    """A stop was requested (SIGTERM): the batch in flight finished and its cursor is committed."""


class _Pipeline:
    """One batch in flight while the next one is prepared, so the gateway's reading and parsing hide
    behind the server's work. Acks are handled, and cursors committed, in order and by the calling thread
    only; the executor has a single worker, so batches reach the server in file order."""

    def __init__(self, executor: ThreadPoolExecutor, should_stop: Callable[[], bool]):
        self.ex = executor
        self.should_stop = should_stop
        self.pending: Optional[Tuple[Future, Callable[[], None]]] = None

    def submit(self, send: Callable[[], None], commit: Callable[[], None]) -> None:
        prev, self.pending = self.pending, (self.ex.submit(send), commit)
        if prev is not None:
            self._finish(prev)

    def flush(self) -> None:
        prev, self.pending = self.pending, None
        if prev is not None:
            self._finish(prev)

    def _finish(self, item: Tuple[Future, Callable[[], None]]) -> None:
        fut, commit = item
        try:
            fut.result()
        except ServerError as e:
            if e.retryable:
                raise _Aborted(str(e)) from e
            raise
        commit()
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
        self._groups: Dict[Tuple[str, str], ServerRun] = {}
        self._should_stop: Callable[[], bool] = lambda: False
        self._pool: Optional[ThreadPoolExecutor] = None
        self._last_server: Optional[ServerRun] = None

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
        before = dict(index)
        for source in self.sources:
            try:
                refs = list(source.list_runs())
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
                    changed, sent = self._sync_run(source, ref, index)
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
                st_server = self._last_server
                if st_server is not None and ref.project not in rep.experiments:
                    rep.experiments[ref.project] = self.sink.experiment_url(st_server)
                if changed:
                    rep.runs_synced += 1
                else:
                    rep.runs_unchanged += 1
        try:
            self._sync_groups(index)
        except ServerError as e:
            rep.errors["groups"] = str(e)
        if index != before:
            self.state.save_index(index)
        return rep

    def _record_error(self, key: str, index: Dict[str, Any], msg: str) -> None:
        log.error("%s: %s", key, msg)
        st = self.state.load(key)
        st["last_error"] = msg
        self.state.save(key, st)
        ent = index.setdefault(key, {})
        ent["sig"] = None
        ent["error"] = msg

    # -- one run ------------------------------------------------------------------------------
    def _sync_run(self, source: Source, ref: RunRef, index: Dict[str, Any]) -> Tuple[bool, int]:
        files = source.scan(ref)
        extra = {}
        for sub in ("files", "code"):
            extra.update(source.walk(ref, sub))
        both = dict(files)
        both.update(extra)
        sig = "|".join(f"{n}:{s.size_bytes}:{s.mtime_ns}" for n, s in sorted(both.items()))
        now_ms = int(self.clock() * 1000)
        ent = index.get(ref.key) or {}
        self._last_server = None
        if ent.get("sig") == sig and not (ent.get("hpc_state") == "active"
                                          and now_ms - ent.get("hb_ms", 0) >= self.settings.stale_after_s * 1000):
            return False, 0
        st = self.state.load(ref.key)
        st["last_error"] = None
        raw = source.read_document(ref, "run.json")
        if raw is None:
            raise FormatError("run.json vanished")
        meta = parse_run_json(raw)
        server = self._server_run(ref, st, meta)
        self._last_server = server
        if st.get("tags_sig") != _fsig(files.get("run.json")):
            self.sink.set_tags(server, run_tags(meta))
            st["tags_sig"] = _fsig(files.get("run.json"))
            self.state.save(ref.key, st)
        if "config.json" in files and st.get("config_sig") != _fsig(files["config.json"]):
            self._params(source, ref, st, server)
            st["config_sig"] = _fsig(files["config.json"])
            self.state.save(ref.key, st)
        sent = 0
        for name in STREAMS:
            if name in files:
                sent += self._stream(source, ref, st, server, meta, name, files[name].size_bytes)
        if "summary.json" in files and st.get("summary_sig") != _fsig(files["summary.json"]):
            self._summary(source, ref, server, files["summary.json"])
            st["summary_sig"] = _fsig(files["summary.json"])
            self.state.save(ref.key, st)
        self._artifacts(source, ref, st, server, files, extra)
        exit_doc = _doc(source, ref, "exit.json") if "exit.json" in files else None
        hb = _doc(source, ref, "heartbeat.json") if "heartbeat.json" in files else None
        hpc_state, end_ms = derive_state(meta, exit_doc, hb, now_ms, self.settings.stale_after_s)
        status = _STATUS[hpc_state]
        if st.get("hpc_state") != hpc_state:
            if st.get("state") != status:
                self.sink.set_state(server, status, end_ms)
            self.sink.set_tags(server, {"hpc.state": hpc_state})
            st["state"], st["hpc_state"] = status, hpc_state
        st["last_sync_ms"] = now_ms
        self.state.save(ref.key, st)
        index[ref.key] = {"sig": sig, "hpc_state": hpc_state, "status": status, "error": None,
                          "hb_ms": int((hb or {}).get("ts_ms") or meta.get("created_ms") or 0),
                          "group": [meta["project"], meta["group"]] if meta.get("group") else None}
        return True, sent

    def _server_run(self, ref: RunRef, st: Dict[str, Any], meta: Dict[str, Any]) -> ServerRun:
        if st.get("server"):
            return ServerRun(**st["server"])
        parent = self._group_run(meta["project"], meta["group"], meta) if meta.get("group") else None
        spec = RunSpec(project=ref.project, sync_id=f"{ref.project}/{ref.run_id}",
                       name=str(meta.get("name") or ref.run_id), start_ms=int(meta.get("created_ms") or 0),
                       tags=run_tags(meta), parent=parent)
        server = self.sink.find_or_create(spec)
        st["server"] = {"run_id": server.run_id, "experiment_id": server.experiment_id,
                        "artifact_uri": server.artifact_uri}
        self.state.save(ref.key, st)
        return server

    def _group_run(self, project: str, group: str, meta: Dict[str, Any]) -> ServerRun:
        if (project, group) in self._groups:
            return self._groups[(project, group)]
        key = self.state.group_key(project, group)
        st = self.state.load(key)
        if st.get("server"):
            run = ServerRun(**st["server"])
        else:
            run = self.sink.find_or_create(RunSpec(
                project=project, sync_id=f"group:{project}/{group}", name=group,
                start_ms=int(meta.get("created_ms") or 0), tags={"hpc.group": tag_value(group),
                                                                 "mlflow.runName": tag_value(group)}))
            st["server"] = {"run_id": run.run_id, "experiment_id": run.experiment_id,
                            "artifact_uri": run.artifact_uri}
            st["project"], st["group"] = project, group
            self.state.save(key, st)
        self._groups[(project, group)] = run
        return run

    def _sync_groups(self, index: Dict[str, Any]) -> None:
        """A parent is RUNNING while a member runs, else FAILED/KILLED/FINISHED by its worst member."""
        members: Dict[Tuple[str, str], List[str]] = {}
        for ent in index.values():
            if ent.get("group") and ent.get("status"):
                members.setdefault(tuple(ent["group"]), []).append(ent["status"])
        for (project, group), statuses in members.items():
            key = self.state.group_key(project, group)
            st = self.state.load(key)
            if not st.get("server"):
                continue
            want = next(s for s in ("RUNNING", "FAILED", "KILLED", "FINISHED") if s in statuses or s == "FINISHED")
            if st.get("state") != want:
                end = None if want == "RUNNING" else int(self.clock() * 1000)
                self.sink.set_state(ServerRun(**st["server"]), want, end)
                st["state"] = want
                self.state.save(key, st)

    def _params(self, source: Source, ref: RunRef, st: Dict[str, Any], server: ServerRun) -> None:
        raw = source.read_document(ref, "config.json")
        if raw is None:
            return
        config = parse_document(raw, "config.json")
        params = dict(flatten_config(config))
        new = {k: v for k, v in params.items() if st["params"].get(k) != v}
        if not new:
            return
        fresh = {k: v for k, v in new.items() if k not in st["params"]}
        changed = sorted(k for k in new if k in st["params"])
        if changed:
            log.warning("%s: config changed %s after they were sent; MLflow params cannot change, the new "
                        "values are in the artifact hpc/config.json", ref.key, ", ".join(changed[:10]))
        refused = self.sink.log_params(server, fresh) if fresh else {}
        for k, v in fresh.items():
            st["params"][k] = refused.get(k, v)
        st["refused_params"] = sorted(set(st.get("refused_params", [])) | set(changed) | set(refused))

    def _stream(self, source: Source, ref: RunRef, st: Dict[str, Any], server: ServerRun,
                meta: Dict[str, Any], name: str, size: int) -> int:
        cur = st["cursors"].setdefault(name, {"offset": 0, "seq": None, "records": 0})
        if size < cur["offset"]:
            log.warning("%s/%s shrank below the synced offset (%d < %d bytes): was it rewritten? Sending it "
                        "again from the start (identical points are stored once)", ref.key, name, size,
                        cur["offset"])
            cur.update(offset=0, seq=None, records=0)
        system = name == "system.jsonl"
        rules = [] if system else [(m.get("name", ""), m.get("step_metric")) for m in meta.get("metrics") or []
                                    if isinstance(m, dict)]
        sent = 0
        pos, expect = cur["offset"], cur["seq"]  # where reading is; the cursor moves only on acks
        pipe = _Pipeline(self._executor(), self._should_stop)
        want = CHUNK_BYTES
        try:
            while pos < size:
                data = source.read_range(ref, name, pos, min(want, size - pos))
                chunk = parse_stream(data, pos, expect)
                if chunk.consumed == 0:
                    if len(data) < want:
                        break  # only an incomplete last line is left: it is still being written
                    if want >= MAX_LINE_BYTES:
                        raise FormatError(f"{name}: a line longer than {MAX_LINE_BYTES} bytes at byte {pos}")
                    want *= 2  # one long line: read more of it
                    continue
                want = CHUNK_BYTES
                for off, why in chunk.corrupt:
                    log.warning("%s/%s: corrupt line at byte %d skipped (%s)", ref.key, name, off, why)
                for why in chunk.seq_problems:
                    log.warning("%s/%s: %s", ref.key, name, why)
                st["corrupt_lines"] = st.get("corrupt_lines", 0) + len(chunk.corrupt)
                batch: List[Point] = []
                end, seq, n = pos, expect, 0
                limit = self.sink.max_points
                for rec in chunk.records:
                    pts = self._points(rec, system, rules, st)
                    if batch and len(batch) + len(pts) > limit:
                        sent += self._send(pipe, ref, st, server, batch, cur, end, seq, n)
                        batch, n = [], 0
                    while len(pts) > limit:  # a record wider than a batch: the cursor stays before it
                        sent += self._send(pipe, ref, st, server, pts[:limit], cur, None, None, 0)
                        pts = pts[limit:]
                    batch.extend(pts)
                    end, seq, n = rec.end_offset, rec.seq + 1, n + 1
                # The last batch also moves the cursor over trailing corrupt lines: they never become valid.
                pos, expect = pos + chunk.consumed, chunk.next_seq
                sent += self._send(pipe, ref, st, server, batch, cur, pos, seq, n)
            pipe.flush()
        finally:
            pipe.drain()
        return sent

    def _points(self, rec: Any, system: bool, rules: List[Tuple[str, Any]], st: Dict[str, Any]) -> List[Point]:
        out: List[Point] = []
        for k, v in rec.values.items():
            val = metric_value(v)
            if val is None:
                st["skipped_values"] = st.get("skipped_values", 0) + 1
                continue
            if system:
                mkey, factor = system_metric(k)
                out.append(Point(mkey, val * factor, rec.step, rec.ts_ms))
                continue
            step = rec.step
            for pattern, step_metric in rules:
                if fnmatch.fnmatchcase(k, pattern):
                    sv = rec.values.get(step_metric) if step_metric else None
                    if isinstance(sv, (int, float)) and not isinstance(sv, bool) and sv == sv:
                        step = int(sv)
                    break
            out.append(Point(metric_key(k), val, step, rec.ts_ms))
        return out

    def _send(self, pipe: "_Pipeline", ref: RunRef, st: Dict[str, Any], server: ServerRun,
              batch: List[Point], cur: Dict[str, Any], end_offset: Optional[int], next_seq: Optional[int],
              records: int) -> int:
        def commit() -> None:
            if end_offset is not None:
                # The cursor moves only now, after the server acknowledged every point up to end_offset.
                cur["offset"] = end_offset
                cur["seq"] = next_seq
                cur["records"] = cur.get("records", 0) + records
                self.state.save(ref.key, st)
            self.on_points(len(batch))

        if batch:
            pipe.submit(lambda: self.sink.log_points(server, batch), commit)
        else:
            pipe.flush()  # nothing to send (only corrupt lines): commit once what came before is acked
            commit()
        return len(batch)

    def _summary(self, source: Source, ref: RunRef, server: ServerRun, fst: FileStat) -> None:
        raw = source.read_document(ref, "summary.json")
        if raw is None:
            return
        doc = parse_document(raw, "summary.json")
        values = {k: decode_value(v) for k, v in (doc.get("values") or {}).items()}
        special = set(doc.get("set_by_hand") or []) | set((doc.get("policies") or {}).keys())
        ts = fst.mtime_ns // 1_000_000  # stable while the file is unchanged: a re-send is a no-op
        pts, tags = [], {}
        for k in sorted(special):
            if k not in values:
                continue
            v = metric_value(values[k])
            if v is None:
                tags["summary." + metric_key(k)] = tag_value(values[k])
            else:
                pts.append(Point(metric_key("summary/" + k), v, 0, ts))
        for i in range(0, len(pts), self.sink.max_points):
            self.sink.log_points(server, pts[i:i + self.sink.max_points])
        if tags:
            self.sink.set_tags(server, tags)

    def _artifacts(self, source: Source, ref: RunRef, st: Dict[str, Any], server: ServerRun,
                   files: Dict[str, FileStat], extra: Dict[str, FileStat]) -> None:
        todo = {name: (_ARTIFACTS[name], s) for name, s in files.items() if name in _ARTIFACTS}
        todo.update({name: (name, s) for name, s in extra.items()})
        for name, (dest, s) in sorted(todo.items()):
            sig = _fsig(s)
            if st["artifacts"].get(name) == sig:
                continue
            data = source.read_range(ref, name, 0, s.size_bytes)
            self.sink.upload(server, dest, data)
            st["artifacts"][name] = sig
            self.state.save(ref.key, st)


def _fsig(s: Optional[FileStat]) -> Optional[List[int]]:
    return None if s is None else [s.size_bytes, s.mtime_ns]


def _doc(source: Source, ref: RunRef, name: str) -> Optional[Dict[str, Any]]:
    raw = source.read_document(ref, name)
    if raw is None:
        return None
    try:
        return parse_document(raw, name)
    except FormatError as e:
        log.warning("%s: %s (ignored until it is rewritten)", ref.key, e)
        return None
