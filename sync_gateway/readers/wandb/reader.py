"""The reader of W&B's offline runs (``wandb/offline-run-<date>-<id>/run-<id>.wandb``), docs/wandb.md.

One ``.wandb`` file interleaves every kind of record in one append-only stream. This reader:

- **scans** the records the engine treats as documents (run, environment, config, summary, metric,
  files, exit) once, incrementally, from where its last scan stopped (``_scan.DocumentScan``); what it
  found and how far it got live in its per-run memory (``Reader.attach_state``), small flat JSON the engine
  saves with the run's state;
- reads two **streams** over the same bytes, each from the engine's own cursor: ``history`` (the logged
  rows) and ``system`` (``stats`` records, keys mapped to docs/metrics.md's neutral names with units);
- joins **resumed fragments** (several directories with one run id) into one run: a position is
  ``fragment index << 40 | byte offset``, so cursors stay plain increasing integers, and a fragment whose
  steps start again at 0 continues after the previous fragment's last step;
- steps over a record longer than 64 MiB (wandb writes one for a huge ``log``): reported as corrupt (the
  engine counts it) and skipped, so the records after it sync.

Discovery is ``discovery.py``; the protobuf schema comes from the ``wandb`` package (extra ``[wandb]``),
imported on first use only (``_records.py``).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from sync_gateway.errors import FormatError
from sync_gateway.readers.base import Reader
from sync_gateway.readers.wandb._format import (
    HEADER_LEN,
    ParsedRecords,
    check_header,
    first_chunk,
    parse_records,
    record_end,
    record_kind,
)
from sync_gateway.readers.wandb._records import decode, history_row, json_value, ms
from sync_gateway.readers.wandb._scan import SCALARS, DocumentScan, end_ms, fresh_state
from sync_gateway.readers.wandb._system import system_values
from sync_gateway.readers.wandb.discovery import FORMAT
from sync_gateway.records import (
    FileEntry,
    MetricDef,
    Position,
    Row,
    RunInfo,
    RunRef,
    RunStatus,
    Snapshot,
    StreamChunk,
    Summary,
    usable_files,
)
from sync_gateway.sources.base import Source

__all__ = ["WandbReader", "FRAGMENT_BITS", "MAX_RECORD_BYTES"]

log = logging.getLogger(__name__)

FRAGMENT_BITS = 40              # a position is fragment << 40 | offset (a fragment file up to 1 TiB)
_MASK = (1 << FRAGMENT_BITS) - 1
_SCAN_BYTES = 4 << 20           # the document scan reads this much at a time
MAX_RECORD_BYTES = 64 << 20     # a record longer than this is skipped (and reported)
_POLICIES = ("min", "max", "mean", "first", "last", "best")


def _split(pos: int) -> Tuple[int, int]:
    return pos >> FRAGMENT_BITS, pos & _MASK


def _join(fragment: int, offset: int) -> int:
    return (fragment << FRAGMENT_BITS) | offset


class WandbReader(Reader):
    format = FORMAT
    documents = {"metadata": "run", "config": "config", "summary": "summary"}  # records, not files

    def __init__(self, source: Source, ref: RunRef):
        super().__init__(source, ref)
        self.st: Dict[str, Any] = {}
        self._snap: Optional[Snapshot] = None
        self._scanned = False

    # -- files and positions ------------------------------------------------------------------------------
    def _file(self, k: int) -> str:
        return f"{self.ref.parts[k]}/run-{self.ref.run_id}.wandb"

    def _size(self, k: int) -> int:
        assert self._snap is not None
        s = self._snap.files.get(self._file(k))
        return 0 if s is None else s.size_bytes

    def attach_state(self, state: Dict[str, Any]) -> None:
        fresh_state(state, self.ref.parts)
        self.st = state

    # -- Reader ---------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The .wandb of each fragment (a scan of its directory) and its ``files/`` (a walk); not ``logs/``
        or ``tmp/``, which hold nothing to sync (and ``logs/debug-core.log`` links out of the root)."""
        files = {}
        wanted = f"run-{self.ref.run_id}.wandb"
        for part in self.ref.parts:
            here = RunRef(self.ref.project, self.ref.run_id, self.ref.location.rstrip("/") + "/" + part)
            s = self.source.scan(here).get(wanted)
            if s is not None:
                files[f"{part}/{wanted}"] = s
            files.update(self.source.walk(self.ref, f"{part}/files"))
        self._snap = Snapshot(files)
        return self._snap

    def _records(self, k: int, off: int, size: int, want: int, final: bool,
                 stream: Optional[str] = None) -> ParsedRecords:
        """The complete records of fragment ``k`` from ``off`` (a record boundary; the file holds ``size``
        bytes), reading about ``want`` bytes. ``final``: the fragment will not grow. A record longer than
        ``want`` is read whole; one longer than MAX_RECORD_BYTES is stepped over by its chunk headers, never
        read into memory, and reported in ``corrupt``: by the ``system`` stream if it is a system sample,
        else by ``history`` (so the engine counts it once; the scan, ``stream`` None, always reports it)."""
        data = self.source.read_range(self.ref, self._file(k), off, max(0, min(want, size - off)))
        parsed = parse_records(data, off, final=final and off + len(data) >= size)
        if parsed.consumed > off or off + len(data) >= size:
            return parsed
        # No record ends in `want` bytes and the file holds more: one long record. Find its end from its
        # chunk headers, reading on from where the walk got (the chunk it stopped at was cut off).
        end, at = record_end(data, off)
        while end is None and at < size:
            piece = self.source.read_range(self.ref, self._file(k), at, min(_SCAN_BYTES, size - at))
            end, reached = record_end(piece, at)
            if reached == at:
                break
            at = reached
        if end is None:            # its last chunk is not written yet
            if not final:
                return parsed
            return ParsedRecords([], size, [(off, f"{size - off} bytes of an unfinished record at the end of a "
                                                 f"fragment that will not grow")])
        if end - off <= MAX_RECORD_BYTES:
            return parse_records(self.source.read_range(self.ref, self._file(k), off, end - off), off,
                                 final=final and end >= size)
        kind = record_kind(first_chunk(data, off))
        if stream is not None and (kind == "stats") != (stream == "system"):
            return ParsedRecords([], end)
        return ParsedRecords([], end, [(off, f"a {kind or 'W&B'} record of {end - off} bytes, over the "
                                             f"{MAX_RECORD_BYTES >> 20} MiB a record may have: skipped")])

    def _scan(self, snap: Snapshot) -> None:
        """Apply every document record from the last scan's position to the end of the last fragment."""
        if self._scanned and self._snap is snap:
            return
        if not self.st:
            self.attach_state({})
        self._snap = snap
        scan = DocumentScan(self.st, self.ref.key)
        last = len(self.ref.parts) - 1
        k, off = _split(self.st["scan"])
        while k <= last:
            if self._file(k) not in snap.files:     # a fragment directory without its .wandb
                if k == last:
                    break
                k, off = k + 1, 0
                continue
            size = self._size(k)
            off = max(off, HEADER_LEN)
            if off == HEADER_LEN:
                self._check_header(k)
            while off < size:
                parsed = self._records(k, off, size, _SCAN_BYTES, final=k < last)
                for at, why in parsed.corrupt:
                    log.warning("%s: %s: byte %d: %s (skipped)", self.ref.key, self._file(k), at, why)
                for payload, end in parsed.records:
                    scan.apply(k, payload, _join(k, end))
                if parsed.consumed == off:
                    break          # the rest is a record still being written
                off = parsed.consumed
            self.st["scan"] = _join(k, off)
            if k == last or off < size:
                break
            k, off = k + 1, 0
        scan.finish()
        self._scanned = True

    def _check_header(self, k: int) -> None:
        head = self.source.read_range(self.ref, self._file(k), 0, HEADER_LEN)
        why = check_header(head) if len(head) >= HEADER_LEN else None
        if why is not None:
            raise FormatError(f"{self._file(k)}: {why}")

    def _shift(self, k: int) -> int:
        """What fragment ``k``'s steps are moved by: after a resume W&B offline starts ``_step`` at 0 again
        (it cannot ask a server where the run stopped), so such a fragment continues after the previous
        one's last step; a fragment that already continues (explicit ``step=``) is left as written."""
        shift = 0
        prev_last: Optional[int] = None
        for i in range(k + 1):
            steps = self.st["steps"].get(str(i), {})
            first, last = steps.get("first"), steps.get("last")
            shift_i = prev_last + 1 if (i > 0 and prev_last is not None and first == 0) else 0
            if i == k:
                shift = shift_i
            if last is not None:
                prev_last = last + shift_i
        return shift

    def ready(self, snap: Snapshot) -> bool:
        if self._file(len(self.ref.parts) - 1) not in snap.files:
            return False    # the newest fragment has no .wandb yet
        self._scan(snap)
        return bool(self.st["run"])

    def document_version(self, snap: Snapshot, name: str) -> Optional[List[int]]:
        self._scan(snap)
        v = self.st["versions"].get(name)
        return None if v is None else [v, 0]

    def info(self) -> RunInfo:
        if self._snap is None:
            self.snapshot()
        self._scan(self._snap)  # type: ignore[arg-type]
        run = self.st["run"]
        if not run:
            raise FormatError(f"{self.ref.key}: no run record yet")
        metrics = tuple(MetricDef(n, s, p if p != "first" and p != "best" else None)
                        for n, s, p in self.st["metrics"] if s or p)
        return RunInfo(
            project=run.get("project") or "uncategorized", run_id=self.ref.run_id,
            name=run.get("name") or self.ref.run_id, created_ms=int(run.get("start_ms") or 0),
            attempt=len(self.ref.parts), group=run.get("group") or None, job_type=run.get("job_type") or None,
            tags=tuple(run.get("tags") or ()), notes=run.get("notes") or None, user=run.get("user") or None,
            host=run.get("host") or None, program=run.get("program") or None, argv=tuple(run.get("argv") or ()),
            git={k: v for k, v in (run.get("git") or {}).items() if v}, scheduler=dict(run.get("slurm") or {}),
            metrics=metrics, format=self.format, format_version="")

    def config(self) -> Optional[Dict[str, Any]]:
        if self.st.get("versions", {}).get("config") is None:
            return None
        return {key: json_value(text) for key, text in self.st["config"].items()}

    def streams(self, snap: Snapshot) -> List[Tuple[str, int]]:
        self._snap = snap
        last = len(self.ref.parts) - 1
        end = _join(last, self._size(last))
        return [("history", end), ("system", end)]

    def read(self, stream: str, start: Position, stop: int, max_bytes: int) -> StreamChunk:
        want_kind = "history" if stream == "history" else "stats"
        last = len(self.ref.parts) - 1
        k, off = _split(start.offset)
        seq = start.seq or 0
        if k > last:
            return StreamChunk([], start, at_end=True)
        if k < last and self._file(k) not in self._snap.files:  # type: ignore[union-attr]
            return StreamChunk([], Position(_join(k + 1, 0), seq), at_end=False)
        in_last = stop & _MASK if _split(stop)[0] == k else self._size(k)
        size = self._size(k) if k < last else min(self._size(k), in_last)
        off = max(off, HEADER_LEN)
        rows: List[Row] = []
        shift = self._shift(k) if want_kind == "history" else 0
        parsed = self._records(k, off, size, max_bytes, final=k < last, stream=stream)
        corrupt = [(_join(k, at), why) for at, why in parsed.corrupt]
        empty_keys = 0
        for payload, end in parsed.records:
            if record_kind(payload) != want_kind:
                continue
            rec = decode(payload)
            if rec is None:
                corrupt.append((_join(k, end), "a record that does not parse with this wandb schema"))
                continue
            if want_kind == "history":
                step, ts_ms, values, empty = history_row(rec, shift)
                empty_keys += empty
                self.st.setdefault("last", {}).update((key, v) for key, v in values.items() if isinstance(v, SCALARS))
            else:
                step, ts_ms, values = seq, ms(rec.stats.timestamp), system_values(
                    (item.key, json_value(item.value_json)) for item in rec.stats.item)
                seq += 1
            rows.append(Row(step, ts_ms, values, Position(_join(k, end), seq)))
        problems = [f"{empty_keys} logged values without a key (a hand-made file?): skipped"] if empty_keys else []
        consumed = parsed.consumed
        if k < last and consumed >= self._size(k):
            return StreamChunk(rows, Position(_join(k + 1, 0), seq), corrupt, problems, at_end=False)
        end_pos = Position(_join(k, consumed), seq)
        return StreamChunk(rows, end_pos, corrupt, problems, at_end=consumed == off or consumed >= size)

    def summary(self, snap: Snapshot) -> Optional[Summary]:
        self._scan(snap)
        raw: Mapping[str, Any] = self.st["summary"]
        if self.st["versions"].get("summary") is None:
            return None
        declared = {n: p for n, _, p in self.st["metrics"] if p}
        last = self.st.get("last") or {}
        values: Dict[str, Any] = {}
        policies: Dict[str, str] = {}
        by_hand: Set[str] = set()
        for key, text in raw.items():
            if key.startswith("_"):
                continue
            value = json_value(text)
            if isinstance(value, dict):
                policy = declared.get(key) if declared.get(key) in value else \
                    next((p for p in _POLICIES if p in value), None)
                if policy is None or set(value) - set(_POLICIES):
                    continue       # media, tables, nested dicts: not a summary value
                values[key], policies[key] = value[policy], policy
            elif isinstance(value, SCALARS):
                values[key] = value
                if key not in last or last[key] != value:
                    by_hand.add(key)
        ts = json_value(raw.get("_timestamp") or "null")
        version_ms = int(round(ts * 1000)) if isinstance(ts, (int, float)) and math.isfinite(ts) else \
            int(self.st["run"].get("start_ms") or 0)
        return Summary(values, frozenset(by_hand), policies, version_ms)

    def files(self, snap: Snapshot) -> List[FileEntry]:
        # Saved files, per fragment; a later fragment's copy of a path replaces an earlier one's.
        out: Dict[str, FileEntry] = {}
        for part in self.ref.parts:
            prefix = part + "/files/"
            for name, s in sorted(snap.files.items()):
                if name.startswith(prefix):
                    dest = "files/" + name[len(prefix):]
                    out[dest] = FileEntry(name, dest, s)
        return usable_files(sorted(out.values(), key=lambda e: e.dest), self.ref.key)

    def status(self, snap: Snapshot, now_ms: int, stale_after_s: float) -> RunStatus:
        self._scan(snap)
        last = len(self.ref.parts) - 1
        s = snap.files.get(self._file(last))
        alive = s.mtime_ns // 1_000_000 if s is not None else 0
        ex = self.st["exits"].get(str(last))
        if ex is not None:
            end = end_ms(self.st, last, alive)
            return RunStatus("finished" if ex.get("code", 0) == 0 else "failed", end, alive)
        if now_ms - alive < stale_after_s * 1000:
            return RunStatus("active", None, alive)
        return RunStatus("crashed", alive, alive)

    def read_file(self, entry: FileEntry) -> bytes:
        return self.source.read_range(self.ref, entry.source_path, 0, entry.stat.size_bytes)
