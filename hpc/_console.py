"""Console capture: stdout and stderr also go to ``output.log`` without changing what the user sees.

A Python-level tee (like W&B's "wrap" mode): the original stream is written first and synchronously, the
copy is only queued for the writer thread. Output written straight to file descriptors 1 and 2 by C code
or child processes is not captured; the batch system's own output file still has it.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional

__all__ = ["Tee", "install", "uninstall"]


class Tee:
    def __init__(self, stream: Any, sink: Optional[Callable[[str], None]]):
        self._stream = stream
        self._sink = sink  # None once its run has finished: the text only passes through

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        sink = self._sink
        if text and sink is not None:
            sink(text)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, buffer, ...
        return getattr(self._stream, name)


def install(sink: Callable[[str], None]) -> tuple:
    """Tee stdout and stderr into ``sink``; returns what :func:`uninstall` needs. Runs open at the same time
    (``reinit="create_new"``) each add a tee on top of the previous one, so each gets the text."""
    originals = (sys.stdout, sys.stderr)
    tees = tuple(None if stream is None else Tee(stream, sink) for stream in originals)
    if tees[0] is not None:
        sys.stdout = tees[0]
    if tees[1] is not None:
        sys.stderr = tees[1]
    return originals + tees


def uninstall(installed: tuple) -> None:
    # Only undo our own wrapper: if something replaced it since (a newer run's tee, the user's own), leave
    # it there; our tee then only passes text through, and goes when the wrapper above it is undone.
    out, err, out_tee, err_tee = installed
    for tee in (out_tee, err_tee):
        if tee is not None:
            tee._sink = None
    if out_tee is not None and sys.stdout is out_tee:
        sys.stdout = _live(out)
    if err_tee is not None and sys.stderr is err_tee:
        sys.stderr = _live(err)


def _live(stream: Any) -> Any:
    """``stream`` without the tees of runs that have finished since it was wrapped."""
    while isinstance(stream, Tee) and stream._sink is None:
        stream = stream._stream
    return stream
