"""The network: a server answering 503/429 for a while, a server restarted mid-sync, auth secrets."""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace

import pytest
import requests
from _faultproxy import FaultProxy
from _ids import key as run_key
from _runwriter import RunWriter
from conftest import history, make_runner, server_run, sink_for, sync_once

from sync_gateway.errors import ConfigError
from sync_gateway.settings import AuthSettings
from sync_gateway.sinks._http import resolve_auth


@pytest.mark.faults
@pytest.mark.parametrize("status", [503, 429])
def test_server_answering_errors_for_a_while_is_retried(settings, root, project, status):
    w = RunWriter(root, project, f"flaky{status}")
    w.log_many({"x": float(i)} for i in range(2500))  # three batches
    w.exit(0)
    with FaultProxy(settings.server_url, fail_first=5, status=status) as proxy:
        rep = sync_once(replace(settings, server_url=proxy.url, retries=8))
    assert rep.ok, rep
    assert proxy.failed == 5
    sink = sink_for(settings)
    assert [v for _, _, v in history(sink, server_run(sink, project, f"flaky{status}"), "x")] == \
        [float(i) for i in range(2500)]


def test_no_retry_on_other_4xx(settings, root, project):
    w = RunWriter(root, project, "bad400")
    w.log({"x": 1.0})
    w.exit(0)
    with FaultProxy(settings.server_url, fail_first=100, status=400, record=True) as proxy:
        rep = sync_once(replace(settings, server_url=proxy.url, retries=8))
    assert not rep.ok and "HTTP 400" in rep.errors[run_key(root, project, "bad400")]
    # No request is sent twice: a 400 is not retried. (A refused log-batch is split to find what the server
    # refuses, each part sent once: the run's one log-batch of params, tags, points and state, ~8 items.)
    refused = [r.body for r in proxy.records if r.path.endswith("/runs/log-batch")]
    assert proxy.failed == len(refused) and len(set(refused)) == len(refused) <= 16, refused
    # The error is recorded for `status`, and the next pass (server fine again) syncs the run.
    assert sync_once(settings).ok


@pytest.mark.faults
@pytest.mark.mlflow  # it starts a server of its own
def test_server_restarted_in_the_middle_of_a_sync(root, project, tmp_path):
    import mlflow_server as ms

    from sync_gateway.settings import Settings

    h = ms.start(str(tmp_path / "srv"))
    try:
        settings = Settings(roots=[root], server_url=h.url, state_dir=str(tmp_path / "state"), retries=2)
        w = RunWriter(root, project, "restart")
        w.log_many({"x": float(i), "y": -float(i)} for i in range(30_000))
        w.exit(0)
        sent = [0]
        stopped = threading.Event()

        def on_points(n):
            sent[0] += n
            if sent[0] >= 10_000 and not stopped.is_set():
                stopped.set()
                ms.stop(h)  # the server goes away between two batches of this pass

        runner = make_runner(settings, on_points=on_points)
        rep = runner.run_pass()
        assert stopped.is_set() and rep.aborted and "cannot reach" in rep.aborted, rep
        h = ms.start(str(tmp_path / "srv"), port=h.port)  # same port, same database
        rep = runner.run_pass()
        runner.close()
        assert rep.ok, rep
        sink = sink_for(settings)
        run = server_run(sink, project, "restart")
        assert [v for _, _, v in history(sink, run, "y")] == [-float(i) for i in range(30_000)]
        assert len(history(sink, run, "x")) == 30_000
    finally:
        ms.stop(h)


def test_auth_file_must_be_private_and_secret_never_logged(tmp_path, caplog):
    f = tmp_path / "token"
    f.write_text("s3cr3t-token\n")
    os.chmod(f, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        resolve_auth(AuthSettings(token_file=str(f)), {})
    os.chmod(f, 0o600)
    auth = resolve_auth(AuthSettings(token_file=str(f)), {})
    req = auth(requests.Request("GET", "http://x").prepare())
    assert req.headers["Authorization"] == "Bearer s3cr3t-token"
    assert "s3cr3t" not in repr(auth)
    basic = resolve_auth(AuthSettings(username="bob", password_env="PW"), {"PW": "hunter2"})
    assert basic.username == "bob"
    with pytest.raises(ConfigError, match="without a password"):
        resolve_auth(AuthSettings(username="bob"), {})
    assert "s3cr3t" not in repr(AuthSettings(token_file=str(f)))


def test_bearer_token_reaches_the_server_and_never_the_log(settings, root, project, tmp_path, caplog):
    seen = []

    class Recorder(FaultProxy):
        pass

    with Recorder(settings.server_url, fail_first=0) as proxy:
        orig = proxy.server.RequestHandlerClass._any

        def spy(self):
            seen.append(self.headers.get("Authorization"))
            return orig(self)

        proxy.server.RequestHandlerClass.do_POST = spy
        f = tmp_path / "tok"
        f.write_text("tok-123")
        os.chmod(f, 0o600)
        w = RunWriter(root, project, "auth")
        w.exit(0)
        # urllib3 logs each request at DEBUG (the CLI may have raised its level in an earlier test).
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="urllib3"):
            rep = sync_once(replace(settings, server_url=proxy.url, auth=AuthSettings(token_file=str(f))))
    assert rep.ok
    assert seen and set(seen) == {"Bearer tok-123"}
    assert caplog.records and "tok-123" not in caplog.text


def test_https_proxy_environment_is_honoured_and_no_proxy_bypasses(settings, root, project, monkeypatch):
    from sync_gateway.engine.runner import make_sink

    w = RunWriter(root, project, "viaproxy")
    w.log({"x": 1.0})
    w.exit(0)
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with FaultProxy(settings.server_url, fail_first=0) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)  # the server URL is http:// here
        rep = sync_once(settings, sink=make_sink(settings, environ=os.environ))
        assert rep.ok and proxy.forwarded > 0
        seen = proxy.forwarded
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        w.log({"x": 2.0})
        rep = sync_once(settings, sink=make_sink(settings, environ=os.environ))
        assert rep.ok and proxy.forwarded == seen
