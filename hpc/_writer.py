"""The background writer: the one thread that turns queued calls into files in the run directory.

``log()`` only appends a complete row to a deque (thread-safe, never blocks). This thread converts values,
serialises rows, appends them to ``history.jsonl`` and flushes at least every ``flush_interval_s``; it
refreshes the heartbeat, rewrites small documents atomically, copies saved files and finally writes
``exit.json``, last, into space reserved for it at the start. I/O errors (a full disk, a vanished directory)
become one warning each and a count of dropped rows: they never reach the training loop. A document whose
write failed stays due and is written again at the next heartbeat.

``drained_bytes`` counts the queue's estimated bytes this thread has taken off it; ``log()`` compares it with
what it put on to keep the queue within ``queue_max_bytes``. One writer per counter, so neither needs a lock.
"""
from __future__ import annotations

import glob as globlib
import os
import shutil
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple, TypedDict

from . import _format as fmt
from ._code import capture_git, ignored
from ._media import Media, MediaFile
from ._metrics import add_declaration
from ._stream import OutputLog, Stream, describe
from ._summary_state import SummaryState
from ._terminal import Terminal
from ._values import flatten_row, plain_config

if TYPE_CHECKING:
    from ._settings import Settings

__all__ = ["Writer", "ROW", "TEXT"]

ROW, TEXT, CONFIG, SUMMARY_SET, SUMMARY_DEL, DEFINE, SAVE, SYNC, FINISH, COPY, SUMMARY_LAST = range(11)
# Items handled per pass before the loop looks at its clocks again: under a flood of rows the queue never
# empties, and the flush, heartbeat and document deadlines must still be met.
_DRAIN_BATCH = 5000


class CallerCounts(TypedDict):
    """What the calling side knows at finish: the rows and console bytes it dropped before they reached the
    writer (the rows that reached it, the writer counts itself: ``rows_taken``)."""

    dropped_rows: int
    dropped_output_bytes: int


