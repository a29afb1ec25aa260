"""``sync-gateway``: the command line (:data:`DESCRIPTION`, :data:`EXIT_STATUS`)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from sync_gateway._redact import RedactingFilter, redact, redact_url
from sync_gateway.cli.doctor import workers_line
from sync_gateway.engine.runner import Runner, open_sources
from sync_gateway.errors import ConfigError, GatewayError
from sync_gateway.records import shown
from sync_gateway.settings import Settings
from sync_gateway.sinks import configure

__all__ = ["main", "build_parser", "workers_line"]

log = logging.getLogger("sync_gateway")

#: what ``--help`` prints first (plain text: argparse shows it as it is)
DESCRIPTION = ("Sync runs to a tracking server exactly once: one pass (cron) or as a daemon; show each run's "
               "status; diagnose the connection. Across an air gap, export bundles on the cluster side and "
               "import them on the connected side (docs/airgap.md).")
#: what ``--help`` prints last
EXIT_STATUS = ("exit status of sync, export, import and verify: 0 everything done; 1 some run, root or bundle "
               "failed or was refused (see the log and 'sync-gateway status'); 2 the configuration is invalid.")


def build_parser() -> argparse.ArgumentParser:
    def common_options(defaults: bool) -> argparse.ArgumentParser:
        # The options work before and after the subcommand; the subcommand's copy must not reset a value
        # given before it, hence SUPPRESS there.
        p = argparse.ArgumentParser(add_help=False)
        kw: Dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
        p.add_argument("--config", help="YAML config (default: ~/.config/hpc-sync/gateway.yaml)", **kw)
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging", **kw)
        p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bar",
                       **kw)
        return p

    common = common_options(False)
    ap = argparse.ArgumentParser(prog="sync-gateway", description=DESCRIPTION, epilog=EXIT_STATUS,
                                 parents=[common_options(True)])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sync", parents=[common], help="one pass over every root (for cron)")
    s.add_argument("--once", action="store_true", help="one pass, then exit (the only mode of sync)")
    d = sub.add_parser("daemon", parents=[common], help="a pass every --interval-s until SIGTERM")
    d.add_argument("--interval-s", type=float, help="seconds between passes (config: interval_s)")
    sub.add_parser("status", parents=[common], help="a table per run: state, records synced, lag, error")
    sub.add_parser("doctor", parents=[common], help="check config, DNS, TCP, TLS, auth and the server")
    e = sub.add_parser("export", parents=[common], help="air gap, cluster side: write what is new into bundles")
    e.add_argument("--to", required=True, metavar="DIR", help="directory the bundle files are written into")
    i = sub.add_parser("import", parents=[common], help="air gap, connected side: apply bundles, sync them")
    i.add_argument("bundles", nargs="*", metavar="BUNDLE", help="bundle files (any order; none: finish a pass)")
    i.add_argument("--prune-imported", action="store_true",
                   help="delete each bundle given (and its .sha256) once it is recorded as imported")
    for p in (s, d, i):  # the commands that run passes
        p.add_argument("--workers", type=int, metavar="N",
                       help="runs synced at once, 1 to one after another (config: workers; default 4)")
    v = sub.add_parser("verify", parents=[common], help="check bundles' checksums without importing them")
    v.add_argument("bundles", nargs="+", metavar="BUNDLE")
    return ap


def _logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for h in logging.getLogger().handlers:  # no secret leaves the process in a log line
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
    # urllib3 logs every retry; the gateway reports the outcome in one line (-v shows the retries).
    logging.getLogger("urllib3").setLevel(logging.DEBUG if verbose else logging.ERROR)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.verbose, args.quiet)
    try:
        if args.cmd == "verify":  # needs no configuration: it runs anywhere on the transfer path
            return _verify(args.bundles, Settings.resolve(args.config) if args.config else Settings())
        overrides = {"interval_s": getattr(args, "interval_s", None), "workers": getattr(args, "workers", None)}
        # The sink's own variables (MLFLOW_TRACKING_URI, ...) and keys, so that every command sees them.
        settings = configure(Settings.resolve(args.config, overrides=overrides))
        if args.cmd == "sync":
            return _sync(settings, args.quiet)
        if args.cmd == "daemon":
            return _daemon(settings)
        if args.cmd == "status":
            return _status(settings)
        if args.cmd == "export":
            return _export(settings, args.to)
        if args.cmd == "import":
            return _import(settings, args.bundles, args.prune_imported)
        from sync_gateway.cli.doctor import doctor

        return 0 if doctor(settings, args.config, os.environ) else 1
    except ConfigError as e:
        print(f"sync-gateway: configuration error: {redact(e)}", file=sys.stderr)
        return 2
    except GatewayError as e:
        print(f"sync-gateway: {redact(e)}", file=sys.stderr)
        return 1


def _report(rep) -> int:
    for root, why in rep.roots_skipped.items():
        log.error("root %s not synced: %s", root, why)
    if rep.errors:  # each was logged with its reason when it happened
        keys = sorted(rep.errors)
        log.error("%d run(s) not fully synced: %s%s", len(keys), ", ".join(keys[:10]),
                  " ..." if len(keys) > 10 else "")
    if rep.backing_off:
        keys = sorted(rep.backing_off)
        log.error("%d run(s) backing off after a server error, retried later: %s%s", len(keys),
                  ", ".join(keys[:10]), " ..." if len(keys) > 10 else "")
    if rep.quarantined:
        log.error("%d batch(es) refused by the server for good and quarantined (see `sync-gateway status`)",
                  rep.quarantined)
    for project, url in sorted(rep.experiments.items()):
        log.info("experiment %s: %s", project, url)
    log.info("pass: %d runs seen, %d synced, %d unchanged, %d failed, %d backing off, %d points sent%s",
             rep.runs_seen, rep.runs_synced, rep.runs_unchanged, len(rep.errors), len(rep.backing_off),
             rep.points_sent, f"; aborted: {rep.aborted}" if rep.aborted else "")
    return 0 if rep.ok else 1


def _sync(settings: Settings, quiet: bool) -> int:
    progress = None
    if not quiet and sys.stderr.isatty():
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                            TextColumn("{task.completed:,.0f} points"), TimeElapsedColumn(), transient=True)
    task = None
    if progress is not None:
        progress.start()
        task = progress.add_task("syncing", total=None)
    try:
        on_points = (lambda n: progress.advance(task, n)) if progress is not None and task is not None else None
        with Runner(settings, on_points=on_points) as runner:
            rep = runner.run_pass()
    finally:
        if progress is not None:
            progress.stop()
    return _report(rep)


def _export(settings: Settings, to_dir: str) -> int:
    from sync_gateway.airgap.export import export

    rep = export(settings, to_dir)
    for b in rep.bundles:
        print(f"wrote {os.path.join(to_dir, b['name'])}: {b['entries']} entries, {b['data_bytes']:,} bytes of "
              f"data in {b['bytes']:,} bytes, sha256 {b['sha256']}")
    if not rep.bundles:
        print(f"nothing new since the last export ({rep.runs} runs, {rep.files} files): no bundle written")
    return 0 if rep.ok else 1


def _import(settings: Settings, bundles: List[str], prune: bool) -> int:
    from sync_gateway.airgap.importer import import_bundles

    rep = import_bundles(settings, bundles, prune_imported=prune)
    for name in rep.skipped:
        print(f"{name}: imported before, nothing to apply")
    for name in rep.applied:
        print(f"{name}: applied")
    for why in rep.refused.values():
        print(f"refused: {why}")
    for why in rep.errors:
        print(f"failed: {why}")
    if rep.pruned:
        print(f"pruned {len(rep.pruned)} imported bundle(s) and their .sha256 files")
    code = _report(rep.sync) if rep.sync is not None else 0
    return 0 if rep.ok and code == 0 else 1


def _verify(bundles: List[str], settings: Settings) -> int:
    from sync_gateway.airgap.bundle import Limits, verify

    bad = 0
    for path in bundles:
        try:
            m = verify(path, Limits.of(settings))
        except GatewayError as e:
            print(f"FAILED {e}")
            bad += 1
            continue
        print(f"OK {os.path.basename(path)}: export {m.export_id} from {m.host or '?'}, sequence {m.seq}, "
              f"{len(m.entries)} entries, {m.data_bytes:,} bytes of data, created {_utc(m.created_ms)}, "
              f"sha256 {m.sha256}")
    return 1 if bad else 0


def _airgap_lines(settings: Settings) -> List[str]:
    """What ``status`` says about bundles, on whichever side this state directory is."""
    from sync_gateway.airgap.export import ExportState, pending
    from sync_gateway.airgap.importer import ImportState

    lines: List[str] = []
    ex = ExportState.load(settings)
    if ex.export_id:
        last = ex.bundles[-1] if ex.bundles else None
        files, size = pending(settings, ex) if settings.roots else (0, 0)
        lines.append(f"export {ex.export_id}: {ex.bundles_total} bundle(s) written" + (
            f", last {last['name']} ({last['bytes']:,} bytes) at {_utc(last['created_ms'])}" if last else "") +
            f"; pending: {files} file(s), {size:,} bytes changed since the last export")
    im = ImportState.load(settings)
    for eid, e in sorted(im.exports.items()):
        lines.append(f"import from export {eid} ({shown(str(e.get('host') or '?'))}): {e.get('imported', 0)} bundle(s) "
                     f"imported, last {_bundle_name(eid, int(e.get('seq') or 0))}, data captured at "
                     f"{_utc(int(e.get('capture_ms') or 0))}; next expected: "
                     f"{_bundle_name(eid, int(e.get('seq') or 0) + 1)}")
    if im.last_pass:
        ok = im.last_pass.get("ok")
        lines.append(f"import: last pass at {_utc(int(im.last_pass.get('at_ms') or 0))} " + (
            "synced everything" if ok else "did not sync everything: run `sync-gateway import` again (the "
                                           "bundles already applied are not needed)"))
    return lines


def _bundle_name(export_id: str, seq: int) -> str:
    from sync_gateway.airgap.bundle import bundle_name

    return bundle_name(export_id, seq)


def _dropped_notes(where: Any, settings: Settings, now_ms: int) -> List[str]:
    """What the SDK counted as dropped when the run ended (exit.json: a flood it could not keep up with)."""
    from sync_gateway.readers import reader_for

    try:
        reader = reader_for(*where)
        dropped = reader.status(reader.snapshot(), now_ms, settings.stale_after_s).dropped
    except Exception:  # noqa: BLE001 - status shows every run; its error column already says what failed
        return []
    words = {"dropped_rows": "rows", "dropped_points": "points", "dropped_output_bytes": "bytes of output"}
    if not dropped:
        return []
    counted = ", ".join(f"{n:,} {words.get(k, k)}" for k, n in sorted(dropped.items(), reverse=True))
    return [f"the SDK dropped {counted} (logged faster than it could write; docs/troubleshooting.md)"]


def _utc(ms: int) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))
    except (OverflowError, OSError, ValueError):   # a state written before capture times were checked
        return f"(no time: {ms} ms)"


def _daemon(settings: Settings) -> int:
    stop = threading.Event()

    def on_term(signum, frame):  # finish the batch in flight (its cursor is committed), then exit
        log.info("signal %d: finishing the current batch, then exiting", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    code = 0
    with Runner(settings) as runner:
        while not stop.is_set():
            started = time.monotonic()
            try:
                code = _report(runner.run_pass(should_stop=stop.is_set))
            except Exception as e:  # noqa: BLE001 - one bad pass (server, full disk, a bug) never ends the service
                log.error("pass failed: %s: %s", e.__class__.__name__, e, exc_info=not isinstance(e, GatewayError))
                code = 1
            stop.wait(max(0.0, settings.interval_s - (time.monotonic() - started)))
    return 0 if stop.is_set() else code


def _status(settings: Settings) -> int:
    from sync_gateway.airgap.importer import mirror_roots, mirror_settings

    roots = list(settings.roots) + mirror_roots(settings)  # the mirror: what `import` syncs
    settings = mirror_settings(settings, roots)  # its runs keyed as `import` keys them
    # The composition root every command uses, reading only: no sink, no lease; it closes what it opens.
    with Runner(settings, sources=open_sources(roots, settings, skip_bad=True), read_only=True) as runner:
        return _status_table(settings, runner)


def _status_table(settings: Settings, runner: Runner) -> int:
    from rich.console import Console
    from rich.table import Table

    from sync_gateway.sinks import sink_class

    index = runner.state.load_index()
    found, listed = runner.discover()
    sink_cls = sink_class(settings.server_kind)
    table = Table(title=f"sync-gateway status ({redact_url(settings.server_url or '') or 'no server'})")
    for col in ("run", "state", "records synced / on disk", "behind", "last sync", "last error", "notes"):
        table.add_column(col, overflow="fold")
    now_ms = int(time.time() * 1000)
    bad = 0
    for key, st in runner.state.all_run_states().items():
        synced = sum(c.records for c in st.cursors.values())
        on_disk, behind = synced, 0
        notes = list(st.notes[-3:])
        ent = index.get(key)
        if key in found:
            try:
                unsynced, behind = runner.backlog(*found[key], st)
                on_disk += unsynced
            except Exception as e:  # noqa: BLE001 - status shows every run, whatever one of them holds
                st.last_error = st.last_error or f"{e.__class__.__name__}: {e}"
        root = ent.root if ent is not None else None
        gone = key not in found and root in listed
        if gone:
            notes.append(f"gone: not found under {root} (moved or deleted); counts are from its last sync")
        err = st.last_error or (ent.error if ent else None) or ""
        bad += bool(err) + bool(st.quarantined_total)
        if st.quarantined_total:
            q = st.quarantined[-1]
            notes.append(f"{st.quarantined_total} batch(es) quarantined (refused by the server for good); last: "
                         f"{q.get('stream')} bytes {q.get('bytes')}: {q.get('error')}")
        if st.retry_at_ms and st.retry_at_ms > now_ms:
            notes.append(f"backing off: next try in {(st.retry_at_ms - now_ms) / 1000:.0f} s")
        if key in found and st.state in ("finished", "failed", "preempted", "killed"):
            notes += _dropped_notes(found[key], settings, now_ms)
        if st.sink_kind == settings.server_kind:
            notes += sink_cls.notes(st.sink)
        last = st.last_sync_ms
        ago = f"{(now_ms - last) / 1000:.0f} s ago" if last else "never"
        state = st.state or "?"
        table.add_row(key, f"{state} (gone)" if gone else state,
                      f"{synced} / {on_disk}", f"{behind} bytes", ago, redact(err[:300]),
                      redact("; ".join(notes))[:600])
    # Piped output (a log, a test, grep) gets a wide table instead of rich's 80-column default (wide enough
    # for a run key with its root id and a whole one-line error).
    console = Console(width=None if sys.stdout.isatty() else 240)
    console.print(table)
    for line in [workers_line(settings)] + _airgap_lines(settings):
        console.print(line, highlight=False, markup=False)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
