"""The reader of W&B's offline runs (``wandb/offline-run-<date>-<id>/run-<id>.wandb``), docs/wandb.md.

One ``.wandb`` file interleaves every kind of record in one append-only stream. This reader:

- **scans** the records the engine treats as documents (run, environment, config, summary, metric,
  files, exit) once, incrementally, from where its last scan stopped; what it found (metadata, config,
  summary, define_metric declarations, exit codes, the steps each fragment starts and ends at) and how far
  it got live in its per-run memory (``Reader.attach_state``), which the engine saves with the run's state;
- reads two **streams** over the same bytes, each from the engine's own cursor: ``history`` (the logged
  rows) and ``system`` (``stats`` records, keys mapped to docs/metrics.md's neutral names with units);
- joins **resumed fragments** (several directories with one run id) into one run: a position is
  ``fragment index << 40 | byte offset``, so cursors stay plain increasing integers, and a fragment whose
  steps start again at 0 continues after the previous fragment's last step.

The protobuf schema comes from the ``wandb`` package (extra ``[wandb]``), imported on first use only.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from sync_gateway.errors import FormatError
from sync_gateway.readers.base import Reader
from sync_gateway.readers.wandb._format import HEADER_LEN, check_header, parse_records, record_kind
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
)
from sync_gateway.sources.base import Source

__all__ = ["WandbReader", "FRAGMENT_BITS"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

FRAGMENT_BITS = 40              # a position is fragment << 40 | offset (a fragment file up to 1 TiB)
_MASK = (1 << FRAGMENT_BITS) - 1
_SCAN_BYTES = 4 << 20           # the document scan reads this much at a time
_MAX_RECORD = 64 << 20          # a record longer than this is refused
_POLICIES = ("min", "max", "mean", "first", "last", "best")
_STATE_VERSION = 2   # 2: summary values kept as their JSON text


def _split(pos: int) -> Tuple[int, int]:
    return pos >> FRAGMENT_BITS, pos & _MASK


def _join(fragment: int, offset: int) -> int:
    return (fragment << FRAGMENT_BITS) | offset


# -- decoding ---------------------------------------------------------------------------------------------
_pb: Any = None


def _schema() -> Any:
    global _pb
    if _pb is None:
        try:
            from wandb.proto import wandb_internal_pb2
        except ImportError as e:
            raise FormatError("W&B runs need the wandb package for its record schema: "
                              f"pip install 'hpc-sync[gateway,wandb]' ({e})") from e
        _pb = wandb_internal_pb2
    return _pb


def _decode(payload: bytes) -> Any:
    """A ``Record``, or None when it does not parse (an older schema's field reused with another type)."""
    rec = _schema().Record()
    try:
        rec.ParseFromString(payload)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError has no stable import path across versions
        return None
    return rec


def _json(text: str) -> Any:
    # Most values are plain numbers: int() and float() parse them as json.loads would, much faster
    # (float() also takes NaN and Infinity, which W&B writes bare).
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        v = json.loads(text)
    except ValueError:
        return text
    if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):
        return float(v.replace("Infinity", "inf"))
    return v


def _item_key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def _ms(ts: Any) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def _history_row(rec: Any, shift: int) -> Tuple[int, int, Dict[str, Any]]:
    """(step, ts_ms, values) of a history record; W&B's own ``_``-keys are left out of the values."""
    values: Dict[str, Any] = {}
    step = ts = None
    for item in rec.history.item:
        key = item.key or ".".join(item.nested_key)
        if key[0] != "_":
            values[key] = _json(item.value_json)
        elif key == "_step":
            step = _json(item.value_json)
        elif key == "_timestamp":
            ts = _json(item.value_json)
    if not isinstance(step, int) or isinstance(step, bool):
        step = rec.history.step.num
    ts_ms = int(round(ts * 1000)) if isinstance(ts, (int, float)) and math.isfinite(ts) else 0
    return int(step) + shift, ts_ms, values


