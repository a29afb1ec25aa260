"""The reference sink: keeps everything in memory, with the same exactly-once rules a real server has.

It is what the sink contract tests (tests/gateway/test_sink_contract.py) hold every sink to, and what
the engine's fault and scale tests use when the server is not what is measured. Not selectable in a
config: a gateway whose server forgets everything at exit would be no use.

Like a real server it may refuse points for good (``refuse``: a rule on ``(stream, key, value)``): it stores
the others of the batch and raises :class:`~sync_gateway.errors.BatchRefused`, which the engine quarantines.
A key declared with a step metric (``define_metric``) is stored against that metric's value in its row.
"""
from __future__ import annotations

import fnmatch
import functools
import itertools
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import (
    Any,
    BinaryIO,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    cast,
)

from sync_gateway.errors import BatchRefused
from sync_gateway.records import ENDED_STATES, MetricDef, Row, RunInfo, RunStatus, Summary
from sync_gateway.sinks.base import GroupView, RunSpec, Sink, SinkRun

__all__ = ["MemorySink", "MemoryRun", "StoredRun"]

F = TypeVar("F", bound=Callable[..., Any])


def _locked(fn: F) -> F:
    """The engine calls a sink from several threads (different runs at once): one call at a time here,
    as a real server serialises what it stores."""
    @functools.wraps(fn)
    def wrapper(self: MemorySink, *a: Any, **kw: Any) -> Any:
        with self._lock:
            return fn(self, *a, **kw)
    return wrapper  # type: ignore[return-value]


