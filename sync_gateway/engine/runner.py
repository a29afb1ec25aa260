"""Wiring: Settings -> sources, sink, state, leases -> one pass (used by the CLI, the daemon and tests)."""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Dict, List, Optional

from sync_gateway.engine.gateway import Gateway, PassReport
from sync_gateway.engine.lease import Lease, LeaseKeeper
from sync_gateway.engine.state import StateStore
from sync_gateway.errors import ConfigError
from sync_gateway.settings import Settings
from sync_gateway.sinks import make_sink
from sync_gateway.sinks.base import Sink
from sync_gateway.sources import open_source
from sync_gateway.sources.base import Source

__all__ = ["Runner", "make_sink"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


class Runner:
    """Holds what lives across passes: sources (their connections), the sink's session, the leases."""

    def __init__(self, settings: Settings, sink: Optional[Sink] = None,
                 sources: Optional[List[Source]] = None, clock: Callable[[], float] = time.time,
                 on_points: Optional[Callable[[int], None]] = None, lease_owner: Optional[str] = None):
        if not settings.roots and sources is None:
            raise ConfigError("no roots to sync: set roots in the config or HPCSYNC_GATEWAY_ROOTS")
        self.settings = settings
        self.sink = sink or make_sink(settings)
        self.sources = sources if sources is not None else [open_source(r, settings) for r in settings.roots]
        self.state = StateStore(settings.state_path)
        self.clock = clock
        self.leases: Dict[str, Lease] = {
            s.display: Lease(settings.lease_path, s.display, settings.lease_ttl_s, lease_owner, clock)
            for s in self.sources}
        self.gateway = Gateway(settings, self.sink, [], self.state, clock, on_points)

    def run_pass(self, should_stop: Callable[[], bool] = lambda: False) -> PassReport:
        self.sink.before_pass()
        held: List[Source] = []
        rep_skipped: Dict[str, str] = {}
        for s in self.sources:
            lease = self.leases[s.display]
            if lease.acquire():
                held.append(s)
            else:
                other = (lease.read() or {}).get("owner", "?")
                rep_skipped[s.display] = f"another gateway ({other}) holds the lease {lease.path}"
                log.warning("%s: skipped, %s", s.display, rep_skipped[s.display])
        self.gateway.sources = held
        # Renewed before each run, after each batch ack and from the keeper's own thread (lease_ttl_s / 3);
        # a lost lease stops that root's runs at their next batch.
        keeper = LeaseKeeper([self.leases[s.display] for s in held], self.settings.lease_ttl_s, self.clock)
        try:
            rep = self.gateway.sync_pass(should_stop, lambda src: keeper.check(src.display))
        finally:
            keeper.close()
        rep.roots_skipped.update(rep_skipped)
        for s in held:
            s.close()
        return rep

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, release: bool = True) -> None:
        if release:
            for lease in self.leases.values():
                lease.release()
        self.gateway.close()
        self.sink.close()
        for s in self.sources:
            s.close()


def state_dir_exists(settings: Settings) -> bool:
    return os.path.isdir(settings.state_path)
