"""The background writer: the one thread that turns queued calls into files in the run directory.

``log()`` only appends a tuple to a deque (thread-safe, never blocks). This thread converts values,
serialises rows, appends them to ``history.jsonl`` and flushes at least every ``flush_interval_s``; it
refreshes the heartbeat, rewrites small documents atomically, copies saved files and finally writes
``exit.json``, last. I/O errors (a full disk, a vanished directory) become one warning each and a count of
dropped rows: they never reach the training loop.
"""
from __future__ import annotations

import errno
import fnmatch
import glob as globlib
import math
import os
import shutil
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import _format as fmt
from ._code import capture_git, ignored
from ._terminal import Terminal
from ._values import flatten_row, plain_config

__all__ = ["Stream", "Writer", "ROW", "TEXT"]

ROW, TEXT, CONFIG, SUMMARY_SET, SUMMARY_DEL, DEFINE, SAVE, SYNC, FINISH = range(9)
_OPEN_BUFFER_BYTES = 1 << 20


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
        what = "the disk is full" if err.errno == errno.ENOSPC else (
            "the run directory vanished" if err.errno == errno.ENOENT else str(err))
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


class Writer(threading.Thread):
    def __init__(self, run_dir: str, meta: Dict[str, Any], history: Stream, settings: Any,
                 terminal: Terminal, summary_state: Dict[str, Any], config: Dict[str, Any],
                 capture_code: bool, wall_clock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic):
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
        # Summary state: last values, manual values, policy accumulators.
        self.last: Dict[str, Any] = dict(summary_state.get("last", {}))
        self.manual: Dict[str, Any] = dict(summary_state.get("manual", {}))
        self._acc: Dict[str, List[float]] = {k: list(v) for k, v in summary_state.get("acc", {}).items()}
        self._policy_cache: Dict[str, Optional[Tuple[str, Optional[str]]]] = {}
        self._summary_dirty = False
        self._rejected: set = set()
        self._pending_step: Optional[int] = None
        self._pending: Dict[str, Any] = {}
        self._pending_ts = 0
        self._end_saves: List[Tuple[str, str]] = []
        self._output: Any = None
        self._output_failed = False
        self.outcome: Optional[Dict[str, Any]] = None
        self.last_step: Optional[int] = history.last_step
        self.rows_written = 0

    # ---- the loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        if self._capture_code:
            self._guard(self._capture)
        self._guard(self._heartbeat)
        poll_s = min(0.1, self._settings.flush_interval_s)
        next_flush = self._clock() + self._settings.flush_interval_s
        next_beat = self._clock() + self._settings.heartbeat_interval_s
        while True:
            finish = self._guard(self._drain)
            now = self._clock()
            if finish is not None:
                self._guard(lambda: self._finish(*finish))
                return
            if now >= next_flush:
                self._guard(self._flush)
                next_flush = now + self._settings.flush_interval_s
            if now >= next_beat:
                self._guard(self._write_documents)
                self._guard(self._heartbeat)
                next_beat = now + self._settings.heartbeat_interval_s
            self.wake.wait(poll_s)
            self.wake.clear()

    def _guard(self, fn: Callable[[], Any]) -> Any:
        # The writer must outlive any single failure: report it once per kind and keep going.
        try:
            return fn()
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
        while queue:
            item = queue.popleft()
            kind = item[0]
            if kind == ROW:
                self._row(item)
            elif kind == TEXT:
                self._text(item[1])
            elif kind == FINISH:
                return item[1:]
            else:
                self._other(item)
        return None

    # ---- rows -----------------------------------------------------------------------------------------
    def _row(self, item: tuple) -> None:
        _, step, ts_ms, data, commit = item
        if self._pending_step is not None and step != self._pending_step:
            self._write_pending()
        self._pending_step = step
        self._pending_ts = ts_ms
        flatten_row(data, self._pending, self._reject)
        if commit:
            self._write_pending()

    def _reject(self, key: str, why: str) -> None:
        if key not in self._rejected:
            self._rejected.add(key)
            self._terminal.warn(f"dropping key {key!r}: {why}; the rest of the row is written")

    def _write_pending(self) -> None:
        values, step = self._pending, self._pending_step
        self._pending, self._pending_step = {}, None
        if not values or step is None:
            return
        self._history.append(step, self._pending_ts, fmt.encode_values(values))
        self.rows_written += 1
        self.last_step = step
        self.last.update(values)
        if self._meta.get("metrics"):
            self._accumulate(values)
        self._summary_dirty = True

    def _policy(self, key: str) -> Optional[Tuple[str, Optional[str]]]:
        try:
            return self._policy_cache[key]
        except KeyError:
            pass
        found = None
        for decl in self._meta.get("metrics", ()):
            if decl["name"] == key or fnmatch.fnmatchcase(key, decl["name"]):
                found = (decl.get("summary") or "last", decl.get("step_metric"))
                break
        self._policy_cache[key] = found
        return found

    def _accumulate(self, values: Dict[str, Any]) -> None:
        for key, value in values.items():
            policy = self._policy(key)
            if policy is None or policy[0] == "last":
                continue
            if type(value) not in (int, float) or (type(value) is float and math.isnan(value)):
                continue
            acc = self._acc.get(key)
            if acc is None:
                self._acc[key] = [1, value, value, value]  # count, sum, min, max
            else:
                acc[0] += 1
                acc[1] += value
                acc[2] = min(acc[2], value)
                acc[3] = max(acc[3], value)

    def summary_values(self) -> Dict[str, Any]:
        values = dict(self.last)
        for key, (count, total, low, high) in self._acc.items():
            policy = self._policy(key)
            if policy is None:
                continue
            values[key] = {"min": low, "max": high, "mean": total / count if count else None}.get(
                policy[0], values.get(key))
        values.update(self.manual)
        return values

    def summary_document(self) -> Dict[str, Any]:
        policies = {}
        for key in self._acc:
            policy = self._policy(key)
            if policy and policy[0] != "last":
                policies[key] = policy[0]
        return {"values": self.summary_values(), "set_by_hand": sorted(self.manual),
                "policies": policies, "last": self.last, "accumulators": self._acc}

    # ---- everything else ------------------------------------------------------------------------------
    def _other(self, item: tuple) -> None:
        kind = item[0]
        if kind == CONFIG:
            self._config = plain_config(item[1])
            self._config_dirty = True
        elif kind == SUMMARY_SET:
            self.manual[item[1]] = plain_config(item[2])
            self._summary_dirty = True
        elif kind == SUMMARY_DEL:
            self.manual.pop(item[1], None)
            self.last.pop(item[1], None)
            self._acc.pop(item[1], None)
            self._summary_dirty = True
        elif kind == DEFINE:
            self._meta.setdefault("metrics", []).append(item[1])
            self._policy_cache.clear()
            self._meta_dirty = True
        elif kind == SAVE:
            _, pattern, base, policy = item
            if policy == "end":
                self._end_saves.append((pattern, base))
            else:
                self._save(pattern, base)
        elif kind == SYNC:
            item[1].set()

    def _text(self, text: str) -> None:
        if self._output is None:
            if self._output_failed:
                return
            try:
                self._output = open(os.path.join(self._dir, fmt.OUTPUT), "a", encoding="utf-8",
                                    errors="replace", buffering=1 << 16)
            except OSError:
                self._output_failed = True  # console capture is best effort; rows matter more
                return
        try:
            self._output.write(text)
        except OSError:
            self._output = None

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

    def _capture(self) -> None:
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
        self._write_documents()

    def _heartbeat(self) -> None:
        fmt.atomic_write_json(os.path.join(self._dir, fmt.HEARTBEAT), {
            "ts_ms": int(self._wall() * 1000), "attempt": self._meta["attempt"],
            "pid": os.getpid(), "host": self._meta.get("host")}, fsync=False)

    def _flush(self) -> None:
        self._history.flush()
        if self._output is not None:
            try:
                self._output.flush()
            except OSError:
                self._output = None

    def _write_documents(self, fsync: bool = True) -> None:
        if self._meta_dirty:
            self._meta_dirty = False
            fmt.atomic_write_json(os.path.join(self._dir, fmt.RUN_JSON), self._meta, fsync=fsync)
        if self._config_dirty:
            self._config_dirty = False
            fmt.atomic_write_json(os.path.join(self._dir, fmt.CONFIG), self._config, fsync=fsync)
        if self._summary_dirty:
            self._summary_dirty = False
            fmt.atomic_write_json(os.path.join(self._dir, fmt.SUMMARY), self.summary_document(),
                                  fsync=fsync)

    def _finish(self, exit_code: int, reason: str, dropped_in_caller: int) -> None:
        self._write_pending()
        for pattern, base in self._end_saves:
            self._guard(lambda: self._save(pattern, base))
        self._history.close()
        if self._output is not None:
            self._guard(self._output.close)
            self._output = None
        self._guard(self._write_documents)
        self.outcome = {
            "attempt": self._meta["attempt"], "exit_code": int(exit_code), "reason": reason,
            "end_ms": int(self._wall() * 1000), "dropped_rows": self._history.dropped + dropped_in_caller,
            "last_step": self.last_step, "history_records": self._history.next_seq,
        }
        fmt.atomic_write_json(os.path.join(self._dir, fmt.EXIT), self.outcome)
