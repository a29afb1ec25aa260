"""The pass engine: discover runs, read what changed since the durable cursors, hand it to the sink,
commit after the ack. It knows neither a file format (readers do) nor a server (sinks do).

:class:`Gateway` holds what lives across passes (the sink, the state, the worker pool); each
:meth:`Gateway.sync_pass` is one :class:`Pass` over the sources it is given: discover, dispatch each run
to its sync (:class:`~sync_gateway.engine.run_sync.RunSync`), settle its outcome, trip the breaker, end
runs that are gone, and after the runs hand each group to the sink with every member known.

One run's fault stays in that run: any exception while syncing it is recorded on it (state, index,
``status``, the pass summary) and the pass goes on. Every decision reads the error's class
(sync_gateway/errors.py): a :class:`~sync_gateway.errors.ServerUnavailable` (5xx, 429, a request past its
deadline) that repeats backs that run off (BACKOFF_BASE_S doubling up to BACKOFF_MAX_S, by the gateway's
clock) while the others proceed; BREAKER_RUNS such failures in a row, or a
:class:`~sync_gateway.errors.ServerUnreachable` server, end the pass (the server is down: hammering it run
by run helps no one); a :class:`~sync_gateway.errors.RunDeleted` run is noted and forgotten, not failed.
A batch the server refuses for good (:class:`~sync_gateway.errors.BatchRefused`) is quarantined by the
stream's sync and the cursor moves past it.

A run that was synced from a root and is no longer found under it, its last sign of life older than
``stale_after_s``, is ended as **crashed** on the server (docs/run-format.md section 7: no exit record, no
sign of life), once; ``status`` says it is gone.

Up to ``workers`` runs sync at once (``_parallel``), each in one thread with its own batch pipe; only the
dispatching thread writes the index, the report and the breaker's count (:meth:`Pass._settle`). A tripped
breaker dispatches no new run and stops the runs in flight after their current batch.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from sync_gateway._redact import redact
from sync_gateway.engine._groups import sync_groups
from sync_gateway.engine._parallel import RunCtx, RunPool, Stopped, stop_now
from sync_gateway.engine.identity import Claims, RootIds
from sync_gateway.engine.run_sync import RunSync, SyncEnv, status_record, unchanged, when
from sync_gateway.engine.state import IndexEntry, StateStore
from sync_gateway.engine.stream import CHUNK_BYTES
from sync_gateway.errors import GatewayError, RunDeleted, ServerUnavailable, ServerUnreachable
from sync_gateway.readers import discover_runs, reader_for
from sync_gateway.records import RunRef, RunStatus, run_key
from sync_gateway.settings import Settings
from sync_gateway.sinks.base import Sink
from sync_gateway.sources.base import Source

__all__ = ["Gateway", "Pass", "PassReport", "BREAKER_RUNS", "BACKOFF_BASE_S", "BACKOFF_MAX_S", "CHUNK_BYTES"]

log = logging.getLogger(__name__)

BREAKER_RUNS = 3           # this many runs in a row failing with a retryable server error end the pass
BACKOFF_BASE_S = 60.0      # a run's first retry after a retryable error; doubles per failure in a row
BACKOFF_MAX_S = 3600.0

Result = Callable[[], Tuple[bool, int]]   # a run's outcome: (changed, points sent), or what its sync raised


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
    backing_off: Dict[str, str] = field(default_factory=dict)  # runs not tried: retry time not reached
    quarantined: int = 0        # batches the server refused for good in this pass (cursor moved past)
    notes: Dict[str, str] = field(default_factory=dict)        # not errors: deleted on the server, rewritten, gone

    @property
    def ok(self) -> bool:
        return (not self.errors and not self.roots_skipped and self.aborted is None and not self.backing_off
                and not self.quarantined)


class Gateway:
    """What lives across passes: the sink, the state store, the clock and the worker pool."""

    def __init__(self, settings: Settings, sink: Sink, state: StateStore, clock: Callable[[], float] = time.time,
                 on_points: Optional[Callable[[int], None]] = None):
        self.env = SyncEnv(settings, sink, state, clock, RunPool(settings.workers), on_points or (lambda n: None))

    def sync_pass(self, sources: Iterable[Source], should_stop: Callable[[], bool] = lambda: False,
                  renew: Callable[[Source], bool] = lambda s: True) -> PassReport:
        """One pass over ``sources``. ``renew(source)``: True while this gateway holds the source's lease
        (renewing it when due); called before each run and after each batch ack, from any thread."""
        return Pass(self.env, should_stop, renew).run(list(sources))

    def close(self) -> None:
        self.env.pool.close()


class Pass:
    """One pass: dispatch, settle, the breaker, gone runs, groups. Only the dispatching thread (the one that
    calls :meth:`run`) settles runs, so the index, the report and the breaker have one writer."""

    def __init__(self, env: SyncEnv, should_stop: Callable[[], bool], renew: Callable[[Source], bool]):
        self.env, self.should_stop, self.renew = env, should_stop, renew
        self.rep = PassReport()
        self.index = env.state.load_index()
        self.before = {k: IndexEntry(**vars(e)) for k, e in self.index.items()}
        self.failing = 0                # runs in a row that failed with a retryable server error (the breaker)
        self.halt = threading.Event()   # the breaker tripped: runs in flight stop after their current batch
        self.lost: Set[str] = set()     # roots whose lease was lost: their runs stop at their next batch
        self.pending: Dict[Future, Tuple[RunCtx, RunRef, Source]] = {}
        self.probes: Set[Future] = set()
        self.seen: Set[str] = set()     # every run found in this pass
        self.listed: Set[str] = set()   # roots listed and gone through whole
        self.root_ids = RootIds(env.settings)
        self.claims = Claims(self.index)  # which run owns each legacy id (engine/identity.py)
        env.answered.clear()

    def run(self, sources: List[Source]) -> PassReport:
        for source in sources:
            try:
                refs = discover_runs(source, self.env.settings.wandb_search_depth)
            except GatewayError as e:
                self.rep.roots_skipped[source.display] = str(e)
                log.error("%s", e)
                continue
            rid = self.root_ids(source)
            self.seen.update(run_key(rid, ref) for ref in refs)
            if all(self._dispatch(source, ref, rid) for ref in refs):
                self.listed.add(source.display)
        while self.pending:
            self._settle_done(None)
        if not (self.rep.aborted or self.should_stop()):
            self._end_gone()
        sync_groups(self.env.sink, self.env.state, self.index, self.before, self.rep.errors)
        if self.index != self.before:
            self.env.state.save_index(self.index)
        return self.rep

    # -- dispatch -----------------------------------------------------------------------------
    def _healthy(self) -> bool:
        return self.env.answered.is_set() and not self.failing

    def _full(self) -> bool:
        # Until the server answered in this pass, and while the last run failed with a retryable error,
        # one new run at a time (a half-open breaker: a server that is down gets no more requests than
        # from workers: 1); the runs already in flight go on.
        if self._healthy():
            self.probes.clear()  # answered: in flight like any other run
        return len(self.pending) >= self.env.pool.workers or (not self._healthy() and bool(self.probes))

    def _settle_done(self, timeout_s: Optional[float]) -> None:
        done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED, timeout=timeout_s)
        for fut in done:
            ctx, ref, source = self.pending.pop(fut)
            self.probes.discard(fut)
            self._settle(ctx, ref, source, fut.result)

    def _dispatch(self, source: Source, ref: RunRef, rid: str) -> bool:
        """Start (or settle at once) one run; False when this root's pass ends here."""
        rep, env = self.rep, self.env
        if self.pending:
            self._settle_done(0)
        while self._full():
            self._settle_done(0.05)  # and look again: the first answer to a long run opens the other slots
        if self.should_stop() or rep.aborted or source.display in self.lost:
            return False
        if not self.renew(source):
            rep.roots_skipped[source.display] = "lost the lease to another gateway"
            return False
        rep.runs_seen += 1
        key = run_key(rid, ref)
        legacy = self._legacy(key, ref.key, source)
        ent = self.index.get(key)
        if ent is not None and ent.retry_at_ms > env.clock() * 1000:
            rep.backing_off[key] = ent.error or "backing off"
            return True
        ctx = RunCtx(key, functools.partial(stop_now, self.should_stop, self.halt, self.renew, source),
                     root_id=rid, legacy=legacy)
        if not env.pool.parallel:
            sync = RunSync(env, reader_for(source, ref), ent, ctx, source.display)
            self._settle(ctx, ref, source, sync.sync)
            return True
        # A stat-only look first, here: an unchanged run (most of them) costs no thread hand-off.
        try:
            reader = reader_for(source, ref)
            snap = reader.snapshot()
            fresh = unchanged(env.settings, snap, ent or IndexEntry(), env.now_ms())[0]
        except Exception as e:  # noqa: BLE001 - recorded on the run by _settle, like any run's fault
            self._settle(ctx, ref, source, functools.partial(_raise, e))
            return True
        if fresh:
            self._settle(ctx, ref, source, _unchanged_result)
            return True
        fut = env.pool.submit(functools.partial(RunSync(env, reader, ent, ctx, source.display).sync, snap))
        self.pending[fut] = (ctx, ref, source)
        if not self._healthy():
            self.probes.add(fut)
        return True

    def _legacy(self, key: str, legacy: str, source: Source) -> Optional[str]:
        """The legacy id (``<project>/<run_id>``) the run ``key`` owns or may adopt, None if another run
        owns it. A state of version 2 or older under the legacy key is taken over here, by the run found
        under the root its index entry names (any root, the first in order, when it names none): its
        entry moves to ``key`` as it is (an unchanged run stays unchanged) and its state file with it."""
        ent = self.index.get(key)
        if ent is not None and ent.legacy:
            return ent.legacy
        old = self.index.get(legacy)
        if old is not None and old.root not in (None, source.display):
            return None  # that old state is the run of another root
        if (old is not None or self.env.state.exists(legacy)) and self.claims.owner.get(legacy) in (None, key):
            self.env.state.adopt_legacy(legacy, key)
            new = IndexEntry(**vars(old)) if old is not None else IndexEntry()
            new.legacy, new.root = legacy, new.root or source.display
            self.index[key] = new
            self.before[key] = IndexEntry(**vars(new))  # moved, not changed: its group is not touched
            self.index.pop(legacy, None)
            self.claims.claim(legacy, key)
            log.info("%s: its state (kept as %s by an older gateway) moved to its new key", key, legacy)
            return legacy
        if ent is None or ent.state is None:  # no state of its own: it may find its old server run
            return self.claims.offer(legacy, key)
        return None

    # -- outcomes -------------------------------------------------------------------------------
    def _settle(self, ctx: RunCtx, ref: RunRef, source: Source, result: Result) -> None:
        """Record one run's outcome (``result()`` returns it or raises what its sync raised)."""
        rep, key = self.rep, ctx.key
        try:
            changed, sent = result()
        except Stopped:
            if self.should_stop():
                rep.aborted = rep.aborted or "stopped on request"
            elif not self.halt.is_set() and not self.renew(source):
                self.lost.add(source.display)
                rep.roots_skipped[source.display] = "lost the lease to another gateway"
            return  # the breaker stopped it: rep.aborted says why; the next pass resumes from its cursors
        except RunDeleted as e:
            self._record_deleted(key, e)
            rep.notes[key] = redact(e)
            self.failing = 0
            return
        except ServerUnavailable as e:  # retryable, and ServerUnreachable: the server is down as a whole
            self._server_down(key, e)
            return
        except Exception as e:  # noqa: BLE001 - one run's failure, of any kind, stays in that run
            msg = redact(e if isinstance(e, (GatewayError, OSError)) else f"{e.__class__.__name__}: {e}")
            log.debug("%s: traceback", key, exc_info=True)
            rep.errors[key] = self._record_error(key, msg[:2000])
            self.failing = 0
            return
        finally:
            rep.quarantined += ctx.quarantined
        self.failing = 0
        self.env.answered.set()
        if ctx.entry is not None:
            self.index[key] = ctx.entry
            if ctx.entry.legacy:
                self.claims.claim(ctx.entry.legacy, key)
        rep.points_sent += sent
        if ctx.last_run is not None and ref.project not in rep.experiments:
            rep.experiments[ref.project] = self.env.sink.experiment_url(ctx.last_run)
        if changed:
            rep.runs_synced += 1
        else:
            rep.runs_unchanged += 1

    def _server_down(self, key: str, e: ServerUnavailable) -> None:
        """A retryable server error: the run backs off; the breaker counts it; an unreachable server (not the
        run's fault: no backoff) or BREAKER_RUNS in a row end the pass."""
        rep, msg = self.rep, redact(e)
        down = isinstance(e, ServerUnreachable)
        self.failing += 1
        rep.errors[key] = self._record_error(key, msg, backoff=not down)
        if (down or self.failing >= BREAKER_RUNS) and not rep.aborted:
            rep.aborted = msg if down else (
                f"{self.failing} runs in a row failed with a retryable server error (last: {msg}); "
                f"the pass stopped here so as not to hammer the server, the next one resumes")
            log.error("%s", rep.aborted)
            self.halt.set()

    def _record_error(self, key: str, msg: str, backoff: bool = False) -> str:
        """Record a run's failure on it (state and index; ``status`` shows it) and return the message.
        ``backoff``: a retryable error; from the second in a row the run waits BACKOFF_BASE_S x
        2^(failures-2), at most BACKOFF_MAX_S, while the others go on."""
        ent = self.index.setdefault(key, IndexEntry())
        ent.sig = None
        ent.error = msg
        try:
            st = self.env.state.load(key)
            st.last_error = msg
            if backoff:
                # The first failure is retried by the next pass (a transient fault, or a configuration
                # fixed meanwhile); from the second in a row the run waits, doubling each time.
                st.failures += 1
                if st.failures == 1:
                    msg += " (retried by the next pass)"
                else:
                    delay_s = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(st.failures - 2, 20))
                    st.retry_at_ms = int((self.env.clock() + delay_s) * 1000)
                    msg += f" (failure #{st.failures} in a row: retry in {delay_s:.0f} s)"
                ent.error = msg
                st.last_error = msg
            ent.retry_at_ms = st.retry_at_ms
            self.env.state.save(key, st)
        except OSError as e:  # a full disk: the index still says it, the next pass tries again
            log.error("%s: cannot record the error in the state directory: %s", key, e)
        log.error("%s: %s", key, msg)
        return msg

    def _record_deleted(self, key: str, e: RunDeleted) -> None:
        """A user deleted the server run: respect it. Forget the run's server state (a restored run gets
        everything again); it is looked for again every pass (one search) and shown by ``status``."""
        msg = redact(e)
        log.warning("%s: %s", key, msg)
        st = self.env.state.load(key)
        st.send_anew(forget_server_run=True)
        st.last_error = None
        if not st.notes or st.notes[-1] != msg:
            st.note(msg)
        self.env.state.save(key, st)
        ent = self.index.setdefault(key, IndexEntry())
        ent.sig, ent.error, ent.retry_at_ms = None, None, 0

    # -- runs that are gone ---------------------------------------------------------------------
    def _end_gone(self) -> None:
        """A run synced from a root that was listed whole in this pass, not found there, still active on
        the server and without a sign of life for ``stale_after_s``: its server run ends as crashed."""
        now_ms = self.env.now_ms()
        stale_ms = self.env.settings.stale_after_s * 1000
        for key, ent in sorted(self.index.items()):
            if (key in self.seen or ent.root not in self.listed or ent.state != "active"
                    or now_ms - ent.alive_ms < stale_ms):
                continue
            try:
                self._end_one(key, ent, now_ms)
            except Exception as e:  # noqa: BLE001 - tried again by the next pass (the run stays active)
                msg = redact(e if isinstance(e, GatewayError) else f"{e.__class__.__name__}: {e}")
                self.rep.errors[key] = self._record_error(key, f"{msg[:2000]} (ending it: the run is gone)")

    def _end_one(self, key: str, ent: IndexEntry, now_ms: int) -> None:
        sink, store = self.env.sink, self.env.state
        st = store.load(key)
        status = RunStatus("crashed", ent.alive_ms, ent.alive_ms)
        if st.sink_kind == sink.kind and st.sink:
            sink.set_state(sink.restore(st.sink), status)
        msg = (f"not found under {ent.root} since its last sign of life at {when(ent.alive_ms)} (moved or "
               f"deleted): its server run was ended as crashed; it syncs again if it comes back")
        log.warning("%s: %s", key, msg)
        st.state, st.status, st.last_error = status.state, status_record(status), None
        st.note(f"{when(now_ms)} {msg}")
        store.save(key, st)
        ent.state, ent.end_ms, ent.sig, ent.error = status.state, status.end_ms, None, None
        self.rep.notes[key] = msg


def _raise(e: BaseException) -> Tuple[bool, int]:
    raise e


def _unchanged_result() -> Tuple[bool, int]:
    return False, 0
