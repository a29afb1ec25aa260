"""``sync-gateway import``: the connected side of an air gap (docs/airgap.md). Applies bundles written by
``export`` to a mirror of the cluster's roots in the state directory, then runs a normal pass of the engine
over the mirror, so the configured sink gets the data exactly as a direct sync would send it.

Exactly once, in two halves. The mirror: a bundle is applied only after all of it verified (checksums,
paths, sequence), in sequence order per export id, each entry at its absolute offset (idempotent) or by
rename; only then, after an fsync, is it recorded as applied (``import/state.json``), so a bundle applied
twice changes nothing and an import killed while applying applies it again. The server: the engine's own
cursors, as in any pass; an import killed during the pass is finished by the next import (already applied
bundles are skipped, the pass runs again).

The pass runs with the clock of the export side: the creation time of the newest bundle applied (plus the
seconds this pass has taken). Bundles may travel for hours; by the import host's clock every run would look
dead (its files unchanged for longer than ``stale_after_s``) and flip to KILLED until its next bundle. By
the capture clock a run is judged as it was when the data left the cluster.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple

from sync_gateway.airgap.bundle import Manifest, bundle_name, pieces, verify_file
from sync_gateway.engine.gateway import PassReport
from sync_gateway.engine.lease import Lease
from sync_gateway.engine.runner import Runner
from sync_gateway.engine.state import StateStore, _atomic_write, fsync_dir, load_fields
from sync_gateway.errors import BundleError, GatewayError
from sync_gateway.settings import Settings
from sync_gateway.sinks import make_sink
from sync_gateway.sinks.base import Sink
from sync_gateway.sources import LocalSource

__all__ = ["import_bundles", "ImportReport", "ImportState", "mirror_roots", "import_dir"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

MAX_LOGGED = 100


def import_dir(settings: Settings) -> str:
    return os.path.join(settings.state_path, "import")


def mirror_dir(settings: Settings) -> str:
    # <state>/mirror/<root id>/...: by root id only, not export id, so that an export side that lost its
    # state (a new export id, everything exported again) refreshes the same mirror instead of a second copy
    # of the same runs, which the engine would see as one run alternating between two sources.
    return os.path.join(settings.state_path, "mirror")


def mirror_roots(settings: Settings) -> List[str]:
    top = mirror_dir(settings)
    if not os.path.isdir(top):
        return []
    return [os.path.join(top, d) for d in sorted(os.listdir(top)) if not d.startswith(".")]


@dataclass
class ImportState:
    exports: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # export id -> seq, capture_ms, host, ...
    applied: List[Dict[str, Any]] = field(default_factory=list)       # the newest MAX_LOGGED bundles applied
    applied_total: int = 0
    last_pass: Dict[str, Any] = field(default_factory=dict)           # at_ms, ok, capture_ms, summary

    @classmethod
    def load(cls, settings: Settings) -> ImportState:
        return load_fields(cls, os.path.join(import_dir(settings), "state.json"))

    def save(self, settings: Settings) -> None:
        # fsynced: a bundle recorded as applied must not come back unapplied after a power loss
        _atomic_write(os.path.join(import_dir(settings), "state.json"), dict(vars(self), state_version=1))

    @property
    def capture_ms(self) -> int:
        return max((int(e.get("capture_ms") or 0) for e in self.exports.values()), default=0)


@dataclass
class ImportReport:
    applied: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)       # imported before: nothing to do
    refused: Dict[str, str] = field(default_factory=dict)  # bundle -> why (one line)
    sync: Optional[PassReport] = None

    @property
    def ok(self) -> bool:
        return not self.refused and (self.sync is None or self.sync.ok)


def _target(mirror: str, path: str) -> str:
    target = os.path.join(mirror, *path.split("/"))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    real = os.path.realpath(mirror)
    # The paths were checked (no '..', not absolute); a link someone put into the mirror must not lead out.
    if not os.path.realpath(parent).startswith(real + os.sep):
        raise BundleError(f"{path}: leads out of the mirror {mirror} through a link: refused")
    return target


def _check_gaps(m: Manifest, mirror: str, name: str) -> None:
    """An append must land on or before the mirror file's end, or bytes before it are missing."""
    for e in m.entries:
        if e.kind != "append" or e.offset == 0:
            continue
        path = os.path.join(mirror, *e.path.split("/"))
        try:
            have = os.stat(path).st_size
        except FileNotFoundError:
            have = 0
        if have < e.offset:
            raise BundleError(f"{name}: {e.path} in the mirror has {have} bytes, the bundle continues it at "
                              f"{e.offset}: an earlier bundle is missing from the mirror; import the bundles "
                              f"of export {m.export_id} in order (see docs/airgap.md)")


def _apply(f: BinaryIO, m: Manifest, name: str, mirror: str) -> None:
    """Write every entry into the mirror: at its absolute offset (append, reset) or by rename (replace);
    each file fsynced and given its source mtime, so liveness and artifact signatures match the cluster."""
    _check_gaps(m, mirror, name)
    dirs = set()
    cur: Optional[Tuple[int, int, str, Optional[str]]] = None   # entry index, fd, target, temporary name
    pos = 0

    def finish(c: Tuple[int, int, str, Optional[str]]) -> None:
        i, fd, target, tmp = c
        e = m.entries[i]
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.utime(tmp or target, ns=(e.mtime_ns, e.mtime_ns))
        if tmp:
            os.replace(tmp, target)

    for i, data in pieces(f, m, name):
        if cur is None or cur[0] != i:
            if cur is not None:
                finish(cur)
                cur = None
            e = m.entries[i]
            target = _target(mirror, e.path)
            dirs.add(os.path.dirname(target))
            tmp = None
            if e.kind == "replace":  # a ".tmp-" name: never listed by the source, so never read half-written
                tmp = os.path.join(os.path.dirname(target), ".tmp-" + os.path.basename(target) + ".import")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            else:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if e.kind == "reset" else 0), 0o644)
            cur, pos = (i, fd, target, tmp), e.offset
        if data:
            os.pwrite(cur[1], data, pos)
            pos += len(data)
    if cur is not None:
        finish(cur)
    for d in sorted(dirs):
        fsync_dir(d)