class Writer(threading.Thread):
    def __init__(self, run_dir: str, meta: Dict[str, Any], history: Stream, settings: Settings,
                 terminal: Terminal, summary_state: Dict[str, Any], config: Dict[str, Any],
                 capture_code: bool, wall_clock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic, first_seq: Optional[int] = None):
        super().__init__(name="hpc-writer", daemon=True)
        self.queue: Deque[tuple] = deque()
        self.wake = threading.Event()
        self._dir = run_dir
        self._meta = meta
        self._history = history
        self._settings = settings
        self._terminal = terminal
        self._wall = wall_clock
        self._clock = clock
        self._capture_code = capture_code
        self._config = config
        self._config_dirty = False
        self._meta_dirty = False
        self.summary = SummaryState(summary_state, meta.get("metrics", ()))
        self._summary_dirty = False
        self._rejected: set = set()
        self._end_saves: List[Tuple[str, str]] = []
        self._output = OutputLog(os.path.join(run_dir, fmt.OUTPUT), terminal)
        self.outcome: Optional[Dict[str, Any]] = None
        self.last_step: Optional[int] = history.last_step
        self._first_seq = history.next_seq if first_seq is None else first_seq  # this attempt's first record
        self.drained_bytes = 0
        # Rows of this attempt given to this writer (taken off the queue, or write_row), each then written or
        # counted as dropped; rows already in the history when it opened count too (the shell commands:
        # each `hpc log` is a process of its own). exit.json's logged_rows is this plus the caller's drops.
        self.rows_taken = history.next_seq - self._first_seq
        self.rows_failed = 0  # rows that reached this thread but could not be written (every value refused)
        self._media = MediaFile(run_dir, terminal, Stream)  # media.bin + media.jsonl, opened at the first one
        self._row_media: List[Tuple[str, Any]] = []
        self._media_ok = False

    # ---- the loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        self._guard(fmt.reserve_document, os.path.join(self._dir, fmt.EXIT))
        if self._capture_code:
            self._guard(self.capture_code)
        self._guard(self.heartbeat)
        poll_s = min(0.1, self._settings.flush_interval_s)
        next_flush = self._clock() + self._settings.flush_interval_s
        next_beat = self._clock() + self._settings.heartbeat_interval_s
        while True:
            finish = self._guard(self._drain)
            now = self._clock()
            if finish is not None:
                self._guard(self.finish, *finish)
                return
            if now >= next_flush:
                self._guard(self._flush)
                next_flush = now + self._settings.flush_interval_s
            if now >= next_beat:
                self._guard(self.write_documents)
                self._guard(self.heartbeat)
                next_beat = now + self._settings.heartbeat_interval_s
            if not self.queue:
                self.wake.wait(poll_s)
                self.wake.clear()

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        # The writer must outlive any single failure: report it once per kind and keep going.
        try:
            return fn(*args)
        except OSError as err:
            self._terminal.warn_once(f"io-{fn.__name__}-{err.errno}",
                                     f"writing the run failed ({err}); training goes on")
        except Exception as err:  # noqa: BLE001 - a bug here must not kill the thread that holds the data
            self._terminal.warn_once(f"bug-{fn.__name__}-{type(err).__name__}",
                                     f"internal error in the hpc writer ({type(err).__name__}: {err}); "
                                     "please report it; training goes on")
        return None

    def _drain(self) -> Optional[tuple]:
        queue = self.queue
        for _ in range(_DRAIN_BATCH):
            if not queue:
                break
            item = queue.popleft()
            kind = item[0]
            if kind == ROW:
                self.drained_bytes += item[4]
                self.rows_taken += 1
                self._guard_row(item)
            elif kind == TEXT:
                self.drained_bytes += item[2]
                self._output.write(item[1])  # failures are counted inside, never raised
            elif kind == FINISH:
                return item[1:]
            else:
                self._guard(self._other, item)
        return None

    # ---- rows -----------------------------------------------------------------------------------------
    def _guard_row(self, item: tuple) -> None:
        history = self._history
        appended = history.next_seq + history.dropped  # moves once the row is written or counted there
        try:
            self._row(item)
        except Exception as err:  # noqa: BLE001 - a bug must cost one counted row, not the writer thread
            if history.next_seq + history.dropped == appended:
                self.rows_failed += 1
            self._terminal.warn_once(f"bug-row-{type(err).__name__}",
                                     f"internal error in the hpc writer ({type(err).__name__}: {err}); the row "
                                     "is dropped and counted in exit.json; please report it; training goes on")

    # -- the synchronous half: what the thread does for each item, called directly by the shell commands
    #    (`hpc run start`, `hpc log`, `hpc run finish`), which have no thread --------------------------
    def write_row(self, step: int, ts_ms: int, values: Dict[str, Any]) -> bool:
        """Write one row now and close the stream; False if it could not be written (counted as dropped)."""
        before = self._history.dropped
        self.rows_taken += 1
        self._row((ROW, step, ts_ms, values, 0))
        self._history.close()
        return self._history.dropped == before

    def mark_summary_changed(self) -> None:
        """The summary document is written again by the next :meth:`write_documents`."""
        self._summary_dirty = True

    def _row(self, item: tuple) -> None:
        _, step, ts_ms, data, _ = item
        values: Dict[str, Any] = {}
        row_media = self._row_media
        flatten_row(data, values, self._reject, media=self._take_media)
        if row_media:
            self._write_media(step, ts_ms)
            if not values and not self._media_ok:
                self.rows_failed += 1
                return
        elif not values:  # every value was refused (each with its warning): nothing of the row can be written
            self.rows_failed += 1
            return
        self._history.append(step, ts_ms, fmt.encode_values(values))
        self.last_step = step
        self.summary.last.update(values)
        if self._meta.get("metrics"):
            self.summary.accumulate(values)
        self._summary_dirty = True

    def _take_media(self, key: str, value: Any) -> bool:
        if not _is_media(key, value):
            return False
        self._row_media.extend((key, v) for v in (value if isinstance(value, (list, tuple)) else (value,)))
        return True

    def _write_media(self, step: int, ts_ms: int) -> None:
        """The row's media into the packed media file; a row of media only is an empty history record."""
        self._media_ok = False
        items, self._row_media[:] = list(self._row_media), []
        for key, value in items:
            try:
                self._media.add(key, step, ts_ms, value, fmt.encode_values)
                self._media_ok = True
            except OSError as err:
                self._terminal.warn_once(f"media-{err.errno}", f"cannot write the media file of {self._dir}: "
                                         f"{describe(err)}; training goes on without it")
            except Exception as err:  # noqa: BLE001 - the user's object raised while encoding: drop that key
                self._reject(key, f"encoding the {value.kind} failed ({type(err).__name__}: {err})")

    def _reject(self, key: str, why: str) -> None:
        if key not in self._rejected:
            self._rejected.add(key)
            self._terminal.warn(f"dropping key {key!r}: {why}; the rest of the row is written")

    # ---- everything else ------------------------------------------------------------------------------
    def _other(self, item: tuple) -> None:
        kind = item[0]
        if kind == CONFIG:
            self._config = plain_config(item[1])
            self._config_dirty = True
        elif kind == SUMMARY_SET:
            self.summary.manual[item[1]] = plain_config(item[2])
            self._summary_dirty = True
        elif kind == SUMMARY_LAST:  # rows dropped from the history still set the summary's last values
            values: Dict[str, Any] = {}
            flatten_row(item[1], values, lambda key, why: None, media=_is_media)
            self.summary.last.update(values)
            self._summary_dirty = True
        elif kind == SUMMARY_DEL:
            self.summary.delete(item[1])
            self._summary_dirty = True
        elif kind == DEFINE:  # (DEFINE, declaration, overwrite)
            add_declaration(self._meta.setdefault("metrics", []), item[1], item[2])
            self.summary.declarations_changed(self._meta["metrics"])
            self._meta_dirty = True
        elif kind == SAVE:
            _, pattern, base, policy = item
            if policy == "end":
                self._end_saves.append((pattern, base))
            else:
                self._save(pattern, base)
        elif kind == SYNC:
            item[1].set()
        elif kind == COPY:  # (COPY, [(source path or bytes, path under files/)], keepalive): artifacts, code
            for source, rel in item[1]:
                self._guard(self._copy, source, rel)

    def _save(self, pattern: str, base: str) -> None:
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        matches = [p for p in globlib.glob(full, recursive=True) if os.path.isfile(p)]
        if not matches:
            self._terminal.warn(f"save({pattern!r}) matched no file (relative to {base})")
        for path in matches:
            rel = os.path.relpath(path, base)
            if rel.startswith(".."):
                rel = os.path.basename(path)
            rel = rel.replace(os.sep, "/")
            if ignored(rel, self._settings.ignore_globs):
                continue
            target = os.path.join(self._dir, fmt.FILES_DIR, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = os.path.join(os.path.dirname(target), f"{fmt.TMP_PREFIX}{os.path.basename(target)}")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)

    def _copy(self, source: Any, rel: str) -> None:
        target = os.path.join(self._dir, fmt.FILES_DIR, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = os.path.join(os.path.dirname(target), f"{fmt.TMP_PREFIX}{os.path.basename(target)}")
        if isinstance(source, bytes):
            with open(tmp, "wb") as f:
                f.write(source)
        else:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def capture_code(self) -> None:
        git, diff = capture_git(self._meta.get("cwd") or os.getcwd(), self._settings.ignore_globs)
        if git is None:
            return
        self._meta["git"] = git
        self._meta_dirty = True
        if diff:
            code_dir = os.path.join(self._dir, fmt.CODE_DIR)
            os.makedirs(code_dir, exist_ok=True)
            tmp = os.path.join(code_dir, f"{fmt.TMP_PREFIX}diff.patch")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(diff)
            os.replace(tmp, os.path.join(code_dir, "diff.patch"))
        self.write_documents()

    def heartbeat(self) -> None:
        fmt.atomic_write_json(os.path.join(self._dir, fmt.HEARTBEAT), {
            "ts_ms": int(self._wall() * 1000), "attempt": self._meta["attempt"],
            "pid": os.getpid(), "host": self._meta.get("host")}, fsync=False)

    def _flush(self) -> None:
        self._history.flush()
        self._output.flush()
        self._media.flush()

    def write_documents(self, fsync: bool = True) -> None:
        # Each flag is cleared only once its document is on disk: a write that failed (a full disk) is due
        # again at the next heartbeat, and at finish.
        if self._meta_dirty:
            self._meta_dirty = not self._write_document(fmt.RUN_JSON, self._meta, fsync)
        if self._config_dirty:
            self._config_dirty = not self._write_document(fmt.CONFIG, self._config, fsync)
        if self._summary_dirty:
            self._summary_dirty = not self._write_document(fmt.SUMMARY, self.summary.document(), fsync)

    def _write_document(self, name: str, document: Dict[str, Any], fsync: bool) -> bool:
        path = os.path.join(self._dir, name)
        try:
            fmt.atomic_write_json(path, document, fsync=fsync)
        except OSError as err:
            self._terminal.warn_once(f"document-{name}-{err.errno}",
                                     f"cannot write {path}: {describe(err)}; training goes on, and it is "
                                     "written again at the next heartbeat")
            return False
        return True

    def outcome_extra(self) -> Dict[str, Any]:
        """Fields a subclass adds to (or sets in) exit.json (the MLflow door: its end time and point counts)."""
        return {}

    def finish(self, exit_code: int, reason: str, caller: CallerCounts) -> None:
        for pattern, base in self._end_saves:
            self._guard(self._save, pattern, base)
        self._guard(self._history.close)
        self._guard(self._media.close)
        self._guard(self._output.close)
        self._guard(self.write_documents)
        written = self._history.next_seq - self._first_seq
        dropped = self._history.dropped + self.rows_failed + caller["dropped_rows"]
        self.outcome = {
            "attempt": self._meta["attempt"], "exit_code": int(exit_code), "reason": reason,
            "end_ms": int(self._wall() * 1000), "last_step": self.last_step,
            "history_records": self._history.next_seq,
            "logged_rows": self.rows_taken + caller["dropped_rows"], "written_rows": written,
            "dropped_rows": dropped,
            "dropped_output_bytes": self._output.dropped_bytes + caller["dropped_output_bytes"],
        }
        self.outcome.update(self.outcome_extra())
        fmt.write_reserved(os.path.join(self._dir, fmt.EXIT), self.outcome)


def _is_media(key: str, value: Any) -> bool:
    """An ``hpc.Image``, ``Table`` or ``Histogram``, or a list of them. A row's media go to the media file
    (:meth:`Writer._take_media`); a dropped row's media are not summary values (their payloads were never
    written)."""
    return isinstance(value, Media) or (isinstance(value, (list, tuple)) and bool(value)
                                        and all(isinstance(v, Media) for v in value))
