"""``sync-gateway export``: the cluster side of an air gap (docs/airgap.md). Writes what is new in the roots
since the previous export into bundle files (``_bundle.py``): the bytes of the run format itself, never
server calls, so the connected side runs the same readers, engine and sink over a faithful mirror.

Per file an export cursor (its size and mtime when last exported and a fingerprint of the bytes before the
cursor) decides: unchanged -> nothing; only grew -> an ``append`` entry; rewritten or shrunk -> a
``replace`` (a file too large for one bundle: ``reset`` plus ``append`` ranges in the next bundles).
Bytes are read through the Source API only, so a link out of a root is never followed.

The export id is saved (fsynced) before anything names it: a first export killed after its bundle 1
left must not make the next export start another id at sequence 2, which import could never take.

A bundle also stays within ``bundle_max_entries`` entries and the manifest size that allows, as import
checks. When nothing changed but a run went silent since the last bundle (it died without an exit
record), a bundle with no entries carries the clock across, so the connected side sees it die too.

Durability: ``intent.json`` names the bundle about to be written; the bundle goes to a temporary name in
the target directory, is fsynced and renamed into place, the directory fsynced, and only then the cursors
are saved (atomic rename, fsynced). Killed before the rename, the next export writes the same sequence
number again (the temporary file still exists, so that number never left); killed after it, the next
export uses the next number and re-exports the same ranges, which import applies by absolute offset (no
harm, no duplicate).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from sync_gateway.airgap.bundle import (
    ENTRY_OVERHEAD_BYTES,
    OVERHEAD_BYTES,
    BundleWriter,
    Limits,
    bundle_name,
    check_path,
    entry_manifest_cost,
    verify,
)
from sync_gateway.engine.identity import RootIds
from sync_gateway.engine.lease import Lease
from sync_gateway.engine.state import _atomic_write, _read, fsync_dir, load_fields
from sync_gateway.errors import BundleError, ConfigError, GatewayError
from sync_gateway.readers import discover_runs, reader_for
from sync_gateway.records import RunRef, fingerprint
from sync_gateway.records import root_id as default_root_id
from sync_gateway.settings import Settings
from sync_gateway.sources import open_source
from sync_gateway.sources.base import Source

__all__ = ["export", "ExportReport", "ExportState", "root_id", "export_dir", "pending"]

log = logging.getLogger(__name__)

FP_BYTES = 64 << 10         # the fingerprint covers up to this many bytes before a cursor (a whole small doc)
READ_BYTES = 1 << 20        # read size: memory stays bounded whatever a file's size
MIN_SPLIT_BYTES = 4 << 10   # a file is not split into pieces smaller than this (next bundle instead)
MAX_LOGGED = 100            # bundles kept in the export state's log (the total is counted)


def root_id(display: str) -> str:
    """A root's default id in bundle paths (records.root_id, the rule a direct sync's run keys use too)."""
    return default_root_id(display)


def export_dir(settings: Settings) -> str:
    return os.path.join(settings.state_path, "export")


@dataclass
class ExportState:
    export_id: str = ""
    next_seq: int = 1
    files: Dict[str, List[Any]] = field(default_factory=dict)   # path -> [size, mtime_ns, fp_len, fp]
    bundles: List[Dict[str, Any]] = field(default_factory=list)  # the newest MAX_LOGGED written
    bundles_total: int = 0
    last_export_ms: int = 0
    roots: Dict[str, str] = field(default_factory=dict)         # root id -> display

    @classmethod
    def load(cls, settings: Settings) -> ExportState:
        return load_fields(cls, os.path.join(export_dir(settings), "state.json"))

    def save(self, settings: Settings) -> None:
        _atomic_write(os.path.join(export_dir(settings), "state.json"), dict(vars(self), state_version=1))


@dataclass
class _Piece:
    """One entry to write: ``length`` bytes of ``name`` (run-relative) from ``offset``."""

    path: str           # in the bundle: <root id>/<path below the root>
    source: Source
    ref: RunRef
    name: str
    kind: str
    offset: int
    length: int
    mtime_ns: int
    truncate: bool = False  # the last part of a split rewrite: the file ends after it


@dataclass
class ExportReport:
    bundles: List[Dict[str, Any]] = field(default_factory=list)
    errors: Dict[str, str] = field(default_factory=dict)   # root or run -> why (the rest was exported)
    runs: int = 0
    files: int = 0
    clock_due: bool = False   # a run went silent since the last bundle: the connected side needs the clock
    seen: Set[str] = field(default_factory=set)            # bundle paths of every file listed
    unlisted: List[str] = field(default_factory=list)      # path prefixes not listed (an error): cursors kept

    @property
    def ok(self) -> bool:
        return not self.errors


def _went_silent(settings: Settings, reader: Any, snap: Any, since_ms: Optional[int], now_ms: int) -> bool:
    """Whether the run was alive when the last bundle was written and is presumed dead now, with no exit
    record (so no file of it changed and only the clock tells the connected side)."""
    stale_ms = int(settings.stale_after_s * 1000)
    newest = max((s.mtime_ns // 1_000_000 for s in snap.files.values()), default=0)
    if since_ms is None or not since_ms < newest + stale_ms <= now_ms:
        return False   # a stat tells for most runs; the status (a document or two read) only for these
    st = reader.status(snap, now_ms, settings.stale_after_s)
    return bool(st.state == "crashed" and st.end_ms == st.alive_ms and since_ms < st.alive_ms + stale_ms)


def _files(settings: Settings, sources: List[Source], rep: ExportReport, since_ms: Optional[int] = None,
           now_ms: int = 0) -> Iterator[Tuple[Source, RunRef, str, str, int, int]]:
    """``(source, run, run-relative name, bundle path, size, mtime_ns)`` of every file of every run.
    ``since_ms``: the last bundle's creation time, to tell whether a clock-only bundle is due."""
    ids = RootIds(settings)   # the id given in the config (roots: [{path, id}]), else the default
    for source in sources:
        rid = ids(source)
        try:
            refs = discover_runs(source, settings.wandb_search_depth)
        except GatewayError as e:
            rep.errors[source.display] = str(e)
            rep.unlisted.append(rid + "/")
            log.error("root %s not exported: %s", source.display, e)
            continue
        for ref in refs:
            rel = source.relative(ref.location)
            try:
                if rel is None:
                    raise GatewayError(f"{ref.location} is not below the root {source.display}")
                reader = reader_for(source, ref)
                snap = reader.snapshot()
                rep.clock_due = rep.clock_due or _went_silent(settings, reader, snap, since_ms, now_ms)
            except GatewayError as e:
                rep.errors[f"{source.display}: {ref.key}"] = str(e)
                rep.unlisted.append(f"{rid}/{rel}/" if rel else f"{rid}/")
                log.error("%s: %s: not exported: %s", source.display, ref.key, e)
                continue
            rep.runs += 1
            # In the order the files were last written: a backlog split across bundles then never shows
            # the import side a state the cluster never had (an exit record before the rows it follows).
            for name, st in sorted(snap.files.items(), key=lambda kv: (kv[1].mtime_ns, kv[0])):
                path = f"{rid}/{rel}/{name}" if rel else f"{rid}/{name}"
                try:
                    check_path(path)
                except BundleError as e:
                    log.warning("%s: %s", ref.key, e)
                    continue
                rep.files += 1
                rep.seen.add(path)
                yield source, ref, name, path, st.size_bytes, st.mtime_ns


