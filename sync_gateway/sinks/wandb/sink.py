"""The W&B sink: syncs runs to W&B (cloud or W&B Server) over the official client's own wire (``_api``).

One hpc run (or one native W&B run, all its resumed fragments) is one W&B run, addressed by its run id: W&B
run ids are the client's choice, so ``UpsertBucket`` with ``name`` = the run id finds the run again after a
lost answer or a lost state instead of creating a second one. Group, job type, tags, notes and the run's
name are W&B's own fields (a group is W&B's ``groupName``: no parent run).

Exactly once rests on the gateway's own acknowledged cursor per file: the run's state holds the next line
offset of each file_stream file (``offsets``), and it moves only when the engine's ack happens (``send``
returned), in the same state write as the engine's cursor. A payload carries the offset its first line
goes to and the lines themselves, both derived from the records alone, so a re-send after a lost answer
carries the same offsets and the same content, and W&B, which places lines by offset, stores them once.
A payload whose offset is not the acknowledged one (an earlier payload of the run failed while it was
queued) is never sent: no offset is skipped or re-used for other content.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import netrc
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from sync_gateway.errors import ConfigError, ServerUnavailable
from sync_gateway.records import MetricDef, Row, RunInfo, RunStatus, Summary
from sync_gateway.settings import Settings
from sync_gateway.sinks._http import HttpClient, secret_file
from sync_gateway.sinks.base import GroupView, RunSpec, Sink, SinkRun
from sync_gateway.sinks.wandb._api import RateLimiter, WandbApi, upload_headers
from sync_gateway.sinks.wandb._doctor import wandb_doctor
from sync_gateway.sinks.wandb._names import (
    EVENTS,
    HISTORY,
    OUTPUT,
    SUMMARY,
    config_json,
    console_lines,
    events_line,
    history_line,
    media_target,
    media_value,
    run_file_name,
    summary_line,
)

__all__ = ["WandbSink", "WandbRun", "StreamPayload", "EXITCODE", "RETIRED_TAG", "DEFAULT_URL"]

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.wandb.ai"
#: run state (docs/run-format.md section 7) -> the exit code the final file_stream carries (W&B shows 0 as
#: finished, anything else as failed: a run hpc judged killed or crashed never stays "running")
EXITCODE = {"finished": 0, "failed": 1, "preempted": 143, "killed": 137, "crashed": 1}
RETIRED_TAG = "hpc-sync-retired"
MAX_LINES = 10_000           # per file_stream request ...
MAX_BYTES = 4 << 20          # ... and bytes of content: few, large requests
CONSOLE_READ_BYTES = 4 << 20
STREAM_FILE = {"history": HISTORY, "system": EVENTS}


@dataclass
class WandbRun(SinkRun):
    entity: str
    project: str
    name: str                                   # the W&B run id
    created_ms: int = 0
    offsets: Dict[str, int] = field(default_factory=dict)   # acknowledged next line offset per file
    console_bytes: int = 0       # bytes of output.log sent (complete lines)
    last_ts_ms: int = 0          # the newest acknowledged history row's time ...
    last_step: Optional[int] = None  # ... and its step: the summary's _step and _timestamp, as wandb's own
    uploaded: List[str] = field(default_factory=list)
    tags: List[str] = field(default_factory=list)
    display_name: str = ""
    metrics: List[List[Optional[str]]] = field(default_factory=list)   # define_metric: pattern, step, summary
    skipped_values: int = 0
    # in memory only: the offset after the last payload ``batches`` made (the engine prepares the next
    # payload while one is in flight); reset to the acknowledged offset when a send fails
    _next: Dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def to_state(self) -> Dict[str, Any]:
        out = asdict(self)
        out.pop("_next", None)
        return out

    def planned(self, file: str) -> int:
        return self._next.get(file, self.offsets.get(file, 0))


@dataclass(frozen=True)
class StreamPayload:
    file: str
    start: int                    # the line offset of the first line
    lines: Tuple[str, ...]
    points: int
    last_ts_ms: int
    last_step: Optional[int] = None


def api_key(settings: Settings, environ: Mapping[str, str]) -> Optional[str]:
    """server.api_key_file, else WANDB_API_KEY, else the server's entry in ~/.netrc (where ``wandb login``
    puts it)."""
    path = settings.server_options.get("api_key_file")
    if path:
        return secret_file(str(path), "server.api_key_file")
    if environ.get("WANDB_API_KEY"):
        return environ["WANDB_API_KEY"]
    host = urlsplit(settings.server_url or DEFAULT_URL).hostname or ""
    try:
        auth = netrc.netrc(environ.get("NETRC") or None).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return auth[2] if auth else None


class WandbSink(Sink[WandbRun, StreamPayload]):
    kind = "wandb"
    options = ("entity", "api_key_file", "run_requests_per_s", "project_requests_per_s")
    config_change_note = "W&B keeps the new values"

    def __init__(self, api: WandbApi, entity: Optional[str] = None):
        self.api = api
        self._entity = entity
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, environ: Optional[Mapping[str, str]] = None,
                      **http_kw: Any) -> WandbSink:
        environ = os.environ if environ is None else environ
        if not settings.server_url:
            settings = replace(settings, server_url=environ.get("WANDB_BASE_URL") or DEFAULT_URL)
        opts = settings.server_options
        key = api_key(settings, environ)
        limiter = RateLimiter(float(opts.get("run_requests_per_s", 2.0)),
                              float(opts.get("project_requests_per_s", 400.0)))
        api = WandbApi(HttpClient(settings, environ, **http_kw), HttpClient(settings, environ, **http_kw), key, limiter)
        return cls(api, opts.get("entity") or environ.get("WANDB_ENTITY") or None)

    @classmethod
    def settings_from_environ(cls, settings: Settings, environ: Mapping[str, str]) -> Settings:
        url = environ.get("WANDB_BASE_URL", "")
        if url.startswith(("http://", "https://")):  # at the environment's rank: never over the config file
            return settings.from_environ("WANDB_BASE_URL", {"server_url": url})
        return settings

    @classmethod
    def validate(cls, settings: Settings) -> None:
        super().validate(settings)  # unknown keys of the server: section
        opts = settings.server_options
        for k in ("entity", "api_key_file"):
            if k in opts and not isinstance(opts[k], str):
                raise ConfigError(f"server.{k} must be a string, not {opts[k]!r}")
        for k in ("run_requests_per_s", "project_requests_per_s"):
            v = opts.get(k, 1)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"server.{k} must be a number above 0, not {v!r}")

    # -- runs ---------------------------------------------------------------------------------
    def entity(self) -> str:
        if self._entity is None:
            with self._lock:
                if self._entity is None:
                    viewer = self.api.viewer()
                    if not viewer.get("entity"):
                        raise ConfigError("the W&B server names no default entity for this API key: set server.entity")
                    self._entity = str(viewer["entity"])
        return self._entity

    def _free_name(self, entity: str, project: str, run_id: str) -> str:
        """The run id, or after a retirement (the run was rewritten from scratch) the next ``<id>-r<k>``."""
        name, k = run_id, 1
        while True:
            bucket = self.api.resume_status(entity, project, name)
            if not bucket or RETIRED_TAG not in (bucket.get("tags") or []):
                return name
            k += 1
            name = f"{run_id}-r{k}"

    def _legacy_name(self, entity: str, info: RunInfo) -> Optional[str]:
        """The W&B run an older gateway made for this run (named by the run id alone, before root ids): the
        first one not retired, if it shows this run's name; None if there is none."""
        name, k = info.run_id, 1
        while True:
            bucket = self.api.resume_status(entity, info.project, name)
            if not bucket:
                return None
            if RETIRED_TAG not in (bucket.get("tags") or []):
                return name if (bucket.get("displayName") or None) == (info.name or None) else None
            k += 1
            name = f"{info.run_id}-r{k}"

    def open_run(self, spec: RunSpec, saved: Optional[Mapping[str, Any]]) -> WandbRun:
        if saved and saved.get("name"):
            return self.restore(saved)
        info = spec.info
        entity = self.entity()
        # The W&B run id is unique per project: the root's id in it keeps two roots' same run id apart.
        own = f"{info.run_id}-{spec.root_id}" if spec.root_id else info.run_id
        bucket = self.api.resume_status(entity, info.project, own)
        legacy = self._legacy_name(entity, info) if bucket is None and spec.legacy_id else None
        if legacy is not None:  # adopted (W&B names cannot change: it keeps its name), so nothing is duplicated
            self.api.upsert_bucket(name=legacy, project=info.project, entity=entity, displayName=info.name or None)
            run = WandbRun(entity, info.project, legacy, created_ms=info.created_ms, display_name=info.name)
            run.adopted_legacy = True
            return run
        retired = bucket is not None and RETIRED_TAG in (bucket.get("tags") or [])
        name = self._free_name(entity, info.project, own) if retired else own
        # An upsert: after a lost answer the re-sent request finds the run it created, never a second one.
        self.api.upsert_bucket(name=name, project=info.project, entity=entity, displayName=info.name or None)
        return WandbRun(entity, info.project, name, created_ms=info.created_ms, display_name=info.name)

    def restore(self, saved: Mapping[str, Any]) -> WandbRun:
        return WandbRun(**{k: v for k, v in saved.items() if k in WandbRun.__dataclass_fields__ and k != "_next"})

    def retire_run(self, run: WandbRun, reason: str) -> None:
        self.api.upsert_bucket(name=run.name, project=run.project, entity=run.entity,
                               tags=sorted(set(run.tags) | {RETIRED_TAG}),
                               displayName=f"{run.display_name or run.name} (replaced)", notes=reason[:2000])

    def set_metadata(self, run: WandbRun, info: RunInfo) -> None:
        run.tags = list(info.tags)
        run.display_name = info.name
        run.metrics = [[m.pattern, m.step_metric, m.summary] for m in info.metrics]
        self.api.upsert_bucket(
            name=run.name, project=run.project, entity=run.entity, displayName=info.name or None,
            groupName=info.group, jobType=info.job_type, tags=list(info.tags), notes=info.notes, host=info.host,
            program=info.program, commit=info.git.get("commit"), repo=info.git.get("remote"))

    def set_config(self, run: WandbRun, config: Mapping[str, Any]) -> List[str]:
        metrics = [MetricDef(p or "", s, m) for p, s, m in run.metrics]
        self.api.upsert_bucket(name=run.name, project=run.project, entity=run.entity,
                               config=config_json(config, metrics))
        return []

    # -- streams: exactly once by the acknowledged line offset ---------------------------------------
    def batches(self, run: WandbRun, stream: str, rows: Sequence[Row],
                metrics: Sequence[Any] = ()) -> Iterator[Tuple[int, StreamPayload]]:
        file = STREAM_FILE.get(stream, EVENTS)
        make = history_line if file == HISTORY else events_line
        lines: List[str] = []
        size, points, last_ts, last_step = 0, 0, 0, None
        for i, row in enumerate(rows):
            line = make(row, run.created_ms)
            if line is None:
                continue
            lines.append(line)
            size += len(line) + 1
            points += len(row.values)
            last_ts = max(last_ts, row.ts_ms)
            last_step = row.step if last_step is None else max(last_step, row.step)
            if len(lines) >= MAX_LINES or size >= MAX_BYTES:
                yield i + 1, self._payload(run, file, lines, points, last_ts, last_step)
                lines, size, points = [], 0, 0
        if lines:
            yield len(rows), self._payload(run, file, lines, points, last_ts, last_step)

    @staticmethod
    def _payload(run: WandbRun, file: str, lines: List[str], points: int, last_ts: int,
                 last_step: Optional[int]) -> StreamPayload:
        start = run.planned(file)
        run._next[file] = start + len(lines)
        return StreamPayload(file, start, tuple(lines), points, last_ts, last_step)

    def send(self, run: WandbRun, payload: StreamPayload) -> int:
        acked = run.offsets.get(payload.file, 0)
        if payload.start != acked:
            run._next[payload.file] = acked
            raise ServerUnavailable(f"{run.name}/{payload.file}: lines prepared for offset {payload.start}, but the "
                                    f"acknowledged offset is {acked} (an earlier request failed): not sent; the "
                                    f"next pass sends from {acked}")
        try:
            self.api.file_stream(run.entity, run.project, run.name,
                                 {"files": {payload.file: {"offset": payload.start, "content": list(payload.lines)}}})
        except Exception:
            run._next[payload.file] = acked
            raise
        run.offsets[payload.file] = acked + len(payload.lines)
        if payload.file == HISTORY:
            _saw_row(run, payload.last_step, payload.last_ts_ms)
        return payload.points

    def _append(self, run: WandbRun, file: str, lines: List[str]) -> None:
        """Send lines of ``file`` outside the engine's streams (console, media rows), in requests of at most
        MAX_LINES; each request's offset is the acknowledged one, which moves after each answer."""
        for i in range(0, len(lines), MAX_LINES):
            part = lines[i:i + MAX_LINES]
            start = run.offsets.get(file, 0)
            self.api.file_stream(run.entity, run.project, run.name,
                                 {"files": {file: {"offset": start, "content": part}}})
            run.offsets[file] = start + len(part)
            run._next[file] = run.offsets[file]

    def set_summary(self, run: WandbRun, summary: Summary) -> None:
        last = None if run.last_step is None else (run.last_step, run.last_ts_ms / 1000.0)
        line = summary_line(summary, max(0, summary.version_ms - run.created_ms) / 1000.0, last)
        self.api.file_stream(run.entity, run.project, run.name, {"files": {SUMMARY: {"offset": 0, "content": [line]}}})

    # -- files ---------------------------------------------------------------------------------
    def upload(self, run: WandbRun, path: str, body: BinaryIO, size_bytes: int) -> None:
        if path == OUTPUT:
            self._console(run, body, size_bytes)
            return
        target = media_target(path)
        if target is not None:
            self._media(run, target, path, body, size_bytes)
            return
        self._put_file(run, run_file_name(path), body, size_bytes)

    def _put_file(self, run: WandbRun, name: str, body: BinaryIO, size_bytes: int) -> None:
        res = self.api.create_run_files(run.entity, run.project, run.name, [name])
        headers = upload_headers(res.get("uploadHeaders"))
        urls = {f.get("name"): f.get("uploadUrl") for f in res.get("files") or [] if isinstance(f, dict)}
        if not urls.get(name):
            raise ServerUnavailable(f"CreateRunFiles gave no upload URL for {name}")
        body.seek(0)
        self.api.put(str(urls[name]), headers, body, size_bytes)
        if name not in run.uploaded:
            run.uploaded.append(name)

    def _console(self, run: WandbRun, body: BinaryIO, size_bytes: int) -> None:
        """New complete lines of output.log, from the byte offset already sent (the file only grows)."""
        if size_bytes < run.console_bytes:
            log.warning("%s: output.log shrank below what was sent (%d < %d bytes): not sent again", run.name,
                        size_bytes, run.console_bytes)
            return
        while run.console_bytes < size_bytes:
            body.seek(run.console_bytes)
            data = body.read(min(CONSOLE_READ_BYTES, size_bytes - run.console_bytes))
            cut = data.rfind(b"\n")
            if cut < 0:
                if len(data) < CONSOLE_READ_BYTES:
                    return  # a partial last line: sent once it is complete
                cut = len(data) - 1  # a line longer than a read: sent in pieces
            text = data[:cut].decode("utf-8", "replace")
            # The file has no per-line times; the run's creation time is the one time that a re-send after a
            # lost state gives again, so the lines at an offset are always the same bytes.
            self._append(run, OUTPUT, console_lines(text, run.created_ms))
            run.console_bytes += cut + 1

    def _media(self, run: WandbRun, target: Tuple[str, str, int, int, str], dest: str, body: BinaryIO,
               size_bytes: int) -> None:
        """A media payload: its file under W&B's media layout, and a history row at its step whose value
        is the SDK's reference to it (what W&B's media panels read)."""
        kind, key, step, ts_ms, wpath = target
        body.seek(0)
        digest, head, payload = hashlib.sha256(), b"", None
        small = io.BytesIO() if kind in ("table", "histogram") and size_bytes <= 16 << 20 else None
        left = size_bytes
        while left > 0:
            chunk = body.read(min(1 << 20, left))
            if not chunk:
                break
            if not head:
                head = chunk[:32]
            digest.update(chunk)
            if small is not None:
                small.write(chunk)
            left -= len(chunk)
        if small is not None:
            try:
                payload = json.loads(small.getvalue().decode("utf-8"))
            except ValueError:
                payload = None
        if wpath:
            self._put_file(run, wpath, body, size_bytes)
        value = media_value(kind, wpath, digest.hexdigest(), size_bytes, head, dest.rsplit(".", 1)[-1], payload)
        line = history_line(Row(step, ts_ms, {key: value}, end=None), run.created_ms)  # type: ignore[arg-type]
        if line is not None:
            self._append(run, HISTORY, [line])
            _saw_row(run, step, ts_ms)

    # -- state and groups ------------------------------------------------------------------------
    def set_state(self, run: WandbRun, status: RunStatus) -> None:
        if status.state == "active":
            self.api.upsert_bucket(name=run.name, project=run.project, entity=run.entity, state="running")
            return
        body: Dict[str, Any] = {"files": {}, "complete": True, "exitcode": EXITCODE.get(status.state, 1)}
        if run.uploaded:
            body["uploaded"] = list(run.uploaded)
        if status.state == "preempted":
            body["preempting"] = True
        self.api.file_stream(run.entity, run.project, run.name, body)

    def sync_group(self, group: GroupView, saved: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        # W&B groups runs natively (groupName, sent with the metadata): no parent run to maintain.
        return dict(saved or {})

    def before_pass(self) -> None:
        self.api.http.warn_if_insecure()

    # -- diagnostics and links ----------------------------------------------------------------
    @classmethod
    def notes(cls, saved: Mapping[str, Any]) -> List[str]:
        offsets = saved.get("offsets") or {}
        return [f"W&B run {saved.get('entity')}/{saved.get('project')}/{saved.get('name')}: lines acknowledged "
                + ", ".join(f"{k} {v}" for k, v in sorted(offsets.items()))] if offsets else []

    def server_version(self) -> str:
        viewer = self.api.viewer()
        return f"W&B at {self.api.http.base_url} (API key of {viewer.get('username') or 'an unnamed user'})"

    def doctor(self, add: Callable[[bool, str, str], None]) -> None:
        wandb_doctor(self.api, self._entity, add)

    def run_url(self, run: WandbRun) -> str:
        return f"{_ui(self.api.http.base_url)}/{run.entity}/{run.project}/runs/{run.name}"

    def experiment_url(self, run: WandbRun) -> str:
        return f"{_ui(self.api.http.base_url)}/{run.entity}/{run.project}"

    def close(self) -> None:
        self.api.http.session.close()
        self.api.uploads.session.close()


def _saw_row(run: WandbRun, step: Optional[int], ts_ms: int) -> None:
    """An acknowledged history row: the newest step and time the summary reports."""
    if step is not None:
        run.last_step = step if run.last_step is None else max(run.last_step, step)
    run.last_ts_ms = max(run.last_ts_ms, ts_ms)


def _ui(base_url: str) -> str:
    # W&B cloud's API host is not its UI host; a W&B Server serves both on one URL.
    return "https://wandb.ai" if base_url.rstrip("/") == DEFAULT_URL else base_url
