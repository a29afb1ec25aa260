"""What every run's sync shares with the pass that dispatched it."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from sync_gateway.engine._parallel import RunPool
from sync_gateway.engine.state import StateStore
from sync_gateway.settings import Settings
from sync_gateway.sinks.base import Sink

__all__ = ["SyncEnv"]


@dataclass
class SyncEnv:
    """Built once by :class:`~sync_gateway.engine.gateway.Gateway`; read by every run's thread."""

    settings: Settings
    sink: Sink
    state: StateStore
    clock: Callable[[], float]
    pool: RunPool
    on_points: Callable[[int], None]
    #: set when the server acknowledged something in this pass (cleared by the pass): the breaker's half-open
    answered: threading.Event = field(default_factory=threading.Event)
    _points_lock: threading.Lock = field(default_factory=threading.Lock)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def acknowledged(self, points: int) -> None:
        """A batch was acknowledged (from any run's thread); ``on_points`` is called by one at a time."""
        self.answered.set()
        with self._points_lock:
            self.on_points(points)