def _plan(settings: Settings, sources: List[Source], state: ExportState, rep: ExportReport, now_ms: int
          ) -> List[_Piece]:
    """What is new since the cursors, one piece per file (split across bundles later)."""
    out: List[_Piece] = []
    since = int(state.bundles[-1]["created_ms"]) if state.bundles else None
    for source, ref, name, path, size, mtime_ns in _files(settings, sources, rep, since, now_ms):
        cur = state.files.get(path)
        if cur is not None and cur[0] == size and cur[1] == mtime_ns:
            continue
        kind, offset = "replace", 0
        if cur is not None and size >= cur[0]:
            size0, _, fp_len, fp = cur
            try:
                before = source.read_range(ref, name, size0 - fp_len, fp_len) if fp_len else b""
            except GatewayError as e:
                log.warning("%s: %s: %s", ref.key, name, e)
                continue
            if len(before) == fp_len and (not fp_len or fingerprint(before) == fp):
                kind, offset = "append", size0     # it only grew (or was only touched: 0 bytes, new mtime)
        out.append(_Piece(path, source, ref, name, kind, offset, size - offset, mtime_ns))
    return out


def _cost(n: int, path: str) -> int:
    # zlib's stored blocks add 5 bytes per 16 KiB on incompressible data (1/1000 covers it); the entry's
    # manifest line is its path and less than ENTRY_OVERHEAD_BYTES of fields
    return n + n // 1000 + ENTRY_OVERHEAD_BYTES + len(path.encode())


