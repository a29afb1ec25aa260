"""Which run is which: a run's identity is its root's id plus its project and run id.

The same ``<project>/<run_id>`` under two roots (two users' scratch directories, two clusters through one
air gap) are two runs: two state entries, two server runs. A root's id is the one given in the config
(``roots: [{path: ..., id: ...}]``), else :func:`~sync_gateway.records.root_id` of the root as its source
shows it, so it is the same on every gateway and after any state loss. docs/gateway.md, "Exactly once" and
"State directory", says why and what a renamed root does.

Before root ids (state version 2 and older) a run's key and sync id were ``<project>/<run_id>``, its
*legacy id*. :class:`Claims` decides, in the dispatching thread, which one run may take a legacy id's state
and server run, so that two roots never share them again.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Mapping, Optional

from sync_gateway.errors import ConfigError
from sync_gateway.records import root_id
from sync_gateway.settings import Settings
from sync_gateway.sources.base import Source

__all__ = ["RootIds", "Claims"]


def _shown(root: str) -> str:
    """A configured root as its source shows it (sources/local.py: an absolute path; ssh:// as written)."""
    return root if "://" in root else os.path.abspath(os.path.expanduser(root))


class RootIds:
    """Root id by source (its ``display``), from the ids the settings give and the default rule."""

    def __init__(self, settings: Settings):
        self.given: Dict[str, str] = {_shown(r): rid for r, rid in settings.root_ids.items()}

    def __call__(self, source: Source) -> str:
        return self.given.get(source.display) or root_id(source.display)

    def check(self, sources: Iterable[Source]) -> None:
        """Two roots with one id would share their runs' state and server runs: a configuration error."""
        seen: Dict[str, str] = {}
        for s in sources:
            rid = self(s)
            if rid in seen and seen[rid] != s.display:
                raise ConfigError(f"roots {seen[rid]} and {s.display} have the same id {rid}: give one of them "
                                  f"another id (roots: [{{path: ..., id: ...}}])")
            seen[rid] = s.display


class Claims:
    """Which run owns each legacy id. A legacy id is owned by the run that took its old state (migrated)
    or adopted its server run (the sink found it by the legacy id): ``IndexEntry.legacy``. A run that has
    neither its own state nor an owner for its legacy id is offered it: the sink then adopts a server run
    tagged with it only if it is this run's (MLflow: the same start time; W&B: the same name), so that
    after a state loss an old server run is adopted, not duplicated, and never by another root's run."""

    def __init__(self, index: Mapping[str, object]):
        self.owner: Dict[str, str] = {}
        for key, ent in index.items():
            legacy = getattr(ent, "legacy", None)
            if legacy:
                self.owner.setdefault(legacy, key)

    def offer(self, legacy: str, key: str) -> Optional[str]:
        """``legacy`` if the run ``key`` may look for the server run of that legacy id, else None."""
        return legacy if self.owner.get(legacy) in (None, key) else None

    def claim(self, legacy: str, key: str) -> None:
        self.owner[legacy] = key
