"""Console capture: stdout and stderr also go to ``output.log`` without changing what the user sees.

A Python-level tee (like W&B's "wrap" mode): the original stream is written first and synchronously, the
copy is only queued for the writer thread. Output written straight to file descriptors 1 and 2 by C code
or child processes is not captured; the batch system's own output file still has it.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

__all__ = ["Tee", "install", "uninstall"]


class Tee:
    def __init__(self, stream: Any, sink: Callable[[str], None]):
        self._stream = stream
        self._sink = sink

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        if text:
            self._sink(text)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, buffer, ...
        return getattr(self._stream, name)


def install(sink: Callable[[str], None]) -> tuple:
    originals = (sys.stdout, sys.stderr)
    if sys.stdout is not None:
        sys.stdout = Tee(sys.stdout, sink)
    if sys.stderr is not None:
        sys.stderr = Tee(sys.stderr, sink)
    return originals


def uninstall(originals: tuple) -> None:
    # Only undo our own wrapper: if something replaced it since, leave theirs alone.
    if isinstance(sys.stdout, Tee):
        sys.stdout = originals[0]
    if isinstance(sys.stderr, Tee):
        sys.stderr = originals[1]
