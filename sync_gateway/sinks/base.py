"""The small interface a tracking-server backend implements (MLflow now, W&B later)."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Dict, List, Optional

__all__ = ["Sink", "ServerRun", "RunSpec", "Point"]


@dataclass(frozen=True)
class Point:
    key: str
    value: float
    step: int
    ts_ms: int


@dataclass
class RunSpec:
    """What the sink needs to find or create the server-side run of one hpc-sync run."""

    project: str
    sync_id: str                 # unique per run (or per group parent): the value of the server tag
    name: str
    start_ms: int
    tags: Dict[str, str] = field(default_factory=dict)
    parent: Optional["ServerRun"] = None


@dataclass(frozen=True)
class ServerRun:
    run_id: str
    experiment_id: str
    artifact_uri: str = ""


class Sink(abc.ABC):
    #: the most points one :meth:`log_points` call may carry
    max_points: int = 1000

    @abc.abstractmethod
    def find_or_create(self, spec: RunSpec) -> ServerRun:
        """Find the run tagged with ``spec.sync_id`` (state may have been lost) or create it."""

    @abc.abstractmethod
    def log_points(self, run: ServerRun, points: List[Point]) -> None:
        """Store points; sending the same point again MUST NOT store a second copy."""

    @abc.abstractmethod
    def log_params(self, run: ServerRun, params: Dict[str, str]) -> Dict[str, str]:
        """Store params; return those the server refused to change (``key -> value it keeps``)."""

    @abc.abstractmethod
    def set_tags(self, run: ServerRun, tags: Dict[str, str]) -> None:
        """Set (or overwrite) tags."""

    @abc.abstractmethod
    def set_state(self, run: ServerRun, state: str, end_ms: Optional[int]) -> None:
        """``state``: RUNNING, FINISHED, FAILED or KILLED."""

    @abc.abstractmethod
    def upload(self, run: ServerRun, path: str, data: bytes) -> None:
        """Store (or replace) the artifact ``path`` of the run."""

    @abc.abstractmethod
    def server_version(self) -> str:
        """The server's version string (for ``doctor``)."""

    def run_url(self, run: ServerRun) -> str:
        return ""

    def experiment_url(self, run: ServerRun) -> str:
        return ""

    def close(self) -> None:
        pass
