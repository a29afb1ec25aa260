"""The ``sync-gateway`` command: ``main(argv)`` runs it in-process (``python -m sync_gateway.cli``)."""
from __future__ import annotations

from sync_gateway.cli.commands import build_parser, main

__all__ = ["main", "build_parser"]
