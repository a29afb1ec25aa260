"""``sync-gateway import``: the connected side of an air gap (docs/airgap.md). Applies bundles written by
``export`` to a mirror of the cluster's roots in the state directory, then runs a normal pass of the engine
over the mirror, so the configured sink gets the data exactly as a direct sync would send it.

Exactly once, in two halves. The mirror: a bundle is applied only after all of it verified (checksums,
paths, bounds, sequence), in sequence order per export id, each entry at its absolute offset (idempotent) or
by rename; only then, after an fsync, is it recorded as applied (``import/state.json``, and its digest in
``import/<export id>.digests``), so a bundle applied twice changes nothing and an import killed while
applying applies it again. The server: the engine's own cursors, as in any pass; an import killed during the
pass is finished by the next import (already applied bundles are skipped, the pass runs again).

An inbox is never pruned by itself, so a cron names every bundle ever delivered: what is imported already
is recognised from its name and the 48 bytes of its trailer (its digest, compared with the one recorded),
without verifying it again; the rest is opened, verified, applied and closed one bundle at a time.

The pass runs with the clock of the export side: the creation time of the newest bundle applied (plus the
seconds this pass has taken), never later than this host's clock. Bundles may travel for hours; by the
import host's clock every run would look dead (its files unchanged for longer than ``stale_after_s``) and
flip to KILLED until its next bundle. By the capture clock a run is judged as it was when the data left the
cluster. One bundle stamped far ahead moves that clock to this host's time at most, and the next bundle's
stamp replaces it (the clock is the newest bundle's, not the largest ever seen).
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple

from sync_gateway.airgap.bundle import Limits, Manifest, bundle_name, open_bundle, pieces, trailer_digest, verify_file
from sync_gateway.engine.gateway import PassReport
from sync_gateway.engine.lease import Lease
from sync_gateway.engine.runner import Runner
from sync_gateway.engine.state import StateStore, _atomic_write, fsync_dir, load_fields
from sync_gateway.errors import BundleError, GatewayError
from sync_gateway.records import shown
from sync_gateway.settings import Settings
from sync_gateway.sinks import make_sink
from sync_gateway.sinks.base import Sink
from sync_gateway.sources import LocalSource

__all__ = ["import_bundles", "ImportReport", "ImportState", "mirror_roots", "mirror_settings", "import_dir"]

log = logging.getLogger(__name__)

MAX_LOGGED = 100
_NAME = re.compile(r"hpcsync-([0-9a-f]{8,64})-([0-9]{1,15})\.bundle")
_LINE = 12 + 1 + 64 + 1 + 64 + 1   # "<seq:012d> <trailer digest> <sha256>\n" per bundle, at (seq - 1) * _LINE


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


def mirror_settings(settings: Settings, roots: List[str]) -> Settings:
    """``settings`` whose mirror roots (``<state>/mirror/<root id>``) keep the root id the export side gave
    them: a run's key and sync id on this side are the ones a direct sync of that root would use
    (engine/identity.py), not derived from where the mirror happens to be."""
    ids = {r: os.path.basename(r) for r in roots if os.path.dirname(r) == mirror_dir(settings)}
    return replace(settings, root_ids={**settings.root_ids, **ids})


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


class Digests:
    """Every bundle's digests, per export id, in ``<import dir>/<export id>.digests``: one fixed-width line
    per sequence number, so a lookup is one read and recording one write, whatever the count (the state's
    log keeps only the newest MAX_LOGGED)."""

    def __init__(self, top: str):
        self.top = top

    def _path(self, export_id: str) -> str:
        return os.path.join(self.top, export_id + ".digests")

    def get(self, export_id: str, seq: int) -> Optional[Tuple[str, str]]:
        """``(trailer digest, sha256)`` recorded for that bundle, None when none is."""
        try:
            with open(self._path(export_id), "rb") as f:
                f.seek((seq - 1) * _LINE)
                line = f.read(_LINE).decode("ascii", "replace")
        except OSError:
            return None
        parts = line.split()
        if len(line) != _LINE or len(parts) != 3 or parts[0] != f"{seq:012d}":
            return None
        return parts[1], parts[2]

    def record(self, m: Manifest) -> None:
        fd = os.open(self._path(m.export_id), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, f"{m.seq:012d} {m.digest} {m.sha256}\n".encode(), (m.seq - 1) * _LINE)
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class ImportReport:
    applied: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)       # imported before: nothing to do
    refused: Dict[str, str] = field(default_factory=dict)  # bundle -> why (one line)
    pruned: List[str] = field(default_factory=list)        # deleted with --prune-imported
    errors: List[str] = field(default_factory=list)        # the import itself (its state): one line each
    sync: Optional[PassReport] = None

    @property
    def ok(self) -> bool:
        return not self.refused and not self.errors and (self.sync is None or self.sync.ok)


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
            if e.truncate:   # the file ends here: bytes a mirror holds beyond it are from an older life of it
                os.ftruncate(fd, e.offset + e.length)
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


def _triage(paths: List[str], state: ImportState, digests: Digests, rep: ImportReport) -> List[str]:
    """The bundles still to look at, in the order their names give; those already imported are skipped
    from their name and trailer digest alone (no verify, one descriptor at a time)."""
    todo: List[Tuple[str, int, str]] = []
    for p in paths:
        name = os.path.basename(p)
        m = _NAME.fullmatch(name)
        if m is not None:
            eid, seq = m.group(1), int(m.group(2))
            known = digests.get(eid, seq) if seq <= int(state.exports.get(eid, {}).get("seq") or 0) else None
            if known is not None and trailer_digest(p) == known[0]:
                rep.skipped.append(name)
                continue
            todo.append((eid, seq, p))
        else:
            todo.append(("", 0, p))   # renamed: its manifest will tell
    return [p for _eid, _seq, p in sorted(todo)]


def _seen_before(m: Manifest, digests: Digests, state: ImportState) -> Optional[str]:
    """For a bundle whose sequence number was imported already: None when it is that bundle, else the
    sha256 of the one imported."""
    known = digests.get(m.export_id, m.seq)
    if known is not None:
        return None if known[0] == m.digest else known[1]
    # imported by a gateway that kept only its state's log of the newest bundles
    logged = {(a.get("export_id"), a.get("seq")): a.get("sha256") for a in state.applied}
    sha = logged.get((m.export_id, m.seq))
    if sha is None:
        log.warning("%s: sequence %d was imported before this gateway kept every digest: its content cannot "
                    "be compared, so it is taken as imported", m.name, m.seq)
    return None if sha in (None, m.sha256) else str(sha)


def _capture_ms(m: Manifest, now_ms: int) -> int:
    """The clock this bundle sets: its creation time (never before the newest file it carries was written)
    and never later than this host's clock, so one bundle stamped far ahead cannot hold the clock there."""
    newest = max((e.mtime_ns // 1_000_000 for e in m.entries), default=0)
    at = max(m.created_ms, newest)
    if at > now_ms + 60_000:
        log.warning("%s: stamped %.0f s ahead of this host's clock: its clock is taken as now (check the clocks "
                    "of the export side and of this host)", m.name, (at - now_ms) / 1000)
    return min(at, now_ms)


def _one(settings: Settings, state: ImportState, digests: Digests, f: BinaryIO, m: Manifest, name: str,
         rep: ImportReport, now_ms: int) -> Optional[bool]:
    """Apply one verified bundle: True applied, False skipped or refused, None it waits for its predecessor."""
    ex = state.exports.get(m.export_id) or {}
    last = int(ex.get("seq") or 0)
    if m.seq <= last:
        sha = _seen_before(m, digests, state)
        if sha is None:
            rep.skipped.append(name)
        else:
            rep.refused[name] = (f"{name}: another bundle with this sequence number (sha256 {sha[:12]}...) "
                                 f"was imported already: refused; this one is not from the same export")
        return False
    if m.seq != last + 1:
        return None
    clash = _root_clash(state, m, name)
    if clash:
        rep.refused[name] = clash
        return False
    _apply(f, m, name, mirror_dir(settings))
    digests.record(m)
    state.exports[m.export_id] = {"seq": m.seq, "host": m.host, "roots": dict(m.roots),
                                  "capture_ms": _capture_ms(m, now_ms), "imported": int(ex.get("imported") or 0) + 1,
                                  "last_ms": now_ms}
    state.applied = (state.applied + [{"export_id": m.export_id, "seq": m.seq, "name": name, "sha256": m.sha256,
                                       "bytes": m.size_bytes, "entries": len(m.entries), "applied_ms": now_ms}]
                     )[-MAX_LOGGED:]
    state.applied_total += 1
    state.save(settings)
    rep.applied.append(name)
    log.info("%s: applied (%d entries, %d bytes of data)", name, len(m.entries), m.data_bytes)
    return True


def _root_clash(state: ImportState, m: Manifest, name: str) -> Optional[str]:
    """Why the bundle's roots would merge with another cluster's root of the same id (the same path on two
    clusters has the same default id): the mirror, the run keys and the server runs are per root id."""
    for rid, display in sorted(m.roots.items()):
        for eid, ex in sorted(state.exports.items()):
            theirs = (ex.get("roots") or {}).get(rid)
            if eid != m.export_id and theirs is not None and (ex.get("host"), theirs) != (m.host, display):
                return (f"{name}: its root {shown(display)} on {shown(m.host)} has the id {rid}, which already holds "
                        f"the runs of {shown(theirs)} on {shown(str(ex.get('host')))} (export {eid}): refused, so that "
                        f"the two are not merged; on that cluster give the root its own id (roots: [{{path: ..., "
                        f"id: ...}}]), delete its <state_dir>/export/ and export again")
    return None


def _apply_all(settings: Settings, state: ImportState, paths: List[str], rep: ImportReport,
               clock: Callable[[], float]) -> None:
    """Verify and apply one bundle at a time; a bundle whose predecessor comes later on the line (a renamed
    file) is tried again once something else was applied."""
    digests, limits = Digests(import_dir(settings)), Limits.of(settings)
    todo = _triage(paths, state, digests, rep)
    waiting: Dict[str, Tuple[str, int, str]] = {}
    progress = True
    while todo and progress:
        progress = False
        for p in todo:
            name = os.path.basename(p)
            try:
                with open_bundle(p) as f:
                    m = verify_file(f, name, limits)
                    done = _one(settings, state, digests, f, m, name, rep, int(clock() * 1000))
            except BundleError as e:
                rep.refused[name] = str(e)
                continue
            except OSError as e:   # a full disk, a file where a directory belongs: not recorded, so retried
                rep.refused[name] = (f"{name}: cannot write it into the mirror or record it in {settings.state_path}: "
                                     f"{e.strerror or e}; fix that and import it again (applying it twice is "
                                     f"harmless)")
                return
            if done is None:
                waiting[p] = (m.export_id, m.seq, name)
            else:
                waiting.pop(p, None)
                progress = progress or done
        todo = sorted(waiting, key=lambda q: waiting[q][:2])
    for eid, _seq, name in waiting.values():
        last = int(state.exports.get(eid, {}).get("seq") or 0)
        rep.refused[name] = (f"{name}: {bundle_name(eid, last + 1)} has not been imported yet: import it first "
                             f"(or together with this one)")


def _prune(paths: List[str], rep: ImportReport) -> None:
    """Delete the bundles given that are imported (recorded durably), with their ``.sha256`` files."""
    done = set(rep.skipped) | set(rep.applied)
    for p in paths:
        if os.path.basename(p) in done and os.path.basename(p) not in rep.refused:
            for q in (p, p + ".sha256"):
                try:
                    os.unlink(q)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning("%s: not pruned: %s", shown(q), e.strerror or e)
            rep.pruned.append(os.path.basename(p))


def import_bundles(settings: Settings, paths: List[str], sink: Optional[Sink] = None,
                   clock: Callable[[], float] = time.time, prune_imported: bool = False) -> ImportReport:
    """Apply ``paths`` in sequence order, then one pass over the mirror (see the module doc).
    ``prune_imported``: delete each bundle given (and its ``.sha256``) once it is recorded as imported."""
    rep = ImportReport()
    try:
        os.makedirs(import_dir(settings), exist_ok=True)
    except OSError as e:
        raise GatewayError(f"cannot create {import_dir(settings)}: {e.strerror or e}") from None
    lease = Lease(settings.lease_path, "import:" + settings.state_path, settings.lease_ttl_s)
    if not lease.acquire():
        raise GatewayError(f"another import holds the lease {lease.path}; wait for it to finish")
    own_sink = sink is None
    try:
        state = ImportState.load(settings)
        _apply_all(settings, state, paths, rep, clock)
        for why in rep.refused.values():
            log.error("%s", why)
        if prune_imported:
            _prune(paths, rep)
        if not state.exports:
            log.info("nothing imported yet: no mirror to sync")
            return rep
        now_ms = int(clock() * 1000)
        for ex in state.exports.values():   # a clock frozen ahead by an older gateway comes back to now
            ex["capture_ms"] = min(int(ex.get("capture_ms") or 0), now_ms)
        sink = sink or make_sink(settings)
        rep.sync = _sync_mirror(settings, state, sink)
        state.last_pass = {"at_ms": int(clock() * 1000), "ok": rep.sync.ok, "capture_ms": state.capture_ms,
                           "points": rep.sync.points_sent, "errors": len(rep.sync.errors)}
        try:
            state.save(settings)
        except OSError as e:
            rep.errors.append(f"cannot save the import state in {import_dir(settings)}: {e.strerror or e}; "
                              f"the next import runs the pass again (nothing is sent twice)")
        return rep
    finally:
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
    roots = mirror_roots(settings)
    runner = Runner(mirror_settings(settings, roots), sink=sink, sources=[LocalSource(r) for r in roots],
                    clock=lambda: capture_s + (time.monotonic() - started), leases=False)
    try:
        return runner.run_pass()
    finally:
        runner.close(keep_sink=True)
