"""The run's two appended files on the writer thread: ``history.jsonl`` (a record stream) and ``output.log``.

Both survive write errors (a full disk, a vanished directory): a failure warns once per kind, what did not
reach the disk is counted exactly for ``exit.json``, and writing is tried again at the next flush.
"""
from __future__ import annotations

import errno
import os
from typing import Any, Callable, List, Optional

from . import _format as fmt
from ._terminal import Terminal

__all__ = ["Stream", "OutputLog", "describe"]

_OPEN_BUFFER_BYTES = 1 << 20
_OUTPUT_BUFFER_BYTES = 1 << 16


def describe(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "the disk is full"
    if err.errno == errno.ENOENT:
        return "the run directory vanished"
    return err.strerror or str(err)


class Stream:
    """An append-only JSONL stream with a single writer, resilient to write errors."""

    def __init__(self, path: str, terminal: Terminal, opener: Callable[..., Any] = open):
        self.path = path
        self._terminal = terminal
        self._opener = opener
        self._file: Any = None
        self.next_seq = 0
        self._flushed_seq = 0  # every record below this seq reached the OS in a successful flush
        self.last_step: Optional[int] = None
        self.dropped = 0

    def open(self) -> int:
        """Repair a torn tail, continue seq after the last complete record; returns the bytes cut."""
        record, cut = fmt.repair_torn_tail(self.path)
        disk_next = record["seq"] + 1 if record else 0
        if disk_next < self.next_seq:  # rows we buffered never reached the disk
            self.dropped += self.next_seq - disk_next
        self.next_seq = self._flushed_seq = disk_next
        if record is not None:
            self.last_step = record.get("step")
        self._file = self._opener(self.path, "a", buffering=_OPEN_BUFFER_BYTES, encoding="utf-8",
                                  newline="\n")
        return cut

    @property
    def healthy(self) -> bool:
        return self._file is not None

    def append(self, step: int, ts_ms: int, values_json: str) -> None:
        if self._file is None:
            self.dropped += 1
            return
        try:
            self._file.write(
                f'{{"seq":{self.next_seq},"step":{step},"ts_ms":{ts_ms},"values":{values_json}}}\n'
            )
        except OSError as err:
            self.next_seq += 1
            self._fail(err)
            return
        self.next_seq += 1

    def flush(self, fsync: bool = False) -> None:
        if self._file is None:
            self._try_reopen()
            return
        try:
            self._file.flush()
            if fsync:
                os.fsync(self._file.fileno())
            os.stat(self.path)  # a vanished directory shows here; writes to an unlinked file would not
        except OSError as err:
            self._fail(err)
            return
        self._flushed_seq = self.next_seq

    def close(self) -> None:
        self.flush(fsync=True)
        if self._file is not None:
            try:
                self._file.close()
            except OSError as err:
                self._fail(err)
            self._file = None

    def _fail(self, err: OSError) -> None:
        what = describe(err)
        self._terminal.warn_once(
            f"stream-{self.path}-{err.errno}",
            f"cannot write {self.path}: {what}; training goes on, rows are dropped and counted "
            "in exit.json until writing works again",
        )
        try:
            self._file.close()
        except (OSError, ValueError, AttributeError):
            pass  # the buffer that failed to flush is abandoned
        self._file = None
        # Count what did not reach the disk now, from the disk itself when it can still be read: part of a
        # failed buffer may have been written, and repairing the torn tail tells exactly how much.
        try:
            record, _ = fmt.repair_torn_tail(self.path)
            on_disk = record["seq"] + 1 if record else 0
        except OSError:
            on_disk = self._flushed_seq
        on_disk = min(on_disk, self.next_seq)
        self.dropped += self.next_seq - on_disk
        self.next_seq = self._flushed_seq = on_disk

    def _try_reopen(self) -> None:
        if not os.path.isdir(os.path.dirname(self.path)):
            return
        try:
            self.open()
        except OSError:
            self._file = None


class OutputLog:
    """``output.log``: console text, appended. Kept in memory up to 64 KiB or the next flush, then written
    with ``os.write`` so that the bytes a failed write lost are known exactly (``dropped_bytes``)."""

    def __init__(self, path: str, terminal: Terminal):
        self.path = path
        self._terminal = terminal
        self._fd: Optional[int] = None
        self._parts: List[bytes] = []
        self._buffered_bytes = 0
        self.dropped_bytes = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")  # lone surrogates from a badly decoded stream stay visible
        self._parts.append(data)
        self._buffered_bytes += len(data)
        if self._buffered_bytes >= _OUTPUT_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts, self._buffered_bytes = [], 0
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as err:
                self._lose(len(data), err)
                return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view):]
            except OSError as err:
                self._lose(len(view), err)
                self._close_fd()
                return

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as err:
                self._terminal.warn_once(f"output-fsync-{err.errno}", f"cannot fsync {self.path}: {describe(err)}")
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass  # nothing more can be lost: every byte was written or counted

    def _lose(self, size_bytes: int, err: OSError) -> None:
        self.dropped_bytes += size_bytes
        self._terminal.warn_once(
            f"output-{err.errno}",
            f"cannot write {self.path}: {describe(err)}; training goes on, console text is dropped and counted "
            "in exit.json (dropped_output_bytes) until writing works again",
        )
