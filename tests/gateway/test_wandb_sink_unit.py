"""The W&B sink's rules without a server: the offset guard that keeps exactly once, names and shapes, the
one system-metric table read both ways, settings and the API key file."""
from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest

from sync_gateway.errors import ConfigError, ServerUnavailable
from sync_gateway.readers.wandb._system import system_key
from sync_gateway.records import MetricDef, Position, Row, Summary
from sync_gateway.settings import Settings
from sync_gateway.sinks import configure
from sync_gateway.sinks.wandb._api import RateLimiter
from sync_gateway.sinks.wandb._names import config_json, events_line, history_line, summary_line
from sync_gateway.sinks.wandb.sink import WandbRun, WandbSink, api_key
from sync_gateway.wandb_keys import WANDB_SYSTEM, wandb_system_key


class FakeApi:
    def __init__(self, fail: int = 0):
        self.bodies: List[Dict[str, Any]] = []
        self.fail = fail

    def file_stream(self, entity, project, run, body):
        self.bodies.append(json.loads(json.dumps(body)))
        if self.fail > 0:
            self.fail -= 1
            raise ServerUnavailable("503", 503)
        return {}


def _rows(n, start=0):
    return [Row(i, 1_000_000 + i, {"loss": 1.0 / (i + 1)}, Position(i + 1)) for i in range(start, start + n)]


def _sink(api):
    sink = WandbSink.__new__(WandbSink)
    sink.api = api  # type: ignore[assignment]
    return sink


def test_payloads_take_contiguous_offsets_and_send_moves_the_acknowledged_one(monkeypatch):
    monkeypatch.setattr("sync_gateway.sinks.wandb.sink.MAX_LINES", 4)
    api = FakeApi()
    sink, run = _sink(api), WandbRun("e", "p", "r", created_ms=1_000_000)
    payloads = list(sink.batches(run, "history", _rows(10)))
    assert [(n, p.start, len(p.lines)) for n, p in payloads] == [(4, 0, 4), (8, 4, 4), (10, 8, 2)]
    for _, p in payloads:
        sink.send(run, p)
    assert run.offsets == {"wandb-history.jsonl": 10}
    assert [b["files"]["wandb-history.jsonl"]["offset"] for b in api.bodies] == [0, 4, 8]
    assert "_next" not in run.to_state() and run.to_state()["offsets"] == {"wandb-history.jsonl": 10}


def test_a_payload_queued_behind_a_failed_one_is_never_sent(monkeypatch):
    monkeypatch.setattr("sync_gateway.sinks.wandb.sink.MAX_LINES", 4)
    api = FakeApi(fail=1)
    sink, run = _sink(api), WandbRun("e", "p", "r")
    first, second = [p for _, p in sink.batches(run, "history", _rows(8))]
    with pytest.raises(ServerUnavailable):
        sink.send(run, first)
    with pytest.raises(ServerUnavailable, match="acknowledged offset is 0"):
        sink.send(run, second)   # its lines would land at offset 0 after the failure: not sent
    assert len(api.bodies) == 1
    # The engine then re-reads from its cursor: the same lines at the same offset.
    again = [p for _, p in sink.batches(run, "history", _rows(8))]
    assert again[0] == first
    sink.send(run, again[0])
    assert api.bodies[1] == api.bodies[0], "the re-send is identical"


def test_rows_without_lines_cover_their_cursor_and_take_no_offset():
    sink, run = _sink(FakeApi()), WandbRun("e", "p", "r")
    rows = [Row(0, 1, {}, Position(1)), Row(1, 2, {"a": 1}, Position(2)), Row(2, 3, {}, Position(3))]
    assert [(n, p.start, len(p.lines)) for n, p in sink.batches(run, "history", rows)] == [(3, 0, 1)]


def test_history_events_and_summary_shapes():
    row = Row(7, 1_000_500, {"train/loss": 0.5, "_step": 3, "nan": float("nan")}, Position(1))
    doc = json.loads(history_line(row, 1_000_000).replace("NaN", '"NaN"'))
    assert doc == {"train/loss": 0.5, "hpc/_step": 3, "nan": "NaN", "_step": 7, "_timestamp": 1000.5,
                   "_runtime": 0.5}
    ev = json.loads(events_line(Row(0, 2_000_000, {"gpu/1/power_w": 300, "memory/process_rss_bytes": 3 << 20,
                                                   "note": "x"}, Position(1)), 1_000_000))
    assert ev == {"system.gpu.1.powerWatts": 300, "system.proc.memory.rssMB": 3.0, "_wandb": True,
                  "_timestamp": 2000.0, "_runtime": 1000.0}
    s = json.loads(summary_line(Summary({"loss": 0.1, "acc": 0.9}, policies={"loss": "min"}), 12.7))
    assert s == {"loss": {"min": 0.1}, "acc": 0.9, "_runtime": 12.7, "_wandb": {"runtime": 12}}
    s = json.loads(summary_line(Summary({"acc": 0.9}), 12.7, (41, 2000.5)))
    assert s == {"acc": 0.9, "_step": 41, "_timestamp": 2000.5, "_runtime": 12.7, "_wandb": {"runtime": 12}}