def _pack(pieces: List[_Piece], max_bytes: int, fresh: Callable[[str], bool], fixed_bytes: int,
          limits: Limits, head: Tuple[int, int]) -> List[List[_Piece]]:
    """Pieces into bundles of at most ``max_bytes``: a whole file when it fits, else split by byte range
    (the first part of a rewritten file is a ``reset``, the rest ``append``s, the last of them marked
    ``truncate``). ``fresh(path)``: no cursor yet (a first export): a large file's first part is then an
    ``append`` at 0, so a mirror that holds it already (an export state lost) is not cut short meanwhile;
    its last part's ``truncate`` cuts what an older, longer copy left there. ``fixed_bytes``: what every
    bundle holds besides its entries; ``head``: the manifest bytes and JSON containers of its head. A
    bundle also stays within ``limits`` (entries, manifest bytes and containers), as import checks."""
    budget = max_bytes - fixed_bytes
    m_budget, c_budget = limits.manifest_bytes - head[0], limits.containers - head[1]
    bundles: List[List[_Piece]] = []
    cur: List[_Piece] = []
    used = m_used = c_used = 0
    for p in pieces:
        mb, cb = entry_manifest_cost(p.path)
        while True:
            if cur and (m_used + mb > m_budget or c_used + cb > c_budget or len(cur) >= limits.max_entries):
                bundles.append(cur)     # its manifest is full
                cur, used, m_used, c_used = [], 0, 0, 0
            room = budget - used
            if _cost(p.length, p.path) <= room:
                cur.append(p)
                used, m_used, c_used = used + _cost(p.length, p.path), m_used + mb, c_used + cb
                break
            if cur and (_cost(p.length, p.path) <= budget or room < _cost(MIN_SPLIT_BYTES, p.path)):
                bundles.append(cur)     # it fits a bundle of its own, or too little room is left here
                cur, used, m_used, c_used = [], 0, 0, 0
                continue
            n = max(1, (room - ENTRY_OVERHEAD_BYTES - len(p.path.encode())) * 1000 // 1001)
            kind = p.kind if p.kind == "append" else ("append" if fresh(p.path) else "reset")
            cur.append(_Piece(p.path, p.source, p.ref, p.name, kind, p.offset, n, p.mtime_ns))
            bundles.append(cur)
            cur, used, m_used, c_used = [], 0, 0, 0
            p = _Piece(p.path, p.source, p.ref, p.name, "append", p.offset + n, p.length - n, p.mtime_ns,
                       truncate=p.truncate or p.kind != "append")
    if cur:
        bundles.append(cur)
    return bundles


def _recover(settings: Settings, state: ExportState) -> None:
    """Settle a bundle an earlier export was killed while writing (``intent.json``)."""
    path = os.path.join(export_dir(settings), "intent.json")
    intent = _read(path)
    if not isinstance(intent, dict):
        return
    tmp, final, seq = str(intent.get("tmp")), str(intent.get("final")), int(intent.get("seq") or 0)
    renamed = os.path.exists(final) or not os.path.exists(tmp)
    if os.path.exists(tmp):
        os.unlink(tmp)
    if not renamed:  # that sequence number never left: it is written again
        log.info("an earlier export was killed before bundle %d was complete: it is written again", seq)
    elif seq >= state.next_seq:
        # Renamed into place (and maybe moved on already), cursors not saved: the next bundle re-exports
        # the same ranges, which import applies by absolute offset.
        state.next_seq = seq + 1
        if os.path.exists(final) and not os.path.exists(final + ".sha256"):
            _sidecar(final, verify(final).sha256)
        state.save(settings)
    os.unlink(path)


def _sidecar(final: str, sha: str) -> None:
    tmp = os.path.join(os.path.dirname(final), ".tmp-" + os.path.basename(final) + ".sha256")
    with open(tmp, "w") as f:
        f.write(f"{sha}  {os.path.basename(final)}\n")  # the format `sha256sum -c` reads
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final + ".sha256")


