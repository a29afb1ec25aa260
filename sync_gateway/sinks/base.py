"""The interface every tracking-server backend implements (MLflow now; W&B and bundles next).

A sink owns every rule of its server: key character sets and lengths, units, limits, what a summary, a
group, a config change or a run state becomes, and its own identifiers, which it keeps in the small
JSON-able per-run state the engine stores for it (:meth:`SinkRun.to_state`). The engine only moves
cursors after a sink acknowledged (``send`` returned).

Threads: the engine syncs up to ``workers`` runs at once, so a sink's methods are called from several
threads: different runs at the same time, one run never concurrently (its calls come in order, a batch's
``send`` possibly from another thread than its ``batches``). Whatever a sink shares across runs (caches,
counters, a connection pool of at least ``2 x workers`` connections) must be safe for that.

To add a sink: subclass :class:`Sink` in ``sinks/<kind>/sink.py`` (a package, with its server's client beside
it), register it in ``sinks/__init__.py`` and
make it pass ``tests/gateway/test_sink_contract.py`` (docs/gateway.md, "Adding a sink").
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import (
    Any,
    BinaryIO,
    Callable,
    ClassVar,
    Dict,
    Generic,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

from sync_gateway.errors import ConfigError
from sync_gateway.records import Row, RunInfo, RunStatus, Summary
from sync_gateway.settings import Settings

__all__ = ["Sink", "SinkRun", "RunSpec", "GroupMember", "GroupView", "Check", "RunT", "PayloadT"]

#: one doctor line: (ok, name, detail)
Check = Tuple[bool, str, str]


@dataclass
class RunSpec:
    """What a sink needs to find or create the server-side run of one run.

    ``sync_id`` is the run's identity, ``<root id>/<project>/<run_id>`` (engine/identity.py): the same
    project/run id under two roots are two server runs. ``legacy_id`` (``<project>/<run_id>``, the sync id
    of gateways before root ids) is set when this run may own a server run an older gateway made: a sink
    that finds no server run by ``sync_id`` looks for one by ``legacy_id`` and adopts it (moving it to
    ``sync_id`` where its server can, and saying so by :attr:`SinkRun.adopted_legacy`), never creating one
    under it. A sink whose server tags runs with their sync id moves a run from ``saved`` that carries
    another one (a state from before root ids) to ``sync_id``."""

    sync_id: str
    info: RunInfo
    root_id: str = ""                  # the root's id, for a sink that must build a server id of its own
    legacy_id: Optional[str] = None


class SinkRun(abc.ABC):
    """A sink's handle on one server-side run; its state is stored by the engine between passes."""

    #: Set by :meth:`Sink.open_run` when the server run in the saved state could not be used and another
    #: one is returned (it lost a race against a duplicate, it vanished from the server): why, for the
    #: log and ``status``. The engine then sends the whole run again (the server stores nothing twice).
    replaced: Optional[str] = None
    #: Set by :meth:`Sink.open_run` when it adopted the server run of ``RunSpec.legacy_id``.
    adopted_legacy: bool = False

    @abc.abstractmethod
    def to_state(self) -> Dict[str, Any]:
        """A JSON-able dict that :meth:`Sink.restore` turns back into this handle."""


@dataclass(frozen=True)
class GroupMember:
    key: str                     # the run's sync id, "<root id>/<project>/<run_id>"
    state: str                   # one of readers.base.RUN_STATES
    start_ms: int
    end_ms: Optional[int]
    run: SinkRun


@dataclass(frozen=True)
class GroupView:
    """A group (a job's ranks, an array, a sweep) and what is known of its members after a pass."""

    project: str
    name: str
    members: Sequence[GroupMember] = field(default_factory=tuple)


#: a sink's own handle on a server run, and the payload its ``batches`` make and its ``send`` takes
RunT = TypeVar("RunT", bound=SinkRun)
PayloadT = TypeVar("PayloadT")


