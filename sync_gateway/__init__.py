"""sync_gateway: the login-node half of hpc-sync. It reads runs only through docs/run-format.md.

    from sync_gateway import Settings, Runner
    with Runner(Settings.resolve("gateway.yaml")) as runner:
        report = runner.run_pass()          # a PassReport: report.ok, report.errors, report.experiments

or the CLI, in-process: ``sync_gateway.main(["sync", "--once", "--config", "gateway.yaml"])``.

The layers (docs/gateway.md, "Layers"): ``sources`` (transport) -> ``readers`` (one per run format) ->
``engine`` (cursors, acks, leases) -> ``sinks`` (one per server kind), speaking the neutral records of
:mod:`sync_gateway.records`; ``airgap`` and ``cli`` sit on top. This namespace is the public API; names are
imported lazily, so ``import sync_gateway`` (and ``sync_gateway.errors``, ``sync_gateway.records``) stays
importable without the HTTP stack.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List

# A library logs, the application decides where to (only the CLI configures handlers).
logging.getLogger(__name__).addHandler(logging.NullHandler())

#: public name -> the module that defines it
_LAZY: Dict[str, str] = {
    # running passes
    "Settings": "settings", "Runner": "engine.runner", "PassReport": "engine.gateway", "main": "cli.commands",
    # the neutral records
    "RunRef": "records", "FileStat": "records", "RunInfo": "records", "MetricDef": "records", "Row": "records",
    "StreamChunk": "records", "Position": "records", "Summary": "records", "FileEntry": "records",
    "RunStatus": "records", "Snapshot": "records", "RUN_STATES": "records",
    "root_id": "records", "run_key": "records", "ROOT_ID": "records",
    # extending: a source, a reader, a sink
    "Source": "sources.base", "open_source": "sources", "LocalSource": "sources.local",
    "Reader": "readers.base", "reader_for": "readers", "discover_runs": "readers",
    "Sink": "sinks.base", "SinkRun": "sinks.base", "RunSpec": "sinks.base", "GroupView": "sinks.base",
    "GroupMember": "sinks.base", "make_sink": "sinks", "MemorySink": "sinks.memory",
    # errors (all of them are in sync_gateway.errors)
    "GatewayError": "errors", "RetryableError": "errors", "PermanentError": "errors", "ConfigError": "errors",
}
_MODULES = ("errors", "records")

__all__ = sorted(_LAZY) + list(_MODULES)


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # once resolved, a plain attribute
        return value
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'sync_gateway' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
