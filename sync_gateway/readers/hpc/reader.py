"""The reader of hpc-sync's own run format (docs/run-format.md): run.json, the JSONL streams,
config/summary documents, heartbeat and exit records, files/ and code/; for a run written through MLflow's
client (section 11, ``_mlflow``) also points.jsonl, artifacts/ and the run as MLflow recorded it.

Run state follows the table in docs/run-format.md section 7 (:func:`derive_state`); ``hpc runs ls`` on the
compute side implements the same table, and both are tested against it.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

from sync_gateway.errors import FormatError
from sync_gateway.readers.base import Reader
from sync_gateway.readers.hpc._format import decode_value, parse_document, parse_run_json, parse_stream
from sync_gateway.readers.hpc._mlflow import ARTIFACTS_DIR, POINTS_STREAM, door_info, mlflow_object, shown_as
from sync_gateway.records import (
    FINGERPRINT_BYTES,
    FileEntry,
    FileStat,
    MetricDef,
    Position,
    Row,
    RunInfo,
    RunRef,
    RunStatus,
    Snapshot,
    StreamChunk,
    Summary,
    fingerprint,
    usable_files,
)
from sync_gateway.sources.base import Source

__all__ = ["HpcReader", "derive_state", "DROPPED", "newest_mtime_ms", "DEFAULT_STALE_AFTER_S", "STREAMS",
           "MAX_LINE_BYTES"]

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER_S = 300.0
#: stream name -> file (``points``: metric points of a run written through MLflow's client, since 1.3)
STREAMS = {"history": "history.jsonl", "system": "system.jsonl", POINTS_STREAM[0]: POINTS_STREAM[1]}
MAX_LINE_BYTES = 64 << 20  # a longer line is refused as corrupt-by-size
_REASONS = ("finished", "failed", "preempted", "killed")
#: exit.json's counts of what the SDK dropped (format 1.1): shown on the run and by `status`
DROPPED = ("dropped_rows", "dropped_points", "dropped_output_bytes")
#: top-level documents stored as artifacts -> where they are shown
_ARTIFACTS = {"output.log": "output.log", "hardware.json": "hpc/hardware.json", "run.json": "hpc/run.json",
              "config.json": "hpc/config.json", "summary.json": "hpc/summary.json"}
_SUBDIRS = ("files", "code")
MEDIA_INDEX, MEDIA_BIN = "media.jsonl", "media.bin"  # since format 1.2


def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def derive_state(meta: Mapping[str, Any], exit_doc: Optional[Mapping[str, Any]],
                 heartbeat: Optional[Mapping[str, Any]], now_ms: int, stale_after_s: float,
                 seen_ms: Optional[int] = None) -> RunStatus:
    """The run's state, by the table of docs/run-format.md section 7.

    - A missing ``attempt`` (in run.json or exit.json) is attempt 1.
    - An exit.json counts when its attempt equals run.json's; its ``reason`` if it is one of the four
      known reasons, else ``finished`` for exit code 0 and ``failed`` otherwise.
    - Otherwise the last sign of life is ``seen_ms``: when the run's files were last seen to change, by
      the reader's clock (``now_ms``'s clock), never a timestamp the node wrote (a node's clock may be
      off by minutes or years); ``active`` while younger than ``stale_after_s``, else ``crashed``
      (presumed dead, until its files change again). Without ``seen_ms`` the run counts as just seen.
    """
    attempt = _int(meta.get("attempt")) or 1
    alive = now_ms if seen_ms is None else min(int(seen_ms), now_ms)
    if exit_doc is not None and (_int(exit_doc.get("attempt")) or 1) == attempt:
        reason = exit_doc.get("reason")
        if reason not in _REASONS:
            reason = "finished" if exit_doc.get("exit_code") == 0 else "failed"
        end = _int(exit_doc.get("end_ms"))
        dropped = {k: n for k in DROPPED for n in (_int(exit_doc.get(k)),) if n is not None and n > 0}
        return RunStatus(str(reason), end if end is not None else alive, alive, dropped)
    if now_ms - alive < stale_after_s * 1000:
        return RunStatus("active", None, alive)
    return RunStatus("crashed", alive, alive)


def _strs(v: Any) -> Tuple[str, ...]:
    return tuple(str(x) for x in v) if isinstance(v, list) else ()


def _opt_str(v: Any) -> Optional[str]:
    return None if v is None or v == "" else str(v)


class HpcReader(Reader):
    format = "hpc"
    documents = {"metadata": "run.json", "config": "config.json", "summary": "summary.json"}

    def __init__(self, source: Source, ref: RunRef):
        super().__init__(source, ref)
        self._meta: Optional[Dict[str, Any]] = None

    # -- documents ----------------------------------------------------------------------------
    def _document(self, name: str) -> Optional[Dict[str, Any]]:
        raw = self.source.read_document(self.ref, name)
        return None if raw is None else parse_document(raw, name)

    def _soft_document(self, name: str) -> Optional[Dict[str, Any]]:
        """heartbeat/exit: a corrupt one is ignored (with a warning) until it is rewritten."""
        try:
            return self._document(name)
        except FormatError as e:
            log.warning("%s: %s (ignored until it is rewritten)", self.ref.key, e)
            return None

    def meta(self) -> Dict[str, Any]:
        if self._meta is None:
            raw = self.source.read_document(self.ref, "run.json")
            if raw is None:
                raise FormatError("run.json vanished")
            self._meta = parse_run_json(raw)
        return self._meta

    # -- Reader -------------------------------------------------------------------------------
    def _door(self) -> Optional[Dict[str, Any]]:
        """run.json's ``mlflow`` object when MLflow's client wrote the run, else None."""
        return mlflow_object(self.meta())

    def snapshot(self) -> Snapshot:
        files = dict(self.source.scan(self.ref))
        for sub in _SUBDIRS + (ARTIFACTS_DIR,):
            files.update(self.source.walk(self.ref, sub))
        return Snapshot(files)

    def info(self) -> RunInfo:
        m = self.meta()
        raw_decl = m.get("metrics")
        decl: List[Any] = raw_decl if isinstance(raw_decl, list) else []
        metrics = tuple(MetricDef(str(d.get("name", "")), _opt_str(d.get("step_metric")), _opt_str(d.get("summary")))
                        for d in decl if isinstance(d, dict))
        git = m.get("git") if isinstance(m.get("git"), dict) else {}
        slurm = m.get("slurm") if isinstance(m.get("slurm"), dict) else {}
        argv = m.get("argv")
        info = RunInfo(
            project=self.ref.project, run_id=self.ref.run_id,
            name=_opt_str(m.get("name")) or self.ref.run_id, created_ms=_int(m.get("created_ms")) or 0,
            attempt=_int(m.get("attempt")) or 1, group=_opt_str(m.get("group")),
            job_type=_opt_str(m.get("job_type")), tags=_strs(m.get("tags")), notes=_opt_str(m.get("notes")),
            user=_opt_str(m.get("user")), host=_opt_str(m.get("host")), program=_opt_str(m.get("program")),
            argv=_strs(argv), git=git or {}, scheduler=slurm or {}, metrics=metrics,
            format=self.format, format_version=str(m.get("format_version", "")))
        door = self._door()
        return info if door is None else door_info(self.source, self.ref, m, door, info)

    def config(self) -> Optional[Dict[str, Any]]:
        return self._document("config.json")

    def streams(self, snap: Snapshot) -> List[Tuple[str, int]]:
        return [(name, snap.files[f].size_bytes) for name, f in STREAMS.items() if f in snap.files]

    def read(self, stream: str, start: Position, stop: int, max_bytes: int) -> StreamChunk:
        name = STREAMS[stream]
        want = max_bytes
        while True:
            data = self.source.read_range(self.ref, name, start.offset, min(want, stop - start.offset))
            # MLflow's steps are any int64 (section 11.3); the other streams' steps are never negative
            parsed = parse_stream(data, start.offset, start.seq, any_step=stream == POINTS_STREAM[0])
            if parsed.consumed == 0 and len(data) >= want:
                if want >= MAX_LINE_BYTES:
                    return self._skip_long_line(name, start, stop, len(data))
                want *= 2  # one long line: read more of it
                continue
            end = Position(start.offset + parsed.consumed, parsed.next_seq)
            rows = [Row(r.step, r.ts_ms, r.values, Position(r.end_offset, r.seq + 1)) for r in parsed.records]
            # at_end: nothing complete is left before ``stop`` (at most a line still being written)
            return StreamChunk(rows, end, parsed.corrupt, parsed.seq_problems,
                               at_end=parsed.consumed == 0 or end.offset >= stop, data=data, base=start.offset)

    def stream_bytes(self, stream: str, offset: int, length: int) -> Optional[bytes]:
        return self.source.read_range(self.ref, STREAMS[stream], offset, length)

    def _skip_long_line(self, name: str, start: Position, stop: int, seen: int) -> StreamChunk:
        """A line longer than MAX_LINE_BYTES is corrupt: find its newline a chunk at a time (memory stays
        bounded) and move past it; while it has no newline yet it may still be being written."""
        pos = start.offset + seen
        while pos < stop:
            data = self.source.read_range(self.ref, name, pos, min(1 << 20, stop - pos))
            if not data:
                break
            nl = data.find(b"\n")
            if nl >= 0:
                end = pos + nl + 1
                why = f"a line longer than {MAX_LINE_BYTES} bytes ({end - start.offset} bytes)"
                return StreamChunk([], Position(end, start.seq), [(start.offset, why)], [],
                                   at_end=end >= stop)
            pos += len(data)
        return StreamChunk([], start, [], [], at_end=True)

    def summary(self, snap: Snapshot) -> Optional[Summary]:
        if "summary.json" not in snap.files:
            return None
        doc = self._document("summary.json")
        if doc is None:
            return None
        raw_values = doc.get("values")
        values: Dict[str, Any] = raw_values if isinstance(raw_values, dict) else {}
        if not isinstance(doc.get("values", {}), dict):
            log.warning("%s: summary.json values is not an object: no summary sent", self.ref.key)
        raw_policies = doc.get("policies")
        policies: Dict[str, Any] = raw_policies if isinstance(raw_policies, dict) else {}
        return Summary({str(k): decode_value(v) for k, v in values.items()},
                       frozenset(_strs(doc.get("set_by_hand"))), {str(k): str(v) for k, v in policies.items()},
                       snap.files["summary.json"].mtime_ns // 1_000_000)

    def files(self, snap: Snapshot) -> List[FileEntry]:
        return self.files_since(snap, None)[0]

    def files_since(self, snap: Snapshot, mark: Any) -> Tuple[List[FileEntry], Any]:
        """The run's files, and the media media.jsonl gained since ``mark`` (``{"media": [offset, fp]}``:
        how far the index is read, and the fingerprint of the bytes before that offset)."""
        door = self._door() is not None
        subdirs = _SUBDIRS + (ARTIFACTS_DIR,) if door else _SUBDIRS
        out = [FileEntry(name, dest, snap.files[name]) for name, dest in _ARTIFACTS.items() if name in snap.files]
        out += [FileEntry(name, name, s) for name, s in snap.files.items() if name.split("/", 1)[0] in subdirs
                and "/" in name]
        if door:  # MLflow's artifacts at their own paths; whatever the door adds under hpc/
            out = [FileEntry(e.source_path, shown_as(e.dest), e.stat) for e in out]
        media, media_mark = self._media(snap, mark.get("media") if isinstance(mark, dict) else None)
        return (usable_files(sorted(out, key=lambda e: e.source_path) + media, self.ref.key),
                {"media": media_mark} if media_mark else None)

    def _index_from(self, size: int, mark: Any) -> Tuple[int, bytes, bytes]:
        """``(start, bytes of media.jsonl from start, the bytes just before start)``: from the mark's offset
        while the bytes before it are the ones it saw (read in the same request), else from the start."""
        if isinstance(mark, list) and len(mark) == 2 and _int(mark[0]) and isinstance(mark[1], str) \
                and 0 < mark[0] <= size:
            offset = mark[0]
            n = min(FINGERPRINT_BYTES, offset)
            data = self.source.read_range(self.ref, MEDIA_INDEX, offset - n, size - offset + n)
            if len(data) >= n and fingerprint(data[:n]) == mark[1]:
                return offset, data[n:], data[:n]
        return 0, self.source.read_range(self.ref, MEDIA_INDEX, 0, size), b""

    def _media(self, snap: Snapshot, mark: Any) -> Tuple[List[FileEntry], Optional[List[Any]]]:
        """The payloads of media.bin that media.jsonl describes (docs/run-format.md section 8), from the
        mark on, and the new mark. A line whose payload lies beyond the media.bin size seen (shared storage
        showing the index first) waits for the next pass, as do the lines after it."""
        index, packed = snap.files.get(MEDIA_INDEX), snap.files.get(MEDIA_BIN)
        if index is None or packed is None:
            return [], None
        start, data, before = self._index_from(index.size_bytes, mark)
        parsed = parse_stream(data, start, None)
        out: List[FileEntry] = []
        end = start
        for record in parsed.records:
            v = record.values
            path, offset, length = v.get("path"), _int(v.get("offset")), _int(v.get("length"))
            if not isinstance(path, str) or not path.startswith("media/") or ".." in path.split("/") \
                    or offset is None or length is None:
                log.warning("%s: %s line %d is not a media record; skipped", self.ref.key, MEDIA_INDEX, record.seq)
            elif offset + length > packed.size_bytes:
                break
            else:
                out.append(FileEntry(path, path, FileStat(length, record.ts_ms * 1_000_000), (MEDIA_BIN, offset)))
            end = record.end_offset
        if end == start:  # nothing new read: the mark stays
            return out, mark if start else None
        seen = before + data[:end - start]  # the bytes before the new mark: in what was read
        return out, [end, fingerprint(seen[-FINGERPRINT_BYTES:])]

    def status(self, snap: Snapshot, now_ms: int, stale_after_s: float) -> RunStatus:
        """Seen for the first time, a run's last sign of life is the newest modification time of its files
        (the file system's clock, capped at ``now_ms``); the engine, which keeps watching, refines it."""
        exit_doc = self._soft_document("exit.json") if "exit.json" in snap.files else None
        hb = self._soft_document("heartbeat.json") if "heartbeat.json" in snap.files else None
        return derive_state(self.meta(), exit_doc, hb, now_ms, stale_after_s, seen_ms=newest_mtime_ms(snap))


def newest_mtime_ms(snap: Snapshot) -> Optional[int]:
    """The newest modification time among a run's files, in ms (None for no files)."""
    return max((s.mtime_ns // 1_000_000 for s in snap.files.values()), default=None)