def test_the_summary_reports_the_newest_acknowledged_step_only():
    api = FakeApi()
    sink, run = _sink(api), WandbRun("e", "p", "r", created_ms=1_000_000)
    sink.set_summary(run, Summary({"loss": 0.5}, version_ms=1_001_000))
    first = json.loads(api.bodies[-1]["files"]["wandb-summary.json"]["content"][0])
    assert "_step" not in first, "no history row sent yet: no step to report"
    (_, payload), = sink.batches(run, "history", _rows(5))
    sink.set_summary(run, Summary({"loss": 0.5}, version_ms=1_001_000))
    assert "_step" not in json.loads(api.bodies[-1]["files"]["wandb-summary.json"]["content"][0]), \
        "a prepared payload is not acknowledged"
    sink.send(run, payload)
    sink.set_summary(run, Summary({"loss": 0.5}, version_ms=1_001_000))
    got = json.loads(api.bodies[-1]["files"]["wandb-summary.json"]["content"][0])
    assert (got["_step"], got["_timestamp"]) == (4, 1_000.004)
    assert WandbSink.restore(sink, run.to_state()).last_step == 4, "kept in the run's state"


def test_define_metric_in_the_config_as_the_official_client_encodes_it():
    doc = json.loads(config_json({"lr": 0.1}, [MetricDef("val/*", "epoch", "max"), MetricDef("loss", None, "min")]))
    assert doc["lr"] == {"value": 0.1, "desc": None}
    assert doc["_wandb"]["value"]["m"] == [{"1": "epoch"}, {"2": "val/*", "5": 1, "6": [3], "7": [2]},
                                           {"1": "loss", "7": [1]}]


@pytest.mark.parametrize("wkey", sorted(k for k in WANDB_SYSTEM if k not in ("memory", "disk")))
def test_one_system_table_read_both_ways(wkey):
    concrete = wkey.replace("{i}", "0").replace("{d}", "/" if "usage" in wkey else "sda")
    neutral, to_neutral = system_key(concrete)
    back, to_wandb = wandb_system_key(neutral)
    assert back == concrete and to_neutral * to_wandb == pytest.approx(1.0)


def test_unknown_neutral_keys_keep_their_name_and_wandb_keys_come_back():
    assert wandb_system_key("cpu/process_percent") == ("cpu/process_percent", 1.0)
    assert wandb_system_key(system_key("tpu.0.dutyCycle")[0]) == ("tpu.0.dutyCycle", 1.0)


def test_settings_accept_the_wandb_keys_and_name_the_valid_ones(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("server: {kind: wandb, url: 'http://127.0.0.1:1', entity: lab, api_key_file: /k}\n")
    s = configure(Settings.resolve(str(cfg), {}), {})  # the sink checks its own keys (settings knows no sink)
    assert s.server_options == {"entity": "lab", "api_key_file": "/k"}
    cfg.write_text("server: {kind: wandb, project: x}\n")
    with pytest.raises(ConfigError, match="valid keys for server.kind wandb are: kind, url, entity, api_key_file"):
        configure(Settings.resolve(str(cfg), {}), {})
    cfg.write_text("server: {kind: wandb, run_requests_per_s: 0}\n")
    with pytest.raises(ConfigError, match="above 0"):
        configure(Settings.resolve(str(cfg), {}), {})
    env = {"HPCSYNC_SERVER_KIND": "wandb", "WANDB_BASE_URL": "https://wb.lab"}
    assert configure(Settings.resolve(None, env), env).server_url == "https://wb.lab"
    cfg.write_text("server: {kind: wandb, url: 'https://config.lab'}\n")  # the config file beats WANDB_BASE_URL
    assert configure(Settings.resolve(str(cfg), env), env).server_url == "https://config.lab"


def test_the_api_key_file_must_be_private(tmp_path):
    key = tmp_path / "key"
    key.write_text("secret\n")
    key.chmod(0o644)
    s = Settings(server_kind="wandb", server_options={"api_key_file": str(key)})
    with pytest.raises(ConfigError, match="chmod 600"):
        api_key(s, {})
    key.chmod(0o600)
    assert api_key(s, {"WANDB_API_KEY": "other"}) == "secret", "the file wins over the environment"
    assert api_key(Settings(server_kind="wandb"), {"WANDB_API_KEY": "env", "NETRC": str(tmp_path / "none")}) == "env"


def test_the_rate_limiter_spaces_a_run_and_shares_a_project_budget():
    now = [0.0]
    slept: List[float] = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    rl = RateLimiter(2.0, 4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        rl.wait("p", "p/a")
    assert slept == [0.5, 0.5]
    slept.clear()
    rl.wait("p", "p/b")   # another run of the project: only the project's budget (0.25 s) applies
    assert slept == [pytest.approx(0.25)]
