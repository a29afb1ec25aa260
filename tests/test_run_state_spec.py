"""One run-state spec: the table in docs/run-format.md section 7 is the fixture of both readers,
``hpc runs ls`` (hpc._reader.run_state) and the gateway (sync_gateway.readers.hpc.derive_state)."""
from __future__ import annotations

import os
import re

import pytest

from hpc._reader import DEFAULT_STALE_AFTER_S as HPC_STALE
from hpc._reader import run_state
from sync_gateway._settings import Settings
from sync_gateway.readers.hpc import DEFAULT_STALE_AFTER_S as GATEWAY_STALE
from sync_gateway.readers.hpc import derive_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW_MS = 1_764_150_000_000
STALE_S = 300.0


def _table():
    text = open(os.path.join(REPO, "docs", "run-format.md"), encoding="utf-8").read()
    section = text[text.index("## 7. Liveness and outcome"):text.index("## 8.")]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[5].startswith("**"):
            rows.append(cells)
    assert len(rows) >= 14, "the state table of docs/run-format.md section 7 is missing rows"
    return rows


def _case(cells):
    """(run.json, heartbeat.json or None, exit.json or None, expected state) for one table row."""
    exit_col, reason, code, hb_col, life, want = cells
    age_s = STALE_S / 10 if life.startswith("fresh") or life == "any" else STALE_S * 2
    meta = {"format_version": "1.0", "id": "r", "project": "p", "attempt": 2,
            "created_ms": NOW_MS - int(age_s * 1000)}
    heartbeat = {"ts_ms": NOW_MS - int(age_s * 1000)} if hb_col == "present" else None
    exit_doc = None
    if exit_col != "absent":
        exit_doc = {"attempt": 2 if exit_col == "counts" else 1, "end_ms": NOW_MS - 5}
        m = re.match(r"`(\w+)`", reason)
        if m:
            exit_doc["reason"] = m.group(1)
        if code != "missing":
            exit_doc["exit_code"] = int(code)
    if heartbeat is not None and life.startswith("fresh"):
        meta["created_ms"] = NOW_MS - int(STALE_S * 3 * 1000)  # only the heartbeat keeps it alive
    return meta, heartbeat, exit_doc, want.strip("*")


@pytest.mark.parametrize("cells", _table(), ids=lambda c: "-".join(x or "_" for x in c))
def test_both_readers_follow_the_table(cells):
    meta, heartbeat, exit_doc, want = _case(cells)
    assert run_state(meta, heartbeat, exit_doc, NOW_MS / 1000, STALE_S) == want
    assert derive_state(meta, exit_doc, heartbeat, NOW_MS, STALE_S).state == want


def test_the_probes_on_which_the_two_readers_once_disagreed():
    fresh_no_heartbeat = {"format_version": "1.0", "id": "r", "project": "p", "created_ms": NOW_MS - 1000}
    assert run_state(fresh_no_heartbeat, None, None, NOW_MS / 1000) == "active"
    assert derive_state(fresh_no_heartbeat, None, None, NOW_MS, GATEWAY_STALE).state == "active"
    no_attempt = {"format_version": "1.0", "id": "r", "project": "p", "created_ms": NOW_MS}
    done = {"attempt": 1, "exit_code": 0, "reason": "finished", "end_ms": NOW_MS}
    assert run_state(no_attempt, None, done, NOW_MS / 1000) == "finished"
    assert derive_state(no_attempt, done, None, NOW_MS, GATEWAY_STALE).state == "finished"
    oom = {"attempt": 1, "exit_code": 137, "reason": "oom"}
    assert run_state(no_attempt, None, oom) == derive_state(no_attempt, oom, None, NOW_MS, 300).state == "failed"
    assert HPC_STALE == GATEWAY_STALE == Settings().stale_after_s == 300.0


def test_odd_types_in_the_documents_do_not_raise():
    meta = {"attempt": "2", "created_ms": [1]}
    for hb in ({"ts_ms": {"x": 1}}, {"ts_ms": True}, None):
        assert run_state(meta, hb, None, NOW_MS / 1000) == "crashed"
        assert derive_state(meta, None, hb, NOW_MS, 300).state == "crashed"