class WandbReader(Reader):
    format = FORMAT
    documents = {"metadata": "run", "config": "config", "summary": "summary"}  # records, not files

    def __init__(self, source: Source, ref: RunRef):
        super().__init__(source, ref)
        self.st: Dict[str, Any] = {}
        self._snap: Optional[Snapshot] = None
        self._scanned = False
        # history payloads of each fragment whose steps the scan needs (decoded once, after it)
        self._pending_first: Dict[int, bytes] = {}
        self._pending_last: Dict[int, bytes] = {}

    # -- files and positions ------------------------------------------------------------------------------
    def _file(self, k: int) -> str:
        return f"{self.ref.parts[k]}/run-{self.ref.run_id}.wandb"

    def _size(self, k: int) -> int:
        assert self._snap is not None
        s = self._snap.files.get(self._file(k))
        return 0 if s is None else s.size_bytes

    def attach_state(self, state: Dict[str, Any]) -> None:
        if state.get("v") != _STATE_VERSION or list(self.ref.parts[:len(state.get("parts", []))]) != state.get("parts"):
            # New, from another version, or a fragment vanished or appeared out of order: scan again.
            state.clear()
        state.setdefault("v", _STATE_VERSION)
        state["parts"] = list(self.ref.parts)
        for k, empty in (("scan", 0), ("run", {}), ("config", {}), ("summary", {}), ("metrics", []),
                         ("exits", {}), ("steps", {}), ("versions", {}), ("last", {}), ("undecodable", 0)):
            state.setdefault(k, empty)
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

    def _scan(self, snap: Snapshot) -> None:
        """Apply every document record from the last scan's position to the end of the last fragment."""
        if self._scanned and self._snap is snap:
            return
        if not self.st:
            self.attach_state({})
        self._snap = snap
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
            want = _SCAN_BYTES
            while off < size:
                data = self.source.read_range(self.ref, self._file(k), off, min(want, size - off))
                final = k < last and off + len(data) >= size
                parsed = parse_records(data, off, final=final)
                for at, why in parsed.corrupt:
                    log.warning("%s: %s: byte %d: %s (skipped)", self.ref.key, self._file(k), at, why)
                for payload, end in parsed.records:
                    self._apply(k, payload, _join(k, end))
                if parsed.consumed == off:
                    if len(data) < want or want >= _MAX_RECORD:
                        break          # the rest is a record still being written
                    want *= 2          # one long record: read more of it
                    continue
                off = parsed.consumed
                want = _SCAN_BYTES
            self.st["scan"] = _join(k, off)
            if k == last or off < size:
                break
            k, off = k + 1, 0
        self._finish_steps()
        self._scanned = True

    def _check_header(self, k: int) -> None:
        head = self.source.read_range(self.ref, self._file(k), 0, HEADER_LEN)
        why = check_header(head) if len(head) >= HEADER_LEN else None
        if why is not None:
            raise FormatError(f"{self._file(k)}: {why}")

    def _apply(self, k: int, payload: bytes, end: int) -> None:
        kind = record_kind(payload)
        if kind is None or kind == "stats":
            return
        steps = self.st["steps"].setdefault(str(k), {})
        if kind == "history":
            # Only the first and last rows of each fragment matter here (where its steps start and end):
            # decoded once the scan is done, not row by row.
            if "first" not in steps:
                steps["first"] = None
                self._pending_first[k] = payload
            self._pending_last[k] = payload
            return
        rec = _decode(payload)
        if rec is None:
            self.st["undecodable"] += 1
            return
        st, ver = self.st, self.st["versions"]
        if kind == "run":
            r = rec.run
            run = st["run"]
            if not run:  # the first fragment's run record names the run; later ones only add
                run.update(project=r.project, entity=r.entity, name=r.display_name, group=r.run_group,
                           job_type=r.job_type, notes=r.notes, tags=list(r.tags), host=r.host,
                           start_ms=_ms(r.start_time) if r.HasField("start_time") else 0,
                           git={"commit": r.git.commit, "remote": r.git.remote_url} if r.HasField("git") else {})
            else:
                for field_, value in (("name", r.display_name), ("group", r.run_group), ("job_type", r.job_type),
                                      ("notes", r.notes)):
                    if value:
                        run[field_] = value
                if len(r.tags):
                    run["tags"] = list(r.tags)
            run.setdefault("fragment_start_ms", {})[str(k)] = _ms(r.start_time) if r.HasField("start_time") else 0
            self._config_updates(r.config.update, r.config.remove)
            ver["metadata"] = end
            if len(r.config.update):
                ver["config"] = end
        elif kind == "environment":
            e, run = rec.environment, st["run"]
            for field_, value in (("program", e.program), ("user", e.username), ("python", e.python),
                                  ("os", e.os)):
                if value:
                    run[field_] = value
            if len(e.args):
                run["argv"] = list(e.args)
            if e.HasField("git") and e.git.commit:
                run["git"] = {"commit": e.git.commit, "remote": e.git.remote_url}
            if len(e.slurm):
                run["slurm"] = dict(e.slurm)
            ver["metadata"] = end
        elif kind == "config":
            self._config_updates(rec.config.update, rec.config.remove)
            ver["config"] = end
        elif kind == "summary":
            # wandb-core writes one after every row: keep the JSON text, decode the final values once
            summary = st["summary"]
            for item in rec.summary.update:
                summary[item.key or ".".join(item.nested_key)] = item.value_json
            for item in rec.summary.remove:
                summary.pop(_item_key(item), None)
            ver["summary"] = end
        elif kind == "metric":
            m = rec.metric
            name = m.name or m.glob_name
            if name:
                policy = next((p for p in _POLICIES if getattr(m.summary, p, False)), None) \
                    if m.HasField("summary") else None
                # declared again (a loop, a callback): the newest declaration replaces the old one
                st["metrics"] = [d for d in st["metrics"] if d[0] != name] + [[name, m.step_metric or None, policy]]
                ver["metadata"] = end
        elif kind == "exit":
            st["exits"][str(k)] = {"code": rec.exit.exit_code, "runtime_s": rec.exit.runtime}
        elif kind == "header":
            ver.setdefault("metadata", 0)

    def _config_updates(self, updates: Sequence[Any], removes: Sequence[Any]) -> None:
        config = self.st["config"]
        for item in updates:
            path = list(item.nested_key) or [item.key]
            if path[0] == "_wandb":
                continue
            node = config
            for p in path[:-1]:
                child = node.get(p)
                if not isinstance(child, dict):
                    child = node[p] = {}
                node = child
            node[path[-1]] = _json(item.value_json)
        for item in removes:
            path = list(item.nested_key) or [item.key]
            node = config
            for p in path[:-1]:
                node = node.get(p) if isinstance(node.get(p), dict) else {}
            node.pop(path[-1], None)

    def _finish_steps(self) -> None:
        for attr, field_ in (("_pending_first", "first"), ("_pending_last", "last")):
            for k, payload in getattr(self, attr).items():
                rec = _decode(payload)
                if rec is not None:
                    step, _, _ = _history_row(rec, 0)
                    self.st["steps"][str(k)][field_] = step
            setattr(self, attr, {})

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
        return dict(self.st["config"]) if self.st.get("versions", {}).get("config") is not None else None

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
        corrupt: List[Tuple[int, str]] = []
        want = max_bytes
        shift = self._shift(k) if want_kind == "history" else 0
        while True:
            data = self.source.read_range(self.ref, self._file(k), off, max(0, min(want, size - off)))
            final = k < last and off + len(data) >= size
            parsed = parse_records(data, off, final=final)
            if parsed.consumed == off and not final and len(data) >= want and off + len(data) < size:
                if want >= _MAX_RECORD:
                    raise FormatError(f"{self._file(k)}: a record longer than {_MAX_RECORD} bytes at byte {off}")
                want *= 2
                continue
            break
        corrupt += [(_join(k, at), why) for at, why in parsed.corrupt]
        for payload, end in parsed.records:
            if record_kind(payload) != want_kind:
                continue
            rec = _decode(payload)
            if rec is None:
                corrupt.append((_join(k, end), "a record that does not parse with this wandb schema"))
                continue
            if want_kind == "history":
                step, ts_ms, values = _history_row(rec, shift)
                last_values = self.st.get("last")
                if last_values is not None:
                    last_values.update(values)
            else:
                step, ts_ms, values = seq, _ms(rec.stats.timestamp), system_values(
                    (item.key, _json(item.value_json)) for item in rec.stats.item)
                seq += 1
            rows.append(Row(step, ts_ms, values, Position(_join(k, end), seq)))
        consumed = parsed.consumed
        if k < last and consumed >= self._size(k):
            return StreamChunk(rows, Position(_join(k + 1, 0), seq), corrupt, at_end=False)
        end_pos = Position(_join(k, consumed), seq)
        return StreamChunk(rows, end_pos, corrupt, at_end=consumed == off or consumed >= size)

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
            value = _json(text)
            if isinstance(value, dict):
                policy = declared.get(key) if declared.get(key) in value else \
                    next((p for p in _POLICIES if p in value), None)
                if policy is None or set(value) - set(_POLICIES):
                    continue       # media, tables, nested dicts: not a summary value
                values[key], policies[key] = value[policy], policy
            elif isinstance(value, (int, float, str)):
                values[key] = value
                if key not in last or last[key] != value:
                    by_hand.add(key)
        ts = _json(raw.get("_timestamp") or "null")
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
        return sorted(out.values(), key=lambda e: e.dest)

    def status(self, snap: Snapshot, now_ms: int, stale_after_s: float) -> RunStatus:
        self._scan(snap)
        last = len(self.ref.parts) - 1
        s = snap.files.get(self._file(last))
        alive = s.mtime_ns // 1_000_000 if s is not None else 0
        ex = self.st["exits"].get(str(last))
        if ex is not None:
            start = (self.st["run"].get("fragment_start_ms") or {}).get(str(last)) or 0
            end = start + int(ex.get("runtime_s") or 0) * 1000 if start and ex.get("runtime_s") else alive
            return RunStatus("finished" if ex.get("code", 0) == 0 else "failed", end, alive)
        if now_ms - alive < stale_after_s * 1000:
            return RunStatus("active", None, alive)
        return RunStatus("crashed", alive, alive)

    def read_file(self, entry: FileEntry) -> bytes:
        return self.source.read_range(self.ref, entry.source_path, 0, entry.stat.size_bytes)