@dataclass
class MemoryRun(SinkRun):
    run_id: str

    def to_state(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class StoredRun:
    """What the memory server holds for one run."""

    sync_id: str
    info: Optional[RunInfo] = None
    config: Dict[str, Any] = field(default_factory=dict)
    #: (stream, key, step, ts_ms, value) once each: re-sending a point stores nothing new
    points: Set[Tuple[str, str, int, int, Any]] = field(default_factory=set)
    summary: Optional[Summary] = None
    files: Dict[str, bytes] = field(default_factory=dict)
    state: Optional[str] = None
    end_ms: Optional[int] = None
    parent: Optional[str] = None         # the group run it nests under
    start_ms: int = 0
    retired: Optional[str] = None        # why it was detached from its sync id (rewritten from scratch)


#: one point as the memory server stores it: (stream, key, step, ts_ms, value)
Point = Tuple[str, str, int, int, Any]


class MemorySink(Sink[MemoryRun, List[Point]]):
    kind = "memory"

    def __init__(self, refuse: Optional[Callable[[str, str, Any], bool]] = None) -> None:
        self.refuse = refuse    # (stream, key, value) -> True: this point is refused for good
        self.calls: Counter = Counter()
        self.runs: Dict[str, StoredRun] = {}          # server run id -> run
        self.by_sync_id: Dict[str, str] = {}
        self._ids = itertools.count()
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Any = None, environ: Optional[Mapping[str, str]] = None,  # noqa: ARG003
                      **kw: Any) -> MemorySink:
        return cls()

    def _run(self, run: MemoryRun) -> StoredRun:
        return self.runs[run.run_id]

    def _find_or_create(self, sync_id: str, start_ms: int) -> MemoryRun:
        if sync_id not in self.by_sync_id:
            rid = f"r{next(self._ids)}"
            self.runs[rid] = StoredRun(sync_id, start_ms=start_ms)
            self.by_sync_id[sync_id] = rid
        return MemoryRun(self.by_sync_id[sync_id])

    @_locked
    def open_run(self, spec: RunSpec, saved: Optional[Mapping[str, Any]]) -> MemoryRun:
        self.calls["open_run"] += 1
        if saved and saved.get("run_id") in self.runs:
            run = self.restore(saved)
            if self._run(run).sync_id != spec.sync_id and not self._run(run).retired:
                self._move(run.run_id, spec.sync_id)  # a state from before root ids: its run moves to the new id
            return run
        self.calls["find_or_create"] += 1
        legacy = self.by_sync_id.get(spec.legacy_id or "")
        if spec.sync_id not in self.by_sync_id and legacy is not None \
                and self.runs[legacy].start_ms == spec.info.created_ms:  # the same run, as MLflow checks it
            self._move(legacy, spec.sync_id)
            run = MemoryRun(legacy)
            run.adopted_legacy = True
            return run
        return self._find_or_create(spec.sync_id, spec.info.created_ms)

    def _move(self, rid: str, sync_id: str) -> None:
        self.calls["retag"] += 1
        stored = self.runs[rid]
        if self.by_sync_id.get(stored.sync_id) == rid:
            del self.by_sync_id[stored.sync_id]
        stored.sync_id = sync_id
        self.by_sync_id[sync_id] = rid

    def restore(self, saved: Mapping[str, Any]) -> MemoryRun:
        return MemoryRun(str(saved["run_id"]))

    @_locked
    def retire_run(self, run: MemoryRun, reason: str) -> None:
        self.calls["retire_run"] += 1
        stored = self._run(run)
        stored.retired = reason
        if self.by_sync_id.get(stored.sync_id) == run.run_id:
            del self.by_sync_id[stored.sync_id]

    @_locked
    def set_metadata(self, run: MemoryRun, info: RunInfo) -> None:
        self.calls["set_metadata"] += 1
        self._run(run).info = info

    @_locked
    def set_config(self, run: MemoryRun, config: Mapping[str, Any]) -> List[str]:
        self.calls["set_config"] += 1
        self._run(run).config = dict(config)
        return []

    def batches(self, run: MemoryRun, stream: str, rows: Sequence[Row],
                metrics: Sequence[MetricDef] = ()) -> Iterator[Tuple[int, List[Point]]]:
        # One row per payload: the smallest batches exercise the engine's cursor handling hardest.
        for i, row in enumerate(rows):
            yield i + 1, [(stream, k, _step(row, k, metrics) if stream == "history" else row.step, row.ts_ms, v)
                          for k, v in row.values.items()]

    @_locked
    def send(self, run: MemoryRun, payload: List[Point]) -> int:
        self.calls["send"] += 1
        refuse = self.refuse
        bad = [p for p in payload if refuse is not None and refuse(p[0], p[1], p[4])]
        good = payload if not bad else [p for p in payload if not (refuse is not None and refuse(p[0], p[1], p[4]))]
        self._run(run).points.update((s, k, step, ts, _hashable(v)) for s, k, step, ts, v in good)
        if bad:
            raise BatchRefused(f"{len(bad)} of {len(payload)} points refused for good (first: {bad[0][1]}="
                               f"{bad[0][4]!r})", points=len(bad))
        return len(payload)

    @_locked
    def set_summary(self, run: MemoryRun, summary: Summary) -> None:
        self.calls["set_summary"] += 1
        self._run(run).summary = summary

    @_locked
    def upload(self, run: MemoryRun, path: str, body: BinaryIO, size_bytes: int) -> None:
        self.calls["upload"] += 1
        self._run(run).files[path] = body.read(size_bytes)

    @_locked
    def set_state(self, run: MemoryRun, status: RunStatus) -> None:
        self.calls["set_state"] += 1
        stored = self._run(run)
        stored.state, stored.end_ms = status.state, status.end_ms

    @_locked
    def sync_group(self, group: GroupView, saved: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        self.calls["sync_group"] += 1
        if not group.members:
            return dict(saved or {})
        parent = self._find_or_create(f"group:{group.project}/{group.name}", min(m.start_ms for m in group.members))
        stored = self.runs[parent.run_id]
        stored.start_ms = min(m.start_ms for m in group.members)
        ended = all(m.state in ENDED_STATES for m in group.members)
        stored.state = "finished" if ended else "active"
        stored.end_ms = max(m.end_ms or 0 for m in group.members) if ended else None
        for m in group.members:
            self._run(cast(MemoryRun, m.run)).parent = parent.run_id  # the runs this sink opened
        return {"run_id": parent.run_id}

    def server_version(self) -> str:
        return "memory"

    # -- for tests ----------------------------------------------------------------------------
    def stored(self, sync_id: str) -> StoredRun:
        return self.runs[self.by_sync_id[sync_id]]


def _step(row: Row, key: str, metrics: Sequence[MetricDef]) -> int:
    """The x-axis of ``key`` in ``row``: its step metric's value where one is declared (the first matching
    declaration wins) and is a finite number, else the row's step."""
    for m in metrics:
        if fnmatch.fnmatchcase(key, m.pattern):
            v = row.values.get(m.step_metric) if m.step_metric else None
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
                return int(v)
            return row.step
    return row.step


def _hashable(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return "NaN"  # NaN != NaN: a set would keep every re-sent copy
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v
