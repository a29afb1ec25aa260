"""Recording a run from a shell script or a non-Python program: ``hpc run start``, ``hpc log``,
``hpc run finish``.

Each command is a short process that opens the run, does its one thing with the same writer code the SDK
uses (so the files are the same), and closes it. The commands of one run must not run concurrently: the
run format allows one writer per file.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from . import _format as fmt
from ._context import detect
from ._init import check_name, check_resume, load_summary_state, prepare_run_dir
from ._names import random_id
from ._settings import Settings
from ._stream import Stream
from ._terminal import Terminal
from ._values import key_problem
from ._writer import Writer
from .errors import UsageError

__all__ = ["start", "log", "finish", "parse_pairs"]


def parse_value(text: str) -> Any:
    """KEY=VALUE values: integers, floats (nan, inf too), true/false, anything else a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) or lowered.lstrip("+-") in ("nan", "inf", "infinity") else text


def parse_pairs(pairs: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{pair!r} is not KEY=VALUE (example: hpc log loss=0.25 epoch=3)")
        out[key.strip()] = parse_value(value)
    return out


def _writer_for(run_dir: str, settings: Settings, terminal: Terminal) -> Writer:
    meta = fmt.read_json(os.path.join(run_dir, fmt.RUN_JSON))
    if not isinstance(meta, dict):
        raise UsageError(f"{run_dir} is not a run directory (no run.json): start one with `hpc run start`")
    fmt.check_version(meta, run_dir)
    exit_doc = fmt.read_json(os.path.join(run_dir, fmt.EXIT))
    if exit_doc and exit_doc.get("attempt") == meta.get("attempt"):
        raise UsageError(f"run {meta.get('id')} is finished: start a new one with `hpc run start`")
    summary_state = load_summary_state(run_dir)
    history = Stream(os.path.join(run_dir, fmt.HISTORY), terminal)
    history.open()
    config = fmt.read_json(os.path.join(run_dir, fmt.CONFIG)) or {}
    attempts = meta.get("attempts") or [{}]
    return Writer(run_dir, meta, history, settings, terminal, summary_state, config, capture_code=False,
                  first_seq=attempts[-1].get("first_seq", 0))


def start(settings: Settings, name: Optional[str], job_type: Optional[str], config: Dict[str, Any],
          tags: List[str], notes: Optional[str]) -> str:
    """Create the run directory (run.json, config.json, heartbeat) and return its path."""
    terminal = Terminal(settings.silent)
    context = detect(os.environ)
    run_id = settings.run_id or context.run_id or random_id()
    check_name("project", settings.project)
    check_name("run id", run_id)
    run_dir = os.path.join(os.path.abspath(settings.root), settings.project, run_id)
    exists = check_resume(run_dir, settings.resume or (context.resume if settings.run_id is None else None))
    ready = prepare_run_dir(settings, terminal, context, run_dir, run_id, exists, name,
                            job_type, config, tags, notes)
    ready.history.close()
    fmt.reserve_document(os.path.join(run_dir, fmt.EXIT))  # `hpc run finish` can then record a full disk
    writer = Writer(run_dir, ready.meta, ready.history, settings, terminal, ready.summary_state, ready.config,
                    capture_code=False)
    if not settings.disable_code:
        writer.capture_code()  # the SDK's own code capture, here synchronously
    writer.heartbeat()
    return run_dir


def log(run_dir: str, values: Dict[str, Any], step: Optional[int], settings: Settings) -> int:
    """Append one row (at ``step``, or after the last one) and refresh summary and heartbeat."""
    terminal = Terminal(settings.silent)
    writer = _writer_for(run_dir, settings, terminal)
    last = writer.last_step
    if step is None:
        step = 0 if last is None else last + 1
    elif last is not None and step <= last:
        raise UsageError(f"step {step} is not above the run's last step {last}: steps only go up (log all "
                         "the values of one step in one `hpc log`)")
    for key in values:
        problem = key_problem(key)
        if problem:
            raise UsageError(problem)
    written = writer.write_row(step, int(time.time() * 1000), values)
    writer.write_documents()
    writer.heartbeat()
    if not written:
        raise OSError(f"could not write {os.path.join(run_dir, fmt.HISTORY)}")
    return step


def finish(run_dir: str, exit_code: int, settings: Settings) -> Dict[str, Any]:
    writer = _writer_for(run_dir, settings, Terminal(settings.silent))
    writer.mark_summary_changed()
    # Each `hpc log` wrote its row or failed with an error the script saw: nothing was dropped silently.
    writer.finish(exit_code, "finished" if exit_code == 0 else "failed",
                   {"dropped_rows": 0, "dropped_output_bytes": 0})
    return writer.outcome or {}
