"""sync_gateway: the login-node half of hpc-sync. It reads runs only through docs/run-format.md.

    from sync_gateway import Settings, Runner
    with Runner(Settings.resolve("gateway.yaml")) as runner:
        report = runner.run_pass()          # a PassReport: report.ok, report.errors, report.experiments

or the CLI, in-process: ``sync_gateway.cli.main(["sync", "--once", "--config", "gateway.yaml"])``.
Names are imported lazily, so ``sync_gateway.sources.base`` and ``sync_gateway.errors`` stay importable
without the HTTP stack.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Settings", "Runner", "PassReport", "GatewayError", "errors"]

_LAZY = {"Settings": ".settings", "Runner": ".engine.runner", "PassReport": ".engine.gateway",
         "GatewayError": ".errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name == "errors":
        import importlib

        return importlib.import_module(".errors", __name__)
    raise AttributeError(f"module 'sync_gateway' has no attribute {name!r}")
