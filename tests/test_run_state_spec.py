"""One run-state spec: the table in docs/run-format.md section 7 is the fixture of both readers,
``hpc runs ls`` (hpc._reader.run_state) and the gateway (sync_gateway.readers.hpc.derive_state)."""
from __future__ import annotations

import os
import re

import pytest

from hpc._reader import DEFAULT_STALE_AFTER_S as HPC_STALE
from hpc._reader import run_state
from sync_gateway.readers.hpc.reader import DEFAULT_STALE_AFTER_S as GATEWAY_STALE
from sync_gateway.readers.hpc.reader import derive_state
from sync_gateway.settings import Settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW_MS = 1_764_150_000_000
STALE_S = 300.0


def _table():
    text = open(os.path.join(REPO, "docs", "run-format.md"), encoding="utf-8").read()
    section = text[text.index("## 7. Liveness and outcome"):text.index("## 8.")]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[4].startswith("**"):
            rows.append(cells)
    assert len(rows) >= 14, "the state table of docs/run-format.md section 7 is missing rows"
    return rows


def _case(cells):
    """(run.json, heartbeat.json or None, exit.json or None, when the files last changed, expected state)
    for one table row. Timestamps inside the files contradict the observation wherever they can: they are
    data, and the state must not depend on them."""
    exit_col, reason, code, life, want = cells
    age_s = STALE_S / 10 if life == "fresh" else STALE_S * 2     # "any": stale, outcomes never depend on it
    seen_ms = NOW_MS - int(age_s * 1000)
    contrary_ms = NOW_MS - int(STALE_S * 2000) if life == "fresh" else NOW_MS   # the node's clock disagrees
    meta = {"format_version": "1.0", "id": "r", "project": "p", "attempt": 2, "created_ms": contrary_ms}
    heartbeat = {"ts_ms": contrary_ms}
    if "10 years ahead" in exit_col:
        heartbeat = {"ts_ms": NOW_MS + 10 * 365 * 86400 * 1000}
    elif "older than the limit" in exit_col:
        heartbeat = {"ts_ms": NOW_MS - int(STALE_S * 2000)}
    exit_doc = None
    if not exit_col.startswith("absent"):
        exit_doc = {"attempt": 2 if exit_col == "counts" else 1, "end_ms": NOW_MS - 5}
        m = re.match(r"`(\w+)`", reason)
        if m:
            exit_doc["reason"] = m.group(1)
        if code != "missing":
            exit_doc["exit_code"] = int(code)
    return meta, heartbeat, exit_doc, seen_ms, want.strip("*")


@pytest.mark.parametrize("cells", _table(), ids=lambda c: "-".join(x[:20] or "_" for x in c))
def test_both_readers_follow_the_table(cells):
    meta, heartbeat, exit_doc, seen_ms, want = _case(cells)
    assert run_state(meta, heartbeat, exit_doc, NOW_MS / 1000, STALE_S, seen_ms=seen_ms) == want
    assert derive_state(meta, exit_doc, heartbeat, NOW_MS, STALE_S, seen_ms=seen_ms).state == want


def test_hpc_runs_ls_takes_the_files_modification_time(tmp_path):
    import json
    import time

    from hpc._reader import load_run

    d = tmp_path / "p" / "r"
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"format_version": "1.0", "id": "r", "project": "p", "attempt": 1,
                                            "created_ms": 1}))
    (d / "heartbeat.json").write_text(json.dumps({"ts_ms": 1}))  # a node clock at 1970: data only
    assert load_run(str(d)).state() == "active"
    old = time.time() - 2 * STALE_S
    for f in ("run.json", "heartbeat.json"):
        os.utime(d / f, (old, old))
    assert load_run(str(d)).state(stale_after_s=STALE_S) == "crashed"


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
    stale = NOW_MS - 400_000
    for hb in ({"ts_ms": {"x": 1}}, {"ts_ms": True}, None):
        assert run_state(meta, hb, None, NOW_MS / 1000, seen_ms=stale) == "crashed"
        assert derive_state(meta, None, hb, NOW_MS, 300, seen_ms=stale).state == "crashed"
