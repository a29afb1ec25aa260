"""Issue 16: the failures of MLflow's production shape, against the real server.

- a proxy's body limit (HTTP 413; nginx's default is 1 MB): batches are split until they pass, nothing
  is lost or stored twice; a file over the limit is noted on its run and the rest goes on; doctor
  measures the limit;
- MLflow 3's ``--allowed-hosts`` refusal (HTTP 403 ``Invalid Host header``): one line that names the
  setting, in the pass and in doctor (``/version`` is exempt from the guard, so doctor must look further);
- a server without its PostgreSQL driver does not start: the start script says so in one line.
"""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
import yaml
from _faultproxy import FaultProxy
from _ids import key as run_key
from _runwriter import RunWriter
from conftest import history, run_info, server_run, sink_for, sync_once

from sync_gateway.cli.commands import main
from sync_gateway.engine.state import StateStore

LIMIT_BYTES = 64 << 10
WIDE = [f"layer{i:02d}/" + "w" * 180 for i in range(40)]   # long keys: a 1000-point batch is ~250 KB


def _config(tmp_path, settings, url):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"roots": settings.roots, "server": {"kind": "mlflow", "url": url},
                                   "state_dir": settings.state_dir, "retries": 1}))
    return str(cfg)


def test_a_proxy_body_limit_splits_batches_and_loses_nothing(settings, root, project, tmp_path):
    w = RunWriter(root, project, "wide", config={f"opt{i}": "v" * 1500 for i in range(100)})  # params: ~150 KB
    w.log_many({k: float(i) for k in WIDE} for i in range(150))
    w.save("small.txt", b"fits\n")
    w.save("big.bin", os.urandom(200 << 10))
    w.exit(0)
    with FaultProxy(settings.server_url, max_body_bytes=LIMIT_BYTES) as proxy:
        s = replace(settings, server_url=proxy.url)
        rep = sync_once(s)
    assert proxy.too_large > 0, "the test must exceed the limit to mean anything"
    assert not rep.errors and not rep.quarantined and rep.aborted is None, rep
    sink = sink_for(settings)
    run = server_run(sink, project, "wide")
    for k in (WIDE[0], WIDE[-1]):
        assert history(sink, run, k) == [(i, 1_764_150_000_000 + i, float(i)) for i in range(150)]
    params = {p["key"]: p["value"] for p in run_info(sink, run)["data"].get("params", [])}
    assert all(params.get(f"opt{i}") == "v" * 1500 for i in range(100))
    info = run_info(sink, run)["info"]
    assert info["status"] == "FINISHED"
    arts = sink._call("GET", "/artifacts/list", params={"run_id": run.run_id, "path": "files"}).get("files", [])
    assert [a["path"] for a in arts] == ["files/small.txt"]
    st = StateStore(settings.state_path).load(run_key(root, project, "wide"))
    assert any("big.bin" in n and "HTTP 413" in n and "client_max_body_size" in n for n in st.notes), st.notes
    before = proxy.too_large
    with FaultProxy(settings.server_url, max_body_bytes=LIMIT_BYTES) as proxy:  # nothing new: nothing sent
        s = replace(settings, server_url=proxy.url)
        rep = sync_once(s)
    assert rep.runs_unchanged == 1 and proxy.too_large == 0 and before > 0


def test_doctor_measures_a_proxy_body_limit(settings, tmp_path, capsys):
    with FaultProxy(settings.server_url, max_body_bytes=512 << 10) as proxy:
        assert main(["doctor", "--config", _config(tmp_path, settings, proxy.url)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "body limit" in ln)
    assert line.startswith("[FAIL]") and "1.00 MiB was refused" in line and "0.25 MiB passed" in line, line
    assert main(["doctor", "--config", _config(tmp_path, settings, settings.server_url)]) == 0
    assert "[ok] body limit: requests of 8 MiB pass" in capsys.readouterr().out


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory, mlflow_server):
    """A second server whose --allowed-hosts does not include the address the gateway uses."""
    import mlflow_server as ms

    h = ms.start(str(tmp_path_factory.mktemp("guarded")), allowed_hosts="mlflow.example.org")
    yield h
    ms.stop(h)


def test_allowed_hosts_refusal_is_named_in_the_pass_and_in_doctor(guarded_server, settings, root, project,
                                                                   tmp_path, capsys):
    RunWriter(root, project, "r").exit(0)
    s = replace(settings, server_url=guarded_server.url)
    rep = sync_once(s)
    (msg,) = rep.errors.values()
    host = guarded_server.url.split("//")[1]
    assert f"refused the host name '{host}'" in msg and "--allowed-hosts" in msg, msg
    assert "auth" not in msg
    assert main(["doctor", "--config", _config(tmp_path, settings, guarded_server.url)]) == 1
    out = capsys.readouterr().out
    assert "[ok] server: MLflow 3." in out   # /version is exempt from the guard
    assert "[FAIL] host:" in out and "--allowed-hosts" in out and "[FAIL] auth" not in out, out


@pytest.mark.slow  # starts the MLflow start script in a subprocess (about 8 s)
def test_the_start_script_names_a_missing_postgresql_driver(tmp_path):
    """The server's Python without psycopg (shadowed by a package that cannot be imported): the server
    exits at start; the script's error is one line naming the driver, not a traceback."""
    import mlflow_server as ms

    shadow = tmp_path / "shadow"
    for mod in ("psycopg", "psycopg2"):
        (shadow / mod).mkdir(parents=True)
        (shadow / mod / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{mod}'\", name={mod!r})\n")
    with pytest.raises(RuntimeError) as e:
        ms.start(str(tmp_path / "srv"), backend_uri="postgresql://u:p@127.0.0.1:9/db", timeout_s=60,
                 env={"PYTHONPATH": str(shadow)})
    msg = str(e.value)
    assert "\n" not in msg and "no PostgreSQL driver (No module named 'psycopg')" in msg, msg
