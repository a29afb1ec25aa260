"""An in-memory Sink for scale tests where the server is not what is measured (10,000 run directories).
It keeps MLflow's idempotency rule (an identical point is stored once) so results are comparable."""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Dict, List, Optional, Set, Tuple

from sync_gateway.sinks.base import Point, RunSpec, ServerRun, Sink


class MemorySink(Sink):
    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.runs: Dict[str, ServerRun] = {}
        self.points: Dict[str, Set[Tuple[str, float, int, int]]] = {}
        self._ids = itertools.count()

    def find_or_create(self, spec: RunSpec) -> ServerRun:
        self.calls["find_or_create"] += 1
        if spec.sync_id not in self.runs:
            self.runs[spec.sync_id] = ServerRun(f"r{next(self._ids)}", "0", "mlflow-artifacts:/0/x/artifacts")
        return self.runs[spec.sync_id]

    def log_points(self, run: ServerRun, points: List[Point]) -> None:
        self.calls["log_points"] += 1
        self.points.setdefault(run.run_id, set()).update((p.key, p.value, p.step, p.ts_ms) for p in points)

    def log_params(self, run: ServerRun, params: Dict[str, str]) -> Dict[str, str]:
        self.calls["log_params"] += 1
        return {}

    def set_tags(self, run: ServerRun, tags: Dict[str, str]) -> None:
        self.calls["set_tags"] += 1

    def set_state(self, run: ServerRun, state: str, end_ms: Optional[int]) -> None:
        self.calls["set_state"] += 1

    def upload(self, run: ServerRun, path: str, data: bytes) -> None:
        self.calls["upload"] += 1

    def server_version(self) -> str:
        return "memory"
