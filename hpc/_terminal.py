"""hpc-sync's own terminal output: one prefixed line per message, silenced by HPCSYNC_SILENT=true.

Library code also logs to the ``hpc`` logger (NullHandler by default), so applications that configure
logging get the same messages there.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Set

__all__ = ["Terminal", "logger"]

logger = logging.getLogger("hpc")
logger.addHandler(logging.NullHandler())


class Terminal:
    def __init__(self, silent: bool):
        self.silent = silent
        self._once: Set[str] = set()
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: a new lock (another thread may have held this one at the fork), and warnings
        seen in the parent are seen again here, where they were never printed."""
        self._lock = threading.Lock()
        self._once = set()

    def info(self, message: str) -> None:
        logger.info(message)
        if not self.silent:
            self._print(message)

    def warn(self, message: str) -> None:
        logger.warning(message)
        if not self.silent:
            self._print(f"warning: {message}")

    def warn_once(self, kind: str, message: str) -> bool:
        """Warn the first time ``kind`` happens; later occurrences are only counted by the caller."""
        with self._lock:
            if kind in self._once:
                return False
            self._once.add(kind)
        self.warn(message)
        return True

    @staticmethod
    def _print(text: str) -> None:
        stream = sys.stderr
        if stream is None:
            return
        try:
            stream.write(f"hpc: {text}\n")
        except (OSError, ValueError):
            pass  # a closed or broken stderr must not crash training
