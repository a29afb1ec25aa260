"""A MemorySink that raises scripted errors per call, so the engine's fault paths run without a server.

    sink = FaultySink()
    sink.fail("send", ServerUnavailable("HTTP 503", 503), run="r1", nth=3)      # the 3rd send of run r1
    sink.fail("open_run", RunDeleted("deleted on the server"), run="r2", times=None)   # every open of r2
    sink.fail("send", BatchRefused("refused", points=5), run="r3", nth=2)
    sink.fail("send", ServerUnavailable("answer lost", 503), run="r4", nth=1, after=True)  # stored, then lost

``run`` is a run id (the part of the sync id after the project) or a whole sync id; None: any run.
``nth``: the first call (1-based, counted per method and run) that fails; ``times``: how many calls from
there on fail (None: every one). ``detail``: only the calls about that (``upload``: its path). ``after``:
the call does its work first, then raises (a lost answer: the server stored it, the gateway never heard).
Every point of every ``send`` is counted in ``sends`` (a point sent twice shows there, although the memory
server stores it once).
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

from sync_gateway.records import RunInfo, RunStatus, Summary
from sync_gateway.sinks.base import GroupView, RunSpec
from sync_gateway.sinks.memory import MemoryRun, MemorySink, Point

T = TypeVar("T")


@dataclass
class Fault:
    method: str
    error: BaseException
    run: Optional[str] = None
    nth: int = 1
    times: Optional[int] = 1
    after: bool = False
    detail: Optional[str] = None

    def hits(self, method: str, sync_id: str, count: int, detail: str) -> bool:
        if method != self.method or (self.run is not None and self.run not in (sync_id, sync_id.split("/")[-1])):
            return False
        if self.detail is not None and self.detail != detail:
            return False
        return count >= self.nth and (self.times is None or count < self.nth + self.times)


class FaultySink(MemorySink):
    def __init__(self, refuse: Optional[Callable[[str, str, Any], bool]] = None) -> None:
        super().__init__(refuse)
        self.faults: List[Fault] = []
        self.counts: Counter = Counter()   # (method, sync id) -> calls so far
        self.sends: Counter = Counter()    # (sync id, point) -> how many times it was sent
        self.before: Optional[Callable[[str, str], None]] = None   # called before each call: (method, sync id)
        self._script_lock = threading.Lock()

    def fail(self, method: str, error: BaseException, run: Optional[str] = None, nth: int = 1,
             times: Optional[int] = 1, after: bool = False, detail: Optional[str] = None) -> FaultySink:
        self.faults.append(Fault(method, error, run, nth, times, after, detail))
        return self

    def heal(self) -> None:
        """The server is well again: no scripted fault any more."""
        self.faults = []

    def _sid(self, run: MemoryRun) -> str:
        with self._lock:
            return self.runs[run.run_id].sync_id

    def _call(self, method: str, sync_id: str, work: Callable[[], T], detail: str = "") -> T:
        if self.before is not None:
            self.before(method, sync_id)
        with self._script_lock:
            self.counts[(method, sync_id)] += 1
            count = self.counts[(method, sync_id)]
            fault = next((f for f in self.faults if f.hits(method, sync_id, count, detail)), None)
        if fault is not None and not fault.after:
            raise fault.error
        out = work()
        if fault is not None:
            raise fault.error
        return out

    # -- every call the engine makes, through the script ------------------------------------------------
    def open_run(self, spec: RunSpec, saved: Optional[Mapping[str, Any]]) -> MemoryRun:
        return self._call("open_run", spec.sync_id, lambda: super(FaultySink, self).open_run(spec, saved))

    def set_metadata(self, run: MemoryRun, info: RunInfo) -> None:
        self._call("set_metadata", self._sid(run), lambda: super(FaultySink, self).set_metadata(run, info))

    def set_config(self, run: MemoryRun, config: Mapping[str, Any]) -> List[str]:
        return self._call("set_config", self._sid(run), lambda: super(FaultySink, self).set_config(run, config))

    def send(self, run: MemoryRun, payload: List[Point]) -> int:
        sid = self._sid(run)

        def work() -> int:
            with self._script_lock:
                self.sends.update((sid, p[:4] + (repr(p[4]),)) for p in payload)
            return super(FaultySink, self).send(run, payload)
        return self._call("send", sid, work)

    def set_summary(self, run: MemoryRun, summary: Summary) -> None:
        self._call("set_summary", self._sid(run), lambda: super(FaultySink, self).set_summary(run, summary))

    def upload(self, run: MemoryRun, path: str, body: BinaryIO, size_bytes: int) -> None:
        self._call("upload", self._sid(run), lambda: super(FaultySink, self).upload(run, path, body, size_bytes),
                   detail=path)

    def set_state(self, run: MemoryRun, status: RunStatus) -> None:
        self._call("set_state", self._sid(run), lambda: super(FaultySink, self).set_state(run, status))

    def sync_group(self, group: GroupView, saved: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        return self._call("sync_group", f"group:{group.project}/{group.name}",
                          lambda: super(FaultySink, self).sync_group(group, saved))

    # -- reading back ---------------------------------------------------------------------------------
    def resent(self, sync_id: str) -> Sequence[Any]:
        """The points of ``sync_id`` sent more than once."""
        return [p for (sid, p), n in self.sends.items() if sid == sync_id and n > 1]
