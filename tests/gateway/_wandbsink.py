"""Fixtures and helpers for the W&B sink's tests: a real OpenWandb server (scripts/openwandb_server.py, in its
own venv), settings for it, and the wire as W&B would store it (:func:`replay`: lines placed by offset, as
W&B's file_stream does, which OpenWandb does not).

Bind the fixtures in a test module: ``openwandb, wb_settings = _wandbsink.openwandb, _wandbsink.wb_settings``.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Tuple

import pytest
from _faultproxy import Recorded
from support import need

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "scripts"))

import openwandb_server as ow  # noqa: E402

from sync_gateway.engine.runner import Runner  # noqa: E402
from sync_gateway.settings import Settings  # noqa: E402
from sync_gateway.sinks import make_sink  # noqa: E402

ENTITY = "default"          # OpenWandb's default team
API_KEY = "local-" + "0123456789abcdef" * 2 + "cafe"   # OpenWandb accepts any key (it enforces no auth)


@pytest.fixture(scope="session")
def openwandb(tmp_path_factory):
    need(ow.openwandb_exe() is not None,
         f"openwandb is not installed in {ow.venv_dir()}: run scripts/openwandb_server.py install")
    h = ow.start(str(tmp_path_factory.mktemp("openwandb")))
    yield h
    ow.stop(h)


@pytest.fixture
def wb_settings(openwandb, root, tmp_path):
    return wandb_settings(openwandb.url, root, str(tmp_path / "state"))


def wandb_settings(url: str, root: str, state_dir: str, **opts: Any) -> Settings:
    options = {"entity": ENTITY, "run_requests_per_s": 50.0, **opts}
    return Settings(roots=[root], server_kind="wandb", server_url=url, server_options=options,
                    state_dir=state_dir, retries=2)


def sync_once(settings: Settings, environ: Dict[str, str] = None, **kw: Any):
    sink = make_sink(settings, environ={"WANDB_API_KEY": API_KEY, **(environ or {})}, backoff_factor=0.05)
    with Runner(settings, sink=sink, **kw) as runner:
        return runner.run_pass(), sink


def stored(handle) -> ow.Stored:
    return ow.Stored(handle.data_dir)


def file_streams(records: List[Recorded]) -> List[Tuple[Recorded, Dict[str, Any]]]:
    return [(r, json.loads(r.body)) for r in records if r.path.endswith("/file_stream")]


def graphql_ops(records: List[Recorded]) -> List[Tuple[str, Dict[str, Any]]]:
    out = []
    for r in records:
        if r.path.endswith("/graphql"):
            doc = json.loads(r.body)
            out.append((doc.get("operationName"), doc.get("variables") or {}))
    return out


def replay(records: List[Recorded], run: str, file: str) -> List[str]:
    """The file as W&B would hold it: each request's lines placed at its offset. Asserts that no offset was
    skipped and that a line sent again at an offset is the line that offset already held."""
    lines: List[str] = []
    for r, body in file_streams(records):
        if f"/{run}/file_stream" not in r.path:
            continue
        part = (body.get("files") or {}).get(file)
        if part is None:
            continue
        off, content = part["offset"], part["content"]
        assert off <= len(lines), f"{file}: offset {off} skips lines (the file holds {len(lines)})"
        for i, line in enumerate(content):
            if off + i < len(lines):
                assert lines[off + i] == line, f"{file}: offset {off + i} re-used for other content"
            else:
                lines.append(line)
    return lines