def _chunks(p: _Piece, short: List[bool]) -> Iterator[bytes]:
    off, left = p.offset, p.length
    while left:
        try:
            data = p.source.read_range(p.ref, p.name, off, min(READ_BYTES, left))
        except GatewayError as e:   # the file or its run vanished since its stat
            log.warning("%s: %s: %s", p.ref.key, p.name, e)
            data = b""
        if not data:
            short[0] = True     # the file shrank since its stat: the cursor makes the next export look again
            return
        off += len(data)
        left -= len(data)
        yield data


def _write(settings: Settings, to_dir: str, state: ExportState, pieces: List[_Piece], roots: Dict[str, str],
           clock: Callable[[], float]) -> Dict[str, Any]:
    seq = state.next_seq
    name = bundle_name(state.export_id, seq)
    final, tmp = os.path.join(to_dir, name), os.path.join(to_dir, ".tmp-" + name)
    cursors: Dict[str, List[Any]] = {}
    data_bytes = 0
    created_ms = int(clock() * 1000)
    with open(tmp, "wb") as f:
        # The temporary file exists before the intent names it, so that a recovery finding neither it nor
        # the final name knows the bundle was renamed into place and moved on.
        _atomic_write(os.path.join(export_dir(settings), "intent.json"), {"seq": seq, "tmp": tmp, "final": final})
        w = BundleWriter(f, state.export_id, seq, created_ms, socket.gethostname(), roots)
        for p in pieces:
            short = [False]
            chunks = _chunks(p, short)
            first = next(chunks, b"")
            if p.length and not first:
                continue  # vanished or cut short since its stat: no entry (an empty replace would empty
                # the mirror's copy); its cursor stays, so the next export looks again
            n, tail = w.add(p.path, p.kind, p.offset, p.mtime_ns, itertools.chain([first], chunks),
                            truncate=p.truncate and not short[0])
            data_bytes += n
            old = state.files.get(p.path)
            k = min(len(tail), FP_BYTES)
            fp_len, fp = (k, fingerprint(tail[-k:])) if k else ((old[2], old[3]) if old and p.kind == "append"
                                                                else (0, None))
            cursors[p.path] = [p.offset + n, 0 if short[0] else p.mtime_ns, fp_len, fp]
        sha = w.finish()
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
    os.replace(tmp, final)
    _sidecar(final, sha)
    fsync_dir(to_dir)
    # Only now, with the bundle durably in place, do the cursors move.
    state.files.update(cursors)
    state.next_seq = seq + 1
    info = {"name": name, "seq": seq, "bytes": size, "entries": len(cursors), "created_ms": created_ms,
            "data_bytes": data_bytes, "sha256": sha}
    state.bundles = (state.bundles + [info])[-MAX_LOGGED:]
    state.bundles_total += 1
    state.save(settings)
    os.unlink(os.path.join(export_dir(settings), "intent.json"))
    return info