class Sink(abc.ABC, Generic[RunT, PayloadT]):
    """One server kind. Generic over its run handle and its batch payload (``MlflowSink(Sink[MlflowRun,
    List[dict]])``): the engine holds a ``Sink[Any, Any]`` and passes back only what the sink gave it."""

    #: the ``server.kind`` that selects this sink
    kind: ClassVar[str]
    #: keys of the config's ``server:`` section this sink accepts besides ``kind`` and ``url``
    options: ClassVar[Sequence[str]] = ()
    #: what happened to config keys that :meth:`set_config` reported as not changed (for the warning)
    config_change_note: ClassVar[str] = "the server keeps their first values"

    # -- configuration ------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings, environ: Optional[Mapping[str, str]] = None,
                      **kw: Any) -> Sink:
        """The sink for resolved settings; ``environ`` defaults to ``os.environ``."""

    @classmethod
    def settings_from_environ(cls, settings: Settings, environ: Mapping[str, str]) -> Settings:
        """Apply this server's own environment variables, each through :meth:`Settings.from_environ` (which
        keeps them below the config file and explicit arguments). Default: none."""
        return settings

    @classmethod
    def validate(cls, settings: Settings) -> None:
        """Raise ConfigError for a setting this sink cannot work with. The default refuses keys of the
        ``server:`` section not in :attr:`options`; a sink that overrides it calls it too."""
        unknown = sorted(set(settings.server_options) - set(cls.options))
        if unknown:
            valid = ", ".join(("kind", "url") + tuple(cls.options))
            raise ConfigError(f"server: unknown key(s) {', '.join(unknown)}; valid keys for server.kind "
                              f"{settings.server_kind} are: {valid}")

    # -- runs ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def open_run(self, spec: RunSpec, saved: Optional[Mapping[str, Any]]) -> RunT:
        """The server run of ``spec``: from ``saved`` (this sink's stored state), else found again by
        ``spec.sync_id`` (the state was lost), else by ``spec.legacy_id`` when it is set, else created.
        MUST never create a second server run for
        a sync_id that already has one: creation is not retried blindly after a lost answer, and two
        gateways racing converge on one deterministic winner (see :attr:`SinkRun.replaced`). Raises
        :class:`~sync_gateway.errors.RunDeleted` when a user deleted the server run."""

    @abc.abstractmethod
    def retire_run(self, run: RunT, reason: str) -> None:
        """Detach ``run`` from its sync id but keep what it holds (the run was rewritten from scratch:
        its old content stays on the server, marked with ``reason``); the next ``open_run(spec, None)``
        creates a new server run."""

    @abc.abstractmethod
    def restore(self, saved: Mapping[str, Any]) -> RunT:
        """The handle whose :meth:`SinkRun.to_state` gave ``saved``."""

    @abc.abstractmethod
    def set_metadata(self, run: RunT, info: RunInfo) -> None:
        """Store (or update) the run's metadata: name, user, tags, notes, source, scheduler fields."""

    @abc.abstractmethod
    def set_config(self, run: RunT, config: Mapping[str, Any]) -> List[str]:
        """Store the run's configuration (the whole, current document); return the keys the server
        could not change (they are reported, never silently lost)."""

    @abc.abstractmethod
    def batches(self, run: RunT, stream: str, rows: Sequence[Row],
                metrics: Sequence[Any] = ()) -> Iterator[Tuple[int, PayloadT]]:
        """Split ``rows`` of ``stream`` (``history`` or ``system``) into requests: yields ``(n, payload)``
        where the first ``n`` rows are fully covered once this payload and the ones before it are sent.
        Pure (no I/O): the engine prepares the next batch while the previous one is in flight.
        ``metrics`` are the run's define_metric declarations."""

    @abc.abstractmethod
    def send(self, run: RunT, payload: PayloadT) -> int:
        """Send one payload from :meth:`batches`; return how many points it carried (acknowledged: the
        engine moves the cursor past them). Sending the same payload again MUST NOT store a second copy.
        A sink may keep a payload in its run handle instead, to send it with a later request, at the latest
        in :meth:`end_run`: the engine saves the handle's state with the cursor after each acknowledgement,
        so what is held survives a stop (the MLflow sink holds a stream's tail for the run's final batch)."""

    @abc.abstractmethod
    def set_summary(self, run: RunT, summary: Summary) -> None:
        """Store the summary (only what differs from the last logged values matters)."""

    @abc.abstractmethod
    def upload(self, run: RunT, path: str, body: BinaryIO, size_bytes: int) -> None:
        """Store (or replace) the file ``path`` of the run: ``size_bytes`` read from the seekable binary
        stream ``body`` (streamed, never read whole; seek(0) to send it again)."""

    @abc.abstractmethod
    def set_state(self, run: RunT, status: RunStatus) -> None:
        """Record the run's state (``active``, ``finished``, ``failed``, ``preempted``, ``killed``,
        ``crashed``) and, for an ended run, its end time."""

    def end_run(self, run: RunT) -> None:
        """Called once the run's sync in this pass is done (after its state, whether or not that was sent).
        A sink may hold metadata, config, summary values, tags and payloads it was given to send them with a
        later request, keeping them in its run state (saved with the cursors); it sends what it still holds
        now. Default: nothing."""

    @abc.abstractmethod
    def sync_group(self, group: GroupView, saved: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        """Make the server show ``group`` (called after each pass with every member known so far);
        return this sink's state for the group (given back as ``saved`` next time)."""

    # -- the pass ------------------------------------------------------------------------------
    def before_pass(self) -> None:
        """Called once at the start of every pass, by whichever command runs it (sync, daemon, import):
        e.g. say loudly that TLS verification is off. Default: nothing."""

    # -- diagnostics and links ----------------------------------------------------------------
    @classmethod
    def notes(cls, saved: Mapping[str, Any]) -> List[str]:
        """What ``status`` shows about a run from this sink's saved state (e.g. values skipped)."""
        return []

    @abc.abstractmethod
    def server_version(self) -> str:
        """The server's version string."""

    def doctor(self, add: Callable[[bool, str, str], None]) -> None:
        """``sync-gateway doctor``'s checks of the server itself (version, auth), one ``add`` each."""
        try:
            add(True, "server", self.server_version())
        except Exception as e:  # noqa: BLE001 - doctor reports whatever the check raised, as one line
            add(False, "server", f"{e.__class__.__name__}: {e}")

    def run_url(self, run: RunT) -> str:
        return ""

    def experiment_url(self, run: RunT) -> str:
        return ""

    def close(self) -> None:
        pass