def _clear_backoff(store: StateStore) -> None:
    # An import runs when bundles arrive, not in a loop, and its clock stands still at the capture time: a
    # backoff by that clock would not end before the next bundle. Each import tries every run again.
    index = store.load_index()
    if any(e.retry_at_ms for e in index.values()):
        for e in index.values():
            e.retry_at_ms = 0
        store.save_index(index)


def _open_all(paths: List[str], rep: ImportReport) -> List[Tuple[str, BinaryIO, Manifest]]:
    """Verify every bundle whole; a bad one is refused with one line, nothing of it applied."""
    out = []
    for p in paths:
        name = os.path.basename(p)
        try:
            f = open(p, "rb")
        except OSError as e:
            rep.refused[name] = f"{name}: cannot read it: {e.strerror or e}"
            continue
        try:
            out.append((name, f, verify_file(f, name)))
        except BundleError as e:
            f.close()
            rep.refused[name] = str(e)
    # Bundles given together are applied in sequence order (each export side's sequence on its own).
    return sorted(out, key=lambda x: (x[2].export_id, x[2].seq))


def import_bundles(settings: Settings, paths: List[str], sink: Optional[Sink] = None,
                   clock: Callable[[], float] = time.time) -> ImportReport:
    """Apply ``paths`` in order, then one pass over the mirror (see the module doc)."""
    rep = ImportReport()
    os.makedirs(import_dir(settings), exist_ok=True)
    lease = Lease(settings.lease_path, "import:" + settings.state_path, settings.lease_ttl_s)
    if not lease.acquire():
        raise GatewayError(f"another import holds the lease {lease.path}; wait for it to finish")
    opened: List[Tuple[str, BinaryIO, Manifest]] = []
    own_sink = sink is None
    try:
        state = ImportState.load(settings)
        opened = _open_all(paths, rep)
        for name, f, m in opened:
            ex = state.exports.get(m.export_id) or {}
            last = int(ex.get("seq") or 0)
            if m.seq <= last:
                known = {(a.get("export_id"), a.get("seq")): a.get("sha256") for a in state.applied}
                sha = known.get((m.export_id, m.seq))
                if sha not in (None, m.sha256):
                    rep.refused[name] = (f"{name}: another bundle with this sequence number (sha256 {sha[:12]}...) "
                                         f"was imported already: refused; this one is not from the same export")
                else:
                    rep.skipped.append(name)
                continue
            if m.seq != last + 1:
                rep.refused[name] = (f"{name}: {bundle_name(m.export_id, last + 1)} has not been imported yet: "
                                     f"import it first (or together with this one)")
                continue
            try:
                _apply(f, m, name, mirror_dir(settings))
            except OSError as e:   # a full disk, a file where a directory belongs: not recorded, so retried
                rep.refused[name] = (f"{name}: cannot write it into the mirror {mirror_dir(settings)}: {e}; "
                                     f"fix that and import it again (applying it twice is harmless)")
                break
            state.exports[m.export_id] = {"seq": m.seq, "host": m.host, "roots": dict(m.roots),
                                          "capture_ms": max(m.created_ms, int(ex.get("capture_ms") or 0)),
                                          "imported": int(ex.get("imported") or 0) + 1,
                                          "last_ms": int(clock() * 1000)}
            state.applied = (state.applied + [{"export_id": m.export_id, "seq": m.seq, "name": name,
                                               "sha256": m.sha256, "bytes": m.size_bytes,
                                               "entries": len(m.entries), "applied_ms": int(clock() * 1000)}]
                             )[-MAX_LOGGED:]
            state.applied_total += 1
            state.save(settings)
            rep.applied.append(name)
            log.info("%s: applied (%d entries, %d bytes of data)", name, len(m.entries), m.data_bytes)
        for why in rep.refused.values():
            log.error("%s", why)
        if not state.exports:
            log.info("nothing imported yet: no mirror to sync")
            return rep
        sink = sink or make_sink(settings)
        rep.sync = _sync_mirror(settings, state, sink)
        state.last_pass = {"at_ms": int(clock() * 1000), "ok": rep.sync.ok, "capture_ms": state.capture_ms,
                           "points": rep.sync.points_sent, "errors": len(rep.sync.errors)}
        state.save(settings)
        return rep
    finally:
        for _name, f, _m in opened:
            f.close()
        if own_sink and sink is not None:
            sink.close()
        lease.release()


def _sync_mirror(settings: Settings, state: ImportState, sink: Sink) -> PassReport:
    store = StateStore(settings.state_path)
    _clear_backoff(store)
    capture_s = state.capture_ms / 1000
    started = time.monotonic()
    # The engine's one composition root, over the mirror, by the capture clock; no lease per root: this
    # import holds one for all of it. The sink is import_bundles' own, which closes it.
    runner = Runner(settings, sink=sink, sources=[LocalSource(r) for r in mirror_roots(settings)],
                    clock=lambda: capture_s + (time.monotonic() - started), leases=False)
    try:
        return runner.run_pass()
    finally:
        runner.close(keep_sink=True)