def export(settings: Settings, to_dir: str, sources: Optional[List[Source]] = None,
           clock: Callable[[], float] = time.time) -> ExportReport:
    """One export: every bundle needed for what is new, written into ``to_dir`` (see the module doc)."""
    if not settings.roots and sources is None:
        raise ConfigError("no roots to export: set roots in the config or HPCSYNC_GATEWAY_ROOTS")
    to_dir = os.path.abspath(os.path.expanduser(to_dir))
    if not os.path.isdir(to_dir):
        raise GatewayError(f"--to {to_dir} is not a directory: create it (the bundles are written there)")
    os.makedirs(export_dir(settings), exist_ok=True)
    lease = Lease(settings.lease_path, "export:" + settings.state_path, settings.lease_ttl_s)
    if not lease.acquire():
        raise GatewayError(f"another export holds the lease {lease.path}; wait for it to finish")
    srcs = sources if sources is not None else [open_source(r, settings) for r in settings.roots]
    try:
        state = ExportState.load(settings)
        if not state.export_id:
            # once per export side: orders its bundles on import. Durable before any intent or bundle names
            # it: a kill after bundle 1 left must find the same id, or its sequence 2 would have no 1.
            state.export_id = secrets.token_hex(8)
            state.save(settings)
        _recover(settings, state)
        ids = RootIds(settings)
        ids.check(srcs)
        roots = {ids(s): s.display for s in srcs}
        state.roots.update(roots)
        rep = ExportReport()
        now_ms = int(clock() * 1000)
        pieces = _plan(settings, srcs, state, rep, now_ms)
        head = json.dumps({"roots": roots, "host": socket.gethostname()})
        fixed = OVERHEAD_BYTES + len(head)
        groups = _pack(pieces, settings.bundle_max_bytes, lambda p: p not in state.files, fixed,
                       Limits.of(settings), (1024 + len(head), 3 + head.count("{") + head.count("[")))
        if not groups and rep.clock_due:
            log.info("no file changed, but a run went silent since the last bundle: a bundle with no entries "
                     "carries the clock to the connected side")
            groups = [[]]
        for group in groups:
            rep.bundles.append(_write(settings, to_dir, state, group, roots, clock))
        _prune_cursors(state, rep, roots)
        state.last_export_ms = int(clock() * 1000)
        state.save(settings)
        return rep
    finally:
        for s in srcs:
            s.close()
        lease.release()


def _prune_cursors(state: ExportState, rep: ExportReport, roots: Dict[str, str]) -> None:
    """Forget the cursors of files no longer listed (a run deleted, a file removed) below the roots that
    were listed; a file that comes back is then exported whole again."""
    unlisted = tuple(rep.unlisted)
    gone = [p for p in state.files if p.split("/", 1)[0] in roots and p not in rep.seen
            and not p.startswith(unlisted)]
    for p in gone:
        del state.files[p]
    if gone:
        log.info("%d export cursor(s) of files no longer in the roots forgotten", len(gone))


def pending(settings: Settings, state: ExportState) -> Tuple[int, int]:
    """``(files, bytes)`` changed on disk since the last export (stats only, no reads)."""
    rep = ExportReport()
    files = size_sum = 0
    srcs = [open_source(r, settings) for r in settings.roots]
    try:
        for _s, _ref, _name, path, size, mtime_ns in _files(settings, srcs, rep):
            cur = state.files.get(path)
            if cur is None or cur[0] != size or cur[1] != mtime_ns:
                files += 1
                size_sum += size - cur[0] if cur is not None and size >= cur[0] else size
    finally:
        for s in srcs:
            s.close()
    return files, size_sum
