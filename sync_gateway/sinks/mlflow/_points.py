"""Rows to MLflow metric points, and points to batches: MLflow's value ranges, system metric names and units,
``define_metric`` x-axes. Pure (no I/O): the engine prepares the next batch while the previous one is in
flight. Used by ``MlflowSink.batches`` and ``set_summary``."""
from __future__ import annotations

import fnmatch
import math
import re
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from sync_gateway.records import MetricDef, Row
from sync_gateway.sinks.mlflow._names import metric_key, metric_value, system_metric
from sync_gateway.sinks.mlflow._runs import MlflowRun

__all__ = ["Points", "Point", "MAX_POINTS", "INT64_MAX", "int64", "num"]

MAX_POINTS = 1000       # MLflow refuses a log-batch of more metrics (400)
INT64_MAX = (1 << 63) - 1
#: one metric point as ``runs/log-batch`` takes it
Point = Dict[str, Any]
_Rules = List[Tuple[Any, Optional[str]]]


def int64(v: Any, lo: int = -(1 << 63)) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= INT64_MAX


def num(v: float) -> Any:
    # Protobuf's JSON mapping spells non-finite doubles as these strings; plain JSON has no literal.
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


class Points:
    """Values MLflow cannot store (a step or timestamp outside int64, a negative timestamp, an integer beyond
    float) are skipped point by point and counted on the run, never sent: MLflow answers 200 to a step of
    10**30 but stores 0 and drops the rest of the batch."""

    def __init__(self) -> None:
        self._matchers: Dict[Tuple[MetricDef, ...], _Rules] = {}
        self._lock = threading.Lock()  # the matcher cache is shared by the threads of a pass

    def batches(self, run: MlflowRun, stream: str, rows: Sequence[Row], metrics: Sequence[MetricDef],
                limit: int) -> Iterator[Tuple[int, List[Point]]]:
        system = stream == "system"
        rules = [] if system else self._rules(metrics)
        batch: List[Point] = []
        for i, row in enumerate(rows):
            pts = self._points(run, row, system, rules)
            if batch and len(batch) + len(pts) > limit:
                yield i, batch
                batch = []
            while len(pts) > limit:  # a row wider than a batch: it is covered only by its last piece
                yield i, pts[:limit]
                pts = pts[limit:]
            batch.extend(pts)
        if batch:
            yield len(rows), batch

    def _rules(self, metrics: Sequence[MetricDef]) -> _Rules:
        key = tuple(metrics)
        with self._lock:
            if key not in self._matchers:
                self._matchers[key] = [(re.compile(fnmatch.translate(m.pattern)).match, m.step_metric)
                                       for m in metrics]
            return self._matchers[key]

    @staticmethod
    def _points(run: MlflowRun, row: Row, system: bool, rules: _Rules) -> List[Point]:
        out: List[Point] = []
        row_ok = int64(row.step) and int64(row.ts_ms, 0)  # MLflow: int64 steps, non-negative timestamps
        for k, v in row.values.items():
            try:
                val = metric_value(v)
            except OverflowError:   # an integer beyond float (10**400): MLflow cannot store it
                run.unstorable_points += 1
                continue
            if val is None:
                run.skipped_values += 1
                continue
            if not row_ok:
                run.unstorable_points += 1
                continue
            if system:
                mkey, factor = system_metric(k)
                out.append({"key": mkey, "value": num(val * factor), "timestamp": row.ts_ms, "step": row.step})
                continue
            step = _step(row, k, rules)
            if step is None:
                run.unstorable_points += 1
                continue
            out.append({"key": metric_key(k), "value": num(val), "timestamp": row.ts_ms, "step": step})
        return out


def _step(row: Row, key: str, rules: _Rules) -> Optional[int]:
    """The x-axis of ``key`` in ``row``: the first matching define_metric's step metric, else the row's step;
    None when that value is not storable (non-finite or outside int64)."""
    for match, step_metric in rules:
        if match(key):
            sv = row.values.get(step_metric) if step_metric else None
            if isinstance(sv, (int, float)) and not isinstance(sv, bool):
                if isinstance(sv, float) and not math.isfinite(sv) or not -2.0**63 <= sv < 2.0**63:
                    return None
                return int(sv)
            break
    return row.step
