"""The composition root of every command: Settings -> sources, sink, state, leases -> passes.

``sync`` and ``daemon`` build a :class:`Runner` over the configured roots; ``import`` one over the mirror
(its own clock, no per-root leases: the import holds one lease for the whole of it); ``status`` one that
only reads (no sink is made, no lease taken) and asks it what each run still has to sync
(:meth:`Runner.backlog`). Whatever the runner holds it closes.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from sync_gateway.engine.gateway import Gateway, PassReport
from sync_gateway.engine.identity import RootIds
from sync_gateway.engine.lease import Lease, LeaseKeeper
from sync_gateway.engine.state import RunState, StateStore
from sync_gateway.engine.stream import backlog
from sync_gateway.errors import ConfigError, GatewayError, LeaseHeld
from sync_gateway.readers import discover_runs, reader_for
from sync_gateway.records import RunRef, run_key
from sync_gateway.settings import Settings
from sync_gateway.sinks import make_sink
from sync_gateway.sinks.base import Sink
from sync_gateway.sources import open_source
from sync_gateway.sources.base import Source

__all__ = ["Runner", "make_sink", "open_sources"]

log = logging.getLogger(__name__)


def open_sources(roots: Iterable[str], settings: Settings, skip_bad: bool = False) -> List[Source]:
    """A source per root; ``skip_bad``: a root that cannot be opened is left out with a warning (``status``
    shows what it can) instead of raising."""
    out = []
    for root in roots:
        try:
            out.append(open_source(root, settings))
        except GatewayError as e:
            if not skip_bad:
                raise
            log.warning("root %s: %s", root, e)
    return out


class Runner:
    """Holds what lives across passes: sources (their connections), the sink's session, the leases.

    ``sink``/``sources``: given ones are held (and closed) like made ones. ``leases``: False where the
    caller holds one lease for everything (``import``). ``read_only``: for ``status``: no sink is made (no
    server setting is needed), no lease taken, no pass run."""

    def __init__(self, settings: Settings, sink: Optional[Sink] = None,
                 sources: Optional[List[Source]] = None, clock: Callable[[], float] = time.time,
                 on_points: Optional[Callable[[int], None]] = None, lease_owner: Optional[str] = None,
                 leases: bool = True, read_only: bool = False):
        if not settings.roots and sources is None:
            raise ConfigError("no roots to sync: set roots in the config or HPCSYNC_GATEWAY_ROOTS")
        self.settings = settings
        self.read_only = read_only
        # Made here, not on first use: a sink setting that is wrong ends `sync` and `daemon` at once.
        self._sink = sink if sink is not None or read_only else make_sink(settings)
        self.sources = sources if sources is not None else open_sources(settings.roots, settings)
        self.root_ids = RootIds(settings)
        self.root_ids.check(self.sources)
        self.state = StateStore(settings.state_path)
        self.clock = clock
        self.on_points = on_points
        self.leases: Dict[str, Lease] = {
            s.display: Lease(settings.lease_path, s.display, settings.lease_ttl_s, lease_owner, clock)
            for s in self.sources} if leases and not read_only else {}
        self._gateway: Optional[Gateway] = None

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            raise GatewayError("this runner only reads (status): it has no sink to sync to")
        return self._sink

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            self._gateway = Gateway(self.settings, self.sink, self.state, self.clock, self.on_points)
        return self._gateway

    def run_pass(self, should_stop: Callable[[], bool] = lambda: False) -> PassReport:
        self.sink.before_pass()
        if not self.leases:
            rep = self.gateway.sync_pass(self.sources, should_stop)
            self._close_sources(self.sources)
            return rep
        held: List[Source] = []
        skipped: Dict[str, str] = {}
        for s in self.sources:
            try:
                self.leases[s.display].take()
            except LeaseHeld as e:
                skipped[s.display] = str(e)
                log.warning("%s: skipped, %s", s.display, e)
                continue
            held.append(s)
        # Renewed before each run, after each batch ack and from the keeper's own thread (lease_ttl_s / 3);
        # a lost lease stops that root's runs at their next batch.
        keeper = LeaseKeeper([self.leases[s.display] for s in held], self.settings.lease_ttl_s, self.clock)
        try:
            rep = self.gateway.sync_pass(held, should_stop, lambda src: keeper.check(src.display))
        finally:
            keeper.close()
        rep.roots_skipped.update(skipped)
        self._close_sources(held)
        return rep

    # -- reading only (status) ------------------------------------------------------------------
    def discover(self) -> Tuple[Dict[str, Tuple[Source, RunRef]], Set[str]]:
        """Every run found under the sources now, by its key (and by its legacy key, for a state an older
        gateway wrote that no pass has moved yet), and the roots listed (one that cannot be: a warning)."""
        found: Dict[str, Tuple[Source, RunRef]] = {}
        listed: Set[str] = set()
        for src in self.sources:
            rid = self.root_ids(src)
            try:
                for ref in discover_runs(src, self.settings.wandb_search_depth):
                    found[run_key(rid, ref)] = (src, ref)
                    found.setdefault(ref.key, (src, ref))
            except GatewayError as e:
                log.warning("root %s: %s", src.display, e)
                continue
            listed.add(src.display)
        return found, listed

    @staticmethod
    def backlog(src: Source, ref: RunRef, st: RunState) -> Tuple[int, int]:
        """``(records, bytes)`` of the run on disk and not yet synced by the cursors of ``st``."""
        reader = reader_for(src, ref)
        return backlog(reader, reader.snapshot(), st.cursors)

    # -- lifetime ---------------------------------------------------------------------------------
    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, release: bool = True, keep_sink: bool = False) -> None:
        """``keep_sink``: the sink was lent by a caller that closes it itself (``import``)."""
        if release:
            for lease in self.leases.values():
                lease.release()
        if self._gateway is not None:
            self._gateway.close()
        if self._sink is not None and not keep_sink:
            self._sink.close()
        self._close_sources(self.sources)

    @staticmethod
    def _close_sources(sources: List[Source]) -> None:
        for s in sources:
            s.close()
